package unlock

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/opalsim"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

const testArray = "ARRAY-U1"

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// world is one simulated drive and the keys of the generations it has
// seen; keys are kept as raw bytes so every case can make fresh secrets.
type world struct {
	t      *testing.T
	sim    *opalsim.Drive
	serial string
	keys   map[int][]byte
}

func newWorld(t *testing.T, serial string) *world {
	t.Helper()
	sim, err := opalsim.NewMemory(opalsim.Config{Serial: serial, Model: "unlock test drive", Firmware: "T1",
		BlockSize: 512, Blocks: 2048, TryLimit: 5, MBRSize: 1 << 20, DataStoreSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return &world{t: t, sim: sim, serial: serial, keys: map[int][]byte{}}
}

// key returns generation g's key (made on first use).
func (w *world) key(g int) *secret.Secret {
	w.t.Helper()
	if w.keys[g] == nil {
		s, err := secret.Random(keys.KeySize)
		if err != nil {
			w.t.Fatal(err)
		}
		w.keys[g] = append([]byte(nil), s.Bytes()...)
		s.Zero()
	}
	s, err := secret.From(append([]byte(nil), w.keys[g]...))
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

// pin derives generation g's PIN for role.
func (w *world) pin(g int, role keys.Role) *secret.Secret {
	w.t.Helper()
	k := w.key(g)
	defer k.Zero()
	p, err := keys.PIN(k, role, w.serial)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(p.Zero)
	return p
}

// enable provisions the drive on generation 1, with its key verifier.
func (w *world) enable(ctx context.Context) {
	w.t.Helper()
	d := sed.New(w.sim, "setup")
	if _, err := d.Enable(ctx, sed.EnableRequest{SID: w.pin(1, keys.RoleSID).Bytes(), Admin1: w.pin(1, keys.RoleAdmin1).Bytes(),
		ArraySerial: testArray, Generation: 1}); err != nil {
		w.t.Fatal(err)
	}
}

// enableBare provisions the drive on generation 1 without a key verifier
// (as other software would).
func (w *world) enableBare(ctx context.Context) {
	w.t.Helper()
	d := sed.New(w.sim, "setup")
	sid, admin1 := w.pin(1, keys.RoleSID).Bytes(), w.pin(1, keys.RoleAdmin1).Bytes()
	if _, err := d.TakeOwnership(ctx, sid); err != nil {
		w.t.Fatal(err)
	}
	if _, err := d.ActivateLocking(ctx, sid); err != nil {
		w.t.Fatal(err)
	}
	if _, err := d.SetAdmin1(ctx, sid, admin1); err != nil {
		w.t.Fatal(err)
	}
	if err := d.ConfigureGlobalRange(ctx, admin1); err != nil {
		w.t.Fatal(err)
	}
}

// rotateCut rotates from generation 1 to 2 and cuts the power right
// after step: the verifier records the change as pending.
func (w *world) rotateCut(ctx context.Context, step sed.Step) {
	w.t.Helper()
	d := sed.New(w.sim, "setup")
	cut := false
	_, err := d.Rotate(ctx, sed.RotateRequest{
		Admin1Old: w.pin(1, keys.RoleAdmin1).Bytes(), Admin1New: w.pin(2, keys.RoleAdmin1).Bytes(),
		SIDOld: w.pin(1, keys.RoleSID).Bytes(), SIDNew: w.pin(2, keys.RoleSID).Bytes(), Generation: 2,
		Progress: func(s sed.Step) {
			if s == step && !cut {
				cut = true
				if err := w.sim.PowerCycle(); err != nil {
					w.t.Error(err)
				}
			}
		},
	})
	if !cut || err == nil {
		w.t.Fatalf("rotation was not cut at %q: %v", step, err)
	}
}

// useVerifier makes d check keys against an off-drive verifier that
// admits generations gens (their keys need not be the drive's).
func (w *world) useVerifier(d *sed.Drive, pending bool, gens ...int) {
	v := &sed.Verifier{ArraySerial: testArray, DriveSerial: w.serial, Pending: pending}
	for _, g := range gens {
		v.Add(sed.RoleAdmin1, uint64(g), w.pin(g, keys.RoleAdmin1).Bytes())
	}
	d.UseVerifier(v)
}

func (w *world) locked() bool {
	st := w.sim.Status()
	return len(st.Ranges) > 0 && st.Ranges[0].ReadLocked
}

func TestDrive(t *testing.T) {
	const (
		g1, g2 = 1, 2 // on the drive (or in its verifier)
		x, y   = 7, 8 // never on the drive
	)
	for _, tc := range []struct {
		name string
		// setup brings the drive to its state at power-on; prepare
		// adjusts the Drive value the boot uses.
		setup   func(w *world, ctx context.Context)
		prepare func(w *world, d *sed.Drive)
		cands   []int // generations, in order
		label   map[int]int
		opts    []Option

		unlocked      bool
		gen           int
		presentations int
		wrong         int
		skipped       []int
		retried       bool
		err           error
	}{
		{name: "current key", setup: (*world).enable, cands: []int{g1},
			unlocked: true, gen: g1, presentations: 1},
		{name: "verifier mismatch costs nothing", setup: (*world).enable, cands: []int{x, g2, g1},
			unlocked: true, gen: g1, presentations: 1, skipped: []int{x, g2}},
		{name: "no key matches the verifier", setup: (*world).enable, cands: []int{x, y},
			skipped: []int{x, y}, err: sed.ErrVerifierMismatch},
		{name: "no candidate", setup: (*world).enable, err: ErrNoCandidate},
		{name: "cut after the pending verifier: new generation refused, old one presented",
			setup: func(w *world, ctx context.Context) { w.enable(ctx); w.rotateCut(ctx, sed.StepVerifierPending) },
			cands: []int{g2, g1}, unlocked: true, gen: g1, presentations: 2, wrong: 1, retried: true},
		{name: "cut after the Admin1 change: old generation refused, new one presented",
			setup: func(w *world, ctx context.Context) { w.enable(ctx); w.rotateCut(ctx, sed.StepAdmin1) },
			cands: []int{g1, g2}, unlocked: true, gen: g2, presentations: 2, wrong: 1, retried: true},
		{name: "pending: the retry happens once",
			setup:   (*world).enable,
			prepare: func(w *world, d *sed.Drive) { w.useVerifier(d, true, x, y, g1) },
			cands:   []int{x, y, g1}, presentations: 2, wrong: 2, retried: true, err: sed.ErrWrongCredential},
		{name: "pending: nothing left to retry",
			setup:   (*world).enable,
			prepare: func(w *world, d *sed.Drive) { w.useVerifier(d, true, x, g1) },
			cands:   []int{x}, presentations: 1, wrong: 1, err: sed.ErrWrongCredential},
		{name: "stale verifier: no second presentation",
			setup:   (*world).enable,
			prepare: func(w *world, d *sed.Drive) { w.useVerifier(d, false, x, g1) },
			cands:   []int{x, g1}, presentations: 1, wrong: 1, err: sed.ErrWrongCredential},
		{name: "no verifier: one presentation",
			setup: (*world).enableBare, cands: []int{x, g1}, presentations: 1, wrong: 1, err: sed.ErrWrongCredential},
		{name: "no verifier, right key first",
			setup: (*world).enableBare, cands: []int{g1, x}, unlocked: true, gen: g1, presentations: 1},
		{name: "no verifier, verifier required: nothing presented",
			setup: (*world).enableBare, cands: []int{g1}, opts: []Option{RequireVerifier()}, err: sed.ErrNoVerifier},
		{name: "key labelled with another generation",
			setup: (*world).enable, cands: []int{g1}, label: map[int]int{g1: 5}, opts: []Option{ExactGeneration()},
			err: sed.ErrGenerationMismatch},
		{name: "key labelled with another generation, not checked",
			setup: (*world).enable, cands: []int{g1}, label: map[int]int{g1: 5},
			unlocked: true, gen: 5, presentations: 1},
		{name: "exact generation", setup: (*world).enable, cands: []int{x, g1}, opts: []Option{ExactGeneration(), KeepPIN()},
			unlocked: true, gen: g1, presentations: 1, skipped: []int{x}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			w := newWorld(t, "U0001")
			tc.setup(w, ctx)
			if err := w.sim.PowerCycle(); err != nil {
				t.Fatal(err)
			}
			if !w.locked() {
				t.Fatal("the drive is not locked at power-on")
			}
			d := sed.New(w.sim, "boot")
			if tc.prepare != nil {
				tc.prepare(w, d)
			}
			var cands []Candidate
			for _, g := range tc.cands {
				label := g
				if l, ok := tc.label[g]; ok {
					label = l
				}
				cands = append(cands, Candidate{Generation: label, Source: "test", Server: fmt.Sprint("s", g), Key: w.key(g)})
			}
			var retries [][2]int
			opts := append(tc.opts, OnRetry(func(refused, next int) { retries = append(retries, [2]int{refused, next}) }))
			res := Drive(ctx, d, w.serial, cands, opts...)
			defer res.PIN.Zero()

			if res.Unlocked != tc.unlocked || res.Unlocked == w.locked() {
				t.Fatalf("unlocked %v (drive locked %v), want %v: %v", res.Unlocked, w.locked(), tc.unlocked, res.Err)
			}
			if tc.unlocked && (res.Err != nil || res.Generation != tc.gen || res.Source != "test") {
				t.Fatalf("result %+v, want generation %d", res, tc.gen)
			}
			if !tc.unlocked && (tc.err == nil || !errors.Is(res.Err, tc.err)) {
				t.Fatalf("error %v, want %v", res.Err, tc.err)
			}
			if res.Presentations != tc.presentations || res.Wrong != tc.wrong || res.Retried != tc.retried || len(retries) != boolInt(tc.retried) {
				t.Fatalf("presentations %d, wrong %d, retried %v (%v); want %d, %d, %v",
					res.Presentations, res.Wrong, res.Retried, retries, tc.presentations, tc.wrong, tc.retried)
			}
			if fmt.Sprint(res.Skipped) != fmt.Sprint(tc.skipped) {
				t.Fatalf("skipped %v, want %v", res.Skipped, tc.skipped)
			}
			// Refusals left in the guard: those after its last reset.
			if f := d.Failures(sed.Admin1); f != tc.wrong-boolInt(tc.retried) {
				t.Fatalf("the drive's guard counts %d failures, want %d", f, tc.wrong-boolInt(tc.retried))
			}
			for i, c := range cands {
				if c.Key.Len() != 0 {
					t.Errorf("candidate %d's key was not zeroed", i)
				}
			}
			keep := false
			for _, o := range tc.opts {
				var c config
				o(&c)
				keep = keep || c.keepPIN
			}
			switch {
			case keep && tc.unlocked:
				if !res.PIN.Equal(w.pin(tc.gen, keys.RoleAdmin1)) {
					t.Fatal("the kept PIN is not the accepted one")
				}
			case res.PIN != nil:
				t.Fatal("a PIN was kept without KeepPIN")
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestKeptPINLocksAgain: the PIN Drive keeps locks the drive again (the
// agent's path when the boot fails after unlocking).
func TestKeptPINLocksAgain(t *testing.T) {
	ctx := testCtx(t)
	w := newWorld(t, "U0002")
	w.enable(ctx)
	if err := w.sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	d := sed.New(w.sim, "boot")
	res := Drive(ctx, d, w.serial, []Candidate{{Generation: 1, Key: w.key(1)}}, KeepPIN())
	if !res.Unlocked || res.PIN == nil || w.locked() {
		t.Fatalf("unlock: %+v", res)
	}
	if !res.Tries.Known || res.Tries.Left() <= 0 {
		t.Fatalf("tries not reported: %+v", res.Tries)
	}
	if _, err := d.Lock(ctx, res.PIN.Bytes()); err != nil {
		t.Fatal(err)
	}
	res.PIN.Zero()
	if !w.locked() {
		t.Fatal("the drive is not locked again")
	}
}
