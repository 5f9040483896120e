package netup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// Mode selects how the interface gets its address.
type Mode string

// The addressing modes.
const (
	ModeStatic Mode = "static"
	ModeDHCP   Mode = "dhcp"
)

// Defaults for Config fields left zero.
const (
	DefaultLinkTimeout    = 10 * time.Second
	DefaultCarrierTimeout = 10 * time.Second
	DefaultDHCPTimeout    = 2 * time.Second // first attempt; doubled for each next one
	DefaultDHCPAttempts   = 4
	maxDHCPAttempts       = 20
)

// Route is one extra IPv4 route.
type Route struct {
	// Destination in CIDR form, e.g. "198.51.100.0/24".
	Destination string `json:"destination"`
	// Gateway is the next hop; empty for a route on the link itself.
	Gateway string `json:"gateway,omitempty"`
}

// Config says how to bring up one interface. Interface, MAC or both pick
// the link (both: the named link must have that MAC).
type Config struct {
	// Interface is the link name, e.g. "eth0" (the 6.12 cloud kernel's
	// virtio NIC without udev).
	Interface string
	// MAC selects the link by hardware address, e.g. "52:54:00:12:34:56".
	MAC string
	// Mode is ModeStatic or ModeDHCP.
	Mode Mode
	// Addresses are the static IPv4 addresses in CIDR form
	// ("192.0.2.10/24"); static mode only.
	Addresses []string
	// Gateway is the default route's next hop (static mode); it must lie
	// in one of Addresses' subnets. Empty: no default route.
	Gateway string
	// Routes are extra routes, added after the addresses (both modes).
	Routes []Route
	// DNS servers (static mode; DHCP takes the server's list, then these).
	DNS []string
	// MTU to set; 0 keeps the link's.
	MTU int
	// LinkTimeout bounds waiting for the link to appear (its driver may
	// have just been loaded); 0 means DefaultLinkTimeout.
	LinkTimeout time.Duration
	// CarrierTimeout bounds waiting for carrier; 0 means
	// DefaultCarrierTimeout.
	CarrierTimeout time.Duration
	// DHCPTimeout is the first DHCP attempt's time limit, doubled for each
	// further attempt; 0 means DefaultDHCPTimeout.
	DHCPTimeout time.Duration
	// DHCPAttempts bounds the DHCP exchanges (Discover to Ack); 0 means
	// DefaultDHCPAttempts.
	DHCPAttempts int
	// ResolvConf, if set, is the file to write the DNS servers to (e.g.
	// /etc/resolv.conf), for programs that resolve names.
	ResolvConf string
}

// FieldError is a configuration error naming the field at fault.
type FieldError struct {
	Field  string // e.g. "addresses[1]"
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("netup config: %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("netup config: %s %q: %s", e.Field, e.Value, e.Reason)
}

// Validate checks the configuration and returns every problem found, each
// a *FieldError naming its field (joined with errors.Join).
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, value, reason string) {
		errs = append(errs, &FieldError{Field: field, Value: value, Reason: reason})
	}
	if c.Interface == "" && c.MAC == "" {
		bad("interface", "", "set interface or mac to pick the link")
	}
	if c.Interface != "" {
		if len(c.Interface) > 15 || c.Interface == "." || c.Interface == ".." || strings.ContainsAny(c.Interface, "/: \t\n") {
			bad("interface", c.Interface, "not a valid interface name (at most 15 characters, no '/', ':' or spaces)")
		}
	}
	if c.MAC != "" {
		if hw, err := net.ParseMAC(c.MAC); err != nil || len(hw) != 6 {
			bad("mac", c.MAC, "not an Ethernet MAC address like 52:54:00:12:34:56")
		}
	}

	var prefixes []netip.Prefix
	switch c.Mode {
	case ModeStatic:
		if len(c.Addresses) == 0 {
			bad("addresses", "", "static mode needs at least one address in CIDR form")
		}
		for i, a := range c.Addresses {
			p, err := parseHostPrefix(a)
			if err != nil {
				bad(fmt.Sprintf("addresses[%d]", i), a, err.Error())
				continue
			}
			prefixes = append(prefixes, p)
		}
		if c.Gateway != "" {
			gw, err := parseIPv4(c.Gateway)
			switch {
			case err != nil:
				bad("gateway", c.Gateway, err.Error())
			case len(prefixes) > 0 && !onLink(prefixes, gw):
				bad("gateway", c.Gateway, "not in the subnet of any of addresses")
			case isOwn(prefixes, gw):
				bad("gateway", c.Gateway, "is one of this host's own addresses")
			}
		}
	case ModeDHCP:
		if len(c.Addresses) > 0 {
			bad("addresses", strings.Join(c.Addresses, ","), "not used with mode dhcp")
		}
		if c.Gateway != "" {
			bad("gateway", c.Gateway, "not used with mode dhcp (the server sends the router)")
		}
	case "":
		bad("mode", "", `missing: "static" or "dhcp"`)
	default:
		bad("mode", string(c.Mode), `must be "static" or "dhcp"`)
	}

	for i, r := range c.Routes {
		field := fmt.Sprintf("routes[%d]", i)
		p, err := netip.ParsePrefix(r.Destination)
		switch {
		case err != nil || !p.Addr().Is4():
			bad(field+".destination", r.Destination, "not an IPv4 network in CIDR form")
		case p.Masked() != p:
			bad(field+".destination", r.Destination, "host bits set; did you mean "+p.Masked().String()+"?")
		}
		if r.Gateway != "" {
			gw, err := parseIPv4(r.Gateway)
			switch {
			case err != nil:
				bad(field+".gateway", r.Gateway, err.Error())
			case c.Mode == ModeStatic && len(prefixes) > 0 && !onLink(prefixes, gw):
				bad(field+".gateway", r.Gateway, "not in the subnet of any of addresses")
			}
		}
	}
	for i, d := range c.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			bad(fmt.Sprintf("dns[%d]", i), d, "not an IP address")
		}
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		bad("mtu", fmt.Sprint(c.MTU), "must be 0 (keep) or between 68 and 65535")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"link_timeout", c.LinkTimeout}, {"carrier_timeout", c.CarrierTimeout}, {"dhcp_timeout", c.DHCPTimeout}} {
		if d.v < 0 {
			bad(d.name, d.v.String(), "must not be negative")
		}
	}
	if c.DHCPAttempts < 0 || c.DHCPAttempts > maxDHCPAttempts {
		bad("dhcp_attempts", fmt.Sprint(c.DHCPAttempts), fmt.Sprintf("must be between 0 (default %d) and %d", DefaultDHCPAttempts, maxDHCPAttempts))
	}
	if c.ResolvConf != "" && !filepath.IsAbs(c.ResolvConf) {
		bad("resolv_conf", c.ResolvConf, "must be an absolute path")
	}
	return errors.Join(errs...)
}

// withDefaults returns c with zero timeouts and attempts replaced.
func (c Config) withDefaults() Config {
	if c.LinkTimeout == 0 {
		c.LinkTimeout = DefaultLinkTimeout
	}
	if c.CarrierTimeout == 0 {
		c.CarrierTimeout = DefaultCarrierTimeout
	}
	if c.DHCPTimeout == 0 {
		c.DHCPTimeout = DefaultDHCPTimeout
	}
	if c.DHCPAttempts == 0 {
		c.DHCPAttempts = DefaultDHCPAttempts
	}
	return c
}

func parseIPv4(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, errors.New("not an IPv4 address")
	}
	return a, nil
}

// parseHostPrefix parses a host address with its subnet ("192.0.2.10/24").
func parseHostPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, errors.New("not an IPv4 address in CIDR form like 192.0.2.10/24")
	}
	a := p.Addr()
	switch {
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Prefix{}, errors.New("not a usable host address")
	case p.Bits() <= 30 && a == p.Masked().Addr():
		return netip.Prefix{}, errors.New("is the subnet's network address, not a host address")
	case p.Bits() <= 30 && a == lastAddr(p):
		return netip.Prefix{}, errors.New("is the subnet's broadcast address, not a host address")
	}
	return p, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func onLink(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Masked().Contains(a) {
			return true
		}
	}
	return false
}

func isOwn(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Addr() == a {
			return true
		}
	}
	return false
}
