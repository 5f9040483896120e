package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sedboot/sedboot/internal/backup"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/lifecycle"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/sed"
)

// Exit statuses beyond 0 (success), 1 (failure) and 2 (usage).
const (
	// exitWarn: preflight found something to look at, but the boot
	// would succeed.
	exitWarn = 3
)

func table(e *env) *tabwriter.Writer { return tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// --- drives -------------------------------------------------------------

type driveRow struct {
	Path       string   `json:"path"`
	Model      string   `json:"model"`
	Serial     string   `json:"serial"`
	Kind       string   `json:"kind"`
	SSC        string   `json:"ssc,omitempty"`
	Opal       bool     `json:"opal"`
	Locking    bool     `json:"locking_enabled"`
	Locked     bool     `json:"locked"`
	Generation []uint64 `json:"generations,omitempty"`
	Pending    bool     `json:"pending,omitempty"`
	Error      string   `json:"error,omitempty"`
}

func cmdDrives(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "drives", "")
	asJSON := fs.Bool("json", false, "print the list as JSON")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	var rows []driveRow
	row := func(d *sed.Drive, r driveRow, sum *sed.Summary, err error) driveRow {
		if err != nil {
			r.Error = err.Error()
			return r
		}
		if sum == nil {
			if sum, err = d.Discover(ctx); err != nil {
				r.Error = err.Error()
				return r
			}
		}
		r.SSC, r.Opal, r.Locking, r.Locked = string(sum.SSC), sum.Opal(), sum.LockingEnabled, sum.Locked
		if sum.LockingEnabled {
			if v, err := d.ReadVerifier(ctx, nil); err == nil {
				for _, en := range v.Entries {
					if en.Role == sed.RoleAdmin1 {
						r.Generation = append(r.Generation, en.Generation)
					}
				}
				r.Pending = v.Pending
			}
		}
		return r
	}
	if e.drives != nil {
		ds, err := e.drives(ctx)
		if err != nil {
			return err
		}
		for _, d := range ds {
			r := driveRow{Path: d.Name()}
			id, err := d.Identity(ctx)
			if err == nil {
				r.Model, r.Serial, r.Kind = id.Model, id.Serial, string(id.Kind)
			}
			rows = append(rows, row(d, r, nil, err))
		}
	} else {
		all, err := enumerate(ctx)
		if err != nil {
			return err
		}
		for _, f := range all {
			r := driveRow{Path: f.cand.Path, Model: f.cand.Model, Serial: f.cand.Serial, Kind: string(f.cand.Kind)}
			rows = append(rows, row(f.drive, r, f.sum, f.err))
			if f.drive != nil {
				f.drive.Close()
			}
		}
	}
	if *asJSON {
		return printJSON(e, rows)
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.stdout, "no drives found")
		return nil
	}
	w := table(e)
	fmt.Fprintln(w, "PATH\tMODEL\tSERIAL\tKIND\tOPAL\tSTATE\tGENERATION")
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t(%s)\t\t\n", r.Path, r.Model, r.Serial, r.Kind, r.Error)
			continue
		}
		opal := "no"
		if r.Opal {
			opal = r.SSC
		}
		gen := "-"
		if len(r.Generation) > 0 {
			gen = strings.Trim(fmt.Sprint(r.Generation), "[]")
			if r.Pending {
				gen += " (change in progress)"
			}
		}
		state := "locking not enabled"
		switch {
		case r.Locking && r.Locked:
			state = "locked"
		case r.Locking:
			state = "unlocked"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Path, r.Model, r.Serial, r.Kind, opal, state, gen)
	}
	return w.Flush()
}

// --- kms check ----------------------------------------------------------

func cmdKMSCheck(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "kms check", "")
	af := addArrayFlags(fs, true)
	requireLock := fs.Bool("require-lock", false, "count a server that cannot enforce the cryptographic lock as unfit")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	o, err := openArray(ctx, e, af, false)
	if err != nil {
		return err
	}
	defer o.Close()
	if o.a.Doc.KMS == nil {
		return errors.New("no key servers configured on the boot medium (kms section)")
	}
	rep, err := o.a.KMSCheck(ctx, *requireLock)
	if err != nil {
		return err
	}
	if *af.json {
		err = printJSON(e, rep)
	} else {
		err = rep.WriteText(e.stdout)
	}
	if err != nil {
		return err
	}
	if !rep.OK {
		return exitError{1}
	}
	return nil
}

// --- enable -------------------------------------------------------------

func cmdEnable(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "enable", "")
	af := addArrayFlags(fs, true)
	mode := fs.String("mode", "", `key management: "external" (KMIP key servers)`)
	yes := fs.Bool("yes", false, "do not ask for the typed confirmation (automation)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	switch *mode {
	case config.ModeExternal:
	case "":
		return usageError{"--mode is required (external)"}
	default:
		return usageError{fmt.Sprintf("--mode %q is not supported: only external (KMIP key servers)", *mode)}
	}
	o, err := openArray(ctx, e, af, true)
	if err != nil {
		return err
	}
	defer o.Close()
	a := o.a
	if a.Doc.KMS == nil {
		return errors.New("no key servers configured on the boot medium: add the kms section first (sedctl medium export, edit, medium import)")
	}
	switch j := a.Doc.Journal; {
	case j != nil && j.Op == lifecycle.OpEnable:
		fmt.Fprintf(e.stderr, "resuming the enable interrupted at step %s (started %s)\n", j.Step, ago(j.Started))
	case j == nil && a.Doc.Keys.Active() == nil:
		var b strings.Builder
		fmt.Fprintf(&b, "Enabling encryption on array %s with %d key server(s) (%s).\n", a.Doc.Array.Serial, len(a.Doc.KMS.Servers), serverNames(a.Doc))
		fmt.Fprintf(&b, "Drives (%d):\n", len(a.Drives))
		for _, d := range a.Drives {
			s, _ := d.Serial()
			fmt.Fprintf(&b, "  %s  %s\n", d.Name(), s)
		}
		b.WriteString("This cannot be undone: from the next power cycle each drive opens only with its key from the key servers\n" +
			"(or a backup file); returning a drive to factory state destroys its data. Take a backup right after.")
		if err := newLines(e).confirm(*yes, b.String(), a.Doc.Array.Serial); err != nil {
			return err
		}
	}
	check := func(ctx context.Context) error {
		rep, err := a.KMSCheck(ctx, false)
		if err != nil {
			return err
		}
		if !rep.OK {
			_ = rep.WriteText(e.stderr)
			return errors.New("kms check: not every key server is fit (see above)")
		}
		fmt.Fprintf(e.stderr, "  kms check: %d key server(s) fit\n", len(rep.Servers))
		return nil
	}
	res, err := a.Enable(ctx, lifecycle.EnableOptions{Check: check})
	if err != nil {
		if errors.Is(err, lifecycle.ErrInterrupted) || a.Doc.Journal != nil {
			fmt.Fprintln(e.stderr, "the enable is journaled on the boot medium: run 'sedctl enable --mode external' again to finish it")
		}
		return err
	}
	if *af.json {
		return printJSON(e, res)
	}
	switch {
	case res.AlreadyEnabled:
		fmt.Fprintf(e.stdout, "array %s: encryption already enabled (key generation %d)\n", res.Array, res.Generation)
	default:
		fmt.Fprintf(e.stdout, "array %s: encryption enabled, key generation %d, %d drive(s) (%s, %d key-server requests)\n",
			res.Array, res.Generation, len(res.Drives), res.Elapsed.Round(time.Millisecond), res.KMS.Requests)
		printDrives(e, res.Drives)
		fmt.Fprintln(e.stdout, "next: sedctl backup create FILE, then sedctl preflight")
	}
	return nil
}

func serverNames(doc *config.Document) string {
	var out []string
	for _, s := range doc.KMS.Servers {
		out = append(out, s.Name+" "+s.Address)
	}
	return strings.Join(out, ", ")
}

func printDrives(e *env, ds []lifecycle.DriveResult) {
	w := table(e)
	for _, d := range ds {
		what := fmt.Sprintf("%d step(s)", len(d.Steps))
		if d.Skipped {
			what = "already done"
		}
		fmt.Fprintf(w, "  %s\t%s\tgeneration %d\t%s\t%s\n", d.Drive, d.Device, d.Generation, what, d.Warning)
	}
	w.Flush()
}

// --- status -------------------------------------------------------------

func cmdStatus(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "status", "")
	af := addArrayFlags(fs, true)
	noTries := fs.Bool("no-tries", false, "do not fetch the keys to read the drives' Admin1 try counters")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	o, err := openArray(ctx, e, af, false)
	if err != nil {
		return err
	}
	defer o.Close()
	o.a.Progress = nil
	st, err := o.a.Status(ctx, lifecycle.StatusOptions{Tries: !*noTries})
	if err != nil {
		return err
	}
	if *af.json {
		return printJSON(e, st)
	}
	fmt.Fprintf(e.stdout, "array %s, controller %s, key management %s\n", st.Array, st.Slot, st.Mode)
	if st.Generation > 0 {
		fmt.Fprintf(e.stdout, "key generation %d, created (last rotated) %s\n", st.Generation, ago(st.Rotated))
	}
	for _, g := range st.Generations {
		if g.Number != st.Generation {
			fmt.Fprintf(e.stdout, "  generation %d: %s (%d keys, created %s)\n", g.Number, g.State, g.Drives, ago(g.Created))
		}
	}
	fmt.Fprintln(e.stdout, "\ndrives:")
	w := table(e)
	fmt.Fprintln(w, "  SERIAL\tDEVICE\tSSC\tLOCKING\tLOCKED\tGENERATION\tADMIN1 TRIES\tPSID TRIES\t")
	tries := func(t *lifecycle.Tries) string {
		if t == nil {
			return "-"
		}
		return fmt.Sprintf("%d/%d", t.Tries, t.Limit)
	}
	for _, d := range st.Drives {
		gen := "-"
		if len(d.Generations) > 0 {
			gen = strings.Trim(fmt.Sprint(d.Generations), "[]")
			if d.Pending {
				gen += " (change in progress)"
			}
		}
		locking := "disabled"
		if d.LockingEnabled {
			locking = "enabled"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Drive, d.Device, d.SSC, locking, yesNo(d.Locked), gen, tries(d.Admin1Tries), tries(d.PSIDTries), d.Error)
	}
	w.Flush()
	if len(st.Servers) > 0 {
		fmt.Fprintln(e.stdout, "\nkey servers:")
		w = table(e)
		fmt.Fprintln(w, "  NAME\tADDRESS\tREACHABLE\tKMIP\tVENDOR\tKEYS\tLOCK\t")
		for _, s := range st.Servers {
			keys := fmt.Sprintf("%d/%d", s.Found, s.Keys)
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Address, yesNo(s.Reachable), s.KMIPVersion, s.Vendor, keys, s.Lock, s.Error)
		}
		w.Flush()
	}
	for _, n := range st.Notes {
		fmt.Fprintln(e.stdout, "note: "+n)
	}
	return nil
}

// --- rotate -------------------------------------------------------------

func cmdRotate(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "rotate", "")
	af := addArrayFlags(fs, true)
	yes := fs.Bool("yes", false, "do not ask for the typed confirmation (automation)")
	destroyAfter := fs.Duration("destroy-after", lifecycle.DefaultDestroyAfter, "how long the old generation's keys stay deactivated on the key servers before a run destroys them")
	canary := fs.String("canary", "", "serial of the drive to change first, alone (default: the first of the inventory)")
	retireOnly := fs.Bool("retire-only", false, "only destroy retired generations whose delay has passed")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	o, err := openArray(ctx, e, af, true)
	if err != nil {
		return err
	}
	defer o.Close()
	a := o.a
	if *retireOnly {
		out, warns, err := a.Retire(ctx, *destroyAfter)
		for _, w := range warns {
			fmt.Fprintln(e.stderr, "warning: "+w)
		}
		if err != nil {
			return err
		}
		if *af.json {
			return printJSON(e, out)
		}
		if len(out) == 0 {
			fmt.Fprintln(e.stdout, "no retired generation is due for destruction")
		}
		for _, r := range out {
			fmt.Fprintf(e.stdout, "generation %d destroyed on %s\n", r.Generation, strings.Join(r.Servers, ", "))
		}
		return nil
	}
	if j := a.Doc.Journal; j != nil && j.Op == lifecycle.OpRotate {
		fmt.Fprintf(e.stderr, "resuming the rotation from generation %d to %d interrupted at step %s\n", j.From, j.To, j.Step)
	} else if j == nil {
		act := a.Doc.Keys.Active()
		if act == nil {
			return lifecycle.ErrNotEnabled
		}
		msg := fmt.Sprintf("Rotating every drive of array %s from key generation %d to %d. The old keys are deactivated on the key\n"+
			"servers at the end and destroyed after %s; backup files of generation %d stop being useful then: take a new backup.",
			a.Doc.Array.Serial, act.Number, act.Number+1, *destroyAfter, act.Number)
		if err := newLines(e).confirm(*yes, msg, a.Doc.Array.Serial); err != nil {
			return err
		}
	}
	res, err := a.Rotate(ctx, lifecycle.RotateOptions{DestroyAfter: *destroyAfter, Canary: *canary})
	for _, w := range res.Warnings {
		fmt.Fprintln(e.stderr, "warning: "+w)
	}
	if err != nil {
		if a.Doc.Journal != nil {
			fmt.Fprintln(e.stderr, "the rotation is journaled on the boot medium (the array still boots): run 'sedctl rotate' again to finish it")
		}
		return err
	}
	if *af.json {
		return printJSON(e, res)
	}
	fmt.Fprintf(e.stdout, "array %s: rotated from generation %d to %d (canary %s), %d drive(s), %s, %d key-server requests over %d connections\n",
		res.Array, res.From, res.To, res.Canary, len(res.Drives), res.Elapsed.Round(time.Millisecond), res.KMS.Requests, res.KMS.Connections)
	printDrives(e, res.Drives)
	fmt.Fprintf(e.stdout, "generation %d: %d key(s) deactivated\n", res.From, res.Deactivated)
	for _, r := range res.Destroyed {
		fmt.Fprintf(e.stdout, "generation %d destroyed on %s\n", r.Generation, strings.Join(r.Servers, ", "))
	}
	fmt.Fprintln(e.stdout, "next: sedctl backup create FILE")
	return nil
}

// --- backup -------------------------------------------------------------

func cmdBackupCreate(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "backup create", "FILE")
	af := addArrayFlags(fs, true)
	passFile := fs.String("passphrase-file", "", "read the passphrase from this file (default: ask on the terminal, else one line of standard input)")
	force := fs.Bool("force", false, "overwrite FILE")
	workFactor := fs.Int("work-factor", backup.DefaultWorkFactor, "scrypt work factor (log2 N) protecting the passphrase")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	path := fs.Arg(0)
	if _, err := os.Stat(path); err == nil && !*force {
		return fmt.Errorf("%s exists: choose another name or use --force", path)
	}
	o, err := openArray(ctx, e, af, false)
	if err != nil {
		return err
	}
	defer o.Close()
	pass, err := newLines(e).passphrase(*passFile, true)
	if err != nil {
		return err
	}
	if len([]rune(pass)) < backup.MinPassphrase {
		return fmt.Errorf("the passphrase must be at least %d characters", backup.MinPassphrase)
	}
	set, err := o.a.BackupKeys(ctx)
	if err != nil {
		return err
	}
	defer set.Zero()
	var buf bytes.Buffer
	if err := backup.Write(&buf, set, pass, backup.Options{WorkFactor: *workFactor}); err != nil {
		return err
	}
	if err := pki.WriteFileAtomic(path, buf.Bytes(), 0o600); err != nil {
		return err
	}
	n := 0
	var gens []int
	for _, g := range set.Generations {
		n += len(g.Keys)
		gens = append(gens, g.Number)
	}
	if *af.json {
		return printJSON(e, map[string]any{"file": path, "array": set.Array, "generations": gens, "keys": n})
	}
	fmt.Fprintf(e.stdout, "backup of array %s written to %s: %d key(s) of generation(s) %v\n", set.Array, path, n, gens)
	fmt.Fprintln(e.stdout, "keep it and its passphrase apart, off this array")
	return nil
}

// readBackupFile reads and decrypts a backup file.
func readBackupFile(l *lines, path, passFile string) (*backup.Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pass, err := l.passphrase(passFile, false)
	if err != nil {
		return nil, err
	}
	set, err := backup.Read(f, pass)
	if err != nil {
		return nil, fmt.Errorf("%s: %w; nothing was changed", path, err)
	}
	return set, nil
}

func cmdBackupRestore(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "backup restore", "FILE")
	af := addArrayFlags(fs, true)
	passFile := fs.String("passphrase-file", "", "read the passphrase from this file (default: ask on the terminal, else one line of standard input)")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	o, err := openArray(ctx, e, af, true)
	if err != nil {
		return err
	}
	defer o.Close()
	set, err := readBackupFile(newLines(e), fs.Arg(0), *passFile)
	if err != nil {
		return err
	}
	defer set.Zero()
	res, err := o.a.Restore(ctx, set)
	for _, w := range res.Warnings {
		fmt.Fprintln(e.stderr, "warning: "+w)
	}
	if err != nil {
		return err
	}
	if *af.json {
		return printJSON(e, res)
	}
	fmt.Fprintf(e.stdout, "restored generation(s) %v of array %s on %s\n", res.Generations, res.Array, strings.Join(res.Servers, ", "))
	if res.Adopted {
		fmt.Fprintln(e.stdout, "the boot medium had no key inventory and took the backup's")
	}
	return nil
}

// --- lock / unlock ------------------------------------------------------

func printLock(e *env, res *lifecycle.LockResult, lock bool) {
	for _, s := range res.Servers {
		state := "locked"
		if !s.Locked {
			state = "NOT locked"
		}
		if !lock {
			state = "released"
			if s.Locked {
				state = "still refused"
			}
		}
		fmt.Fprintf(e.stdout, "%s: %s — proof: %d of %d key(s) refused to %q\n", s.Server, state, s.Refused, s.Keys, res.Identity)
		if len(s.Enforces) > 0 {
			fmt.Fprintf(e.stdout, "  enforces: %s\n", strings.Join(s.Enforces, "; "))
		}
		if len(s.Applied) > 0 {
			fmt.Fprintf(e.stdout, "  applied: %s\n", strings.Join(s.Applied, "; "))
		}
		if s.Error != "" {
			fmt.Fprintf(e.stdout, "  error: %s\n", s.Error)
		}
		if s.Advice != "" {
			fmt.Fprintf(e.stdout, "  what to do: %s\n", s.Advice)
		}
	}
}

func cmdLock(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "lock", "")
	af := addArrayFlags(fs, true)
	revoke := fs.Bool("revoke", false, "also revoke the keys where the server refuses revoked keys (cannot be undone: only a backup recovers the array)")
	yes := fs.Bool("yes", false, "do not ask for the typed confirmation of --revoke (automation)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	o, err := openArray(ctx, e, af, true)
	if err != nil {
		return err
	}
	defer o.Close()
	a := o.a
	if *revoke {
		msg := fmt.Sprintf("Revoking the keys of array %s on its key servers cannot be undone: afterwards the array boots again only\n"+
			"after its keys are restored from a backup file (sedctl backup restore) once the revoked objects are destroyed.", a.Doc.Array.Serial)
		if err := newLines(e).confirm(*yes, msg, a.Doc.Array.Serial); err != nil {
			return err
		}
	}
	res, err := a.Lock(ctx, lifecycle.LockOptions{Revoke: *revoke})
	if *af.json {
		if perr := printJSON(e, res); perr != nil {
			return perr
		}
	} else {
		printLock(e, res, true)
	}
	if err != nil {
		if errors.Is(err, lifecycle.ErrNotEnforced) {
			fmt.Fprintf(e.stderr, "sedctl lock: array %s is NOT locked: a key server still releases its keys (see above)\n", a.Doc.Array.Serial)
			return exitError{1}
		}
		return err
	}
	if !*af.json {
		fmt.Fprintf(e.stdout, "array %s is cryptographically locked: its drives stay locked at the next boot\n", a.Doc.Array.Serial)
	}
	return nil
}

func cmdUnlock(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "unlock", "")
	af := addArrayFlags(fs, true)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	o, err := openArray(ctx, e, af, true)
	if err != nil {
		return err
	}
	defer o.Close()
	res, err := o.a.Unlock(ctx)
	if *af.json {
		if perr := printJSON(e, res); perr != nil {
			return perr
		}
	} else {
		printLock(e, res, false)
	}
	if err != nil {
		return err
	}
	if !*af.json {
		fmt.Fprintf(e.stdout, "array %s: every key server releases its keys again\n", res.Array)
	}
	return nil
}

// --- preflight ----------------------------------------------------------

func cmdPreflight(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "preflight", "")
	af := addArrayFlags(fs, false)
	skipNet := fs.Bool("skip-network", false, "leave out the interface and route checks")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	o, err := openArray(ctx, e, af, false)
	if err != nil {
		return err
	}
	defer o.Close()
	rep, err := o.a.Preflight(ctx, lifecycle.PreflightOptions{SkipNetwork: *skipNet})
	if err != nil {
		return err
	}
	if *af.json {
		if err := printJSON(e, rep); err != nil {
			return err
		}
	} else {
		w := table(e)
		for _, c := range rep.Checks {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.Result, c.Area, c.Subject, c.Detail)
		}
		w.Flush()
		if len(rep.Matrix) > 0 {
			fmt.Fprintln(e.stdout, "\nkeys (drive x key server; checked against each drive's key verifier, no Opal try spent):")
			w = table(e)
			fmt.Fprintf(w, "  DRIVE\t%s\t\n", strings.Join(rep.Servers, "\t"))
			for _, d := range rep.Drives {
				var cells []string
				for _, s := range rep.Servers {
					c, _ := rep.Cell(d, s)
					v := c.Result
					if c.Result == lifecycle.ResultOK {
						v = fmt.Sprintf("ok (gen %d)", c.Generation)
					}
					cells = append(cells, v)
				}
				fmt.Fprintf(w, "  %s\t%s\t\n", d, strings.Join(cells, "\t"))
			}
			w.Flush()
		}
		fmt.Fprintf(e.stdout, "\nverdict: %s (%s)\n", strings.ToUpper(rep.Verdict), rep.Elapsed.Round(time.Millisecond))
		for _, b := range rep.Broken {
			fmt.Fprintln(e.stdout, "  broken: "+b)
		}
	}
	switch rep.Verdict {
	case lifecycle.VerdictFail:
		return exitError{1}
	case lifecycle.VerdictWarn:
		return exitError{exitWarn}
	}
	return nil
}

// --- unlock-drive -------------------------------------------------------

// multiFlag collects a repeated flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdUnlockDrive(ctx context.Context, e *env, args []string) error {
	fs := flags(e, "unlock-drive", "--backup FILE (--drive SERIAL|PATH ... | --all)")
	medium := mediumFlag(fs)
	file := fs.String("backup", "", "the backup file holding the drive's key (required)")
	passFile := fs.String("passphrase-file", "", "read the passphrase from this file (default: ask on the terminal, else one line of standard input)")
	var which multiFlag
	fs.Var(&which, "drive", "serial number or device path of a drive to unlock (repeatable)")
	all := fs.Bool("all", false, "unlock every drive the backup has a key for")
	force := fs.Bool("force", false, "present the most likely key once to a drive without a readable key verifier (a wrong key costs a try)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *file == "" {
		return usageError{"--backup FILE is required"}
	}
	if len(which) == 0 && !*all {
		return usageError{"name the drive(s) with --drive, or use --all"}
	}
	// The boot medium, when readable, says which generation to try first.
	var doc *config.Document
	if m, c, err := openMedium(e, *medium); err == nil {
		doc, err = loadDoc(m)
		c.Close()
		if err != nil {
			fmt.Fprintf(e.stderr, "warning: boot medium unreadable (%v): trying the backup's generations newest first\n", err)
		}
	} else {
		fmt.Fprintf(e.stderr, "warning: no boot medium (%v): trying the backup's generations newest first\n", err)
	}
	set, err := readBackupFile(newLines(e), *file, *passFile)
	if err != nil {
		return err
	}
	defer set.Zero()
	drives, closer, err := findDrives(ctx, e)
	if err != nil {
		return err
	}
	defer closer.Close()
	var results []*lifecycle.DriveUnlock
	var failed []string
	matched := map[string]bool{}
	for _, d := range drives {
		serial, _ := d.Serial()
		want := *all
		for _, w := range which {
			if w == serial || w == d.Name() {
				want, matched[w] = true, true
			}
		}
		if !want {
			continue
		}
		var prefer []int
		if doc != nil {
			for _, c := range doc.Candidates(serial) {
				prefer = append(prefer, c.Generation)
			}
		}
		res, err := lifecycle.UnlockFromBackup(ctx, d, set, prefer, *force)
		if err != nil {
			if *all && strings.Contains(err.Error(), "holds no key") {
				continue
			}
			failed = append(failed, err.Error())
			fmt.Fprintf(e.stderr, "%s %s: %v\n", d.Name(), serial, err)
			continue
		}
		results = append(results, res)
	}
	for _, w := range which {
		if !matched[w] {
			failed = append(failed, fmt.Sprintf("no drive %q", w))
		}
	}
	if *asJSON {
		if err := printJSON(e, results); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			note := ""
			if r.AlreadyUnlocked {
				note = " (it was not locked)"
			}
			if len(r.Skipped) > 0 {
				note += fmt.Sprintf(" (generation(s) %v did not match its verifier; not presented)", r.Skipped)
			}
			fmt.Fprintf(e.stdout, "%s %s unlocked with generation %d%s\n", r.Device, r.Drive, r.Generation, note)
		}
	}
	if len(failed) > 0 {
		slices.Sort(failed)
		return fmt.Errorf("%d drive(s) not unlocked: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}
