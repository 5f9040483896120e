// Package backup reads and writes sedboot key backup files: an array's
// drive keys and the metadata needed to register them again, under the same
// names, in an empty key server, encrypted with a passphrase.
//
// A backup file is an ASCII-armored age file (filippo.io/age) with a
// single scrypt recipient. Its plaintext is line-oriented:
//
//	sedboot-backup 1
//	{"array":...,"prefix":...,"group":...,"created":...,"generations":[...]}   metadata, no key material
//	key <key name> <64 hex digits>                                             one line per key
//	end <number of keys>
//
// age authenticates the whole file, so a damaged file is refused before
// anything is used; the plaintext is then checked line by line against its
// own metadata. Keys are decoded straight into secret buffers and the
// plaintext buffers this package owns are zeroed after use; age's own
// 64 KiB chunk buffers are not (they are garbage collected).
package backup

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/armor"

	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/secret"
)

// Header is the first plaintext line.
const Header = "sedboot-backup 1"

// DefaultWorkFactor is the scrypt work factor (log2 N) of new backups:
// about a second and 256 MiB to try one passphrase.
const DefaultWorkFactor = 18

// MinPassphrase is the shortest passphrase Write accepts.
const MinPassphrase = 12

// MaxSize bounds the backup files Read accepts.
const MaxSize = 4 << 20

// Errors callers can test with errors.Is.
var (
	// ErrPassphrase: the passphrase does not open the file (or its key
	// block is damaged, which age cannot tell apart).
	ErrPassphrase = errors.New("wrong passphrase (or the file's key block is damaged)")
	// ErrCorrupt: the file is damaged or was altered.
	ErrCorrupt = errors.New("backup file is damaged or was altered")
	// ErrFormat: the file is not a sedboot backup.
	ErrFormat = errors.New("not a sedboot backup file")
)

// Set is the content of a backup.
type Set struct {
	Array       string       `json:"array"`
	Prefix      string       `json:"prefix"`
	Group       string       `json:"group"`
	Created     time.Time    `json:"created"`
	Generations []Generation `json:"generations"`
}

// Generation is one key generation of the array.
type Generation struct {
	Number  int       `json:"number"`
	Created time.Time `json:"created"`
	// State is the generation's inventory state when backed up.
	State string `json:"state"`
	Keys  []Key  `json:"keys"`
}

// Key is one drive's key.
type Key struct {
	Drive string `json:"drive"`
	Name  string `json:"name"`
	// Value is the key; never marshalled.
	Value *secret.Secret `json:"-"`
}

// Zero wipes every key of the set.
func (s *Set) Zero() {
	if s == nil {
		return
	}
	for gi := range s.Generations {
		for ki := range s.Generations[gi].Keys {
			s.Generations[gi].Keys[ki].Value.Zero()
		}
	}
}

// Generation returns generation n, or nil.
func (s *Set) Generation(n int) *Generation {
	for i := range s.Generations {
		if s.Generations[i].Number == n {
			return &s.Generations[i]
		}
	}
	return nil
}

// Validate checks that the set is complete and its names are the ones
// sedboot gives these keys.
func (s *Set) Validate() error {
	if s.Array == "" {
		return fmt.Errorf("%w: no array serial", ErrFormat)
	}
	if s.Group != keys.Group(s.Prefix, s.Array) {
		return fmt.Errorf("%w: group %q is not %q", ErrFormat, s.Group, keys.Group(s.Prefix, s.Array))
	}
	if len(s.Generations) == 0 {
		return fmt.Errorf("%w: no key generation", ErrFormat)
	}
	names := map[string]bool{}
	for _, g := range s.Generations {
		if len(g.Keys) == 0 {
			return fmt.Errorf("%w: generation %d has no keys", ErrFormat, g.Number)
		}
		for _, k := range g.Keys {
			n, err := keys.ParseName(s.Prefix, k.Name)
			if err != nil {
				return fmt.Errorf("%w: key %q: %v", ErrFormat, k.Name, err)
			}
			if n.Array != s.Array || n.Generation != g.Number || n.Drive != k.Drive {
				return fmt.Errorf("%w: key %q does not belong to array %s, generation %d, drive %s", ErrFormat, k.Name, s.Array, g.Number, k.Drive)
			}
			if names[k.Name] {
				return fmt.Errorf("%w: key %q listed twice", ErrFormat, k.Name)
			}
			names[k.Name] = true
			if k.Value != nil && k.Value.Len() != keys.KeySize {
				return fmt.Errorf("%w: key %q is %d bytes, want %d", ErrFormat, k.Name, k.Value.Len(), keys.KeySize)
			}
		}
	}
	return nil
}

// Options adjusts Write.
type Options struct {
	// WorkFactor is the scrypt work factor, log2 N (default
	// DefaultWorkFactor; tests use less).
	WorkFactor int
}

// Write encrypts s with passphrase and writes the backup file to w.
// Every key of s must be set.
func Write(w io.Writer, s *Set, passphrase string, opts Options) error {
	if len([]rune(passphrase)) < MinPassphrase {
		return fmt.Errorf("the passphrase must be at least %d characters", MinPassphrase)
	}
	if err := s.Validate(); err != nil {
		return err
	}
	meta, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("backup: encode metadata: %w", err)
	}
	rcp, err := age.NewScryptRecipient(passphrase)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	wf := opts.WorkFactor
	if wf == 0 {
		wf = DefaultWorkFactor
	}
	rcp.SetWorkFactor(wf)
	aw := armor.NewWriter(w)
	ew, err := age.Encrypt(aw, rcp)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	// The age writer buffers one 64 KiB chunk of plaintext internally;
	// that buffer belongs to age and is not wiped (see the package doc).
	if _, err := fmt.Fprintf(ew, "%s\n%s\n", Header, meta); err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	n := 0
	line := make([]byte, 0, 512)
	defer clear(line[:cap(line)])
	for _, g := range s.Generations {
		for _, k := range g.Keys {
			if k.Value == nil || k.Value.Len() != keys.KeySize {
				return fmt.Errorf("backup: key %s has no value", k.Name)
			}
			line = append(line[:0], "key "...)
			line = append(line, k.Name...)
			line = append(line, ' ')
			line = hex.AppendEncode(line, k.Value.Bytes())
			line = append(line, '\n')
			if _, err := ew.Write(line); err != nil {
				return fmt.Errorf("backup: write: %w", err)
			}
			n++
		}
	}
	if _, err := fmt.Fprintf(ew, "end %d\n", n); err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	if err := ew.Close(); err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	if err := aw.Close(); err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	return nil
}

// Read decrypts and parses a backup file. A wrong passphrase gives
// ErrPassphrase, a damaged file ErrCorrupt, anything else that is not a
// sedboot backup ErrFormat. The caller zeroes the returned set.
func Read(r io.Reader, passphrase string) (*Set, error) {
	raw, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("backup: read: %w", err)
	}
	if len(raw) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrFormat, MaxSize)
	}
	var src io.Reader = bytes.NewReader(raw)
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	switch {
	case bytes.HasPrefix(trimmed, []byte(armor.Header)):
		src = armor.NewReader(bytes.NewReader(trimmed))
	case bytes.HasPrefix(raw, []byte("age-encryption.org/")):
	default:
		return nil, fmt.Errorf("%w: no age header", ErrFormat)
	}
	id, err := age.NewScryptIdentity(passphrase)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	dr, err := age.Decrypt(src, id)
	if err != nil {
		var nm *age.NoIdentityMatchError
		switch {
		case errors.As(err, &nm), errors.Is(err, age.ErrIncorrectIdentity):
			return nil, ErrPassphrase
		case strings.Contains(err.Error(), "scrypt recipient must be the only one"):
			return nil, fmt.Errorf("%w: not passphrase-protected", ErrFormat)
		}
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	plain, err := io.ReadAll(io.LimitReader(dr, MaxSize+1))
	defer clear(plain)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return parse(plain)
}

// parse decodes the plaintext; on error nothing is returned and every key
// already decoded is zeroed.
func parse(plain []byte) (_ *Set, err error) {
	lines := bytes.Split(plain, []byte("\n"))
	if len(lines) < 3 || string(lines[0]) != Header {
		return nil, fmt.Errorf("%w: first line is not %q", ErrFormat, Header)
	}
	var s Set
	dec := json.NewDecoder(bytes.NewReader(lines[1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: metadata: %v", ErrFormat, err)
	}
	defer func() {
		if err != nil {
			s.Zero()
		}
	}()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	where := map[string]*Key{}
	total := 0
	for gi := range s.Generations {
		for ki := range s.Generations[gi].Keys {
			k := &s.Generations[gi].Keys[ki]
			where[k.Name] = k
			total++
		}
	}
	n := 0
	i := 2
	for ; i < len(lines); i++ {
		l := lines[i]
		if bytes.HasPrefix(l, []byte("end ")) {
			break
		}
		f := bytes.Fields(l)
		if len(f) != 3 || string(f[0]) != "key" {
			return nil, fmt.Errorf("%w: line %d is not a key line", ErrFormat, i+1)
		}
		k := where[string(f[1])]
		if k == nil {
			return nil, fmt.Errorf("%w: line %d: key %q is not in the metadata", ErrFormat, i+1, f[1])
		}
		if k.Value != nil {
			return nil, fmt.Errorf("%w: line %d: key %q given twice", ErrFormat, i+1, f[1])
		}
		if len(f[2]) != 2*keys.KeySize {
			return nil, fmt.Errorf("%w: line %d: key %q is not %d hex digits", ErrFormat, i+1, f[1], 2*keys.KeySize)
		}
		v, err := secret.New(keys.KeySize)
		if err != nil {
			return nil, err
		}
		k.Value = v
		if _, err := hex.Decode(v.Bytes(), f[2]); err != nil {
			return nil, fmt.Errorf("%w: line %d: key %q is not hex", ErrFormat, i+1, f[1])
		}
		n++
	}
	if i == len(lines) {
		return nil, fmt.Errorf("%w: no end line", ErrFormat)
	}
	cnt, err := strconv.Atoi(strings.TrimPrefix(string(lines[i]), "end "))
	if err != nil || cnt != n || n != total {
		return nil, fmt.Errorf("%w: %d keys present, the end line says %q and the metadata lists %d", ErrFormat, n, lines[i], total)
	}
	return &s, nil
}
