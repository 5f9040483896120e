package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

// EnableOptions adjusts Enable.
type EnableOptions struct {
	// Check is the key-server check ("sedctl kms check"); a new enable
	// refuses to start unless it returns nil. It is required for a new
	// enable and not run when resuming one.
	Check func(ctx context.Context) error
}

// DriveResult reports what an operation did to one drive.
type DriveResult struct {
	Drive string `json:"drive"`
	// Device is the drive's name (its device path).
	Device string `json:"device"`
	// Steps lists the changes made to the drive by this run.
	Steps []string `json:"steps,omitempty"`
	// Generation is the key generation the drive verified with.
	Generation int `json:"generation"`
	// Skipped says the journal already recorded the drive as changed.
	Skipped bool `json:"skipped,omitempty"`
	// Warning reports something to look at (e.g. a verifier readable
	// only by Admin1).
	Warning string `json:"warning,omitempty"`
}

// EnableResult reports what Enable did.
type EnableResult struct {
	Array      string `json:"array"`
	Generation int    `json:"generation"`
	// Resumed: an interrupted enable was completed.
	Resumed bool `json:"resumed,omitempty"`
	// AlreadyEnabled: nothing to do.
	AlreadyEnabled bool          `json:"already_enabled,omitempty"`
	Drives         []DriveResult `json:"drives,omitempty"`
	KMS            Stats         `json:"kms"`
	Elapsed        time.Duration `json:"elapsed_ns"`
}

// Enable turns on encryption in external key-management mode: it creates
// one random key per drive, registers the keys on every configured key
// server (and proves the array's identity can fetch them), then provisions
// every drive (take ownership, activate locking, set the credentials
// derived from its key, write the key verifier, lock on power cycle) and
// verifies it, and finally marks the generation active. Every step is
// journaled; running Enable again after an interruption completes it.
// Enabling cannot be undone without destroying the drives' data.
func (a *Array) Enable(ctx context.Context, opts EnableOptions) (*EnableResult, error) {
	t0 := time.Now()
	a.begin(OpEnable)
	res := &EnableResult{Array: a.Doc.Array.Serial}
	defer func() { res.KMS, res.Elapsed = a.kmsStats, time.Since(t0) }()
	if err := a.checkJournal(OpEnable); err != nil {
		return res, err
	}
	ds, err := a.drives()
	if err != nil {
		return res, err
	}
	j := a.Doc.Journal
	if j == nil {
		if act := a.Doc.Keys.Active(); act != nil {
			res.AlreadyEnabled, res.Generation = true, act.Number
			return res, nil
		}
		if err := a.startEnable(ctx, ds, opts); err != nil {
			return res, err
		}
		j = a.Doc.Journal
	} else {
		res.Resumed = true
		a.progress(j.Step, "", "", "resuming the enable interrupted at step %s", j.Step)
	}
	g := a.Doc.Keys.Generation(j.To)
	if g == nil {
		return res, fmt.Errorf("journal: generation %d is not in the key inventory; the document was edited by hand", j.To)
	}
	res.Generation = g.Number
	if err := ds.requireDrives(g); err != nil {
		return res, err
	}

	var ks keySet
	if j.Step == StepRegister {
		a.progress(StepRegister, "", "", "registering %d keys of generation %d on %d key server(s)", len(g.Drives), g.Number, len(a.Doc.KMS.Servers))
		ks, err = a.ensureKeys(ctx, g, nil, true)
		if err != nil {
			return res, err
		}
		defer ks.zero()
		if err := a.update("keys registered", func(d *config.Document) {
			d.Journal.Step = StepDrives
			d.Mode = config.ModeExternal // from here a drive may lock at power cycle
		}); err != nil {
			return res, err
		}
	} else {
		if ks, err = a.fetchAdmin(ctx, g); err != nil {
			return res, err
		}
		defer ks.zero()
	}

	results, err := a.forDrives(ctx, g, ds, nil, func(ctx context.Context, serial string, dr *DriveResult) error {
		return a.enableDrive(ctx, ds.bySerial[serial], serial, g, ks[nameOf(g, serial)], dr)
	})
	res.Drives = results
	if err != nil {
		return res, err
	}
	if err := a.update("enable done", func(d *config.Document) {
		d.Keys.Generation(g.Number).State = config.GenActive
		d.Mode = config.ModeExternal
		d.Journal = nil
	}); err != nil {
		return res, err
	}
	a.progress("", "", "", "encryption enabled: %d drive(s) on key generation %d", len(g.Drives), g.Number)
	return res, nil
}

func nameOf(g *config.Generation, drive string) string {
	dk, _ := g.Key(drive)
	return dk.Name
}

// startEnable checks that enabling may start, runs the key-server check
// and writes the journal and the pending generation.
func (a *Array) startEnable(ctx context.Context, ds *driveSet, opts EnableOptions) error {
	if a.Doc.KMS == nil || len(a.Doc.KMS.Servers) == 0 {
		return errors.New("no key servers configured: add them to the boot medium's kms section first (sedctl medium export/import)")
	}
	if len(ds.serials) == 0 {
		return errors.New("no drives to enable")
	}
	if opts.Check == nil {
		return errors.New("the key-server check was not run: enabling requires 'kms check' to pass")
	}
	for _, s := range ds.serials {
		if err := a.enableReady(ctx, ds.bySerial[s], s); err != nil {
			return err
		}
	}
	a.progress("check", "", "", "checking the key servers")
	if err := opts.Check(ctx); err != nil {
		return fmt.Errorf("key-server check failed; nothing was changed: %w", err)
	}
	next := 1
	for _, g := range a.Doc.Keys.Generations {
		next = max(next, g.Number+1)
	}
	g, err := a.newGeneration(next, ds.serials)
	if err != nil {
		return err
	}
	return a.update("enable journaled", func(d *config.Document) {
		d.Keys.Generations = append(d.Keys.Generations, g)
		d.Journal = &config.Journal{Op: OpEnable, Started: a.now(), To: g.Number, Step: StepRegister}
	})
}

// enableReady refuses a drive that cannot be enabled, or that some other
// software (or another array) already owns.
func (a *Array) enableReady(ctx context.Context, d *sed.Drive, serial string) error {
	sum, err := d.Discover(ctx)
	if err != nil {
		return fmt.Errorf("drive %s (%s): %w", serial, d.Name(), err)
	}
	if !sum.Opal() {
		return fmt.Errorf("drive %s (%s): %w (SSC %q)", serial, d.Name(), sed.ErrNotOpal, sum.SSC)
	}
	if !sum.LockingEnabled {
		// Is SID still MSID? Block SID or a verifier answer for free;
		// otherwise one SID try is spent here, on a drive that would
		// otherwise get two presentations from Enable.
		st, err := d.ProbeSID(ctx, true)
		if err != nil {
			return fmt.Errorf("drive %s (%s): %w", serial, d.Name(), err)
		}
		if st == sed.SIDIsMSID {
			return nil
		}
	}
	v, err := d.ReadVerifier(ctx, nil)
	switch {
	case err == nil && v.ArraySerial == a.Doc.Array.Serial:
		return fmt.Errorf("drive %s (%s) already carries this array's key verifier (generation %v) but the boot medium records no enable in progress: the document is not this array's current one", serial, d.Name(), verifierGens(v))
	case err == nil:
		return fmt.Errorf("drive %s (%s) belongs to array %q", serial, d.Name(), v.ArraySerial)
	}
	return fmt.Errorf("drive %s (%s) is already owned by other software (locking enabled=%v, SID is not the manufactured MSID): revert it with its PSID first", serial, d.Name(), sum.LockingEnabled)
}

func verifierGens(v *sed.Verifier) []uint64 {
	var out []uint64
	for _, e := range v.Entries {
		if e.Role == sed.RoleAdmin1 {
			out = append(out, e.Generation)
		}
	}
	return out
}

// forDrives runs f on every drive of g that the journal does not record
// as changed, marking each changing before and changed after.
// Only the drives in only are changed when it is not nil.
func (a *Array) forDrives(ctx context.Context, g *config.Generation, ds *driveSet, only []string, f func(ctx context.Context, serial string, dr *DriveResult) error) ([]DriveResult, error) {
	var todo []string
	results := make([]DriveResult, len(g.Drives))
	idx := map[string]int{}
	for i, dk := range g.Drives {
		idx[dk.Drive] = i
		results[i] = DriveResult{Drive: dk.Drive, Device: ds.bySerial[dk.Drive].Name()}
		if a.Doc.Journal.Drives[dk.Drive] == config.DriveChanged {
			results[i].Skipped, results[i].Generation = true, g.Number
			continue
		}
		if only != nil && !slices.Contains(only, dk.Drive) {
			continue
		}
		todo = append(todo, dk.Drive)
	}
	var mu sync.Mutex
	err := runDrives(ctx, a.concurrency(), todo, func(ctx context.Context, serial string) error {
		var dr DriveResult
		err := a.changeDrive(ctx, serial, func(ctx context.Context) error { return f(ctx, serial, &dr) })
		mu.Lock()
		r := &results[idx[serial]]
		r.Steps, r.Generation, r.Warning = dr.Steps, dr.Generation, dr.Warning
		mu.Unlock()
		return err
	})
	return results, err
}

// changeDrive journals a drive as changing, runs change, and journals it
// as changed.
func (a *Array) changeDrive(ctx context.Context, serial string, change func(ctx context.Context) error) error {
	if err := a.update("drive "+serial+" changing", func(d *config.Document) {
		if d.Journal.Drives == nil {
			d.Journal.Drives = map[string]string{}
		}
		d.Journal.Drives[serial] = config.DriveChanging
	}); err != nil {
		return err
	}
	if err := change(ctx); err != nil {
		return err
	}
	return a.update("drive "+serial+" changed", func(d *config.Document) {
		d.Journal.Drives[serial] = config.DriveChanged
	})
}

// stepHook returns a sed Progress function that reports each step and
// calls the Hook, cancelling the drive's context when the Hook stops the
// operation, and a function returning the Hook's error.
func (a *Array) stepHook(ctx context.Context, step, serial string, dr *DriveResult) (context.Context, func(sed.Step), func() error, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var hookErr error
	progress := func(s sed.Step) {
		dr.Steps = append(dr.Steps, string(s))
		a.progress(step, serial, "", "%s", s)
		if err := a.hook("drive " + serial + ": " + string(s)); err != nil {
			mu.Lock()
			if hookErr == nil {
				hookErr = err
			}
			mu.Unlock()
			cancel()
		}
	}
	get := func() error {
		mu.Lock()
		defer mu.Unlock()
		return hookErr
	}
	return ctx, progress, get, cancel
}

// enableDrive provisions one drive with its key and verifies it.
func (a *Array) enableDrive(ctx context.Context, d *sed.Drive, serial string, g *config.Generation, key *secret.Secret, dr *DriveResult) error {
	if key == nil {
		return fmt.Errorf("drive %s: no key in generation %d", serial, g.Number)
	}
	p, err := derive(key, serial)
	if err != nil {
		return err
	}
	defer p.zero()
	sctx, progress, hookErr, cancel := a.stepHook(ctx, StepDrives, serial, dr)
	defer cancel()
	er, err := d.Enable(sctx, sed.EnableRequest{
		SID: p.sid.Bytes(), Admin1: p.admin1.Bytes(),
		ArraySerial: a.Doc.Array.Serial, Generation: uint64(g.Number),
		Progress: progress,
	})
	if herr := hookErr(); herr != nil {
		return herr
	}
	if err != nil {
		return fmt.Errorf("enable drive %s: %w", serial, err)
	}
	if !er.DataStoreShared {
		dr.Warning = "the drive keeps its key verifier readable by Admin1 only: the agent cannot check keys before presenting them"
	}
	if err := a.verifyDrive(ctx, d, serial, g.Number, p); err != nil {
		return err
	}
	st, err := d.GlobalRange(ctx, p.admin1.Bytes())
	if err != nil {
		return fmt.Errorf("verify drive %s: read global range: %w", serial, err)
	}
	if !st.LockOnPowerCycle || !st.ReadLockEnabled || !st.WriteLockEnabled {
		return fmt.Errorf("verify drive %s: the global range does not lock on power cycle (%+v)", serial, st)
	}
	dr.Generation = g.Number
	a.progress(StepDrives, serial, "", "enabled and verified on generation %d", g.Number)
	return nil
}

// verifyDrive checks that the drive's key verifier records exactly
// generation gen for both credentials, with no change pending. It reads
// the verifier once (as Anybody, else as Admin1) and checks both PINs
// against it.
func (a *Array) verifyDrive(ctx context.Context, d *sed.Drive, serial string, gen int, p pins) error {
	v, err := d.ReadVerifier(ctx, nil)
	if err != nil {
		// Not readable by Anybody: read it as Admin1.
		if v, err = d.ReadVerifier(ctx, p.admin1.Bytes()); err != nil {
			return fmt.Errorf("verify drive %s: read key verifier: %w", serial, err)
		}
	}
	if v.DriveSerial != serial || v.ArraySerial != a.Doc.Array.Serial {
		return fmt.Errorf("verify drive %s: the key verifier belongs to drive %q of array %q", serial, v.DriveSerial, v.ArraySerial)
	}
	if v.Pending {
		return fmt.Errorf("verify drive %s: the key verifier still records a change in progress", serial)
	}
	for _, c := range []struct {
		role sed.Role
		pin  []byte
	}{{sed.RoleAdmin1, p.admin1.Bytes()}, {sed.RoleSID, p.sid.Bytes()}} {
		g, ok := v.Match(c.role, c.pin)
		if !ok {
			return fmt.Errorf("verify drive %s: %s: %w", serial, c.role, sed.ErrVerifierMismatch)
		}
		if g != uint64(gen) {
			return fmt.Errorf("verify drive %s: the %s key verifier records generation %d, want %d", serial, c.role, g, gen)
		}
	}
	return nil
}
