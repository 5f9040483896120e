// Package netup brings up one network interface at early boot over
// netlink: find the link (by name or MAC; the driver may still be
// probing), set its MTU, set it up, wait for carrier, then assign static
// IPv4 addresses and routes or obtain a DHCPv4 lease, all bounded by the
// caller's context and the configured timeouts.
//
// The DHCP client is insomniacslk/dhcp's nclient4 (a raw socket on the
// unconfigured link), driven with packets built here so that the
// transaction ID never waits for the kernel's random number generator:
// at early boot, before the CRNG is ready, u-root's client spins on
// getrandom(GRND_NONBLOCK). See TransactionID.
//
// Everything runs on the calling goroutine, so a caller (or test) that
// locked its OS thread into a network namespace configures that namespace.
package netup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Result describes the configured interface, for the boot record.
type Result struct {
	Interface string         `json:"interface"`
	Index     int            `json:"index"`
	MAC       string         `json:"mac"`
	MTU       int            `json:"mtu"`
	Mode      Mode           `json:"mode"`
	Addresses []netip.Prefix `json:"addresses"`
	Gateway   netip.Addr     `json:"gateway,omitzero"`
	Routes    []Route        `json:"routes,omitempty"`
	DNS       []netip.Addr   `json:"dns,omitempty"`
	// DHCP only: the server, the lease length, how many exchanges were
	// tried, and where the transaction IDs came from.
	DHCPServer   netip.Addr    `json:"dhcp_server,omitzero"`
	LeaseTime    time.Duration `json:"lease_time_ns,omitempty"`
	DHCPAttempts int           `json:"dhcp_attempts,omitempty"`
	XIDSource    string        `json:"xid_source,omitempty"`
	// Steps lists how long each step took, in order.
	Steps []Step        `json:"steps"`
	Total time.Duration `json:"total_ns"`
}

// Step is one timed step of Up.
type Step struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
}

// Up validates cfg and brings the interface up as it says. On failure the
// error names the interface and the step; the link may be left up with
// whatever was configured before the failing step.
func Up(ctx context.Context, cfg Config, log *slog.Logger) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	cfg = cfg.withDefaults()
	start := time.Now()
	res := &Result{Mode: cfg.Mode}
	stepStart := time.Now()
	step := func(name string) {
		d := time.Since(stepStart)
		res.Steps = append(res.Steps, Step{Name: name, Duration: d})
		log.Info("network step done", "interface", res.Interface, "step", name, "duration", d.Round(time.Microsecond))
		stepStart = time.Now()
	}
	what := cfg.Interface
	if what == "" {
		what = "link with MAC " + cfg.MAC
	}

	link, err := findLink(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("netup: %s: %w", what, err)
	}
	attrs := link.Attrs()
	res.Interface, res.Index, res.MAC = attrs.Name, attrs.Index, attrs.HardwareAddr.String()
	step("find-link")

	if cfg.MTU != 0 && attrs.MTU != cfg.MTU {
		if err := netlink.LinkSetMTU(link, cfg.MTU); err != nil {
			return nil, fmt.Errorf("netup: %s: set MTU %d: %w", res.Interface, cfg.MTU, err)
		}
		step("set-mtu")
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("netup: %s: set link up: %w", res.Interface, err)
	}
	step("link-up")

	if link, err = waitCarrier(ctx, attrs.Index, cfg.CarrierTimeout); err != nil {
		return nil, fmt.Errorf("netup: %s: %w", res.Interface, err)
	}
	res.MTU = link.Attrs().MTU
	step("carrier")

	var gateway netip.Addr
	var routes []Route
	var dns []netip.Addr
	switch cfg.Mode {
	case ModeStatic:
		for _, a := range cfg.Addresses {
			p := netip.MustParsePrefix(a) // validated
			if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
				return nil, fmt.Errorf("netup: %s: add address %s: %w", res.Interface, p, err)
			}
			res.Addresses = append(res.Addresses, p)
		}
		if cfg.Gateway != "" {
			gateway = netip.MustParseAddr(cfg.Gateway)
		}
		step("addresses")
	case ModeDHCP:
		l, err := dhcp4(ctx, link, cfg, log)
		if l != nil {
			res.DHCPAttempts, res.XIDSource = l.attempts, l.xidSource
		}
		if err != nil {
			return res, fmt.Errorf("netup: %s: dhcp: %w", res.Interface, err)
		}
		if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipNet(l.addr)}); err != nil {
			return res, fmt.Errorf("netup: %s: add leased address %s: %w", res.Interface, l.addr, err)
		}
		res.Addresses = []netip.Prefix{l.addr}
		res.DHCPServer, res.LeaseTime = l.server, l.leaseTime
		gateway, routes, dns = l.router, l.routes, l.dns
		step("dhcp")
	}

	for _, d := range cfg.DNS {
		a := netip.MustParseAddr(d)
		if !containsAddr(dns, a) {
			dns = append(dns, a)
		}
	}
	res.DNS = dns
	routes = append(routes, cfg.Routes...)
	if gateway.IsValid() {
		if !onLink(res.Addresses, gateway) {
			// E.g. a /32 lease: reach the router on the link first.
			hr := &netlink.Route{LinkIndex: attrs.Index, Dst: ipNet(netip.PrefixFrom(gateway, 32)), Scope: netlink.SCOPE_LINK}
			if err := netlink.RouteReplace(hr); err != nil {
				return res, fmt.Errorf("netup: %s: on-link route to gateway %s: %w", res.Interface, gateway, err)
			}
		}
		r := &netlink.Route{LinkIndex: attrs.Index, Gw: net.IP(gateway.AsSlice())}
		if err := netlink.RouteReplace(r); err != nil {
			return res, fmt.Errorf("netup: %s: default route via %s: %w", res.Interface, gateway, err)
		}
		res.Gateway = gateway
	}
	for _, rt := range routes {
		dst := netip.MustParsePrefix(rt.Destination)
		r := &netlink.Route{LinkIndex: attrs.Index, Dst: ipNet(dst)}
		if rt.Gateway != "" {
			r.Gw = net.ParseIP(rt.Gateway).To4()
		} else {
			r.Scope = netlink.SCOPE_LINK
		}
		if err := netlink.RouteReplace(r); err != nil {
			return res, fmt.Errorf("netup: %s: route %s via %q: %w", res.Interface, rt.Destination, rt.Gateway, err)
		}
		res.Routes = append(res.Routes, rt)
	}
	if gateway.IsValid() || len(routes) > 0 {
		step("routes")
	}
	if cfg.ResolvConf != "" && len(dns) > 0 {
		if err := WriteResolvConf(cfg.ResolvConf, dns); err != nil {
			return res, fmt.Errorf("netup: %s: %w", res.Interface, err)
		}
		step("resolv-conf")
	}
	res.Total = time.Since(start)
	log.Info("network up", "interface", res.Interface, "mode", res.Mode, "addresses", res.Addresses,
		"gateway", res.Gateway, "duration", res.Total.Round(time.Microsecond))
	return res, nil
}

// findLink waits (bounded by cfg.LinkTimeout and ctx) for the link named
// cfg.Interface or carrying cfg.MAC to appear.
func findLink(ctx context.Context, cfg Config, log *slog.Logger) (netlink.Link, error) {
	var mac net.HardwareAddr
	if cfg.MAC != "" {
		mac, _ = net.ParseMAC(cfg.MAC) // validated
	}
	var lastErr error
	err := poll(ctx, cfg.LinkTimeout, func() (bool, error) {
		l, err := lookupLink(cfg.Interface, mac)
		if err != nil {
			lastErr = err
			return false, nil
		}
		if mac != nil && !strings.EqualFold(l.Attrs().HardwareAddr.String(), mac.String()) {
			return false, fmt.Errorf("link %s has MAC %s, not %s", l.Attrs().Name, l.Attrs().HardwareAddr, mac)
		}
		lastErr = nil
		return true, nil
	})
	if err != nil {
		if lastErr != nil {
			return nil, fmt.Errorf("link not found: %w (%v; known links: %s)", err, lastErr, linkNames())
		}
		return nil, err
	}
	l, err := lookupLink(cfg.Interface, mac)
	if err != nil {
		return nil, err
	}
	log.Debug("found link", "interface", l.Attrs().Name, "mac", l.Attrs().HardwareAddr)
	return l, nil
}

func lookupLink(name string, mac net.HardwareAddr) (netlink.Link, error) {
	if name != "" {
		return netlink.LinkByName(name)
	}
	links, err := linkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), mac.String()) {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no link with MAC %s", mac)
}

// linkList lists links, retrying a dump the kernel interrupted.
func linkList() ([]netlink.Link, error) {
	var err error
	for range 3 {
		var links []netlink.Link
		if links, err = netlink.LinkList(); err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

func linkNames() string {
	links, err := linkList()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name+"="+l.Attrs().HardwareAddr.String())
	}
	return strings.Join(names, ", ")
}

// waitCarrier waits until the link reports lower-layer up (carrier).
func waitCarrier(ctx context.Context, index int, limit time.Duration) (netlink.Link, error) {
	var link netlink.Link
	err := poll(ctx, limit, func() (bool, error) {
		l, err := netlink.LinkByIndex(index)
		if err != nil {
			return false, fmt.Errorf("read link state: %w", err)
		}
		link = l
		// LOWER_UP is the carrier itself; RUNNING (operstate up or
		// unknown) comes once the kernel's link watcher has activated the
		// queues, before which sent packets are dropped.
		f := l.Attrs().RawFlags
		return f&unix.IFF_LOWER_UP != 0 && f&unix.IFF_RUNNING != 0, nil
	})
	if err != nil {
		state := "unknown"
		if link != nil {
			state = link.Attrs().OperState.String()
		}
		return nil, fmt.Errorf("no carrier (operstate %s; cable or peer down?): %w", state, err)
	}
	return link, nil
}

// poll calls check until it reports done or fails, waiting 2 ms, then
// doubling up to 100 ms, between calls; it gives up after limit or when
// ctx ends, with an error saying how long it waited.
func poll(ctx context.Context, limit time.Duration, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	interval := 2 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		done, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		timer.Reset(interval)
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %v: %w", time.Since(start).Round(time.Millisecond), ctx.Err())
		case <-timer.C:
		}
		if interval *= 2; interval > 100*time.Millisecond {
			interval = 100 * time.Millisecond
		}
	}
}

// WriteResolvConf writes a resolv.conf listing servers, replacing path
// atomically.
func WriteResolvConf(path string, servers []netip.Addr) error {
	var b strings.Builder
	b.WriteString("# written by sedboot netup\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}
