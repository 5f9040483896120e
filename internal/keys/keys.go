// Package keys is sedboot's key model: how drive authentication keys are
// named on key servers, grouped per array, and turned into the Opal
// credentials and the key verifier a drive carries.
//
// Every drive has its own random 256-bit authentication key per
// generation, registered on the key servers as Secret Data (Password)
// named
//
//	<prefix>-<array-serial>--<created>--key-gen-<N>--<drive-serial>
//
// in the Object Group "<prefix>-<array-serial>". From a key the package
// derives, with HKDF-SHA256 and distinct labels, the drive's SID and
// Admin1 PINs. (The key verifier a drive keeps in its DataStore is
// computed from the Admin1 PIN by package sed.)
package keys

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sedboot/sedboot/internal/secret"
)

// KeySize is the size of a drive authentication key in bytes.
const KeySize = 32

// DefaultPrefix starts key names unless the array configures another.
const DefaultPrefix = "sedboot"

const createdLayout = "20060102T150405Z"

var (
	prefixRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
	partRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	nameRE   = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9._-]*)--([0-9]{8}T[0-9]{6}Z)--key-gen-([0-9]{1,9})--([A-Za-z0-9][A-Za-z0-9._-]*)$`)
)

// KeyName identifies one drive key of one generation.
type KeyName struct {
	Prefix     string
	Array      string
	Created    time.Time
	Generation int
	Drive      string
}

// String renders the name stored on the key server.
func (n KeyName) String() string {
	return fmt.Sprintf("%s-%s--%s--key-gen-%d--%s", n.Prefix, n.Array, n.Created.UTC().Format(createdLayout), n.Generation, n.Drive)
}

// Group returns the Object Group of the array's keys.
func (n KeyName) Group() string { return Group(n.Prefix, n.Array) }

// Group returns the Object Group holding an array's keys.
func Group(prefix, array string) string { return prefix + "-" + array }

// Validate checks that every part can be rendered and parsed back.
func (n KeyName) Validate() error {
	switch {
	case !prefixRE.MatchString(n.Prefix):
		return fmt.Errorf("key name: prefix %q must be 1-32 lower-case letters, digits or '-'", n.Prefix)
	case !partRE.MatchString(n.Array) || strings.Contains(n.Array, "--"):
		return fmt.Errorf("key name: array serial %q must be letters, digits, '.', '_' or single '-'", n.Array)
	case !partRE.MatchString(n.Drive) || strings.Contains(n.Drive, "--"):
		return fmt.Errorf("key name: drive serial %q must be letters, digits, '.', '_' or single '-'", n.Drive)
	case n.Generation < 1:
		return fmt.Errorf("key name: generation %d must be 1 or more", n.Generation)
	case n.Created.IsZero():
		return fmt.Errorf("key name: creation time missing")
	}
	return nil
}

// ParseName parses a key name written by KeyName.String with the given
// prefix. (The prefix may itself contain '-', so it must be known.)
func ParseName(prefix, s string) (KeyName, error) {
	rest, ok := strings.CutPrefix(s, prefix+"-")
	if !ok {
		return KeyName{}, fmt.Errorf("key name %q does not start with the prefix %q", s, prefix+"-")
	}
	m := nameRE.FindStringSubmatch(rest)
	if m == nil {
		return KeyName{}, fmt.Errorf("key name %q is not of the form <prefix>-<array>--<created>--key-gen-<N>--<drive>", s)
	}
	created, err := time.Parse(createdLayout, m[2])
	if err != nil {
		return KeyName{}, fmt.Errorf("key name %q: creation time: %w", s, err)
	}
	gen, _ := strconv.Atoi(m[3])
	n := KeyName{Prefix: prefix, Array: m[1], Created: created, Generation: gen, Drive: m[4]}
	if err := n.Validate(); err != nil {
		return KeyName{}, fmt.Errorf("key name %q: %w", s, err)
	}
	return n, nil
}

// Role selects which credential to derive from a drive key.
type Role string

// Credentials derived from a drive key.
const (
	RoleSID    Role = "opal-sid-pin"    // Admin SP owner
	RoleAdmin1 Role = "opal-admin1-pin" // Locking SP administrator
)

// PIN derives the Opal credential for role from a drive key. The drive
// serial is bound into the derivation so one key never yields the same
// PIN on two drives. The caller zeroes the result.
func PIN(key *secret.Secret, role Role, drive string) (*secret.Secret, error) {
	if role != RoleSID && role != RoleAdmin1 {
		return nil, fmt.Errorf("derive PIN for %s: unknown role %q", drive, role)
	}
	k := key.Bytes()
	if len(k) != KeySize {
		return nil, fmt.Errorf("derive %s for drive %s: key is %d bytes, want %d", role, drive, len(k), KeySize)
	}
	out, err := hkdf.Key(sha256.New, k, []byte("sedboot/v1"), string(role)+"\x00"+drive, 32)
	if err != nil {
		return nil, fmt.Errorf("derive %s for drive %s: %w", role, drive, err)
	}
	return secret.From(out)
}
