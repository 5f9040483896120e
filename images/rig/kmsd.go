package rig

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/kmsserver"
	"github.com/sedboot/sedboot/internal/pki"
)

// KeyServer is a KMIP key server the rig provisions and the guest reaches:
// its address on the host, the CA that signs its certificate, the array's
// client identity and an administrator identity.
type KeyServer struct {
	// Name labels it in the boot medium ("kmsd-a").
	Name string
	// Addr is 127.0.0.1:port on the host.
	Addr string
	// ServerName is the name its certificate carries (checked by the
	// agent, which reaches it under another address).
	ServerName string
	// CAPEM signs the server's certificate.
	CAPEM []byte
	// CA issues client certificates the server accepts.
	CA *pki.CA
	// ArrayCert/ArrayKey are the array's identity (PEM).
	ArrayCert, ArrayKey []byte
	// AdminCert/AdminKey are an administrator's identity (PEM), nil when
	// the server has none.
	AdminCert, AdminKey []byte
	// CipherSuites the client must enable (PyKMIP with RSA).
	CipherSuites []string
}

// Client returns a kms client for the server as the array (admin false) or
// the administrator.
func (k *KeyServer) Client(admin bool) (*kms.Client, error) {
	cert, key := k.ArrayCert, k.ArrayKey
	if admin {
		cert, key = k.AdminCert, k.AdminKey
	}
	return kms.New(kms.Config{
		Servers:        []kms.Server{{Name: k.Name, Address: k.Addr, ServerName: k.ServerName}},
		CAPEM:          k.CAPEM,
		CertPEM:        cert,
		KeyPEM:         key,
		CipherSuites:   k.CipherSuites,
		AttemptTimeout: 10 * time.Second,
		TotalTimeout:   30 * time.Second,
	})
}

// Conn connects to the server as the array or the administrator.
func (k *KeyServer) Conn(ctx context.Context, admin bool) (*kms.Conn, error) {
	c, err := k.Client(admin)
	if err != nil {
		return nil, err
	}
	return c.Connect(ctx, kms.Server{Name: k.Name, Address: k.Addr, ServerName: k.ServerName})
}

// KMSD is an in-process kmsd.
type KMSD struct {
	KeyServer
	Server *kmsserver.Server
	done   chan error
}

// ArrayIdentity is the common name of the array's client certificate.
func ArrayIdentity(array string) string { return "array-" + array }

// StartKMSD runs kmsd on 127.0.0.1 with a new development CA (a server
// certificate for "localhost" and 127.0.0.1), a database in dir, and
// client certificates for the array and for "admin".
func StartKMSD(dir, name, array string, audit *slog.Logger) (*KMSD, error) {
	ca, err := pki.NewCA("sedboot dev CA ("+name+")", pki.ECDSAP256)
	if err != nil {
		return nil, err
	}
	srvCert, err := ca.Issue(pki.Request{CommonName: name, Role: pki.RoleServer,
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		return nil, err
	}
	arr, err := ca.Issue(pki.Request{CommonName: ArrayIdentity(array), Role: pki.RoleClient})
	if err != nil {
		return nil, err
	}
	adm, err := ca.Issue(pki.Request{CommonName: "admin", Role: pki.RoleClient})
	if err != nil {
		return nil, err
	}
	mk := make([]byte, kmsserver.MasterKeySize)
	if _, err := rand.Read(mk); err != nil {
		return nil, err
	}
	srv, err := kmsserver.New(kmsserver.Options{
		DBPath:    filepath.Join(dir, name+".db"),
		MasterKey: mk,
		TLS:       &tls.Config{Certificates: []tls.Certificate{srvCert.TLSCertificate()}, ClientCAs: ca.Pool()},
		Policy:    kmsserver.Policy{Admins: []string{"admin"}},
		Audit:     audit,
	})
	clear(mk)
	if err != nil {
		return nil, fmt.Errorf("kmsd: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	k := &KMSD{Server: srv, done: make(chan error, 1)}
	k.Name, k.Addr, k.ServerName, k.CA = name, l.Addr().String(), "localhost", ca
	k.CAPEM = pki.EncodeCertPEM(ca.Cert)
	k.ArrayCert = arr.CertPEM()
	if k.ArrayKey, err = arr.KeyPEM(); err != nil {
		return nil, err
	}
	k.AdminCert = adm.CertPEM()
	if k.AdminKey, err = adm.KeyPEM(); err != nil {
		return nil, err
	}
	go func() { k.done <- srv.Serve(l) }()
	return k, nil
}

// Close stops the server.
func (k *KMSD) Close() error {
	err := k.Server.Shutdown(10 * time.Second)
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
	}
	return err
}
