package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms/pykmiptest"
	"github.com/sedboot/sedboot/internal/kmsserver/kmsdtest"
	"github.com/sedboot/sedboot/internal/lifecycle"
	"github.com/sedboot/sedboot/internal/opalsim"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/techauth"
	"github.com/sedboot/sedboot/internal/testenv"
)

const pass = "backup passphrase for tests"

// array is a test array for sedctl: simulated drives, a boot medium
// image and the administrator's certificate files.
type array struct {
	t                   *testing.T
	serial              string
	sims                []*opalsim.Drive
	medium              string
	adminCert, adminKey string
	dir                 string
}

func (a *array) drives(context.Context) ([]*sed.Drive, error) {
	var out []*sed.Drive
	for i, s := range a.sims {
		out = append(out, sed.New(s, fmt.Sprintf("/dev/sim%d", i)))
	}
	return out, nil
}

// run runs sedctl against the array's drives.
func (a *array) run(stdin string, args ...string) result {
	a.t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }, drives: a.drives}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := run(ctx, e, args)
	return result{code, out.String(), errb.String()}
}

// admin adds the medium and the administrator's identity to args.
func (a *array) admin(args ...string) []string {
	return append(args, "--medium", a.medium, "--admin-cert", a.adminCert, "--admin-key", a.adminKey)
}

func (a *array) powerCycle() {
	for _, s := range a.sims {
		if err := s.PowerCycle(); err != nil {
			a.t.Fatal(err)
		}
	}
}

var techHash = sync.OnceValues(func() (string, error) { return techauth.Hash("technician-secret") })

// newArray makes n drives and a boot medium whose key server is at addr
// with the CA caPEM and the array certificate files.
func newArray(t *testing.T, serial string, n int, servers []config.Server, caPEM []byte, certFile, keyFile string) *array {
	t.Helper()
	a := &array{t: t, serial: serial, dir: t.TempDir()}
	for i := range n {
		sim, err := opalsim.NewMemory(opalsim.Config{Serial: fmt.Sprintf("%s%02d", serial[:1], i+1), Model: "sedctl test drive", Firmware: "T1",
			BlockSize: 512, Blocks: 2048, TryLimit: 5, MBRSize: 1 << 20, DataStoreSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sim.Close() })
		a.sims = append(a.sims, sim)
	}
	cert, _ := os.ReadFile(certFile)
	key, _ := os.ReadFile(keyFile)
	h, err := techHash()
	if err != nil {
		t.Fatal(err)
	}
	doc := &config.Document{
		Format: config.FormatVersion, Array: config.Array{Serial: serial, Slot: "A"}, Mode: config.ModeNone,
		KMS:        &config.KMS{Servers: servers, CA: string(caPEM), ClientCert: string(cert), ClientKey: string(key)},
		Network:    config.Network{Interface: "lo", Mode: "static", Addresses: []string{"127.0.0.1/8"}},
		Root:       config.Root{Label: "realroot"},
		Technician: config.Technician{Hash: h},
	}
	b, err := config.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	docFile := filepath.Join(a.dir, "doc.json")
	if err := os.WriteFile(docFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	a.medium = filepath.Join(a.dir, "medium.img")
	if r := a.run("", "medium", "init", "--medium", a.medium, "--create", "4194304", docFile); r.code != 0 {
		t.Fatalf("medium init: %+v", r)
	}
	return a
}

func kmsdArray(t *testing.T, drives int) (*array, *kmsdtest.Server) {
	t.Helper()
	k := kmsdtest.Start(t, kmsdtest.Options{})
	serial := "SEDCTL-1"
	cf, kf := k.IssueClient(t, "array-"+serial)
	ca, _ := os.ReadFile(k.CAFile)
	a := newArray(t, serial, drives, []config.Server{{Name: "kmsd", Address: k.Addr}}, ca, cf, kf)
	a.adminCert, a.adminKey = k.IssueClient(t, "admin")
	return a, k
}

func TestKeyLifecycleCommands(t *testing.T) {
	a, _ := kmsdArray(t, 3)

	r := a.run("", "drives")
	if r.code != 0 || strings.Count(r.stdout, "Opal 2") != 3 || strings.Count(r.stdout, "locking not enabled") != 3 || !strings.Contains(r.stdout, "S01") {
		t.Fatalf("drives: %+v", r)
	}
	r = a.run("", a.admin("kms", "check")...)
	if r.code != 0 || !strings.Contains(r.stdout, "kmsd") {
		t.Fatalf("kms check: %+v", r)
	}

	// Enabling needs the typed confirmation.
	r = a.run("no\n", a.admin("enable", "--mode", "external")...)
	if r.code != 1 || !strings.Contains(r.stderr, "cannot be undone") || !strings.Contains(r.stderr, "not confirmed") {
		t.Fatalf("unconfirmed enable: %+v", r)
	}
	if r := a.run("", "drives", "--json"); strings.Contains(r.stdout, `"locking_enabled": true`) {
		t.Fatal("an unconfirmed enable changed a drive")
	}
	if r := a.run("", a.admin("enable", "--mode", "internal", "--yes")...); r.code != 2 || !strings.Contains(r.stderr, "only external") {
		t.Fatalf("enable --mode internal: %+v", r)
	}
	r = a.run(a.serial+"\n", a.admin("enable", "--mode", "external")...)
	if r.code != 0 || !strings.Contains(r.stdout, "encryption enabled, key generation 1, 3 drive(s)") ||
		!strings.Contains(r.stderr, "kms check: 1 key server(s) fit") || !strings.Contains(r.stderr, "enable [drives] drive S02: take ownership") {
		t.Fatalf("enable: %+v", r)
	}
	t.Logf("sedctl enable:\n%s%s", r.stderr, r.stdout)

	// Status, as JSON and as text.
	r = a.run("", a.admin("status", "--json")...)
	var st lifecycle.Status
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
		t.Fatalf("status --json: %+v", r)
	}
	if st.Generation != 1 || st.Mode != "external" || len(st.Drives) != 3 || st.Servers[0].Lock != "released" || st.Drives[0].Admin1Tries == nil {
		t.Fatalf("status: %+v", st)
	}
	r = a.run("", a.admin("status")...)
	if r.code != 0 || !strings.Contains(r.stdout, "key generation 1") || !strings.Contains(r.stdout, "released") {
		t.Fatalf("status: %+v", r)
	}
	t.Logf("sedctl status:\n%s", r.stdout)

	// Rotate, live.
	r = a.run("", a.admin("rotate")...)
	if r.code != 1 || !strings.Contains(r.stderr, "not confirmed") {
		t.Fatalf("unconfirmed rotate: %+v", r)
	}
	r = a.run("", a.admin("rotate", "--yes")...)
	if r.code != 0 || !strings.Contains(r.stdout, "rotated from generation 1 to 2 (canary S01)") {
		t.Fatalf("rotate: %+v", r)
	}
	t.Logf("sedctl rotate:\n%s", r.stdout)

	// Backup; the file is private.
	file := filepath.Join(a.dir, "keys.age")
	r = a.run(pass+"\n", append(a.admin("backup", "create", "--work-factor", "10"), file)...)
	if r.code != 0 || !strings.Contains(r.stdout, "3 key(s) of generation(s) [2]") {
		t.Fatalf("backup create: %+v", r)
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", st, err)
	}
	if r := a.run(pass+"\n", append(a.admin("backup", "create"), file)...); r.code != 1 || !strings.Contains(r.stderr, "exists") {
		t.Fatalf("backup over an existing file: %+v", r)
	}
	if r := a.run("not the passphrase\n", append(a.admin("backup", "restore"), file)...); r.code != 1 || !strings.Contains(r.stderr, "wrong passphrase") || !strings.Contains(r.stderr, "nothing was changed") {
		t.Fatalf("restore with a wrong passphrase: %+v", r)
	}
	if r := a.run(pass+"\n", append(a.admin("backup", "restore"), file)...); r.code != 0 || !strings.Contains(r.stdout, "restored generation(s) [2]") {
		t.Fatalf("restore: %+v", r)
	}

	// Preflight passes.
	r = a.run("", "preflight", "--medium", a.medium)
	if r.code != 0 || !strings.Contains(r.stdout, "verdict: PASS") || !strings.Contains(r.stdout, "ok (gen 2)") {
		t.Fatalf("preflight: %+v", r)
	}
	t.Logf("sedctl preflight:\n%s", r.stdout)

	// Lock, and the drives stay locked; the recovery shell's way in is
	// the backup file.
	r = a.run("", a.admin("lock")...)
	if r.code != 0 || !strings.Contains(r.stdout, "cryptographically locked") || !strings.Contains(r.stdout, "3 of 3 key(s) refused") {
		t.Fatalf("lock: %+v", r)
	}
	t.Logf("sedctl lock:\n%s", r.stdout)
	if r := a.run("", "preflight", "--medium", a.medium); r.code != 1 || !strings.Contains(r.stdout, "refused") {
		t.Fatalf("preflight of a locked array: %+v", r)
	}
	a.powerCycle()
	r = a.run(pass+"\n", "unlock-drive", "--medium", a.medium, "--backup", file, "--drive", "S02")
	if r.code != 0 || !strings.Contains(r.stdout, "/dev/sim1 S02 unlocked with generation 2") {
		t.Fatalf("unlock-drive: %+v", r)
	}
	if r := a.run("", "drives", "--json"); strings.Count(r.stdout, `"locked": true`) != 2 {
		t.Fatalf("after unlock-drive: %s", r.stdout)
	}
	if r := a.run("", "drives"); !regexpMatch(`S01 .* locked `, r.stdout) || !regexpMatch(`S02 .* unlocked `, r.stdout) {
		t.Fatalf("drives after unlock-drive:\n%s", r.stdout)
	}
	if r := a.run(pass+"\n", "unlock-drive", "--backup", file, "--drive", "NOPE"); r.code != 1 || !strings.Contains(r.stderr, `no drive "NOPE"`) {
		t.Fatalf("unlock-drive of an unknown drive: %+v", r)
	}
	r = a.run("", a.admin("unlock")...)
	if r.code != 0 || !strings.Contains(r.stdout, "releases its keys again") {
		t.Fatalf("unlock: %+v", r)
	}

	// A second key server that is down: preflight warns (exit 3) and
	// names it.
	exp := filepath.Join(a.dir, "doc.json")
	os.Remove(exp)
	if r := a.run("", "medium", "export", "--medium", a.medium, exp); r.code != 0 {
		t.Fatalf("export: %+v", r)
	}
	b, _ := os.ReadFile(exp)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	down := l.Addr().String()
	l.Close()
	edited := strings.Replace(string(b), `"servers": [`, `"servers": [{"name": "kms9", "address": "`+down+`"},`, 1)
	os.WriteFile(exp, []byte(edited), 0o600)
	if r := a.run("", "medium", "import", "--medium", a.medium, exp); r.code != 0 {
		t.Fatalf("import: %+v", r)
	}
	r = a.run("", "preflight", "--medium", a.medium)
	if r.code != exitWarn || !strings.Contains(r.stdout, "verdict: WARN") || !strings.Contains(r.stdout, "broken: server kms9") {
		t.Fatalf("preflight with a server down: %+v", r)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

func TestCommandUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"enable", "-h"}, 0, "-mode"},
		{[]string{"enable", "--medium", "/nonexistent"}, 2, "--mode is required"},
		{[]string{"backup", "create"}, 2, "usage: sedctl backup create"},
		{[]string{"unlock-drive", "--drive", "X"}, 2, "--backup FILE is required"},
		{[]string{"unlock-drive", "--backup", "f"}, 2, "--drive"},
		{[]string{"rotate", "--destroy-after", "soon"}, 2, "invalid value"},
		{[]string{"status", "--medium", "/nonexistent/medium"}, 1, "no such file"},
	}
	for _, tc := range tests {
		r := sedctl(t, "", tc.args...)
		if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
			t.Errorf("sedctl %v: code %d, output %q; want %d and %q", tc.args, r.code, r.stdout+r.stderr, tc.code, tc.want)
		}
	}
	r := sedctl(t, "")
	for _, c := range []string{"drives", "kms check", "enable", "status", "rotate", "backup create", "backup restore", "lock", "unlock", "preflight", "unlock-drive"} {
		if !strings.Contains(r.stdout, "  "+c+" ") {
			t.Errorf("usage does not list %q", c)
		}
	}
}

// TestLockPyKMIP: against PyKMIP, which enforces nothing a client can
// switch on, lock says so, says what its administrator must do, and exits
// non-zero.
func TestLockPyKMIP(t *testing.T) {
	testenv.LookPath(t, pykmiptest.Program, pykmiptest.Hint)
	py := pykmiptest.Start(t, pykmiptest.Options{})
	serial := fmt.Sprintf("PY-%d", time.Now().UnixNano()%1000000)
	cf, kf, err := py.IssueClient("array-"+serial, pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(py.CAFile)
	a := newArray(t, serial, 2, []config.Server{{Name: "pykmip", Address: py.Addr}}, ca, cf, kf)
	// PyKMIP lets only an object's owner Get it: the tools use the
	// array's own identity (no --admin-cert).
	if r := a.run("", "enable", "--mode", "external", "--yes", "--medium", a.medium); r.code != 0 {
		t.Fatalf("enable against PyKMIP: %+v", r)
	}
	r := a.run("", "lock", "--medium", a.medium)
	if r.code != 1 || !strings.Contains(r.stdout, "NOT locked") || !strings.Contains(r.stdout, "administrator must") ||
		!strings.Contains(r.stderr, "is NOT locked") {
		t.Fatalf("lock against PyKMIP: %+v", r)
	}
	t.Logf("sedctl lock against PyKMIP (exit %d):\n%s%s", r.code, r.stdout, r.stderr)
}
