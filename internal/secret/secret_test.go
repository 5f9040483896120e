package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestFromZeroesSourceAndZeroReleases(t *testing.T) {
	src := []byte("0123456789abcdef0123456789abcdef")
	want := append([]byte(nil), src...)
	s, err := From(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Bytes(), want) {
		t.Fatal("secret does not hold the value")
	}
	if !bytes.Equal(src, make([]byte, len(src))) {
		t.Fatal("From left the source bytes in place")
	}
	mem := s.mem
	s.Zero()
	s.Zero() // idempotent
	if s.Bytes() != nil || s.Len() != 0 {
		t.Fatal("secret still readable after Zero")
	}
	_ = mem // unmapped: must not be touched
}

func TestRandomDistinct(t *testing.T) {
	a, err := Random(32)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Zero()
	b, _ := Random(32)
	defer b.Zero()
	if a.Equal(b) || len(a.Bytes()) != 32 {
		t.Fatal("two random secrets are equal or the wrong size")
	}
	c, _ := From(append([]byte(nil), a.Bytes()...))
	defer c.Zero()
	if !a.Equal(c) {
		t.Fatal("Equal failed on equal secrets")
	}
}

func TestNeverPrinted(t *testing.T) {
	s, err := From([]byte("TOP-SECRET-VALUE"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Zero()
	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("key", "k", s)
	outputs := []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %x %q", s, s, s, s, s, s),
		fmt.Sprintf("%v", struct{ K *Secret }{s}), logBuf.String(),
	}
	if _, err := json.Marshal(struct{ K *Secret }{s}); err == nil {
		t.Fatal("json.Marshal encoded a secret")
	}
	for _, o := range outputs {
		if strings.Contains(o, "TOP-SECRET") || strings.Contains(o, fmt.Sprintf("%x", "TOP-SECRET")) {
			t.Fatalf("secret leaked: %s", o)
		}
	}
}

func TestBadSizes(t *testing.T) {
	if _, err := New(0); err == nil {
		t.Fatal("New(0) succeeded")
	}
	if _, err := From(nil); err == nil {
		t.Fatal("From(nil) succeeded")
	}
}

func TestCloneIsIndependent(t *testing.T) {
	s, err := Random(32)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Clone()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Zero()
	if !c.Equal(s) || &c.mem[0] == &s.mem[0] {
		t.Fatal("clone does not hold its own copy of the value")
	}
	want := append([]byte(nil), c.Bytes()...)
	s.Zero()
	if !bytes.Equal(c.Bytes(), want) {
		t.Fatal("zeroing the original changed the clone")
	}
	if _, err := s.Clone(); err == nil {
		t.Fatal("clone of a released secret succeeded")
	}
}
