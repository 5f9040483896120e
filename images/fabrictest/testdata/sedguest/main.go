// Command sedguest is the /init of fabrictest's boot test and benchmarks.
// The guest's own kernel (nvme-tcp, nvme-fabrics) connects to simulated
// SEDs that the host test serves over NVMe/TCP at 10.0.2.100:4420, and the
// program speaks TCG Opal to them through sedboot's transport (the NVMe
// admin passthrough ioctl) and go-tcg-storage.
//
// Kernel parameters:
//
//	sedboot.scenario=lockcycle|bench
//	sedboot.nqns=A,B,...   subsystems to connect, in order
//	sedboot.admin1=HEX     Admin1 PIN of the first subsystem's drive (a test key)
//
// lockcycle (the first boot test): connect every drive, run Level 0
// discovery on each, write a pattern to each, then wait for the host to
// enable locking and power-cycle the drives (it types "cycled" on the
// console); then every read must fail and Level 0 must report the drives
// locked; unlock the first drive with sed.Unlock and read the pattern back.
//
// bench (sedboot.mib=N, sedboot.bs=KiB, sedboot.unlocks=N): connect the one
// drive (enabled and locked by the host), time sed.Unlock (the first, cold,
// then warm ones after sed.Lock), then sequential O_DIRECT writes and reads
// of N MiB in blocks of bs KiB. Figures are printed as
// "SEDBOOT-TEST metric NAME VALUE".
//
// Both echo the kernel's nvme log lines for the host to judge: those before
// the power cycle as "SEDBOOT-TEST kmsg: ...", the rest as
// "SEDBOOT-TEST kmsg-after: ...".
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/images/guest"
	"github.com/sedboot/sedboot/initramfs/modload"
	"github.com/sedboot/sedboot/internal/nvmeof"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/sed/transport"
)

const (
	hostID  = "7e57c0de-0000-4000-8000-0000fab71c00"
	hostNQN = "nqn.2014-08.org.nvmexpress:uuid:" + hostID
	// patternOff and patternLen place the data written before locking.
	patternOff = 1 << 20
	patternLen = 1 << 20
)

func main() {
	g, err := guest.Start()
	if err != nil {
		g.Fail(err)
	}
	if up, err := uptime(); err == nil {
		g.Reportf("metric init-uptime-ms %d", up.Milliseconds())
	}
	args, err := guest.KernelArgs()
	if err != nil {
		g.Fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kmsg, err := guest.OpenKernelLog()
	if err != nil {
		g.Fail(err)
	}
	t := &tester{g: g, kmsg: kmsg}
	pin, err := hex.DecodeString(args["sedboot.admin1"])
	if err != nil || len(pin) == 0 {
		g.Fail(fmt.Errorf("sedboot.admin1: want the Admin1 PIN in hex (%v)", err))
	}
	nqns := strings.Split(args["sedboot.nqns"], ",")
	switch sc := args["sedboot.scenario"]; sc {
	case "lockcycle":
		err = t.lockCycle(ctx, nqns, pin)
	case "bench":
		err = t.bench(ctx, nqns, pin, args)
	default:
		err = fmt.Errorf("unknown scenario sedboot.scenario=%q", sc)
	}
	clear(pin)
	t.kmsg.Echo(t.g, "kmsg-after", "nvme", "opal")
	if err != nil {
		g.Fail(err)
	}
	g.Pass()
}

// tester reports on the console and reads the kernel log.
type tester struct {
	g    *guest.Guest
	kmsg *guest.KernelLog
}

// fabricDrive is one connected simulated SED.
type fabricDrive struct {
	nqn  string
	ctrl nvmeof.Controller
	disk string // namespace block device
}

// connect loads the modules, brings the network up and connects every
// subsystem in nqns at once.
func (t *tester) connect(ctx context.Context, nqns []string) ([]fabricDrive, error) {
	if _, err := modload.Load(ctx, "/"); err != nil {
		return nil, err
	}
	if err := guest.ConfigureStatic(ctx, "eth0", "10.0.2.15/24", ""); err != nil {
		return nil, err
	}
	start := time.Now()
	var h nvmeof.Host
	drives := make([]fabricDrive, len(nqns))
	errs := make([]error, len(nqns))
	var wg sync.WaitGroup
	for i, nqn := range nqns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tgt := nvmeof.Target{Address: "10.0.2.100", Port: 4420, NQN: nqn, HostNQN: hostNQN, HostID: hostID,
				NrIOQueues: 1, CtrlLossTmo: 60, ReconnectDelay: 1}
			c, err := h.Connect(ctx, tgt)
			if err != nil {
				errs[i] = fmt.Errorf("connect %s: %w", nqn, err)
				return
			}
			devs, err := h.WaitNamespaces(ctx, c, 1)
			if err != nil {
				errs[i] = fmt.Errorf("namespaces of %s: %w", c.Name, err)
				return
			}
			drives[i] = fabricDrive{nqn: nqn, ctrl: c, disk: devs[0]}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, d := range drives {
		t.g.Reportf("connected %s as %s (cntlid %d): %s", d.nqn, d.ctrl.Name, d.ctrl.CntlID, d.disk)
	}
	t.g.Reportf("metric connect-ms %d", time.Since(start).Milliseconds())
	return drives, nil
}

// level0 runs go-tcg-storage's Level 0 discovery on the controller through
// sedboot's transport and returns its Locking feature, checking that the
// drive is the one the NQN names.
func level0(d fabricDrive) (*core.Level0Discovery, string, error) {
	dev, err := transport.Open(d.ctrl.Device())
	if err != nil {
		return nil, "", err
	}
	defer dev.Close()
	id, err := dev.Identity()
	if err != nil {
		return nil, "", fmt.Errorf("identify %s: %w", d.ctrl.Device(), err)
	}
	if !strings.HasSuffix(d.nqn, ":"+id.Serial) {
		return nil, "", fmt.Errorf("%s reports serial %q, which subsystem %s does not name", d.ctrl.Device(), id.Serial, d.nqn)
	}
	if !id.SecuritySupported {
		return nil, "", fmt.Errorf("%s: Identify Controller lacks the OACS security send/receive bit", d.ctrl.Device())
	}
	d0, err := core.Discovery0(dev)
	if err != nil {
		return nil, "", fmt.Errorf("level 0 discovery on %s: %w", d.ctrl.Device(), err)
	}
	if d0.OpalV2 == nil || d0.Locking == nil || d0.TPer == nil {
		return nil, "", fmt.Errorf("level 0 discovery on %s: no Opal 2, Locking or TPer feature", d.ctrl.Device())
	}
	return d0, id.Serial, nil
}

// pattern is the data written to drive serial before locking.
func pattern(serial string) []byte {
	out := make([]byte, 0, patternLen)
	var ctr [8]byte
	for i := uint64(0); len(out) < patternLen; i++ {
		binary.BigEndian.PutUint64(ctr[:], i)
		h := sha256.Sum256(append([]byte("fabrictest "+serial+" "), ctr[:]...))
		out = append(out, h[:]...)
	}
	return out[:patternLen]
}

func (t *tester) lockCycle(ctx context.Context, nqns []string, pin []byte) error {
	if len(nqns) < 2 {
		return fmt.Errorf("lockcycle wants several drives, got %q", nqns)
	}
	drives, err := t.connect(ctx, nqns)
	if err != nil {
		return err
	}
	serials := make([]string, len(drives))
	for i, d := range drives {
		d0, serial, err := level0(d)
		if err != nil {
			return err
		}
		serials[i] = serial
		t.g.Reportf("%s (%s, serial %s): level 0: Opal 2 base ComID %#04x, locking supported %v, enabled %v, locked %v",
			d.ctrl.Device(), d.disk, serial, d0.OpalV2.BaseComID, d0.Locking.LockingSupported, d0.Locking.LockingEnabled, d0.Locking.Locked)
		if d0.Locking.LockingEnabled || d0.Locking.Locked {
			return fmt.Errorf("%s: locking already enabled before the host enabled it", d.ctrl.Device())
		}
		p := pattern(serial)
		if err := guest.DirectWrite(d.disk, patternOff, p); err != nil {
			return err
		}
		got, err := guest.DirectRead(d.disk, patternOff, len(p))
		if err != nil {
			return err
		}
		if !slices.Equal(got, p) {
			return fmt.Errorf("%s: data read back differs from what was written", d.disk)
		}
	}
	t.g.Reportf("level 0 discovery ok on %d drives", len(drives))
	t.g.Reportf("data written to %d drives", len(drives))
	t.kmsg.Echo(t.g, "kmsg", "nvme", "opal")
	t.g.Reportf("awaiting the host: enable locking and power cycle")
	line, err := readLine(ctx)
	if err != nil {
		return err
	}
	if line != "cycled" {
		return fmt.Errorf("host said %q, want \"cycled\"", line)
	}
	// The kernel reconnects on its own after the power cycle (reconnect
	// delay 1 s); reads queue meanwhile and then reach the locked drive.
	for i, d := range drives {
		if _, err := guest.DirectRead(d.disk, patternOff, 4096); err == nil {
			return fmt.Errorf("%s: read succeeded after the power cycle although locking is enabled", d.disk)
		} else {
			t.g.Reportf("%s: read after power cycle fails: %v", d.disk, err)
		}
		// A read can fail on the reconnected I/O queue before the
		// controller is live again, and its device node refuses to open
		// until then.
		if err := waitLive(ctx, d.ctrl); err != nil {
			return err
		}
		d0, _, err := level0(d)
		if err != nil {
			return err
		}
		if !d0.Locking.LockingEnabled || !d0.Locking.Locked {
			return fmt.Errorf("%s: level 0 after the power cycle: locking enabled %v, locked %v; want both", d.ctrl.Device(), d0.Locking.LockingEnabled, d0.Locking.Locked)
		}
		t.g.Reportf("%s (%s): level 0 after power cycle: locking enabled, locked", d.ctrl.Device(), serials[i])
	}
	t.g.Reportf("reads fail on all %d locked drives", len(drives))

	first := drives[0]
	sd, err := sed.Open(first.ctrl.Device())
	if err != nil {
		return err
	}
	defer sd.Close()
	start := time.Now()
	res, err := sd.Unlock(ctx, pin)
	if err != nil {
		return fmt.Errorf("unlock %s: %w", first.ctrl.Device(), err)
	}
	t.g.Reportf("%s: unlocked with sed.Unlock in %s (verifier %s, %s)", first.ctrl.Device(), time.Since(start).Round(time.Millisecond), res.Check.Source, res.Tries)
	got, err := guest.DirectRead(first.disk, patternOff, patternLen)
	if err != nil {
		return fmt.Errorf("read after unlocking: %w", err)
	}
	if !slices.Equal(got, pattern(serials[0])) {
		return fmt.Errorf("%s: data after unlock differs from what was written before locking", first.disk)
	}
	t.g.Reportf("%s: data written before locking reads back intact", first.disk)
	for _, d := range drives[1:] {
		if _, err := guest.DirectRead(d.disk, patternOff, 4096); err == nil {
			return fmt.Errorf("%s: read succeeded, but only %s was unlocked", d.disk, first.disk)
		}
	}
	t.g.Reportf("the other %d drives stay locked", len(drives)-1)
	return nil
}

// waitLive waits (bounded by ctx) until the kernel reports controller c
// live.
func waitLive(ctx context.Context, c nvmeof.Controller) error {
	path := "/sys/class/nvme/" + c.Name + "/state"
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(b)) == "live" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never became live again (state %q, %v): %w", c.Name, strings.TrimSpace(string(b)), err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// counting wraps a transport.Device and counts its security commands and
// the time they take, to tell the wire from the rest of an unlock.
type counting struct {
	*transport.Device
	sends, recvs       int
	sendWire, recvWire time.Duration
}

func (c *counting) IFSend(proto drive.SecurityProtocol, sps uint16, data []byte) error {
	start := time.Now()
	defer func() { c.sendWire += time.Since(start) }()
	c.sends++
	return c.Device.IFSend(proto, sps, data)
}

func (c *counting) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	start := time.Now()
	defer func() { c.recvWire += time.Since(start) }()
	c.recvs++
	return c.Device.IFRecv(proto, sps, data)
}

func (c *counting) reset() { *c = counting{Device: c.Device} }

func (t *tester) bench(ctx context.Context, nqns []string, pin []byte, args map[string]string) error {
	mib, err := intArg(args, "sedboot.mib", 32)
	if err != nil {
		return err
	}
	bsKiB, err := intArg(args, "sedboot.bs", 1024)
	if err != nil {
		return err
	}
	unlocks, err := intArg(args, "sedboot.unlocks", 5)
	if err != nil {
		return err
	}
	drives, err := t.connect(ctx, nqns[:1])
	if err != nil {
		return err
	}
	d := drives[0]
	dev, err := transport.Open(d.ctrl.Device())
	if err != nil {
		return err
	}
	defer dev.Close()
	// An admin command's round trip: Level 0 discovery, a 2 KiB security
	// receive.
	var rt []time.Duration
	l0 := make([]byte, 2048)
	for range 20 {
		start := time.Now()
		if err := dev.IFRecv(drive.SecurityProtocolTCGManagement, uint16(core.ComIDDiscoveryL0), &l0); err != nil {
			return fmt.Errorf("level 0 discovery on %s: %w", d.ctrl.Device(), err)
		}
		rt = append(rt, time.Since(start))
	}
	slices.Sort(rt)
	t.g.Reportf("metric admin-rt-ms %.2f", ms(rt[len(rt)/2]))
	cnt := &counting{Device: dev}
	sd := sed.New(cnt, d.ctrl.Name)
	var times []time.Duration
	for i := range unlocks {
		if i > 0 {
			if _, err := sd.Lock(ctx, pin); err != nil {
				return fmt.Errorf("lock %s: %w", d.ctrl.Device(), err)
			}
		}
		cnt.reset()
		var ru0, ru1 unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru0)
		start := time.Now()
		if _, err := sd.Unlock(ctx, pin); err != nil {
			return fmt.Errorf("unlock %s: %w", d.ctrl.Device(), err)
		}
		el := time.Since(start)
		unix.Getrusage(unix.RUSAGE_SELF, &ru1)
		times = append(times, el)
		t.g.Reportf("unlock %d: %s (CPU: user %s, system %s); %d IF-SEND in %s, %d IF-RECV in %s",
			i, el.Round(time.Microsecond), tvDiff(ru1.Utime, ru0.Utime), tvDiff(ru1.Stime, ru0.Stime),
			cnt.sends, cnt.sendWire.Round(time.Microsecond), cnt.recvs, cnt.recvWire.Round(time.Microsecond))
	}
	t.g.Reportf("metric unlock-first-ms %.1f", ms(times[0]))
	warm := slices.Clone(times[1:])
	if len(warm) == 0 {
		warm = times
	}
	slices.Sort(warm)
	t.g.Reportf("metric unlock-ms %.1f", ms(warm[len(warm)/2]))

	bs := bsKiB << 10
	total := int64(mib) << 20
	w, err := sequential(d.disk, true, bs, total)
	if err != nil {
		return err
	}
	t.g.Reportf("metric write-MB/s %.1f", w)
	r, err := sequential(d.disk, false, bs, total)
	if err != nil {
		return err
	}
	t.g.Reportf("metric read-MB/s %.1f", r)
	return nil
}

func tvDiff(a, b unix.Timeval) time.Duration {
	return time.Duration(a.Nano() - b.Nano())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func intArg(args map[string]string, name string, def int) (int, error) {
	s, ok := args[name]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s=%q: want a positive integer", name, s)
	}
	return n, nil
}

// sequential writes (or reads) total bytes from offset 0 of dev in blocks
// of bs with O_DIRECT, one at a time, and returns MB/s (10^6 bytes).
func sequential(dev string, write bool, bs int, total int64) (float64, error) {
	flags := unix.O_RDONLY
	if write {
		flags = unix.O_WRONLY
	}
	fd, err := unix.Open(dev, flags|unix.O_DIRECT, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	b, free, err := guest.AlignedBuffer(bs)
	if err != nil {
		return 0, err
	}
	defer free()
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	start := time.Now()
	for off := int64(0); off < total; off += int64(bs) {
		var n int
		if write {
			n, err = unix.Pwrite(fd, b, off)
		} else {
			n, err = unix.Pread(fd, b, off)
		}
		if err != nil {
			return 0, fmt.Errorf("%s at %d on %s: %w", map[bool]string{true: "write", false: "read"}[write], off, dev, err)
		}
		if n != bs {
			return 0, fmt.Errorf("short transfer at %d on %s: %d of %d bytes", off, dev, n, bs)
		}
	}
	if write {
		if err := unix.Fsync(fd); err != nil {
			return 0, err
		}
	}
	return float64(total) / time.Since(start).Seconds() / 1e6, nil
}

// readLine reads one line from the console, until ctx ends.
func readLine(ctx context.Context) (string, error) {
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := bufio.NewReader(os.Stdin).ReadString('\n')
		ch <- result{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return "", fmt.Errorf("read console: %w", r.err)
		}
		return r.s, nil
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for the host on the console: %w", ctx.Err())
	}
}

func uptime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("empty /proc/uptime")
	}
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(s * float64(time.Second)), nil
}
