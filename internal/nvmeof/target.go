package nvmeof

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// DiscoveryNQN is the well-known NQN of an NVMe-oF discovery subsystem.
const DiscoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"

// Default transport service IDs (TCP ports).
const (
	DefaultPort          = 4420
	DefaultDiscoveryPort = 8009
)

// maxNQN is the longest NQN the kernel accepts (it needs len < 223).
const maxNQN = 222

// Target is one NVMe over Fabrics subsystem to connect to, with the
// options nvme-cli would pass to the kernel.
type Target struct {
	// Transport is "tcp" (the default when empty) or "rdma".
	Transport string
	// Address is the target's IP address (traddr), a literal: the kernel
	// does not resolve names.
	Address string
	// Port is the transport service ID (trsvcid); 0 means 4420, or 8009
	// for the discovery NQN.
	Port int
	// NQN is the subsystem NQN; Discover uses DiscoveryNQN.
	NQN string
	// HostNQN and HostID identify this host; empty means the kernel's
	// default host. HostID is a UUID.
	HostNQN string
	HostID  string
	// HostAddress (host_traddr) and HostIface (host_iface) pin the
	// source address or interface; optional.
	HostAddress string
	HostIface   string
	// NrIOQueues limits the I/O queues; 0 means the kernel's default
	// (one per CPU).
	NrIOQueues int
	// CtrlLossTmo is how long (seconds) the kernel keeps reconnecting a
	// lost controller before removing it: 0 means the kernel's default
	// (600 s), -1 means forever.
	CtrlLossTmo int
	// KeepAliveTmo is the keep-alive timeout in seconds; 0 means the
	// kernel's default (5 s for I/O controllers).
	KeepAliveTmo int
	// ReconnectDelay is the delay between reconnect attempts in seconds;
	// 0 means the kernel's default (10 s).
	ReconnectDelay int
}

// TargetError is an invalid Target field.
type TargetError struct {
	Field  string
	Value  string
	Reason string
}

func (e *TargetError) Error() string {
	return fmt.Sprintf("nvmeof target: %s %q: %s", e.Field, e.Value, e.Reason)
}

var (
	uuidRE  = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	ifaceRE = regexp.MustCompile(`^[^/:\s,=]{1,15}$`)
)

func (t Target) transport() string {
	if t.Transport == "" {
		return "tcp"
	}
	return t.Transport
}

func (t Target) port() int {
	if t.Port != 0 {
		return t.Port
	}
	if t.NQN == DiscoveryNQN {
		return DefaultDiscoveryPort
	}
	return DefaultPort
}

// IsDiscovery reports whether t names a discovery subsystem.
func (t Target) IsDiscovery() bool { return t.NQN == DiscoveryNQN }

// String names the target for messages: "tcp:192.0.2.7:4420/nqn...".
func (t Target) String() string {
	return fmt.Sprintf("%s:%s/%s", t.transport(), netip.AddrPortFrom(parseAddrOrZero(t.Address), uint16(t.port())), t.NQN)
}

func parseAddrOrZero(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

// Validate checks every field; all problems are returned, each a
// *TargetError naming its field.
func (t Target) Validate() error {
	var errs []error
	bad := func(field, value, reason string) {
		errs = append(errs, &TargetError{Field: field, Value: value, Reason: reason})
	}
	switch t.transport() {
	case "tcp", "rdma":
	default:
		bad("transport", t.Transport, `must be "tcp" or "rdma"`)
	}
	if a, err := netip.ParseAddr(t.Address); err != nil || a.Zone() != "" {
		bad("address", t.Address, "not an IP address literal (the kernel does not resolve names)")
	}
	if t.Port < 0 || t.Port > 65535 {
		bad("port", strconv.Itoa(t.Port), "not a TCP port")
	}
	checkNQN := func(field, v string, required bool) {
		switch {
		case v == "" && !required:
		case v == "":
			bad(field, v, "missing")
		case len(v) > maxNQN:
			bad(field, v, fmt.Sprintf("longer than %d bytes", maxNQN))
		case !strings.HasPrefix(v, "nqn."):
			bad(field, v, `must start with "nqn."`)
		case strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r > '~' || r == ',' || r == '=' }):
			bad(field, v, "contains a space, control, non-ASCII, ',' or '=' character")
		}
	}
	checkNQN("nqn", t.NQN, true)
	checkNQN("host_nqn", t.HostNQN, false)
	if t.HostID != "" && !uuidRE.MatchString(t.HostID) {
		bad("host_id", t.HostID, "not a UUID like 8e1f3a6c-0d2b-4c55-9a1e-2f0b7c9d4e61")
	}
	if t.HostAddress != "" {
		if _, err := netip.ParseAddr(t.HostAddress); err != nil {
			bad("host_address", t.HostAddress, "not an IP address literal")
		}
	}
	if t.HostIface != "" && !ifaceRE.MatchString(t.HostIface) {
		bad("host_iface", t.HostIface, "not an interface name")
	}
	if t.NrIOQueues < 0 {
		bad("nr_io_queues", strconv.Itoa(t.NrIOQueues), "must not be negative")
	}
	if t.CtrlLossTmo < -1 {
		bad("ctrl_loss_tmo", strconv.Itoa(t.CtrlLossTmo), "must be -1 (forever), 0 (kernel default) or seconds")
	}
	if t.KeepAliveTmo < 0 {
		bad("keep_alive_tmo", strconv.Itoa(t.KeepAliveTmo), "must not be negative")
	}
	if t.ReconnectDelay < 0 {
		bad("reconnect_delay", strconv.Itoa(t.ReconnectDelay), "must not be negative")
	}
	return errors.Join(errs...)
}

// Options returns the string written to /dev/nvme-fabrics to connect,
// e.g. "transport=tcp,traddr=192.0.2.7,trsvcid=4420,nqn=...,hostnqn=...".
// Options the kernel ignores for discovery controllers (I/O queues) are
// left out for them.
func (t Target) Options() (string, error) {
	if err := t.Validate(); err != nil {
		return "", err
	}
	opts := []string{
		"transport=" + t.transport(),
		"traddr=" + t.Address,
		"trsvcid=" + strconv.Itoa(t.port()),
		"nqn=" + t.NQN,
	}
	add := func(k, v string) {
		if v != "" {
			opts = append(opts, k+"="+v)
		}
	}
	num := func(k string, v int, set bool) {
		if set {
			opts = append(opts, k+"="+strconv.Itoa(v))
		}
	}
	add("hostnqn", t.HostNQN)
	add("hostid", strings.ToLower(t.HostID))
	add("host_traddr", t.HostAddress)
	add("host_iface", t.HostIface)
	if !t.IsDiscovery() {
		num("nr_io_queues", t.NrIOQueues, t.NrIOQueues > 0)
	}
	num("ctrl_loss_tmo", t.CtrlLossTmo, t.CtrlLossTmo != 0)
	num("keep_alive_tmo", t.KeepAliveTmo, t.KeepAliveTmo > 0)
	num("reconnect_delay", t.ReconnectDelay, t.ReconnectDelay > 0)
	return strings.Join(opts, ","), nil
}

// ParseConnectResponse parses what the kernel answers on
// /dev/nvme-fabrics after a connect: "instance=N,cntlid=M".
func ParseConnectResponse(s string) (Controller, error) {
	var c Controller
	haveInst, haveCntl := false, false
	for _, tok := range strings.FieldsFunc(strings.TrimSpace(s), func(r rune) bool { return r == ',' || r == '\n' }) {
		k, v, ok := strings.Cut(tok, "=")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		switch k {
		case "instance":
			if err != nil || n < 0 {
				return Controller{}, fmt.Errorf("nvmeof: kernel answered %q: no controller instance", strings.TrimSpace(s))
			}
			c.Instance, haveInst = n, true
		case "cntlid":
			if err != nil || n < 0 || n > 0xffff {
				return Controller{}, fmt.Errorf("nvmeof: kernel answered %q: bad cntlid", strings.TrimSpace(s))
			}
			c.CntlID, haveCntl = n, true
		}
	}
	if !haveInst || !haveCntl {
		return Controller{}, fmt.Errorf("nvmeof: kernel answered %q, want instance=N,cntlid=M", strings.TrimSpace(s))
	}
	c.Name = "nvme" + strconv.Itoa(c.Instance)
	return c, nil
}
