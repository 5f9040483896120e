// Package boottest boots the production image in QEMU (Debian's 6.12 cloud
// kernel, TCG) against software SEDs served over NVMe/TCP and a KMIP key
// server, both in this test process on 127.0.0.1, and checks issue 5's
// acceptance: the happy path with data surviving power cycles, key-server
// failover, revoked keys, bad TLS material, a malformed boot medium, the
// recovery shell, PyKMIP, static and DHCP addressing, and that no key
// material leaks into the image, the medium, the console or the record.
//
// The kernel, the initramfs and the real OS are built once per test run;
// each scenario is a boot medium.
package boottest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	imgboot "github.com/sedboot/sedboot/images/boottest"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/images/rig"
	"github.com/sedboot/sedboot/internal/config"
)

const (
	arraySerial = "ARRAY0001"
	technician  = "correct horse battery staple"
)

var prod imgboot.Production

// enableMedium is the boot-medium image the enable wrote (in the array's
// directory); each boot gets a medium of its own.
const enableMedium = "enable-medium.img"

func TestMain(m *testing.M) { prod.Main(m) }

// array is one controller's world: its SEDs, key server and boot medium.
type array struct {
	*imgboot.Controller
	t    testing.TB
	prov *rig.Provisioned
}

// newArray makes n SEDs (the real OS on the first), a kmsd, and provisions
// them (enabled through lifecycle.Enable with keys on kmsd, then power
// cycled: locked).
func newArray(t testing.TB, n int, provision bool) *array {
	t.Helper()
	a := &array{Controller: prod.Setup(t).NewController(t, n, arraySerial), t: t}
	if provision {
		a.provision(&a.KMSD.KeyServer)
	}
	return a
}

func (a *array) provision(ks *rig.KeyServer) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := a.Rig.Provision(ctx, ks, filepath.Join(a.Dir, enableMedium), rig.DocOptions{Array: arraySerial,
		RootUUID: a.P.Root.UUID, Technician: technician, Servers: []rig.GuestServer{{KS: ks, GuestAddr: guestKMIP(rig.GuestHost)}}})
	if err != nil {
		a.t.Fatal(err)
	}
	a.prov = p
	a.PowerCycle()
}

// doc returns the boot-medium document with the array's kmsd as the only
// key server.
func (a *array) doc(mod func(*rig.DocOptions)) *config.Document {
	a.t.Helper()
	o := rig.DocOptions{Array: arraySerial, RootUUID: a.P.Root.UUID, Technician: technician,
		Servers: []rig.GuestServer{{KS: &a.KMSD.KeyServer, GuestAddr: guestKMIP(rig.GuestHost)}}}
	if mod != nil {
		mod(&o)
	}
	d, err := rig.Document(a.prov, o)
	if err != nil {
		a.t.Fatal(err)
	}
	return d
}

func guestKMIP(host string) string { return host + ":5696" }

// boot writes the medium (doc, or raw when doc is nil) and boots a guest
// whose KMIP forwards lead to kmip (guest address -> host address; default
// GuestHost -> the array's kmsd).
func (a *array) boot(name string, doc *config.Document, raw []byte, kmip map[string]string) *qemu.Machine {
	a.t.Helper()
	medium := filepath.Join(a.Dir, name+"-medium.img")
	if err := rig.WriteMedium(medium, doc, raw); err != nil {
		a.t.Fatal(err)
	}
	return a.Boot(name, medium, kmip)
}

// expect waits for re on m's console and returns the submatches.
func expect(t testing.TB, m *qemu.Machine, re string) []string {
	t.Helper()
	return imgboot.Expect(t, m, re)
}

// realOS waits for the real OS's report and returns the boot record it
// printed.
func realOS(t testing.TB, m *qemu.Machine, boots int) map[string]any {
	t.Helper()
	rec, _ := realOSAt(t, m, boots)
	return rec
}

// realOSAt is realOS, also returning when the real OS's first line was
// seen.
func realOSAt(t testing.TB, m *qemu.Machine, boots int) (map[string]any, time.Time) {
	t.Helper()
	js, hello := imgboot.RealOS(t, m, boots)
	var rec map[string]any
	if err := json.Unmarshal(js, &rec); err != nil {
		t.Fatalf("boot record from the real OS: %v", err)
	}
	return rec, hello
}

// TestHappyPath is acceptance (a), with the no-key-material check: four
// SEDs, the real OS on one; boot: all unlocked, switch_root, the real OS's
// marker; its data survives a power cycle and the next boot. Then the keys
// and PINs provisioned appear nowhere: not in the initramfs, the boot
// medium, the console, or the boot record.
func TestHappyPath(t *testing.T) {
	t.Parallel()
	a := newArray(t, 4, true)
	doc := a.doc(nil)
	m := a.boot("happy1", doc, nil, nil)
	for range 4 {
		expect(t, m, `sedboot:\s+nvme\d+\s+SIM000\d\s+unlocked \(generation 1 from kmip kmsd-a`)
	}
	expect(t, m, `\[8/10\] unlock\s+ok`)
	expect(t, m, `switching to the real root`)
	rec := realOS(t, m, 1)
	checkRecord(t, rec, 4)
	console1 := m.ConsoleText()

	a.PowerCycle()
	m2 := a.boot("happy2", doc, nil, nil)
	rec2 := realOS(t, m2, 2)
	checkRecord(t, rec2, 4)

	// No key material anywhere.
	medium, err := os.ReadFile(filepath.Join(a.Dir, "happy1-medium.img"))
	if err != nil {
		t.Fatal(err)
	}
	enabled, err := os.ReadFile(filepath.Join(a.Dir, enableMedium))
	if err != nil {
		t.Fatal(err)
	}
	cpio, err := exec.Command("zstd", "-dc", a.P.Image.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	recJSON, _ := json.Marshal(rec)
	places := map[string][]byte{
		"initramfs":        cpio,
		"boot medium":      medium,
		"enable's medium":  enabled,
		"console (boot 1)": []byte(console1),
		"console (boot 2)": []byte(m2.ConsoleText()),
		"boot record":      recJSON,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	provisioned, err := a.prov.Secrets(ctx, &a.KMSD.KeyServer)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, ss := range provisioned {
			for _, s := range ss {
				s.Zero()
			}
		}
	}()
	checked := 0
	for serial, secrets := range provisioned {
		for i, s := range secrets {
			what := []string{"key", "SID PIN", "Admin1 PIN"}[i]
			for form, needle := range encodings(s.Bytes()) {
				for place, hay := range places {
					checked++
					if bytes.Contains(hay, needle) {
						t.Errorf("%s of drive %s (%s) found in the %s", what, serial, form, place)
					}
				}
			}
		}
	}
	if checked < 4*3*5 {
		t.Fatalf("only %d checks made", checked)
	}
}

// encodings returns the forms a secret could leak in.
func encodings(b []byte) map[string][]byte {
	return map[string][]byte{
		"raw":        append([]byte(nil), b...),
		"hex":        []byte(hex.EncodeToString(b)),
		"HEX":        []byte(strings.ToUpper(hex.EncodeToString(b))),
		"base64":     []byte(base64.StdEncoding.EncodeToString(b)),
		"base64 raw": []byte(base64.RawStdEncoding.EncodeToString(b)),
		"base64url":  []byte(base64.RawURLEncoding.EncodeToString(b)),
	}
}

// checkRecord checks the boot record the real OS found in /run.
func checkRecord(t testing.TB, rec map[string]any, drives int) {
	t.Helper()
	if rec["outcome"] != "switch_root" {
		t.Errorf("record outcome %v", rec["outcome"])
	}
	ds, _ := rec["drives"].([]any)
	unlocked := 0
	for _, d := range ds {
		dm := d.(map[string]any)
		if dm["result"] == "unlocked" {
			unlocked++
			if dm["source"] != "kmip" || dm["presentations"].(float64) != 1 {
				t.Errorf("drive record %v: want source kmip and one presentation", dm)
			}
		}
	}
	if unlocked != drives {
		t.Errorf("record: %d drives unlocked, want %d: %v", unlocked, drives, ds)
	}
	if ks, _ := rec["key_servers"].([]any); len(ks) == 0 {
		t.Errorf("record lists no key server")
	}
}

// TestFailover is acceptance (b): two key servers, the first refusing
// connections, then the first accepting TCP but never answering; the agent
// fails over inside its deadline and boots.
func TestFailover(t *testing.T) {
	t.Parallel()
	a := newArray(t, 2, true)
	dead := a.KMSD.KeyServer
	dead.Name = "kms-dead"
	doc := a.doc(func(o *rig.DocOptions) {
		o.Servers = []rig.GuestServer{{KS: &dead, GuestAddr: guestKMIP(rig.GuestHost)}, {KS: &a.KMSD.KeyServer, GuestAddr: guestKMIP(rig.GuestHost2)}}
		o.KeyAttempt = 2 * time.Second
	})
	refusing, err := rig.Refusing()
	if err != nil {
		t.Fatal(err)
	}
	m := a.boot("failover-refused", doc, nil, map[string]string{rig.GuestHost: refusing, rig.GuestHost2: a.KMSD.Addr})
	expect(t, m, `kmip kms-dead: failed`)
	realOS(t, m, 1)

	silent, err := rig.NewSilent()
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	a.PowerCycle()
	m2 := a.boot("failover-silent", doc, nil, map[string]string{rig.GuestHost: silent.Addr, rig.GuestHost2: a.KMSD.Addr})
	expect(t, m2, `kmip kms-dead: failed`)
	rec := realOS(t, m2, 2)
	checkRecord(t, rec, 2)
	if silent.Accepted() == 0 {
		t.Error("the silent server saw no connection: the agent did not try it first")
	}
}

// TestRevokedKeysAndRecoveryShell is acceptance (c) and (f): with the
// array's keys made non-extractable on kmsd no drive is unlocked, the
// console says why, and the boot stops at the recovery prompt; a wrong
// credential is refused, the right one opens a shell on the serial console
// where `sedctl drives` lists the locked drives.
func TestRevokedKeysAndRecoveryShell(t *testing.T) {
	t.Parallel()
	a := newArray(t, 4, true)
	if err := a.prov.Revoke(context.Background(), &a.KMSD.KeyServer); err != nil {
		t.Fatal(err)
	}
	m := a.boot("revoked", a.doc(nil), nil, nil)
	t.Run("c-revoked", func(t *testing.T) { revoked(t, a, m) })
	t.Run("f-recovery-shell", func(t *testing.T) { recoveryShell(t, a, m) })
}

func revoked(t *testing.T, a *array, m *qemu.Machine) {
	expect(t, m, `\[7/10\] keys\s+FAILED`)
	expect(t, m, `why:.*no key released for 4 of 4 drive`)
	expect(t, m, `check:.*cryptographically locked`)
	imgboot.RecoveryPrompt(t, m)
	if strings.Contains(m.ConsoleText(), "switching to the real root") {
		t.Fatal("the boot proceeded")
	}
	if got := a.Rig.Locked(); got != 4 {
		t.Fatalf("%d of 4 drives locked", got)
	}
}

func recoveryShell(t *testing.T, a *array, m *qemu.Machine) {
	m.Send("not the credential\n")
	expect(t, m, `sedboot: credential refused \(2 attempt\(s\) left`)
	expect(t, m, regexp.QuoteMeta("sedboot: technician credential:"))
	m.Send(technician + "\n")
	expect(t, m, regexp.QuoteMeta("sedboot: credential accepted"))
	m.Send("echo shell-$((6*7))\n")
	expect(t, m, `shell-42`)
	// The output lies between the two computed markers: the echo of the
	// typed line holds neither (the line editor may wrap it anywhere).
	m.Send("echo BEGIN-$((2+2)); sedctl drives; echo END-$((1+1))\n")
	out := expect(t, m, `(?s)BEGIN-4(.*?)END-2`)[1]
	if strings.Contains(out, `unknown command "drives"`) {
		t.Fatalf("the recovery shell's sedctl has no drives command: %s", strings.TrimSpace(out))
	}
	for _, d := range a.Rig.Drives {
		if !regexp.MustCompile(d.Serial + `.*locked`).MatchString(out) {
			t.Errorf("sedctl drives does not list %s as locked:\n%s", d.Serial, out)
		}
	}
	m.Send("exit\n")
	expect(t, m, regexp.QuoteMeta("sedboot: recovery shell ended"))
	expect(t, m, regexp.QuoteMeta("sedboot: technician credential:"))
}

// TestBadTLS is acceptance (d): a client certificate from another CA, and
// a server certificate from the wrong CA: a clear error and the recovery
// prompt.
func TestBadTLS(t *testing.T) {
	t.Parallel()
	a := newArray(t, 1, true)
	other, err := rig.StartKMSD(a.Dir, "other", arraySerial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, tc := range []struct {
		name  string
		mod   func(d *config.Document)
		check string
	}{
		{"wrong-client-cert", func(d *config.Document) {
			d.KMS.ClientCert, d.KMS.ClientKey = string(other.ArrayCert), string(other.ArrayKey)
		}, `why:.*(certificate|tls|TLS)`},
		{"wrong-server-ca", func(d *config.Document) { d.KMS.CA = string(other.CAPEM) }, `why:.*(certificate|TLS)`},
	} {
		doc := a.doc(nil)
		tc.mod(doc)
		m := a.boot(tc.name, doc, nil, nil)
		expect(t, m, `\[7/10\] keys\s+FAILED`)
		expect(t, m, tc.check)
		expect(t, m, `check:.*certificate`)
		imgboot.RecoveryPrompt(t, m)
		m.Kill()
		if a.Rig.Locked() != 1 {
			t.Fatalf("%s: the drive is not locked", tc.name)
		}
	}
}

// TestMalformedMedium is acceptance (e): the error names the field, and the
// boot stops at the recovery prompt (the technician credential of the
// malformed document still opens it).
func TestMalformedMedium(t *testing.T) {
	t.Parallel()
	a := newArray(t, 1, true)
	raw, err := config.Marshal(a.doc(nil))
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Replace(raw, []byte(`"address": "10.0.2.100:5696"`), []byte(`"address": "10.0.2.100"`), 1)
	if bytes.Equal(bad, raw) {
		t.Fatal("could not break the document")
	}
	m := a.boot("malformed", nil, bad, nil)
	expect(t, m, `\[2/10\] boot medium\s+FAILED`)
	expect(t, m, regexp.QuoteMeta(`kms.servers[0].address`)+`.*has no port`)
	imgboot.RecoveryPrompt(t, m)
	m.Send(technician + "\n")
	expect(t, m, regexp.QuoteMeta("sedboot: credential accepted"))
}

// TestPyKMIP is acceptance (g): Debian's PyKMIP server as the key server
// for the happy path.
func TestPyKMIP(t *testing.T) {
	t.Parallel()
	a := newArray(t, 2, false)
	ks := startPyKMIP(t)
	a.provision(ks)
	doc := a.doc(func(o *rig.DocOptions) { o.Servers = []rig.GuestServer{{KS: ks, GuestAddr: guestKMIP(rig.GuestHost)}} })
	m := a.boot("pykmip", doc, nil, map[string]string{rig.GuestHost: ks.Addr})
	expect(t, m, `kmip pykmip: 2 key\(s\) in \d request`)
	rec := realOS(t, m, 1)
	checkRecord(t, rec, 2)
}

// TestDHCP is acceptance (h) for DHCP (the other tests use static
// addressing).
func TestDHCP(t *testing.T) {
	t.Parallel()
	a := newArray(t, 1, true)
	doc := a.doc(func(o *rig.DocOptions) { o.DHCP = true })
	m := a.boot("dhcp", doc, nil, nil)
	expect(t, m, `eth0 dhcp: 10\.0\.2\.15/24, lease from 10\.0\.2\.2`)
	rec := realOS(t, m, 1)
	checkRecord(t, rec, 1)
}
