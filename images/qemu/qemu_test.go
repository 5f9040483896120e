package qemu

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/images/filelock"
)

func validConfig(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd", "disk.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Config{
		Name:   "t",
		Kernel: filepath.Join(dir, "vmlinuz"),
		Initrd: filepath.Join(dir, "initrd"),
		Net:    &UserNet{Forwards: []Forward{{GuestPort: 4420, Host: "127.0.0.1:5555"}}},
		Drives: []Drive{{Path: filepath.Join(dir, "disk.img"), Interface: "nvme"}},
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"valid", func(*Config) {}, ""},
		{"no kernel", func(c *Config) { c.Kernel = "" }, "no kernel"},
		{"missing initrd", func(c *Config) { c.Initrd += ".missing" }, "initrd"},
		{"forward to a public address", func(c *Config) { c.Net.Forwards[0].Host = "192.0.2.1:80" }, "loopback"},
		{"forward to a host name", func(c *Config) { c.Net.Forwards[0].Host = "localhost:80" }, "loopback"},
		{"forward to IPv6 loopback", func(c *Config) { c.Net.Forwards[0].Host = "[::1]:80" }, "IPv4 loopback"},
		{"forward to another loopback address", func(c *Config) { c.Net.Forwards[0].Host = "127.0.0.2:80" }, ""},
		{"forward without port", func(c *Config) { c.Net.Forwards[0].Host = "127.0.0.1" }, "forward to"},
		{"guest address outside the user net", func(c *Config) { c.Net.Forwards[0].GuestAddr = "10.0.3.100" }, "10.0.2.0/24"},
		{"guest address of the gateway", func(c *Config) { c.Net.Forwards[0].GuestAddr = "10.0.2.2" }, "used by QEMU"},
		{"guest port zero", func(c *Config) { c.Net.Forwards[0].GuestPort = 0 }, "guest port"},
		{"same guest address twice", func(c *Config) {
			c.Net.Forwards = append(c.Net.Forwards, Forward{GuestPort: 4420, Host: "127.0.0.1:1"})
		}, "forwarded twice"},
		{"kernel argument with a space", func(c *Config) { c.Cmdline = []string{"a b"} }, "space"},
		{"drive interface", func(c *Config) { c.Drives[0].Interface = "ide" }, "want nvme or virtio"},
		{"link without sockets", func(c *Config) { c.Links = []LinkEnd{{}} }, "link 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig(t)
			tt.mutate(&c)
			c.setDefaults()
			err := c.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	c := validConfig(t)
	ends, err := NewLink(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	c.Links = []LinkEnd{ends[1]}
	c.Cmdline = []string{"sedboot.test=x"}
	c.setDefaults()
	args, err := c.args("/self", "/fwd")
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-machine q35", "-accel tcg", "-cpu max", "-nographic", "-no-reboot", "-m 512",
		"-append console=ttyS0 panic=-1 cryptomgr.notests sedboot.test=x",
		"user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:4420-cmd:/self " + helperArg + " 127.0.0.1:5555 /fwd",
		"dgram,id=link0,local.type=unix,local.path=" + ends[1].Local + ",remote.type=unix,remote.path=" + ends[0].Local,
		"virtio-net-pci,netdev=link0,romfile=,mac=52:54:00:aa:03:02",
		"nvme,drive=drive0,serial=SEDBOOT0000",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("QEMU arguments lack %q:\n%s", want, line)
		}
	}
	if strings.Index(line, "netdev=net0") > strings.Index(line, "netdev=link0") {
		t.Error("the user-network NIC must come first (eth0)")
	}
	if _, err := c.args("/path with space", "/fwd"); err == nil {
		t.Error("a helper path with a space was accepted into a guestfwd command")
	}
}

func TestNewLink(t *testing.T) {
	ends, err := NewLink("/tmp/x", 1)
	if err != nil {
		t.Fatal(err)
	}
	if ends[0].Local != ends[1].Remote || ends[1].Local != ends[0].Remote || ends[0].MAC == ends[1].MAC {
		t.Errorf("link ends do not mirror each other: %+v", ends)
	}
	if _, err := NewLink("/tmp/"+strings.Repeat("d", 100), 0); err == nil {
		t.Error("a socket path longer than a unix socket allows was accepted")
	}
}

func TestReserveSlots(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a, err := reserveSlots(ctx, dir, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reserveSlots(ctx, dir, 2, 3); err == nil {
		t.Fatal("reserved more slots than the limit")
	}
	// One slot is taken: a pair cannot start, and must not keep the
	// free slot while it waits.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := reserveSlots(short, dir, 2, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pair with one slot free = %v, want to wait until the deadline", err)
	}
	b, err := reserveSlots(ctx, dir, 2, 1)
	if err != nil {
		t.Fatalf("the free slot was kept by the failed pair: %v", err)
	}
	release(a)
	release(b)
	pair, err := reserveSlots(ctx, dir, 2, 2)
	if err != nil || len(pair) != 2 {
		t.Fatalf("pair with both slots free = %v, %v", pair, err)
	}
	release(pair)
}

// The forward helper, as QEMU runs it: this test binary re-executed with
// the connection on its standard input and output.
func TestForwardHelper(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	guestSide := os.NewFile(uintptr(fds[0]), "guest")
	helperSide := os.NewFile(uintptr(fds[1]), "helper")
	defer guestSide.Close()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(self, helperArg, ln.Addr().String(), dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = helperSide, helperSide, helperSide
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	helperSide.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()

	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	host, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if pids := liveHelpers(dir); len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Errorf("registered helpers = %v, want [%d]", pids, cmd.Process.Pid)
	}
	host.SetDeadline(time.Now().Add(30 * time.Second))
	guestSide.SetDeadline(time.Now().Add(30 * time.Second))

	if _, err := io.WriteString(guestSide, "from guest\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(host).ReadString('\n'); err != nil || line != "from guest\n" {
		t.Fatalf("host read %q, %v", line, err)
	}
	if _, err := io.WriteString(host, "from host\n"); err != nil {
		t.Fatal(err)
	}
	// The host closes: the guest must see its data, then the end.
	host.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(guestSide)
	if err != nil || string(rest) != "from host\n" {
		t.Fatalf("guest read %q, %v; want the host's line then EOF", rest, err)
	}
	// The guest closes its side too: the helper finishes and unregisters.
	unix.Shutdown(int(guestSide.Fd()), unix.SHUT_WR)
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Errorf("helper exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("helper still runs after both sides closed")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("helper left its registration behind: %v", entries)
	}
}

// A helper that cannot reach the host exits at once and says why in
// forward.log, never on the guest's connection.
func TestForwardHelperDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	guestSide := os.NewFile(uintptr(fds[0]), "guest")
	helperSide := os.NewFile(uintptr(fds[1]), "helper")
	defer guestSide.Close()
	self, _ := os.Executable()
	base := t.TempDir()
	dir := filepath.Join(base, "fwd")
	os.Mkdir(dir, 0o755)
	cmd := exec.Command(self, helperArg, addr, dir)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = helperSide, helperSide, helperSide
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	helperSide.Close()
	if err := cmd.Wait(); err == nil {
		t.Error("helper succeeded without a host to reach")
	}
	guestSide.SetDeadline(time.Now().Add(10 * time.Second))
	if got, _ := io.ReadAll(guestSide); len(got) != 0 {
		t.Errorf("helper wrote %q to the guest's connection", got)
	}
	if log, err := os.ReadFile(filepath.Join(base, "forward.log")); err != nil || !strings.Contains(string(log), addr) {
		t.Errorf("forward.log = %q, %v; want the failed address", log, err)
	}
}

func TestStartRejectsBadConfigWithoutStarting(t *testing.T) {
	c := validConfig(t)
	c.Net.Forwards[0].Host = "8.8.8.8:53"
	if _, err := Start(context.Background(), c); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("Start = %v, want the non-loopback forward refused", err)
	}
}

// A caller waiting for two slots is served before later callers that want
// one, instead of losing every freed slot to them.
func TestReserveSlotsQueuesFairly(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, err := reserveSlots(ctx, dir, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	pair := make(chan []*filelock.Held, 1)
	go func() {
		p, err := reserveSlots(ctx, dir, 2, 2)
		if err != nil {
			t.Error(err)
		}
		pair <- p
	}()
	// Wait until the pair waits at the head of the queue (holds the gate).
	for deadline := time.Now().Add(10 * time.Second); ; {
		g, err := filelock.TryLock(filepath.Join(dir, "gate"))
		if errors.Is(err, filelock.ErrBusy) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		g.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("the pair never queued")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Without the queue, this caller would grab the slot freed below and
	// the pair would wait until the context's deadline.
	single := make(chan []*filelock.Held, 1)
	go func() {
		s, err := reserveSlots(ctx, dir, 2, 1)
		if err != nil {
			t.Error(err)
		}
		single <- s
	}()
	time.Sleep(200 * time.Millisecond) // let the single caller start polling
	release(first)
	p := <-pair
	if len(p) != 2 {
		t.Fatalf("pair got %d slots", len(p))
	}
	release(p)
	if s := <-single; len(s) != 1 {
		t.Fatalf("single got %d slots after the pair finished", len(s))
	} else {
		release(s)
	}
}
