package boot

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/agent/bootrecord"
	"github.com/sedboot/sedboot/agent/keysource"
	"github.com/sedboot/sedboot/agent/steps"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/unlock"
)

// Drive results in the boot record.
const (
	ResultUnlocked     = "unlocked"
	ResultLocked       = "locked"
	ResultNotEncrypted = "not-encrypted"
	ResultNoKey        = "no-key"
	ResultFailed       = "failed"
	ResultRelocked     = "relocked"
	ResultMissing      = "missing"
)

// driveState is one drive during the boot.
type driveState struct {
	cand    sed.Candidate
	drive   *sed.Drive
	serial  string
	sum     *sed.Summary
	rec     bootrecord.Drive
	keyed   bool           // the inventory holds a key for it
	pin     *secret.Secret // Admin1 PIN while unlocked by this boot
	unlockd bool
}

func (d *driveState) name() string { return d.cand.Name }

// opalLocked reports a drive whose data cannot be read now.
func (d *driveState) opalLocked() bool {
	return d.sum != nil && d.sum.LockingEnabled && d.sum.Locked && !d.unlockd
}

// stepDrives enumerates the drives and reads Level 0 discovery of each. It
// waits (bounded) for the drives the key inventory names; one still absent
// at the end is reported and the boot goes on without it.
func (a *Agent) stepDrives(ctx context.Context) error {
	want := map[string]bool{}
	for _, s := range a.doc.Keys.Drives() {
		want[s] = true
	}
	// Wait for the inventory's drives within most of the step's time,
	// keeping the rest for discovery.
	wait := time.Duration(0)
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl) * 3 / 4
	}
	waitCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var cands []sed.Candidate
	delay := 20 * time.Millisecond
	for {
		var err error
		cands, err = sed.Enumerate(ctx, "/")
		if err != nil {
			return fmt.Errorf("enumerate drives: %w", err)
		}
		cands = a.withoutMedium(cands)
		missing := missingSerials(want, cands)
		if len(missing) == 0 {
			break
		}
		select {
		case <-waitCtx.Done():
			for _, s := range missing {
				a.Printf("  warning: drive %s of the key inventory is not present", s)
				a.record.SetDrive(bootrecord.Drive{Serial: s, Result: ResultMissing, TriesLeft: -1, Error: "not present at boot"})
			}
		case <-time.After(delay):
			delay = min(2*delay, 250*time.Millisecond)
			continue
		}
		break
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].Name < cands[j].Name })

	states := make([]*driveState, len(cands))
	var wg sync.WaitGroup
	for i, c := range cands {
		wg.Add(1)
		go func() {
			defer wg.Done()
			states[i] = a.discover(ctx, c, want)
		}()
	}
	wg.Wait()
	a.drives = states
	keyed := 0
	for _, d := range states {
		if d.keyed {
			keyed++
		}
		a.record.SetDrive(d.rec)
		a.Printf("  %-8s %-20s %s", d.name(), d.serial, describe(d))
	}
	a.Printf("  %d drive(s), %d with a key in the inventory", len(states), keyed)
	return ctx.Err()
}

func describe(d *driveState) string {
	if d.rec.Error != "" && d.sum == nil {
		return d.rec.Error
	}
	s := d.sum
	if !s.Opal() {
		return "no TCG Opal locking (" + s.String() + ")"
	}
	state := "locking not enabled"
	if s.LockingEnabled {
		state = "locking enabled, unlocked"
		if s.Locked {
			state = "locking enabled, locked"
		}
	}
	return string(s.SSC) + ", " + state
}

func (a *Agent) discover(ctx context.Context, c sed.Candidate, want map[string]bool) *driveState {
	d := &driveState{cand: c, serial: c.Serial}
	d.rec = bootrecord.Drive{Serial: c.Serial, Path: c.Path, Model: c.Model, TriesLeft: -1}
	drv, err := sed.Open(c.Path, sed.WithLogger(a.log))
	if err != nil {
		d.rec.Result, d.rec.Error = ResultNotEncrypted, fmt.Sprintf("cannot open: %v", err)
		return d
	}
	d.drive = drv
	if s, err := drv.Serial(); err == nil && s != "" {
		d.serial = s
		d.rec.Serial = s
	}
	d.keyed = want[d.serial]
	sum, err := drv.Discover(ctx)
	if err != nil {
		d.rec.Result, d.rec.Error = ResultNotEncrypted, fmt.Sprintf("level 0 discovery: %v", err)
		if d.keyed {
			d.rec.Result = ResultFailed
		}
		return d
	}
	d.sum = sum
	switch {
	case !sum.Opal() || !sum.LockingEnabled:
		d.rec.Result = ResultNotEncrypted
	case sum.Locked:
		d.rec.Result = ResultLocked
	default:
		d.rec.Result = ResultUnlocked
	}
	if !d.keyed && sum.Opal() && sum.LockingEnabled {
		d.rec.Result = ResultNoKey
		if sum.Locked {
			d.rec.Error = "locked, and the key inventory has no key for it"
		}
	}
	return d
}

// withoutMedium drops the controller holding the boot medium.
func (a *Agent) withoutMedium(cands []sed.Candidate) []sed.Candidate {
	medium := filepath.Base(a.medium)
	out := cands[:0]
	for _, c := range cands {
		holds := false
		for _, b := range c.BlockDevices {
			if bb := filepath.Base(b); a.medium != "" && (medium == bb || strings.HasPrefix(medium, bb+"p")) {
				holds = true
			}
		}
		if !holds {
			out = append(out, c)
			continue
		}
		for _, b := range c.BlockDevices {
			a.mediumDevs[filepath.Base(b)] = true
		}
	}
	return out
}

func missingSerials(want map[string]bool, cands []sed.Candidate) []string {
	have := map[string]bool{}
	for _, c := range cands {
		have[c.Serial] = true
	}
	var out []string
	for s := range want {
		if !have[s] {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// keyedDrives returns the drives that need a key this boot.
func (a *Agent) keyedDrives() []*driveState {
	var out []*driveState
	for _, d := range a.drives {
		if d.keyed && d.drive != nil && d.sum != nil && d.sum.LockingEnabled {
			out = append(out, d)
		}
	}
	return out
}

// Sources builds the key sources the document configures: the external
// KMIP servers in mode external.
func Sources(doc *config.Document, keyAttempt, total time.Duration) ([]keysource.Source, error) {
	if doc.Mode != config.ModeExternal {
		return nil, nil
	}
	if doc.KMS == nil {
		return nil, errors.New("mode external without a kms section")
	}
	cfg := kms.Config{
		CAPEM:          []byte(doc.KMS.CA),
		CertPEM:        []byte(doc.KMS.ClientCert),
		KeyPEM:         []byte(doc.KMS.ClientKey),
		Version:        doc.KMS.Version,
		AttemptTimeout: keyAttempt,
		TotalTimeout:   total,
	}
	for _, s := range doc.KMS.Servers {
		cfg.Servers = append(cfg.Servers, kms.Server{Name: s.Name, Address: s.Address, ServerName: s.ServerName})
	}
	c, err := kms.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	return []keysource.Source{&keysource.KMIP{Client: c, Group: keys.Group(doc.Array.Prefix(), doc.Array.Serial)}}, nil
}

// stepKeys fetches every key any present drive may need, in one batched
// request per server. It fails, before any drive is touched, when a keyed
// drive has no candidate key.
func (a *Agent) stepKeys(ctx context.Context) error {
	if a.doc.Mode == config.ModeNone {
		return steps.Skip("encryption not enabled (mode none)")
	}
	need := a.keyedDrives()
	if len(need) == 0 {
		return steps.Skip("no drive with locking enabled has a key in the inventory")
	}
	var reqs []keysource.Request
	for _, d := range need {
		for _, c := range a.doc.Candidates(d.serial) {
			reqs = append(reqs, keysource.Request{Drive: d.serial, Generation: c.Generation, Name: c.Name, IDs: c.IDs})
		}
	}
	var sources []keysource.Source
	var err error
	if a.opts.Sources != nil {
		sources, err = a.opts.Sources(a.doc)
	} else {
		total := DefaultKeys
		if dl, ok := ctx.Deadline(); ok {
			total = time.Until(dl)
		}
		sources, err = Sources(a.doc, a.doc.Deadlines.KeyAttempt.D(DefaultKeyAttempt), total)
	}
	if err != nil {
		return steps.WithHint(err, "the kms section of the boot medium (CA, client certificate and key)")
	}
	if len(sources) == 0 {
		return steps.WithHint(fmt.Errorf("mode %s has no key source", a.doc.Mode), "the boot medium's mode and key servers")
	}
	all := &keysource.Result{Missing: map[string]string{}}
	a.fetched = all
	var errs []error
	pending := reqs
	for _, src := range sources {
		if len(pending) == 0 {
			break
		}
		res, err := src.Fetch(ctx, pending)
		if res != nil {
			all.Keys = append(all.Keys, res.Keys...)
			all.Attempts = append(all.Attempts, res.Attempts...)
			a.record.AddKeyServers(res.Attempts)
			for _, at := range res.Attempts {
				status := fmt.Sprintf("%d key(s) in %d request(s)", at.Keys, at.Requests)
				if at.Error != "" {
					status = "failed: " + oneLine(at.Error, 200)
				}
				a.Printf("  %s %s: %s (%s)", at.Source, at.Server, status, at.Latency.Round(time.Millisecond))
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
		}
		got := map[string]bool{}
		for _, k := range all.Keys {
			got[k.Name] = true
		}
		var rest []keysource.Request
		for _, r := range pending {
			if !got[r.Name] {
				rest = append(rest, r)
				if res != nil && res.Missing[r.Name] != "" {
					all.Missing[r.Name] = res.Missing[r.Name]
				}
			}
		}
		pending = rest
	}
	// Every keyed drive needs at least one of its candidates.
	have := map[string]bool{}
	for _, k := range all.Keys {
		have[k.Drive] = true
	}
	var without []string
	reasons := map[string]bool{}
	var why []string
	for _, d := range need {
		if have[d.serial] {
			continue
		}
		without = append(without, d.serial)
		for _, c := range a.doc.Candidates(d.serial) {
			if r := oneLine(all.Missing[c.Name], 200); r != "" && !reasons[r] {
				reasons[r] = true
				why = append(why, r)
			}
		}
		d.rec.Result, d.rec.Error = ResultLocked, "no key released"
		a.record.SetDrive(d.rec)
	}
	if len(without) == 0 {
		a.Printf("  %d key(s) for %d drive(s)", len(all.Keys), len(need))
		return nil
	}
	all.Zero()
	err = fmt.Errorf("no key released for %d of %d drive(s) (%s)", len(without), len(need), strings.Join(without, ", "))
	switch {
	case len(why) == 1:
		err = fmt.Errorf("%w: %s", err, why[0])
	case len(why) > 1:
		err = fmt.Errorf("%w: %s (and %d more)", err, why[0], len(why)-1)
	}
	// The sources' own errors classify the failure (errors.Is) for the
	// hint; their text repeats the reasons above, so it is not shown.
	err = &classified{msg: err.Error(), causes: errs}
	return steps.WithHint(err, keysHint(err))
}

// classified is an error whose message is msg and which matches the
// causes with errors.Is.
type classified struct {
	msg    string
	causes []error
}

func (c *classified) Error() string   { return c.msg }
func (c *classified) Unwrap() []error { return c.causes }

// oneLine flattens a multi-line message and bounds its length.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// keysHint says what to check for a failed key fetch.
func keysHint(err error) string {
	switch {
	case errors.Is(err, kms.ErrTLSConfig):
		return "the array's client certificate and the key servers' CA on the boot medium, and the server names in kms.servers"
	case errors.Is(err, kms.ErrDenied):
		return "the key server refused to release the keys: the array may be cryptographically locked (sedctl lock), or its keys revoked or made non-extractable; check the array's access on the key server"
	case errors.Is(err, kms.ErrNotFound):
		return "the keys named in the boot medium's inventory exist on the key servers (sedctl kms check)"
	case errors.Is(err, kms.ErrTransport), errors.Is(err, context.DeadlineExceeded):
		return "the key servers run and are reachable from the management network (addresses in kms.servers, routes, firewall)"
	}
	return "the key servers (sedctl kms check from the recovery shell)"
}

// stepUnlock unlocks every keyed drive in parallel. A drive's candidate keys
// are tried in the inventory's order; a key the drive's verifier rejects is
// never presented, and a drive that rejected a presentation gets no second
// one this boot. If any keyed drive stays locked, the drives unlocked here
// are locked again and the step fails.
func (a *Agent) stepUnlock(ctx context.Context) error {
	if a.fetched == nil || len(a.fetched.Keys) == 0 {
		return steps.Skip("no keys fetched")
	}
	byDrive := map[string][]keysource.Key{}
	for _, k := range a.fetched.Keys {
		byDrive[k.Drive] = append(byDrive[k.Drive], k)
	}
	var need []*driveState
	for _, d := range a.keyedDrives() {
		if d.sum.Locked {
			need = append(need, d)
			continue
		}
		// Locking is enabled but nothing is locked after power-on: the
		// drive does not lock on power cycle (an interrupted enable), so
		// there is nothing to unlock, and it protects nothing.
		d.rec.Error = "locking enabled but not locked at power-on: lock on power cycle is not configured (finish it with sedctl enable)"
		a.record.SetDrive(d.rec)
		a.Printf("  %-8s %-20s WARNING: not locked at power-on; lock on power cycle is not configured (run sedctl enable again)", d.name(), d.serial)
	}
	var wg sync.WaitGroup
	for _, d := range need {
		ks := byDrive[d.serial]
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.unlockOne(ctx, d, a.order(d.serial, ks))
		}()
	}
	wg.Wait()
	// Every fetched key is zeroed now: only the unlocked drives' Admin1
	// PINs remain, for locking them again if the boot fails.
	a.fetched.Zero()
	var failed []string
	var errs []string
	for _, d := range need {
		a.record.SetDrive(d.rec)
		if !d.unlockd {
			failed = append(failed, d.serial)
			errs = append(errs, fmt.Sprintf("%s: %s", d.serial, d.rec.Error))
		}
	}
	unlocked := len(need) - len(failed)
	if len(failed) == 0 {
		a.Printf("  %d of %d drive(s) unlocked", unlocked, len(need))
		return nil
	}
	relocked := a.relockAll()
	err := fmt.Errorf("%d of %d drive(s) could not be unlocked (%s); %d drive(s) unlocked this boot locked again",
		len(failed), len(need), strings.Join(errs, "; "), relocked)
	return steps.WithHint(err, "the key inventory on the boot medium matches the keys on the key servers (sedctl preflight); a drive that refused a key counts one try until it is power cycled")
}

// order returns ks in the order the document's candidates list them.
func (a *Agent) order(serial string, ks []keysource.Key) []keysource.Key {
	var out []keysource.Key
	for _, c := range a.doc.Candidates(serial) {
		for _, k := range ks {
			if k.Name == c.Name {
				out = append(out, k)
			}
		}
	}
	return out
}

func (a *Agent) unlockOne(ctx context.Context, d *driveState, ks []keysource.Key) {
	start := time.Now()
	defer func() { d.rec.Latency = time.Since(start) }()
	cands := make([]unlock.Candidate, len(ks))
	for i, k := range ks {
		cands[i] = unlock.Candidate{Generation: k.Generation, Source: k.Source, Server: k.Server, Key: k.Secret}
	}
	res := unlock.Drive(ctx, d.drive, d.serial, cands, unlock.KeepPIN(), unlock.OnRetry(func(refused, next int) {
		a.Printf("  %-8s %-20s generation %d refused during an interrupted key change; trying generation %d", d.name(), d.serial, refused, next)
	}))
	if res.Tries.Known {
		d.rec.TriesLeft = res.Tries.Left()
	}
	d.rec.Presentations += res.Presentations
	if res.Unlocked {
		d.pin, d.unlockd = res.PIN, true
		d.rec.Result, d.rec.Error = ResultUnlocked, ""
		d.rec.Source, d.rec.Server, d.rec.Generation = res.Source, res.Server, res.Generation
		tries := ""
		if res.Tries.Known {
			tries = ", " + res.Tries.String()
		}
		a.Printf("  %-8s %-20s unlocked (generation %d from %s %s, %s%s)", d.name(), d.serial, res.Generation, res.Source, res.Server,
			time.Since(start).Round(time.Millisecond), tries)
		return
	}
	d.rec.Result, d.rec.Error = ResultFailed, res.Err.Error()
	a.Printf("  %-8s %-20s NOT unlocked: %v", d.name(), d.serial, res.Err)
}

// relockAll locks again every drive this boot unlocked and forgets the
// PINs. It returns how many it locked.
func (a *Agent) relockAll() int {
	n := 0
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, d := range a.drives {
		if !d.unlockd || d.pin == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d.drive.Lock(ctx, d.pin.Bytes())
			d.pin.Zero()
			d.pin = nil
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				a.Printf("  %-8s %-20s could NOT be locked again: %v (power cycle it)", d.name(), d.serial, err)
				d.rec.Error = "lock again failed: " + err.Error()
			} else {
				n++
				d.unlockd = false
				d.rec.Result = ResultRelocked
				a.Printf("  %-8s %-20s locked again", d.name(), d.serial)
			}
			a.record.SetDrive(d.rec)
		}()
	}
	wg.Wait()
	return n
}

// forgetPINs zeroes the PINs kept for locking the drives again.
func (a *Agent) forgetPINs() {
	for _, d := range a.drives {
		if d.pin != nil {
			d.pin.Zero()
			d.pin = nil
		}
	}
}

// closeDrives releases the drives' file descriptors.
func (a *Agent) closeDrives() {
	for _, d := range a.drives {
		if d.drive != nil {
			d.drive.Close()
		}
	}
}

// stepPartitions makes the kernel re-read the partition tables of the
// drives unlocked this boot: it scanned them while they were locked.
func (a *Agent) stepPartitions(ctx context.Context) error {
	n := 0
	for _, d := range a.drives {
		if !d.unlockd {
			continue
		}
		for _, b := range d.cand.BlockDevices {
			if err := rereadPartitions(b); err != nil {
				a.log.Warn("re-read partitions", "device", b, "err", err)
				continue
			}
			n++
		}
	}
	if n == 0 {
		return steps.Skip("no drive was unlocked")
	}
	a.Printf("  partition tables re-read on %d device(s)", n)
	return ctx.Err()
}

func rereadPartitions(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for range 10 {
		err = unix.IoctlSetInt(fd, unix.BLKRRPART, 0)
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("BLKRRPART %s: %w", dev, err)
	}
	return nil
}
