// Package lifecycle runs sedboot's key life cycle on a storage array:
// enabling encryption in external mode, status, crash-safe rotation,
// restoring keys from a backup, the cryptographic lock and the preflight
// rehearsal of the boot path.
//
// An Array brings together what every operation needs: the boot-medium
// document and the medium it is kept on, the array's drives, a KMIP client
// with the administrator's identity and one with the array's own identity
// (the certificate the boot agent presents).
//
// Operations that change drives or key servers follow a journal kept in the
// document (config.Journal): the journal is written to the boot medium
// before each step and each drive is marked "changing" before it is
// touched and "changed" once it verified, so running the operation again
// after an interruption resumes it, and the boot agent
// (config.Document.Candidates) knows which generations a drive may hold.
// New keys are registered on every configured key server, and proven
// fetchable with the array's identity, before any drive is changed: no
// drive ever holds a key that the key servers do not.
//
// Keys live in secret buffers, are zeroed when the operation ends and never
// reach a log, an error, a report or the boot medium.
package lifecycle

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sedboot/sedboot/internal/bootmedium"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

// Journal operations and steps written to config.Journal.
const (
	OpEnable  = "enable"
	OpRotate  = "rotate"
	OpRestore = "restore"

	// StepRegister: the new generation's keys are being registered on
	// every key server; no drive has been touched.
	StepRegister = "register"
	// StepCanary: the first drive is being changed.
	StepCanary = "canary"
	// StepDrives: the remaining drives are being changed.
	StepDrives = "drives"
	// StepRetire: every drive verified with the new generation, which is
	// active; the old one is being deactivated on the key servers.
	StepRetire = "retire"
)

// DefaultDestroyAfter is how long a retired generation's keys stay on
// the key servers (deactivated) before a later run destroys them.
const DefaultDestroyAfter = 7 * 24 * time.Hour

// DefaultConcurrency bounds how many drives are changed at once.
const DefaultConcurrency = 8

// Errors callers can test with errors.Is.
var (
	// ErrNotEnabled: the array has no active key generation.
	ErrNotEnabled = errors.New("encryption is not enabled on this array")
	// ErrOtherOperation: another operation is journaled and must be
	// finished first.
	ErrOtherOperation = errors.New("another operation is in progress")
	// ErrKeyConflict: a key server holds a different value under a key's
	// name than the array's key.
	ErrKeyConflict = errors.New("a key server holds a different key under this name")
	// ErrAgentDenied: the array's own identity cannot fetch its keys.
	ErrAgentDenied = errors.New("the array identity cannot fetch its keys")
	// ErrNotEnforced: a key server does not stop releasing the keys.
	ErrNotEnforced = errors.New("the key server cannot enforce the cryptographic lock")
	// ErrInterrupted: the Hook stopped the operation.
	ErrInterrupted = errors.New("operation interrupted")
)

// Event is one progress report.
type Event struct {
	Op     string `json:"op"`
	Step   string `json:"step"`
	Drive  string `json:"drive,omitempty"`
	Server string `json:"server,omitempty"`
	Msg    string `json:"msg"`
}

// String renders the event as one console line.
func (e Event) String() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Step != "" {
		b.WriteString(" [" + e.Step + "]")
	}
	if e.Drive != "" {
		b.WriteString(" drive " + e.Drive)
	}
	if e.Server != "" {
		b.WriteString(" server " + e.Server)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Array is one storage array as the tools see it.
type Array struct {
	// Doc is the boot-medium document; operations change it and write it
	// to Medium.
	Doc *config.Document
	// Medium holds Doc. Operations that change nothing may leave it nil.
	Medium *bootmedium.Medium
	// Drives are the array's drives (sed.Open, or simulated drives
	// wrapped by sed.New).
	Drives []*sed.Drive
	// Admin is a KMIP client with the administrator's identity, which
	// registers, changes and destroys keys.
	Admin *kms.Client
	// Agent is a KMIP client with the array's own identity (the boot
	// agent's certificate). When nil, AgentClient(Doc) is used.
	Agent *kms.Client
	// Progress receives progress events, one call at a time; nil
	// discards them.
	Progress func(Event)
	// Hook, when set, is called (one call at a time) at every journal
	// point, after the journal was written, and after every step a drive
	// reports; an error stops the operation there (crash injection).
	Hook func(point string) error
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Log receives debug records (never key material); nil discards.
	Log *slog.Logger
	// Concurrency bounds how many drives change at once (default
	// DefaultConcurrency).
	Concurrency int

	mu       sync.Mutex // serialises document writes
	cbMu     sync.Mutex // serialises Progress and Hook calls
	op       string
	kmsStats Stats
}

// Stats counts the key-server work of one operation.
type Stats struct {
	// Connections opened (TCP + TLS + version negotiation).
	Connections int `json:"connections"`
	// Requests is the number of KMIP requests (round trips) sent.
	Requests int `json:"requests"`
}

func (a *Array) now() time.Time {
	if a.Now != nil {
		return a.Now().UTC()
	}
	return time.Now().UTC()
}

func (a *Array) log() *slog.Logger {
	if a.Log != nil {
		return a.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (a *Array) concurrency() int {
	if a.Concurrency > 0 {
		return a.Concurrency
	}
	return DefaultConcurrency
}

func (a *Array) progress(step, drive, server, format string, args ...any) {
	ev := Event{Op: a.op, Step: step, Drive: drive, Server: server, Msg: fmt.Sprintf(format, args...)}
	a.log().Debug("progress", "op", ev.Op, "step", ev.Step, "drive", ev.Drive, "server", ev.Server, "msg", ev.Msg)
	if a.Progress != nil {
		a.cbMu.Lock()
		defer a.cbMu.Unlock()
		a.Progress(ev)
	}
}

// hook calls Hook at a journal point.
func (a *Array) hook(point string) error {
	if a.Hook == nil {
		return nil
	}
	a.cbMu.Lock()
	err := a.Hook(point)
	a.cbMu.Unlock()
	if err != nil {
		return fmt.Errorf("%w at %q: %w", ErrInterrupted, point, err)
	}
	return nil
}

// save writes the document to the medium (validated; a write always
// leaves either the previous or the new document on the medium).
func (a *Array) save() error {
	if a.Medium == nil {
		return errors.New("no boot medium to write the document to")
	}
	a.Doc.Updated = a.now()
	b, err := config.Marshal(a.Doc)
	if err != nil {
		return fmt.Errorf("write boot medium: %w", err)
	}
	if _, err := a.Medium.Write(b); err != nil {
		return fmt.Errorf("write boot medium: %w", err)
	}
	return nil
}

// update changes the document under the write lock, writes it and calls
// the hook.
func (a *Array) update(point string, f func(d *config.Document)) error {
	a.mu.Lock()
	f(a.Doc)
	err := a.save()
	a.mu.Unlock()
	if err != nil {
		return err
	}
	return a.hook(point)
}

// prefix is the key-name prefix.
func (a *Array) prefix() string { return a.Doc.Array.Prefix() }

// group is the array's Object Group.
func (a *Array) group() string { return keys.Group(a.prefix(), a.Doc.Array.Serial) }

// keyName names drive's key of a generation created at created.
func (a *Array) keyName(created time.Time, gen int, drive string) (string, error) {
	n := keys.KeyName{Prefix: a.prefix(), Array: a.Doc.Array.Serial, Created: created, Generation: gen, Drive: drive}
	if err := n.Validate(); err != nil {
		return "", fmt.Errorf("key name for drive %s: %w", drive, err)
	}
	return n.String(), nil
}

// newGeneration makes generation n (pending) for the given drives.
func (a *Array) newGeneration(n int, drives []string) (config.Generation, error) {
	created := a.now().Truncate(time.Second)
	g := config.Generation{Number: n, Created: created, State: config.GenPending}
	for _, d := range drives {
		name, err := a.keyName(created, n, d)
		if err != nil {
			return g, err
		}
		g.Drives = append(g.Drives, config.DriveKey{Drive: d, Name: name})
	}
	return g, nil
}

// driveSet maps drive serials to drives.
type driveSet struct {
	bySerial map[string]*sed.Drive
	serials  []string // in the order of Array.Drives
}

// drives reads every drive's serial number.
func (a *Array) drives() (*driveSet, error) {
	ds := &driveSet{bySerial: map[string]*sed.Drive{}}
	for _, d := range a.Drives {
		s, err := d.Serial()
		if err != nil {
			return nil, fmt.Errorf("drive %s: serial number: %w", d.Name(), err)
		}
		if o, dup := ds.bySerial[s]; dup {
			return nil, fmt.Errorf("drives %s and %s report the same serial number %q", o.Name(), d.Name(), s)
		}
		ds.bySerial[s] = d
		ds.serials = append(ds.serials, s)
	}
	return ds, nil
}

// requireDrives checks that every drive of g is present.
func (ds *driveSet) requireDrives(g *config.Generation) error {
	var missing []string
	for _, dk := range g.Drives {
		if ds.bySerial[dk.Drive] == nil {
			missing = append(missing, dk.Drive)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("drive(s) %s of key generation %d not present on this controller", strings.Join(missing, ", "), g.Number)
	}
	return nil
}

// pins are the Opal credentials derived from one drive key.
type pins struct {
	sid, admin1 *secret.Secret
}

func (p pins) zero() {
	p.sid.Zero()
	p.admin1.Zero()
}

// derive derives a drive's SID and Admin1 PINs from its key.
func derive(key *secret.Secret, drive string) (pins, error) {
	sid, err := keys.PIN(key, keys.RoleSID, drive)
	if err != nil {
		return pins{}, fmt.Errorf("derive SID PIN of drive %s: %w", drive, err)
	}
	admin1, err := keys.PIN(key, keys.RoleAdmin1, drive)
	if err != nil {
		sid.Zero()
		return pins{}, fmt.Errorf("derive Admin1 PIN of drive %s: %w", drive, err)
	}
	return pins{sid: sid, admin1: admin1}, nil
}

// AgentClient builds a KMIP client with the array's own identity from
// the document's key-server settings (the client the boot agent uses).
func AgentClient(doc *config.Document, tune func(*kms.Config)) (*kms.Client, error) {
	if doc.KMS == nil {
		return nil, errors.New("no key servers configured (kms section missing)")
	}
	cfg := kms.Config{
		CAPEM:          []byte(doc.KMS.CA),
		CertPEM:        []byte(doc.KMS.ClientCert),
		KeyPEM:         []byte(doc.KMS.ClientKey),
		Version:        doc.KMS.Version,
		AttemptTimeout: doc.Deadlines.KeyAttempt.D(kms.DefaultAttemptTimeout),
		TotalTimeout:   doc.Deadlines.Keys.D(kms.DefaultTotalTimeout),
	}
	cfg.Servers = Servers(doc)
	if tune != nil {
		tune(&cfg)
	}
	c, err := kms.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("array identity client: %w", err)
	}
	return c, nil
}

// Servers converts the document's key-server list.
func Servers(doc *config.Document) []kms.Server {
	if doc.KMS == nil {
		return nil
	}
	out := make([]kms.Server, len(doc.KMS.Servers))
	for i, s := range doc.KMS.Servers {
		out[i] = kms.Server{Name: s.Name, Address: s.Address, ServerName: s.ServerName}
	}
	return out
}

// ArrayIdentity returns the common name of the array's client
// certificate: the identity key servers see the boot agent as.
func ArrayIdentity(doc *config.Document) (string, error) {
	if doc.KMS == nil {
		return "", errors.New("no key servers configured (kms section missing)")
	}
	cert, err := firstCert(doc.KMS.ClientCert)
	if err != nil {
		return "", fmt.Errorf("kms.client_cert: %w", err)
	}
	return cert.Subject.CommonName, nil
}

func firstCert(p string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(p))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func (a *Array) agent() (*kms.Client, error) {
	if a.Agent != nil {
		return a.Agent, nil
	}
	c, err := AgentClient(a.Doc, nil)
	if err != nil {
		return nil, err
	}
	a.Agent = c
	return c, nil
}

// begin starts an operation: it names it for progress events and resets
// the key-server statistics.
func (a *Array) begin(op string) {
	a.op = op
	a.kmsStats = Stats{}
}

// checkJournal refuses when another operation than op is journaled.
func (a *Array) checkJournal(op string) error {
	if j := a.Doc.Journal; j != nil && j.Op != op {
		return fmt.Errorf("%w: an interrupted %s (step %s, started %s) is recorded on the boot medium: run 'sedctl %s' again to finish it first",
			ErrOtherOperation, j.Op, j.Step, j.Started.Format(time.RFC3339), j.Op)
	}
	return nil
}

// generations returns the inventory's generations that are not retired,
// newest first.
func liveGenerations(doc *config.Document) []*config.Generation {
	var out []*config.Generation
	for i := range doc.Keys.Generations {
		g := &doc.Keys.Generations[i]
		if g.State != config.GenRetired {
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number > out[j].Number })
	return out
}

// openingGenerations returns the generations whose keys a drive may
// hold, newest first: active and pending, and the one a journaled
// operation replaces. Retiring keys are deactivated on the key servers and
// open nothing.
func openingGenerations(doc *config.Document) []*config.Generation {
	var out []*config.Generation
	for _, g := range liveGenerations(doc) {
		if g.State == config.GenActive || g.State == config.GenPending || doc.Journal != nil && doc.Journal.From == g.Number {
			out = append(out, g)
		}
	}
	return out
}

// runDrives runs f on every serial with at most n at once and returns the
// errors joined, in the order of serials.
func runDrives(ctx context.Context, n int, serials []string, f func(ctx context.Context, serial string) error) error {
	if n < 1 {
		n = 1
	}
	errs := make([]error, len(serials))
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for i, s := range serials {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = f(ctx, s)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

var errNoKMS = errors.New("no key servers configured (kms section missing)")
