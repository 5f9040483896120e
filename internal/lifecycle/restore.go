package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/sedboot/sedboot/internal/backup"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/unlock"
)

// BackupKeys fetches the keys of every generation a drive may hold
// (administrator identity) into a backup set, after checking that for
// every drive present some key of the set matches the drive's key
// verifier: a backup that would not open a drive is refused. The caller
// writes the set with backup.Write and zeroes it.
func (a *Array) BackupKeys(ctx context.Context) (_ *backup.Set, err error) {
	a.begin("backup")
	gens := openingGenerations(a.Doc)
	if len(gens) == 0 {
		return nil, ErrNotEnabled
	}
	set := &backup.Set{Array: a.Doc.Array.Serial, Prefix: a.prefix(), Group: a.group(), Created: a.now().Truncate(time.Second)}
	defer func() {
		if err != nil {
			set.Zero()
		}
	}()
	sort.Slice(gens, func(i, j int) bool { return gens[i].Number < gens[j].Number })
	for _, g := range gens {
		ks, err := a.fetchAdmin(ctx, g)
		if err != nil {
			return nil, err
		}
		bg := backup.Generation{Number: g.Number, Created: g.Created, State: g.State}
		for _, dk := range g.Drives {
			bg.Keys = append(bg.Keys, backup.Key{Drive: dk.Drive, Name: dk.Name, Value: ks[dk.Name]})
			delete(ks, dk.Name)
		}
		ks.zero()
		set.Generations = append(set.Generations, bg)
		a.progress("backup", "", "", "generation %d: %d keys fetched", g.Number, len(bg.Keys))
	}
	if err := set.Validate(); err != nil {
		return nil, err
	}
	for _, bg := range set.Generations {
		for _, k := range bg.Keys {
			if k.Value == nil {
				return nil, fmt.Errorf("key %s was not fetched", k.Name)
			}
		}
	}
	if _, err := a.checkSetOpensDrives(ctx, set); err != nil {
		return nil, err
	}
	return set, nil
}

// checkSetOpensDrives checks that, for every drive present that the set
// has keys for, one of them matches the drive's key verifier. It returns
// the generation that matched per drive.
func (a *Array) checkSetOpensDrives(ctx context.Context, set *backup.Set) (map[string]int, error) {
	ds, err := a.drives()
	if err != nil {
		return nil, err
	}
	opened := map[string]int{}
	tried := map[string][]int{}
	for _, bg := range set.Generations {
		for _, k := range bg.Keys {
			d := ds.bySerial[k.Drive]
			if d == nil || opened[k.Drive] != 0 {
				continue
			}
			gen, err := checkDriveKey(ctx, d, k.Drive, k.Value)
			switch {
			case err == nil && gen == uint64(bg.Number):
				opened[k.Drive] = bg.Number
			case err == nil, errors.Is(err, sed.ErrVerifierMismatch):
				tried[k.Drive] = append(tried[k.Drive], bg.Number)
			case errors.Is(err, sed.ErrNoVerifier):
				opened[k.Drive] = -1 // cannot check
			default:
				return nil, fmt.Errorf("check drive %s: %w", k.Drive, err)
			}
		}
	}
	for d, gens := range tried {
		if opened[d] == 0 {
			return nil, fmt.Errorf("no key of generation(s) %v matches the key verifier of drive %s: these keys would not open it", gens, d)
		}
	}
	return opened, nil
}

// RestoreResult reports what Restore did.
type RestoreResult struct {
	Array string `json:"array"`
	// Generations restored to the key servers.
	Generations []int `json:"generations"`
	// Adopted: the boot medium had no key inventory and took the
	// backup's.
	Adopted  bool          `json:"adopted,omitempty"`
	Servers  []string      `json:"servers"`
	Warnings []string      `json:"warnings,omitempty"`
	KMS      Stats         `json:"kms"`
	Elapsed  time.Duration `json:"elapsed_ns"`
}

// Restore registers the keys of a backup on every configured key server
// under their own names (keeping a key a server already holds with the
// same value; refusing one held with another value), proves the array's
// identity can fetch them, and records the new identifiers in the
// inventory. A boot medium without a key inventory (a replaced medium)
// takes the backup's. Nothing changes unless the set belongs to this
// array and opens the drives present.
func (a *Array) Restore(ctx context.Context, set *backup.Set) (*RestoreResult, error) {
	t0 := time.Now()
	a.begin(OpRestore)
	res := &RestoreResult{Array: a.Doc.Array.Serial}
	defer func() { res.KMS, res.Elapsed = a.kmsStats, time.Since(t0) }()
	if err := a.checkJournal(""); err != nil {
		return res, err
	}
	if a.Doc.KMS == nil {
		return res, errNoKMS
	}
	if set.Array != a.Doc.Array.Serial {
		return res, fmt.Errorf("the backup is of array %q, this is array %q", set.Array, a.Doc.Array.Serial)
	}
	if set.Group != a.group() {
		return res, fmt.Errorf("the backup's keys are in group %q, this array uses %q (key prefix differs)", set.Group, a.group())
	}
	if err := set.Validate(); err != nil {
		return res, err
	}
	adopt := len(liveGenerations(a.Doc)) == 0
	var plan []*backup.Generation
	for i := range set.Generations {
		bg := &set.Generations[i]
		if adopt {
			if bg.State == config.GenActive || bg.State == config.GenPending {
				plan = append(plan, bg)
			}
			continue
		}
		g := a.Doc.Keys.Generation(bg.Number)
		switch {
		case g == nil:
			res.Warnings = append(res.Warnings, fmt.Sprintf("generation %d is in the backup but not in this array's inventory: skipped", bg.Number))
			continue
		case g.State == config.GenRetired || g.State == config.GenRetiring:
			res.Warnings = append(res.Warnings, fmt.Sprintf("generation %d is %s on this array: skipped", bg.Number, g.State))
			continue
		}
		for _, k := range bg.Keys {
			dk, ok := g.Key(k.Drive)
			if !ok || dk.Name != k.Name {
				return res, fmt.Errorf("generation %d: the backup's key %s is not the inventory's key for drive %s (%s)", bg.Number, k.Name, k.Drive, dk.Name)
			}
		}
		plan = append(plan, bg)
	}
	for _, g := range liveGenerations(a.Doc) {
		if (g.State == config.GenActive || g.State == config.GenPending) && !slices.ContainsFunc(plan, func(bg *backup.Generation) bool { return bg.Number == g.Number }) {
			res.Warnings = append(res.Warnings, fmt.Sprintf("the backup lacks generation %d (%s): its keys cannot be restored from this file", g.Number, g.State))
		}
	}
	if len(plan) == 0 {
		return res, errors.New("nothing in the backup to restore on this array")
	}
	if _, err := a.checkSetOpensDrives(ctx, set); err != nil {
		return res, err
	}

	doc := a.Doc
	var gens []config.Generation
	for _, bg := range plan {
		var g *config.Generation
		if adopt {
			ng := config.Generation{Number: bg.Number, Created: bg.Created, State: bg.State}
			for _, k := range bg.Keys {
				ng.Drives = append(ng.Drives, config.DriveKey{Drive: k.Drive, Name: k.Name})
			}
			g = &ng
		} else {
			c := *doc.Keys.Generation(bg.Number)
			c.Drives = slices.Clone(c.Drives)
			for i := range c.Drives {
				c.Drives[i].IDs = nil // re-learnt from the servers
			}
			g = &c
		}
		given := keySet{}
		for _, k := range bg.Keys {
			given[k.Name] = k.Value
		}
		a.progress(OpRestore, "", "", "generation %d: registering %d keys", g.Number, len(g.Drives))
		ks, err := a.ensureKeys(ctx, g, given, true)
		if err != nil {
			return res, err
		}
		ks.zero()
		gens = append(gens, *g)
		res.Generations = append(res.Generations, g.Number)
	}
	err := a.update("restored", func(d *config.Document) {
		for _, g := range gens {
			if dg := d.Keys.Generation(g.Number); dg != nil {
				*dg = g
			} else {
				d.Keys.Generations = append(d.Keys.Generations, g)
			}
		}
		if adopt {
			d.Mode = config.ModeExternal
			res.Adopted = true
		}
	})
	for _, s := range Servers(a.Doc) {
		res.Servers = append(res.Servers, s.Label())
	}
	return res, err
}

// DriveUnlock reports UnlockFromBackup.
type DriveUnlock struct {
	Drive      string `json:"drive"`
	Device     string `json:"device"`
	Generation int    `json:"generation"`
	// Skipped lists generations whose key the verifier refused (no try
	// spent).
	Skipped []int `json:"skipped,omitempty"`
	// AlreadyUnlocked: the drive was not locked.
	AlreadyUnlocked bool `json:"already_unlocked,omitempty"`
}

// UnlockFromBackup unlocks one drive with its key from a backup set (the
// recovery shell's way in when no key server answers), with the boot
// agent's policy (unlock.Drive). Keys are checked against the drive's
// verifier first, so a wrong one costs no try, and a key the verifier
// matches under another generation is refused; prefer lists generations to
// try first (the boot medium's candidates), the rest follow newest first.
// Without a verifier nothing is presented unless force is set, and then
// only the most likely key, once. The set is left as it was.
func UnlockFromBackup(ctx context.Context, d *sed.Drive, set *backup.Set, prefer []int, force bool) (*DriveUnlock, error) {
	serial, err := d.Serial()
	if err != nil {
		return nil, err
	}
	res := &DriveUnlock{Drive: serial, Device: d.Name()}
	var gens []*backup.Generation
	add := func(bg *backup.Generation) {
		if !slices.ContainsFunc(gens, func(g *backup.Generation) bool { return g.Number == bg.Number }) {
			gens = append(gens, bg)
		}
	}
	for _, n := range prefer {
		if bg := set.Generation(n); bg != nil {
			add(bg)
		}
	}
	rest := slices.Clone(set.Generations)
	sort.Slice(rest, func(i, j int) bool { return rest[i].Number > rest[j].Number })
	for i := range rest {
		add(&rest[i])
	}
	var cands []unlock.Candidate
	defer func() {
		for _, c := range cands {
			c.Key.Zero()
		}
	}()
	for _, bg := range gens {
		for _, k := range bg.Keys {
			if k.Drive != serial {
				continue
			}
			// unlock.Drive zeroes its keys; the set stays whole.
			key, err := k.Value.Clone()
			if err != nil {
				return res, fmt.Errorf("drive %s: backup key of generation %d: %w", serial, bg.Number, err)
			}
			cands = append(cands, unlock.Candidate{Generation: bg.Number, Source: "backup", Key: key})
		}
	}
	if len(cands) == 0 {
		return res, fmt.Errorf("the backup holds no key for drive %s (array %s)", serial, set.Array)
	}
	sum, err := d.Discover(ctx)
	if err != nil {
		return res, err
	}
	if !sum.LockingEnabled {
		return res, fmt.Errorf("drive %s: locking is not enabled on it", serial)
	}
	opts := []unlock.Option{unlock.ExactGeneration()}
	if !force {
		opts = append(opts, unlock.RequireVerifier())
	}
	ur := unlock.Drive(ctx, d, serial, cands, opts...)
	res.Skipped = ur.Skipped
	switch {
	case ur.Unlocked:
		res.Generation, res.AlreadyUnlocked = ur.Generation, !sum.Locked
		return res, nil
	case errors.Is(ur.Err, sed.ErrNoVerifier):
		return res, fmt.Errorf("drive %s has no readable key verifier: a wrong key would cost a try; run again with --force to present the generation %d key once", serial, cands[0].Generation)
	case errors.Is(ur.Err, sed.ErrVerifierMismatch) && ur.Presentations == 0:
		return res, fmt.Errorf("no key in the backup matches drive %s's key verifier (generations %v; nothing was presented)", serial, res.Skipped)
	}
	return res, ur.Err
}
