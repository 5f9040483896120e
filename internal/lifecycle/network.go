package lifecycle

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/sedboot/sedboot/internal/config"
)

// checkNetwork checks, on the running system, what it can of the
// document's network section: the interface (by MAC, else by name), its
// state and addresses, the gateway and routes being on-link, and the
// route to each key server. The live OS may name interfaces differently
// from the initramfs (which has no udev) and may configure them itself,
// so only an interface that exists nowhere is a failure.
func checkNetwork(doc *config.Document, r *PreflightReport) {
	n := doc.Network
	ifi, how := findInterface(n)
	subject := "interface " + n.Interface
	if n.Interface == "" {
		subject = "interface with MAC " + n.MAC
	}
	if ifi == nil {
		res := ResultWarn
		detail := fmt.Sprintf("not found on this system (%s); the initramfs has no udev, so names can differ from the live OS: set network.mac to be sure", how)
		if n.MAC != "" {
			res, detail = ResultFail, fmt.Sprintf("no interface has MAC %s: the agent will not find its network", n.MAC)
		}
		r.add("network", subject, res, "%s", detail)
		return
	}
	subject = "interface " + ifi.Name
	var state []string
	res := ResultOK
	if ifi.Flags&net.FlagUp == 0 {
		state, res = append(state, "down"), ResultWarn
	} else {
		state = append(state, "up")
	}
	if ifi.Flags&net.FlagRunning == 0 && ifi.Flags&net.FlagLoopback == 0 {
		state, res = append(state, "no carrier"), ResultWarn
	} else {
		state = append(state, "carrier")
	}
	r.add("network", subject, res, "found %s: %s, MTU %d", how, strings.Join(state, ", "), ifi.MTU)
	if n.MTU != 0 && n.MTU != ifi.MTU {
		r.add("network", subject, ResultWarn, "MTU %d here, the document sets %d", ifi.MTU, n.MTU)
	}

	var have []netip.Prefix
	if addrs, err := ifi.Addrs(); err == nil {
		for _, ad := range addrs {
			if p, err := netip.ParsePrefix(ad.String()); err == nil && p.Addr().Is4() {
				have = append(have, p)
			}
		}
	}
	switch n.Mode {
	case "static":
		for _, want := range n.Addresses {
			p, _ := netip.ParsePrefix(want)
			if containsPrefix(have, p) {
				r.add("network", "address "+want, ResultOK, "configured on %s", ifi.Name)
			} else {
				r.add("network", "address "+want, ResultWarn, "not configured on %s here (has %v): the agent sets it at boot; check it is this controller's", ifi.Name, have)
			}
		}
		onLink := func(what, ip string) {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				return
			}
			for _, want := range n.Addresses {
				if p, err := netip.ParsePrefix(want); err == nil && p.Masked().Contains(a) {
					r.add("network", what, ResultOK, "%s is on-link (%s)", ip, p.Masked())
					return
				}
			}
			r.add("network", what, ResultWarn, "%s is not inside any configured address's prefix %v: the agent cannot reach it directly", ip, n.Addresses)
		}
		if n.Gateway != "" {
			onLink("gateway", n.Gateway)
		}
		for _, rt := range n.Routes {
			onLink("route "+rt.Destination, rt.Via)
		}
	case "dhcp":
		if len(have) == 0 {
			r.add("network", subject, ResultWarn, "no IPv4 address here (DHCP): the agent asks for one at boot")
		} else {
			r.add("network", subject, ResultOK, "IPv4 %v", have)
		}
	}
	if doc.KMS == nil {
		return
	}
	for _, s := range doc.KMS.Servers {
		host, _, err := net.SplitHostPort(s.Address)
		if err != nil {
			continue
		}
		ip := net.ParseIP(host)
		if ip == nil {
			r.add("network", "route to "+s.Name, ResultWarn, "%q is a host name: the agent needs an address it can reach without DNS", host)
			continue
		}
		routes, err := netlink.RouteGet(ip)
		if err != nil || len(routes) == 0 {
			r.add("network", "route to "+s.Name, ResultFail, "no route to %s here: %v", ip, err)
			continue
		}
		via := ""
		if link, err := netlink.LinkByIndex(routes[0].LinkIndex); err == nil {
			via = link.Attrs().Name
		}
		gw := ""
		if routes[0].Gw != nil {
			gw = " via " + routes[0].Gw.String()
		}
		if via == ifi.Name {
			r.add("network", "route to "+s.Name, ResultOK, "%s leaves through %s%s", ip, via, gw)
		} else {
			r.add("network", "route to "+s.Name, ResultWarn, "%s leaves through %s%s here, not %s: check the agent's routes (network.routes)", ip, via, gw, ifi.Name)
		}
	}
}

func findInterface(n config.Network) (*net.Interface, string) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err.Error()
	}
	if n.MAC != "" {
		mac, _ := net.ParseMAC(n.MAC)
		for i := range ifs {
			if ifs[i].HardwareAddr.String() == mac.String() {
				return &ifs[i], "by MAC " + n.MAC
			}
		}
		return nil, "by MAC " + n.MAC
	}
	for i := range ifs {
		if ifs[i].Name == n.Interface {
			return &ifs[i], "by name"
		}
	}
	return nil, "by name"
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}
