package netup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNoRandom is returned when no random source can produce a DHCP
// transaction ID.
var ErrNoRandom = errors.New("no random source for the DHCP transaction ID")

// Transaction ID sources, as reported in Result.XIDSource.
const (
	XIDGetrandom         = "getrandom"          // CRNG ready
	XIDGetrandomInsecure = "getrandom-insecure" // CRNG not ready yet: GRND_INSECURE
	XIDURandom           = "urandom"            // old kernel: /dev/urandom
)

// TransactionID returns 4 random bytes for a DHCP transaction ID without
// ever waiting for the kernel's CRNG: getrandom(GRND_NONBLOCK) when the
// CRNG is ready, else getrandom(GRND_INSECURE) (Linux >= 5.6), else
// /dev/urandom. A transaction ID only pairs replies with requests, so
// not-yet-seeded randomness is acceptable; keys must never come from
// here. It returns which source was used, or ErrNoRandom naming each
// failure.
func TransactionID() (dhcpv4.TransactionID, string, error) {
	var xid dhcpv4.TransactionID
	n, err := unix.Getrandom(xid[:], unix.GRND_NONBLOCK)
	if err == nil && n == len(xid) {
		return xid, XIDGetrandom, nil
	}
	errNB := err
	n, err = unix.Getrandom(xid[:], unix.GRND_INSECURE)
	if err == nil && n == len(xid) {
		return xid, XIDGetrandomInsecure, nil
	}
	errIns := err
	f, err := os.OpenFile("/dev/urandom", os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err == nil {
		n, err = f.Read(xid[:])
		f.Close()
		if err == nil && n == len(xid) {
			return xid, XIDURandom, nil
		}
		if err == nil {
			err = fmt.Errorf("short read (%d bytes)", n)
		}
	}
	return xid, "", fmt.Errorf("%w: getrandom(GRND_NONBLOCK): %v; getrandom(GRND_INSECURE): %v; /dev/urandom: %v",
		ErrNoRandom, errNB, errIns, err)
}

// lease is what a DHCPv4 exchange produced.
type lease struct {
	addr      netip.Prefix
	router    netip.Addr
	routes    []Route
	dns       []netip.Addr
	server    netip.Addr
	leaseTime time.Duration
	attempts  int
	xidSource string
}

// requested lists the options asked of the server.
var requested = dhcpv4.OptionCodeList{
	dhcpv4.OptionSubnetMask,
	dhcpv4.OptionRouter,
	dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionDomainName,
	dhcpv4.OptionIPAddressLeaseTime,
	dhcpv4.OptionClasslessStaticRoute,
}

// dhcp4 runs up to cfg.DHCPAttempts Discover/Offer/Request/Ack exchanges,
// the first bounded by cfg.DHCPTimeout and each next one by twice the
// previous, all within ctx. A NAK starts a new exchange. It returns the
// lease (with attempts and XID source filled in even on failure).
func dhcp4(ctx context.Context, link netlink.Link, cfg Config, log *slog.Logger) (*lease, error) {
	attrs := link.Attrs()
	hw := attrs.HardwareAddr
	if len(hw) != 6 {
		return nil, fmt.Errorf("link has no Ethernet address (%q)", hw)
	}
	// Retries are ours (fresh transaction ID, logged); nclient4 sends once
	// per call and waits at most the attempt's deadline.
	client, err := nclient4.New(attrs.Name,
		nclient4.WithHWAddr(hw),
		nclient4.WithRetry(1),
		nclient4.WithTimeout(24*time.Hour)) // the attempt's ctx ends it first
	if err != nil {
		return nil, fmt.Errorf("open DHCP socket: %w", err)
	}
	defer client.Close()

	l := &lease{}
	timeout := cfg.DHCPTimeout
	var lastErr error
	for l.attempts < cfg.DHCPAttempts {
		if err := ctx.Err(); err != nil {
			break
		}
		l.attempts++
		xid, src, err := TransactionID()
		if err != nil {
			return l, err
		}
		l.xidSource = src
		actx, cancel := context.WithTimeout(ctx, timeout)
		ack, err := exchange(actx, client, xid, hw, timeout)
		cancel()
		if err == nil {
			if err := fillLease(l, ack); err != nil {
				return l, err
			}
			log.Info("dhcp lease", "interface", attrs.Name, "address", l.addr, "server", l.server,
				"router", l.router, "lease", l.leaseTime, "attempt", l.attempts)
			return l, nil
		}
		lastErr = err
		log.Warn("dhcp attempt failed", "interface", attrs.Name, "attempt", l.attempts, "of", cfg.DHCPAttempts,
			"timeout", timeout, "err", err)
		timeout *= 2
	}
	if lastErr == nil {
		lastErr = errors.New("no attempt made")
	}
	if err := ctx.Err(); err != nil {
		return l, fmt.Errorf("no lease after %d attempt(s): %w (last: %v)", l.attempts, err, lastErr)
	}
	return l, fmt.Errorf("no lease after %d attempt(s): %w", l.attempts, lastErr)
}

// exchange does one Discover/Offer/Request/Ack round with transaction ID
// xid.
func exchange(ctx context.Context, c *nclient4.Client, xid dhcpv4.TransactionID, hw net.HardwareAddr, limit time.Duration) (*dhcpv4.DHCPv4, error) {
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: nclient4.ServerPort}
	discover := newMessage(xid, hw, dhcpv4.MessageTypeDiscover)
	offer, err := c.SendAndRead(ctx, bcast, discover, nclient4.IsMessageType(dhcpv4.MessageTypeOffer))
	if err != nil {
		return nil, fmt.Errorf("no offer: %w", describeWait(err, limit))
	}
	server := offer.ServerIdentifier()
	if server == nil || offer.YourIPAddr == nil || offer.YourIPAddr.To4() == nil || offer.YourIPAddr.IsUnspecified() {
		return nil, fmt.Errorf("unusable offer from %v (address %v)", server, offer.YourIPAddr)
	}
	request := newMessage(xid, hw, dhcpv4.MessageTypeRequest)
	request.UpdateOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))
	request.UpdateOption(dhcpv4.OptServerIdentifier(server))
	resp, err := c.SendAndRead(ctx, bcast, request, nclient4.IsAll(
		nclient4.IsCorrectServer(server),
		nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak)))
	if err != nil {
		return nil, fmt.Errorf("no answer to request for %s from %s: %w", offer.YourIPAddr, server, describeWait(err, limit))
	}
	if resp.MessageType() == dhcpv4.MessageTypeNak {
		if msg := resp.Message(); msg != "" {
			return nil, fmt.Errorf("server %s refused %s (NAK: %q)", server, offer.YourIPAddr, msg)
		}
		return nil, fmt.Errorf("server %s refused %s (NAK)", server, offer.YourIPAddr)
	}
	return resp, nil
}

func describeWait(err error, limit time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nclient4.ErrNoResponse) {
		return fmt.Errorf("no reply within the attempt's %v: %w", limit, err)
	}
	return err
}

// newMessage builds a client message with transaction ID xid, without
// dhcpv4.New (which would wait for the CRNG to make its own ID).
func newMessage(xid dhcpv4.TransactionID, hw net.HardwareAddr, t dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	m := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        iana.HWTypeEthernet,
		TransactionID: xid,
		ClientHWAddr:  hw,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		Options:       make(dhcpv4.Options),
	}
	// No address yet: ask for broadcast replies.
	m.SetBroadcast()
	m.UpdateOption(dhcpv4.OptMessageType(t))
	m.UpdateOption(dhcpv4.OptParameterRequestList(requested...))
	m.UpdateOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize))
	return m
}

// fillLease takes address, routes, DNS and lease time from an ACK.
func fillLease(l *lease, ack *dhcpv4.DHCPv4) error {
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return fmt.Errorf("ACK without an address (yiaddr %v)", ack.YourIPAddr)
	}
	bits := 32 // no subnet mask option: the narrowest, as u-root does
	if m := ack.SubnetMask(); m != nil {
		ones, size := m.Size()
		if size != 32 {
			return fmt.Errorf("ACK has an invalid subnet mask %v", net.IP(m))
		}
		bits = ones
	}
	l.addr = netip.PrefixFrom(ip, bits)
	if s, ok := netip.AddrFromSlice(ack.ServerIdentifier().To4()); ok {
		l.server = s
	}
	l.leaseTime = ack.IPAddressLeaseTime(0)
	// RFC 3442: classless static routes, when present, replace the
	// Router option.
	if crs := ack.ClasslessStaticRoute(); len(crs) > 0 {
		for _, r := range crs {
			dst, ok := netip.AddrFromSlice(r.Dest.IP.To4())
			if !ok {
				continue
			}
			ones, _ := r.Dest.Mask.Size()
			gw, _ := netip.AddrFromSlice(r.Router.To4())
			if ones == 0 {
				if gw.IsValid() && !gw.IsUnspecified() {
					l.router = gw
				}
				continue
			}
			rt := Route{Destination: netip.PrefixFrom(dst, ones).Masked().String()}
			if gw.IsValid() && !gw.IsUnspecified() {
				rt.Gateway = gw.String()
			}
			l.routes = append(l.routes, rt)
		}
	} else if rs := ack.Router(); len(rs) > 0 {
		if gw, ok := netip.AddrFromSlice(rs[0].To4()); ok && !gw.IsUnspecified() {
			l.router = gw
		}
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d.To4()); ok {
			l.dns = append(l.dns, a)
		}
	}
	return nil
}
