package qemu_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/boottest"
	"github.com/sedboot/sedboot/images/guest"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/initramfs"
)

// smokeGuest returns a guest configuration booting the smoke image (built
// once per test process; later calls find it in the cache) with the given
// scenario arguments.
func smokeGuest(t *testing.T, name string, cmdline ...string) qemu.Config {
	t.Helper()
	boottest.RequireQEMU(t)
	k := boottest.Kernel(t)
	img := boottest.Image(t, initramfs.Spec{
		Init:          "./testdata/smokeinit",
		Modules:       boottest.Modules(t, k, "nvme-tcp", "virtio_net"),
		KernelVersion: k.Version,
	})
	return qemu.Config{Name: name, Kernel: k.BootImage(), Initrd: img.Path, Cmdline: cmdline}
}

// echoServer answers every line with "echo: <line>" and records what it got.
type echoServer struct {
	ln       net.Listener
	accepted chan struct{} // one value per accepted connection
	mu       sync.Mutex
	lines    []string
}

func startEcho(t *testing.T) *echoServer {
	s := &echoServer{ln: boottest.Listen(t), accepted: make(chan struct{}, 100)}
	go func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.accepted <- struct{}{}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				s.mu.Lock()
				s.lines = append(s.lines, strings.TrimSpace(line))
				s.mu.Unlock()
				fmt.Fprintf(c, "echo: %s", line)
			}()
		}
	}()
	return s
}

func (s *echoServer) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func TestBootSmoke(t *testing.T) {
	echo := startEcho(t)
	cfg := smokeGuest(t, "smoke", "sedboot.test=smoke", "sedboot.echo=10.0.2.100:7777")
	cfg.Net = &qemu.UserNet{Forwards: []qemu.Forward{{GuestPort: 7777, Host: echo.ln.Addr().String()}}}
	m := boottest.Boot(t, cfg)

	boottest.WaitFor(t, m, guest.Started)
	t.Logf("QEMU start -> init: %s", time.Since(m.Started()).Round(time.Millisecond))
	for _, mod := range []string{"nvme_fabrics", "nvme_tcp", "failover", "net_failover", "virtio_net"} {
		boottest.Expect(t, m, guest.Marker+" module "+mod+" loaded=true")
	}
	boottest.WaitFor(t, m, "nvme-fabrics ready")
	boottest.WaitFor(t, m, "eth0 up")
	t.Logf("QEMU start -> network up: %s", time.Since(m.Started()).Round(time.Millisecond))
	boottest.WaitFor(t, m, "echo reply: echo: hello from the guest")
	boottest.WaitFor(t, m, guest.Passed)
	if e := boottest.WaitExit(t, m); !e.Clean() {
		t.Fatalf("guest did not power off cleanly: %s", e)
	} else {
		t.Logf("QEMU start -> power off: %s", e.Uptime.Round(time.Millisecond))
	}
	if got := echo.got(); len(got) != 1 || got[0] != "hello from the guest" {
		t.Errorf("host listener got %q, want one line from the guest", got)
	}
}

func TestBootSerialInput(t *testing.T) {
	m := boottest.Boot(t, smokeGuest(t, "serial", "sedboot.test=serial"))
	boottest.WaitFor(t, m, "type a line")
	if err := m.Send("over the serial line\n"); err != nil {
		t.Fatal(err)
	}
	boottest.WaitFor(t, m, "got line: over the serial line")
	boottest.WaitFor(t, m, guest.Passed)
	if e := boottest.WaitExit(t, m); !e.Clean() {
		t.Fatalf("guest did not power off cleanly: %s", e)
	}
}

func TestBootPanicIsReported(t *testing.T) {
	m := boottest.Boot(t, smokeGuest(t, "panic", "sedboot.test=panic"))
	e := boottest.WaitExit(t, m)
	if !e.Panicked || e.Clean() {
		t.Fatalf("exit = %+v, want a kernel panic", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.WaitFor(ctx, "never printed"); err == nil || !strings.Contains(err.Error(), "guest exited") {
		t.Errorf("WaitFor after exit = %v, want ErrExited", err)
	}
}

func TestBootHardTimeout(t *testing.T) {
	cfg := smokeGuest(t, "timeout", "sedboot.test=hang")
	cfg.Timeout = 2 * time.Second
	m := boottest.Boot(t, cfg)
	e := boottest.WaitExit(t, m)
	if !e.TimedOut || !e.Killed || e.Clean() {
		t.Fatalf("exit = %+v, want killed by the hard timeout", e)
	}
	if alive(m.Pid()) {
		t.Errorf("QEMU (pid %d) still runs after its timeout", m.Pid())
	}
}

// A guest killed while a forward connection is open leaves no QEMU and no
// forward helper behind.
func TestBootKillEndsForwardHelpers(t *testing.T) {
	echo := startEcho(t)
	cfg := smokeGuest(t, "hang", "sedboot.test=hang", "sedboot.echo=10.0.2.100:7777")
	cfg.Net = &qemu.UserNet{Forwards: []qemu.Forward{{GuestPort: 7777, Host: echo.ln.Addr().String()}}}
	m := boottest.Boot(t, cfg)
	boottest.WaitFor(t, m, "connected, hanging")
	// The guest's connection is complete before QEMU's helper runs; the
	// helper registers before it dials the host.
	select {
	case <-echo.accepted:
	case <-time.After(boottest.DefaultWait):
		t.Fatal("the forward helper never connected to the host listener")
	}
	helpers := m.ForwardHelpers()
	if len(helpers) != 1 {
		t.Fatalf("forward helpers = %v, want one for the open connection", helpers)
	}
	m.Kill()
	for _, pid := range append(helpers, m.Pid()) {
		if alive(pid) {
			t.Errorf("pid %d still runs after Kill", pid)
		}
	}
	if e, _ := m.Wait(context.Background()); !e.Killed {
		t.Errorf("exit = %+v, want Killed", e)
	}
}

func TestBootTwoGuestsOverALink(t *testing.T) {
	ends, err := qemu.NewLink(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	a := smokeGuest(t, "a", "sedboot.test=link", "sedboot.if=eth0", "sedboot.ip=192.168.77.1/24")
	a.Links = []qemu.LinkEnd{ends[0]}
	b := smokeGuest(t, "b", "sedboot.test=link", "sedboot.if=eth0", "sedboot.ip=192.168.77.2/24", "sedboot.peer=192.168.77.1")
	b.Links = []qemu.LinkEnd{ends[1]}
	ms := boottest.BootAll(t, a, b)
	boottest.WaitFor(t, ms[0], "link got: ping over the link")
	boottest.WaitFor(t, ms[1], "link reply: pong: ping over the link")
	for _, m := range ms {
		boottest.WaitFor(t, m, guest.Passed)
		if e := boottest.WaitExit(t, m); !e.Clean() {
			t.Errorf("guest %s: %s", m.Name(), e)
		}
	}
}

// alive reports whether pid is a live process (not gone, not a zombie).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

// BenchmarkBoot measures a guest's boot: QEMU start to the first line of
// /init, and to power-off of the smoke scenario (modules, network, one
// forwarded exchange). It compares the uncompressed kernel (PVH entry, what
// BootImage picks) with Debian's bzImage, each with the kernel's console
// messages ("verbose", the default of the harness) and with "quiet": under
// TCG every console character costs.
func BenchmarkBoot(b *testing.B) {
	for _, image := range []string{"vmlinux", "bzImage"} {
		for _, v := range []struct {
			name  string
			extra []string
		}{{"verbose", nil}, {"quiet", []string{"quiet"}}} {
			b.Run(image+"/"+v.name, func(b *testing.B) {
				var toInit, toOff time.Duration
				for i := 0; i < b.N; i++ {
					toInit1, toOff1 := bootOnce(b, image == "bzImage", v.extra)
					toInit += toInit1
					toOff += toOff1
				}
				b.ReportMetric(float64(toInit.Milliseconds())/float64(b.N), "ms-to-init")
				b.ReportMetric(float64(toOff.Milliseconds())/float64(b.N), "ms-to-poweroff")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

func bootOnce(b *testing.B, bzImage bool, extra []string) (toInit, toOff time.Duration) {
	b.Helper()
	boottest.RequireQEMU(b)
	k := boottest.Kernel(b)
	img := boottest.Image(b, initramfs.Spec{
		Init:          "./testdata/smokeinit",
		Modules:       boottest.Modules(b, k, "nvme-tcp", "virtio_net"),
		KernelVersion: k.Version,
	})
	ln := boottest.Listen(b)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "echo: %s", line)
			c.Close()
		}
	}()
	cfg := qemu.Config{
		Name: "bench", Kernel: k.BootImage(), Initrd: img.Path,
		Cmdline: append([]string{"sedboot.test=smoke", "sedboot.echo=10.0.2.100:7777"}, extra...),
		Net:     &qemu.UserNet{Forwards: []qemu.Forward{{GuestPort: 7777, Host: ln.Addr().String()}}},
	}
	if bzImage {
		cfg.Kernel = k.VmlinuzPath
	}
	m := boottest.Boot(b, cfg)
	boottest.WaitFor(b, m, guest.Started)
	toInit = time.Since(m.Started())
	boottest.WaitFor(b, m, guest.Passed)
	e := boottest.WaitExit(b, m)
	if !e.Clean() {
		b.Fatalf("guest: %s", e)
	}
	return toInit, e.Uptime
}

// The production layout: u-root's init sets the system up and runs our
// program as its uinit.
func TestBootURootInit(t *testing.T) {
	boottest.RequireQEMU(t)
	k := boottest.Kernel(t)
	img := boottest.Image(t, initramfs.Spec{
		URoot:         &initramfs.URoot{Uinit: "smokeinit"},
		Programs:      []string{"./testdata/smokeinit"},
		Modules:       boottest.Modules(t, k, "nvme-tcp", "virtio_net"),
		KernelVersion: k.Version,
	})
	echo := startEcho(t)
	m := boottest.Boot(t, qemu.Config{
		Name: "uroot", Kernel: k.BootImage(), Initrd: img.Path,
		Cmdline: []string{"sedboot.test=smoke", "sedboot.echo=10.0.2.100:7777"},
		Net:     &qemu.UserNet{Forwards: []qemu.Forward{{GuestPort: 7777, Host: echo.ln.Addr().String()}}},
	})
	boottest.WaitFor(t, m, guest.Started)
	t.Logf("QEMU start -> uinit: %s", time.Since(m.Started()).Round(time.Millisecond))
	boottest.WaitFor(t, m, "echo reply: echo: hello from the guest")
	boottest.WaitFor(t, m, guest.Passed)
	if e := boottest.WaitExit(t, m); !e.Clean() {
		t.Fatalf("guest did not power off cleanly: %s", e)
	}
}
