package config

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// FieldError is a validation failure at one field of the document.
type FieldError struct {
	Field string // dotted path, e.g. "kms.servers[1].address"
	Msg   string
}

func (e *FieldError) Error() string { return "config: " + e.Field + ": " + e.Msg }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

var (
	serialRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	prefixRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	nqnRE    = regexp.MustCompile(`^nqn\.[0-9]{4}-[0-9]{2}\.[^\s]{1,200}$`)
	uuidRE   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// Validate checks the whole document and returns the first problem as a
// *FieldError naming the field.
func (d *Document) Validate() error {
	if d.Format != FormatVersion {
		if d.Format == 0 {
			return fieldErr("format", "missing (this build reads format %d)", FormatVersion)
		}
		return fieldErr("format", "%d is not supported (this build reads format %d)", d.Format, FormatVersion)
	}
	if !serialRE.MatchString(d.Array.Serial) {
		return fieldErr("array.serial", "%q must be 1-64 letters, digits, '.', '_' or '-'", d.Array.Serial)
	}
	if d.Array.Slot != "A" && d.Array.Slot != "B" {
		return fieldErr("array.slot", "%q must be \"A\" or \"B\"", d.Array.Slot)
	}
	if d.Array.KeyPrefix != "" && !prefixRE.MatchString(d.Array.KeyPrefix) {
		return fieldErr("array.key_prefix", "%q must be 1-32 lower-case letters, digits or '-'", d.Array.KeyPrefix)
	}
	switch d.Mode {
	case ModeNone:
	case ModeExternal:
		if d.KMS == nil {
			return fieldErr("kms", "missing: mode %q needs key servers", d.Mode)
		}
	default:
		return fieldErr("mode", "%q must be %q or %q", d.Mode, ModeNone, ModeExternal)
	}
	if d.KMS != nil {
		if err := d.KMS.validate("kms"); err != nil {
			return err
		}
	}
	if err := d.Network.validate("network"); err != nil {
		return err
	}
	for i, f := range d.Fabrics {
		if err := f.validate(fmt.Sprintf("fabrics[%d]", i)); err != nil {
			return err
		}
	}
	if err := d.Root.validate("root"); err != nil {
		return err
	}
	if err := d.Technician.validate("technician"); err != nil {
		return err
	}
	if err := d.Keys.validate("keys", d); err != nil {
		return err
	}
	if d.Journal != nil {
		if err := d.Journal.validate("journal"); err != nil {
			return err
		}
	}
	return nil
}

// Prefix returns the key-name prefix (default "sedboot").
func (a Array) Prefix() string {
	if a.KeyPrefix == "" {
		return "sedboot"
	}
	return a.KeyPrefix
}

func (k *KMS) validate(f string) error {
	if len(k.Servers) == 0 {
		return fieldErr(f+".servers", "empty: list at least one key server")
	}
	names := map[string]bool{}
	for i, s := range k.Servers {
		sf := fmt.Sprintf("%s.servers[%d]", f, i)
		if s.Name == "" {
			return fieldErr(sf+".name", "missing")
		}
		if names[s.Name] {
			return fieldErr(sf+".name", "%q is used by an earlier server", s.Name)
		}
		names[s.Name] = true
		if err := hostPort(sf+".address", s.Address); err != nil {
			return err
		}
	}
	if err := pemCerts(f+".ca", k.CA); err != nil {
		return err
	}
	if err := pemCerts(f+".client_cert", k.ClientCert); err != nil {
		return err
	}
	if err := pemKey(f+".client_key", k.ClientKey); err != nil {
		return err
	}
	switch k.Version {
	case "", "1.0", "1.1", "1.2", "1.3", "1.4":
	default:
		return fieldErr(f+".version", "%q must be empty (negotiate) or one of 1.0, 1.1, 1.2, 1.3, 1.4", k.Version)
	}
	return nil
}

func hostPort(f, v string) error {
	if v == "" {
		return fieldErr(f, "missing (want host:port)")
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fieldErr(f, "%q has no port (want host:port)", v)
	}
	if host == "" {
		return fieldErr(f, "%q has no host", v)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fieldErr(f, "%q: port must be 1-65535", v)
	}
	return nil
}

func pemCerts(f, v string) error {
	if strings.TrimSpace(v) == "" {
		return fieldErr(f, "missing (want PEM certificates)")
	}
	rest := []byte(v)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fieldErr(f, "PEM block %d is %q, want CERTIFICATE", n+1, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fieldErr(f, "certificate %d does not parse: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		return fieldErr(f, "no PEM certificate found")
	}
	return nil
}

func pemKey(f, v string) error {
	b, _ := pem.Decode([]byte(v))
	if b == nil {
		return fieldErr(f, "missing or not PEM (want a PEM private key)")
	}
	switch b.Type {
	case "PRIVATE KEY":
		if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
			return fieldErr(f, "PKCS#8 key does not parse")
		}
	case "EC PRIVATE KEY":
		if _, err := x509.ParseECPrivateKey(b.Bytes); err != nil {
			return fieldErr(f, "EC key does not parse")
		}
	case "RSA PRIVATE KEY":
		if _, err := x509.ParsePKCS1PrivateKey(b.Bytes); err != nil {
			return fieldErr(f, "RSA key does not parse")
		}
	default:
		return fieldErr(f, "PEM block is %q, want a private key", b.Type)
	}
	return nil
}

func (n *Network) validate(f string) error {
	if n.Interface == "" && n.MAC == "" {
		return fieldErr(f+".interface", "missing: name the interface (e.g. \"eth0\") or give mac")
	}
	if n.MAC != "" {
		if _, err := net.ParseMAC(n.MAC); err != nil {
			return fieldErr(f+".mac", "%q is not a MAC address", n.MAC)
		}
	}
	switch n.Mode {
	case "dhcp":
		if len(n.Addresses) > 0 {
			return fieldErr(f+".addresses", "set, but mode is dhcp")
		}
	case "static":
		if len(n.Addresses) == 0 {
			return fieldErr(f+".addresses", "empty: static mode needs at least one CIDR address")
		}
		for i, a := range n.Addresses {
			p, err := netip.ParsePrefix(a)
			if err != nil || !p.Addr().Is4() {
				return fieldErr(fmt.Sprintf("%s.addresses[%d]", f, i), "%q is not an IPv4 CIDR address such as 192.0.2.10/24", a)
			}
		}
		if n.Gateway != "" {
			if a, err := netip.ParseAddr(n.Gateway); err != nil || !a.Is4() {
				return fieldErr(f+".gateway", "%q is not an IPv4 address", n.Gateway)
			}
		}
	default:
		return fieldErr(f+".mode", "%q must be \"dhcp\" or \"static\"", n.Mode)
	}
	for i, r := range n.Routes {
		rf := fmt.Sprintf("%s.routes[%d]", f, i)
		if _, err := netip.ParsePrefix(r.Destination); err != nil {
			return fieldErr(rf+".destination", "%q is not a CIDR prefix", r.Destination)
		}
		if _, err := netip.ParseAddr(r.Via); err != nil {
			return fieldErr(rf+".via", "%q is not an IP address", r.Via)
		}
	}
	if n.MTU != 0 && (n.MTU < 576 || n.MTU > 9216) {
		return fieldErr(f+".mtu", "%d must be 576-9216 (or 0 to keep the default)", n.MTU)
	}
	return nil
}

func (fb *Fabric) validate(f string) error {
	if fb.Transport != "tcp" {
		return fieldErr(f+".transport", "%q: only \"tcp\" is supported", fb.Transport)
	}
	if a, err := netip.ParseAddr(fb.Address); err != nil || !a.Is4() {
		return fieldErr(f+".address", "%q is not an IPv4 address", fb.Address)
	}
	if fb.Port < 0 || fb.Port > 65535 {
		return fieldErr(f+".port", "%d must be 1-65535 (0 means 4420)", fb.Port)
	}
	if fb.NQN != "" && !nqnRE.MatchString(fb.NQN) {
		return fieldErr(f+".nqn", "%q is not an NVMe qualified name (nqn.yyyy-mm.reverse-domain:...)", fb.NQN)
	}
	if fb.HostNQN != "" && !nqnRE.MatchString(fb.HostNQN) {
		return fieldErr(f+".host_nqn", "%q is not an NVMe qualified name", fb.HostNQN)
	}
	return nil
}

func (r *Root) validate(f string) error {
	if r.UUID == "" && r.Label == "" {
		return fieldErr(f, "name the real root by uuid or label")
	}
	if r.UUID != "" && !uuidRE.MatchString(r.UUID) {
		return fieldErr(f+".uuid", "%q is not a file-system UUID", r.UUID)
	}
	if len(r.Label) > 16 {
		return fieldErr(f+".label", "%q is longer than 16 characters", r.Label)
	}
	switch r.FSType {
	case "", "ext4", "ext3", "ext2", "xfs", "btrfs":
	default:
		return fieldErr(f+".fstype", "%q is not a supported root file system", r.FSType)
	}
	if r.Init != "" && !strings.HasPrefix(r.Init, "/") {
		return fieldErr(f+".init", "%q must be an absolute path", r.Init)
	}
	return nil
}

func (t *Technician) validate(f string) error {
	if t.Hash == "" {
		return fieldErr(f+".hash", "missing: set a technician credential (sedctl technician set)")
	}
	if !strings.HasPrefix(t.Hash, "$scrypt$") {
		return fieldErr(f+".hash", "not a credential hash written by sedctl (want $scrypt$...)")
	}
	if t.MaxAttempts < 0 || t.MaxAttempts > 100 {
		return fieldErr(f+".max_attempts", "%d must be 1-100 (or 0 for the default)", t.MaxAttempts)
	}
	return nil
}

func (inv *Inventory) validate(f string, d *Document) error {
	seen := map[int]bool{}
	for i, g := range inv.Generations {
		gf := fmt.Sprintf("%s.generations[%d]", f, i)
		if g.Number < 1 {
			return fieldErr(gf+".number", "%d must be 1 or more", g.Number)
		}
		if seen[g.Number] {
			return fieldErr(gf+".number", "generation %d is listed twice", g.Number)
		}
		seen[g.Number] = true
		switch g.State {
		case GenPending, GenActive, GenRetiring, GenRetired:
		default:
			return fieldErr(gf+".state", "%q must be one of %s, %s, %s, %s", g.State, GenPending, GenActive, GenRetiring, GenRetired)
		}
		drives := map[string]bool{}
		for j, dk := range g.Drives {
			df := fmt.Sprintf("%s.drives[%d]", gf, j)
			if !serialRE.MatchString(dk.Drive) {
				return fieldErr(df+".drive", "%q is not a drive serial", dk.Drive)
			}
			if drives[dk.Drive] {
				return fieldErr(df+".drive", "drive %q is listed twice", dk.Drive)
			}
			drives[dk.Drive] = true
			if dk.Name == "" {
				return fieldErr(df+".name", "missing key name")
			}
			for srv := range dk.IDs {
				if d.KMS == nil || !d.KMS.hasServer(srv) {
					return fieldErr(df+".ids", "server %q is not in kms.servers", srv)
				}
			}
		}
	}
	return nil
}

func (k *KMS) hasServer(name string) bool {
	for _, s := range k.Servers {
		if s.Name == name {
			return true
		}
	}
	return false
}

func (j *Journal) validate(f string) error {
	switch j.Op {
	case "enable", "rotate", "restore":
	default:
		return fieldErr(f+".op", "%q must be enable, rotate or restore", j.Op)
	}
	if j.To < 1 {
		return fieldErr(f+".to", "%d must be a generation number", j.To)
	}
	if j.Step == "" {
		return fieldErr(f+".step", "missing")
	}
	for drive, st := range j.Drives {
		if st != DriveChanging && st != DriveChanged {
			return fieldErr(f+".drives."+drive, "%q must be %q or %q", st, DriveChanging, DriveChanged)
		}
	}
	return nil
}
