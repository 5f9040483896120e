package kms_test

import (
	"context"
	"testing"

	"github.com/sedboot/sedboot/internal/kms"
)

// TestProbe runs the capability probe against both servers. What it
// expects of PyKMIP is what Debian's PyKMIP 0.10 does: it takes Object
// Groups and Application Specific Information but no x- attributes, has
// no Add Attribute, and enforces neither Extractable, Sensitive nor
// revocation on Get; it does keep one client's objects from another.
func TestProbe(t *testing.T) {
	type want map[string]kms.Verdict
	common := want{
		kms.CheckRegister: kms.Yes, kms.CheckObjectGroup: kms.Yes, kms.CheckAppInfo: kms.Yes,
		kms.CheckLocate: kms.Yes, kms.CheckLocateGroup: kms.Yes, kms.CheckGet: kms.Yes,
		kms.CheckBatchedGet: kms.Yes, kms.CheckGetAttributes: kms.Yes, kms.CheckActivate: kms.Yes,
		kms.CheckRevoke: kms.Yes, kms.CheckDestroy: kms.Yes, kms.RefusePolicy: kms.Yes,
	}
	perServer := map[string]struct {
		want     want
		metadata kms.MetadataMode
		canLock  bool
	}{
		"kmsd": {want{
			kms.CheckCustomAttrs: kms.Yes, kms.CheckAddAttribute: kms.Yes, kms.CheckModifyAttribute: kms.Yes,
			kms.CheckDeleteAttribute: kms.Yes, kms.RefuseExtractable: kms.Yes, kms.RefuseSensitive: kms.Yes,
			kms.RefuseRevoked: kms.Yes,
		}, kms.MetadataCustom, true},
		"pykmip": {want{
			kms.CheckCustomAttrs: kms.No, kms.CheckAddAttribute: kms.No, kms.CheckModifyAttribute: kms.Yes,
			kms.CheckDeleteAttribute: kms.Yes, kms.RefuseExtractable: kms.No, kms.RefuseSensitive: kms.No,
			kms.RefuseRevoked: kms.No,
		}, kms.MetadataASI, false},
	}
	eachBackend(t, func(t *testing.T, b *backend) {
		conn := b.connect(t, b.client(t, "agent"))
		other := b.connect(t, b.client(t, "someone-else"))
		caps, err := conn.Probe(context.Background(), kms.ProbeOptions{Other: other})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range caps.Findings {
			t.Logf("%-38s %-8s %s", f.Check, f.Verdict, f.Detail)
		}
		exp := perServer[b.name]
		for chk, v := range common {
			if got := caps.Finding(chk); got.Verdict != v {
				t.Errorf("%s: %s (%s), want %s", chk, got.Verdict, got.Detail, v)
			}
		}
		for chk, v := range exp.want {
			if got := caps.Finding(chk); got.Verdict != v {
				t.Errorf("%s: %s (%s), want %s", chk, got.Verdict, got.Detail, v)
			}
		}
		if caps.Metadata != exp.metadata {
			t.Errorf("metadata form %q, want %q", caps.Metadata, exp.metadata)
		}
		if ok, how := caps.CanLock(); ok != exp.canLock {
			t.Errorf("CanLock = %v (%s), want %v", ok, how, exp.canLock)
		}
		if len(caps.Leftovers) > 0 {
			t.Errorf("probe left objects behind: %v", caps.Leftovers)
		}
		if caps.Info == nil || len(caps.Info.Operations) == 0 {
			t.Errorf("Query: %v %s", caps.Info, caps.QueryError)
		}
		// Everything the probe registered is gone.
		ids, err := conn.Locate(context.Background(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			a, err := conn.GetAttributes(context.Background(), id, "Name")
			if err == nil && len(a.Names) > 0 && len(a.Names[0]) > 13 && a.Names[0][:13] == "sedboot-probe" {
				t.Errorf("probe object %s (%s) still present", id, a.Names[0])
			}
		}
	})
}

// TestProbeWithoutSecondIdentity reports the policy check as skipped.
func TestProbeWithoutSecondIdentity(t *testing.T) {
	b := kmsdBackend(t)
	conn := b.connect(t, b.client(t, "agent"))
	caps, err := conn.Probe(context.Background(), kms.ProbeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if f := caps.Finding(kms.RefusePolicy); f.Verdict != kms.Skipped {
		t.Errorf("policy check %s, want skipped", f.Verdict)
	}
	if ok, how := caps.CanLock(); !ok || how != kms.RefuseExtractable {
		t.Errorf("CanLock = %v, %q", ok, how)
	}
}
