package lifecycle

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/bootmedium"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/kms/pykmiptest"
	"github.com/sedboot/sedboot/internal/opalsim"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/testenv"
)

func TestLockUnlock(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 2, servers: 2})
	r.enable(ctx)
	// After a rotation, generation 1 is retiring (deactivated): the lock
	// concerns the keys that open the drives.
	if _, err := r.open().Rotate(ctx, RotateOptions{DestroyAfter: DefaultDestroyAfter}); err != nil {
		t.Fatal(err)
	}

	res, err := r.open().Lock(ctx, LockOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Identity != "array-"+testArray || len(res.Servers) != 2 {
		t.Fatalf("result %+v", res)
	}
	for _, sl := range res.Servers {
		if !sl.Locked || sl.Refused != 2 || sl.Keys != 2 || len(sl.Released) != 0 ||
			!containsStr(sl.Applied, MechExtractable) || !containsStr(sl.Applied, MechGrant) {
			t.Fatalf("server %+v", sl)
		}
	}
	// The proof holds at boot: no key released, every drive stays locked.
	r.powerCycle()
	for s, br := range r.boot(ctx) {
		if br.generation != 0 || br.wrong != 0 || !errors.Is(br.err, kms.ErrDenied) && !strings.Contains(br.err.Error(), "not fetched") {
			t.Fatalf("boot of a locked array: drive %s: %+v", s, br)
		}
	}
	st, err := r.open().Status(ctx, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ss := range st.Servers {
		if ss.Lock != "locked" || ss.NotExtractable != 2 || ss.Withdrawn != 2 || ss.AgentFetches != 0 {
			t.Fatalf("status of a locked server: %+v", ss)
		}
	}
	// Only an administrator can undo it: the array's own identity cannot.
	self := r.open()
	self.Admin = self.Agent
	if _, err := self.Unlock(ctx); err == nil {
		t.Fatal("the array identity unlocked itself")
	}

	un, err := r.open().Unlock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sl := range un.Servers {
		if sl.Locked || len(sl.Released) != 2 || len(sl.Applied) != 2 {
			t.Fatalf("unlock %+v", sl)
		}
	}
	r.bootAll(ctx, 2, 0)
	if st, _ := r.open().Status(ctx, StatusOptions{}); st.Servers[0].Lock != "released" {
		t.Fatalf("status after unlock: %+v", st.Servers[0])
	}
}

func TestLockRevoke(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 1, servers: 1})
	r.enable(ctx)
	res, err := r.open().Lock(ctx, LockOptions{Revoke: true})
	if err != nil {
		t.Fatal(err)
	}
	if !containsStr(res.Servers[0].Applied, MechRevoked) {
		t.Fatalf("applied %v", res.Servers[0].Applied)
	}
	un, err := r.open().Unlock(ctx)
	if err == nil || !strings.Contains(un.Servers[0].Advice, "cannot be undone") {
		t.Fatalf("unlock of revoked keys: %+v, %v", un.Servers, err)
	}
}

// The PyKMIP server is shared by the tests of this binary (it takes
// seconds to start and to stop).
var pyShared struct {
	once sync.Once
	srv  *pykmiptest.Server
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pyShared.srv != nil {
		if err := pyShared.srv.Stop(); err != nil {
			os.Stderr.WriteString("stop PyKMIP: " + err.Error() + "\n")
		}
		os.RemoveAll(pyShared.dir)
	}
	os.Exit(code)
}

func pykmip(t *testing.T) *pykmiptest.Server {
	t.Helper()
	testenv.LookPath(t, pykmiptest.Program, pykmiptest.Hint)
	pyShared.once.Do(func() {
		pyShared.dir, pyShared.err = os.MkdirTemp("", "lifecycle-pykmip-")
		if pyShared.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pyShared.srv, pyShared.err = pykmiptest.Launch(ctx, pyShared.dir, pykmiptest.Options{})
	})
	if pyShared.err != nil {
		t.Fatal(pyShared.err)
	}
	return pyShared.srv
}

// pykmipRig is an array whose one key server is PyKMIP. PyKMIP lets only
// an object's owner Get it, so the tools run with the array's identity.
func pykmipRig(t *testing.T, drives int) *rig {
	t.Helper()
	py := pykmip(t)
	tag := make([]byte, 3)
	rand.Read(tag)
	serial := "PY-" + hex.EncodeToString(tag) // PyKMIP is shared: a fresh array
	certFile, keyFile, err := py.IssueClient("array-"+serial, pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := os.ReadFile(certFile)
	keyPEM, _ := os.ReadFile(keyFile)
	caPEM, _ := os.ReadFile(py.CAFile)
	h, err := techHash()
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t}
	for i := range drives {
		sim, err := opalsim.NewMemory(opalsim.Config{Serial: "P" + string(rune('1'+i)), Model: "lifecycle test drive", Firmware: "T1",
			BlockSize: 512, Blocks: 2048, TryLimit: 5, MBRSize: 1 << 20, DataStoreSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sim.Close() })
		r.sims = append(r.sims, sim)
	}
	doc := &config.Document{
		Format: config.FormatVersion, Array: config.Array{Serial: serial, Slot: "A"}, Mode: config.ModeNone,
		KMS: &config.KMS{Servers: []config.Server{{Name: "pykmip", Address: py.Addr}},
			CA: string(caPEM), ClientCert: string(certPEM), ClientKey: string(keyPEM)},
		Network:    config.Network{Interface: "lo", Mode: "static", Addresses: []string{"127.0.0.1/8"}},
		Root:       config.Root{Label: "realroot"},
		Technician: config.Technician{Hash: h},
	}
	r.medium = t.TempDir() + "/medium.img"
	if err := bootmedium.Create(r.medium, bootmedium.MinSize); err != nil {
		t.Fatal(err)
	}
	r.writeDoc(doc)
	return r
}

// openSelf opens the array with the array's identity as administrator.
func (r *rig) openSelf() *Array {
	r.t.Helper()
	m, f, err := bootmedium.Open(r.medium)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { f.Close() })
	doc := r.doc()
	agent, err := AgentClient(doc, func(c *kms.Config) { c.Retries = -1; c.TotalTimeout = 30 * time.Second })
	if err != nil {
		r.t.Fatal(err)
	}
	return &Array{Doc: doc, Medium: m, Drives: r.drives(), Admin: agent, Agent: agent}
}

// TestPyKMIP enables against PyKMIP, boots, and shows that lock refuses
// to pretend: PyKMIP enforces nothing a client can switch on.
func TestPyKMIP(t *testing.T) {
	ctx := testCtx(t)
	r := pykmipRig(t, 2)
	a := r.openSelf()
	if _, err := a.Enable(ctx, EnableOptions{Check: check(a)}); err != nil {
		t.Fatal(err)
	}
	r.bootAll(ctx, 1, 0)

	// A separate administrator identity is refused Get by PyKMIP: enable
	// would have stopped before touching a drive (see proveAgent).

	res, err := r.openSelf().Lock(ctx, LockOptions{})
	if !errors.Is(err, ErrNotEnforced) {
		t.Fatalf("lock against PyKMIP: %v", err)
	}
	sl := res.Servers[0]
	if sl.Locked || len(sl.Released) != 2 || !strings.Contains(sl.Advice, "administrator must") || !strings.Contains(sl.Advice, "array-"+r.doc().Array.Serial) {
		t.Fatalf("server %+v", sl)
	}
	t.Logf("advice: %s", sl.Advice)
	// Nothing pretended: the array still boots.
	r.bootAll(ctx, 1, 0)

	// Rotation works against PyKMIP too.
	b := r.openSelf()
	if _, err := b.Rotate(ctx, RotateOptions{DestroyAfter: 0}); err != nil {
		t.Fatal(err)
	}
	r.bootAll(ctx, 2, 0)

	// Deactivating and destroying again, as a resumed run does, is done
	// at once: PyKMIP refuses a second Revoke (Illegal Operation) and
	// answers a second Destroy with Item Not Found.
	c := r.openSelf()
	if _, err := c.Rotate(ctx, RotateOptions{DestroyAfter: DefaultDestroyAfter}); err != nil {
		t.Fatal(err)
	}
	g2 := *c.Doc.Keys.Generation(2)
	if n, warns := c.deactivate(ctx, &g2, "again"); n != 2 || len(warns) != 0 {
		t.Fatalf("second deactivation: %d keys, warnings %v", n, warns)
	}
	for range 2 {
		if rr, err := c.destroy(ctx, &g2); err != nil || len(rr.Servers) != 1 {
			t.Fatalf("destroy: %+v, %v", rr, err)
		}
	}
	r.bootAll(ctx, 3, 0)
}

// TestPyKMIPSeparateAdmin: with an administrator identity other than the
// array's, PyKMIP refuses the array its keys and cannot grant access (it
// fails a request of Add Attribute items as a whole: it cannot parse
// them). The batched grant falls back to one item, learns that the
// operation itself is refused, and enable stops before touching a drive.
func TestPyKMIPSeparateAdmin(t *testing.T) {
	ctx := testCtx(t)
	r := pykmipRig(t, 3)
	a := r.openSelf()
	cf, kf, err := pykmip(t).IssueClient("admin-"+a.Doc.Array.Serial, pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cfg := a.Agent.Config()
	cfg.CertPEM, cfg.KeyPEM, cfg.CertFile, cfg.KeyFile = nil, nil, cf, kf
	if a.Admin, err = kms.New(cfg); err != nil {
		t.Fatal(err)
	}
	_, err = a.Enable(ctx, EnableOptions{Check: func(context.Context) error { return nil }})
	if !errors.Is(err, ErrAgentDenied) || !strings.Contains(err.Error(), "granting access failed") || !strings.Contains(err.Error(), "Invalid Message") {
		t.Fatalf("enable with a separate administrator on PyKMIP: %v", err)
	}
	t.Logf("%d requests: %v", a.KMSStats().Requests, err)
	for _, d := range r.drives() {
		if sum, err := d.Discover(ctx); err != nil || sum.LockingEnabled {
			t.Fatalf("drive %s touched: %+v, %v", d.Name(), sum, err)
		}
	}
}
