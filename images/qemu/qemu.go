// Package qemu boots test guests: a q35 machine under TCG with the given
// kernel and initramfs, its serial console captured to a file and searchable
// while it runs, QEMU user networking locked down with restrict=on whose only
// ways out are forwards to 127.0.0.1 ports the caller chose, and point-to-point
// links between guests.
//
// A guest never outlives the Machine: QEMU runs in its own process group,
// dies with the process that started it (PR_SET_PDEATHSIG), is killed when
// the context given to Start ends, when its hard timeout expires, or on Kill,
// and the forward helpers QEMU spawns (which leave its process group) are
// tracked and killed too. At most MaxGuests guests run at once on the host,
// across all processes, through lock files in a well-known directory.
//
// Forwards: each guest connection to a forwarded address makes QEMU start
// one helper process that dials the host address once and relays bytes.
// The helper is the running program itself, re-executed with a marker
// argument that this package's init function recognises; a program that
// imports this package therefore serves as its own helper.
package qemu

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultMemoryMiB = 512
	DefaultTimeout   = 5 * time.Minute
	// DefaultGuestAddr is the address forwarded ports appear on in the guest.
	DefaultGuestAddr = "10.0.2.100"
	// GuestIP is the address the guest should give its user-network NIC
	// (QEMU's default DHCP lease; the host side is 10.0.2.2).
	GuestIP = "10.0.2.15"
	// GuestGateway is QEMU's user-network gateway.
	GuestGateway = "10.0.2.2"
)

// Config describes one guest.
type Config struct {
	// Name labels the guest in logs and file names (default "guest").
	Name string
	// Kernel and Initrd are the kernel image and initramfs to boot.
	Kernel, Initrd string
	// Cmdline is appended to the kernel command line after
	// "console=ttyS0 panic=-1 cryptomgr.notests"; scenarios go here.
	Cmdline []string
	// MemoryMiB is the guest's RAM (default DefaultMemoryMiB).
	MemoryMiB int
	// CPUs is the number of virtual CPUs (default 1).
	CPUs int
	// Net, when set, gives the guest a virtio NIC (its first: eth0 without
	// udev) on QEMU user networking with restrict=on.
	Net *UserNet
	// Links are point-to-point links to other guests, one virtio NIC each,
	// after the user-network NIC.
	Links []LinkEnd
	// Drives are disks attached to the guest.
	Drives []Drive
	// Dir holds the console log and the guest's sockets and helper state
	// (default: a new temporary directory, removed when the guest ends).
	Dir string
	// Timeout is the hard limit on the guest's life, counted from Start
	// (default DefaultTimeout).
	Timeout time.Duration
	// ExtraArgs are appended to QEMU's arguments.
	ExtraArgs []string
	// Binary is the QEMU program (default "qemu-system-x86_64" from PATH).
	Binary string
	// Log receives lifecycle messages (default slog.Default()).
	Log *slog.Logger
}

// UserNet is QEMU user networking with restrict=on: the guest reaches
// nothing but the forwards.
type UserNet struct {
	// Forwards lead guest connections to host addresses.
	Forwards []Forward
	// MAC is the NIC's address (default 52:54:00:12:34:56).
	MAC string
}

// Forward makes GuestAddr:GuestPort in the guest lead to Host on the host:
// every guest connection becomes one new host connection.
type Forward struct {
	// GuestAddr is the address in the guest (default DefaultGuestAddr); it
	// must be in 10.0.2.0/24 and not one QEMU uses itself.
	GuestAddr string
	// GuestPort is the port in the guest.
	GuestPort int
	// Host is the host address, which must be on 127.0.0.0/8, e.g.
	// "127.0.0.1:4420".
	Host string
}

// Drive is a disk image attached to the guest.
type Drive struct {
	// Path is the image file (raw format).
	Path string
	// Interface is "nvme" (an emulated NVMe controller, /dev/nvmeXn1 in
	// the guest) or "virtio" (/dev/vdX).
	Interface string
	// Serial is the drive's serial number (NVMe requires one; default
	// derived from its position).
	Serial string
	// ReadOnly attaches the image read-only.
	ReadOnly bool
}

func (c *Config) setDefaults() {
	if c.Name == "" {
		c.Name = "guest"
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Binary == "" {
		c.Binary = "qemu-system-x86_64"
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Net != nil {
		for i := range c.Net.Forwards {
			if c.Net.Forwards[i].GuestAddr == "" {
				c.Net.Forwards[i].GuestAddr = DefaultGuestAddr
			}
		}
		if c.Net.MAC == "" {
			c.Net.MAC = "52:54:00:12:34:56"
		}
	}
}

func (c *Config) validate() error {
	for _, f := range []struct{ what, path string }{{"kernel", c.Kernel}, {"initrd", c.Initrd}} {
		if f.path == "" {
			return fmt.Errorf("no %s given", f.what)
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.what, err)
		}
	}
	if c.MemoryMiB < 64 || c.CPUs < 1 || c.CPUs > 8 {
		return fmt.Errorf("memory %d MiB / %d CPUs out of range", c.MemoryMiB, c.CPUs)
	}
	for _, a := range c.Cmdline {
		if a == "" || strings.ContainsAny(a, " \t\n\"") {
			return fmt.Errorf("kernel argument %q: empty or contains a space or quote", a)
		}
	}
	if c.Net != nil {
		seen := map[string]bool{}
		for _, f := range c.Net.Forwards {
			if err := f.validate(); err != nil {
				return err
			}
			k := net.JoinHostPort(f.GuestAddr, strconv.Itoa(f.GuestPort))
			if seen[k] {
				return fmt.Errorf("forward: guest address %s forwarded twice", k)
			}
			seen[k] = true
		}
	}
	for i, d := range c.Drives {
		if d.Interface != "nvme" && d.Interface != "virtio" {
			return fmt.Errorf("drive %d (%s): interface %q, want nvme or virtio", i, d.Path, d.Interface)
		}
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("drive %d: %w", i, err)
		}
		if strings.Contains(d.Path, ",") || strings.ContainsAny(d.Serial, ", ") {
			return fmt.Errorf("drive %d: path or serial contains a comma or space", i)
		}
	}
	for i, l := range c.Links {
		if l.Local == "" || l.Remote == "" {
			return fmt.Errorf("link %d: missing socket path (make links with NewLink)", i)
		}
	}
	return nil
}

func (f Forward) validate() error {
	ga := net.ParseIP(f.GuestAddr).To4()
	if ga == nil || ga[0] != 10 || ga[1] != 0 || ga[2] != 2 {
		return fmt.Errorf("forward: guest address %q is not in QEMU's 10.0.2.0/24", f.GuestAddr)
	}
	switch ga[3] {
	case 0, 2, 3, 4, 15, 255:
		return fmt.Errorf("forward: guest address %s is used by QEMU or the guest itself", f.GuestAddr)
	}
	if f.GuestPort < 1 || f.GuestPort > 65535 {
		return fmt.Errorf("forward: guest port %d out of range", f.GuestPort)
	}
	host, port, err := net.SplitHostPort(f.Host)
	if err != nil {
		return fmt.Errorf("forward to %q: %w", f.Host, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return fmt.Errorf("forward to %q: host must be an IPv4 loopback address (127.0.0.0/8)", f.Host)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("forward to %q: bad port", f.Host)
	}
	return nil
}

// args returns QEMU's command line for c. self is the helper program,
// fwdDir the directory helpers register in.
func (c *Config) args(self, fwdDir string) ([]string, error) {
	// cryptomgr.notests skips the kernel's crypto self-tests, which take
	// about 0.9 s of every boot under TCG (1 ms on hardware): a test guest's
	// crypto is tested where it matters, on the host.
	cmdline := append([]string{"console=ttyS0", "panic=-1", "cryptomgr.notests"}, c.Cmdline...)
	args := []string{
		"-name", c.Name,
		"-machine", "q35",
		"-accel", "tcg",
		"-cpu", "max",
		"-smp", strconv.Itoa(c.CPUs),
		"-m", strconv.Itoa(c.MemoryMiB),
		"-nographic",
		"-vga", "none",
		"-no-reboot",
		"-kernel", c.Kernel,
		"-initrd", c.Initrd,
		"-append", strings.Join(cmdline, " "),
	}
	if c.Net == nil && len(c.Links) == 0 {
		args = append(args, "-nic", "none")
	}
	if c.Net != nil {
		netdev := "user,id=net0,restrict=on"
		for _, f := range c.Net.Forwards {
			for _, s := range []string{self, fwdDir} {
				if strings.ContainsAny(s, " ,\"'\\") {
					return nil, fmt.Errorf("forward helper path %q contains a space, comma, quote or backslash", s)
				}
			}
			netdev += fmt.Sprintf(",guestfwd=tcp:%s:%d-cmd:%s %s %s %s",
				f.GuestAddr, f.GuestPort, self, helperArg, f.Host, fwdDir)
		}
		args = append(args, "-netdev", netdev,
			"-device", "virtio-net-pci,netdev=net0,romfile=,mac="+c.Net.MAC)
	}
	for i, l := range c.Links {
		id := fmt.Sprintf("link%d", i)
		args = append(args,
			"-netdev", fmt.Sprintf("dgram,id=%s,local.type=unix,local.path=%s,remote.type=unix,remote.path=%s", id, l.Local, l.Remote),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=%s,romfile=,mac=%s", id, l.MAC))
	}
	for i, d := range c.Drives {
		id := fmt.Sprintf("drive%d", i)
		drive := fmt.Sprintf("file=%s,if=none,id=%s,format=raw,cache=unsafe", d.Path, id)
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		serial := d.Serial
		if serial == "" {
			serial = fmt.Sprintf("SEDBOOT%04d", i)
		}
		dev := "virtio-blk-pci,drive=" + id + ",serial=" + serial
		if d.Interface == "nvme" {
			dev = "nvme,drive=" + id + ",serial=" + serial
		}
		args = append(args, "-drive", drive, "-device", dev)
	}
	return append(args, c.ExtraArgs...), nil
}

// LinkEnd is one guest's end of a point-to-point link (a unix datagram
// socket pair): what one guest's NIC sends, the other's receives. A guest
// that is not running yet simply misses the frames, like an unplugged cable.
type LinkEnd struct {
	// Local is this end's socket, Remote the other end's.
	Local, Remote string
	// MAC is this end's NIC address.
	MAC string
}

// NewLink returns the two ends of a new link whose sockets live in dir
// (a short path: unix socket paths are limited to 107 bytes). index
// distinguishes several links in the same dir and goes into the MACs.
func NewLink(dir string, index int) ([2]LinkEnd, error) {
	if index < 0 || index > 255 {
		return [2]LinkEnd{}, fmt.Errorf("new link: index %d out of range 0..255", index)
	}
	a := filepath.Join(dir, fmt.Sprintf("link%d-a.sock", index))
	b := filepath.Join(dir, fmt.Sprintf("link%d-b.sock", index))
	if len(a) > 100 {
		return [2]LinkEnd{}, fmt.Errorf("new link: socket path %s too long for a unix socket", a)
	}
	if strings.ContainsAny(dir, ", ") {
		return [2]LinkEnd{}, fmt.Errorf("new link: directory %q contains a comma or space", dir)
	}
	return [2]LinkEnd{
		{Local: a, Remote: b, MAC: fmt.Sprintf("52:54:00:aa:%02x:01", index)},
		{Local: b, Remote: a, MAC: fmt.Sprintf("52:54:00:aa:%02x:02", index)},
	}, nil
}

// ErrExited is returned by waits when the guest ended before what was
// awaited happened.
var ErrExited = errors.New("guest exited")

// Exit describes how a guest ended.
type Exit struct {
	// Code is QEMU's exit status (-1 when killed by a signal).
	Code int
	// Panicked reports that the guest kernel panicked (its console says
	// so); with panic=-1 and -no-reboot QEMU then exits with status 0.
	Panicked bool
	// Killed reports that the harness killed QEMU (Kill, context, timeout).
	Killed bool
	// TimedOut reports that the hard timeout expired.
	TimedOut bool
	// Uptime is the time from Start to QEMU's exit.
	Uptime time.Duration
}

// Clean reports whether the guest powered off by itself without a panic.
func (e Exit) Clean() bool {
	return e.Code == 0 && !e.Panicked && !e.Killed
}

func (e Exit) String() string {
	switch {
	case e.TimedOut:
		return fmt.Sprintf("killed after its hard timeout (%s)", e.Uptime.Round(time.Millisecond))
	case e.Killed:
		return fmt.Sprintf("killed after %s", e.Uptime.Round(time.Millisecond))
	case e.Panicked:
		return fmt.Sprintf("kernel panic after %s", e.Uptime.Round(time.Millisecond))
	default:
		return fmt.Sprintf("exited with status %d after %s", e.Code, e.Uptime.Round(time.Millisecond))
	}
}

// lookPath finds the QEMU binary with a helpful error.
func lookPath(bin string) (string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("%s not found (scripts/prereqs.sh installs qemu-system-x86): %w", bin, err)
	}
	return p, nil
}
