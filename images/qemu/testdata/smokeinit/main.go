// Command smokeinit is the init of the QEMU harness's boot tests. One image
// serves every scenario; the kernel command line picks it:
//
//	sedboot.test=smoke  load the modules, bring eth0 up as 10.0.2.15/24,
//	                    exchange a line with sedboot.echo=HOST:PORT, pass
//	sedboot.test=serial read a line from the console, report it, pass
//	sedboot.test=link   bring sedboot.if (eth1) up as sedboot.ip=CIDR; with sedboot.peer=IP
//	                    dial the peer's port 9000, else serve one exchange on it
//	sedboot.test=hang   open a connection to sedboot.echo and never finish
//	sedboot.test=panic  exit, which panics the kernel
//
// It also runs as u-root init's uinit.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/sedboot/sedboot/images/guest"
	"github.com/sedboot/sedboot/initramfs/modload"
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	switch scenario := args["sedboot.test"]; scenario {
	case "smoke":
		err = smoke(ctx, g, args["sedboot.echo"])
	case "serial":
		err = serial(g)
	case "link":
		err = link(ctx, g, args["sedboot.if"], args["sedboot.ip"], args["sedboot.peer"])
	case "hang":
		err = hang(ctx, g, args["sedboot.echo"])
	case "panic":
		g.Reportf("exiting init on purpose")
		os.Exit(3)
	default:
		err = fmt.Errorf("unknown scenario sedboot.test=%q", scenario)
	}
	if err != nil {
		g.Fail(err)
	}
	g.Pass()
}

func loadModules(ctx context.Context, g *guest.Guest) error {
	results, err := modload.Load(ctx, "/")
	for _, r := range results {
		g.Reportf("module %s loaded=%v already=%v in %s", r.Name, !r.AlreadyLoaded, r.AlreadyLoaded, r.Elapsed.Round(time.Microsecond))
	}
	if err != nil {
		return err
	}
	for _, m := range []string{"nvme_tcp", "nvme_fabrics", "virtio_net"} {
		if _, err := os.Stat("/sys/module/" + m); err != nil {
			return fmt.Errorf("module %s not live after loading: %w", m, err)
		}
	}
	return nil
}

func smoke(ctx context.Context, g *guest.Guest, echo string) error {
	if err := loadModules(ctx, g); err != nil {
		return err
	}
	if _, err := os.Stat("/dev/nvme-fabrics"); err != nil {
		return fmt.Errorf("nvme-fabrics loaded but: %w", err)
	}
	g.Reportf("nvme-fabrics ready")
	if err := guest.ConfigureStatic(ctx, "eth0", "10.0.2.15/24", "10.0.2.2"); err != nil {
		return err
	}
	g.Reportf("eth0 up")
	reply, err := exchange(ctx, echo, "hello from the guest")
	if err != nil {
		return err
	}
	g.Reportf("echo reply: %s", reply)
	return nil
}

// exchange dials addr, sends line and returns the line that comes back.
func exchange(ctx context.Context, addr, line string) (string, error) {
	if addr == "" {
		return "", errors.New("no address to exchange a line with")
	}
	d := net.Dialer{Timeout: 20 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintln(conn, line); err != nil {
		return "", fmt.Errorf("send to %s: %w", addr, err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	return strings.TrimSpace(reply), nil
}

func serial(g *guest.Guest) error {
	g.Reportf("type a line")
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read console: %w", err)
	}
	g.Reportf("got line: %s", strings.TrimSpace(line))
	return nil
}

func link(ctx context.Context, g *guest.Guest, ifname, cidr, peer string) error {
	if err := loadModules(ctx, g); err != nil {
		return err
	}
	if ifname == "" {
		ifname = "eth1"
	}
	if err := guest.ConfigureStatic(ctx, ifname, cidr, ""); err != nil {
		return err
	}
	g.Reportf("%s up as %s", ifname, cidr)
	if peer != "" {
		// The peer may still be booting: retry, boundedly.
		var lastErr error
		for attempt := 0; attempt < 120; attempt++ {
			reply, err := exchange(ctx, net.JoinHostPort(peer, "9000"), "ping over the link")
			if err == nil {
				g.Reportf("link reply: %s", reply)
				return nil
			}
			lastErr = err
			select {
			case <-ctx.Done():
				return fmt.Errorf("link to %s: %w (last: %v)", peer, ctx.Err(), lastErr)
			case <-time.After(500 * time.Millisecond):
			}
		}
		return fmt.Errorf("link to %s: %w", peer, lastErr)
	}
	ln, err := net.Listen("tcp", ":9000")
	if err != nil {
		return err
	}
	defer ln.Close()
	g.Reportf("listening on the link")
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	g.Reportf("link got: %s", strings.TrimSpace(line))
	_, err = fmt.Fprintf(conn, "pong: %s", line)
	return err
}

func hang(ctx context.Context, g *guest.Guest, addr string) error {
	if err := loadModules(ctx, g); err != nil {
		return err
	}
	if err := guest.ConfigureStatic(ctx, "eth0", "10.0.2.15/24", "10.0.2.2"); err != nil {
		return err
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	g.Reportf("connected, hanging")
	time.Sleep(time.Hour)
	return errors.New("hung for an hour and nobody stopped the guest")
}
