package boottest

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/images/rig"
	"github.com/sedboot/sedboot/initramfs"
	"github.com/sedboot/sedboot/internal/testenv"
)

// Production is what the boot tests of the production image share (the
// boot agent as /init, booting the real OS from a software SED): the
// kernel, the production initramfs and the real OS's root file system,
// built once per test binary. A test package keeps one in a package
// variable, runs its tests through Main and calls Setup in each test:
//
//	var prod boottest.Production
//	func TestMain(m *testing.M) { prod.Main(m) }
//	...
//	c := prod.Setup(t).NewController(t, 4, "ARRAY0001")
type Production struct {
	Kernel *kernel.Kernel
	Image  *initramfs.Image
	Root   *rig.RootFS

	once sync.Once
	mu   sync.Mutex
	dir  string
	err  error
}

// Main runs the tests, removes what Setup built and exits.
func (p *Production) Main(m *testing.M) {
	code := m.Run()
	p.mu.Lock()
	if p.dir != "" {
		os.RemoveAll(p.dir)
	}
	p.mu.Unlock()
	os.Exit(code)
}

// Setup builds the production initramfs (zstd -3, for speed) and the real
// OS on the first call and returns p. It skips under -short, and fails
// (CI) or skips when QEMU, the kernel or a build tool is missing.
func (p *Production) Setup(t testing.TB) *Production {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU guests")
	}
	RequireQEMU(t)
	testenv.LookPath(t, "mkfs.ext4", "run scripts/prereqs.sh")
	testenv.LookPath(t, "zstd", "run scripts/prereqs.sh")
	k := Kernel(t)
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		p.Kernel = k
		dir, err := os.MkdirTemp("", "sedboot-production-")
		if err != nil {
			p.err = err
			return
		}
		p.mu.Lock()
		p.dir = dir
		p.mu.Unlock()
		start := time.Now()
		if p.Image, p.err = initramfs.BuildProduction(ctx, k, initramfs.Spec{Level: 3}); p.err != nil {
			return
		}
		t.Logf("production initramfs: %d bytes (zstd -3), built in %s", p.Image.Size, time.Since(start).Round(time.Millisecond))
		p.Root, p.err = rig.BuildRootFS(ctx, ".", dir, "REALOS")
	})
	if p.err != nil {
		t.Fatal(p.err)
	}
	return p
}

// Controller is one controller's world for a boot of the production
// image: software SEDs (the real OS on the first) served over NVMe/TCP,
// an in-process kmsd ("kmsd-a") with the array's identity, and a work
// directory, all released when the test ends.
type Controller struct {
	T    testing.TB
	P    *Production
	Dir  string
	Rig  *rig.Rig
	KMSD *rig.KMSD
}

// NewController makes drives SEDs and a kmsd for array.
func (p *Production) NewController(t testing.TB, drives int, array string) *Controller {
	t.Helper()
	c := &Controller{T: t, P: p, Dir: t.TempDir()}
	r, err := rig.New(rig.Options{Drives: drives, RootImage: p.Root.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	c.Rig = r
	k, err := rig.StartKMSD(c.Dir, "kmsd-a", array, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	c.KMSD = k
	return c
}

// Boot boots the production image with the boot-medium image medium; the
// guest's KMIP forwards lead to kmip (guest address -> host address), by
// default rig.GuestHost -> the kmsd.
func (c *Controller) Boot(name, medium string, kmip map[string]string) *qemu.Machine {
	c.T.Helper()
	if kmip == nil {
		kmip = map[string]string{rig.GuestHost: c.KMSD.Addr}
	}
	return Boot(c.T, c.Rig.Guest(rig.GuestOptions{Name: name, Kernel: c.P.Kernel.BootImage(), Initrd: c.P.Image.Path,
		Medium: medium, KMIP: kmip}))
}

// PowerCycle power cycles every drive and requires all of them locked
// afterwards.
func (c *Controller) PowerCycle() {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Rig.PowerCycle(ctx); err != nil {
		c.T.Fatal(err)
	}
	if got := c.Rig.Locked(); got != len(c.Rig.Drives) {
		c.T.Fatalf("after a power cycle %d of %d drives are locked", got, len(c.Rig.Drives))
	}
}

// RealOS waits for the real OS (images/realos) on m: its first line, the
// boot record it found in /run, its boot counter (data kept on the
// encrypted root) at boots, and its clean power-off. It returns the
// record's JSON and when the first line was seen.
func RealOS(t testing.TB, m *qemu.Machine, boots int) ([]byte, time.Time) {
	t.Helper()
	Expect(t, m, `REALOS hello: pid 1, root /dev/nvme\d+n\d+ \(ext4\)`)
	hello := time.Now()
	js := Expect(t, m, `REALOS record-json: (\{[^\r\n]*\})\r?\n`)[1]
	Expect(t, m, `REALOS boots: `+strconv.Itoa(boots)+`\b`)
	Expect(t, m, `REALOS done`)
	if e := WaitExit(t, m); !e.Clean() {
		t.Fatalf("guest did not power off cleanly: %s", e)
	}
	return []byte(js), hello
}

// RecoveryPrompt waits for the agent's recovery loop to ask for the
// technician's credential.
func RecoveryPrompt(t testing.TB, m *qemu.Machine) {
	t.Helper()
	Expect(t, m, regexp.QuoteMeta("sedboot: RECOVERY:"))
	Expect(t, m, regexp.QuoteMeta("sedboot: technician credential:"))
}
