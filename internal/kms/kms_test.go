package kms_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/secret"
)

// keySet is a set of registered keys.
type keySet struct {
	group  string
	names  []string
	ids    []string
	values []*secret.Secret
}

func (ks *keySet) refs() []kms.KeyRef {
	refs := make([]kms.KeyRef, len(ks.names))
	for i, n := range ks.names {
		refs[i] = kms.KeyRef{Name: n}
	}
	return refs
}

// register registers n active keys named like the product names them,
// in one RegisterAll.
func register(t testing.TB, conn *kms.Conn, n int) *keySet {
	t.Helper()
	prefix := unique(t)
	ks := &keySet{group: prefix + "-array"}
	specs := make([]kms.SecretSpec, n)
	for i := range n {
		v, err := secret.Random(32)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(v.Zero)
		name := fmt.Sprintf("%s-SN%d--20260101--key-gen-1", prefix, i)
		specs[i] = kms.SecretSpec{Name: name, Group: ks.group, Value: v, Activate: true,
			Metadata: map[string]string{"array": prefix, "generation": "1"}}
		ks.names = append(ks.names, name)
		ks.values = append(ks.values, v)
	}
	out, err := conn.RegisterAll(context.Background(), specs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range out {
		if r.Err != nil || !r.Created || r.ID == "" {
			t.Fatalf("register %s: %+v", ks.names[i], r)
		}
		ks.ids = append(ks.ids, r.ID)
	}
	return ks
}

func TestRegisterLocateAttributes(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		conn := b.connect(t, b.client(t, "agent"))
		ks := register(t, conn, 2)

		// Register is idempotent: the same name returns the same object.
		id, created, err := conn.Register(ctx, kms.SecretSpec{Name: ks.names[0], Group: ks.group, Value: ks.values[0], Activate: true})
		if err != nil || created || id != ks.ids[0] {
			t.Fatalf("second Register = %q, %v, %v; want %q, false, nil", id, created, err, ks.ids[0])
		}
		// Mixed: one existing, one new, registered together.
		v, _ := secret.Random(16)
		defer v.Zero()
		out, err := conn.RegisterAll(ctx, []kms.SecretSpec{
			{Name: ks.names[1], Group: ks.group, Value: ks.values[1], Activate: true},
			{Name: ks.names[1] + "-new", Group: ks.group, Value: v, Activate: true},
		})
		if err != nil || out[0].Created || out[0].ID != ks.ids[1] || out[0].Err != nil || !out[1].Created || out[1].Err != nil {
			t.Fatalf("RegisterAll = %+v, %v", out, err)
		}
		if a, err := conn.GetAttributes(ctx, out[1].ID, "State"); err != nil || a.State != kms.StateActive {
			t.Fatalf("new key state: %v, %v", a, err)
		}
		if err := conn.Revoke(ctx, out[1].ID, kms.RevokeCessation, ""); err != nil {
			t.Fatal(err)
		}
		if err := conn.Destroy(ctx, out[1].ID); err != nil {
			t.Fatal(err)
		}
		ids, err := conn.Locate(ctx, ks.names[1], ks.group)
		if err != nil || !slices.Equal(ids, ks.ids[1:2]) {
			t.Fatalf("Locate = %v, %v; want %v", ids, err, ks.ids[1:2])
		}
		if ids, err := conn.Locate(ctx, ks.names[1], ks.group+"-other"); err != nil || len(ids) != 0 {
			t.Fatalf("Locate in another group = %v, %v; want nothing", ids, err)
		}
		ids, err = conn.LocateGroup(ctx, ks.group)
		slices.Sort(ids)
		want := slices.Sorted(slices.Values(ks.ids))
		if err != nil || !slices.Equal(ids, want) {
			t.Fatalf("LocateGroup = %v, %v; want %v", ids, err, want)
		}
		found, errs, err := conn.LocateNames(ctx, ks.group, []string{ks.names[0], "no-such-key", ks.names[1]})
		if err != nil || found[0] != ks.ids[0] || found[2] != ks.ids[1] || !errors.Is(errs[1], kms.ErrNotFound) {
			t.Fatalf("LocateNames = %v, %v, %v", found, errs, err)
		}

		a, err := conn.GetAttributes(ctx, ks.ids[0])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(a.Names, ks.names[0]) || !slices.Contains(a.Groups, ks.group) || a.State != kms.StateActive {
			t.Errorf("attributes = names %v groups %v state %s", a.Names, a.Groups, a.State)
		}
		if a.Metadata["generation"] != "1" || a.Metadata["array"] == "" {
			t.Errorf("metadata = %v, want array and generation (stored as x- attributes or Application Specific Information)", a.Metadata)
		}
		if a.ObjectType != "SecretData" {
			t.Errorf("object type %q", a.ObjectType)
		}
	})
}

func TestBatchedFetch(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		c := b.client(t, "agent")
		conn := b.connect(t, c)
		for _, n := range []int{1, 8, 24} {
			t.Run(fmt.Sprint(n), func(t *testing.T) {
				ks := register(t, conn, n)
				res, err := c.Fetch(context.Background(), kms.FetchRequest{Group: ks.group, Keys: ks.refs()})
				if err != nil {
					t.Fatal(err)
				}
				defer res.Zero()
				checkFetched(t, ks, res)
				if got := len(res.Report.Attempts); got != 1 {
					t.Fatalf("%d attempts, want 1", got)
				}
				// Discover Versions, one batched Locate, one batched Get.
				if r := res.Report.Attempts[0].Requests; r != 3 {
					t.Errorf("%d requests, want 3 (Discover Versions, one Locate batch, one Get batch)", r)
				}

				// With the identifiers known, one request: Get plus the
				// Name check, batched.
				refs := ks.refs()
				for i := range refs {
					refs[i].IDs = map[string]string{b.name: res.IDs[refs[i].Name].ID}
				}
				res2, err := c.Fetch(context.Background(), kms.FetchRequest{Group: ks.group, Keys: refs})
				if err != nil {
					t.Fatal(err)
				}
				defer res2.Zero()
				checkFetched(t, ks, res2)
				if r := res2.Report.Attempts[0].Requests; r != 2 {
					t.Errorf("with known identifiers: %d requests, want 2 (Discover Versions, Get batch)", r)
				}
			})
		}
	})
}

func checkFetched(t *testing.T, ks *keySet, res *kms.FetchResult) {
	t.Helper()
	if len(res.Secrets) != len(ks.names) {
		t.Fatalf("fetched %d keys, want %d", len(res.Secrets), len(ks.names))
	}
	for i, n := range ks.names {
		s := res.Secrets[n]
		if s == nil || !s.Equal(ks.values[i]) {
			t.Errorf("key %s: wrong or missing value", n)
		}
		if res.IDs[n].ID != ks.ids[i] {
			t.Errorf("key %s: id %q, want %q", n, res.IDs[n].ID, ks.ids[i])
		}
	}
}

func TestFetchStaleIDAndMissing(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		c := b.client(t, "agent")
		conn := b.connect(t, c)
		ks := register(t, conn, 3)
		// Key 0 has a stale identifier (another key's): Fetch notices the
		// name mismatch and looks the name up.
		refs := ks.refs()
		refs[0].IDs = map[string]string{b.name: ks.ids[2]}
		refs = append(refs, kms.KeyRef{Name: ks.group + "-missing"})
		res, err := c.Fetch(context.Background(), kms.FetchRequest{Group: ks.group, Keys: refs})
		defer res.Zero()
		var fe *kms.FetchError
		if !errors.As(err, &fe) || !slices.Equal(fe.Missing, []string{ks.group + "-missing"}) {
			t.Fatalf("err = %v, want a FetchError for the missing key", err)
		}
		if !errors.Is(err, kms.ErrNotFound) {
			t.Errorf("err does not match ErrNotFound: %v", err)
		}
		for i, n := range ks.names {
			if s := res.Secrets[n]; s == nil || !s.Equal(ks.values[i]) {
				t.Errorf("key %s: wrong or missing value", n)
			}
		}
		if res.IDs[ks.names[0]].ID != ks.ids[0] {
			t.Errorf("stale identifier not corrected: %v", res.IDs[ks.names[0]])
		}
	})
}

func TestLifecycle(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		conn := b.connect(t, b.client(t, "agent"))
		v, _ := secret.Random(32)
		defer v.Zero()
		name := unique(t) + "-life"
		id, _, err := conn.Register(ctx, kms.SecretSpec{Name: name, Group: name, Value: v})
		if err != nil {
			t.Fatal(err)
		}
		state := func(want kms.State) {
			t.Helper()
			a, err := conn.GetAttributes(ctx, id, "State")
			if err != nil {
				t.Fatal(err)
			}
			if a.State != want {
				t.Fatalf("state %s, want %s", a.State, want)
			}
		}
		state(kms.StatePreActive)
		if err := conn.Activate(ctx, id); err != nil {
			t.Fatal(err)
		}
		state(kms.StateActive)
		if err := conn.Activate(ctx, id); err == nil {
			t.Error("second Activate succeeded")
		}
		if err := conn.Destroy(ctx, id); !errors.Is(err, kms.ErrDenied) {
			t.Errorf("Destroy of an Active object: err = %v, want ErrDenied", err)
		}
		if err := conn.Revoke(ctx, id, kms.RevokeCessation, "test"); err != nil {
			t.Fatal(err)
		}
		state(kms.StateDeactivated)
		if err := conn.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
		_, errs, err := conn.GetSecrets(ctx, []string{id})
		if err != nil || !errors.Is(errs[0], kms.ErrNotFound) {
			t.Fatalf("Get after Destroy: %v, %v; want ErrNotFound", errs, err)
		}
		var ke *kms.Error
		if !errors.As(errs[0], &ke) || ke.Server != b.name || ke.Op != "Get" || ke.Key != id || ke.Reason != "Item Not Found" {
			t.Errorf("error %+v does not name server, operation, key and reason", ke)
		}
	})
}

func TestVersionOverride(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		for _, v := range []string{"1.0", "1.2", "1.4"} {
			t.Run(v, func(t *testing.T) {
				cfg := b.config(t, "agent")
				cfg.Version = v
				c, err := kms.New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				conn := b.connect(t, c)
				if got := conn.Info().KMIPVersion; got != v {
					t.Fatalf("KMIP version %s, want %s", got, v)
				}
				ks := register(t, conn, 2)
				secs, errs, err := conn.GetSecrets(context.Background(), ks.ids)
				if err != nil {
					t.Fatal(err)
				}
				for i := range secs {
					if errs[i] != nil || !secs[i].Equal(ks.values[i]) {
						t.Errorf("key %d: %v", i, errs[i])
					}
					secs[i].Zero()
				}
			})
		}
		conn := b.connect(t, b.client(t, "agent"))
		if got := conn.Info().KMIPVersion; got != "1.4" {
			t.Errorf("negotiated %s, want 1.4", got)
		}
	})
}

func TestFailover(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		conn := b.connect(t, b.client(t, "agent"))
		ks := register(t, conn, 4)
		cases := []struct {
			name  string
			first string
			want  string
		}{
			{"refused", refusingAddr(t), "connection refused"},
			{"silent", silentServer(t), "timed out"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				cfg := b.config(t, "agent", kms.Server{Name: "dead", Address: tc.first, ServerName: "127.0.0.1"}, b.server())
				cfg.AttemptTimeout = 500 * time.Millisecond
				c, err := kms.New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				res, err := c.Fetch(context.Background(), kms.FetchRequest{Group: ks.group, Keys: ks.refs()})
				defer res.Zero()
				if err != nil {
					t.Fatal(err)
				}
				checkFetched(t, ks, res)
				at := res.Report.Attempts
				if len(at) != 2 || at[0].Server != "dead" || !strings.Contains(at[0].Error, tc.want) || at[1].Server != b.name || at[1].Error != "" {
					t.Fatalf("attempts = %+v; want dead (%s) then %s", at, tc.want, b.name)
				}
				if len(at[1].Fetched) != len(ks.names) {
					t.Errorf("second server fetched %d keys", len(at[1].Fetched))
				}
			})
		}
	})
}

func TestRetriesAndTotalDeadline(t *testing.T) {
	silent := silentServer(t)
	dead := refusingAddr(t)
	b := &backend{} // no real server needed
	ca, _ := pki.NewCA("unused", pki.ECDSAP256)
	cf, _, _ := ca.WriteFiles(t.TempDir(), "ca")
	b.caFile = cf
	c, err := kms.New(kms.Config{
		Servers:        []kms.Server{{Name: "dead", Address: dead}, {Name: "silent", Address: silent}},
		CAFile:         cf,
		AttemptTimeout: 200 * time.Millisecond, TotalTimeout: 3 * time.Second,
		Retries: 2, Backoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := c.Fetch(context.Background(), kms.FetchRequest{Keys: []kms.KeyRef{{Name: "k"}}})
	defer res.Zero()
	if !errors.Is(err, kms.ErrTransport) {
		t.Fatalf("err = %v, want ErrTransport", err)
	}
	// Three rounds of two attempts each, all transient.
	if n := len(res.Report.Attempts); n != 6 {
		t.Errorf("%d attempts, want 6: %+v", n, res.Report.Attempts)
	}
	for i, a := range res.Report.Attempts {
		if a.Round != i/2 {
			t.Errorf("attempt %d in round %d, want %d", i, a.Round, i/2)
		}
	}
	// Bounded: the total deadline is the upper limit of the whole call.
	if el := time.Since(start); el > 3*time.Second+time.Second {
		t.Errorf("took %s with a 3s total deadline", el)
	}
}

func TestTLSRefusals(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		other, _ := pki.NewCA("another CA", pki.ECDSAP256)
		otherCAFile, _, _ := other.WriteFiles(t.TempDir(), "other-ca")
		expired, err := b.ca.Issue(pki.Request{CommonName: "old-agent", Role: pki.RoleClient,
			NotBefore: time.Now().Add(-72 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		expCert, expKey, _ := expired.WriteFiles(t.TempDir(), "expired")
		foreign, _ := other.Issue(pki.Request{CommonName: "stranger", Role: pki.RoleClient})
		forCert, forKey, _ := foreign.WriteFiles(t.TempDir(), "foreign")

		cases := []struct {
			name string
			mod  func(*kms.Config)
			want string // in the error text
		}{
			{"wrong-ca", func(c *kms.Config) { c.CAFile = otherCAFile }, "not signed by a trusted CA"},
			{"wrong-server-name", func(c *kms.Config) { c.Servers[0].ServerName = "kms.invalid" }, "does not match the server name"},
			{"missing-client-cert", func(c *kms.Config) { c.CertFile, c.KeyFile = "", "" }, "refused our TLS handshake"},
			{"expired-client-cert", func(c *kms.Config) { c.CertFile, c.KeyFile = expCert, expKey }, "refused our TLS handshake"},
			{"client-cert-from-other-ca", func(c *kms.Config) { c.CertFile, c.KeyFile = forCert, forKey }, "refused our TLS handshake"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				cfg := b.config(t, "agent")
				tc.mod(&cfg)
				c, err := kms.New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				conn, err := c.Connect(context.Background(), cfg.Servers[0])
				if err == nil {
					// With TLS 1.3 a rejected client certificate shows on
					// the first request.
					_, err = conn.Query(context.Background())
					conn.Close()
				}
				if err == nil {
					t.Fatal("connection succeeded")
				}
				if !errors.Is(err, kms.ErrTLSConfig) && !errors.Is(err, kms.ErrConnectionLost) {
					t.Errorf("err = %v, want ErrTLSConfig", err)
				}
				if errors.Is(err, kms.ErrTLSConfig) && !strings.Contains(err.Error(), tc.want) {
					t.Errorf("err = %v, want it to say %q", err, tc.want)
				}
				if !strings.Contains(err.Error(), b.name) {
					t.Errorf("err = %v does not name the server", err)
				}
			})
		}
	})
}

func TestConnectionLostNoDuplicate(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		p := newProxy(t, b.addr, 0)
		cfg := b.config(t, "agent", kms.Server{Name: b.name, Address: p.addr(), ServerName: "127.0.0.1"})
		cfg.Version = "1.4" // no Discover Versions: the first answer is ours
		c, err := kms.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := c.Connect(ctx, cfg.Servers[0])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Flush TLS session tickets and the like with a first request.
		if _, err := conn.Query(ctx); err != nil {
			t.Fatal(err)
		}
		v, _ := secret.Random(32)
		defer v.Zero()
		name := unique(t) + "-lost"
		// Register = Locate (answer forwarded) then Register (answer
		// dropped).
		p.dropAfter(1)
		_, _, err = conn.Register(ctx, kms.SecretSpec{Name: name, Group: name, Value: v})
		if !errors.Is(err, kms.ErrConnectionLost) {
			t.Fatalf("Register through a dropped connection: err = %v, want ErrConnectionLost", err)
		}
		// The connection is not silently re-established.
		if _, err := conn.Query(ctx); !errors.Is(err, kms.ErrConnectionLost) {
			t.Errorf("request after the drop: err = %v, want ErrConnectionLost", err)
		}
		// A retry finds the object the lost request created.
		conn2 := b.connect(t, b.client(t, "agent"))
		ids, err := conn2.Locate(ctx, name, name)
		if err != nil || len(ids) != 1 {
			t.Fatalf("after the drop, Locate = %v, %v; want exactly one object", ids, err)
		}
		id, created, err := conn2.Register(ctx, kms.SecretSpec{Name: name, Group: name, Value: v})
		if err != nil || created || id != ids[0] {
			t.Fatalf("retried Register = %q, %v, %v; want %q, not created", id, created, err, ids[0])
		}
	})
}

func TestNoKeyMaterialInErrorsOrReports(t *testing.T) {
	b := kmsdBackend(t)
	c := b.client(t, "agent")
	conn := b.connect(t, c)
	ks := register(t, conn, 3)
	// Lock one key: the fetch fails for it, succeeds for the others.
	if err := conn.SetExtractable(context.Background(), ks.ids[1], false); err != nil {
		t.Fatal(err)
	}
	res, err := c.Fetch(context.Background(), kms.FetchRequest{Group: ks.group, Keys: ks.refs()})
	defer res.Zero()
	if err == nil {
		t.Fatal("fetch of a non-extractable key succeeded")
	}
	rep, _ := json.Marshal(res.Report)
	for i, v := range ks.values {
		raw := v.Bytes()
		for _, text := range []string{err.Error(), string(rep), fmt.Sprintf("%v %+v", res, res.Secrets)} {
			if bytes.Contains([]byte(text), raw) || strings.Contains(text, hex.EncodeToString(raw)) {
				t.Errorf("key %d's value appears in %q", i, text)
			}
		}
	}
	if _, err := json.Marshal(res.Secrets); err == nil {
		t.Error("secrets marshal to JSON")
	}
}

func TestRSAClientAndSessionResumption(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		is, err := b.ca.Issue(pki.Request{CommonName: "rsa-agent", Role: pki.RoleClient, KeyType: pki.RSA2048})
		if err != nil {
			t.Fatal(err)
		}
		cf, kf, _ := is.WriteFiles(t.TempDir(), "rsa-agent")
		cfg := b.config(t, "unused")
		cfg.CertFile, cfg.KeyFile = cf, kf
		c, err := kms.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		first := b.connect(t, c)
		ks := register(t, first, 1)
		if first.Info().Resumed {
			t.Error("first connection resumed a session")
		}
		first.Close()
		second := b.connect(t, c)
		info := second.Info()
		t.Logf("%s: %s %s, resumed %v", b.name, info.TLSVersion, info.CipherSuite, info.Resumed)
		if !info.Resumed {
			t.Errorf("second connection did not resume the TLS session (%s)", info.TLSVersion)
		}
		secs, errs, err := second.GetSecrets(context.Background(), ks.ids)
		if err != nil || errs[0] != nil || !secs[0].Equal(ks.values[0]) {
			t.Fatalf("Get over a resumed session: %v %v", errs, err)
		}
		secs[0].Zero()
	})
}
