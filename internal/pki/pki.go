// Package pki makes the X.509 material sedboot needs for development,
// demos and tests: a certificate authority and the certificates it issues
// to a KMIP server, a boot agent (the array identity), an administrator
// tool and a peer controller, each with the key usages and extended key
// usages its role calls for. Keys are ECDSA P-256 (the default) or RSA.
//
// Tests use it to make deliberately bad material as well: expired
// certificates, certificates from another CA, certificates for the wrong
// host name.
//
// Private keys are written only with mode 0600; files are written
// atomically (temporary file, fsync, rename) so that nothing is left
// half-written.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// KeyType selects the algorithm and size of a generated key.
type KeyType int

const (
	// ECDSAP256 is an ECDSA key on NIST P-256 (the default).
	ECDSAP256 KeyType = iota
	// RSA2048 is a 2048-bit RSA key.
	RSA2048
	// RSA3072 is a 3072-bit RSA key.
	RSA3072
)

// String names the key type the way the configuration files spell it.
func (k KeyType) String() string {
	switch k {
	case ECDSAP256:
		return "ecdsa-p256"
	case RSA2048:
		return "rsa-2048"
	case RSA3072:
		return "rsa-3072"
	}
	return fmt.Sprintf("KeyType(%d)", int(k))
}

// ParseKeyType parses "ecdsa-p256" (or "ecdsa"), "rsa-2048" (or "rsa") and
// "rsa-3072".
func ParseKeyType(s string) (KeyType, error) {
	switch s {
	case "", "ecdsa", "ecdsa-p256", "p256":
		return ECDSAP256, nil
	case "rsa", "rsa-2048", "rsa2048":
		return RSA2048, nil
	case "rsa-3072", "rsa3072":
		return RSA3072, nil
	}
	return 0, fmt.Errorf("unknown key type %q (want ecdsa-p256, rsa-2048 or rsa-3072)", s)
}

// Role says what a certificate is for; it decides the key usages and the
// extended key usages.
type Role int

const (
	// RoleServer is a TLS server (the KMIP server): serverAuth.
	RoleServer Role = iota + 1
	// RoleClient is a TLS client (boot agent, admin tool): clientAuth.
	RoleClient
	// RolePeer is a controller that is both client and server on the
	// inter-controller link: serverAuth and clientAuth.
	RolePeer
)

// String names the role.
func (r Role) String() string {
	switch r {
	case RoleServer:
		return "server"
	case RoleClient:
		return "client"
	case RolePeer:
		return "peer"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// DefaultValidity is how long certificates issued without an explicit
// NotAfter stay valid.
const DefaultValidity = 2 * 365 * 24 * time.Hour

// CA is a certificate authority able to issue certificates.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Key is the CA's private key.
	Key crypto.Signer
}

// Issued is a certificate with its private key.
type Issued struct {
	// Cert is the parsed certificate.
	Cert *x509.Certificate
	// Key is the private key matching Cert.
	Key crypto.Signer
}

// Request describes a certificate to issue.
type Request struct {
	// CommonName is the subject CN; for clients it is the identity a KMIP
	// server sees (for kmsd, the caller's name). Required.
	CommonName string
	// Organization is an optional subject O.
	Organization string
	// Role decides key usages and extended key usages. Required.
	Role Role
	// DNSNames and IPs are the subject alternative names a server or peer
	// certificate is valid for.
	DNSNames []string
	IPs      []net.IP
	// KeyType is the algorithm of the new key (ECDSA P-256 by default).
	KeyType KeyType
	// NotBefore and NotAfter bound the validity. Zero NotBefore means one
	// hour ago (tolerates clock skew); zero NotAfter means NotBefore plus
	// DefaultValidity. Tests set both in the past to make an expired
	// certificate.
	NotBefore time.Time
	NotAfter  time.Time
}

// NewCA makes a self-signed CA named name with a key of type kt, valid for
// ten years.
func NewCA(name string, kt KeyType) (*CA, error) {
	if name == "" {
		return nil, errors.New("new CA: empty name")
	}
	key, err := GenerateKey(kt)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", name, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"sedboot development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          subjectKeyID(key.Public()),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: sign: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: parse: %w", name, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Issue makes a certificate for req signed by the CA.
func (ca *CA) Issue(req Request) (*Issued, error) {
	if req.CommonName == "" {
		return nil, errors.New("issue certificate: empty common name")
	}
	var eku []x509.ExtKeyUsage
	switch req.Role {
	case RoleServer:
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case RoleClient:
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case RolePeer:
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	default:
		return nil, fmt.Errorf("issue certificate %q: unknown role %d", req.CommonName, int(req.Role))
	}
	if (req.Role == RoleServer || req.Role == RolePeer) && len(req.DNSNames) == 0 && len(req.IPs) == 0 {
		return nil, fmt.Errorf("issue %s certificate %q: no DNS name or IP address", req.Role, req.CommonName)
	}
	key, err := GenerateKey(req.KeyType)
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: %w", req.CommonName, err)
	}
	usage := x509.KeyUsageDigitalSignature
	if _, isRSA := key.(*rsa.PrivateKey); isRSA {
		// RSA key transport (TLS_RSA_* suites, which PyKMIP's TLS 1.2
		// profile lists) needs keyEncipherment.
		usage |= x509.KeyUsageKeyEncipherment
	}
	notBefore := req.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Hour)
	}
	notAfter := req.NotAfter
	if notAfter.IsZero() {
		notAfter = notBefore.Add(DefaultValidity)
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("issue certificate %q: NotAfter %s is not after NotBefore %s", req.CommonName, notAfter, notBefore)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: %w", req.CommonName, err)
	}
	subject := pkix.Name{CommonName: req.CommonName}
	if req.Organization != "" {
		subject.Organization = []string{req.Organization}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPs,
		SubjectKeyId:          subjectKeyID(key.Public()),
		AuthorityKeyId:        ca.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: sign: %w", req.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: parse: %w", req.CommonName, err)
	}
	return &Issued{Cert: cert, Key: key}, nil
}

// GenerateKey makes a new private key of type kt.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("generate key: unknown key type %d", int(kt))
}

// CertPEM is the CA certificate in PEM.
func (ca *CA) CertPEM() []byte { return EncodeCertPEM(ca.Cert) }

// KeyPEM is the CA key in PKCS#8 PEM.
func (ca *CA) KeyPEM() ([]byte, error) { return EncodeKeyPEM(ca.Key) }

// Pool is a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WriteFiles writes the CA certificate to dir/name.crt (0644) and its key
// to dir/name.key (0600) and returns their paths.
func (ca *CA) WriteFiles(dir, name string) (certFile, keyFile string, err error) {
	return writePair(dir, name, ca.Cert, ca.Key)
}

// CertPEM is the certificate in PEM.
func (is *Issued) CertPEM() []byte { return EncodeCertPEM(is.Cert) }

// KeyPEM is the private key in PKCS#8 PEM.
func (is *Issued) KeyPEM() ([]byte, error) { return EncodeKeyPEM(is.Key) }

// TLSCertificate is the certificate and key as a tls.Certificate.
func (is *Issued) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{is.Cert.Raw}, PrivateKey: is.Key, Leaf: is.Cert}
}

// WriteFiles writes the certificate to dir/name.crt (0644) and the key to
// dir/name.key (0600) and returns their paths.
func (is *Issued) WriteFiles(dir, name string) (certFile, keyFile string, err error) {
	return writePair(dir, name, is.Cert, is.Key)
}

func writePair(dir, name string, cert *x509.Certificate, key crypto.Signer) (string, string, error) {
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return "", "", fmt.Errorf("write %s: %w", name, err)
	}
	certFile := filepath.Join(dir, name+".crt")
	keyFile := filepath.Join(dir, name+".key")
	if err := WriteFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := WriteFileAtomic(certFile, EncodeCertPEM(cert), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// EncodeCertPEM encodes cert as a PEM "CERTIFICATE" block.
func EncodeCertPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// EncodeKeyPEM encodes key as a PEM "PRIVATE KEY" (PKCS#8) block.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertsPEM parses every CERTIFICATE block in data; it fails when data
// holds none or holds anything else that is not a certificate.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(certs)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the last PEM block")
	}
	return certs, nil
}

// ParseKeyPEM parses a PEM private key in PKCS#8, PKCS#1 (RSA) or SEC 1
// (EC) form.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	switch s.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey:
	default:
		return nil, fmt.Errorf("unsupported private key type %T (want ECDSA or RSA)", s)
	}
	return s, nil
}

// LoadCA reads a CA certificate and key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	certs, err := ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA key %s: %w", keyFile, err)
	}
	if !certs[0].IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", certFile)
	}
	if !publicKeysEqual(certs[0].PublicKey, key.Public()) {
		return nil, fmt.Errorf("load CA: key %s does not match certificate %s", keyFile, certFile)
	}
	return &CA{Cert: certs[0], Key: key}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

// WriteFileAtomic writes data to path with mode perm through a temporary
// file in the same directory, fsynced and renamed into place, so a reader
// sees the old file or the new one, never a part.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return nil
}

func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func subjectKeyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}
