// Package config defines the per-array document kept on the controller's
// boot medium: the array's identity, how the boot agent reaches its keys,
// network and fabrics settings, the real root file system, deadlines, the
// technician credential, the key inventory and the journal of an
// interrupted operation.
//
// The document is JSON. Parse decodes it strictly (unknown fields are
// errors) and Validate checks it; both name the offending field, e.g.
// `kms.servers[1].address: "kms1" has no port`. The format is versioned by
// the "format" field and documented in docs/boot-medium.md.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// FormatVersion is the document format this package reads and writes.
const FormatVersion = 1

// Key-management modes.
const (
	// ModeNone: encryption not enabled; the agent unlocks nothing.
	ModeNone = "none"
	// ModeExternal: keys live on KMIP key servers (and are relayed by the
	// partner controller when it is active).
	ModeExternal = "external"
)

// Document is the whole per-array document.
type Document struct {
	Format     int        `json:"format"`
	Array      Array      `json:"array"`
	Mode       string     `json:"mode"`
	KMS        *KMS       `json:"kms,omitempty"`
	Network    Network    `json:"network"`
	Fabrics    []Fabric   `json:"fabrics,omitempty"`
	Root       Root       `json:"root"`
	Deadlines  Deadlines  `json:"deadlines"`
	Technician Technician `json:"technician"`
	Keys       Inventory  `json:"keys"`
	Journal    *Journal   `json:"journal,omitempty"`
	Updated    time.Time  `json:"updated"`
}

// Array identifies the storage array and this controller.
type Array struct {
	// Serial is the array's serial number; it names the keys.
	Serial string `json:"serial"`
	// Slot is this controller's slot in the chassis: "A" or "B".
	Slot string `json:"slot"`
	// KeyPrefix starts every key name (default "sedboot").
	KeyPrefix string `json:"key_prefix,omitempty"`
}

// KMS lists the external key servers and this array's TLS identity.
type KMS struct {
	// Servers are tried in order.
	Servers []Server `json:"servers"`
	// CA is the PEM bundle that signs the key servers' certificates.
	CA string `json:"ca"`
	// ClientCert and ClientKey are the array's PEM certificate and key.
	ClientCert string `json:"client_cert"`
	ClientKey  string `json:"client_key"`
	// Version forces a KMIP protocol version ("1.0".."1.4"); empty negotiates.
	Version string `json:"version,omitempty"`
}

// Server is one KMIP key server.
type Server struct {
	// Name labels the server in reports and keys the object-ID map.
	Name string `json:"name"`
	// Address is host:port.
	Address string `json:"address"`
	// ServerName is the name checked against the server's certificate;
	// empty means the host part of Address.
	ServerName string `json:"server_name,omitempty"`
}

// Network describes how the agent brings up the management network.
type Network struct {
	// Interface is the link name (e.g. "eth0"); empty with MAC set selects by MAC.
	Interface string `json:"interface,omitempty"`
	MAC       string `json:"mac,omitempty"`
	// Mode is "dhcp" or "static".
	Mode string `json:"mode"`
	// Addresses are CIDR addresses for static mode.
	Addresses []string `json:"addresses,omitempty"`
	// Gateway is the default route's next hop for static mode.
	Gateway string `json:"gateway,omitempty"`
	// Routes are extra static routes.
	Routes []Route `json:"routes,omitempty"`
	// MTU, when non-zero, is set on the link.
	MTU int `json:"mtu,omitempty"`
}

// Route is a static route.
type Route struct {
	Destination string `json:"destination"`
	Via         string `json:"via"`
}

// Fabric is an NVMe over Fabrics target the agent connects before
// enumerating drives.
type Fabric struct {
	Transport string `json:"transport"` // "tcp"
	Address   string `json:"address"`   // IPv4 address
	Port      int    `json:"port"`      // default 4420
	NQN       string `json:"nqn"`       // subsystem NQN; empty: every subsystem the discovery controller lists
	HostNQN   string `json:"host_nqn,omitempty"`
}

// Root selects and mounts the real root file system.
type Root struct {
	UUID    string `json:"uuid,omitempty"`
	Label   string `json:"label,omitempty"`
	FSType  string `json:"fstype,omitempty"` // default ext4
	Options string `json:"options,omitempty"`
	// Init is the real OS's init (default /sbin/init).
	Init string `json:"init,omitempty"`
}

// Deadlines bound each boot step; zero values take the defaults.
type Deadlines struct {
	Total   Duration `json:"total,omitempty"`
	Modules Duration `json:"modules,omitempty"`
	Network Duration `json:"network,omitempty"`
	Fabrics Duration `json:"fabrics,omitempty"`
	Drives  Duration `json:"drives,omitempty"`
	Keys    Duration `json:"keys,omitempty"`
	// KeyAttempt bounds one attempt at one key server.
	KeyAttempt Duration `json:"key_attempt,omitempty"`
	Unlock     Duration `json:"unlock,omitempty"`
	Mount      Duration `json:"mount,omitempty"`
}

// Technician holds the recovery-shell credential.
type Technician struct {
	// Hash is the credential's hash (see package techauth); never the
	// credential itself.
	Hash string `json:"hash"`
	// MaxAttempts wrong answers end the session (default 5).
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Delay after each wrong answer, doubled each time (default 2s).
	Delay Duration `json:"delay,omitempty"`
}

// Inventory lists the key generations and which key each drive holds.
// It never holds key material.
type Inventory struct {
	Generations []Generation `json:"generations,omitempty"`
}

// Generation states.
const (
	GenPending  = "pending"  // created on the key server, not yet on every drive
	GenActive   = "active"   // every drive uses it
	GenRetiring = "retiring" // superseded, deactivated on the server, to be destroyed
	GenRetired  = "retired"  // destroyed on the server
)

// Generation is one generation of drive keys.
type Generation struct {
	Number  int       `json:"number"`
	Created time.Time `json:"created"`
	State   string    `json:"state"`
	// Retiring is when the generation stopped opening drives (it became
	// retiring); its keys are destroyed a configured delay after that.
	Retiring time.Time  `json:"retiring,omitzero"`
	Drives   []DriveKey `json:"drives"`
}

// DriveKey names one drive's key of one generation.
type DriveKey struct {
	// Drive is the drive's serial number.
	Drive string `json:"drive"`
	// Name is the key's name on the key servers.
	Name string `json:"name"`
	// IDs maps a server name to the key's unique identifier there.
	IDs map[string]string `json:"ids,omitempty"`
}

// Journal records an operation in progress (enable, rotate, restore) so
// that running it again resumes it and the agent knows which generations
// a drive may hold.
type Journal struct {
	Op      string    `json:"op"`
	Started time.Time `json:"started"`
	From    int       `json:"from,omitempty"` // generation being replaced
	To      int       `json:"to"`             // generation being installed
	Step    string    `json:"step"`
	// Drives records per-drive progress: drive serial -> state.
	Drives map[string]string `json:"drives,omitempty"`
}

// Journal per-drive states.
const (
	DriveChanging = "changing" // the credential change was sent, outcome unknown
	DriveChanged  = "changed"  // the drive verified with the new generation
)

// Duration is a time.Duration written as a Go duration string ("20s").
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string such as "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"20s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("bad duration %q: want a value such as \"20s\"", s)
	}
	*d = Duration(v)
	return nil
}

// D returns d as a time.Duration, or def when d is zero.
func (d Duration) D(def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// Parse decodes and validates a document. Errors name the field or the
// line and column of a syntax error.
func Parse(data []byte) (*Document, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("config: %s", describeDecodeError(data, err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("config: trailing data after the document")
	}
	if err := doc.Validate(); err != nil {
		return nil, err
	}
	return &doc, nil
}

// Marshal encodes doc as indented JSON after validating it, so nothing
// invalid is ever written to a boot medium.
func Marshal(doc *Document) ([]byte, error) {
	if err := doc.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("config: encode: %w", err)
	}
	return append(b, '\n'), nil
}

func describeDecodeError(data []byte, err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		line, col := lineCol(data, se.Offset)
		return fmt.Sprintf("line %d column %d: %v", line, col, se)
	case errors.As(err, &te):
		line, col := lineCol(data, te.Offset)
		return fmt.Sprintf("%s: line %d column %d: want %v, got JSON %s", te.Field, line, col, te.Type, te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ") + " (not part of format " + fmt.Sprint(FormatVersion) + ")"
	case errors.Is(err, io.EOF):
		return "empty document"
	}
	return err.Error()
}

func lineCol(data []byte, off int64) (int, int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line, col := 1, 1
	for _, c := range data[:off] {
		if c == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return line, col
}
