package nvmetcp_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/boottest"
	"github.com/sedboot/sedboot/images/guest"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/initramfs"
	"github.com/sedboot/sedboot/internal/nvmetcp"
	"github.com/sedboot/sedboot/internal/opalsim"
)

// TestLinuxHost boots Debian's 6.12 kernel in QEMU and lets its nvme-tcp
// driver and sed-opal use two opalsim drives through the target: discovery,
// connect
// (one with header and data digests), O_DIRECT I/O, TCG discovery and a
// 1 MiB security receive through the admin passthrough, and sed-opal
// ownership, activation, lock and unlock; then a power cycle through the
// target, after which the kernel reconnects on its own, reads fail until
// sed-opal unlocks again, and the data is intact.
func TestLinuxHost(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest")
	}
	boottest.RequireQEMU(t)
	k := boottest.Kernel(t)
	img := boottest.Image(t, initramfs.Spec{
		Init:          "./testdata/linuxhost",
		Modules:       boottest.Modules(t, k, "nvme-tcp", "virtio_net"),
		KernelVersion: k.Version,
	})

	tg, err := nvmetcp.NewTarget(nil, nvmetcp.Options{AdvertiseAddr: "10.0.2.100:4420"})
	if err != nil {
		t.Fatal(err)
	}
	var nqns []string
	var drives []*opalsim.Drive
	for _, serial := range []string{"LNXHOST0", "LNXHOST1"} {
		d, err := opalsim.NewMemory(opalsim.Config{Serial: serial, Model: "sedboot opalsim", Firmware: "T1",
			Blocks: 64 << 11, MBRSize: 1 << 20, DataStoreSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		nqn := "nqn.2026-11.io.sedboot:sim:" + serial
		if err := tg.AddSubsystem(nqn, d); err != nil {
			t.Fatal(err)
		}
		nqns = append(nqns, nqn)
		drives = append(drives, d)
	}
	l := boottest.Listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- tg.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		tg.Close()
		<-served
	})

	cfg := qemu.Config{Name: "nvmetcp-linux", Kernel: k.BootImage(), Initrd: img.Path, CPUs: 2,
		Cmdline: []string{"sedboot.nqns=" + strings.Join(nqns, ",")},
		Net:     &qemu.UserNet{Forwards: []qemu.Forward{{GuestPort: 4420, Host: l.Addr().String()}}},
	}
	start := time.Now()
	m := boottest.Boot(t, cfg)
	boottest.WaitFor(t, m, guest.Started)
	boottest.WaitFor(t, m, "sed-opal unlock ok, data intact")
	boottest.WaitFor(t, m, "awaiting power cycle")
	if err := tg.PowerCycle(context.Background(), nqns[0], drives[0].PowerCycle); err != nil {
		t.Fatal(err)
	}
	boottest.WaitFor(t, m, "read after power cycle fails as it must")
	boottest.WaitFor(t, m, "unlocked after power cycle, data intact")
	boottest.WaitFor(t, m, guest.Passed)
	t.Logf("guest start to pass: %s", time.Since(start).Round(time.Millisecond))
	boottest.WaitExit(t, m)

	for _, r := range boottest.EchoedKernelLog(m.ConsoleText()) {
		after, msg := r.Label == "kmsg-after", r.Msg
		t.Logf("%s %s: %s", guest.Marker, r.Label, msg)
		// Locked reads fail with Access Denied; after the power cycle the
		// host sees its connections drop and reconnects.
		if strings.Contains(msg, "sc 0x86") || strings.Contains(msg, "medium error") || strings.Contains(msg, "I/O error") {
			continue
		}
		if after && boottest.NVMeReconnect.MatchString(msg) {
			continue
		}
		if boottest.NVMeTrouble.MatchString(msg) {
			t.Errorf("kernel reports a problem: %s", msg)
		}
	}
	st := drives[0].Status()
	if !st.LockingEnabled || !st.Ranges[0].ReadLockEnabled || st.Ranges[0].ReadLocked {
		t.Errorf("drive 0 after the guest: locking enabled %v, RLE %v, read locked %v; want enabled, RLE, unlocked",
			st.LockingEnabled, st.Ranges[0].ReadLockEnabled, st.Ranges[0].ReadLocked)
	}
}
