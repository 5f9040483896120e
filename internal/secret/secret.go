// Package secret holds key material in memory that is locked (never
// swapped), excluded from core dumps, kept out of the Go heap, and zeroed
// when released. A Secret never prints, logs or marshals its contents.
package secret

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"
)

// Secret is a fixed-size buffer of key material.
// The zero value is an empty, released secret.
type Secret struct {
	mu     sync.Mutex
	mem    []byte // the whole mapping, page-rounded
	n      int    // length of the secret within mem
	locked bool   // mlock succeeded
}

// New returns a zeroed secret of n bytes (n > 0).
func New(n int) (*Secret, error) {
	if n <= 0 {
		return nil, fmt.Errorf("secret: size %d must be positive", n)
	}
	page := unix.Getpagesize()
	size := (n + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("secret: map %d bytes: %w", size, err)
	}
	s := &Secret{mem: mem, n: n}
	// Best effort: an unprivileged process may lack RLIMIT_MEMLOCK.
	s.locked = unix.Mlock(mem) == nil
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	return s, nil
}

// Random returns a secret of n bytes from the system's CSPRNG.
func Random(n int) (*Secret, error) {
	s, err := New(n)
	if err != nil {
		return nil, err
	}
	if _, err := rand.Read(s.mem[:n]); err != nil {
		s.Zero()
		return nil, fmt.Errorf("secret: random: %w", err)
	}
	return s, nil
}

// From copies b into a new secret and zeroes b.
func From(b []byte) (*Secret, error) {
	if len(b) == 0 {
		return nil, errors.New("secret: empty value")
	}
	s, err := New(len(b))
	if err != nil {
		clear(b)
		return nil, err
	}
	copy(s.mem, b)
	clear(b)
	return s, nil
}

// Clone returns a new secret holding the same bytes, copied without
// passing through the Go heap. The caller zeroes both.
func (s *Secret) Clone() (*Secret, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem == nil {
		return nil, errors.New("secret: clone of a released secret")
	}
	c, err := New(s.n)
	if err != nil {
		return nil, err
	}
	copy(c.mem, s.mem[:s.n])
	return c, nil
}

// Bytes returns the secret's contents. The slice is valid only until Zero;
// do not keep it, copy it into ordinary memory, or print it.
func (s *Secret) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem == nil {
		return nil
	}
	return s.mem[:s.n]
}

// Len returns the secret's length (0 once zeroed).
func (s *Secret) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem == nil {
		return 0
	}
	return s.n
}

// Locked reports whether the memory is locked against swapping.
func (s *Secret) Locked() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.locked
}

// Equal compares two secrets in constant time.
func (s *Secret) Equal(o *Secret) bool {
	return equal(s.Bytes(), o.Bytes())
}

func equal(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := range a {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// Zero wipes and releases the secret. It is safe to call more than once.
func (s *Secret) Zero() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem == nil {
		return
	}
	clear(s.mem)
	if s.locked {
		_ = unix.Munlock(s.mem)
	}
	_ = unix.Munmap(s.mem)
	s.mem, s.n, s.locked = nil, 0, false
}

// String redacts the secret.
func (s *Secret) String() string { return "[secret redacted]" }

// GoString redacts the secret.
func (s *Secret) GoString() string { return "[secret redacted]" }

// Format redacts the secret for every fmt verb.
func (s *Secret) Format(f fmt.State, _ rune) { fmt.Fprint(f, "[secret redacted]") }

// LogValue redacts the secret in log/slog records.
func (s *Secret) LogValue() slog.Value { return slog.StringValue("[secret redacted]") }

// MarshalJSON refuses to encode a secret.
func (s *Secret) MarshalJSON() ([]byte, error) {
	return nil, errors.New("secret: refusing to encode key material")
}

// MarshalText refuses to encode a secret.
func (s *Secret) MarshalText() ([]byte, error) {
	return nil, errors.New("secret: refusing to encode key material")
}
