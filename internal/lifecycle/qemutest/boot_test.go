// Package qemutest checks issue 6's acceptance with real boots: the
// production image (the boot agent as /init) boots in QEMU (Debian's 6.12
// cloud kernel, TCG) against software SEDs served over NVMe/TCP and a kmsd
// key server, both in this test process on 127.0.0.1, with the real OS on
// the first SED.
//
// The key life cycle runs on the host, against the same simulated drives
// (through the simulator's own interface) and the same boot-medium image,
// while the guest is off, the way a technician's sedctl on the live OS
// changes what the next boot finds. The boot is the real path: the agent
// reads the medium's inventory and journal, fetches the candidate keys
// over mutual TLS and unlocks the drives over NVMe/TCP with the kernel's
// own NVMe/TCP host. A crash is a power cycle of every drive at the point
// where the operation stopped.
package qemutest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	imgboot "github.com/sedboot/sedboot/images/boottest"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/images/rig"
	"github.com/sedboot/sedboot/internal/backup"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/lifecycle"
)

const (
	arraySerial = "ARRAY0006"
	technician  = "correct horse battery staple"
	passphrase  = "a long enough passphrase"
)

var prod imgboot.Production

func TestMain(m *testing.M) { prod.Main(m) }

// world is one controller's SEDs, key server and boot medium.
type world struct {
	*imgboot.Controller
	t      *testing.T
	medium string
	boots  int // successful boots of the real OS so far
}

func newWorld(t *testing.T, drives int) *world {
	t.Helper()
	w := &world{Controller: prod.Setup(t).NewController(t, drives, arraySerial), t: t}
	w.medium = filepath.Join(w.Dir, "medium.img")
	return w
}

// array opens the array on the host as sedctl does: the document from the
// medium image, the drives through the simulator, the key server under its
// host address (the document holds the guest's).
func (w *world) array() *lifecycle.Array {
	w.t.Helper()
	a, closer, err := w.Rig.Array(w.medium, &w.KMSD.KeyServer)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { closer.Close() })
	a.Concurrency = 1
	return a
}

// enable writes the medium of a controller that has not enabled yet (mode
// none, kmsd as its key server) and enables encryption on it.
func (w *world) enable() {
	w.t.Helper()
	if _, err := w.Rig.Provision(ctx(w.t), &w.KMSD.KeyServer, w.medium,
		rig.DocOptions{Array: arraySerial, RootUUID: w.P.Root.UUID, Technician: technician}); err != nil {
		w.t.Fatalf("enable: %v", err)
	}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (w *world) boot(name string) *qemu.Machine {
	w.t.Helper()
	return w.Boot(name, w.medium, nil)
}

func expect(t testing.TB, m *qemu.Machine, re string) []string {
	t.Helper()
	return imgboot.ExpectWithin(t, m, re, 3*time.Minute)
}

// driveRecord is one drive of the agent's boot record.
type driveRecord struct {
	Serial        string `json:"serial"`
	Result        string `json:"result"`
	Generation    int    `json:"generation"`
	Presentations int    `json:"presentations"`
}

// bootOK powers the drives off and on, boots, and requires the real OS to
// run with every drive unlocked, each with at most maxWrong rejected
// presentations, and with its boot counter (data on the encrypted root)
// one above the last boot. It returns the generation each drive unlocked
// with.
func (w *world) bootOK(name string, maxWrong int) map[string]int {
	w.t.Helper()
	w.PowerCycle()
	m := w.boot(name)
	w.boots++
	js, _ := imgboot.RealOS(w.t, m, w.boots)
	var rec struct {
		Outcome string        `json:"outcome"`
		Drives  []driveRecord `json:"drives"`
	}
	if err := json.Unmarshal(js, &rec); err != nil {
		w.t.Fatal(err)
	}
	gens := map[string]int{}
	for _, d := range rec.Drives {
		if d.Result != "unlocked" {
			w.t.Fatalf("%s: drive %s: %s", name, d.Serial, d.Result)
		}
		// Presentations counts every key presented; all but the last
		// (accepted) one were rejected.
		if d.Presentations-1 > maxWrong {
			w.t.Fatalf("%s: drive %s: %d presentations (at most %d rejected allowed)", name, d.Serial, d.Presentations, maxWrong)
		}
		gens[d.Serial] = d.Generation
	}
	if rec.Outcome != "switch_root" || len(gens) != len(w.Rig.Drives) {
		w.t.Fatalf("%s: record %+v", name, rec)
	}
	return gens
}

// bootLocked boots and requires the boot to stop at the recovery prompt
// with every drive locked.
func (w *world) bootLocked(name, why string) {
	w.t.Helper()
	w.PowerCycle()
	m := w.boot(name)
	expect(w.t, m, `\[7/10\] keys\s+FAILED`)
	expect(w.t, m, why)
	imgboot.RecoveryPrompt(w.t, m)
	if strings.Contains(m.ConsoleText(), "switching to the real root") {
		w.t.Fatal("the boot proceeded")
	}
	m.Kill()
	if got := w.Rig.Locked(); got != len(w.Rig.Drives) {
		w.t.Fatalf("%s: %d of %d drives locked", name, got, len(w.Rig.Drives))
	}
}

// states counts the KMIP states of generation gen's keys on kmsd.
func (w *world) states(gen int) map[kms.State]int {
	w.t.Helper()
	a := w.array()
	g := a.Doc.Keys.Generation(gen)
	c, err := w.KMSD.Conn(ctx(w.t), true)
	if err != nil {
		w.t.Fatal(err)
	}
	defer c.Close()
	out := map[kms.State]int{}
	for _, dk := range g.Drives {
		ids, err := c.Locate(ctx(w.t), dk.Name, keys.Group(a.Doc.Array.Prefix(), arraySerial))
		if err != nil || len(ids) == 0 {
			out[kms.StateDestroyed]++
			continue
		}
		at, err := c.GetAttributes(ctx(w.t), ids[0])
		if err != nil {
			w.t.Fatal(err)
		}
		out[at.State]++
	}
	return out
}

// TestRotateThenBoot: rotate (live, after a boot), power cycle and boot:
// every drive unlocks with the new generation; the old one is retired
// (deactivated) on the key server.
func TestRotateThenBoot(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.enable()
	for s, g := range w.bootOK("enabled", 0) {
		if g != 1 {
			t.Fatalf("drive %s unlocked with generation %d, want 1", s, g)
		}
	}
	// The guest powered off; the drives are still unlocked (live).
	res, err := w.array().Rotate(ctx(t), lifecycle.RotateOptions{DestroyAfter: lifecycle.DefaultDestroyAfter})
	if err != nil {
		t.Fatal(err)
	}
	if res.From != 1 || res.To != 2 {
		t.Fatalf("rotate %+v", res)
	}
	for s, g := range w.bootOK("rotated", 0) {
		if g != 2 {
			t.Fatalf("drive %s unlocked with generation %d, want 2", s, g)
		}
	}
	if st := w.states(1); st[kms.StateDeactivated] != 4 {
		t.Fatalf("generation 1 on kmsd: %v, want 4 deactivated", st)
	}
}

// TestRotateCrashBoot cuts the power during a rotation of 4 drives at
// every journal point and at every step of the canary drive, boots the
// real image each time (every boot succeeds, the real OS's data is
// intact, at most one rejected presentation per drive), then runs rotate
// again, which completes.
func TestRotateCrashBoot(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 4)
	w.enable()
	w.bootOK("enabled", 0)
	for k := 0; ; k++ {
		a := w.array()
		from := a.Doc.Keys.Active().Number
		canary := a.Doc.Keys.Active().Drives[0].Drive
		n := -1
		var at string
		a.Hook = func(p string) error {
			// Journal points, and the canary's own steps.
			if strings.Contains(p, ": ") && !strings.HasPrefix(p, "drive "+canary+": ") {
				return nil
			}
			if n++; n != k {
				return nil
			}
			at = p
			if err := w.Rig.PowerCycle(context.Background()); err != nil {
				return fmt.Errorf("power cycle: %w", err)
			}
			return errors.New("power cut")
		}
		_, err := a.Rotate(ctx(t), lifecycle.RotateOptions{DestroyAfter: 0})
		if err == nil {
			t.Logf("%d interruption points covered", k)
			break
		}
		if !errors.Is(err, lifecycle.ErrInterrupted) {
			t.Fatalf("point %d: rotate: %v", k, err)
		}
		name := fmt.Sprintf("crash%02d", k)
		t.Logf("%s: power cut at %q", name, at)
		for s, g := range w.bootOK(name, 1) {
			if g != from && g != from+1 {
				t.Fatalf("%s: drive %s unlocked with generation %d (want %d or %d)", name, s, g, from, from+1)
			}
		}
		if _, err := w.array().Rotate(ctx(t), lifecycle.RotateOptions{DestroyAfter: 0}); err != nil {
			t.Fatalf("%s: rotate again: %v", name, err)
		}
	}
	want := w.array().Doc.Keys.Active().Number
	for s, g := range w.bootOK("final", 0) {
		if g != want {
			t.Fatalf("drive %s unlocked with generation %d, want %d", s, g, want)
		}
	}
}

// TestBackupRestoreBoot: backup -> destroy the array's keys on kmsd (the
// boot stops) -> restore -> the boot succeeds. A wrong passphrase and a
// damaged file are refused and change nothing.
func TestBackupRestoreBoot(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.enable()
	w.bootOK("enabled", 0)
	set, err := w.array().BackupKeys(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(w.Dir, "keys.age")
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := backup.Write(f, set, passphrase, backup.Options{WorkFactor: 12}); err != nil {
		t.Fatal(err)
	}
	set.Zero()
	f.Close()

	// Lose the keys on the key server.
	c, err := w.KMSD.Conn(ctx(t), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, dk := range w.array().Doc.Keys.Active().Drives {
		id := dk.IDs[w.KMSD.Name]
		if err := c.Revoke(ctx(t), id, kms.RevokeCessation, "test: keys lost"); err != nil {
			t.Fatal(err)
		}
		if err := c.Destroy(ctx(t), id); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	w.bootLocked("keys-lost", `why:.*no key released for 2 of 2 drive`)

	raw, _ := os.ReadFile(file)
	before, _ := os.ReadFile(w.medium)
	if _, err := backup.Read(strings.NewReader(string(raw)), "not the passphrase"); !errors.Is(err, backup.ErrPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	damaged := []byte(string(raw))
	damaged[len(damaged)-60] ^= 1
	if _, err := backup.Read(strings.NewReader(string(damaged)), passphrase); !errors.Is(err, backup.ErrCorrupt) && !errors.Is(err, backup.ErrFormat) {
		t.Fatalf("damaged file: %v", err)
	}
	if after, _ := os.ReadFile(w.medium); string(after) != string(before) {
		t.Fatal("a refused backup changed the boot medium")
	}

	got, err := backup.Read(strings.NewReader(string(raw)), passphrase)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Zero()
	if _, err := w.array().Restore(ctx(t), got); err != nil {
		t.Fatal(err)
	}
	w.bootOK("restored", 0)
}

// TestLockBoot: lock -> the boot stops at the recovery shell with every
// drive locked -> unlock -> the boot succeeds.
func TestLockBoot(t *testing.T) {
	t.Parallel()
	w := newWorld(t, 2)
	w.enable()
	w.bootOK("enabled", 0)
	res, err := w.array().Lock(ctx(t), lifecycle.LockOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Servers[0].Locked {
		t.Fatalf("lock %+v", res.Servers[0])
	}
	w.bootLocked("locked", `check:.*cryptographically locked`)
	if _, err := w.array().Unlock(ctx(t)); err != nil {
		t.Fatal(err)
	}
	w.bootOK("unlocked", 0)
}
