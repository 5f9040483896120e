package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

var errInjected = errors.New("injected crash")

func TestEnable(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 3, servers: 2})
	r.writeData()
	res := r.enable(ctx)
	if res.Generation != 1 || res.Resumed || res.AlreadyEnabled || len(res.Drives) != 3 {
		t.Fatalf("result %+v", res)
	}
	for _, d := range res.Drives {
		if d.Generation != 1 || len(d.Steps) == 0 {
			t.Errorf("drive %+v", d)
		}
	}
	doc := r.doc()
	g := doc.Keys.Active()
	if doc.Mode != config.ModeExternal || doc.Journal != nil || g == nil || g.Number != 1 || len(g.Drives) != 3 {
		t.Fatalf("document after enable: mode %s journal %+v inventory %+v", doc.Mode, doc.Journal, doc.Keys)
	}
	for _, dk := range g.Drives {
		if dk.IDs["kms0"] == "" || dk.IDs["kms1"] == "" {
			t.Errorf("drive %s: identifiers %v, want one per server", dk.Drive, dk.IDs)
		}
		n, err := keys.ParseName("sedboot", dk.Name)
		if err != nil || n.Drive != dk.Drive || n.Generation != 1 || n.Array != testArray {
			t.Errorf("key name %q: %+v %v", dk.Name, n, err)
		}
	}
	// The array's identity was granted its keys on both servers, and the
	// two servers hold the same value.
	for i := range r.servers {
		if st := r.states(ctx, i, 1); st[kms.StateActive] != 3 {
			t.Errorf("server %d: states %v", i, st)
		}
	}
	if res.KMS.Requests == 0 || res.KMS.Connections == 0 {
		t.Errorf("no key-server statistics: %+v", res.KMS)
	}

	// Running it again changes nothing.
	a := r.open()
	again, err := a.Enable(ctx, EnableOptions{Check: check(a)})
	if err != nil || !again.AlreadyEnabled {
		t.Fatalf("second enable: %+v, %v", again, err)
	}

	// The drives lock at power cycle; the boot unlocks them with no
	// wrong presentation and the data is intact.
	r.powerCycle()
	for i, s := range r.sims {
		if err := s.ReadBlocks(7, make([]byte, 512)); err == nil {
			t.Fatalf("drive %d readable after power cycle", i)
		}
	}
	r.bootAll(ctx, 1, 0)
	r.checkData()

	// No key material on the boot medium.
	noSecretsOnMedium(t, r, ctx, 1)
}

// noSecretsOnMedium fetches generation gen's keys and checks that neither
// they nor their PINs appear on the medium image.
func noSecretsOnMedium(t *testing.T, r *rig, ctx context.Context, gen int) {
	t.Helper()
	img, err := os.ReadFile(r.medium)
	if err != nil {
		t.Fatal(err)
	}
	a := r.open()
	ks, err := a.fetchAdmin(ctx, a.Doc.Keys.Generation(gen))
	if err != nil {
		t.Fatal(err)
	}
	defer ks.zero()
	for name, k := range ks {
		dk := strings.Split(name, "--")
		serial := dk[len(dk)-1]
		p, err := derive(k, serial)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []*secret.Secret{k, p.sid, p.admin1} {
			if bytes.Contains(img, s.Bytes()) {
				t.Fatalf("key material of %s found on the boot medium", name)
			}
		}
		p.zero()
	}
}

func TestEnableRefusals(t *testing.T) {
	ctx := testCtx(t)
	t.Run("check fails", func(t *testing.T) {
		r := newRig(t, rigOptions{drives: 2, servers: 2})
		r.servers[1].stop(t)
		before := r.doc()
		a := r.open()
		_, err := a.Enable(ctx, EnableOptions{Check: check(a)})
		if err == nil || !strings.Contains(err.Error(), "nothing was changed") || !strings.Contains(err.Error(), "kms1") {
			t.Fatalf("err = %v", err)
		}
		untouched(t, r, before, -1)
	})
	t.Run("no check", func(t *testing.T) {
		r := newRig(t, rigOptions{drives: 1, servers: 1})
		before := r.doc()
		if _, err := r.open().Enable(ctx, EnableOptions{}); err == nil || !strings.Contains(err.Error(), "kms check") {
			t.Fatalf("err = %v", err)
		}
		untouched(t, r, before, -1)
	})
	t.Run("no key servers", func(t *testing.T) {
		r := newRig(t, rigOptions{drives: 1, servers: 1, docHook: func(d *config.Document) { d.KMS = nil }})
		a := r.open()
		if _, err := a.Enable(ctx, EnableOptions{Check: func(context.Context) error { return nil }}); err == nil || !strings.Contains(err.Error(), "no key servers") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("drive owned by other software", func(t *testing.T) {
		r := newRig(t, rigOptions{drives: 2, servers: 1})
		d := sed.New(r.sims[1], "other")
		if _, err := d.TakeOwnership(ctx, bytes.Repeat([]byte{7}, 32)); err != nil {
			t.Fatal(err)
		}
		before := r.doc()
		a := r.open()
		_, err := a.Enable(ctx, EnableOptions{Check: check(a)})
		if err == nil || !strings.Contains(err.Error(), "D02") || !strings.Contains(err.Error(), "owned by other software") {
			t.Fatalf("err = %v", err)
		}
		untouched(t, r, before, 1)
	})
	t.Run("another operation journaled", func(t *testing.T) {
		r := newRig(t, rigOptions{drives: 1, servers: 1, docHook: func(d *config.Document) {
			d.Journal = &config.Journal{Op: OpRotate, From: 1, To: 2, Step: StepCanary}
		}})
		a := r.open()
		if _, err := a.Enable(ctx, EnableOptions{Check: check(a)}); !errors.Is(err, ErrOtherOperation) {
			t.Fatalf("err = %v", err)
		}
	})
}

// unchanged checks that the document did not change.
func unchanged(t *testing.T, r *rig, before *config.Document) {
	t.Helper()
	after := r.doc()
	b1, _ := config.Marshal(before)
	b2, _ := config.Marshal(after)
	if !bytes.Equal(b1, b2) {
		t.Errorf("the document changed:\n%s\n----\n%s", b1, b2)
	}
}

// untouched checks that neither the document nor any drive (but skip)
// changed.
func untouched(t *testing.T, r *rig, before *config.Document, skip int) {
	t.Helper()
	unchanged(t, r, before)
	for i, d := range r.drives() {
		if i == skip {
			continue
		}
		sum, err := d.Discover(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if sum.LockingEnabled || sum.SID == sed.SIDNotMSID {
			t.Errorf("drive %d was changed: %s", i, sum)
		}
	}
}

// TestEnableInterrupted stops enable at every journal point and every
// drive step (powering the drives off there), boots, and runs enable
// again: it completes, and every drive then unlocks with its key.
func TestEnableInterrupted(t *testing.T) {
	ctx := testCtx(t)
	points := countPoints(t, func(hook func(string) error) error {
		r := newRig(t, rigOptions{drives: 2, servers: 1})
		a := r.open()
		a.Concurrency = 1
		a.Hook = hook
		_, err := a.Enable(ctx, EnableOptions{Check: check(a)})
		return err
	})
	t.Logf("%d interruption points: %s", len(points), strings.Join(points, " | "))
	for k, p := range points {
		t.Run(fmt.Sprintf("%02d %s", k, p), func(t *testing.T) {
			r := newRig(t, rigOptions{drives: 2, servers: 1})
			r.writeData()
			a := r.open()
			a.Concurrency = 1 // the k-th point is the same in every run
			a.Hook = crashAt(k, r)
			if _, err := a.Enable(ctx, EnableOptions{Check: check(a)}); !errors.Is(err, ErrInterrupted) {
				t.Fatalf("enable stopped with %v, want the injected crash", err)
			}
			// The interrupted array boots: a drive with locking enabled
			// unlocks (at most one wrong presentation).
			for s, br := range r.boot(ctx) {
				switch {
				case br.wrong > 1:
					t.Errorf("boot after the crash: drive %s: %d wrong presentations: %v", s, br.wrong, br.err)
				case br.generation == 0:
					t.Errorf("boot after the crash: drive %s not unlocked: %v", s, br.err)
				}
			}
			// Running enable again completes it.
			b := r.open()
			res, err := b.Enable(ctx, EnableOptions{Check: check(b)})
			if err != nil {
				t.Fatalf("enable again: %v", err)
			}
			if !res.Resumed && !res.AlreadyEnabled && r.doc().Keys.Active() == nil {
				t.Fatalf("second run: %+v", res)
			}
			r.bootAll(ctx, 1, 0)
			r.checkData()
		})
	}
}

// countPoints runs an operation to the end, recording its hook points.
func countPoints(t *testing.T, run func(hook func(string) error) error) []string {
	t.Helper()
	var points []string
	if err := run(func(p string) error { points = append(points, p); return nil }); err != nil {
		t.Fatalf("uninterrupted run: %v", err)
	}
	return points
}

// crashAt returns a hook that, at its k-th call, powers every drive off
// and on (sessions drop, ranges lock) and stops the operation.
func crashAt(k int, r *rig) func(string) error {
	n := 0
	return func(string) error {
		n++
		if n-1 != k {
			return nil
		}
		for _, s := range r.sims {
			_ = s.PowerCycle()
		}
		return errInjected
	}
}
