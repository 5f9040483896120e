package lifecycle

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"
)

// kmsWork runs every key-server operation of the life cycle on an array
// of n drives and one kmsd, and returns the KMIP requests each made.
func kmsWork(t *testing.T, ctx context.Context, n int) map[string]int {
	t.Helper()
	r := newRig(t, rigOptions{drives: n, servers: 1})
	out := map[string]int{}
	out["enable"] = r.enable(ctx).KMS.Requests

	// Generation 1 is deactivated and destroyed at once.
	rot, err := r.open().Rotate(ctx, RotateOptions{DestroyAfter: 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(rot.Destroyed) != 1 || rot.Deactivated != n {
		t.Fatalf("rotate: %+v", rot)
	}
	out["rotate"] = rot.KMS.Requests

	// Generation 2 stays deactivated until Retire.
	rot, err = r.open().Rotate(ctx, RotateOptions{DestroyAfter: DefaultDestroyAfter})
	if err != nil || len(rot.Destroyed) != 0 {
		t.Fatalf("rotate: %+v, %v", rot, err)
	}
	a := r.open()
	a.Now = func() time.Time { return time.Now().Add(DefaultDestroyAfter + time.Hour) }
	if rr, _, err := a.Retire(ctx, DefaultDestroyAfter); err != nil || len(rr) != 1 {
		t.Fatalf("retire: %+v, %v", rr, err)
	}
	out["retire"] = a.KMSStats().Requests

	lk, err := r.open().Lock(ctx, LockOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out["lock"] = lk.KMS.Requests
	a = r.open()
	st, err := a.Status(ctx, StatusOptions{})
	if err != nil || st.Servers[0].Lock != "locked" || st.Servers[0].NotExtractable != n || st.Servers[0].Withdrawn != n {
		t.Fatalf("status: %+v, %v", st, err)
	}
	out["status"] = a.KMSStats().Requests
	un, err := r.open().Unlock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out["unlock"] = un.KMS.Requests

	pre, err := r.open().Preflight(ctx, PreflightOptions{SkipNetwork: true})
	if err != nil || pre.Verdict == VerdictFail {
		t.Fatalf("preflight: %+v, %v", pre, err)
	}
	out["preflight"] = pre.KMS.Requests

	set, err := r.open().BackupKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Zero()
	res, err := r.open().Restore(ctx, set)
	if err != nil {
		t.Fatal(err)
	}
	out["restore"] = res.KMS.Requests
	r.bootAll(ctx, 3, 0)
	return out
}

// TestRequestsDoNotGrowWithDrives: every operation sends as many KMIP
// requests for 5 drives as for 2 (the work on many keys is batched).
func TestRequestsDoNotGrowWithDrives(t *testing.T) {
	ctx := testCtx(t)
	small, large := kmsWork(t, ctx, 2), kmsWork(t, ctx, 5)
	for _, op := range slices.Sorted(maps.Keys(small)) {
		t.Logf("%-9s %d requests", op, small[op])
		if small[op] != large[op] {
			t.Errorf("%s: %d requests with 2 drives, %d with 5", op, small[op], large[op])
		}
	}
}
