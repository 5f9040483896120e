// Command linuxhost is the /init of nvmetcp's Linux interop test: the
// guest's own kernel (nvme-tcp, nvme-fabrics, sed-opal) is the NVMe/TCP
// host. It reads the discovery log, connects to the subsystems named on the kernel command line
// (sedboot.nqns=A,B at 10.0.2.100:4420; the second with header and data
// digests), does O_DIRECT I/O, runs go-tcg-storage Level 0 discovery and a
// control session through the admin passthrough ioctl, then drives the
// kernel's sed-opal ioctls on the first namespace: take ownership,
// activate, enable locking on the global range, lock (reads must fail),
// unlock (the data written before reads back). Every kernel log line about
// nvme is echoed to the console for the host test to judge.
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/images/guest"
	"github.com/sedboot/sedboot/initramfs/modload"
	"github.com/sedboot/sedboot/internal/nvmeof"
)

const (
	hostID  = "7e57c0de-0000-4000-8000-00000000beef"
	hostNQN = "nqn.2014-08.org.nvmexpress:uuid:" + hostID
)

func main() {
	g, err := guest.Start()
	if err != nil {
		g.Fail(err)
	}
	args, err := guest.KernelArgs()
	if err != nil {
		g.Fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kmsg, err := guest.OpenKernelLog()
	if err != nil {
		g.Fail(err)
	}
	t := &tester{g: g, kmsg: kmsg}
	err = t.run(ctx, strings.Split(args["sedboot.nqns"], ","))
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

func (t *tester) run(ctx context.Context, nqns []string) error {
	if _, err := modload.Load(ctx, "/"); err != nil {
		return err
	}
	if err := guest.ConfigureStatic(ctx, "eth0", "10.0.2.15/24", ""); err != nil {
		return err
	}
	var h nvmeof.Host
	entries, err := h.Discover(ctx, nvmeof.Target{Address: "10.0.2.100", Port: 4420, HostNQN: hostNQN, HostID: hostID})
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	found := 0
	for _, e := range entries {
		t.g.Reportf("discovery entry: trtype %d adrfam %d subtype %d traddr %s trsvcid %s subnqn %s", e.TransportType, e.AddressFamily, e.SubsystemType, e.TrAddr, e.TrSvcID, e.SubNQN)
		for _, nqn := range nqns {
			if e.SubNQN == nqn && e.TrAddr == "10.0.2.100" && e.TrSvcID == "4420" && e.TransportType == 3 {
				found++
			}
		}
	}
	if found != len(nqns) || len(entries) != len(nqns) {
		return fmt.Errorf("discovery log lists %d entries, %d of them ours; want %d", len(entries), found, len(nqns))
	}
	var disks []string
	for i, nqn := range nqns {
		tgt := nvmeof.Target{Address: "10.0.2.100", Port: 4420, NQN: nqn, HostNQN: hostNQN, HostID: hostID, CtrlLossTmo: 5, ReconnectDelay: 1}
		var c nvmeof.Controller
		var err error
		start := time.Now()
		if i == 1 {
			c, err = t.connectRaw(tgt, ",hdr_digest,data_digest")
		} else {
			c, err = h.Connect(ctx, tgt)
		}
		if err != nil {
			return fmt.Errorf("connect %s: %w", nqn, err)
		}
		devs, err := h.WaitNamespaces(ctx, c, 1)
		if err != nil {
			return err
		}
		t.g.Reportf("connected %s as %s (cntlid %d) in %s: %v", nqn, c.Name, c.CntlID, time.Since(start).Round(time.Millisecond), devs)
		disks = append(disks, devs[0])
		if err := t.tcgDiscovery(c.Device()); err != nil {
			return fmt.Errorf("%s: %w", c.Device(), err)
		}
	}
	pattern := bytes.Repeat([]byte("sedboot nvmetcp linux interop. "), 1<<20/31+1)[:1<<20]
	for _, d := range disks {
		if err := guest.DirectWrite(d, 1<<20, pattern); err != nil {
			return err
		}
		got, err := guest.DirectRead(d, 1<<20, len(pattern))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, pattern) {
			return fmt.Errorf("%s: data read back differs", d)
		}
		t.g.Reportf("%s: 1 MiB O_DIRECT write and read back ok", d)
	}
	if err := t.sedOpal(disks[0], pattern); err != nil {
		return err
	}
	t.kmsg.Echo(t.g, "kmsg", "nvme", "opal")
	return t.afterPowerCycle(ctx, disks[0], pattern)
}

// afterPowerCycle waits for the host to power-cycle the first drive: the
// kernel reconnects by itself, and reads fail once the drive locked on
// reset. Unlocking with sed-opal again brings the data back.
func (t *tester) afterPowerCycle(ctx context.Context, dev string, pattern []byte) error {
	t.g.Reportf("awaiting power cycle of %s", dev)
	for {
		// Access Denied (ENODATA) means the drive locked; other errors
		// come from the associations going down, and a command may still
		// reach the drive before its power cycle.
		_, err := guest.DirectRead(dev, 1<<20, 4096)
		if errors.Is(err, unix.ENODATA) {
			t.g.Reportf("%s: read after power cycle fails as it must: %v", dev, err)
			break
		}
		if err != nil {
			t.g.Reportf("%s: read while the power cycle is under way: %v", dev, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never locked after the power cycle: %w", dev, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	fd, err := unix.Open(dev, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	unlock := opalLockUnlock{Session: opalSessionInfo{Key: key(password)}, LState: 0x02}
	if err := opalIoctl(fd, 221, unsafe.Pointer(&unlock), unsafe.Sizeof(unlock)); err != nil {
		return fmt.Errorf("IOC_OPAL_LOCK_UNLOCK(RW) after power cycle: %w", err)
	}
	got, err := guest.DirectRead(dev, 1<<20, len(pattern))
	if err != nil {
		return fmt.Errorf("read after unlocking the power-cycled drive: %w", err)
	}
	if !bytes.Equal(got, pattern) {
		return fmt.Errorf("%s: data after power cycle and unlock differs", dev)
	}
	t.g.Reportf("%s: unlocked after power cycle, data intact", dev)
	return nil
}

// connectRaw writes an options string with extra flags to /dev/nvme-fabrics.
func (t *tester) connectRaw(tgt nvmeof.Target, extra string) (nvmeof.Controller, error) {
	opts, err := tgt.Options()
	if err != nil {
		return nvmeof.Controller{}, err
	}
	f, err := os.OpenFile("/dev/nvme-fabrics", os.O_RDWR, 0)
	if err != nil {
		return nvmeof.Controller{}, err
	}
	defer f.Close()
	t.g.Reportf("writing %q to /dev/nvme-fabrics", opts+extra)
	if _, err := f.Write([]byte(opts + extra)); err != nil {
		return nvmeof.Controller{}, err
	}
	buf := make([]byte, 256)
	n, err := f.Read(buf)
	if err != nil {
		return nvmeof.Controller{}, err
	}
	return nvmeof.ParseConnectResponse(string(buf[:n]))
}

func (t *tester) tcgDiscovery(dev string) error {
	d, err := drive.Open(dev)
	if err != nil {
		return err
	}
	defer d.Close()
	d0, err := core.Discovery0(d)
	if err != nil {
		return fmt.Errorf("level 0 discovery: %w", err)
	}
	if d0.OpalV2 == nil || d0.Locking == nil {
		return errors.New("level 0 discovery: no Opal 2 / Locking feature")
	}
	cs, err := core.NewControlSession(d, d0)
	if err != nil {
		return fmt.Errorf("control session (1 MiB security receive): %w", err)
	}
	defer cs.Close()
	t.g.Reportf("%s: TCG level 0 ok: Opal 2 base ComID %#x, locking enabled %v, locked %v", dev, d0.OpalV2.BaseComID, d0.Locking.LockingEnabled, d0.Locking.Locked)
	return nil
}

// sed-opal UAPI (include/uapi/linux/sed-opal.h).
type opalKey struct {
	LR      uint8
	KeyLen  uint8
	KeyType uint8
	_       [5]uint8
	Key     [256]uint8
}

type opalLRAct struct {
	Key    opalKey
	SUM    uint32
	NumLRs uint8
	LR     [9]uint8
	_      [2]uint8
}

type opalSessionInfo struct {
	SUM uint32
	Who uint32
	Key opalKey
}

type opalUserLRSetup struct {
	RangeStart  uint64
	RangeLength uint64
	RLE, WLE    uint32
	Session     opalSessionInfo
}

type opalLockUnlock struct {
	Session opalSessionInfo
	LState  uint32
	Flags   uint16
	_       [2]uint8
}

func iow(nr uintptr, size uintptr) uintptr { return 1<<30 | size<<16 | 'p'<<8 | nr }

func opalIoctl(fd int, nr uintptr, p unsafe.Pointer, size uintptr) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), iow(nr, size), uintptr(p))
	if e != 0 {
		return e
	}
	return nil
}

// password is the test's Opal credential (a test value, not a secret).
const password = "linux-sed-opal-test-password"

// step is one sed-opal ioctl with its argument.
type step struct {
	name string
	nr   uintptr
	p    unsafe.Pointer
	size uintptr
}

func key(pw string) opalKey {
	var k opalKey
	k.KeyLen = uint8(len(pw))
	copy(k.Key[:], pw)
	return k
}

func (t *tester) sedOpal(dev string, pattern []byte) error {
	fd, err := unix.Open(dev, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	k := key(password)
	var steps []step
	act := opalLRAct{Key: k, NumLRs: 1} // the kernel insists on num_lrs >= 1 even without single user mode
	setup := opalUserLRSetup{RLE: 1, WLE: 1, Session: opalSessionInfo{Key: k}}
	lock := opalLockUnlock{Session: opalSessionInfo{Key: k}, LState: 0x04}
	unlock := opalLockUnlock{Session: opalSessionInfo{Key: k}, LState: 0x02}
	steps = append(steps,
		step{"IOC_OPAL_TAKE_OWNERSHIP", 222, unsafe.Pointer(&k), unsafe.Sizeof(k)},
		step{"IOC_OPAL_ACTIVATE_LSP", 223, unsafe.Pointer(&act), unsafe.Sizeof(act)},
		step{"IOC_OPAL_LR_SETUP", 227, unsafe.Pointer(&setup), unsafe.Sizeof(setup)},
		step{"IOC_OPAL_LOCK_UNLOCK(LK)", 221, unsafe.Pointer(&lock), unsafe.Sizeof(lock)},
	)
	for _, s := range steps {
		if err := opalIoctl(fd, s.nr, s.p, s.size); err != nil {
			return fmt.Errorf("%s on %s: %w", s.name, dev, err)
		}
		t.g.Reportf("%s on %s ok", s.name, dev)
	}
	if _, err := guest.DirectRead(dev, 1<<20, 4096); err == nil {
		return fmt.Errorf("%s: read succeeded while the global range is locked", dev)
	} else {
		t.g.Reportf("%s: read while locked fails as it must: %v", dev, err)
	}
	if err := opalIoctl(fd, 221, unsafe.Pointer(&unlock), unsafe.Sizeof(unlock)); err != nil {
		return fmt.Errorf("IOC_OPAL_LOCK_UNLOCK(RW) on %s: %w", dev, err)
	}
	got, err := guest.DirectRead(dev, 1<<20, len(pattern))
	if err != nil {
		return fmt.Errorf("read after sed-opal unlock: %w", err)
	}
	if !bytes.Equal(got, pattern) {
		return fmt.Errorf("%s: data after unlock differs", dev)
	}
	t.g.Reportf("%s: sed-opal unlock ok, data intact", dev)
	return nil
}
