package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
)

// Lock mechanisms, as reported.
const (
	MechExtractable = "Extractable=false"
	MechSensitive   = "Sensitive=true"
	MechGrant       = "array identity's get right withdrawn"
	MechRevoked     = "revoked (irreversible)"
	MechOutside     = "refused by the server's own policy"
)

// LockOptions adjusts Lock.
type LockOptions struct {
	// Revoke also revokes the keys where the server refuses Get of a
	// revoked key. Revocation cannot be undone: afterwards only a backup
	// (restored once the revoked objects are destroyed) recovers the
	// array.
	Revoke bool
}

// ServerLock reports the cryptographic lock on one server.
type ServerLock struct {
	Server string `json:"server"`
	// Enforces lists the ways of refusing a Get the capability probe
	// found the server enforces.
	Enforces []string `json:"enforces,omitempty"`
	// Applied lists the mechanisms this run applied or reversed.
	Applied []string `json:"applied,omitempty"`
	// Keys is the number of the array's live keys on the server; Refused
	// how many the array's identity was refused (the proof).
	Keys    int `json:"keys"`
	Refused int `json:"refused"`
	// Released names keys the array's identity still obtained.
	Released []string `json:"released,omitempty"`
	// Locked: every key refused to the array's identity.
	Locked bool `json:"locked"`
	// Advice says what the server's administrator must do.
	Advice string `json:"advice,omitempty"`
	Error  string `json:"error,omitempty"`
}

// LockResult reports Lock or Unlock.
type LockResult struct {
	Array string `json:"array"`
	// Identity is the array's identity the proof used.
	Identity string        `json:"identity"`
	Servers  []ServerLock  `json:"servers"`
	KMS      Stats         `json:"kms"`
	Elapsed  time.Duration `json:"elapsed_ns"`
}

// Lock locks the array cryptographically: on every key server it applies
// the strongest reversible mechanisms the server enforces (found by a
// capability probe) — Extractable=false, withdrawing the array identity's
// get right, or Sensitive=true — and, with opts.Revoke, revocation; then it
// proves the lock by fetching every key with the array's own identity.
// It fails with ErrNotEnforced when any server still releases a key,
// with advice for that server's administrator.
func (a *Array) Lock(ctx context.Context, opts LockOptions) (*LockResult, error) {
	return a.lockOrUnlock(ctx, true, opts)
}

// Unlock reverses Lock where the mechanism is reversible (Extractable,
// Sensitive, grants; not revocation) and proves that the array's identity
// obtains every key again, with the right values.
func (a *Array) Unlock(ctx context.Context) (*LockResult, error) {
	return a.lockOrUnlock(ctx, false, LockOptions{})
}

func (a *Array) lockOrUnlock(ctx context.Context, lock bool, opts LockOptions) (*LockResult, error) {
	t0 := time.Now()
	a.begin(map[bool]string{true: "lock", false: "unlock"}[lock])
	res := &LockResult{Array: a.Doc.Array.Serial}
	defer func() { res.KMS, res.Elapsed = a.kmsStats, time.Since(t0) }()
	if a.Doc.Mode != config.ModeExternal || len(openingGenerations(a.Doc)) == 0 {
		return res, ErrNotEnabled
	}
	if a.Admin == nil {
		return res, errors.New("no administrator key-server client")
	}
	ident, err := ArrayIdentity(a.Doc)
	if err != nil {
		return res, err
	}
	res.Identity = ident
	agent, err := a.agent()
	if err != nil {
		return res, err
	}
	var failed []string
	for _, srv := range a.Admin.Servers() {
		sl := ServerLock{Server: srv.Label()}
		if lock {
			err = a.lockServer(ctx, srv, agent, ident, opts, &sl)
		} else {
			err = a.unlockServer(ctx, srv, agent, ident, &sl)
		}
		if err != nil {
			sl.Error = err.Error()
			failed = append(failed, fmt.Sprintf("%s: %v", srv.Label(), err))
		} else if lock != sl.Locked {
			failed = append(failed, srv.Label())
		}
		res.Servers = append(res.Servers, sl)
	}
	if len(failed) > 0 {
		if lock {
			return res, fmt.Errorf("%w: %s", ErrNotEnforced, strings.Join(failed, "; "))
		}
		return res, fmt.Errorf("the array identity %q still cannot fetch every key: %s", ident, strings.Join(failed, "; "))
	}
	return res, nil
}

// liveKeys returns the array's keys that may open a drive (see
// openingGenerations), with their identifiers on srv (looked up where the
// inventory has none).
func (a *Array) liveKeys(ctx context.Context, c *kms.Conn, srv string) ([]config.DriveKey, []string, error) {
	var dks []config.DriveKey
	var ids []string
	var lookup []string
	for _, g := range openingGenerations(a.Doc) {
		for _, dk := range g.Drives {
			dks = append(dks, dk)
			ids = append(ids, dk.IDs[srv])
			if dk.IDs[srv] == "" {
				lookup = append(lookup, dk.Name)
			}
		}
	}
	if len(lookup) > 0 {
		found, errs, err := c.LocateNames(ctx, a.group(), lookup)
		if err != nil {
			return nil, nil, err
		}
		for i, n := range lookup {
			if errs[i] != nil {
				return nil, nil, fmt.Errorf("key %s: %w", n, errs[i])
			}
			for j := range dks {
				if dks[j].Name == n {
					ids[j] = found[i]
				}
			}
		}
	}
	return dks, ids, nil
}

func (a *Array) lockServer(ctx context.Context, srv kms.Server, agent *kms.Client, ident string, opts LockOptions, sl *ServerLock) error {
	c, err := a.connect(ctx, a.Admin, srv)
	if err != nil {
		return err
	}
	defer a.release(c)
	ac, err := a.connect(ctx, agent, serverByLabel(agent, srv.Label()))
	if err != nil {
		return fmt.Errorf("array identity: %w", err)
	}
	defer a.release(ac)
	dks, ids, err := a.liveKeys(ctx, c, srv.Label())
	if err != nil {
		return err
	}
	sl.Keys = len(dks)
	a.progress("probe", "", srv.Label(), "probing which ways of refusing a Get the server enforces")
	caps, err := c.Probe(ctx, kms.ProbeOptions{Other: ac, Prefix: a.prefix() + "-probe"})
	if err != nil {
		return fmt.Errorf("capability probe: %w", err)
	}
	for _, chk := range []string{kms.RefuseExtractable, kms.RefuseSensitive, kms.RefusePolicy, kms.RefuseRevoked} {
		if caps.Has(chk) {
			sl.Enforces = append(sl.Enforces, chk)
		}
	}
	names := make([]string, len(dks))
	for i, dk := range dks {
		names[i] = dk.Name
	}
	// Each mechanism is one batched request over every key (two for the
	// attributes: Get Attributes, then Modify or Add).
	apply := func(mech string, ignore func(error) bool, f func() (kms.Results, error)) error {
		res, err := f()
		if err == nil {
			err = keyErrors(res, names, ignore)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", mech, err)
		}
		sl.Applied = append(sl.Applied, mech)
		a.progress("lock", "", srv.Label(), "%s on %d keys", mech, len(ids))
		return nil
	}
	var notes []string
	if caps.Has(kms.RefuseExtractable) {
		if err := apply(MechExtractable, nil, func() (kms.Results, error) { return c.SetExtractableAll(ctx, ids, false) }); err != nil {
			notes = append(notes, err.Error())
		}
	}
	self, _ := a.adminIsAgent(srv)
	if caps.Has(kms.RefusePolicy) && !self {
		err := apply(MechGrant, nil, func() (kms.Results, error) { return c.AddAttributeAll(ctx, ids, kms.GrantAttribute, ident+"=read") })
		if err != nil {
			notes = append(notes, err.Error())
		}
	}
	if len(sl.Applied) == 0 && caps.Has(kms.RefuseSensitive) {
		if err := apply(MechSensitive, nil, func() (kms.Results, error) { return c.SetSensitiveAll(ctx, ids, true) }); err != nil {
			notes = append(notes, err.Error())
		}
	}
	if opts.Revoke && caps.Has(kms.RefuseRevoked) {
		err := apply(MechRevoked, notFound, func() (kms.Results, error) {
			return c.RevokeAll(ctx, ids, kms.RevokeCessation, "sedboot cryptographic lock")
		})
		if err != nil {
			notes = append(notes, err.Error())
		}
	}

	// The proof: the array's own identity must be refused every key.
	released, refused, err := agentFetch(ctx, ac, dks, ids, nil)
	if err != nil {
		return fmt.Errorf("proof (Get as %q): %w", ident, err)
	}
	sl.Refused, sl.Released = refused, released
	sl.Locked = len(released) == 0
	if sl.Locked && len(sl.Applied) == 0 {
		sl.Applied = append(sl.Applied, MechOutside)
	}
	if !sl.Locked {
		sl.Advice = lockAdvice(caps, ident, a.group(), opts.Revoke, notes)
	}
	a.progress("lock", "", srv.Label(), "proof: %d of %d keys refused to %q", refused, len(dks), ident)
	return nil
}

// adminIsAgent reports whether the administrator client presents the
// array's own identity (then grants cannot separate the two).
func (a *Array) adminIsAgent(kms.Server) (bool, error) {
	ident, err := ArrayIdentity(a.Doc)
	if err != nil {
		return false, err
	}
	return ClientIdentity(a.Admin.Config()) == ident, nil
}

// ClientIdentity returns the common name of a client configuration's
// certificate ("" when it has none or it cannot be read).
func ClientIdentity(cfg kms.Config) string {
	p := cfg.CertPEM
	if len(p) == 0 && cfg.CertFile != "" {
		b, err := os.ReadFile(cfg.CertFile)
		if err != nil {
			return ""
		}
		p = b
	}
	cert, err := firstCert(string(p))
	if err != nil {
		return ""
	}
	return cert.Subject.CommonName
}

func lockAdvice(caps *kms.Capabilities, ident, group string, revoked bool, notes []string) string {
	vendor := "this server"
	if caps.Info != nil && caps.Info.Vendor != "" {
		vendor = caps.Info.Vendor
	}
	var b strings.Builder
	switch {
	case caps.Has(kms.RefuseRevoked) && !revoked:
		fmt.Fprintf(&b, "%s refuses Get only for revoked keys, which cannot be undone: run 'sedctl lock --revoke' (after 'sedctl backup create') to lock by revocation, or", vendor)
	default:
		fmt.Fprintf(&b, "%s enforces none of Extractable=false, Sensitive=true, revocation or per-identity grants that a client can change, so sedboot cannot lock it. Its administrator must", vendor)
	}
	fmt.Fprintf(&b, " make the server stop releasing the objects of group %q to the identity %q: withdraw that identity's access in the server's own policy, or stop accepting its certificate (revoke it at the CA the server trusts, or remove that CA from the server's client CA bundle). Then run 'sedctl lock' again to prove it.", group, ident)
	if len(notes) > 0 {
		fmt.Fprintf(&b, " (Failed: %s.)", strings.Join(notes, "; "))
	}
	return b.String()
}

// agentFetch fetches ids with the array identity's connection; with
// want, released values must equal it. It returns the names released and
// the number refused.
func agentFetch(ctx context.Context, ac *kms.Conn, dks []config.DriveKey, ids []string, want keySet) ([]string, int, error) {
	secs, errs, err := ac.GetSecrets(ctx, ids)
	if err != nil {
		return nil, 0, err
	}
	var released []string
	refused := 0
	for i, s := range secs {
		if errs[i] != nil {
			if errors.Is(errs[i], kms.ErrDenied) || errors.Is(errs[i], kms.ErrNotFound) {
				refused++
				continue
			}
			for _, s := range secs[i+1:] {
				s.Zero()
			}
			return nil, 0, errs[i]
		}
		if want != nil && (want[dks[i].Name] == nil || !want[dks[i].Name].Equal(s)) {
			s.Zero()
			return nil, 0, fmt.Errorf("%w: %s as released to the array identity", ErrKeyConflict, dks[i].Name)
		}
		s.Zero()
		released = append(released, dks[i].Name)
	}
	return released, refused, nil
}

func (a *Array) unlockServer(ctx context.Context, srv kms.Server, agent *kms.Client, ident string, sl *ServerLock) error {
	c, err := a.connect(ctx, a.Admin, srv)
	if err != nil {
		return err
	}
	defer a.release(c)
	dks, ids, err := a.liveKeys(ctx, c, srv.Label())
	if err != nil {
		return err
	}
	sl.Keys = len(dks)
	var revoked []string
	counts := map[string]int{}
	self, _ := a.adminIsAgent(srv)
	// One batched Get Attributes, then every change in one batched
	// request.
	attrs, aerrs, err := c.GetAttributesAll(ctx, ids)
	if err != nil {
		return err
	}
	const (
		extractable = "Extractable=true"
		sensitive   = "Sensitive=false"
		getRight    = "get right restored"
	)
	var changes []kms.AttributeChange
	var kinds []string
	var keyOf []int
	for i, id := range ids {
		if aerrs[i] != nil {
			return fmt.Errorf("key %s: %w", dks[i].Name, aerrs[i])
		}
		at := attrs[i]
		switch at.State {
		case kms.StateDeactivated, kms.StateCompromised, kms.StateDestroyed, kms.StateDestroyedCompromised:
			revoked = append(revoked, dks[i].Name)
			continue
		}
		add := func(kind string, ch kms.AttributeChange) {
			changes, kinds, keyOf = append(changes, ch), append(kinds, kind), append(keyOf, i)
		}
		if at.Extractable != nil && !*at.Extractable {
			add(extractable, kms.AttributeChange{ID: id, Op: kms.AttributeModify, Name: "Extractable", Value: true})
		}
		if at.Sensitive != nil && *at.Sensitive {
			add(sensitive, kms.AttributeChange{ID: id, Op: kms.AttributeModify, Name: "Sensitive", Value: false})
		}
		if g, ok := grantOf(at, ident); ok && !self && !containsStr(g, "get") {
			add(getRight, kms.AttributeChange{ID: id, Op: kms.AttributeAdd, Name: kms.GrantAttribute, Value: ident + "=get,read"})
		}
	}
	res, err := c.ChangeAttributes(ctx, changes)
	if err != nil {
		return err
	}
	for j, r := range res {
		name := dks[keyOf[j]].Name
		if r.Err != nil {
			switch kinds[j] {
			case extractable:
				return fmt.Errorf("make key %s extractable again (an administrator identity is needed): %w", name, r.Err)
			case sensitive:
				return fmt.Errorf("clear Sensitive on key %s: %w", name, r.Err)
			default:
				return fmt.Errorf("restore the array identity's get right on key %s: %w", name, r.Err)
			}
		}
		counts[kinds[j]]++
	}
	for _, m := range []string{extractable, sensitive, getRight} {
		if counts[m] > 0 {
			sl.Applied = append(sl.Applied, fmt.Sprintf("%s (%d keys)", m, counts[m]))
		}
	}
	if len(revoked) > 0 {
		sl.Advice = fmt.Sprintf("%d key(s) were revoked (e.g. %s), which cannot be undone: destroy them on %s and run 'sedctl backup restore' with a backup of this array", len(revoked), revoked[0], srv.Label())
	}
	// Proof: the array's identity obtains every key, with the values the
	// administrator sees.
	var live []string
	var liveDKs []config.DriveKey
	for i, id := range ids {
		if !containsStr(revoked, dks[i].Name) {
			live = append(live, id)
			liveDKs = append(liveDKs, dks[i])
		}
	}
	want := keySet{}
	defer want.zero()
	secs, errs, err := c.GetSecrets(ctx, live)
	if err != nil {
		return err
	}
	for i, s := range secs {
		if errs[i] != nil {
			for _, s := range secs[i+1:] {
				s.Zero()
			}
			return fmt.Errorf("key %s not released to the administrator either: %w", liveDKs[i].Name, errs[i])
		}
		want[liveDKs[i].Name] = s
	}
	ac, err := a.connect(ctx, agent, serverByLabel(agent, srv.Label()))
	if err != nil {
		return fmt.Errorf("array identity: %w", err)
	}
	defer a.release(ac)
	released, refused, err := agentFetch(ctx, ac, liveDKs, live, want)
	if err != nil {
		return fmt.Errorf("proof (Get as %q): %w", ident, err)
	}
	sl.Refused = refused + len(revoked)
	sl.Released = released
	sl.Locked = sl.Refused > 0
	if refused > 0 && sl.Advice == "" {
		sl.Advice = fmt.Sprintf("%d key(s) still refused to %q: the server's own policy refuses them; %s", refused, ident, grantAdvice(ident, a.group()))
	}
	a.progress("unlock", "", srv.Label(), "proof: %d of %d keys released to %q", len(released), len(dks), ident)
	return nil
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
