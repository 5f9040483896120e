// Package kmsdtest runs a kmsd KMIP server inside a test process on
// 127.0.0.1, with a fresh CA, server certificate, master key and
// database, and issues client certificates for it.
package kmsdtest

import (
	"crypto/rand"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/kmsserver"
	"github.com/sedboot/sedboot/internal/pki"
)

// Options configures the test server.
type Options struct {
	// Policy; by default the identity "admin" is an administrator.
	Policy *kmsserver.Policy
	// KeyType of the server certificate (ECDSA P-256 by default).
	KeyType pki.KeyType
	// Audit receives the audit log; nil discards it.
	Audit *slog.Logger
	// IdleTimeout of connections (kmsd's default when zero).
	IdleTimeout time.Duration
	// MaxBatchItems limits the batch items per request (see
	// kmsserver.Options); zero: no limit.
	MaxBatchItems int
}

// Server is a running in-process kmsd.
type Server struct {
	// Addr is 127.0.0.1:port.
	Addr string
	// Dir holds the certificates and the database.
	Dir string
	// CA signs the server certificate and the client certificates.
	CA *pki.CA
	// CAFile is the CA certificate (PEM).
	CAFile string
	// Server is the running server.
	Server *kmsserver.Server

	done chan error
}

// Start runs a server until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("kmsd test CA", pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	caFile, _, err := ca.WriteFiles(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Issue(pki.Request{CommonName: "kmsd", Role: pki.RoleServer,
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyType: opts.KeyType})
	if err != nil {
		t.Fatal(err)
	}
	policy := kmsserver.Policy{Admins: []string{"admin"}}
	if opts.Policy != nil {
		policy = *opts.Policy
	}
	mk := make([]byte, kmsserver.MasterKeySize)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	srv, err := kmsserver.New(kmsserver.Options{
		DBPath:        filepath.Join(dir, "kmsd.db"),
		MasterKey:     mk,
		TLS:           &tls.Config{Certificates: []tls.Certificate{srvCert.TLSCertificate()}, ClientCAs: ca.Pool()},
		Policy:        policy,
		Audit:         opts.Audit,
		IdleTimeout:   opts.IdleTimeout,
		MaxBatchItems: opts.MaxBatchItems,
	})
	clear(mk)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: l.Addr().String(), Dir: dir, CA: ca, CAFile: caFile, Server: srv, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(l) }()
	t.Cleanup(func() {
		if err := srv.Shutdown(5 * time.Second); err != nil {
			t.Errorf("kmsd shutdown: %v", err)
		}
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("kmsd serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("kmsd Serve did not return within 10s of Shutdown")
		}
	})
	return s
}

// IssueClient makes a client certificate with common name cn and writes
// it to the server's directory as NAME.crt / NAME.key.
func (s *Server) IssueClient(t testing.TB, cn string) (certFile, keyFile string) {
	t.Helper()
	is, err := s.CA.Issue(pki.Request{CommonName: cn, Role: pki.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err = is.WriteFiles(s.Dir, cn)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
