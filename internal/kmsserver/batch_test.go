package kmsserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/kmsserver"
	"github.com/sedboot/sedboot/internal/kmsserver/kmsdtest"
)

// auditRecords returns the audit records of op (msg "request").
func auditRecords(t *testing.T, log, op string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(log), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if r["msg"] == "request" && r["op"] == op {
			out = append(out, r)
		}
	}
	return out
}

// TestBatchedRequests: one request of several Revoke, Destroy, Activate
// or attribute items is carried out item by item, each authorised for
// the caller on its own object and audited on its own.
func TestBatchedRequests(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	agent, admin, other := e.conn(t, "array-A1"), e.conn(t, "admin"), e.conn(t, "array-B2")
	var ids []string
	for i := range 3 {
		id, _ := registerKey(t, agent, fmt.Sprintf("a%d", i), "sedboot-A1")
		ids = append(ids, id)
	}
	theirs, _ := registerKey(t, other, "b0", "sedboot-B2")

	// The array may revoke its own keys, not another array's: that one
	// does not exist for it.
	mixed := []string{ids[0], theirs, ids[1]}
	before := agent.Requests()
	res, err := agent.RevokeAll(ctx, mixed, kms.RevokeSuperseded, "batch test")
	if err != nil {
		t.Fatal(err)
	}
	if n := agent.Requests() - before; n != 2 { // the Revoke batch, then the State check of the refused item
		t.Errorf("%d requests, want 2", n)
	}
	if res[0].Err != nil || res[2].Err != nil || !errors.Is(res[1].Err, kms.ErrNotFound) {
		t.Fatalf("Revoke results %+v", res)
	}
	recs := auditRecords(t, e.audit.String(), "Revoke")
	if len(recs) != 3 {
		t.Fatalf("%d Revoke audit records, want one per item (3)", len(recs))
	}
	for i, r := range recs {
		want := "success"
		if i == 1 {
			want = "failure"
		}
		if r["id"] != mixed[i] || r["identity"] != "array-A1" || r["result"] != want || r["revocation_reason"] != "Superseded" {
			t.Errorf("audit record %d: %v", i, r)
		}
	}
	if recs[1]["reason"] != "ItemNotFound" {
		t.Errorf("audit of the refused item: %v", recs[1])
	}
	if st := stateOf(t, other, theirs); st != kms.StateActive {
		t.Errorf("another array's key is %s after a refused Revoke", st)
	}

	// Grants: only an administrator changes them, item by item.
	res, err = agent.AddAttributeAll(ctx, ids, kmsserver.AttrGrant, "array-B2=read")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !errors.Is(r.Err, kms.ErrDenied) {
			t.Errorf("array granting on %s: %v, want denied", ids[i], r.Err)
		}
	}
	res, err = admin.AddAttributeAll(ctx, append(ids[:2:2], theirs), kmsserver.AttrGrant, "array-B2=read")
	if err != nil || res.Err() != nil {
		t.Fatalf("administrator's grants: %v, %v", err, res.Err())
	}
	// Now array-B2 sees ids[0] and ids[1] but has no manage right there:
	// Permission Denied; ids[2] still does not exist for it; its own key
	// is destroyed only once revoked.
	res, err = other.DestroyAll(ctx, []string{ids[0], ids[2], theirs})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0].Err, kms.ErrDenied) || res[1].Err != nil || !res[1].Already || !errors.Is(res[2].Err, kms.ErrDenied) {
		// Item Not Found counts as done for Destroy: ids[2] is invisible
		// to array-B2, which is what Item Not Found means to a client.
		t.Errorf("Destroy results %+v", res)
	}
	if st := stateOf(t, agent, ids[0]); st != kms.StateDeactivated {
		t.Errorf("key %s is %s", ids[0], st)
	}
	if st := stateOf(t, agent, ids[2]); st != kms.StateActive {
		t.Errorf("key %s is %s after another identity's Destroy", ids[2], st)
	}
	recs = auditRecords(t, e.audit.String(), "Destroy")
	if len(recs) != 3 || recs[0]["identity"] != "array-B2" || recs[0]["reason"] != "PermissionDenied" || recs[1]["reason"] != "ItemNotFound" {
		t.Errorf("Destroy audit %v", recs)
	}

	// Extractable for three keys in one Get Attributes and one Modify
	// request; the agent may clear it, only the administrator set it back.
	res, err = agent.SetExtractableAll(ctx, ids, false)
	if err != nil || res.Err() != nil {
		t.Fatalf("Extractable=false: %v, %v", err, res.Err())
	}
	res, err = agent.SetExtractableAll(ctx, ids, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if !errors.Is(r.Err, kms.ErrDenied) {
			t.Errorf("array making %s extractable: %v, want denied", r.ID, r.Err)
		}
	}
	if recs := auditRecords(t, e.audit.String(), "ModifyAttribute"); len(recs) != 6 {
		t.Errorf("%d Modify Attribute audit records, want 6", len(recs))
	}
}

func stateOf(t *testing.T, conn *kms.Conn, id string) kms.State {
	t.Helper()
	a, err := conn.GetAttributes(context.Background(), id, "State")
	if err != nil {
		t.Fatal(err)
	}
	return a.State
}

// TestMaxBatchItems: a request over the limit is refused as a whole,
// before any item is carried out, and audited; the client then sends
// smaller requests.
func TestMaxBatchItems(t *testing.T) {
	audit := &syncBuffer{}
	srv := kmsdtest.Start(t, kmsdtest.Options{MaxBatchItems: 2, Audit: slog.New(slog.NewJSONHandler(audit, nil))})
	e := &env{srv: srv, audit: audit}
	agent := e.conn(t, "array-A1")
	var ids []string
	for i := range 3 {
		id, _ := registerKey(t, agent, fmt.Sprintf("k%d", i), "sedboot-A1")
		ids = append(ids, id)
	}
	before := agent.Requests()
	res, err := agent.RevokeAll(context.Background(), ids, kms.RevokeCessation, "")
	if err != nil || res.Err() != nil {
		t.Fatalf("Revoke: %v, %v", err, res.Err())
	}
	if n := agent.Requests() - before; n != 3 { // 3 refused, then 2 and 1
		t.Errorf("%d requests, want 3", n)
	}
	if recs := auditRecords(t, audit.String(), "Revoke"); len(recs) != 3 {
		t.Errorf("%d Revoke audit records, want 3 (the refused request carried out none)", len(recs))
	}
	if !strings.Contains(audit.String(), `"msg":"batch refused"`) || !strings.Contains(audit.String(), `"items":3,"limit":2`) {
		t.Errorf("the refused request is not audited:\n%s", audit.String())
	}
}

func TestConfigMaxBatchItems(t *testing.T) {
	fc := kmsserver.FileConfig{Cert: "c", Key: "k", ClientCA: "ca", DB: "db", MasterKey: "mk", MaxBatchItems: -1}
	if err := fc.Validate(); err == nil || !strings.HasPrefix(err.Error(), "max_batch_items:") {
		t.Errorf("negative max_batch_items: %v", err)
	}
	fc.MaxBatchItems = 64
	if err := fc.Validate(); err != nil {
		t.Errorf("max_batch_items 64: %v", err)
	}
}
