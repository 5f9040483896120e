package lifecycle

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

// Results of checks and matrix cells.
const (
	ResultOK   = "ok"
	ResultWarn = "warn"
	ResultFail = "fail"
)

// Verdicts of a preflight.
const (
	VerdictPass = "pass"
	VerdictWarn = "warn"
	VerdictFail = "fail"
)

// Matrix cell states beyond ResultOK.
const (
	CellMismatch    = "mismatch"    // the server's key does not match the drive's verifier
	CellMissing     = "missing"     // the server does not hold the key
	CellRefused     = "refused"     // the server refuses the key to the array identity
	CellUnreachable = "unreachable" // the server could not be used
	CellNoVerifier  = "no verifier" // the drive has no readable key verifier
	CellAbsent      = "absent"      // the drive is not present
	CellError       = "error"
)

// ExpiryWarning is how close to its end a certificate's validity makes a
// preflight warn.
const ExpiryWarning = 30 * 24 * time.Hour

// Check is one preflight finding.
type Check struct {
	Area    string `json:"area"`    // network, clock, certificate, server, keys, drive
	Subject string `json:"subject"` // what was checked
	Result  string `json:"result"`  // ok, warn, fail
	Detail  string `json:"detail,omitempty"`
}

// Cell is one drive x server entry of the preflight matrix.
type Cell struct {
	Drive      string `json:"drive"`
	Server     string `json:"server"`
	Result     string `json:"result"`
	Generation int    `json:"generation,omitempty"`
	Detail     string `json:"detail,omitempty"`
}

// PreflightOptions adjusts Preflight.
type PreflightOptions struct {
	// SkipNetwork leaves out the interface and route checks (for a
	// machine whose management network differs from the controller's).
	SkipNetwork bool
}

// PreflightReport is the outcome of a preflight.
type PreflightReport struct {
	Array   string `json:"array"`
	Verdict string `json:"verdict"`
	// Broken names each broken piece, most important first.
	Broken  []string `json:"broken,omitempty"`
	Checks  []Check  `json:"checks"`
	Drives  []string `json:"drives"`
	Servers []string `json:"servers"`
	// Matrix has one cell per drive and server, drive-major.
	Matrix  []Cell        `json:"matrix"`
	KMS     Stats         `json:"kms"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Cell returns the matrix cell of drive and server.
func (r *PreflightReport) Cell(drive, server string) (Cell, bool) {
	for _, c := range r.Matrix {
		if c.Drive == drive && c.Server == server {
			return c, true
		}
	}
	return Cell{}, false
}

func (r *PreflightReport) add(area, subject, result, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Area: area, Subject: subject, Result: result, Detail: fmt.Sprintf(format, args...)})
}

func (r *PreflightReport) broken(format string, args ...any) {
	r.Broken = append(r.Broken, fmt.Sprintf(format, args...))
}

// Preflight rehearses the boot path from the running system without
// changing anything: the network interface and routes of the document,
// the clock against every certificate's validity, TLS to every key server
// with the array's own identity, a batched Locate and Get of every key
// the agent would ask for, and a check of each fetched key against each
// drive's key verifier (no Opal try spent). It returns a drive x server
// matrix and a verdict: pass, warn (the boot would succeed, something
// needs attention) or fail (some drive would not unlock, or something
// must be fixed), naming each broken piece.
func (a *Array) Preflight(ctx context.Context, opts PreflightOptions) (*PreflightReport, error) {
	t0 := time.Now()
	a.begin("preflight")
	r := &PreflightReport{Array: a.Doc.Array.Serial}
	defer func() { r.KMS, r.Elapsed = a.kmsStats, time.Since(t0) }()
	if a.Doc.KMS == nil {
		return r, errors.New("no key servers configured (kms section missing): nothing to rehearse")
	}
	if j := a.Doc.Journal; j != nil {
		r.add("keys", "journal", ResultWarn, "an interrupted %s (generation %d -> %d, step %s) is recorded; the agent tries both generations", j.Op, j.From, j.To, j.Step)
	}
	if !opts.SkipNetwork {
		a.progress("network", "", "", "checking interfaces and routes")
		checkNetwork(a.Doc, r)
	}
	a.progress("clock", "", "", "checking certificates against the clock")
	certOK := a.checkCertificates(r)

	// Which keys would the agent ask for?
	ds, err := a.drives()
	if err != nil {
		return r, err
	}
	inv := a.Doc.Keys.Drives()
	var names []string
	cands := map[string][]config.KeyRef{}
	for _, d := range inv {
		cands[d] = a.Doc.Candidates(d)
		for _, c := range cands[d] {
			names = append(names, c.Name)
		}
	}
	if len(inv) == 0 {
		r.add("keys", "inventory", ResultWarn, "no keys in the inventory (encryption not enabled): only the network, certificates and TLS were checked")
	}
	r.Drives = inv
	for _, s := range ds.serials {
		if !containsStr(inv, s) {
			r.add("drive", "drive "+s, ResultWarn, "present (%s) but not in the key inventory: the agent will not unlock it", ds.bySerial[s].Name())
		}
	}
	agent, err := a.agent()
	if err != nil {
		return r, err
	}
	ident, _ := ArrayIdentity(a.Doc)

	// Per server: TLS, Locate, Get with the array's identity.
	type serverKeys struct {
		err    error
		cause  string
		values keySet
		errs   map[string]error
	}
	perServer := map[string]*serverKeys{}
	defer func() {
		for _, sk := range perServer {
			sk.values.zero()
		}
	}()
	for _, srv := range agent.Servers() {
		label := srv.Label()
		r.Servers = append(r.Servers, label)
		sk := &serverKeys{values: keySet{}, errs: map[string]error{}}
		perServer[label] = sk
		a.progress("server", "", label, "TLS as %q", ident)
		c, err := a.connect(ctx, agent, srv)
		if err != nil {
			sk.err = err
			sk.cause = describeConnErr(err, certOK)
			r.add("server", label, ResultFail, "%s", sk.cause)
			continue
		}
		info := c.Info()
		r.add("server", label, ResultOK, "%s %s, KMIP %s, TCP %s, TLS %s", info.TLSVersion, info.CipherSuite, info.KMIPVersion,
			info.TCP.Round(time.Millisecond), info.TLS.Round(time.Millisecond))
		checkPeerCert(r, label, info.State, a.now())
		if len(names) > 0 {
			a.fetchAsAgent(ctx, c, label, names, sk.values, sk.errs, r)
		}
		a.release(c)
	}

	// The matrix.
	for _, d := range inv {
		dr := ds.bySerial[d]
		for _, srv := range r.Servers {
			sk := perServer[srv]
			cell := Cell{Drive: d, Server: srv}
			switch {
			case dr == nil:
				cell.Result, cell.Detail = CellAbsent, "drive not present"
			case sk.err != nil:
				cell.Result, cell.Detail = CellUnreachable, sk.cause
			default:
				a.checkCell(ctx, dr, d, cands[d], sk.values, sk.errs, &cell)
			}
			r.Matrix = append(r.Matrix, cell)
		}
	}
	a.verdict(r, ds, inv)
	return r, nil
}

// fetchAsAgent does what the agent does on one server: one batched Locate
// of the names, one batched Get of the identifiers.
func (a *Array) fetchAsAgent(ctx context.Context, c *kms.Conn, srv string, names []string, values keySet, errs map[string]error, r *PreflightReport) {
	ids, lerrs, err := c.LocateNames(ctx, a.group(), names)
	if err != nil {
		for _, n := range names {
			errs[n] = err
		}
		r.add("keys", srv, ResultFail, "Locate failed: %v", err)
		return
	}
	var getIDs, getNames []string
	stale := 0
	for i, n := range names {
		if lerrs[i] != nil {
			errs[n] = lerrs[i]
			continue
		}
		getIDs, getNames = append(getIDs, ids[i]), append(getNames, n)
		if want := a.inventoryID(n, srv); want != "" && want != ids[i] {
			stale++
		}
	}
	if stale > 0 {
		r.add("keys", srv, ResultWarn, "%d key(s) have a different identifier than the inventory records (restored or re-registered): the agent falls back to Locate", stale)
	}
	if len(getIDs) == 0 {
		r.add("keys", srv, ResultFail, "none of the %d keys located as the array identity", len(names))
		return
	}
	secs, gerrs, err := c.GetSecrets(ctx, getIDs)
	if err != nil {
		for _, n := range getNames {
			errs[n] = err
		}
		r.add("keys", srv, ResultFail, "Get failed: %v", err)
		return
	}
	got := 0
	for i, s := range secs {
		if gerrs[i] != nil {
			errs[getNames[i]] = gerrs[i]
			continue
		}
		values[getNames[i]] = s
		got++
	}
	res := ResultOK
	if got < len(names) {
		res = ResultFail
	}
	r.add("keys", srv, res, "Locate and Get as the array identity: %d of %d keys (2 requests)", got, len(names))
}

func (a *Array) inventoryID(name, srv string) string {
	for _, g := range a.Doc.Keys.Generations {
		for _, dk := range g.Drives {
			if dk.Name == name {
				return dk.IDs[srv]
			}
		}
	}
	return ""
}

// checkCell checks the candidate keys one server supplied for a drive
// against the drive's key verifier.
func (a *Array) checkCell(ctx context.Context, d *sed.Drive, serial string, cands []config.KeyRef, values keySet, errs map[string]error, cell *Cell) {
	var problems []string
	state := ""
	for _, c := range cands {
		v := values[c.Name]
		if v == nil {
			e := errs[c.Name]
			switch {
			case errors.Is(e, kms.ErrNotFound):
				state = pick(state, CellMissing)
				problems = append(problems, fmt.Sprintf("generation %d key not found", c.Generation))
			case errors.Is(e, kms.ErrDenied):
				state = pick(state, CellRefused)
				problems = append(problems, fmt.Sprintf("generation %d key refused: %s", c.Generation, kms.ReasonOf(e)))
			default:
				state = pick(state, CellError)
				problems = append(problems, fmt.Sprintf("generation %d key: %v", c.Generation, e))
			}
			continue
		}
		gen, err := checkDriveKey(ctx, d, serial, v)
		switch {
		case err == nil:
			cell.Result, cell.Generation = ResultOK, int(gen)
			if gen != uint64(c.Generation) {
				cell.Result, cell.Detail = CellMismatch, fmt.Sprintf("key named generation %d matches the verifier's generation %d", c.Generation, gen)
			}
			return
		case errors.Is(err, sed.ErrVerifierMismatch):
			state = pick(state, CellMismatch)
			problems = append(problems, fmt.Sprintf("generation %d key (%s) does not match the drive's key verifier", c.Generation, c.Name))
		case errors.Is(err, sed.ErrNoVerifier):
			state = pick(state, CellNoVerifier)
			problems = append(problems, "the drive has no key verifier readable without a credential")
		default:
			state = pick(state, CellError)
			problems = append(problems, err.Error())
		}
	}
	if len(cands) == 0 {
		state, problems = CellMissing, []string{"no key in the inventory for this drive"}
	}
	cell.Result, cell.Detail = state, strings.Join(problems, "; ")
}

// pick keeps the most telling state: a mismatch outranks the rest.
func pick(cur, next string) string {
	rank := map[string]int{"": 0, CellError: 1, CellMissing: 2, CellRefused: 3, CellNoVerifier: 4, CellMismatch: 5}
	if rank[next] > rank[cur] {
		return next
	}
	return cur
}

// checkDriveKey checks both credentials derived from key against the
// drive's verifier, without presenting anything.
func checkDriveKey(ctx context.Context, d *sed.Drive, serial string, key *secret.Secret) (uint64, error) {
	p, err := derive(key, serial)
	if err != nil {
		return 0, err
	}
	defer p.zero()
	kc, err := d.CheckKey(ctx, sed.Admin1, p.admin1.Bytes())
	if err != nil {
		return 0, err
	}
	sc, err := d.CheckKey(ctx, sed.SID, p.sid.Bytes())
	if err != nil {
		return 0, fmt.Errorf("SID: %w", err)
	}
	if sc.Generation != kc.Generation {
		return 0, fmt.Errorf("%w: SID matches generation %d, Admin1 generation %d", sed.ErrVerifierMismatch, sc.Generation, kc.Generation)
	}
	return kc.Generation, nil
}

// verdict decides and names the broken pieces. A server that cannot be
// used is a warning while the other servers supply a key that opens every
// drive present, and a failure otherwise.
func (a *Array) verdict(r *PreflightReport, ds *driveSet, inv []string) {
	fail, warn := false, false
	type driveView struct {
		ok  int
		bad []string
	}
	views := map[string]*driveView{}
	covered := true
	for _, d := range inv {
		v := &driveView{}
		views[d] = v
		for _, c := range r.Matrix {
			if c.Drive != d {
				continue
			}
			switch c.Result {
			case ResultOK:
				v.ok++
			case CellUnreachable, CellAbsent:
			default:
				v.bad = append(v.bad, fmt.Sprintf("%s: %s (%s)", c.Server, c.Result, c.Detail))
			}
		}
		if ds.bySerial[d] != nil && v.ok == 0 {
			covered = false
		}
	}
	for _, c := range r.Checks {
		switch {
		case c.Result == ResultFail && (c.Area == "server" || c.Area == "keys") && covered && len(inv) > 0:
			warn = true
			r.broken("%s %s: %s (the other key servers cover every drive)", c.Area, c.Subject, c.Detail)
		case c.Result == ResultFail:
			fail = true
			r.broken("%s %s: %s", c.Area, c.Subject, c.Detail)
		case c.Result == ResultWarn:
			warn = true
		}
	}
	usable := 0
	for _, srv := range r.Servers {
		for _, c := range r.Matrix {
			if c.Server == srv && c.Result != CellUnreachable {
				usable++
				break
			}
		}
	}
	if len(inv) > 0 && usable == 0 {
		fail = true
		r.broken("no key server could be used: no drive would be unlocked")
	}
	for _, d := range inv {
		v := views[d]
		if ds.bySerial[d] == nil {
			warn = true
			r.add("drive", "drive "+d, ResultWarn, "in the key inventory but not present")
			continue
		}
		if len(v.bad) > 0 {
			fail = true
			r.broken("drive %s: %s", d, strings.Join(v.bad, "; "))
		} else if v.ok == 0 && usable > 0 {
			fail = true
			r.broken("drive %s: no key server supplies a key that opens it", d)
		}
	}
	switch {
	case fail:
		r.Verdict = VerdictFail
	case warn:
		r.Verdict = VerdictWarn
	default:
		r.Verdict = VerdictPass
	}
}

// describeConnErr explains a failed connection, naming an expired or
// not-yet-valid client certificate when that is the cause.
func describeConnErr(err error, certOK bool) string {
	switch {
	case errors.Is(err, kms.ErrTLSConfig) && !certOK:
		return fmt.Sprintf("TLS refused, most likely because of the certificate problem reported above: %v", err)
	case errors.Is(err, kms.ErrTLSConfig):
		return fmt.Sprintf("TLS verification failed: %v", err)
	case errors.Is(err, kms.ErrTransport):
		return fmt.Sprintf("unreachable: %v", err)
	}
	return err.Error()
}

// checkCertificates checks the CA bundle and the client certificate
// against the clock and the client key; it reports whether they are fine.
func (a *Array) checkCertificates(r *PreflightReport) bool {
	now := a.now()
	ok := true
	k := a.Doc.KMS
	rest := []byte(k.CA)
	for i := 1; ; i++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			continue
		}
		if !certValidity(r, fmt.Sprintf("CA certificate %d (%s)", i, cert.Subject.CommonName), cert, now) {
			ok = false
		}
	}
	cert, err := firstCert(k.ClientCert)
	if err != nil {
		r.add("certificate", "client certificate", ResultFail, "%v", err)
		return false
	}
	if !certValidity(r, fmt.Sprintf("client certificate (array identity %q)", cert.Subject.CommonName), cert, now) {
		ok = false
	}
	if _, err := tls.X509KeyPair([]byte(k.ClientCert), []byte(k.ClientKey)); err != nil {
		r.add("certificate", "client key", ResultFail, "does not match the client certificate: %v", err)
		ok = false
	}
	return ok
}

// certValidity adds a clock check of one certificate.
func certValidity(r *PreflightReport, what string, cert *x509.Certificate, now time.Time) bool {
	switch {
	case now.Before(cert.NotBefore):
		r.add("certificate", what, ResultFail, "not valid before %s but the clock says %s: fix the clock (the agent reads the hardware clock) or the certificate",
			cert.NotBefore.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
		return false
	case now.After(cert.NotAfter):
		r.add("certificate", what, ResultFail, "expired at %s (clock %s): issue a new one", cert.NotAfter.UTC().Format(time.RFC3339), now.Format(time.RFC3339))
		return false
	case cert.NotAfter.Sub(now) < ExpiryWarning:
		r.add("certificate", what, ResultWarn, "expires at %s, in %s", cert.NotAfter.UTC().Format(time.RFC3339), cert.NotAfter.Sub(now).Round(time.Hour))
	default:
		r.add("certificate", what, ResultOK, "valid until %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return true
}

// checkPeerCert checks a server's certificate chain against the clock
// (TLS verified it against the real clock already; this warns early).
func checkPeerCert(r *PreflightReport, label string, st tls.ConnectionState, now time.Time) {
	if len(st.PeerCertificates) == 0 {
		return
	}
	c := st.PeerCertificates[0]
	if c.NotAfter.Sub(now) < ExpiryWarning {
		r.add("certificate", "server certificate of "+label, ResultWarn, "expires at %s", c.NotAfter.UTC().Format(time.RFC3339))
	}
}
