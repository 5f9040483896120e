// Package guest is for test programs that run as /init (or as u-root's
// uinit) inside a QEMU guest: it mounts the kernel file systems, reads the
// scenario from the kernel command line, brings up a static network,
// reports results on the console in a form the host's harness waits for,
// and powers the machine off.
//
// Console protocol: every line this package prints starts with Marker. The
// host waits for Marker+" pass" or Marker+" fail: <reason>".
package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Marker starts every line a guest test program reports.
const Marker = "SEDBOOT-TEST"

// Console lines the host waits for.
const (
	// Started is printed by Start, before anything else happens.
	Started = Marker + " started"
	// Passed is printed by Pass.
	Passed = Marker + " pass"
	// Failed starts the line Fail prints.
	Failed = Marker + " fail:"
)

// Guest reports on the console.
type Guest struct {
	out io.Writer
}

// Start reports Started and mounts /proc, /sys, /dev (devtmpfs) and /tmp,
// where they are not mounted yet. The Guest it returns (also with an
// error, to report it) writes to standard output when that is the console,
// and straight to /dev/console when standard output is a pipe, as under
// u-root's init, which copies a pipe to the consoles and would lose the
// last lines when the program powers off.
func Start() (*Guest, error) {
	g := &Guest{out: os.Stdout}
	var st unix.Stat_t
	if err := unix.Fstat(1, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
		if c, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
			g.out = c
		}
	}
	fmt.Fprintln(g.out, Started)
	mounts := []struct{ fstype, target string }{
		{"proc", "/proc"},
		{"sysfs", "/sys"},
		{"devtmpfs", "/dev"},
		{"tmpfs", "/tmp"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return g, fmt.Errorf("mount %s: %w", m.target, err)
		}
		err := unix.Mount(m.fstype, m.target, m.fstype, unix.MS_NOSUID, "")
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return g, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return g, nil
}

// Reportf prints one report line on the console.
func (g *Guest) Reportf(format string, args ...any) {
	fmt.Fprintf(g.out, "%s %s\n", Marker, fmt.Sprintf(format, args...))
}

// KernelArgs returns the kernel command line's parameters: "k=v" as k -> v,
// a bare "k" as k -> "".
func KernelArgs() (map[string]string, error) {
	data, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, fmt.Errorf("kernel args: %w", err)
	}
	return ParseKernelArgs(string(data)), nil
}

// ParseKernelArgs parses a kernel command line (without quoting support:
// sedboot's parameters contain no spaces).
func ParseKernelArgs(cmdline string) map[string]string {
	args := map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		args[k] = v
	}
	return args
}

// ConfigureStatic waits (until ctx is done) for the network interface
// ifname to appear, brings lo and it up, gives it the address cidr
// ("10.0.2.15/24") and, if gateway is not empty, a default route through it.
func ConfigureStatic(ctx context.Context, ifname, cidr, gateway string) error {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("configure %s: address %q: %w", ifname, cidr, err)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("configure lo: %w", err)
		}
	}
	var link netlink.Link
	for {
		if link, err = netlink.LinkByName(ifname); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("configure %s: interface never appeared: %w (last: %v)", ifname, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("configure %s: add %s: %w", ifname, cidr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("configure %s: up: %w", ifname, err)
	}
	if gateway != "" {
		gw := net.ParseIP(gateway)
		if gw == nil {
			return fmt.Errorf("configure %s: gateway %q is not an IP address", ifname, gateway)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("configure %s: default route via %s: %w", ifname, gateway, err)
		}
	}
	return nil
}

// Pass reports success and powers off.
func (g *Guest) Pass() {
	fmt.Fprintln(g.out, Passed)
	PowerOff()
}

// Fail reports the failure and powers off.
func (g *Guest) Fail(err error) {
	fmt.Fprintf(g.out, "%s %v\n", Failed, err)
	PowerOff()
}

// PowerOff syncs and powers the machine off; QEMU then exits. It does not
// return: if the power-off call fails, the process exits, which as init
// panics the kernel, and with panic=-1 and -no-reboot QEMU exits too.
func PowerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Printf("%s power off failed: %v\n", Marker, err)
	os.Exit(1)
}
