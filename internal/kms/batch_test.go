package kms_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ovh/kmip-go"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
)

// registerPreActive registers n Pre-Active keys and returns their ids.
func registerPreActive(t *testing.T, conn *kms.Conn, n int) []string {
	t.Helper()
	prefix := unique(t)
	specs := make([]kms.SecretSpec, n)
	for i := range n {
		v, err := secret.Random(32)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(v.Zero)
		specs[i] = kms.SecretSpec{Name: fmt.Sprintf("%s-%d", prefix, i), Group: prefix, Value: v}
	}
	out, err := conn.RegisterAll(context.Background(), specs)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i, r := range out {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		ids[i] = r.ID
	}
	return ids
}

// batchCall runs f and checks that it sent want requests, that it did not
// fail as a whole and returns its results.
func batchCall(t *testing.T, conn *kms.Conn, what string, want int, f func() (kms.Results, error)) kms.Results {
	t.Helper()
	before := conn.Requests()
	res, err := f()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if got := conn.Requests() - before; got != want {
		t.Errorf("%s: %d requests, want %d", what, got, want)
	}
	return res
}

func wantDone(t *testing.T, what string, res kms.Results, ids []string, already bool) {
	t.Helper()
	if len(res) != len(ids) {
		t.Fatalf("%s: %d results for %d objects", what, len(res), len(ids))
	}
	for i, r := range res {
		if r.ID != ids[i] || r.Err != nil || r.Already != already {
			t.Errorf("%s: item %d: %+v, want %s done, already=%v", what, i, r, ids[i], already)
		}
	}
}

func states(t *testing.T, conn *kms.Conn, ids []string) []kms.State {
	t.Helper()
	before := conn.Requests()
	attrs, errs, err := conn.GetAttributesAll(context.Background(), ids, "State")
	if err != nil {
		t.Fatal(err)
	}
	if n := conn.Requests() - before; n != 1 {
		t.Errorf("Get Attributes of %d objects: %d requests, want 1", len(ids), n)
	}
	out := make([]kms.State, len(ids))
	for i := range ids {
		if errs[i] != nil {
			t.Fatalf("Get Attributes %s: %v", ids[i], errs[i])
		}
		out[i] = attrs[i].State
	}
	return out
}

func allState(t *testing.T, conn *kms.Conn, ids []string, want kms.State) {
	t.Helper()
	for i, st := range states(t, conn, ids) {
		if st != want {
			t.Errorf("object %s: state %s, want %s", ids[i], st, want)
		}
	}
}

// TestBatchedLifecycle takes several keys through Activate, Revoke and
// Destroy with one request per step on both servers, repeating every step
// (as a run resumed after a lost answer would) to show it is idempotent.
func TestBatchedLifecycle(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		conn := b.connect(t, b.client(t, "agent"))
		ids := registerPreActive(t, conn, 5)
		allState(t, conn, ids, kms.StatePreActive)

		res := batchCall(t, conn, "Activate", 1, func() (kms.Results, error) { return conn.ActivateAll(ctx, ids) })
		wantDone(t, "Activate", res, ids, false)
		allState(t, conn, ids, kms.StateActive)
		// Again: both servers refuse (Permission Denied, not Pre-Active);
		// one batched Get Attributes finds them Active.
		res = batchCall(t, conn, "Activate again", 2, func() (kms.Results, error) { return conn.ActivateAll(ctx, ids) })
		wantDone(t, "Activate again", res, ids, true)

		// Destroy of Active objects is refused per item, naming each.
		res = batchCall(t, conn, "Destroy of Active objects", 1, func() (kms.Results, error) { return conn.DestroyAll(ctx, ids) })
		for i, r := range res {
			var ke *kms.Error
			if !errors.As(r.Err, &ke) || !errors.Is(r.Err, kms.ErrDenied) || ke.Key != ids[i] || ke.Op != "Destroy" || ke.Reason != "Permission Denied" {
				t.Errorf("Destroy of Active %s: %v, want Permission Denied naming the object", ids[i], r.Err)
			}
		}
		if err := res.Err(); !errors.Is(err, kms.ErrDenied) || !strings.HasPrefix(err.Error(), "5 of 5 objects failed") {
			t.Errorf("Results.Err = %v", err)
		}

		res = batchCall(t, conn, "Revoke", 1, func() (kms.Results, error) {
			return conn.RevokeAll(ctx, ids, kms.RevokeSuperseded, "test")
		})
		wantDone(t, "Revoke", res, ids, false)
		allState(t, conn, ids, kms.StateDeactivated)
		// Again: kmsd answers success; PyKMIP refuses (Illegal
		// Operation) and the State check finds the objects revoked.
		want, already := 1, false
		if b.kmsd == nil {
			want, already = 2, true
		}
		res = batchCall(t, conn, "Revoke again", want, func() (kms.Results, error) {
			return conn.RevokeAll(ctx, ids, kms.RevokeSuperseded, "test")
		})
		wantDone(t, "Revoke again", res, ids, already)

		res = batchCall(t, conn, "Destroy", 1, func() (kms.Results, error) { return conn.DestroyAll(ctx, ids) })
		wantDone(t, "Destroy", res, ids, false)
		// Again: both answer Item Not Found.
		res = batchCall(t, conn, "Destroy again", 1, func() (kms.Results, error) { return conn.DestroyAll(ctx, ids) })
		wantDone(t, "Destroy again", res, ids, true)
		_, errs, err := conn.GetSecrets(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range errs {
			if !errors.Is(e, kms.ErrNotFound) {
				t.Errorf("Get %s after Destroy: %v, want ErrNotFound", ids[i], e)
			}
		}
	})
}

// TestBatchedMixedOutcomes: one item the server refuses does not stop
// the others, and its error names the object and the KMIP reason.
func TestBatchedMixedOutcomes(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		conn := b.connect(t, b.client(t, "agent"))
		ids := registerPreActive(t, conn, 3)
		const bogus = "987654321"
		mixed := []string{ids[0], bogus, ids[1]}
		res := batchCall(t, conn, "Activate", 2, func() (kms.Results, error) { return conn.ActivateAll(ctx, mixed) })
		if res[0].Err != nil || res[2].Err != nil {
			t.Errorf("Activate: %+v", res)
		}
		var ke *kms.Error
		if !errors.As(res[1].Err, &ke) || ke.Key != bogus || ke.Op != "Activate" || ke.Reason != "Item Not Found" || ke.Server != b.name {
			t.Errorf("Activate of a missing object: %v, want Item Not Found naming %s", res[1].Err, bogus)
		}
		if got := states(t, conn, ids); got[0] != kms.StateActive || got[1] != kms.StateActive || got[2] != kms.StatePreActive {
			t.Errorf("states %v", got)
		}
		// Revoke: the Pre-Active object is revoked by kmsd and refused by
		// PyKMIP (Illegal Operation, which the State check confirms).
		res = batchCall(t, conn, "Revoke", 2, func() (kms.Results, error) {
			return conn.RevokeAll(ctx, append(mixed, ids[2]), kms.RevokeCessation, "")
		})
		if res[0].Err != nil || res[2].Err != nil || !errors.Is(res[1].Err, kms.ErrNotFound) {
			t.Errorf("Revoke: %+v", res)
		}
		if b.kmsd != nil && res[3].Err != nil {
			t.Errorf("kmsd: Revoke of a Pre-Active object: %v", res[3].Err)
		}
		if b.kmsd == nil && (ReasonOf(res[3].Err) != "Illegal Operation" || res[3].Already) {
			t.Errorf("PyKMIP: Revoke of a Pre-Active object: %+v, want Illegal Operation", res[3])
		}
		res = batchCall(t, conn, "Destroy", 1, func() (kms.Results, error) { return conn.DestroyAll(ctx, ids) })
		wantDone(t, "Destroy", res, ids, false)
		if _, err := conn.ActivateAll(ctx, []string{ids[0], ""}); err == nil || !strings.Contains(err.Error(), "position 1") {
			t.Errorf("empty identifier: %v", err)
		}
	})
}

// ReasonOf is kms.ReasonOf, short.
func ReasonOf(err error) string { return kms.ReasonOf(err) }

// TestBatchSplit: more than MaxBatch items go in several requests.
func TestBatchSplit(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		conn := b.connect(t, b.client(t, "agent"))
		ids := make([]string, kms.MaxBatch+44)
		for i := range ids {
			ids[i] = fmt.Sprint(900000 + i) // none exists
		}
		before := conn.Requests()
		attrs, errs, err := conn.GetAttributesAll(context.Background(), ids, "State")
		if err != nil {
			t.Fatal(err)
		}
		if n := conn.Requests() - before; n != 2 {
			t.Errorf("%d items: %d requests, want 2", len(ids), n)
		}
		for i := range ids {
			if attrs[i] != nil || !errors.Is(errs[i], kms.ErrNotFound) {
				t.Fatalf("item %d: %v, want ErrNotFound", i, errs[i])
			}
		}
	})
}

// TestBatchRefusedFallsBack: a server that refuses large batches as a
// whole gets smaller ones, and the size it accepted is remembered.
func TestBatchRefusedFallsBack(t *testing.T) {
	s := kmsdBackendWith(t, 3)
	c := s.client(t, "agent")
	conn := s.connect(t, c)
	ids := registerPreActive(t, conn, 10)
	ctx := context.Background()
	// 10 refused, 5 refused, then requests of 3, 3, 3 and 1.
	res := batchCall(t, conn, "Activate", 6, func() (kms.Results, error) { return conn.ActivateAll(ctx, ids) })
	wantDone(t, "Activate", res, ids, false)
	// The limit is remembered for this server and operation, also on a
	// new connection: four Activate requests (refused: Active already),
	// then the State check learns its own limit (10 refused, 5 refused,
	// then four requests).
	conn2 := s.connect(t, c)
	res = batchCall(t, conn2, "Activate again", 4+6, func() (kms.Results, error) { return conn2.ActivateAll(ctx, ids) })
	wantDone(t, "Activate again", res, ids, true)
	res = batchCall(t, conn2, "Activate a third time", 4+4, func() (kms.Results, error) { return conn2.ActivateAll(ctx, ids) })
	wantDone(t, "Activate a third time", res, ids, true)

	// The boot path too: Fetch of keys whose identifiers are known (Get
	// and a Name check per key) in requests the server accepts.
	ks := register(t, conn, 4)
	refs := ks.refs()
	for i := range refs {
		refs[i].IDs = map[string]string{s.name: ks.ids[i]}
	}
	fr, err := c.Fetch(ctx, kms.FetchRequest{Group: ks.group, Keys: refs})
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Zero()
	checkFetched(t, ks, fr)
}

// TestChangeAttributes mixes Add and Modify Attribute in one request, and
// SetAttributeAll leaves values already set alone.
func TestChangeAttributes(t *testing.T) {
	b := kmsdBackend(t)
	ctx := context.Background()
	conn := b.connect(t, b.client(t, "admin"))
	ids := registerPreActive(t, conn, 4)
	res := batchCall(t, conn, "Set Extractable", 2, func() (kms.Results, error) { return conn.SetExtractableAll(ctx, ids[:2], false) })
	wantDone(t, "Set Extractable", res, ids[:2], false)
	res = batchCall(t, conn, "Set Extractable on all", 2, func() (kms.Results, error) { return conn.SetExtractableAll(ctx, ids, false) })
	for i, r := range res {
		if r.Err != nil || r.Already != (i < 2) {
			t.Errorf("item %d: %+v", i, r)
		}
	}
	res = batchCall(t, conn, "Set Extractable again", 1, func() (kms.Results, error) { return conn.SetExtractableAll(ctx, ids, false) })
	wantDone(t, "Set Extractable again", res, ids, true)

	one := int32(0)
	res = batchCall(t, conn, "mixed changes", 1, func() (kms.Results, error) {
		return conn.ChangeAttributes(ctx, []kms.AttributeChange{
			{ID: ids[0], Op: kms.AttributeModify, Name: "Extractable", Value: true},
			{ID: ids[1], Op: kms.AttributeAdd, Name: "x-sedboot-note", Value: "a"},
			{ID: ids[1], Op: kms.AttributeModify, Name: "x-sedboot-note", Value: "b", Index: &one},
			{ID: ids[2], Op: kms.AttributeAdd, Name: "Unique Identifier", Value: "42"},
			{ID: ids[3], Op: kms.AttributeDelete, Name: "x-sedboot-none"},
		})
	})
	if res[0].Err != nil || res[1].Err != nil || res[2].Err != nil {
		t.Errorf("changes: %+v", res)
	}
	if !errors.Is(res[3].Err, kms.ErrRejected) || ReasonOf(res[3].Err) != "Invalid Field" || !strings.Contains(res[3].Err.Error(), `Add Attribute "`+ids[2]+`"`) {
		t.Errorf("Add of Unique Identifier: %v, want Invalid Field naming the operation and object", res[3].Err)
	}
	if !errors.Is(res[4].Err, kms.ErrNotFound) {
		t.Errorf("Delete of a missing attribute: %v", res[4].Err)
	}
	attrs, errs, err := conn.GetAttributesAll(ctx, ids[:2])
	if err != nil || errs[0] != nil || errs[1] != nil {
		t.Fatal(err, errs)
	}
	if x := attrs[0].Extractable; x == nil || !*x {
		t.Errorf("Extractable of %s: %v", ids[0], x)
	}
	if v := attrs[1].Custom["x-sedboot-note"]; v != "b" {
		t.Errorf("note %q, want b", v)
	}
	if _, err := conn.ChangeAttributes(ctx, []kms.AttributeChange{{ID: ids[0], Op: kms.AttributeAdd}}); err == nil {
		t.Error("a change without an attribute name was sent")
	}
}

// TestAddAttributePyKMIP: PyKMIP does not implement Add Attribute; it
// refuses each item, not the batch, so no fallback is needed.
func TestAddAttributePyKMIP(t *testing.T) {
	b := pykmipBackend(t)
	conn := b.connect(t, b.client(t, "agent"))
	ids := registerPreActive(t, conn, 3)
	// The request of 3 is refused as a whole (PyKMIP cannot parse Add
	// Attribute), then the request of 2; the client sends one item alone,
	// which is refused the same way, and concludes that the operation,
	// not the batch, is refused: the last item gets that answer without
	// being sent.
	res := batchCall(t, conn, "Add Attribute", 3, func() (kms.Results, error) {
		return conn.AddAttributeAll(context.Background(), ids, "x-kmsd-grant", "someone=get")
	})
	for i, r := range res {
		var ke *kms.Error
		if !errors.As(r.Err, &ke) || ke.Reason != "Invalid Message" || ke.Key != ids[i] || ke.Op != "Add Attribute" {
			t.Errorf("item %d: %v, want Invalid Message naming the object", i, r.Err)
		}
	}
	t.Logf("PyKMIP: %v", res[0].Err)

	// Mixed with items it can parse: those are carried out.
	ctx := context.Background()
	res = batchCall(t, conn, "mixed changes", 5, func() (kms.Results, error) {
		return conn.ChangeAttributes(ctx, []kms.AttributeChange{
			{ID: ids[0], Op: kms.AttributeAdd, Name: "x-sedboot-note", Value: "a"},
			{ID: ids[1], Op: kms.AttributeModify, Name: "Name", Value: kmip.Name{NameValue: ids[1] + "-renamed", NameType: kmip.NameTypeUninterpretedTextString}},
			{ID: ids[2], Op: kms.AttributeAdd, Name: "x-sedboot-note", Value: "b"},
			{ID: ids[2], Op: kms.AttributeModify, Name: "Name", Value: kmip.Name{NameValue: ids[2] + "-renamed", NameType: kmip.NameTypeUninterpretedTextString}},
		})
	})
	if ReasonOf(res[0].Err) != "Invalid Message" || res[1].Err != nil || ReasonOf(res[2].Err) != "Invalid Message" || res[3].Err != nil {
		t.Errorf("mixed changes: %+v", res)
	}
	attrs, errs, err := conn.GetAttributesAll(ctx, ids[1:], "Name")
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range attrs {
		if errs[i] != nil || len(a.Names) != 1 || a.Names[0] != ids[i+1]+"-renamed" {
			t.Errorf("object %s: names %v, %v", ids[i+1], a, errs[i])
		}
	}
	if _, err := conn.DestroyAll(ctx, ids); err != nil {
		t.Fatal(err)
	}
}
