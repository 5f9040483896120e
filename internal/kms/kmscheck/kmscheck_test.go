package kmscheck_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/kms/kmscheck"
	"github.com/sedboot/sedboot/internal/kms/pykmiptest"
	"github.com/sedboot/sedboot/internal/kmsserver/kmsdtest"
	"github.com/sedboot/sedboot/internal/pki"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}

func kmsdConfig(t *testing.T) (kms.Config, *kms.Config, *kmsdtest.Server) {
	s := kmsdtest.Start(t, kmsdtest.Options{})
	cf, kf := s.IssueClient(t, "array-A1")
	of, ok := s.IssueClient(t, "someone-else")
	cfg := kms.Config{Servers: []kms.Server{{Name: "kmsd", Address: s.Addr}}, CAFile: s.CAFile, CertFile: cf, KeyFile: kf,
		AttemptTimeout: 2 * time.Second}
	other := cfg
	other.CertFile, other.KeyFile = of, ok
	return cfg, &other, s
}

func TestFitServerJSON(t *testing.T) {
	cfg, other, _ := kmsdConfig(t)
	var out bytes.Buffer
	ok, err := kmscheck.Run(context.Background(), kmscheck.Config{KMS: cfg, Other: other, RequireLock: true}, &out, true)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("kmsd unfit:\n%s", out.String())
	}
	var rep kmscheck.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	s := rep.Servers[0]
	if err := rep.Err(); err != nil {
		t.Errorf("a fit report's Err: %v", err)
	}
	if !rep.OK || !s.Fit || s.KMIPVersion != "1.4" || s.TLSVersion == "" || s.Certificate == nil || s.Certificate.Subject == "" {
		t.Errorf("report: %+v", s)
	}
	if s.Probe == nil || !s.Probe.Has(kms.RefuseExtractable) || !s.Probe.Has(kms.RefusePolicy) {
		t.Errorf("probe: %+v", s.Probe)
	}
	if rep.Client == nil || rep.Client.Subject != "CN=array-A1" {
		t.Errorf("client certificate: %+v", rep.Client)
	}
}

// TestPyKMIP checks Debian's PyKMIP with an RSA server certificate: its
// TLS 1.2 profile then offers only CBC-SHA256 suites, which Go does not
// enable by default; with one enabled the server is fit but cannot
// enforce a cryptographic lock.
func TestPyKMIP(t *testing.T) {
	py := pykmiptest.Start(t, pykmiptest.Options{KeyType: pki.RSA2048})
	cf, kf, err := py.IssueClient("array-A1", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kms.Config{Servers: []kms.Server{{Name: "pykmip", Address: py.Addr}}, CAFile: py.CAFile, CertFile: cf, KeyFile: kf}
	var out bytes.Buffer
	ok, err := kmscheck.Run(context.Background(), kmscheck.Config{KMS: cfg}, &out, false)
	if err != nil {
		t.Fatal(err)
	}
	if ok || !strings.Contains(out.String(), "enable a CBC-SHA256 cipher suite") {
		t.Fatalf("RSA-certificate PyKMIP with Go's default suites: want unfit with the CBC-SHA256 hint:\n%s", out.String())
	}
	cfg.CipherSuites = []string{"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"}
	out.Reset()
	ok, err = kmscheck.Run(context.Background(), kmscheck.Config{KMS: cfg}, &out, false)
	if err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Log("\n" + text)
	if !ok {
		t.Fatalf("PyKMIP should be fit when no lock is required")
	}
	for _, want := range []string{"pykmip (", "FIT", "cannot enforce a cryptographic lock", "Application Specific Information",
		"refuses Get when Extractable=false", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256 is not an AEAD suite"} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	out.Reset()
	ok, err = kmscheck.Run(context.Background(), kmscheck.Config{KMS: cfg, RequireLock: true}, &out, false)
	if err != nil {
		t.Fatal(err)
	}
	if ok || !strings.Contains(out.String(), "why unfit") || !strings.Contains(out.String(), "NOT READY") {
		t.Errorf("with a lock required PyKMIP should be unfit:\n%s", out.String())
	}
}

func TestUnfitServers(t *testing.T) {
	cfg, _, s := kmsdConfig(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	other, _ := pki.NewCA("another CA", pki.ECDSAP256)
	otherCA, _, _ := other.WriteFiles(t.TempDir(), "other")
	expired, _ := s.CA.Issue(pki.Request{CommonName: "array-A1", Role: pki.RoleClient,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	ecf, ekf, _ := expired.WriteFiles(t.TempDir(), "expired")
	cases := []struct {
		name     string
		mod      func(*kms.Config)
		what     string
		fix      string
		clientPb bool
	}{
		{"unreachable", func(c *kms.Config) { c.Servers[0].Address = dead }, "cannot open a TCP connection", "check the address and port", false},
		{"wrong name", func(c *kms.Config) { c.Servers[0].ServerName = "kms.example" }, "does not carry the name kms.example", "it carries localhost, 127.0.0.1", false},
		{"wrong CA", func(c *kms.Config) { c.CAFile = otherCA }, "not signed by a CA in the configured bundle", "issued by CN=kmsd test CA", false},
		{"expired client", func(c *kms.Config) { c.CertFile, c.KeyFile = ecf, ekf }, "refused the TLS handshake", "unexpired", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.Servers = append([]kms.Server(nil), cfg.Servers...)
			tc.mod(&c)
			rep, err := kmscheck.Check(context.Background(), kmscheck.Config{KMS: c})
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK || rep.Servers[0].Fit {
				t.Fatal("reported fit")
			}
			var found bool
			for _, p := range rep.Servers[0].Problems {
				if p.Fatal && strings.Contains(p.What, tc.what) && strings.Contains(p.Fix, tc.fix) {
					found = true
				}
			}
			if !found {
				t.Errorf("problems %+v lack %q / %q", rep.Servers[0].Problems, tc.what, tc.fix)
			}
			if err := rep.Err(); err == nil || !strings.Contains(err.Error(), rep.Servers[0].Name+": ") || !strings.Contains(err.Error(), tc.what) {
				t.Errorf("Err() = %v, want it to name %q", err, tc.what)
			}
			if tc.clientPb && (len(rep.Problems) == 0 || !strings.Contains(rep.Problems[0].What, "expired")) {
				t.Errorf("client problems %+v lack the expiry", rep.Problems)
			}
			var out bytes.Buffer
			if err := rep.WriteText(&out); err != nil || !strings.Contains(out.String(), "UNFIT") {
				t.Errorf("text: %v\n%s", err, out.String())
			}
		})
	}
}
