package sed

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The key verifier lives at the start of the DataStore table, in a region
// of VerifierRegionSize bytes; callers keep their own DataStore data at
// DataStoreUserOffset and beyond.
const (
	VerifierRegionSize  = 512
	DataStoreUserOffset = VerifierRegionSize
)

// verifierMagic opens every verifier; verifierVersion is the format below.
var verifierMagic = [8]byte{'s', 'e', 'd', 'b', 'o', 'o', 't', 'V'}

const (
	verifierVersion = 1
	maxVerifierText = 64
	maxVerifierKeys = 4
	verifierContext = "sedboot-verifier"
)

// Role names the credential a verifier entry checks.
type Role uint8

// Roles of verifier entries.
const (
	RoleAdmin1 Role = 1 // the Locking SP Admin1 credential (the unlock key)
	RoleSID    Role = 2 // the Admin SP SID credential
)

func (r Role) String() string {
	switch r {
	case RoleAdmin1:
		return "Admin1"
	case RoleSID:
		return "SID"
	}
	return fmt.Sprintf("role %d", uint8(r))
}

// VerifierEntry binds one credential of one key generation to the drive:
// MAC = HMAC-SHA256(key, "sedboot-verifier" || len(serial) || serial ||
// generation), with the length as one byte and the generation as a
// big-endian uint64. It proves nothing about the key to a reader and lets
// a host with a candidate key check it without presenting it.
type VerifierEntry struct {
	Role       Role
	Generation uint64
	MAC        [32]byte
}

// Verifier is the small versioned header sedboot keeps in a drive's
// DataStore (never the key). Pending marks a credential change in
// progress: more than one entry per role may then be the drive's current
// credential.
type Verifier struct {
	ArraySerial string
	DriveSerial string
	Pending     bool
	Entries     []VerifierEntry
}

// ErrNotVerifier reports DataStore contents that are not a verifier
// (e.g. a new drive's zeros).
var ErrNotVerifier = errors.New("not a sedboot key verifier")

// VerifierMAC computes the MAC an entry holds for key.
func VerifierMAC(key []byte, driveSerial string, generation uint64) [32]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(verifierContext))
	m.Write([]byte{byte(len(driveSerial))})
	m.Write([]byte(driveSerial))
	var g [8]byte
	binary.BigEndian.PutUint64(g[:], generation)
	m.Write(g[:])
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

// Add appends an entry for key (role, generation), replacing an entry of
// the same role and generation.
func (v *Verifier) Add(role Role, generation uint64, key []byte) {
	e := VerifierEntry{Role: role, Generation: generation, MAC: VerifierMAC(key, v.DriveSerial, generation)}
	for i := range v.Entries {
		if v.Entries[i].Role == role && v.Entries[i].Generation == generation {
			v.Entries[i] = e
			return
		}
	}
	v.Entries = append(v.Entries, e)
}

// Has reports whether the verifier has an entry for role.
func (v *Verifier) Has(role Role) bool {
	for _, e := range v.Entries {
		if e.Role == role {
			return true
		}
	}
	return false
}

// Match checks key against the entries for role and returns the
// generation of the entry it matches.
func (v *Verifier) Match(role Role, key []byte) (generation uint64, ok bool) {
	for _, e := range v.Entries {
		if e.Role != role {
			continue
		}
		mac := VerifierMAC(key, v.DriveSerial, e.Generation)
		if hmac.Equal(mac[:], e.MAC[:]) {
			generation, ok = e.Generation, true
		}
	}
	return generation, ok
}

// MarshalBinary encodes the verifier:
//
//	magic "sedbootV" | version u8 | flags u8 (bit 0 pending) | entries u8 |
//	reserved u8 | array serial (u8 length, bytes) | drive serial (u8 length,
//	bytes) | entries (role u8, generation u64, MAC [32]) | CRC-32C u32
//
// all integers big-endian.
func (v *Verifier) MarshalBinary() ([]byte, error) {
	if len(v.ArraySerial) > maxVerifierText || len(v.DriveSerial) > maxVerifierText {
		return nil, fmt.Errorf("verifier: serial numbers are limited to %d bytes", maxVerifierText)
	}
	if v.DriveSerial == "" {
		return nil, errors.New("verifier: no drive serial")
	}
	if len(v.Entries) == 0 || len(v.Entries) > maxVerifierKeys {
		return nil, fmt.Errorf("verifier: %d entries, want 1 to %d", len(v.Entries), maxVerifierKeys)
	}
	var b bytes.Buffer
	b.Write(verifierMagic[:])
	flags := byte(0)
	if v.Pending {
		flags |= 1
	}
	b.Write([]byte{verifierVersion, flags, byte(len(v.Entries)), 0})
	b.WriteByte(byte(len(v.ArraySerial)))
	b.WriteString(v.ArraySerial)
	b.WriteByte(byte(len(v.DriveSerial)))
	b.WriteString(v.DriveSerial)
	for _, e := range v.Entries {
		b.WriteByte(byte(e.Role))
		binary.Write(&b, binary.BigEndian, e.Generation)
		b.Write(e.MAC[:])
	}
	binary.Write(&b, binary.BigEndian, crc32.Checksum(b.Bytes(), crc32.MakeTable(crc32.Castagnoli)))
	return b.Bytes(), nil
}

// ParseVerifier decodes a verifier from the start of p (trailing bytes
// are ignored). It returns ErrNotVerifier when p does not start with one.
func ParseVerifier(p []byte) (*Verifier, error) {
	if len(p) < 12 || !bytes.Equal(p[:8], verifierMagic[:]) {
		return nil, ErrNotVerifier
	}
	if p[8] != verifierVersion {
		return nil, fmt.Errorf("verifier: version %d, this build reads version %d", p[8], verifierVersion)
	}
	v := &Verifier{Pending: p[9]&1 != 0}
	n := int(p[10])
	if n == 0 || n > maxVerifierKeys {
		return nil, fmt.Errorf("verifier: %d entries, want 1 to %d", n, maxVerifierKeys)
	}
	off := 12
	text := func(what string) (string, error) {
		if off >= len(p) {
			return "", fmt.Errorf("verifier: truncated before the %s", what)
		}
		l := int(p[off])
		if l > maxVerifierText || off+1+l > len(p) {
			return "", fmt.Errorf("verifier: bad %s length %d", what, l)
		}
		s := string(p[off+1 : off+1+l])
		off += 1 + l
		return s, nil
	}
	var err error
	if v.ArraySerial, err = text("array serial"); err != nil {
		return nil, err
	}
	if v.DriveSerial, err = text("drive serial"); err != nil {
		return nil, err
	}
	const entryLen = 1 + 8 + 32
	if off+n*entryLen+4 > len(p) {
		return nil, errors.New("verifier: truncated entries")
	}
	for i := 0; i < n; i++ {
		var e VerifierEntry
		e.Role = Role(p[off])
		e.Generation = binary.BigEndian.Uint64(p[off+1:])
		copy(e.MAC[:], p[off+9:off+entryLen])
		v.Entries = append(v.Entries, e)
		off += entryLen
	}
	want := binary.BigEndian.Uint32(p[off:])
	if got := crc32.Checksum(p[:off], crc32.MakeTable(crc32.Castagnoli)); got != want {
		return nil, fmt.Errorf("verifier: checksum 0x%08x, stored 0x%08x (torn or corrupted)", got, want)
	}
	return v, nil
}
