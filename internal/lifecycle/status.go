package lifecycle

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/sed"
)

// StatusOptions adjusts Status.
type StatusOptions struct {
	// Tries fetches the active generation's keys with the administrator's
	// identity to read each drive's Admin1 try counters (Opal shows them
	// only to an authenticated administrator). A key that does not match
	// a drive's key verifier is never presented.
	Tries bool
}

// Status is the state of an array, its drives and its key servers.
type Status struct {
	Array string `json:"array"`
	Slot  string `json:"slot"`
	Mode  string `json:"mode"`
	// Generation is the active key generation (0: none) and Rotated when
	// it was created.
	Generation  int                `json:"generation"`
	Rotated     time.Time          `json:"rotated,omitzero"`
	Journal     *config.Journal    `json:"journal,omitempty"`
	Generations []GenerationStatus `json:"generations,omitempty"`
	Drives      []DriveStatus      `json:"drives"`
	Servers     []ServerStatus     `json:"servers,omitempty"`
	// Notes are things an administrator should know.
	Notes []string `json:"notes,omitempty"`
}

// GenerationStatus summarises one inventory generation.
type GenerationStatus struct {
	Number  int       `json:"number"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	Drives  int       `json:"drives"`
}

// Tries is an authority's try counter.
type Tries struct {
	Tries int `json:"tries"`
	Limit int `json:"limit"`
	// Left is how many failed presentations it can still absorb (-1: no
	// limit).
	Left int `json:"left"`
}

func triesOf(t sed.TriesInfo) *Tries {
	if !t.Known {
		return nil
	}
	return &Tries{Tries: t.Tries, Limit: t.TryLimit, Left: t.Left()}
}

// DriveStatus is one drive's state.
type DriveStatus struct {
	Drive  string `json:"drive"`
	Device string `json:"device"`
	// InInventory says the key inventory holds keys for the drive.
	InInventory    bool   `json:"in_inventory"`
	SSC            string `json:"ssc,omitempty"`
	LockingEnabled bool   `json:"locking_enabled"`
	Locked         bool   `json:"locked"`
	// Generations are the key generations the drive's key verifier
	// records; Pending marks a change in progress.
	Generations []uint64 `json:"generations,omitempty"`
	Pending     bool     `json:"pending,omitempty"`
	// Admin1Tries (with StatusOptions.Tries) and PSIDTries are the try
	// counters where readable.
	Admin1Tries *Tries `json:"admin1_tries,omitempty"`
	PSIDTries   *Tries `json:"psid_tries,omitempty"`
	Error       string `json:"error,omitempty"`
}

// ServerStatus is one key server's state as seen by the tools.
type ServerStatus struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	Reachable   bool   `json:"reachable"`
	KMIPVersion string `json:"kmip_version,omitempty"`
	Vendor      string `json:"vendor,omitempty"`
	TLS         string `json:"tls,omitempty"`
	// Keys counts the array's live keys (all generations not retired)
	// and Found those the server holds.
	Keys  int `json:"keys"`
	Found int `json:"found"`
	// States counts the keys of the active generation per KMIP state.
	States map[string]int `json:"states,omitempty"`
	// NotExtractable counts active-generation keys with Extractable=false
	// and Withdrawn those whose grant to the array identity lacks get.
	NotExtractable int `json:"not_extractable,omitempty"`
	Withdrawn      int `json:"withdrawn,omitempty"`
	// AgentFetches counts the active-generation keys the array's own
	// identity obtained (-1: not tried).
	AgentFetches int `json:"agent_fetches"`
	// Lock is "released", "locked", "partly locked" or "unknown".
	Lock  string `json:"lock"`
	Error string `json:"error,omitempty"`
}

// Status reports the array's mode and generations, each drive's state
// and each key server's state, including whether it releases the array's
// keys to the array's own identity (the lock state). It changes nothing.
func (a *Array) Status(ctx context.Context, opts StatusOptions) (*Status, error) {
	a.begin("status")
	st := &Status{Array: a.Doc.Array.Serial, Slot: a.Doc.Array.Slot, Mode: a.Doc.Mode, Journal: a.Doc.Journal}
	if act := a.Doc.Keys.Active(); act != nil {
		st.Generation, st.Rotated = act.Number, act.Created
	}
	for _, g := range a.Doc.Keys.Generations {
		st.Generations = append(st.Generations, GenerationStatus{Number: g.Number, State: g.State, Created: g.Created, Drives: len(g.Drives)})
	}
	if j := a.Doc.Journal; j != nil {
		st.Notes = append(st.Notes, fmt.Sprintf("an interrupted %s (generation %d -> %d, step %s) is recorded: run 'sedctl %s' to finish it", j.Op, j.From, j.To, j.Step, j.Op))
	}
	ds, err := a.drives()
	if err != nil {
		return st, err
	}
	inv := a.Doc.Keys.Drives()
	var tryKeys keySet
	act := a.Doc.Keys.Active()
	if opts.Tries && act != nil && a.Admin != nil {
		if tryKeys, err = a.fetchAdmin(ctx, act); err != nil {
			st.Notes = append(st.Notes, fmt.Sprintf("try counters not read: %v", err))
		}
		defer tryKeys.zero()
	}
	for _, s := range ds.serials {
		d := ds.bySerial[s]
		st.Drives = append(st.Drives, a.driveStatus(ctx, d, s, slices.Contains(inv, s), act, tryKeys))
	}
	for _, s := range inv {
		if ds.bySerial[s] == nil {
			st.Notes = append(st.Notes, fmt.Sprintf("drive %s is in the key inventory but not present", s))
		}
	}
	if a.Doc.KMS != nil {
		// The clients' server lists: the same servers as the document's,
		// possibly reached under other addresses (a test host, a proxy).
		servers := Servers(a.Doc)
		if a.Admin != nil {
			servers = a.Admin.Servers()
		} else if ag, err := a.agent(); err == nil {
			servers = ag.Servers()
		}
		for _, srv := range servers {
			st.Servers = append(st.Servers, a.serverStatus(ctx, srv))
		}
	}
	return st, nil
}

func (a *Array) driveStatus(ctx context.Context, d *sed.Drive, serial string, inInv bool, act *config.Generation, ks keySet) DriveStatus {
	ds := DriveStatus{Drive: serial, Device: d.Name(), InInventory: inInv}
	sum, err := d.Discover(ctx)
	if err != nil {
		ds.Error = err.Error()
		return ds
	}
	ds.SSC, ds.LockingEnabled, ds.Locked = string(sum.SSC), sum.LockingEnabled, sum.Locked
	if t, err := d.PublicTries(ctx, sed.PSID); err == nil {
		ds.PSIDTries = triesOf(t)
	}
	if !sum.LockingEnabled {
		return ds
	}
	v, err := d.ReadVerifier(ctx, nil)
	if err == nil {
		ds.Generations, ds.Pending = verifierGens(v), v.Pending
	}
	if act == nil || ks == nil || !inInv {
		return ds
	}
	dk, ok := act.Key(serial)
	if !ok || ks[dk.Name] == nil {
		return ds
	}
	p, err := derive(ks[dk.Name], serial)
	if err != nil {
		ds.Error = err.Error()
		return ds
	}
	defer p.zero()
	if _, err := d.CheckKey(ctx, sed.Admin1, p.admin1.Bytes()); err != nil {
		ds.Error = fmt.Sprintf("try counters not read: the active key was not presented: %v", err)
		return ds
	}
	ts, err := d.Tries(ctx, sed.Admin1, p.admin1.Bytes())
	if err != nil {
		ds.Error = fmt.Sprintf("try counters: %v", err)
	} else if len(ts) > 0 {
		ds.Admin1Tries = triesOf(ts[0])
	}
	return ds
}

// serverStatus looks at the array's keys on one server: presence and
// attributes with the administrator's identity (or the array's, without
// one), and whether the array's identity obtains the active keys.
func (a *Array) serverStatus(ctx context.Context, srv kms.Server) ServerStatus {
	ss := ServerStatus{Name: srv.Label(), Address: srv.Address, AgentFetches: -1, Lock: "unknown"}
	var live []config.DriveKey
	for _, g := range liveGenerations(a.Doc) {
		live = append(live, g.Drives...)
	}
	ss.Keys = len(live)
	client := a.Admin
	if client == nil {
		c, err := a.agent()
		if err != nil {
			ss.Error = err.Error()
			return ss
		}
		client = c
	}
	c, err := a.connect(ctx, client, srv)
	if err != nil {
		ss.Error = err.Error()
		return ss
	}
	defer a.release(c)
	info := c.Info()
	ss.Reachable, ss.KMIPVersion, ss.TLS = true, info.KMIPVersion, info.TLSVersion+" "+info.CipherSuite
	if q, err := c.Query(ctx); err == nil {
		ss.Vendor = q.Vendor
	}
	if len(live) == 0 {
		ss.Lock = "no keys"
		return ss
	}
	names := make([]string, len(live))
	for i, dk := range live {
		names[i] = dk.Name
	}
	ids, errs, err := c.LocateNames(ctx, a.group(), names)
	if err != nil {
		ss.Error = err.Error()
		return ss
	}
	for _, e := range errs {
		if e == nil {
			ss.Found++
		}
	}
	act := a.Doc.Keys.Active()
	if act == nil {
		return ss
	}
	ident, _ := ArrayIdentity(a.Doc)
	ss.States = map[string]int{}
	var actIDs []string
	for i, dk := range live {
		if _, ok := act.Key(dk.Drive); !ok || nameOf(act, dk.Drive) != dk.Name || errs[i] != nil {
			continue
		}
		actIDs = append(actIDs, ids[i])
	}
	attrs, aerrs, err := c.GetAttributesAll(ctx, actIDs)
	if err != nil {
		ss.Error = err.Error()
	}
	for i := range actIDs {
		if err != nil || aerrs[i] != nil {
			ss.States["unreadable"]++
			continue
		}
		at := attrs[i]
		ss.States[string(at.State)]++
		if at.Extractable != nil && !*at.Extractable {
			ss.NotExtractable++
		}
		if g, ok := grantOf(at, ident); ok && !slices.Contains(g, "get") {
			ss.Withdrawn++
		}
	}
	// What the array's identity obtains is the lock state that counts.
	if ac, err := a.agent(); err == nil && len(actIDs) > 0 {
		if conn, err := a.connect(ctx, ac, serverByLabel(ac, srv.Label())); err == nil {
			secs, gerrs, err := conn.GetSecrets(ctx, actIDs)
			a.release(conn)
			if err == nil {
				ss.AgentFetches = 0
				for i, s := range secs {
					if gerrs[i] == nil {
						ss.AgentFetches++
						s.Zero()
					}
				}
			}
		} else {
			ss.Error = fmt.Sprintf("array identity: %v", err)
		}
	}
	switch {
	case ss.AgentFetches < 0:
	case ss.AgentFetches == len(act.Drives):
		ss.Lock = "released"
	case ss.AgentFetches == 0:
		ss.Lock = "locked"
	default:
		ss.Lock = "partly locked"
	}
	return ss
}

// grantOf returns the rights a kmsd grant attribute gives ident.
func grantOf(at *kms.Attributes, ident string) ([]string, bool) {
	for _, g := range at.Grants {
		if g.Identity == ident {
			return g.Rights, true
		}
	}
	return nil, false
}
