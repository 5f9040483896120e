package lifecycle

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/bootmedium"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/delayproxy"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/kmsserver"
	"github.com/sedboot/sedboot/internal/opalsim"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/techauth"
	"github.com/sedboot/sedboot/internal/unlock"
)

const (
	testArray = "ARRAY-T1"
	adminCN   = "admin"
)

// techHash is computed once: scrypt is slow on purpose.
var techHash = sync.OnceValues(func() (string, error) { return techauth.Hash("technician-credential") })

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// kmsdServer is an in-process kmsd sharing the rig's CA, so that one
// array certificate is accepted by every server (kmsdtest makes a CA per
// server).
type kmsdServer struct {
	name string
	addr string
	srv  *kmsserver.Server
	done chan error
	down bool
}

func startKMSD(t testing.TB, ca *pki.CA, name string) *kmsdServer {
	t.Helper()
	cert, err := ca.Issue(pki.Request{CommonName: name, Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	mk := make([]byte, kmsserver.MasterKeySize)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	srv, err := kmsserver.New(kmsserver.Options{
		DBPath:    filepath.Join(t.TempDir(), name+".db"),
		MasterKey: mk,
		TLS:       &tls.Config{Certificates: []tls.Certificate{cert.TLSCertificate()}, ClientCAs: ca.Pool()},
		Policy:    kmsserver.Policy{Admins: []string{adminCN}},
	})
	clear(mk)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &kmsdServer{name: name, addr: l.Addr().String(), srv: srv, done: make(chan error, 1)}
	go func() { k.done <- srv.Serve(l) }()
	t.Cleanup(func() { k.stop(t) })
	return k
}

// stop shuts the server down (a key server going away).
func (k *kmsdServer) stop(t testing.TB) {
	if k.down {
		return
	}
	k.down = true
	if err := k.srv.Shutdown(5 * time.Second); err != nil {
		t.Errorf("kmsd %s shutdown: %v", k.name, err)
	}
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		t.Errorf("kmsd %s did not stop", k.name)
	}
}

// rig is an array under test: simulated drives, in-process key servers
// sharing one CA, a boot medium image with the array's document.
type rig struct {
	t       testing.TB
	ca      *pki.CA
	servers []*kmsdServer
	sims    []*opalsim.Drive
	medium  string
	admin   *pki.Issued
	array   *pki.Issued
}

type rigOptions struct {
	drives, servers int
	// rtt puts a delaying proxy in front of every key server.
	rtt time.Duration
	// extraServers are (name, address) pairs added to the document as
	// they are (e.g. a PyKMIP server with its own CA: see pykmipRig).
	docHook func(*config.Document)
}

func newRig(t testing.TB, o rigOptions) *rig {
	t.Helper()
	ca, err := pki.NewCA("lifecycle test CA", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, ca: ca}
	for i := range o.servers {
		r.servers = append(r.servers, startKMSD(t, ca, fmt.Sprintf("kms%d", i)))
	}
	for i := range o.drives {
		sim, err := opalsim.NewMemory(opalsim.Config{
			Serial: fmt.Sprintf("D%02d", i+1), Model: "lifecycle test drive", Firmware: "T1",
			BlockSize: 512, Blocks: 2048, TryLimit: 5, MBRSize: 1 << 20, DataStoreSize: 64 << 10,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sim.Close() })
		r.sims = append(r.sims, sim)
	}
	if r.admin, err = ca.Issue(pki.Request{CommonName: adminCN, Role: pki.RoleClient}); err != nil {
		t.Fatal(err)
	}
	if r.array, err = ca.Issue(pki.Request{CommonName: "array-" + testArray, Role: pki.RoleClient}); err != nil {
		t.Fatal(err)
	}
	doc := r.document()
	if o.rtt > 0 {
		for i := range doc.KMS.Servers {
			doc.KMS.Servers[i].Address = delayProxy(t, doc.KMS.Servers[i].Address, o.rtt)
		}
	}
	if o.docHook != nil {
		o.docHook(doc)
	}
	r.medium = filepath.Join(t.TempDir(), "medium.img")
	if err := bootmedium.Create(r.medium, bootmedium.MinSize); err != nil {
		t.Fatal(err)
	}
	r.writeDoc(doc)
	return r
}

func (r *rig) document() *config.Document {
	r.t.Helper()
	h, err := techHash()
	if err != nil {
		r.t.Fatal(err)
	}
	key, err := r.array.KeyPEM()
	if err != nil {
		r.t.Fatal(err)
	}
	doc := &config.Document{
		Format: config.FormatVersion, Array: config.Array{Serial: testArray, Slot: "A"}, Mode: config.ModeNone,
		KMS:        &config.KMS{CA: string(r.ca.CertPEM()), ClientCert: string(r.array.CertPEM()), ClientKey: string(key)},
		Network:    config.Network{Interface: "lo", Mode: "static", Addresses: []string{"127.0.0.1/8"}},
		Root:       config.Root{Label: "realroot"},
		Technician: config.Technician{Hash: h},
	}
	for _, s := range r.servers {
		doc.KMS.Servers = append(doc.KMS.Servers, config.Server{Name: s.name, Address: s.addr, ServerName: "127.0.0.1"})
	}
	return doc
}

// delayProxy relays TCP connections to target, delaying each chunk by
// half the round-trip time in each direction (a key server far away).
func delayProxy(t testing.TB, target string, rtt time.Duration) string {
	t.Helper()
	p, err := delayproxy.Start(target, delayproxy.Options{Delay: rtt / 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p.Addr
}

func (r *rig) writeDoc(doc *config.Document) {
	r.t.Helper()
	m, f, err := bootmedium.Open(r.medium)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	b, err := config.Marshal(doc)
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := m.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// doc reads the document from the medium, as a new process would.
func (r *rig) doc() *config.Document {
	r.t.Helper()
	m, f, err := bootmedium.Open(r.medium)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	b, _, err := m.Read()
	if err != nil {
		r.t.Fatal(err)
	}
	doc, err := config.Parse(b)
	if err != nil {
		r.t.Fatal(err)
	}
	return doc
}

// drives wraps the simulated drives as a new process (or boot) would:
// fresh sed.Drive values, with fresh guards.
func (r *rig) drives() []*sed.Drive {
	var out []*sed.Drive
	for i, s := range r.sims {
		out = append(out, sed.New(s, fmt.Sprintf("sim%d", i)))
	}
	return out
}

func (r *rig) clientConfig(doc *config.Document, who *pki.Issued) kms.Config {
	r.t.Helper()
	key, err := who.KeyPEM()
	if err != nil {
		r.t.Fatal(err)
	}
	return kms.Config{Servers: Servers(doc), CAPEM: r.ca.CertPEM(), CertPEM: who.CertPEM(), KeyPEM: key,
		AttemptTimeout: 5 * time.Second, TotalTimeout: 20 * time.Second, Retries: -1}
}

// open returns a fresh Array over the medium's document, as sedctl does
// on each run: the administrator is "admin".
func (r *rig) open() *Array {
	r.t.Helper()
	m, f, err := bootmedium.Open(r.medium)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { f.Close() })
	b, _, err := m.Read()
	if err != nil {
		r.t.Fatal(err)
	}
	doc, err := config.Parse(b)
	if err != nil {
		r.t.Fatal(err)
	}
	a := &Array{Doc: doc, Medium: m, Drives: r.drives(), Concurrency: 4}
	if doc.KMS == nil {
		return a
	}
	if a.Admin, err = kms.New(r.clientConfig(doc, r.admin)); err != nil {
		r.t.Fatal(err)
	}
	a.Agent, err = AgentClient(doc, func(c *kms.Config) { c.Retries = -1; c.TotalTimeout = 20 * time.Second })
	if err != nil {
		r.t.Fatal(err)
	}
	return a
}

// check is the key-server check enabling requires ("sedctl kms check").
func check(a *Array) func(context.Context) error { return a.CheckFit }

// enable enables the rig's array.
func (r *rig) enable(ctx context.Context) *EnableResult {
	r.t.Helper()
	a := r.open()
	res, err := a.Enable(ctx, EnableOptions{Check: check(a)})
	if err != nil {
		r.t.Fatalf("enable: %v", err)
	}
	return res
}

func (r *rig) powerCycle() {
	r.t.Helper()
	for _, s := range r.sims {
		if err := s.PowerCycle(); err != nil {
			r.t.Fatal(err)
		}
	}
}

// pattern is what a test writes to block lba of drive i.
func pattern(i int, lba uint64) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("drive %d block %d|", i, lba)), 64)[:512]
}

func (r *rig) writeData() {
	r.t.Helper()
	for i, s := range r.sims {
		if err := s.WriteBlocks(7, pattern(i, 7)); err != nil {
			r.t.Fatalf("write drive %d: %v", i, err)
		}
	}
}

func (r *rig) checkData() {
	r.t.Helper()
	for i, s := range r.sims {
		p := make([]byte, 512)
		if err := s.ReadBlocks(7, p); err != nil {
			r.t.Fatalf("read drive %d: %v", i, err)
		}
		if !bytes.Equal(p, pattern(i, 7)) {
			r.t.Fatalf("drive %d: data lost", i)
		}
	}
}

// bootResult is what a simulated boot did to one drive.
type bootResult struct {
	generation int // 0: not unlocked
	wrong      int // presentations the drive rejected
	err        error
}

// boot does what the boot agent does, after a power cycle: read the
// document from the medium, fetch every candidate key with the array's
// identity in one batched request per server, and unlock each drive
// trying its candidates in order with the agent's policy (unlock.Drive).
func (r *rig) boot(ctx context.Context) map[string]bootResult {
	r.t.Helper()
	doc := r.doc()
	client, err := AgentClient(doc, func(c *kms.Config) { c.Retries = -1 })
	if err != nil {
		r.t.Fatal(err)
	}
	req := kms.FetchRequest{Group: keys.Group(doc.Array.Prefix(), doc.Array.Serial)}
	seen := map[string]bool{}
	for _, d := range doc.Keys.Drives() {
		for _, c := range doc.Candidates(d) {
			if !seen[c.Name] {
				seen[c.Name] = true
				req.Keys = append(req.Keys, kms.KeyRef{Name: c.Name, IDs: c.IDs})
			}
		}
	}
	out := map[string]bootResult{}
	fr, ferr := client.Fetch(ctx, req)
	if fr != nil {
		defer fr.Zero()
	}
	for _, d := range r.drives() {
		serial, err := d.Serial()
		if err != nil {
			r.t.Fatal(err)
		}
		var br bootResult
		if sum, err := d.Discover(ctx); err != nil {
			r.t.Fatal(err)
		} else if !sum.LockingEnabled || !sum.Locked {
			br.generation = -1 // nothing to unlock
			out[serial] = br
			continue
		}
		var cands []unlock.Candidate
		for _, c := range doc.Candidates(serial) {
			if fr == nil || fr.Secrets[c.Name] == nil {
				br.err = fmt.Errorf("key %s not fetched: %v", c.Name, ferr)
				continue
			}
			cands = append(cands, unlock.Candidate{Generation: c.Generation, Key: fr.Secrets[c.Name]})
		}
		if len(cands) > 0 {
			res := unlock.Drive(ctx, d, serial, cands)
			br.wrong, br.err = res.Wrong, res.Err
			if res.Unlocked {
				br.generation = res.Generation
			}
		}
		out[serial] = br
	}
	return out
}

// bootAll powers the drives off and on, boots, and requires every drive
// to unlock on generation want (0: any) with at most maxWrong rejected
// presentations.
func (r *rig) bootAll(ctx context.Context, want, maxWrong int) map[string]bootResult {
	r.t.Helper()
	r.powerCycle()
	res := r.boot(ctx)
	if len(res) != len(r.sims) {
		r.t.Fatalf("boot saw %d drives, want %d", len(res), len(r.sims))
	}
	for s, br := range res {
		if br.generation == 0 {
			r.t.Fatalf("boot: drive %s not unlocked: %v", s, br.err)
		}
		if want != 0 && br.generation != want {
			r.t.Fatalf("boot: drive %s unlocked with generation %d, want %d", s, br.generation, want)
		}
		if br.wrong > maxWrong {
			r.t.Fatalf("boot: drive %s rejected %d presentations (at most %d allowed)", s, br.wrong, maxWrong)
		}
	}
	return res
}

// adminConn connects to server i as the administrator.
func (r *rig) adminConn(ctx context.Context, i int) *kms.Conn {
	r.t.Helper()
	c, err := kms.New(r.clientConfig(r.doc(), r.admin))
	if err != nil {
		r.t.Fatal(err)
	}
	conn, err := c.Connect(ctx, c.Servers()[i])
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return conn
}

// state returns the KMIP state of every key of generation g on server i.
func (r *rig) states(ctx context.Context, i int, g int) map[kms.State]int {
	r.t.Helper()
	doc := r.doc()
	gen := doc.Keys.Generation(g)
	if gen == nil {
		r.t.Fatalf("no generation %d", g)
	}
	c := r.adminConn(ctx, i)
	out := map[kms.State]int{}
	names := make([]string, len(gen.Drives))
	for j, dk := range gen.Drives {
		names[j] = dk.Name
	}
	// Locate skips destroyed objects: count those as destroyed.
	ids, errs, err := c.LocateNames(ctx, keys.Group(doc.Array.Prefix(), doc.Array.Serial), names)
	if err != nil {
		r.t.Fatal(err)
	}
	var found []string
	for j := range names {
		if errs[j] != nil {
			out[kms.StateDestroyed]++
			continue
		}
		found = append(found, ids[j])
	}
	attrs, aerrs, err := c.GetAttributesAll(ctx, found, "State")
	if err != nil {
		r.t.Fatal(err)
	}
	for j := range found {
		if aerrs[j] != nil {
			r.t.Fatal(aerrs[j])
		}
		out[attrs[j].State]++
	}
	return out
}
