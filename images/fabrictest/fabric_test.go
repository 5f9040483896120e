package fabrictest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/boottest"
	"github.com/sedboot/sedboot/images/guest"
	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/initramfs"
	"github.com/sedboot/sedboot/internal/nvmetcp"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/sedsim"
)

// guestPort is the NVMe/TCP port the guest connects to at
// qemu.DefaultGuestAddr.
const guestPort = 4420

// setup returns the boot kernel and the guest's initramfs (built once; the
// builder's cache serves later calls), failing under CI and skipping
// elsewhere when QEMU or the kernel is missing.
func setup(t testing.TB) (*kernel.Kernel, *initramfs.Image) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a QEMU guest")
	}
	boottest.RequireQEMU(t)
	k := boottest.Kernel(t)
	img := boottest.Image(t, initramfs.Spec{
		Init:          "./testdata/sedguest",
		Modules:       boottest.Modules(t, k, "nvme-tcp", "virtio_net"),
		KernelVersion: k.Version,
	})
	return k, img
}

// startSim serves n new software SEDs of size bytes each on 127.0.0.1 for
// the test, advertising the guest's view of the address in discovery.
func startSim(t testing.TB, n int, size int64) *sedsim.Sim {
	t.Helper()
	sim, err := sedsim.Start(context.Background(), sedsim.Options{
		Drives: n, Size: size, StateDir: t.TempDir(), Listen: "127.0.0.1:0", NoControl: true,
		Target: nvmetcp.Options{AdvertiseAddr: fmt.Sprintf("%s:%d", qemu.DefaultGuestAddr, guestPort)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

// testKeys are one drive's credentials: random test keys, zeroed when the
// test ends.
type testKeys struct{ sid, admin1 []byte }

func newKeys(t testing.TB) testKeys {
	t.Helper()
	k := testKeys{sid: make([]byte, 32), admin1: make([]byte, 32)}
	rand.Read(k.sid)
	rand.Read(k.admin1)
	t.Cleanup(func() { clear(k.sid); clear(k.admin1) })
	return k
}

// enable provisions drive i of sim with keys through internal/sed on the
// simulator's own interface (as `sedctl enable` would on a controller):
// ownership, Locking SP, Admin1, key verifier, lock on power cycle.
func enable(ctx context.Context, t testing.TB, sim *sedsim.Sim, i int, keys testKeys) {
	t.Helper()
	d := sed.New(sim.Drive(i), fmt.Sprintf("drive %d", i))
	res, err := d.Enable(ctx, sed.EnableRequest{SID: keys.sid, Admin1: keys.admin1, ArraySerial: "FABRICTEST", Generation: 1})
	if err != nil {
		t.Fatalf("enable drive %d: %v", i, err)
	}
	if len(res.Steps) == 0 {
		t.Fatalf("enable drive %d changed nothing", i)
	}
}

// guestConfig is the QEMU configuration of a sedguest run: the NVMe/TCP
// port forwarded to sim, the scenario and its parameters on the kernel
// command line. admin1 is a test key.
func guestConfig(k *kernel.Kernel, img *initramfs.Image, name string, sim *sedsim.Sim, nqns []string, admin1 []byte, params ...string) qemu.Config {
	cmdline := append([]string{"quiet", "sedboot.nqns=" + strings.Join(nqns, ","), "sedboot.admin1=" + hex.EncodeToString(admin1)}, params...)
	return qemu.Config{
		Name: name, Kernel: k.BootImage(), Initrd: img.Path, Cmdline: cmdline, Timeout: 4 * time.Minute,
		Net: &qemu.UserNet{Forwards: []qemu.Forward{{GuestPort: guestPort, Host: sim.Addr().String()}}},
	}
}

// newCtrl is the kernel's line for a controller it connected.
var newCtrl = regexp.MustCompile(`nvme(\d+): new ctrl: NQN "([^"]+)", addr 10\.0\.2\.100:4420`)

// checkKernelLog judges the guest kernel's nvme messages the guest echoed:
// every subsystem in nqns connected, and no transport trouble (before a
// power cycle none at all; after it only the reconnection the cycle
// causes, and the I/O errors of reads from locked drives).
func checkKernelLog(t *testing.T, console string, nqns []string) {
	t.Helper()
	connected := map[string]bool{}
	for _, r := range boottest.EchoedKernelLog(console) {
		after, msg := r.Label == "kmsg-after", r.Msg
		if m := newCtrl.FindStringSubmatch(msg); m != nil && !after {
			connected[m[2]] = true
		}
		if strings.Contains(msg, "Access Denied") || strings.Contains(msg, "sc 0x86") ||
			strings.Contains(msg, "I/O error") || strings.Contains(msg, "medium error") {
			if !after {
				t.Errorf("kernel reports a failed I/O before any drive was locked: %s", msg)
			}
			continue
		}
		if after && boottest.NVMeReconnect.MatchString(msg) {
			continue
		}
		if boottest.NVMeTrouble.MatchString(msg) {
			t.Errorf("kernel reports a problem: %s", msg)
		}
	}
	for _, nqn := range nqns {
		if !connected[nqn] {
			t.Errorf("the guest kernel's log does not show %s connected", nqn)
		}
	}
}

// TestLockCycle is issue 3's first boot test. A guest connects four
// simulated SEDs over NVMe/TCP, sees them as /dev/nvmeXnY, runs TCG Level 0
// discovery on each through sedboot's transport and go-tcg-storage, and
// writes data to each. The host then enables locking on every drive
// (internal/sed on the simulator) and power-cycles them; the guest's reads
// now fail and Level 0 reports them locked. The guest unlocks the first
// drive with internal/sed (Admin1 PIN on its kernel command line: a test
// key) and reads its data back intact; the others stay locked. The guest
// kernel's log must show the four controllers connected and no transport
// errors.
func TestLockCycle(t *testing.T) {
	k, img := setup(t)
	const drives = 4
	sim := startSim(t, drives, 16<<20)
	var nqns []string
	var keys []testKeys
	for i := range drives {
		nqns = append(nqns, sim.NQN(i))
		keys = append(keys, newKeys(t))
	}
	m := boottest.Boot(t, guestConfig(k, img, "fabric-lockcycle", sim, nqns, keys[0].admin1, "sedboot.scenario=lockcycle"))
	boottest.WaitFor(t, m, guest.Started)
	boottest.WaitFor(t, m, fmt.Sprintf("level 0 discovery ok on %d drives", drives))
	boottest.WaitFor(t, m, fmt.Sprintf("data written to %d drives", drives))
	boottest.WaitFor(t, m, "awaiting the host: enable locking and power cycle")
	t.Logf("QEMU start -> drives connected, discovered and written: %s", time.Since(m.Started()).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range drives {
		if st := sim.Drive(i).Status(); st.LockingEnabled {
			t.Fatalf("drive %d has locking enabled before the host enabled it", i)
		}
		enable(ctx, t, sim, i, keys[i])
	}
	for i := range drives {
		if err := sim.PowerCycle(ctx, i); err != nil {
			t.Fatal(err)
		}
		st := sim.Drive(i).Status()
		if !st.LockingEnabled || !st.Ranges[0].ReadLocked || !st.Ranges[0].WriteLocked {
			t.Fatalf("drive %d after enable and power cycle: locking enabled %v, read locked %v, write locked %v; want all",
				i, st.LockingEnabled, st.Ranges[0].ReadLocked, st.Ranges[0].WriteLocked)
		}
	}
	if err := m.Send("cycled\n"); err != nil {
		t.Fatal(err)
	}
	boottest.WaitFor(t, m, fmt.Sprintf("reads fail on all %d locked drives", drives))
	boottest.WaitFor(t, m, "data written before locking reads back intact")
	boottest.WaitFor(t, m, fmt.Sprintf("the other %d drives stay locked", drives-1))
	boottest.WaitFor(t, m, guest.Passed)
	if e := boottest.WaitExit(t, m); !e.Clean() {
		t.Errorf("guest did not power off cleanly: %s", e)
	} else {
		t.Logf("QEMU start -> power off: %s", e.Uptime.Round(time.Millisecond))
	}
	for _, line := range strings.Split(m.ConsoleText(), "\n") {
		if strings.Contains(line, guest.Marker) && !strings.Contains(line, " kmsg") {
			t.Log(strings.TrimSpace(line))
		}
	}
	checkKernelLog(t, m.ConsoleText(), nqns)
	for i := range drives {
		st := sim.Drive(i).Status()
		locked := st.Ranges[0].ReadLocked || st.Ranges[0].WriteLocked
		if want := i != 0; locked != want {
			t.Errorf("drive %d after the guest: locked %v, want %v", i, locked, want)
		}
	}
}
