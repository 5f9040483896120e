package sed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/opalsim"
)

// keys is one generation of a drive's credentials.
type keys struct{ sid, admin1 []byte }

func newKeys(t testing.TB) keys { return keys{key(t), key(t)} }

func enableReq(k keys, gen uint64) EnableRequest {
	return EnableRequest{SID: k.sid, Admin1: k.admin1, ArraySerial: "ARRAY-0001", Generation: gen}
}

var allEnableSteps = []Step{StepOwnership, StepActivate, StepVerifierPending, StepShareDataStore, StepAdmin1, StepConfigure, StepVerifier}

func mustEnable(t *testing.T, ctx context.Context, d *Drive, k keys) EnableResult {
	t.Helper()
	res, err := d.Enable(ctx, enableReq(k, 1))
	if err != nil {
		t.Fatalf("Enable: %v", err)
	}
	return res
}

func writePattern(t *testing.T, sim *opalsim.Drive, lba uint64, tag string) []byte {
	t.Helper()
	data := bytes.Repeat([]byte(tag), 512/len(tag)+1)[:512]
	if err := sim.WriteBlocks(lba, data); err != nil {
		t.Fatalf("write LBA %d: %v", lba, err)
	}
	return data
}

func TestEnableLifecycle(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "ENA0001", 5)
	data := writePattern(t, sim, 100, "known plaintext ")
	k := newKeys(t)
	d := New(sim, "sim0")

	var journal []Step
	req := enableReq(k, 1)
	req.Progress = func(s Step) { journal = append(journal, s) }
	res, err := d.Enable(ctx, req)
	if err != nil {
		t.Fatalf("Enable: %v", err)
	}
	if !slices.Equal(res.Steps, allEnableSteps) || !slices.Equal(journal, allEnableSteps) {
		t.Fatalf("steps %v, journal %v; want %v", res.Steps, journal, allEnableSteps)
	}
	if !res.DataStoreShared || res.Verifier == nil || res.Verifier.Pending {
		t.Fatalf("result %+v", res)
	}
	if res.Admin1Tries.TryLimit != 5 || res.SIDTries.TryLimit != 5 {
		t.Fatalf("tries %v / %v", res.Admin1Tries, res.SIDTries)
	}

	// Idempotent: a second run changes nothing.
	again, err := New(sim, "sim0-again").Enable(ctx, enableReq(k, 1))
	if err != nil || len(again.Steps) != 0 {
		t.Fatalf("second Enable: steps %v, %v", again.Steps, err)
	}

	// The verifier is public and matches only the right keys.
	v, err := d.ReadVerifier(ctx, nil)
	if err != nil {
		t.Fatalf("ReadVerifier as Anybody: %v", err)
	}
	if v.DriveSerial != "ENA0001" || v.ArraySerial != "ARRAY-0001" || v.Pending {
		t.Fatalf("verifier %+v", v)
	}
	if g, ok := v.Match(RoleAdmin1, k.admin1); !ok || g != 1 {
		t.Fatal("verifier does not match the Admin1 key")
	}
	if _, ok := v.Match(RoleAdmin1, k.sid); ok {
		t.Fatal("verifier matches the SID key as Admin1")
	}
	if kc, err := d.CheckKey(ctx, Admin1, k.admin1); err != nil || kc.Source != VerifierOnDrive || kc.Generation != 1 {
		t.Fatalf("CheckKey = %+v, %v", kc, err)
	}

	// Data written before enabling is still readable; after a power cycle
	// it is not, until Unlock.
	if got, err := readBlock(sim, 100); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read before power cycle: %v", err)
	}
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	sum, err := d.Discover(ctx)
	if err != nil || !sum.LockingEnabled || !sum.Locked {
		t.Fatalf("after power cycle: %+v, %v", sum, err)
	}
	if _, err := readBlock(sim, 100); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("read while locked: %v", err)
	}
	if err := sim.WriteBlocks(100, make([]byte, 512)); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("write while locked: %v", err)
	}
	boot := New(sim, "sim0-boot")
	ur, err := boot.Unlock(ctx, k.admin1, RequireVerifier())
	if err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if ur.Check.Source != VerifierOnDrive || ur.Check.Generation != 1 || ur.Tries.Tries != 0 || ur.Tries.TryLimit != 5 {
		t.Fatalf("unlock result %+v", ur)
	}
	if got, err := readBlock(sim, 100); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after unlock: %v", err)
	}
	// SID works with the SID key and its tries are readable.
	ts, err := d.Tries(ctx, SID, k.sid)
	if err != nil || len(ts) != 1 || ts[0].Tries != 0 || ts[0].TryLimit != 5 {
		t.Fatalf("SID tries %v, %v", ts, err)
	}
}

// TestVerifierRefusalSpendsNoTries: wrong keys are refused before they
// reach the drive. With TryLimit 2 and one real wrong presentation made
// afterwards, any presentation among the refused ones would have locked
// Admin1 out.
func TestVerifierRefusalSpendsNoTries(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "VER0001", 2)
	k := newKeys(t)
	mustEnable(t, ctx, New(sim, "sim"), k)
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		d := New(sim, fmt.Sprintf("boot%d", i))
		_, err := d.Unlock(ctx, key(t))
		if !errors.Is(err, ErrVerifierMismatch) {
			t.Fatalf("attempt %d: %v, want ErrVerifierMismatch", i, err)
		}
		if want := "boot" + fmt.Sprint(i); !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not name the drive", err)
		}
		if n := d.Failures(Admin1); n != 0 {
			t.Fatalf("refusal counted as a failed presentation: %d", n)
		}
	}
	// One real wrong presentation: a verifier without an Admin1 entry
	// lets it through.
	d := New(sim, "no-verifier")
	only := &Verifier{DriveSerial: "VER0001"}
	only.Add(RoleSID, 1, k.sid)
	d.UseVerifier(only)
	if _, err := d.Unlock(ctx, key(t)); !errors.Is(err, ErrWrongCredential) {
		t.Fatalf("unverified wrong key: %v", err)
	}
	res, err := New(sim, "boot").Unlock(ctx, k.admin1)
	if err != nil {
		t.Fatalf("right key after 5 refusals and 1 failure (TryLimit 2): %v", err)
	}
	if res.Tries.Tries != 0 {
		t.Fatalf("tries after success %v", res.Tries)
	}
}

func TestEnableResumesAfterEveryStep(t *testing.T) {
	for stop := 1; stop <= len(allEnableSteps); stop++ {
		t.Run(fmt.Sprintf("stop after %d (%s)", stop, allEnableSteps[stop-1]), func(t *testing.T) {
			ctx := testCtx(t)
			sim := newSim(t, "RES0001", 5)
			k := newKeys(t)
			cctx, cancel := context.WithCancel(ctx)
			n := 0
			req := enableReq(k, 1)
			req.Progress = func(Step) {
				if n++; n == stop {
					cancel() // the process dies here
				}
			}
			_, err := New(sim, "first").Enable(cctx, req)
			if stop < len(allEnableSteps) && !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted Enable: %v", err)
			}
			cancel()
			res, err := New(sim, "second").Enable(ctx, enableReq(k, 1))
			if err != nil {
				t.Fatalf("resumed Enable: %v", err)
			}
			done := append([]Step(nil), allEnableSteps[:stop]...)
			for _, s := range res.Steps {
				if slices.Contains(done, s) && s != StepVerifierPending {
					t.Errorf("resumed Enable repeated step %q (steps %v)", s, res.Steps)
				}
			}
			if !res.DataStoreShared {
				t.Error("DataStore not shared")
			}
			checkEnabled(t, ctx, sim, k)
		})
	}
}

// checkEnabled power cycles sim and checks the enabled drive end to end.
func checkEnabled(t *testing.T, ctx context.Context, sim *opalsim.Drive, k keys) {
	t.Helper()
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	if _, err := readBlock(sim, 0); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("not locked after power cycle: %v", err)
	}
	d := New(sim, "check")
	if _, err := d.Unlock(ctx, k.admin1, RequireVerifier()); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if _, err := readBlock(sim, 0); err != nil {
		t.Fatalf("read after unlock: %v", err)
	}
	if _, err := d.Tries(ctx, SID, k.sid); err != nil {
		t.Fatalf("SID key: %v", err)
	}
	v, err := d.ReadVerifier(ctx, nil)
	if err != nil || v.Pending {
		t.Fatalf("verifier %+v, %v", v, err)
	}
}

func TestEnableResumesFromRawStates(t *testing.T) {
	tests := []struct {
		name  string
		setup func(ctx context.Context, d *Drive, k keys) error
	}{
		{"owned, not activated", func(ctx context.Context, d *Drive, k keys) error {
			_, err := d.TakeOwnership(ctx, k.sid)
			return err
		}},
		{"activated", func(ctx context.Context, d *Drive, k keys) error {
			if _, err := d.TakeOwnership(ctx, k.sid); err != nil {
				return err
			}
			_, err := d.ActivateLocking(ctx, k.sid)
			return err
		}},
		{"admin1 set, no verifier", func(ctx context.Context, d *Drive, k keys) error {
			if _, err := d.TakeOwnership(ctx, k.sid); err != nil {
				return err
			}
			if _, err := d.ActivateLocking(ctx, k.sid); err != nil {
				return err
			}
			_, err := d.SetAdmin1(ctx, k.sid, k.admin1)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			sim := newSim(t, "RAWRES1", 5)
			k := newKeys(t)
			if err := tc.setup(ctx, New(sim, "setup"), k); err != nil {
				t.Fatal(err)
			}
			d := New(sim, "enable")
			if _, err := d.Enable(ctx, enableReq(k, 1)); err != nil {
				t.Fatalf("Enable: %v", err)
			}
			if n := d.Failures(SID) + d.Failures(Admin1); n > 1 {
				t.Errorf("%d failed presentations while resuming", n)
			}
			checkEnabled(t, ctx, sim, k)
		})
	}
}

func TestEnableRefusesForeignDrive(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "FOR0001", 5)
	mustEnable(t, ctx, New(sim, "owner"), newKeys(t))
	d := New(sim, "intruder")
	_, err := d.Enable(ctx, enableReq(newKeys(t), 1))
	if !errors.Is(err, ErrVerifierMismatch) {
		t.Fatalf("Enable with other keys: %v", err)
	}
	if d.Failures(SID)+d.Failures(Admin1) != 0 {
		t.Fatal("keys were presented")
	}
	other := enableReq(newKeys(t), 1)
	other.ArraySerial = "ARRAY-0002"
	if _, err := d.Enable(ctx, other); err == nil || !bytes.Contains([]byte(err.Error()), []byte("ARRAY-0001")) {
		t.Fatalf("Enable for another array: %v", err)
	}
}

func TestRotate(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "ROT0001", 5)
	data := writePattern(t, sim, 5, "rotate me ")
	k1, k2 := newKeys(t), newKeys(t)
	d := New(sim, "sim")
	mustEnable(t, ctx, d, k1)
	res, err := d.Rotate(ctx, RotateRequest{Admin1Old: k1.admin1, Admin1New: k2.admin1, SIDOld: k1.sid, SIDNew: k2.sid, Generation: 2})
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	want := []Step{StepVerifierPending, StepAdmin1, StepSID, StepVerifier}
	if !slices.Equal(res.Steps, want) {
		t.Fatalf("steps %v, want %v", res.Steps, want)
	}
	v, err := d.ReadVerifier(ctx, nil)
	if err != nil || v.Pending || len(v.Entries) != 2 || v.ArraySerial != "ARRAY-0001" {
		t.Fatalf("verifier after rotation %+v, %v", v, err)
	}
	if g, ok := v.Match(RoleAdmin1, k2.admin1); !ok || g != 2 {
		t.Fatal("new Admin1 key not in verifier")
	}
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	boot := New(sim, "boot")
	if _, err := boot.Unlock(ctx, k1.admin1); !errors.Is(err, ErrVerifierMismatch) {
		t.Fatalf("old key: %v", err)
	}
	ur, err := boot.Unlock(ctx, k2.admin1)
	if err != nil || ur.Check.Generation != 2 {
		t.Fatalf("new key: %+v, %v", ur, err)
	}
	if got, err := readBlock(sim, 5); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after rotation: %v", err)
	}
	if _, err := boot.Tries(ctx, SID, k2.sid); err != nil {
		t.Fatalf("new SID: %v", err)
	}
	if _, err := boot.Tries(ctx, SID, k1.sid); !errors.Is(err, ErrVerifierMismatch) {
		t.Fatalf("old SID: %v", err)
	}
	// Running it again finds it done.
	again, err := New(sim, "again").Rotate(ctx, RotateRequest{Admin1Old: k1.admin1, Admin1New: k2.admin1, SIDOld: k1.sid, SIDNew: k2.sid, Generation: 2})
	if err != nil || len(again.Steps) != 0 {
		t.Fatalf("repeated Rotate: %v, %v", again.Steps, err)
	}
}

func TestRotateResumesAfterEveryStep(t *testing.T) {
	steps := []Step{StepVerifierPending, StepAdmin1, StepSID, StepVerifier}
	for stop := 1; stop <= len(steps); stop++ {
		t.Run(string(steps[stop-1]), func(t *testing.T) {
			ctx := testCtx(t)
			sim := newSim(t, "ROTRES1", 5)
			k1, k2 := newKeys(t), newKeys(t)
			mustEnable(t, ctx, New(sim, "enable"), k1)
			req := RotateRequest{Admin1Old: k1.admin1, Admin1New: k2.admin1, SIDOld: k1.sid, SIDNew: k2.sid, Generation: 2}
			cctx, cancel := context.WithCancel(ctx)
			n := 0
			r := req
			r.Progress = func(Step) {
				if n++; n == stop {
					cancel()
				}
			}
			_, err := New(sim, "first").Rotate(cctx, r)
			cancel()
			if stop < len(steps) && !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted Rotate: %v", err)
			}
			// Boot in between: whichever generation the drive holds,
			// the verifier admits it.
			if err := sim.PowerCycle(); err != nil {
				t.Fatal(err)
			}
			boot := New(sim, "boot")
			_, e1 := boot.Unlock(ctx, k2.admin1)
			if e1 != nil {
				boot.ResetGuard()
				if _, e0 := boot.Unlock(ctx, k1.admin1); e0 != nil {
					t.Fatalf("neither generation unlocks: new %v; old %v", e1, e0)
				}
			}
			d := New(sim, "second")
			if _, err := d.Rotate(ctx, req); err != nil {
				t.Fatalf("resumed Rotate: %v", err)
			}
			checkEnabled(t, ctx, sim, k2)
		})
	}
}

func TestChangePIN(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "CHG0001", 5)
	d := New(sim, "sim")
	k := newKeys(t)
	rawProvision(t, ctx, d, k.sid, k.admin1)
	next := key(t)
	tries, err := d.ChangePIN(ctx, Admin1, k.admin1, next)
	if err != nil || tries.TryLimit != 5 {
		t.Fatalf("ChangePIN: %v, %v", tries, err)
	}
	if _, err := New(sim, "other").Unlock(ctx, next); err != nil {
		t.Fatalf("unlock with rotated PIN: %v", err)
	}
	if _, err := d.ChangePIN(ctx, SID, k.sid, key(t)); err != nil {
		t.Fatalf("ChangePIN SID: %v", err)
	}

	// With a key verifier on the drive, ChangePIN refuses (Rotate keeps
	// the verifier in step).
	sim2 := newSim(t, "CHG0002", 5)
	d2 := New(sim2, "sim2")
	mustEnable(t, ctx, d2, k)
	if _, err := d2.ChangePIN(ctx, Admin1, k.admin1, next); err == nil {
		t.Fatal("ChangePIN under a verifier succeeded")
	}
}

func TestDataStoreRoundTrip(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "DS00001", 5)
	d := New(sim, "sim")
	k := newKeys(t)
	rawProvision(t, ctx, d, k.sid, k.admin1)
	size, err := d.DataStoreSize(ctx)
	if err != nil || size != 64<<10 {
		t.Fatalf("DataStoreSize = %d, %v", size, err)
	}
	for _, n := range []int{0, 1, 2047, 2048, 2049, 5000, size} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(i*7 + n)
			}
			off := 0
			if n < size {
				off = 3 // unaligned start too
			}
			if err := d.WriteDataStore(ctx, k.admin1, off, p); err != nil {
				t.Fatalf("write %d bytes: %v", n, err)
			}
			got, err := d.ReadDataStore(ctx, k.admin1, off, n)
			if err != nil {
				t.Fatalf("read %d bytes: %v", n, err)
			}
			if !bytes.Equal(got, p) {
				t.Fatalf("round trip of %d bytes differs", n)
			}
		})
	}
	if err := d.WriteDataStore(ctx, k.admin1, 0, make([]byte, size+1)); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write of table size + 1: %v", err)
	}
	if _, err := d.ReadDataStore(ctx, k.admin1, 0, size+1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read of table size + 1: %v", err)
	}
	if _, err := d.ReadDataStore(ctx, k.admin1, size-10, 11); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}

	// Anybody may read only after ShareDataStore.
	if _, err := d.ReadDataStore(ctx, nil, 0, 16); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("read as Anybody before sharing: %v", err)
	}
	if err := d.WriteDataStore(ctx, nil, 0, []byte{1}); !errors.Is(err, ErrBadCredential) {
		t.Fatalf("write without a credential: %v", err)
	}
	shared, err := d.ShareDataStore(ctx, k.admin1)
	if err != nil || !shared {
		t.Fatalf("ShareDataStore = %v, %v", shared, err)
	}
	got, err := d.ReadDataStore(ctx, nil, 0, size)
	if err != nil || len(got) != size {
		t.Fatalf("read as Anybody after sharing: %v", err)
	}
}

func TestWrongCredentialCounted(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "CNT0001", 5)
	d := New(sim, "sim")
	k := newKeys(t)
	rawProvision(t, ctx, d, k.sid, k.admin1)

	// User1: a wrong presentation shows in its Tries, read by Admin1.
	userPIN := key(t)
	if err := d.SetUser(ctx, k.admin1, 1, userPIN); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Tries(ctx, User(1), key(t)); !errors.Is(err, ErrWrongCredential) {
		t.Fatalf("wrong User1 PIN: %v", err)
	}
	if d.Failures(User(1)) != 1 {
		t.Fatalf("failures %d", d.Failures(User(1)))
	}
	ts, err := d.Tries(ctx, Admin1, k.admin1, User(1), Admin1)
	if err != nil {
		t.Fatal(err)
	}
	if ts[0].Tries != 1 || ts[0].TryLimit != 5 || ts[1].Tries != 0 {
		t.Fatalf("tries %v", ts)
	}

	// PSID: its tries are readable without authentication.
	if err := d.RevertPSID(ctx, []byte("not the PSID")); !errors.Is(err, ErrWrongCredential) {
		t.Fatalf("wrong PSID: %v", err)
	}
	pt, err := d.PublicTries(ctx, PSID)
	if err != nil || pt.Tries != 1 {
		t.Fatalf("PSID tries %v, %v", pt, err)
	}
	if _, err := d.PublicTries(ctx, Admin1); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("Admin1 tries as Anybody: %v", err)
	}
}

func TestGuardOneFailurePerBoot(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "GRD0001", 2)
	d := New(sim, "sim")
	k := newKeys(t)
	rawProvision(t, ctx, New(sim, "setup"), k.sid, k.admin1)

	if _, err := d.Unlock(ctx, key(t)); !errors.Is(err, ErrWrongCredential) {
		t.Fatalf("first wrong key: %v", err)
	}
	// A second wrong key is refused without reaching the drive: with
	// TryLimit 2 it would otherwise lock Admin1 out.
	_, err := d.Unlock(ctx, key(t))
	var ge *GuardError
	if !errors.As(err, &ge) || !errors.Is(err, ErrGuard) || ge.Failures != 1 {
		t.Fatalf("second wrong key: %v", err)
	}
	if _, err := d.Unlock(ctx, k.admin1); !errors.Is(err, ErrGuard) {
		t.Fatalf("right key before reset: %v", err)
	}
	d.ResetGuard(Admin1)
	res, err := d.Unlock(ctx, k.admin1)
	if err != nil {
		t.Fatalf("right key after reset: %v", err)
	}
	if res.Tries.Tries != 0 || res.Tries.TryLimit != 2 {
		t.Fatalf("tries %v", res.Tries)
	}
}

func TestTriesLowRefusesNewCredential(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "LOW0001", 3)
	k := newKeys(t)
	rawProvision(t, ctx, New(sim, "setup"), k.sid, k.admin1)

	d := New(sim, "sim")
	if _, err := d.Unlock(ctx, k.admin1); err != nil { // reads tries 0/3
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		_, err := d.Unlock(ctx, key(t))
		if !errors.Is(err, ErrWrongCredential) {
			t.Fatalf("wrong key %d: %v", i, err)
		}
		if want := fmt.Sprintf("%d of 3 tries left", 2-i); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
		d.ResetGuard()
	}
	_, err := d.Unlock(ctx, key(t))
	var te *TriesError
	if !errors.As(err, &te) || te.Left != 1 || !errors.Is(err, ErrTriesLow) {
		t.Fatalf("third wrong key: %v", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte("sim")) || !bytes.Contains([]byte(err.Error()), []byte("1 of 3 tries left")) {
		t.Errorf("error %q does not name the drive and the tries left", err)
	}
	// The credential the drive last accepted is still allowed.
	res, err := d.Unlock(ctx, k.admin1)
	if err != nil || res.Tries.Tries != 0 {
		t.Fatalf("known-good key: %+v, %v", res, err)
	}
}

func TestLockoutAndPowerCycleRecovery(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "LCK0001", 3)
	k := newKeys(t)
	rawProvision(t, ctx, New(sim, "setup"), k.sid, k.admin1)
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	// Three boots, each with a wrong key and no verifier.
	for i := 0; i < 3; i++ {
		if _, err := New(sim, "boot").Unlock(ctx, key(t)); !errors.Is(err, ErrWrongCredential) {
			t.Fatalf("wrong key %d: %v", i, err)
		}
	}
	if _, err := New(sim, "boot").Unlock(ctx, k.admin1); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("right key at TryLimit: %v", err)
	}
	if _, err := readBlock(sim, 0); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("read while locked out: %v", err)
	}
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	res, err := New(sim, "boot").Unlock(ctx, k.admin1)
	if err != nil {
		t.Fatalf("after power cycle: %v", err)
	}
	if res.Tries.Tries != 0 || res.Tries.TryLimit != 3 {
		t.Fatalf("tries %v", res.Tries)
	}
	if _, err := readBlock(sim, 0); err != nil {
		t.Fatal(err)
	}
}

func TestPSIDRevert(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "PSID001", 5)
	data := writePattern(t, sim, 9, "secret data ")
	k := newKeys(t)
	d := New(sim, "sim")
	mustEnable(t, ctx, d, k)
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	if err := d.RevertPSID(ctx, sim.PSID()); err != nil {
		t.Fatalf("RevertPSID: %v", err)
	}
	sum, err := d.Discover(ctx)
	if err != nil || sum.LockingEnabled || sum.Locked {
		t.Fatalf("after revert: %+v, %v", sum, err)
	}
	got, err := readBlock(sim, 9)
	if err != nil {
		t.Fatalf("read after revert: %v", err)
	}
	if bytes.Equal(got, data) {
		t.Fatal("old data readable after PSID revert")
	}
	// The drive is factory-fresh: it can be enabled again.
	if _, err := New(sim, "again").Enable(ctx, enableReq(newKeys(t), 1)); err != nil {
		t.Fatalf("Enable after revert: %v", err)
	}
}

func TestSIDRevert(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "SIDR001", 5)
	data := writePattern(t, sim, 3, "sid revert ")
	k := newKeys(t)
	d := New(sim, "sim")
	mustEnable(t, ctx, d, k)
	if err := d.RevertSID(ctx, key(t)); !errors.Is(err, ErrVerifierMismatch) {
		t.Fatalf("revert with a wrong SID key: %v", err)
	}
	if err := d.RevertSID(ctx, k.sid); err != nil {
		t.Fatalf("RevertSID: %v", err)
	}
	if sum, _ := d.Discover(ctx); sum.LockingEnabled {
		t.Fatal("locking still enabled")
	}
	if got, err := readBlock(sim, 3); err != nil || bytes.Equal(got, data) {
		t.Fatalf("data after SID revert: readable=%v err=%v", bytes.Equal(got, data), err)
	}
	// SID is MSID again.
	if _, err := d.TakeOwnership(ctx, key(t)); err != nil {
		t.Fatalf("TakeOwnership after revert: %v", err)
	}
}

func TestOffDriveVerifier(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "OFF0001", 5)
	k := newKeys(t)
	rawProvision(t, ctx, New(sim, "setup"), k.sid, k.admin1)
	v := &Verifier{ArraySerial: "A", DriveSerial: "OFF0001"}
	v.Add(RoleAdmin1, 7, k.admin1)

	d := New(sim, "boot")
	if _, err := d.Unlock(ctx, key(t), WithVerifier(v)); !errors.Is(err, ErrVerifierMismatch) {
		t.Fatalf("wrong key: %v", err)
	}
	res, err := d.Unlock(ctx, k.admin1, WithVerifier(v))
	if err != nil || res.Check.Source != VerifierSupplied || res.Check.Generation != 7 {
		t.Fatalf("right key: %+v, %v", res, err)
	}
	if _, err := d.Unlock(ctx, k.admin1, RequireVerifier()); !errors.Is(err, ErrNoVerifier) {
		t.Fatalf("RequireVerifier without one: %v", err)
	}
	other := &Verifier{ArraySerial: "A", DriveSerial: "SOMEONE"}
	other.Add(RoleAdmin1, 1, k.admin1)
	if _, err := d.Unlock(ctx, k.admin1, WithVerifier(other)); !errors.Is(err, ErrVerifierMismatch) {
		t.Fatalf("verifier of another drive: %v", err)
	}
}

// TestParallelUnlock unlocks several drives at once (run with -race: the
// host session numbers must not come from go-tcg-storage's shared rand).
func TestParallelUnlock(t *testing.T) {
	ctx := testCtx(t)
	const n = 4
	sims := make([]*opalsim.Drive, n)
	ks := make([]keys, n)
	for i := range sims {
		sims[i] = newSim(t, fmt.Sprintf("PAR%04d", i), 5)
		ks[i] = newKeys(t)
		mustEnable(t, ctx, New(sims[i], "enable"), ks[i])
		if err := sims[i].PowerCycle(); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range sims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = New(sims[i], fmt.Sprintf("par%d", i)).Unlock(ctx, ks[i].admin1)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("drive %d: %v", i, err)
		}
	}
}

func TestCredentialValidation(t *testing.T) {
	ctx := testCtx(t)
	d := New(newSim(t, "VAL0001", 5), "sim")
	for _, c := range [][]byte{nil, {}, make([]byte, 33)} {
		if _, err := d.Unlock(ctx, c); !errors.Is(err, ErrBadCredential) {
			t.Errorf("Unlock(%d bytes): %v", len(c), err)
		}
		if _, err := d.TakeOwnership(ctx, c); !errors.Is(err, ErrBadCredential) {
			t.Errorf("TakeOwnership(%d bytes): %v", len(c), err)
		}
	}
	if _, err := d.Unlock(ctx, key(t)); err == nil {
		t.Error("Unlock on a drive without locking enabled succeeded")
	}
}

func TestProbeSIDAndIdentity(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "PRB0001", 5)
	d := New(sim, "sim")
	if st, err := d.ProbeSID(ctx, false); err != nil || st != SIDUnknown {
		t.Fatalf("free probe of a new drive: %v, %v", st, err)
	}
	if st, err := d.ProbeSID(ctx, true); err != nil || st != SIDIsMSID {
		t.Fatalf("probe of a new drive: %v, %v", st, err)
	}
	k := newKeys(t)
	if _, err := d.TakeOwnership(ctx, k.sid); err != nil {
		t.Fatal(err)
	}
	if st, err := d.ProbeSID(ctx, true); err != nil || st != SIDNotMSID || d.Failures(SID) != 1 {
		t.Fatalf("probe of an owned drive: %v, %v, failures %d", st, err, d.Failures(SID))
	}
	// With sedboot's verifier the answer is free.
	sim2 := newSim(t, "PRB0002", 5)
	d2 := New(sim2, "sim2")
	mustEnable(t, ctx, d2, k)
	if st, err := New(sim2, "fresh").ProbeSID(ctx, false); err != nil || st != SIDNotMSID {
		t.Fatalf("probe with verifier: %v, %v", st, err)
	}

	id, err := d.Identity(ctx)
	if err != nil || id.Serial != "PRB0001" || id.Model != "sedboot test drive" || id.Firmware != "T1" {
		t.Fatalf("identity %+v, %v", id, err)
	}
	if s, err := d.Serial(); err != nil || s != "PRB0001" {
		t.Fatalf("serial %q, %v", s, err)
	}
}

func TestPSIDTriesCheckedBeforePresenting(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "PSL0001", 2)
	mustEnable(t, ctx, New(sim, "enable"), newKeys(t))
	if err := New(sim, "a").RevertPSID(ctx, []byte("wrong PSID value")); !errors.Is(err, ErrWrongCredential) {
		t.Fatalf("wrong PSID: %v", err)
	}
	// One try left of 2: a fresh Drive (new boot) refuses to present even
	// the right PSID, since Anybody can see the count.
	err := New(sim, "b").RevertPSID(ctx, sim.PSID())
	var te *TriesError
	if !errors.As(err, &te) || te.Left != 1 {
		t.Fatalf("PSID with one try left: %v", err)
	}
	if err := sim.PowerCycle(); err != nil { // PSID tries are not persistent
		t.Fatal(err)
	}
	if err := New(sim, "c").RevertPSID(ctx, sim.PSID()); err != nil {
		t.Fatalf("PSID after power cycle: %v", err)
	}
}

// TestAbandonedSessionIsReset: a process that dies inside a session leaves
// it open on the TPer (the simulator allows one session); the next
// process's control session starts with a STACK_RESET, which ends it.
func TestAbandonedSessionIsReset(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "ABN0001", 5)
	k := newKeys(t)
	mustEnable(t, ctx, New(sim, "enable"), k)
	dead := New(sim, "dead")
	c, err := dead.connect(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := c.authSession(Admin1, k.admin1, true); err != nil {
		t.Fatal(err)
	}
	// No close: the process is gone.
	if _, err := New(sim, "next").Unlock(ctx, k.admin1); err != nil {
		t.Fatalf("unlock after an abandoned session: %v", err)
	}
}
