package lifecycle

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

func matrix(r *PreflightReport) string {
	var b strings.Builder
	for _, c := range r.Matrix {
		fmt.Fprintf(&b, "%s/%s=%s ", c.Drive, c.Server, c.Result)
	}
	return b.String()
}

func TestPreflight(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 3, servers: 2})

	// Before enabling: network, certificates and TLS only.
	pre, err := r.open().Preflight(ctx, PreflightOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pre.Verdict != VerdictWarn || len(pre.Matrix) != 0 || len(pre.Broken) != 0 {
		t.Fatalf("before enable: %s %v %v", pre.Verdict, pre.Broken, pre.Checks)
	}

	r.enable(ctx)
	r.writeData()
	before := r.doc()

	healthy, err := r.open().Preflight(ctx, PreflightOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if healthy.Verdict != VerdictPass || len(healthy.Broken) != 0 || len(healthy.Matrix) != 6 {
		t.Fatalf("healthy array: %s broken %v checks %+v matrix %s", healthy.Verdict, healthy.Broken, healthy.Checks, matrix(healthy))
	}
	for _, c := range healthy.Matrix {
		if c.Result != ResultOK || c.Generation != 1 {
			t.Fatalf("cell %+v", c)
		}
	}
	areas := map[string]bool{}
	for _, c := range healthy.Checks {
		areas[c.Area] = true
	}
	for _, want := range []string{"network", "certificate", "server", "keys"} {
		if !areas[want] {
			t.Errorf("no %s check in %+v", want, healthy.Checks)
		}
	}
	// It changed nothing and spent no try: the drives stay unlocked and
	// the data readable, the document the same.
	unchanged(t, r, before)
	r.checkData()

	t.Run("wrong key registered for one drive", func(t *testing.T) {
		// kms0 holds another value under D02's key name.
		dk := r.doc().Keys.Active().Drives[1]
		c := r.adminConn(ctx, 0)
		if err := c.Revoke(ctx, dk.IDs["kms0"], kms.RevokeCessation, "test"); err != nil {
			t.Fatal(err)
		}
		if err := c.Destroy(ctx, dk.IDs["kms0"]); err != nil {
			t.Fatal(err)
		}
		wrong, _ := secret.Random(keys.KeySize)
		defer wrong.Zero()
		id, _, err := c.Register(ctx, kms.SecretSpec{Name: dk.Name, Group: keys.Group("sedboot", testArray), Value: wrong, Activate: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AddAttribute(ctx, id, kms.GrantAttribute, "array-"+testArray+"=get,read"); err != nil {
			t.Fatal(err)
		}
		rep, err := r.open().Preflight(ctx, PreflightOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cell, _ := rep.Cell("D02", "kms0")
		if rep.Verdict != VerdictFail || cell.Result != CellMismatch || len(rep.Broken) != 1 ||
			!strings.Contains(rep.Broken[0], "drive D02") || !strings.Contains(rep.Broken[0], "kms0: mismatch") {
			t.Fatalf("verdict %s broken %q matrix %s", rep.Verdict, rep.Broken, matrix(rep))
		}
		if ok, _ := rep.Cell("D02", "kms1"); ok.Result != ResultOK {
			t.Fatalf("kms1's key for D02: %+v", ok)
		}
		t.Logf("broken: %s", rep.Broken[0])
		// Put the right key back from kms1's copy.
		if err := c.Revoke(ctx, id, kms.RevokeCessation, "test"); err != nil {
			t.Fatal(err)
		}
		if err := c.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
		a := r.open()
		a.Admin = kmsClientFor(t, r, a.Doc, 1) // kms1 still has it
		set, err := a.BackupKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer set.Zero()
		if _, err := r.open().Restore(ctx, set); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("one key server down", func(t *testing.T) {
		r.servers[1].stop(t)
		rep, err := r.open().Preflight(ctx, PreflightOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Verdict != VerdictWarn || len(rep.Broken) != 1 || !strings.Contains(rep.Broken[0], "kms1") || !strings.Contains(rep.Broken[0], "unreachable") {
			t.Fatalf("verdict %s broken %q matrix %s", rep.Verdict, rep.Broken, matrix(rep))
		}
		for _, d := range []string{"D01", "D02", "D03"} {
			if c, _ := rep.Cell(d, "kms1"); c.Result != CellUnreachable {
				t.Fatalf("cell %+v", c)
			}
			if c, _ := rep.Cell(d, "kms0"); c.Result != ResultOK {
				t.Fatalf("cell %+v", c)
			}
		}
		t.Logf("broken: %s", rep.Broken[0])
	})

	t.Run("certificate expired", func(t *testing.T) {
		old, err := r.ca.Issue(pki.Request{CommonName: "array-" + testArray, Role: pki.RoleClient,
			NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, _ := old.KeyPEM()
		a := r.open()
		a.Doc.KMS.ClientCert, a.Doc.KMS.ClientKey = string(old.CertPEM()), string(keyPEM)
		a.Agent = nil // the agent's client comes from the document
		rep, err := a.Preflight(ctx, PreflightOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Verdict != VerdictFail || len(rep.Broken) == 0 || !strings.Contains(rep.Broken[0], "client certificate") || !strings.Contains(rep.Broken[0], "expired") {
			t.Fatalf("verdict %s broken %q", rep.Verdict, rep.Broken)
		}
		if c, _ := rep.Cell("D01", "kms0"); c.Result != CellUnreachable || !strings.Contains(c.Detail, "certificate") {
			t.Fatalf("cell %+v", c)
		}
		t.Logf("broken: %s", strings.Join(rep.Broken, " | "))
	})

	// Nothing changed on the drives: no try was spent anywhere.
	for i, d := range r.drives() {
		p := make([]byte, 512)
		if err := r.sims[i].ReadBlocks(7, p); err != nil {
			t.Fatalf("drive %d: %v", i, err)
		}
		if d.Failures(sed.Admin1) != 0 {
			t.Fatal("a presentation failed")
		}
	}
}

// kmsClientFor is an administrator client of server i only.
func kmsClientFor(t *testing.T, r *rig, doc *config.Document, i int) *kms.Client {
	t.Helper()
	cfg := r.clientConfig(doc, r.admin)
	cfg.Servers = cfg.Servers[i : i+1]
	c, err := kms.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStatus(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 2, servers: 1})
	st, err := r.open().Status(ctx, StatusOptions{Tries: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != config.ModeNone || st.Generation != 0 || len(st.Drives) != 2 || st.Drives[0].LockingEnabled {
		t.Fatalf("status before enable: %+v", st)
	}
	r.enable(ctx)
	st, err = r.open().Status(ctx, StatusOptions{Tries: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != config.ModeExternal || st.Generation != 1 || st.Rotated.IsZero() || len(st.Generations) != 1 {
		t.Fatalf("status %+v", st)
	}
	for _, d := range st.Drives {
		if !d.LockingEnabled || d.Locked || fmt.Sprint(d.Generations) != "[1]" || d.Pending || !d.InInventory ||
			d.Admin1Tries == nil || d.Admin1Tries.Limit != 5 || d.Admin1Tries.Left != 5 || d.Error != "" {
			t.Fatalf("drive %+v (admin1 %+v)", d, d.Admin1Tries)
		}
	}
	ss := st.Servers[0]
	if !ss.Reachable || ss.Vendor != "sedboot kmsd" || ss.Keys != 2 || ss.Found != 2 || ss.Lock != "released" || ss.States["Active"] != 2 || ss.AgentFetches != 2 {
		t.Fatalf("server %+v", ss)
	}
	r.powerCycle()
	st, _ = r.open().Status(ctx, StatusOptions{})
	if !st.Drives[0].Locked || st.Drives[0].Admin1Tries != nil {
		t.Fatalf("after power cycle: %+v", st.Drives[0])
	}
}
