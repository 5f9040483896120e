package netup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/sedboot/sedboot/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Addresses used inside the test's own network namespaces only
// (TEST-NET-1/2/3, RFC 5737).
const (
	serverCIDR = "192.0.2.1/24"
	clientCIDR = "192.0.2.2/24"
	gatewayIP  = "192.0.2.1"
	leasedIP   = "192.0.2.50"
	dnsIP      = "192.0.2.53"
)

// testNet is a pair of network namespaces made by the test, joined by a
// veth pair: "sbt0" on the client side, "sbt1" on the server side.
type testNet struct {
	client, server netns.NsHandle
	hc, hs         *netlink.Handle
}

// onThread runs fn on a fresh OS thread switched into ns. The thread is
// never returned to the Go scheduler: it exits with the goroutine, so no
// other code ever runs in the test's namespaces by accident.
func onThread(ns netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // deliberately never unlocked
		if ns.IsOpen() {
			if err := netns.Set(ns); err != nil {
				done <- fmt.Errorf("enter netns: %w", err)
				return
			}
		}
		done <- fn()
	}()
	return <-done
}

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	testenv.Require(t, os.Geteuid() == 0, "root, to create network namespaces")
	n := &testNet{}
	err := onThread(netns.None(), func() error {
		var err error
		if n.client, err = netns.New(); err != nil {
			return err
		}
		n.server, err = netns.New()
		return err
	})
	if err != nil {
		testenv.Require(t, false, "network namespaces (netns.New: "+err.Error()+")")
	}
	t.Cleanup(func() {
		// The namespaces vanish once their last handle, socket and thread
		// are gone.
		if n.hc != nil {
			n.hc.Close()
		}
		if n.hs != nil {
			n.hs.Close()
		}
		n.client.Close()
		n.server.Close()
	})
	if n.hc, err = netlink.NewHandleAt(n.client); err != nil {
		t.Fatal(err)
	}
	if n.hs, err = netlink.NewHandleAt(n.server); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sbt0"}, PeerName: "sbt1", PeerNamespace: netlink.NsFd(int(n.server))}
	if err := n.hc.LinkAdd(veth); err != nil {
		t.Fatalf("create veth pair: %v", err)
	}
	return n
}

// serverUp configures the server end (address, link up) so the client end
// gets carrier.
func (n *testNet) serverUp(t *testing.T) {
	t.Helper()
	l, err := n.hs.LinkByName("sbt1")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(serverCIDR)
	if err := n.hs.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := n.hs.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// linkUpBoth sets the client end up and waits until both ends run.
func (n *testNet) linkUpBoth(t *testing.T) {
	t.Helper()
	l, err := n.hc.LinkByName("sbt0")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.hc.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, side := range []struct {
		h    *netlink.Handle
		name string
	}{{n.hc, "sbt0"}, {n.hs, "sbt1"}} {
		for {
			l, err := side.h.LinkByName(side.name)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().RawFlags&unix.IFF_RUNNING != 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not running after 5s", side.name)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}

func (n *testNet) clientMAC(t *testing.T) string {
	t.Helper()
	l, err := n.hc.LinkByName("sbt0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr.String()
}

// up runs Up inside the client namespace.
func (n *testNet) up(ctx context.Context, cfg Config) (*Result, error) {
	var res *Result
	err := onThread(n.client, func() error {
		var err error
		res, err = Up(ctx, cfg, nil)
		return err
	})
	return res, err
}

func hasRoute(routes []netlink.Route, dst string, gw string) bool {
	for _, r := range routes {
		d := "default"
		if r.Dst != nil && !(r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
			d = r.Dst.String()
		}
		g := ""
		if r.Gw != nil {
			g = r.Gw.String()
		}
		if d == dst && g == gw {
			return true
		}
	}
	return false
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

func TestUpStatic(t *testing.T) {
	n := newTestNet(t)
	n.serverUp(t)

	// Something to talk to on the server side.
	var ln net.Listener
	if err := onThread(n.server, func() (err error) {
		ln, err = net.Listen("tcp4", gatewayIP+":7")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.WriteString(c, "hello from the server namespace\n")
			c.Close()
		}
	}()

	resolv := filepath.Join(t.TempDir(), "etc", "resolv.conf")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := n.up(ctx, Config{
		Interface:  "sbt0",
		Mode:       ModeStatic,
		Addresses:  []string{clientCIDR},
		Gateway:    gatewayIP,
		Routes:     []Route{{Destination: "198.51.100.0/24", Gateway: gatewayIP}, {Destination: "203.0.113.0/24"}},
		DNS:        []string{dnsIP},
		MTU:        1400,
		ResolvConf: resolv,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Interface != "sbt0" || res.MTU != 1400 || res.Gateway != netip.MustParseAddr(gatewayIP) ||
		len(res.Addresses) != 1 || res.Addresses[0] != netip.MustParsePrefix(clientCIDR) || len(res.Routes) != 2 {
		t.Errorf("result = %+v", res)
	}
	var names []string
	for _, s := range res.Steps {
		names = append(names, s.Name)
	}
	if got := strings.Join(names, ","); got != "find-link,set-mtu,link-up,carrier,addresses,routes,resolv-conf" {
		t.Errorf("steps = %s", got)
	}

	// What the kernel has, seen from the client namespace.
	l, err := n.hc.LinkByName("sbt0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("link mtu=%d flags=%v", l.Attrs().MTU, l.Attrs().Flags)
	}
	addrs, err := n.hc.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != clientCIDR {
		t.Errorf("addresses on sbt0 = %v, want %s", addrs, clientCIDR)
	}
	routes, err := n.hc.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range [][2]string{{"default", gatewayIP}, {"198.51.100.0/24", gatewayIP}, {"203.0.113.0/24", ""}} {
		if !hasRoute(routes, want[0], want[1]) {
			t.Errorf("no route %s via %q in %v", want[0], want[1], routes)
		}
	}
	b, err := os.ReadFile(resolv)
	if err != nil || !strings.Contains(string(b), "nameserver "+dnsIP+"\n") {
		t.Errorf("resolv.conf = %q, %v", b, err)
	}

	// Traffic flows over the configured link.
	var got string
	if err := onThread(n.client, func() error {
		c, err := net.DialTimeout("tcp4", gatewayIP+":7", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "hello from the server namespace") {
		t.Errorf("read %q from the server", got)
	}

	// Running again is harmless (addresses and routes are replaced).
	if _, err := n.up(ctx, Config{Interface: "sbt0", Mode: ModeStatic, Addresses: []string{clientCIDR}, Gateway: gatewayIP}); err != nil {
		t.Errorf("second Up: %v", err)
	}
}

func TestUpByMACAndErrors(t *testing.T) {
	n := newTestNet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Peer still down: no carrier, bounded by CarrierTimeout.
	start := time.Now()
	_, err := n.up(ctx, Config{MAC: n.clientMAC(t), Mode: ModeStatic, Addresses: []string{clientCIDR}, CarrierTimeout: 150 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no carrier") || !strings.Contains(err.Error(), "sbt0") {
		t.Errorf("Up with the peer down: error %v, want no carrier on sbt0", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("carrier wait took %v with a 150ms limit", el)
	}

	// Unknown link: bounded by LinkTimeout, error lists the links there are.
	_, err = n.up(ctx, Config{Interface: "eth9", Mode: ModeDHCP, LinkTimeout: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "eth9") || !strings.Contains(err.Error(), "sbt0=") {
		t.Errorf("Up(eth9): error %v, want link not found naming eth9 and listing sbt0", err)
	}

	// Name and MAC disagree.
	_, err = n.up(ctx, Config{Interface: "sbt0", MAC: "02:00:00:00:00:01", Mode: ModeDHCP})
	if err == nil || !strings.Contains(err.Error(), "02:00:00:00:00:01") {
		t.Errorf("Up with a MAC mismatch: error %v", err)
	}

	// Invalid configuration never touches the system.
	_, err = n.up(ctx, Config{Interface: "sbt0", Mode: ModeStatic})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "addresses" {
		t.Errorf("Up with no addresses: error %v, want a FieldError for addresses", err)
	}

	// Now by MAC with the peer up.
	n.serverUp(t)
	res, err := n.up(ctx, Config{MAC: n.clientMAC(t), Mode: ModeStatic, Addresses: []string{clientCIDR}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Interface != "sbt0" || res.MAC != n.clientMAC(t) {
		t.Errorf("found %s (%s), want sbt0", res.Interface, res.MAC)
	}
}

// dhcpServer serves one lease on sbt1 in the server namespace, like a
// small real DHCP server. nak makes it refuse the first n requests.
type dhcpServer struct {
	discovers, requests atomic.Int32
	nak                 int32
}

func (d *dhcpServer) handle(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
	var typ dhcpv4.MessageType
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		d.discovers.Add(1)
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		n := d.requests.Add(1)
		typ = dhcpv4.MessageTypeAck
		if !m.RequestedIPAddress().Equal(net.ParseIP(leasedIP)) || n <= d.nak {
			typ = dhcpv4.MessageTypeNak
		}
	default:
		return
	}
	server := net.ParseIP(gatewayIP).To4()
	reply, err := dhcpv4.NewReplyFromRequest(m,
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithServerIP(server),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
	)
	if err != nil {
		return
	}
	if typ != dhcpv4.MessageTypeNak {
		reply.YourIPAddr = net.ParseIP(leasedIP).To4()
		reply.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(24, 32)))
		reply.UpdateOption(dhcpv4.OptRouter(server))
		reply.UpdateOption(dhcpv4.OptDNS(net.ParseIP(dnsIP).To4()))
		reply.UpdateOption(dhcpv4.OptIPAddressLeaseTime(time.Hour))
	}
	_, _ = conn.WriteTo(reply.ToBytes(), peer)
}

func (n *testNet) startDHCP(t *testing.T, d *dhcpServer) {
	t.Helper()
	var srv *server4.Server
	if err := onThread(n.server, func() (err error) {
		srv, err = server4.NewServer("sbt1", &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, d.handle)
		return err
	}); err != nil {
		t.Fatalf("start DHCP server: %v", err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { srv.Close() })
}

func TestUpDHCP(t *testing.T) {
	n := newTestNet(t)
	n.serverUp(t)
	d := &dhcpServer{nak: 1} // the first request is refused: a second exchange must follow
	n.startDHCP(t, d)
	// Bring the client end up first and wait until the server end runs,
	// so that no offer is dropped while the server's queue is activated
	// (Up itself waits only for its own end) and the counts below are
	// exact.
	n.linkUpBoth(t)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := n.up(ctx, Config{Interface: "sbt0", Mode: ModeDHCP, DHCPTimeout: 500 * time.Millisecond, DHCPAttempts: 3,
		Routes: []Route{{Destination: "198.51.100.0/24", Gateway: gatewayIP}}})
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParsePrefix(leasedIP + "/24")
	if len(res.Addresses) != 1 || res.Addresses[0] != want || res.Gateway != netip.MustParseAddr(gatewayIP) ||
		res.DHCPServer != netip.MustParseAddr(gatewayIP) || res.LeaseTime != time.Hour ||
		len(res.DNS) != 1 || res.DNS[0] != netip.MustParseAddr(dnsIP) || res.DHCPAttempts != 2 || res.XIDSource == "" {
		t.Errorf("result = %+v", res)
	}
	if d.discovers.Load() != 2 || d.requests.Load() != 2 {
		t.Errorf("server saw %d discovers, %d requests; want 2 and 2", d.discovers.Load(), d.requests.Load())
	}
	l, err := n.hc.LinkByName("sbt0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := n.hc.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != want.String() {
		t.Errorf("addresses on sbt0 = %v, want %s", addrs, want)
	}
	routes, err := n.hc.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !hasRoute(routes, "default", gatewayIP) || !hasRoute(routes, "198.51.100.0/24", gatewayIP) {
		t.Errorf("routes on sbt0 = %v, want default and 198.51.100.0/24 via %s", routes, gatewayIP)
	}
}

func TestUpDHCPNoServer(t *testing.T) {
	n := newTestNet(t)
	n.serverUp(t) // carrier, but nobody answers DHCP
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	res, err := n.up(ctx, Config{Interface: "sbt0", Mode: ModeDHCP, DHCPTimeout: 100 * time.Millisecond, DHCPAttempts: 3})
	el := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "sbt0") || !strings.Contains(err.Error(), "no lease after 3 attempt(s)") {
		t.Fatalf("Up with no DHCP server: error %v", err)
	}
	if res == nil || res.DHCPAttempts != 3 {
		t.Errorf("result %+v, want 3 attempts recorded", res)
	}
	// 100 + 200 + 400 ms of waiting.
	if el < 600*time.Millisecond || el > 5*time.Second {
		t.Errorf("three attempts took %v, want about 700ms", el)
	}

	// The caller's deadline wins over the attempts left.
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	_, err = n.up(short, Config{Interface: "sbt0", Mode: ModeDHCP, DHCPTimeout: time.Second, DHCPAttempts: 5})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Up with a 300ms deadline: error %v, want deadline exceeded", err)
	}
}
