package keys

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/secret"
)

func TestNameRoundTrip(t *testing.T) {
	created := time.Date(2026, 11, 26, 19, 37, 0, 0, time.UTC)
	tests := []KeyName{
		{Prefix: "sedboot", Array: "ARRAY-0001", Created: created, Generation: 1, Drive: "SIM0001"},
		{Prefix: "acme-prod", Array: "A.B_C", Created: created, Generation: 123456, Drive: "S-3.x_y"},
	}
	for _, n := range tests {
		s := n.String()
		got, err := ParseName(n.Prefix, s)
		if err != nil {
			t.Fatalf("ParseName(%q): %v", s, err)
		}
		if got != n {
			t.Fatalf("ParseName(%q) = %+v, want %+v", s, got, n)
		}
		if n.Group() != n.Prefix+"-"+n.Array || !strings.HasPrefix(s, n.Group()+"--") {
			t.Fatalf("group %q does not prefix name %q", n.Group(), s)
		}
	}
	if got := tests[0].String(); got != "sedboot-ARRAY-0001--20261126T193700Z--key-gen-1--SIM0001" {
		t.Fatalf("name format changed: %s", got)
	}
}

func TestParseNameRejects(t *testing.T) {
	for _, s := range []string{
		"", "sedboot-ARRAY--20261126T193700Z--key-gen-1", "sedboot-ARRAY--2026-11-26--key-gen-1--D",
		"sedboot-ARRAY--20261126T193700Z--key-gen-0--D", "sedboot-ARRAY--20261126T193700Z--key-gen-x--D",
		"SEDBOOT-ARRAY--20261126T193700Z--key-gen-1--D", "other-ARRAY--20261126T193700Z--key-gen-1--D", "sedboot-ARRAY--20261399T193700Z--key-gen-1--D",
	} {
		if n, err := ParseName("sedboot", s); err == nil {
			t.Errorf("ParseName(%q) accepted: %+v", s, n)
		}
	}
	bad := KeyName{Prefix: "sedboot", Array: "A--B", Created: time.Now(), Generation: 1, Drive: "D"}
	if err := bad.Validate(); err == nil {
		t.Error("Validate accepted an array serial containing --")
	}
}

func mustKey(t *testing.T, b byte) *secret.Secret {
	s, err := secret.From(bytes.Repeat([]byte{b}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Zero)
	return s
}

func TestPINsDistinctPerRoleAndDrive(t *testing.T) {
	k := mustKey(t, 1)
	seen := map[string]string{}
	for _, role := range []Role{RoleSID, RoleAdmin1} {
		for _, drive := range []string{"D1", "D2"} {
			p, err := PIN(k, role, drive)
			if err != nil {
				t.Fatal(err)
			}
			v := string(p.Bytes())
			if len(v) != 32 {
				t.Fatalf("PIN length %d", len(v))
			}
			if prev, ok := seen[v]; ok {
				t.Fatalf("%s/%s PIN equals %s", role, drive, prev)
			}
			seen[v] = string(role) + "/" + drive
			if bytes.Equal(p.Bytes(), k.Bytes()) {
				t.Fatal("PIN equals the key itself")
			}
			p.Zero()
		}
	}
	again, _ := PIN(k, RoleSID, "D1")
	defer again.Zero()
	if seen[string(again.Bytes())] != "opal-sid-pin/D1" {
		t.Fatal("derivation is not deterministic")
	}
	if _, err := PIN(k, Role("other"), "D1"); err == nil {
		t.Fatal("PIN derived a credential for an unknown role")
	}
	short, _ := secret.From([]byte("short"))
	defer short.Zero()
	if _, err := PIN(short, RoleSID, "D1"); err == nil {
		t.Fatal("PIN accepted a short key")
	}
}
