package pki

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIssueRoles(t *testing.T) {
	ca, err := NewCA("test CA", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     Request
		wantEKU []x509.ExtKeyUsage
		wantKU  x509.KeyUsage
	}{
		{"server-ecdsa", Request{CommonName: "kms", Role: RoleServer, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, x509.KeyUsageDigitalSignature},
		{"client-rsa", Request{CommonName: "agent", Role: RoleClient, KeyType: RSA2048},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{"peer", Request{CommonName: "peer", Role: RolePeer, DNSNames: []string{"ctl1"}},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, x509.KeyUsageDigitalSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			is, err := ca.Issue(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(is.Cert.ExtKeyUsage, tc.wantEKU) {
				t.Errorf("EKU = %v, want %v", is.Cert.ExtKeyUsage, tc.wantEKU)
			}
			if is.Cert.KeyUsage != tc.wantKU {
				t.Errorf("KeyUsage = %b, want %b", is.Cert.KeyUsage, tc.wantKU)
			}
			if is.Cert.IsCA {
				t.Error("leaf certificate is a CA")
			}
			for _, eku := range tc.wantEKU {
				if _, err := is.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
					t.Errorf("verify for %v: %v", eku, err)
				}
			}
			switch tc.req.KeyType {
			case RSA2048:
				if _, ok := is.Key.(*rsa.PrivateKey); !ok {
					t.Errorf("key is %T, want RSA", is.Key)
				}
			default:
				if _, ok := is.Key.(*ecdsa.PrivateKey); !ok {
					t.Errorf("key is %T, want ECDSA", is.Key)
				}
			}
		})
	}
}

func TestIssueRejectsBadRequests(t *testing.T) {
	ca, err := NewCA("test CA", ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		req  Request
		want string
	}{
		{"no-cn", Request{Role: RoleClient}, "empty common name"},
		{"no-role", Request{CommonName: "x"}, "unknown role"},
		{"server-without-names", Request{CommonName: "x", Role: RoleServer}, "no DNS name"},
		{"inverted-validity", Request{CommonName: "x", Role: RoleClient, NotBefore: time.Now(), NotAfter: time.Now().Add(-time.Hour)}, "not after"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ca.Issue(tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestExpiredAndWrongCA(t *testing.T) {
	ca, _ := NewCA("good", ECDSAP256)
	other, _ := NewCA("other", ECDSAP256)
	expired, err := ca.Issue(Request{CommonName: "old", Role: RoleClient,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	opts := x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := expired.Cert.Verify(opts); err == nil {
		t.Error("expired certificate verified")
	}
	foreign, _ := other.Issue(Request{CommonName: "stranger", Role: RoleClient})
	if _, err := foreign.Cert.Verify(opts); err == nil {
		t.Error("certificate from another CA verified")
	}
}

func TestNewDevWritesFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	d, err := NewDev(dir, DevOptions{AgentName: "array-A1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{DevCA, DevServer, DevAgent, DevAdmin, DevPeer} {
		st, err := os.Stat(d.KeyFile(n))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", d.KeyFile(n), st.Mode().Perm())
		}
		if _, err := tls.LoadX509KeyPair(d.CertFile(n), d.KeyFile(n)); err != nil {
			t.Errorf("load %s: %v", n, err)
		}
	}
	if d.Agent.Cert.Subject.CommonName != "array-A1" {
		t.Errorf("agent CN = %q", d.Agent.Cert.Subject.CommonName)
	}
	if _, err := d.Server.Cert.Verify(x509.VerifyOptions{Roots: d.CA.Pool(), DNSName: "127.0.0.1"}); err != nil {
		t.Errorf("server certificate for 127.0.0.1: %v", err)
	}
	loaded, err := LoadCA(d.CertFile(DevCA), d.KeyFile(DevCA))
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(d.CA.Cert) {
		t.Error("loaded CA differs")
	}
	if _, err := NewDev(dir, DevOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second NewDev: err = %v, want already exists", err)
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := ParseCertsPEM([]byte("garbage")); err == nil {
		t.Error("ParseCertsPEM(garbage) succeeded")
	}
	ca, _ := NewCA("x", RSA2048)
	keyPEM, _ := ca.KeyPEM()
	if _, err := ParseCertsPEM(keyPEM); err == nil || !strings.Contains(err.Error(), "want CERTIFICATE") {
		t.Errorf("ParseCertsPEM(key) err = %v", err)
	}
	if _, err := ParseKeyPEM(ca.CertPEM()); err == nil {
		t.Error("ParseKeyPEM(cert) succeeded")
	}
	k, err := ParseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.(*rsa.PrivateKey); !ok {
		t.Errorf("parsed %T", k)
	}
	if _, err := ParseKeyType("dsa"); err == nil {
		t.Error("ParseKeyType(dsa) succeeded")
	}
}
