package backup

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/secret"
)

const pass = "correct horse battery staple"

// testSet makes a set of two generations for drives D1 and D2.
func testSet(t *testing.T) *Set {
	t.Helper()
	s := &Set{Array: "ARRAY-1", Prefix: "sedboot", Group: keys.Group("sedboot", "ARRAY-1"), Created: time.Unix(1800000000, 0).UTC()}
	for _, n := range []int{1, 2} {
		g := Generation{Number: n, Created: time.Unix(int64(1700000000+n), 0).UTC(), State: map[int]string{1: "retiring", 2: "active"}[n]}
		for _, d := range []string{"D1", "D2"} {
			v, err := secret.Random(keys.KeySize)
			if err != nil {
				t.Fatal(err)
			}
			name := keys.KeyName{Prefix: "sedboot", Array: "ARRAY-1", Created: g.Created, Generation: n, Drive: d}.String()
			g.Keys = append(g.Keys, Key{Drive: d, Name: name, Value: v})
		}
		s.Generations = append(s.Generations, g)
	}
	t.Cleanup(s.Zero)
	return s
}

func write(t *testing.T, s *Set) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, s, pass, Options{WorkFactor: 10}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	s := testSet(t)
	file := write(t, s)
	if !bytes.HasPrefix(file, []byte("-----BEGIN AGE ENCRYPTED FILE-----")) {
		t.Fatalf("not armored: %.40q", file)
	}
	for _, g := range s.Generations {
		for _, k := range g.Keys {
			if bytes.Contains(file, []byte(k.Name)) || bytes.Contains(file, k.Value.Bytes()) {
				t.Fatal("the file shows a key name or value in clear")
			}
		}
	}
	got, err := Read(bytes.NewReader(file), pass)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Zero()
	if got.Array != s.Array || got.Group != s.Group || !got.Created.Equal(s.Created) || len(got.Generations) != 2 {
		t.Fatalf("metadata differs: %+v", got)
	}
	for gi, g := range s.Generations {
		gg := got.Generations[gi]
		if gg.Number != g.Number || gg.State != g.State || !gg.Created.Equal(g.Created) {
			t.Fatalf("generation %d differs: %+v", g.Number, gg)
		}
		for ki, k := range g.Keys {
			if gk := gg.Keys[ki]; gk.Name != k.Name || gk.Drive != k.Drive || !gk.Value.Equal(k.Value) {
				t.Fatalf("key %s differs", k.Name)
			}
		}
	}
}

func TestReadRefusals(t *testing.T) {
	s := testSet(t)
	file := write(t, s)
	flip := func(at int) []byte {
		b := bytes.Clone(file)
		// Change one base64 character of the armored body.
		if b[at] == 'A' {
			b[at] = 'B'
		} else {
			b[at] = 'A'
		}
		return b
	}
	body := bytes.Index(file, []byte("\n")) + 1
	tests := []struct {
		name string
		file []byte
		pass string
		want error
	}{
		{"wrong passphrase", file, "not the passphrase at all", ErrPassphrase},
		{"damaged payload", flip(len(file) - 60), pass, ErrCorrupt},
		{"damaged header", flip(body + 10), pass, ErrCorrupt},
		{"truncated", file[:len(file)/2], pass, ErrCorrupt},
		{"not age", []byte("hello, this is not a backup\n"), pass, ErrFormat},
		{"empty", nil, pass, ErrFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Read(bytes.NewReader(tc.file), tc.pass)
			if got != nil {
				got.Zero()
				t.Fatal("a set was returned")
			}
			if !errors.Is(err, tc.want) {
				// A damaged stanza cannot be told from a wrong passphrase.
				if !(tc.name == "damaged header" && errors.Is(err, ErrPassphrase)) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
			}
			for _, g := range s.Generations {
				for _, k := range g.Keys {
					if strings.Contains(err.Error(), k.Name) {
						t.Fatalf("error names a key: %v", err)
					}
				}
			}
		})
	}
}

func TestWriteRefusals(t *testing.T) {
	s := testSet(t)
	var buf bytes.Buffer
	if err := Write(&buf, s, "short", Options{WorkFactor: 10}); err == nil || !strings.Contains(err.Error(), "at least") {
		t.Fatalf("short passphrase: %v", err)
	}
	s.Generations[0].Keys[1].Drive = "OTHER"
	if err := Write(&buf, s, pass, Options{WorkFactor: 10}); !errors.Is(err, ErrFormat) {
		t.Fatalf("key name of another drive: %v", err)
	}
	s.Generations[0].Keys[1].Drive = "D2"
	s.Group = "other-group"
	if err := Write(&buf, s, pass, Options{WorkFactor: 10}); !errors.Is(err, ErrFormat) {
		t.Fatalf("wrong group: %v", err)
	}
	if buf.Len() != 0 {
		t.Fatal("a refused Write wrote something")
	}
}

func TestParseRefusals(t *testing.T) {
	s := testSet(t)
	var good bytes.Buffer
	// Build a plaintext by hand through the same code path as Write.
	meta := `{"array":"ARRAY-1","prefix":"sedboot","group":"sedboot-ARRAY-1","created":"2027-01-15T08:00:00Z","generations":[{"number":1,"created":"2023-11-14T22:13:21Z","state":"active","keys":[{"drive":"D1","name":"` + s.Generations[0].Keys[0].Name + `"}]}]}`
	good.WriteString(Header + "\n" + meta + "\nkey " + s.Generations[0].Keys[0].Name + " " + strings.Repeat("ab", 32) + "\nend 1\n")
	if set, err := parse(good.Bytes()); err != nil {
		t.Fatalf("good plaintext: %v", err)
	} else {
		set.Zero()
	}
	tests := map[string]string{
		"no end":        strings.Replace(good.String(), "end 1\n", "", 1),
		"count":         strings.Replace(good.String(), "end 1", "end 2", 1),
		"short key":     strings.Replace(good.String(), strings.Repeat("ab", 32), "abab", 1),
		"not hex":       strings.Replace(good.String(), strings.Repeat("ab", 32), strings.Repeat("zz", 32), 1),
		"unknown field": strings.Replace(good.String(), `"array"`, `"extra":1,"array"`, 1),
		"header":        strings.Replace(good.String(), Header, "sedboot-backup 9", 1),
	}
	for name, p := range tests {
		if set, err := parse([]byte(p)); !errors.Is(err, ErrFormat) {
			set.Zero()
			t.Errorf("%s: err = %v, want ErrFormat", name, err)
		}
	}
}
