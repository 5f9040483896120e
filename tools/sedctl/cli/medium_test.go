package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/techauth"
)

type result struct {
	code           int
	stdout, stderr string
}

func sedctl(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code := run(context.Background(), e, args)
	return result{code, out.String(), errb.String()}
}

// testDocument writes a valid document for array serial to a JSON file.
func testDocument(t *testing.T, serial string) (string, *config.Document) {
	t.Helper()
	ca, err := pki.NewCA("test CA", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.Issue(pki.Request{CommonName: "array-" + serial, Role: pki.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := cl.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	h, err := techauth.Hash("technician-secret")
	if err != nil {
		t.Fatal(err)
	}
	doc := &config.Document{
		Format: config.FormatVersion, Array: config.Array{Serial: serial, Slot: "A"}, Mode: config.ModeNone,
		KMS: &config.KMS{Servers: []config.Server{{Name: "kms0", Address: "127.0.0.1:5696"}},
			CA: string(ca.CertPEM()), ClientCert: string(cl.CertPEM()), ClientKey: string(keyPEM)},
		Network:    config.Network{Interface: "eth0", Mode: "dhcp"},
		Root:       config.Root{Label: "realroot"},
		Technician: config.Technician{Hash: h},
	}
	b, err := config.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "doc.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, doc
}

func TestMediumLifecycle(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "medium.img")
	docFile, doc := testDocument(t, "ARRAY-7")

	r := sedctl(t, "", "medium", "init", "--medium", img, "--create", "4194304", docFile)
	if r.code != 0 || !strings.Contains(r.stdout, "array ARRAY-7 controller A") {
		t.Fatalf("init: %+v", r)
	}
	if r := sedctl(t, "", "medium", "init", "--medium", img, docFile); r.code == 0 || !strings.Contains(r.stderr, "already holds a document") {
		t.Fatalf("second init without --force: %+v", r)
	}

	r = sedctl(t, "", "medium", "show", "--medium", img)
	if r.code != 0 || !strings.Contains(r.stdout, `"serial": "ARRAY-7"`) || strings.Contains(r.stdout, "PRIVATE KEY") {
		t.Fatalf("show must print the document without the private key: %+v", r)
	}

	exp := filepath.Join(dir, "export.json")
	if r := sedctl(t, "", "medium", "export", "--medium", img, exp); r.code != 0 {
		t.Fatalf("export: %+v", r)
	}
	if st, err := os.Stat(exp); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("export file mode: %v %v", st, err)
	}
	b, _ := os.ReadFile(exp)
	if full, err := readDocFile(exp); err != nil || full.KMS.ClientKey != doc.KMS.ClientKey {
		t.Fatalf("export lost the client key (%v)", err)
	}

	// Edit: switch to static addressing; import validates and writes.
	edited := strings.Replace(string(b), `"mode": "dhcp"`, `"mode": "static", "addresses": ["10.0.2.15/24"]`, 1)
	os.WriteFile(exp, []byte(edited), 0o600)
	if r := sedctl(t, "", "medium", "import", "--medium", img, exp); r.code != 0 {
		t.Fatalf("import: %+v", r)
	}
	if r := sedctl(t, "", "medium", "show", "--medium", img); !strings.Contains(r.stdout, "10.0.2.15/24") {
		t.Fatalf("import not applied: %s", r.stdout)
	}

	// A broken edit names the field and changes nothing.
	os.WriteFile(exp, []byte(strings.Replace(edited, `"slot": "A"`, `"slot": "Z"`, 1)), 0o600)
	r = sedctl(t, "", "medium", "import", "--medium", img, exp)
	if r.code != 1 || !strings.Contains(r.stderr, "array.slot") {
		t.Fatalf("bad import: %+v", r)
	}
	// Another array's document is refused.
	other, _ := testDocument(t, "OTHER-1")
	if r := sedctl(t, "", "medium", "import", "--medium", img, other); r.code != 1 || !strings.Contains(r.stderr, "different array") {
		t.Fatalf("import of another array: %+v", r)
	}
	if r := sedctl(t, "", "medium", "show", "--medium", img); !strings.Contains(r.stdout, `"slot": "A"`) {
		t.Fatal("a refused import changed the medium")
	}

	// Technician credential from a non-terminal stdin.
	if r := sedctl(t, "new-technician-pass\n", "technician", "set", "--medium", img); r.code != 0 {
		t.Fatalf("technician set: %+v", r)
	}
	os.Remove(exp)
	sedctl(t, "", "medium", "export", "--medium", img, exp)
	got, err := readDocFile(exp)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := techauth.Verify(got.Technician.Hash, "new-technician-pass"); !ok {
		t.Fatal("technician credential not stored")
	}
	if r := sedctl(t, "short\n", "technician", "set", "--medium", img); r.code != 1 {
		t.Fatalf("a short credential was accepted: %+v", r)
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 0, "usage: sedctl"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"medium", "show", "-h"}, 0, "-medium"},
		{[]string{"medium", "init"}, 2, "usage: sedctl medium init"},
		{[]string{"medium", "show", "--medium", "/nonexistent/medium"}, 1, "no such file"},
	}
	for _, tc := range tests {
		r := sedctl(t, "", tc.args...)
		if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
			t.Errorf("sedctl %v: code %d, output %q; want %d and %q", tc.args, r.code, r.stdout+r.stderr, tc.code, tc.want)
		}
	}
}
