package kmsserver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/kms/kmipwire"
	"github.com/sedboot/sedboot/internal/kmsserver"
	"github.com/sedboot/sedboot/internal/kmsserver/kmsdtest"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/secret"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}

// syncBuffer is an io.Writer safe for concurrent log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	srv   *kmsdtest.Server
	audit *syncBuffer
}

func start(t *testing.T, policy *kmsserver.Policy) *env {
	t.Helper()
	audit := &syncBuffer{}
	srv := kmsdtest.Start(t, kmsdtest.Options{Policy: policy,
		Audit: slog.New(slog.NewJSONHandler(audit, nil))})
	return &env{srv: srv, audit: audit}
}

func (e *env) conn(t *testing.T, identity string) *kms.Conn {
	t.Helper()
	cf, kf := e.srv.IssueClient(t, identity)
	c, err := kms.New(kms.Config{Servers: []kms.Server{{Name: "kmsd", Address: e.srv.Addr}}, CAFile: e.srv.CAFile, CertFile: cf, KeyFile: kf})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.Connect(context.Background(), c.Servers()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// registerKey registers an active key and returns its id and value.
func registerKey(t *testing.T, conn *kms.Conn, name, group string) (string, *secret.Secret) {
	t.Helper()
	v, err := secret.Random(32)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Zero)
	id, created, err := conn.Register(context.Background(), kms.SecretSpec{Name: name, Group: group, Value: v, Activate: true})
	if err != nil || !created {
		t.Fatalf("register %s: %v (created %v)", name, err, created)
	}
	return id, v
}

// get fetches one key and returns the per-key error.
func get(t *testing.T, conn *kms.Conn, id string, want *secret.Secret) error {
	t.Helper()
	secs, errs, err := conn.GetSecrets(context.Background(), []string{id})
	if err != nil {
		t.Fatal(err)
	}
	defer secs[0].Zero()
	if errs[0] == nil && want != nil && !secs[0].Equal(want) {
		t.Fatal("wrong value")
	}
	return errs[0]
}

func TestCryptographicLockByExtractable(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	agent, admin := e.conn(t, "array-A1"), e.conn(t, "admin")
	id, v := registerKey(t, agent, "sedboot-A1--20260101--key-gen-1", "sedboot-A1")
	if err := get(t, agent, id, v); err != nil {
		t.Fatal(err)
	}
	// The administrator locks the key.
	if err := admin.SetExtractable(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	err := get(t, agent, id, nil)
	if !errors.Is(err, kms.ErrDenied) || !strings.Contains(err.Error(), "not extractable") {
		t.Fatalf("owner's Get of a non-extractable key: %v, want refused as not extractable", err)
	}
	if err := get(t, admin, id, nil); !errors.Is(err, kms.ErrDenied) {
		t.Errorf("administrator's Get of a non-extractable key: %v, want refused", err)
	}
	// The owner cannot unlock it; the administrator can.
	if err := agent.SetExtractable(ctx, id, true); !errors.Is(err, kms.ErrDenied) {
		t.Errorf("owner making the key extractable again: %v, want refused", err)
	}
	a, err := agent.GetAttributes(ctx, id)
	if err != nil || a.Extractable == nil || *a.Extractable {
		t.Fatalf("attributes after lock: %+v, %v", a, err)
	}
	if err := admin.SetExtractable(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	if err := get(t, agent, id, v); err != nil {
		t.Fatalf("Get after unlock: %v", err)
	}
	// Sensitive also stops release.
	if err := agent.SetSensitive(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	if err := get(t, agent, id, nil); !errors.Is(err, kms.ErrDenied) {
		t.Errorf("Get of a sensitive key: %v, want refused", err)
	}
	checkAudit(t, e.audit.String(), v)
}

func TestCryptographicLockByGrant(t *testing.T) {
	e := start(t, nil)
	ctx := context.Background()
	agent, admin := e.conn(t, "array-A1"), e.conn(t, "admin")
	id, v := registerKey(t, agent, "k1", "sedboot-A1")
	a, err := admin.GetAttributes(ctx, id, kmsserver.AttrGrant, kmsserver.AttrOwner)
	if err != nil || a.Custom[kmsserver.AttrOwner] != "array-A1" || a.Custom[kmsserver.AttrGrant] != "array-A1=get,manage,read" {
		t.Fatalf("owner and grant: %v, %v", a.Custom, err)
	}
	// Withdraw the array's access entirely: the object is gone for it.
	if err := admin.DeleteAttribute(ctx, id, kmsserver.AttrGrant, 0); err != nil {
		t.Fatal(err)
	}
	if err := get(t, agent, id, nil); !errors.Is(err, kms.ErrNotFound) {
		t.Fatalf("Get after the grant was withdrawn: %v, want not found", err)
	}
	if err := agent.AddAttribute(ctx, id, kmsserver.AttrGrant, "array-A1=get,read"); !errors.Is(err, kms.ErrNotFound) && !errors.Is(err, kms.ErrDenied) {
		t.Fatalf("array re-granting itself: %v, want refused", err)
	}
	// Read without get: visible, not releasable.
	if err := admin.AddAttribute(ctx, id, kmsserver.AttrGrant, "array-A1=read"); err != nil {
		t.Fatal(err)
	}
	if err := get(t, agent, id, nil); !errors.Is(err, kms.ErrDenied) {
		t.Fatalf("Get with read only: %v, want denied", err)
	}
	if err := agent.AddAttribute(ctx, id, kmsserver.AttrGrant, "array-A1=get,read"); !errors.Is(err, kms.ErrDenied) {
		t.Fatalf("array widening its own grant: %v, want denied", err)
	}
	if err := admin.AddAttribute(ctx, id, kmsserver.AttrGrant, "array-A1=get,read"); err != nil {
		t.Fatal(err)
	}
	if err := get(t, agent, id, v); err != nil {
		t.Fatalf("Get after re-grant: %v", err)
	}
	if err := admin.AddAttribute(ctx, id, kmsserver.AttrGrant, "array-A1=fly"); !errors.Is(err, kms.ErrRejected) {
		t.Errorf("bad right: %v, want rejected", err)
	}
}

func TestGroupGrantsAndRegistrars(t *testing.T) {
	e := start(t, &kmsserver.Policy{
		Admins:      []string{"admin"},
		Registrars:  []string{"array-*", "admin"},
		GroupGrants: []kmsserver.GroupGrant{{Identity: "peer-*", Group: "sedboot-A*", Rights: []string{"get", "read"}}},
	})
	ctx := context.Background()
	agent, peer := e.conn(t, "array-A1"), e.conn(t, "peer-ctl2")
	idA, vA := registerKey(t, agent, "a", "sedboot-A1")
	idB, _ := registerKey(t, agent, "b", "sedboot-B1")
	if err := get(t, peer, idA, vA); err != nil {
		t.Errorf("peer Get in a granted group: %v", err)
	}
	if err := get(t, peer, idB, nil); !errors.Is(err, kms.ErrNotFound) {
		t.Errorf("peer Get outside its groups: %v, want not found", err)
	}
	if ids, err := peer.Locate(ctx, "", ""); err != nil || len(ids) != 1 || ids[0] != idA {
		t.Errorf("peer Locate = %v, %v; want only %s", ids, err, idA)
	}
	if err := peer.Revoke(ctx, idA, kms.RevokeCessation, ""); !errors.Is(err, kms.ErrDenied) {
		t.Errorf("peer Revoke: %v, want denied (no manage right)", err)
	}
	v, _ := secret.Random(8)
	defer v.Zero()
	if _, _, err := peer.Register(ctx, kms.SecretSpec{Name: "p", Value: v}); !errors.Is(err, kms.ErrDenied) {
		t.Errorf("peer Register: %v, want denied (not a registrar)", err)
	}
	// Names are unique among live objects.
	other := e.conn(t, "array-B7")
	if _, _, err := other.Register(ctx, kms.SecretSpec{Name: "a", Group: "elsewhere", Value: v}); !errors.Is(err, kms.ErrRejected) {
		t.Errorf("Register of a name in use: %v, want rejected", err)
	}
}

func TestPersistenceAndSealing(t *testing.T) {
	dir := t.TempDir()
	ca, _ := pki.NewCA("ca", pki.ECDSAP256)
	srvCert, _ := ca.Issue(pki.Request{CommonName: "kmsd", Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	caFile, _, _ := ca.WriteFiles(dir, "ca")
	agentCert, _ := ca.Issue(pki.Request{CommonName: "agent", Role: pki.RoleClient})
	cf, kf, _ := agentCert.WriteFiles(dir, "agent")
	db := filepath.Join(dir, "kmsd.db")
	key := make([]byte, kmsserver.MasterKeySize)
	rand.Read(key)
	run := func(masterKey []byte, f func(conn *kms.Conn)) {
		s, err := kmsserver.New(kmsserver.Options{DBPath: db, MasterKey: masterKey,
			TLS: &tls.Config{Certificates: []tls.Certificate{srvCert.TLSCertificate()}, ClientCAs: ca.Pool()}})
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(l) }()
		c, _ := kms.New(kms.Config{Servers: []kms.Server{{Address: l.Addr().String()}}, CAFile: caFile, CertFile: cf, KeyFile: kf})
		conn, err := c.Connect(context.Background(), c.Servers()[0])
		if err != nil {
			t.Fatal(err)
		}
		f(conn)
		conn.Close()
		if err := s.Shutdown(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	var id string
	v, _ := secret.Random(32)
	defer v.Zero()
	run(key, func(conn *kms.Conn) {
		var err error
		id, _, err = conn.Register(context.Background(), kms.SecretSpec{Name: "persist", Value: v, Activate: true})
		if err != nil {
			t.Fatal(err)
		}
	})
	raw, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, v.Bytes()) {
		t.Fatal("the database holds the key in plain")
	}
	run(key, func(conn *kms.Conn) {
		if err := get(t, conn, id, v); err != nil {
			t.Fatalf("Get after restart: %v", err)
		}
	})
	wrong := make([]byte, kmsserver.MasterKeySize)
	run(wrong, func(conn *kms.Conn) {
		if err := get(t, conn, id, nil); err == nil || !strings.Contains(err.Error(), "master key") {
			t.Fatalf("Get under the wrong master key: %v, want a master key failure", err)
		}
	})
}

// rawConn is a TLS connection speaking bytes, for malformed input.
func rawConn(t *testing.T, e *env, identity string) *tls.Conn {
	t.Helper()
	cert, err := e.srv.CA.Issue(pki.Request{CommonName: identity, Role: pki.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", e.srv.Addr, &tls.Config{RootCAs: e.srv.CA.Pool(), ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{cert.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestMalformedMessagesOverTheWire(t *testing.T) {
	e := start(t, nil)
	cases := map[string][]byte{
		// A structure claiming 2 bytes inside a message: kmip-go's decoder
		// would index out of range on it.
		"truncated item": []byte("B\x00x\x01\x00\x00\x00\x10B\x00w\x01\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00"),
		"integer of 2 bytes": {0x42, 0, 0x78, 1, 0, 0, 0, 16, 0x42, 0, 0x77, 1, 0, 0, 0, 8,
			0x42, 0, 0x6a, 2, 0, 0, 0, 2},
		"empty message": {0x42, 0, 0x78, 1, 0, 0, 0, 0},
		"wrong tag":     {0x42, 0, 0x7b, 1, 0, 0, 0, 0},
		"oversized":     {0x42, 0, 0x78, 1, 0x7f, 0xff, 0xff, 0xf8},
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			c := rawConn(t, e, "fuzzer")
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			buf, err := kmipwire.ReadMessage(c, kmip.TagResponseMessage, 0, nil)
			if err != nil {
				t.Fatalf("no error response: %v", err)
			}
			resp, err := kmipwire.DecodeResponse(buf)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.BatchItem) != 1 || resp.BatchItem[0].ResultStatus != kmip.ResultStatusOperationFailed {
				t.Fatalf("response %+v, want a failure", resp.BatchItem)
			}
			if r := resp.BatchItem[0].ResultReason; r != kmip.ResultReasonInvalidMessage {
				t.Errorf("reason %v, want Invalid Message", r)
			}
			// The server ends the connection after a malformed message.
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Errorf("connection still open after a malformed message: %v", err)
			}
		})
	}
	// The server still serves.
	conn := e.conn(t, "agent")
	if _, err := conn.Query(context.Background()); err != nil {
		t.Fatalf("server unusable after malformed input: %v", err)
	}
}

func TestTimeouts(t *testing.T) {
	dir := t.TempDir()
	ca, _ := pki.NewCA("ca", pki.ECDSAP256)
	srvCert, _ := ca.Issue(pki.Request{CommonName: "kmsd", Role: pki.RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	key := make([]byte, kmsserver.MasterKeySize)
	s, err := kmsserver.New(kmsserver.Options{DBPath: filepath.Join(dir, "db"), MasterKey: key,
		TLS:              &tls.Config{Certificates: []tls.Certificate{srvCert.TLSCertificate()}, ClientCAs: ca.Pool()},
		HandshakeTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()

	// A client that connects and says nothing is dropped.
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("silent client: %v, want the server to close the connection", err)
	}

	// An idle authenticated connection is closed too.
	agent, _ := ca.Issue(pki.Request{CommonName: "agent", Role: pki.RoleClient})
	tc, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{agent.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("idle client: %v, want EOF", err)
	}

	// Shutdown returns, and Serve with it, while a client is connected.
	tc2, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{agent.TLSCertificate()}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc2.Close()
	if err := s.Shutdown(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
}

// checkAudit checks the audit log names callers and operations and holds
// no key material in any common encoding.
func checkAudit(t *testing.T, log string, secrets ...*secret.Secret) {
	t.Helper()
	var gets, locks int
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line is not JSON: %q", line)
		}
		if rec["op"] == "Get" {
			gets++
			if rec["identity"] == nil || rec["id"] == nil || rec["result"] == nil {
				t.Errorf("Get record lacks identity, id or result: %v", rec)
			}
		}
		if rec["op"] == "ModifyAttribute" && rec["attribute"] == "Extractable" {
			locks++
		}
	}
	if gets == 0 || locks == 0 {
		t.Errorf("audit log has %d Get and %d Extractable records", gets, locks)
	}
	for _, s := range secrets {
		b := s.Bytes()
		for _, enc := range []string{string(b), hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)), base64.StdEncoding.EncodeToString(b)} {
			if strings.Contains(log, enc) {
				t.Fatal("audit log contains key material")
			}
		}
	}
}

func TestHandleAsAnswersEverything(t *testing.T) {
	e := start(t, nil)
	for _, msg := range seeds() {
		out := e.srv.Server.HandleAs(context.Background(), "tester", msg)
		if _, err := kmipwire.DecodeResponse(out); err != nil {
			t.Errorf("response does not decode: %v", err)
		}
	}
	// The seeds registered object 1, revoked and destroyed it.
	get := kmip.NewRequestMessage(kmip.V1_4, &payloads.GetAttributesRequestPayload{UniqueIdentifier: "1"})
	enc, _ := kmipwire.Encode(&get)
	resp, err := kmipwire.DecodeResponse(e.srv.Server.HandleAs(context.Background(), "tester", enc))
	if err != nil || resp.BatchItem[0].ResultStatus != kmip.ResultStatusSuccess {
		t.Fatalf("Get Attributes: %+v, %v", resp, err)
	}
	ga := resp.BatchItem[0].ResponsePayload.(*payloads.GetAttributesResponsePayload)
	var state any
	for _, a := range ga.Attribute {
		if a.AttributeName == kmip.AttributeNameState {
			state = a.AttributeValue
		}
	}
	if state != kmip.StateDestroyedCompromised {
		t.Errorf("state %v, want Destroyed Compromised", state)
	}
}
