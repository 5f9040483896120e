package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

// RotateOptions adjusts Rotate.
type RotateOptions struct {
	// DestroyAfter is how long a retired generation's keys stay,
	// deactivated, on the key servers before a run destroys them
	// (counted from the creation of the generation that replaced it).
	// Zero destroys them as soon as the rotation that replaced them is
	// done. sedctl defaults to DefaultDestroyAfter.
	DestroyAfter time.Duration
	// Canary is the serial of the drive changed first, alone (default:
	// the first drive of the inventory). Only used by a new rotation.
	Canary string
}

// RetireResult reports one generation whose keys were destroyed.
type RetireResult struct {
	Generation int `json:"generation"`
	// Servers lists the servers the keys were destroyed on.
	Servers []string `json:"servers"`
}

// RotateResult reports what Rotate did.
type RotateResult struct {
	Array string `json:"array"`
	From  int    `json:"from"`
	To    int    `json:"to"`
	// Resumed: an interrupted rotation was completed.
	Resumed bool          `json:"resumed,omitempty"`
	Canary  string        `json:"canary,omitempty"`
	Drives  []DriveResult `json:"drives,omitempty"`
	// Deactivated counts the old generation's keys deactivated.
	Deactivated int `json:"deactivated"`
	// Destroyed lists retired generations destroyed by this run.
	Destroyed []RetireResult `json:"destroyed,omitempty"`
	Warnings  []string       `json:"warnings,omitempty"`
	KMS       Stats          `json:"kms"`
	Elapsed   time.Duration  `json:"elapsed_ns"`
}

// Rotate replaces every drive's key with a new generation, following the
// journal: register the new keys on every key server -> change one canary
// drive and verify it -> change the rest and verify each -> mark the new
// generation active -> deactivate the old generation's keys. Then it
// destroys the keys of retired generations whose delay has passed.
// It works on a live array (drives unlocked stay unlocked). Running it
// again after an interruption resumes the journaled rotation.
func (a *Array) Rotate(ctx context.Context, opts RotateOptions) (*RotateResult, error) {
	t0 := time.Now()
	a.begin(OpRotate)
	res := &RotateResult{Array: a.Doc.Array.Serial}
	defer func() { res.KMS, res.Elapsed = a.kmsStats, time.Since(t0) }()
	if err := a.checkJournal(OpRotate); err != nil {
		return res, err
	}
	ds, err := a.drives()
	if err != nil {
		return res, err
	}
	if a.Doc.Journal == nil {
		if err := a.startRotate(ctx, ds, opts); err != nil {
			return res, err
		}
	} else {
		res.Resumed = true
		a.progress(a.Doc.Journal.Step, "", "", "resuming the rotation from generation %d to %d interrupted at step %s",
			a.Doc.Journal.From, a.Doc.Journal.To, a.Doc.Journal.Step)
	}
	j := a.Doc.Journal
	from, to := a.Doc.Keys.Generation(j.From), a.Doc.Keys.Generation(j.To)
	if from == nil || to == nil || len(to.Drives) == 0 {
		return res, fmt.Errorf("journal: generations %d and %d are not both in the key inventory; the document was edited by hand", j.From, j.To)
	}
	res.From, res.To, res.Canary = from.Number, to.Number, to.Drives[0].Drive

	if j.Step != StepRetire {
		if err := a.rotateDrives(ctx, ds, from, to, res); err != nil {
			return res, err
		}
	}
	// Retire: the old keys can no longer open any drive.
	n, warns := a.deactivate(ctx, a.Doc.Keys.Generation(j.From), fmt.Sprintf("superseded by generation %d", j.To))
	res.Deactivated, res.Warnings = n, append(res.Warnings, warns...)
	if err := a.update("rotation done", func(d *config.Document) { d.Journal = nil }); err != nil {
		return res, err
	}
	a.progress(StepRetire, "", "", "rotation done: every drive on generation %d; generation %d deactivated (%d keys)", res.To, res.From, n)

	destroyed, warns, err := a.retireDue(ctx, opts.DestroyAfter)
	res.Destroyed, res.Warnings = destroyed, append(res.Warnings, warns...)
	return res, err
}

// startRotate checks the array and journals a new generation.
func (a *Array) startRotate(ctx context.Context, ds *driveSet, opts RotateOptions) error {
	act := a.Doc.Keys.Active()
	if act == nil || a.Doc.Mode != config.ModeExternal {
		return ErrNotEnabled
	}
	if err := ds.requireDrives(act); err != nil {
		return err
	}
	serials := make([]string, 0, len(act.Drives))
	for _, dk := range act.Drives {
		serials = append(serials, dk.Drive)
	}
	if opts.Canary != "" {
		i := slices.Index(serials, opts.Canary)
		if i < 0 {
			return fmt.Errorf("canary drive %q is not in generation %d", opts.Canary, act.Number)
		}
		serials = append([]string{opts.Canary}, slices.Delete(serials, i, i+1)...)
	}
	// Every drive must be on the active generation before we start.
	for _, s := range serials {
		v, err := ds.bySerial[s].ReadVerifier(ctx, nil)
		if err != nil {
			if errors.Is(err, sed.ErrNotAuthorized) || errors.Is(err, sed.ErrNotVerifier) {
				continue // not readable by Anybody: sed.Rotate checks as Admin1
			}
			return fmt.Errorf("drive %s: read key verifier: %w", s, err)
		}
		if gens := verifierGens(v); v.Pending || !slices.Contains(gens, uint64(act.Number)) {
			return fmt.Errorf("drive %s: its key verifier records generation(s) %v (pending=%v), not the active generation %d: run 'sedctl preflight' to find out why", s, gens, v.Pending, act.Number)
		}
	}
	next := 0
	for _, g := range a.Doc.Keys.Generations {
		next = max(next, g.Number+1)
	}
	g, err := a.newGeneration(next, serials)
	if err != nil {
		return err
	}
	return a.update("rotation journaled", func(d *config.Document) {
		d.Keys.Generations = append(d.Keys.Generations, g)
		d.Journal = &config.Journal{Op: OpRotate, Started: a.now(), From: act.Number, To: g.Number, Step: StepRegister}
	})
}

// rotateDrives runs the register, canary and drives steps.
func (a *Array) rotateDrives(ctx context.Context, ds *driveSet, from, to *config.Generation, res *RotateResult) error {
	if err := ds.requireDrives(to); err != nil {
		return err
	}
	var newKeys keySet
	var err error
	if a.Doc.Journal.Step == StepRegister {
		a.progress(StepRegister, "", "", "registering %d keys of generation %d on %d key server(s)", len(to.Drives), to.Number, len(a.Doc.KMS.Servers))
		newKeys, err = a.ensureKeys(ctx, to, nil, true)
	} else {
		newKeys, err = a.fetchAdmin(ctx, to)
	}
	if err != nil {
		return err
	}
	defer newKeys.zero()
	oldKeys, err := a.fetchAdmin(ctx, from)
	if err != nil {
		return fmt.Errorf("the old generation's keys are needed to change the drives: %w", err)
	}
	defer oldKeys.zero()
	if a.Doc.Journal.Step == StepRegister {
		if err := a.update("keys registered", func(d *config.Document) { d.Journal.Step = StepCanary }); err != nil {
			return err
		}
	}
	change := func(ctx context.Context, serial string, dr *DriveResult) error {
		oldName, ok := from.Key(serial)
		if !ok {
			return fmt.Errorf("drive %s has no key in generation %d", serial, from.Number)
		}
		return a.rotateDrive(ctx, ds.bySerial[serial], serial, from.Number, to.Number, oldKeys[oldName.Name], newKeys[nameOf(to, serial)], dr)
	}
	var canary []DriveResult
	if a.Doc.Journal.Step == StepCanary {
		c := to.Drives[0].Drive
		a.progress(StepCanary, c, "", "changing the canary drive")
		if canary, err = a.forDrives(ctx, to, ds, []string{c}, change); err != nil {
			return err
		}
		if err := a.update("canary verified", func(d *config.Document) { d.Journal.Step = StepDrives }); err != nil {
			return err
		}
	}
	a.progress(StepDrives, "", "", "changing the remaining drives")
	results, err := a.forDrives(ctx, to, ds, nil, change)
	for i := range results {
		for _, c := range canary {
			if c.Drive == results[i].Drive && len(c.Steps) > 0 {
				results[i] = c
			}
		}
	}
	res.Drives = results
	if err != nil {
		return err
	}
	return a.update("rotation verified", func(d *config.Document) {
		d.Keys.Generation(to.Number).State = config.GenActive
		old := d.Keys.Generation(from.Number)
		old.State, old.Retiring = config.GenRetiring, a.now().UTC()
		d.Journal.Step = StepRetire
	})
}

// rotateDrive changes one drive from the old key to the new and verifies it.
func (a *Array) rotateDrive(ctx context.Context, d *sed.Drive, serial string, fromGen, toGen int, oldKey, newKey *secret.Secret, dr *DriveResult) error {
	if oldKey == nil || newKey == nil {
		return fmt.Errorf("drive %s: key of generation %d or %d missing", serial, fromGen, toGen)
	}
	po, err := derive(oldKey, serial)
	if err != nil {
		return err
	}
	defer po.zero()
	pn, err := derive(newKey, serial)
	if err != nil {
		return err
	}
	defer pn.zero()
	sctx, progress, hookErr, cancel := a.stepHook(ctx, a.Doc.Journal.Step, serial, dr)
	defer cancel()
	_, err = d.Rotate(sctx, sed.RotateRequest{
		Admin1Old: po.admin1.Bytes(), Admin1New: pn.admin1.Bytes(),
		SIDOld: po.sid.Bytes(), SIDNew: pn.sid.Bytes(),
		Generation: uint64(toGen), OldGeneration: uint64(fromGen),
		Progress: progress,
	})
	if herr := hookErr(); herr != nil {
		return herr
	}
	if err != nil {
		return fmt.Errorf("rotate drive %s: %w", serial, err)
	}
	if err := a.verifyDrive(ctx, d, serial, toGen, pn); err != nil {
		return err
	}
	dr.Generation = toGen
	a.progress(StepDrives, serial, "", "changed and verified on generation %d", toGen)
	return nil
}

// deactivate revokes (reason superseded) g's keys on every server, one
// batched request per server. Key servers that cannot be reached are
// reported as warnings: the keys are revoked when the generation is
// destroyed later.
func (a *Array) deactivate(ctx context.Context, g *config.Generation, why string) (int, []string) {
	if g == nil || a.Admin == nil {
		return 0, nil
	}
	n := 0
	var warns []string
	for _, srv := range a.Admin.Servers() {
		c, err := a.connect(ctx, a.Admin, srv)
		if err != nil {
			warns = append(warns, fmt.Sprintf("generation %d not deactivated on %s (unreachable: %v); it will be when it is destroyed", g.Number, srv.Label(), err))
			continue
		}
		ids, names := generationIDs(g, srv.Label())
		res, err := c.RevokeAll(ctx, ids, kms.RevokeSuperseded, why)
		a.release(c)
		for i, r := range res {
			// A key the server no longer holds cannot be used either.
			if r.Err == nil || notFound(r.Err) {
				n++
			} else if err == nil {
				warns = append(warns, fmt.Sprintf("key %s on %s not deactivated: %v", names[i], srv.Label(), r.Err))
			}
		}
		if err != nil {
			warns = append(warns, fmt.Sprintf("generation %d not (entirely) deactivated on %s: %v; it will be when it is destroyed", g.Number, srv.Label(), err))
			continue
		}
		a.progress(StepRetire, "", srv.Label(), "generation %d deactivated", g.Number)
	}
	return n, warns
}

// generationIDs returns the identifiers on srv of g's keys that have one,
// and their names.
func generationIDs(g *config.Generation, srv string) (ids, names []string) {
	for _, dk := range g.Drives {
		if id := dk.IDs[srv]; id != "" {
			ids = append(ids, id)
			names = append(names, dk.Name)
		}
	}
	return ids, names
}

// Retire destroys, on every key server, the keys of retired
// generations whose delay has passed (see RotateOptions.DestroyAfter),
// once no drive's key verifier still records them.
func (a *Array) Retire(ctx context.Context, destroyAfter time.Duration) ([]RetireResult, []string, error) {
	a.begin(OpRotate)
	if err := a.checkJournal(""); err != nil {
		return nil, nil, err
	}
	return a.retireDue(ctx, destroyAfter)
}

// KMSStats returns the key-server work of the last operation.
func (a *Array) KMSStats() Stats { return a.kmsStats }

func (a *Array) retireDue(ctx context.Context, delay time.Duration) ([]RetireResult, []string, error) {
	if a.Doc.Journal != nil {
		return nil, nil, nil
	}
	var due []*config.Generation
	var warns []string
	now := a.now()
	for i := range a.Doc.Keys.Generations {
		g := &a.Doc.Keys.Generations[i]
		if g.State != config.GenRetiring {
			continue
		}
		succ := a.successor(g.Number)
		if succ == nil || succ.State != config.GenActive && succ.State != config.GenRetiring {
			continue
		}
		since := g.Retiring
		if since.IsZero() { // written before the field existed
			since = succ.Created
		}
		if at := since.Add(delay); now.Before(at) {
			a.progress(StepRetire, "", "", "generation %d stays deactivated until %s", g.Number, at.Format(time.RFC3339))
			continue
		}
		due = append(due, g)
	}
	if len(due) == 0 {
		return nil, nil, nil
	}
	ds, err := a.drives()
	if err != nil {
		return nil, nil, err
	}
	var out []RetireResult
	for _, g := range due {
		if busy := a.stillUsed(ctx, ds, g); busy != "" {
			warns = append(warns, fmt.Sprintf("generation %d not destroyed: %s", g.Number, busy))
			continue
		}
		rr, err := a.destroy(ctx, g)
		if err != nil {
			return out, warns, err
		}
		if err := a.update(fmt.Sprintf("generation %d destroyed", g.Number), func(d *config.Document) {
			dg := d.Keys.Generation(g.Number)
			dg.State = config.GenRetired
			for i := range dg.Drives {
				dg.Drives[i].IDs = nil
			}
		}); err != nil {
			return out, warns, err
		}
		out = append(out, rr)
	}
	return out, warns, nil
}

// successor returns the generation that follows n.
func (a *Array) successor(n int) *config.Generation {
	var best *config.Generation
	for i := range a.Doc.Keys.Generations {
		g := &a.Doc.Keys.Generations[i]
		if g.Number > n && (best == nil || g.Number < best.Number) {
			best = g
		}
	}
	return best
}

// stillUsed says why g's keys may still open a drive ("" when none can):
// a present drive whose verifier records g, or cannot be read.
func (a *Array) stillUsed(ctx context.Context, ds *driveSet, g *config.Generation) string {
	for _, dk := range g.Drives {
		d := ds.bySerial[dk.Drive]
		if d == nil {
			continue
		}
		v, err := d.ReadVerifier(ctx, nil)
		if err != nil {
			return fmt.Sprintf("the key verifier of drive %s cannot be read (%v)", dk.Drive, err)
		}
		if slices.Contains(verifierGens(v), uint64(g.Number)) {
			return fmt.Sprintf("drive %s still records generation %d", dk.Drive, g.Number)
		}
	}
	return ""
}

// destroy destroys g's keys on every server, in one batched request per
// server (a second and third, Revoke then Destroy, for keys still Active
// because deactivating them failed on that server); every server must be
// reachable. Keys a server no longer holds count as destroyed.
func (a *Array) destroy(ctx context.Context, g *config.Generation) (RetireResult, error) {
	rr := RetireResult{Generation: g.Number}
	admin, err := a.connectAll(ctx, a.Admin, "administrator")
	if err != nil {
		return rr, fmt.Errorf("destroy generation %d: %w", g.Number, err)
	}
	defer admin.close()
	for _, srv := range admin.order {
		c := admin.by[srv]
		ids, names := generationIDs(g, srv)
		res, err := c.DestroyAll(ctx, ids)
		if err != nil {
			return rr, fmt.Errorf("destroy generation %d on %s: %w", g.Number, srv, err)
		}
		var activeIDs, activeNames []string
		var at []int
		for _, i := range res.Failed() {
			if errors.Is(res[i].Err, kms.ErrDenied) {
				activeIDs, activeNames, at = append(activeIDs, ids[i]), append(activeNames, names[i]), append(at, i)
			}
		}
		if len(activeIDs) > 0 {
			rev, err := c.RevokeAll(ctx, activeIDs, kms.RevokeSuperseded, fmt.Sprintf("generation %d retired", g.Number))
			if err != nil {
				return rr, fmt.Errorf("destroy generation %d on %s: revoke: %w", g.Number, srv, err)
			}
			if err := keyErrors(rev, activeNames, notFound); err != nil {
				return rr, fmt.Errorf("destroy generation %d on %s: revoke: %w", g.Number, srv, err)
			}
			again, err := c.DestroyAll(ctx, activeIDs)
			if err != nil {
				return rr, fmt.Errorf("destroy generation %d on %s: %w", g.Number, srv, err)
			}
			for j, i := range at {
				res[i] = again[j]
			}
		}
		if err := keyErrors(res, names, nil); err != nil {
			return rr, fmt.Errorf("destroy generation %d on %s: %w", g.Number, srv, err)
		}
		rr.Servers = append(rr.Servers, srv)
		a.progress(StepRetire, "", srv, "generation %d destroyed", g.Number)
	}
	sort.Strings(rr.Servers)
	return rr, nil
}
