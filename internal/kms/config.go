package kms

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ovh/kmip-go"

	"github.com/sedboot/sedboot/internal/pki"
)

// Server is one KMIP key server.
type Server struct {
	// Name labels the server in reports and errors and keys per-server
	// object identifiers; the address when empty.
	Name string `json:"name,omitempty"`
	// Address is host:port.
	Address string `json:"address"`
	// ServerName is the name (DNS name or IP address) the server's
	// certificate must carry; the host part of Address when empty.
	ServerName string `json:"server_name,omitempty"`
}

// Label is the server's name, or its address when it has none.
func (s Server) Label() string {
	if s.Name != "" {
		return s.Name
	}
	return s.Address
}

// MetadataMode selects how Register attaches the sedboot metadata of a key
// (array serial, generation, ...) to the object.
type MetadataMode string

const (
	// MetadataAuto tries custom "x-" attributes and falls back to
	// Application Specific Information when the server rejects them.
	MetadataAuto MetadataMode = ""
	// MetadataCustom uses custom attributes named "x-sedboot-<key>".
	MetadataCustom MetadataMode = "custom"
	// MetadataASI uses one Application Specific Information attribute in
	// the "sedboot" namespace with data "k=v;k=v".
	MetadataASI MetadataMode = "asi"
	// MetadataNone does not store metadata.
	MetadataNone MetadataMode = "none"
)

// Config configures a Client.
type Config struct {
	// Servers are tried in this order.
	Servers []Server
	// CAFile (or CAPEM) is the PEM bundle of CAs that sign the servers'
	// certificates. Required: the system roots are never trusted.
	CAFile string
	CAPEM  []byte
	// CertFile and KeyFile (or CertPEM and KeyPEM) are the client's
	// certificate and private key (RSA or ECDSA). Without them the client
	// connects without a certificate, which a KMIP server should refuse.
	CertFile, KeyFile string
	CertPEM, KeyPEM   []byte
	// Version forces a KMIP protocol version ("1.0" to "1.4") and skips
	// the Discover Versions round trip; empty negotiates the highest of
	// 1.0 to 1.4 that the server supports.
	Version string
	// AttemptTimeout bounds one attempt at one server: connect, TLS and
	// the requests of one operation. Default 5s.
	AttemptTimeout time.Duration
	// TotalTimeout bounds a whole operation across servers and retries
	// (the context's deadline applies too). Default 30s.
	TotalTimeout time.Duration
	// Retries is how many more rounds over the server list follow the
	// first when every server failed with a transient error. Default 2;
	// negative means none.
	Retries int
	// Backoff is the pause before the second round, doubled before each
	// further one up to MaxBackoff. Defaults 250ms and 2s.
	Backoff, MaxBackoff time.Duration
	// CipherSuites adds TLS 1.2 cipher suites by Go name (for example
	// "TLS_RSA_WITH_AES_128_CBC_SHA256" for a PyKMIP server with an RSA
	// certificate) to Go's default secure list.
	CipherSuites []string
	// Metadata selects how Register stores key metadata.
	Metadata MetadataMode
	// Logger receives debug records of each attempt (never key material);
	// nil discards them.
	Logger *slog.Logger
}

// Defaults applied by New.
const (
	DefaultAttemptTimeout = 5 * time.Second
	DefaultTotalTimeout   = 30 * time.Second
	DefaultRetries        = 2
	DefaultBackoff        = 250 * time.Millisecond
	DefaultMaxBackoff     = 2 * time.Second
	// MaxBatch is the largest number of keys Fetch obtains in one call,
	// and the largest number of batch items the batched operations of a
	// Conn put in one request: they split larger batches.
	MaxBatch = 256
)

// ParseVersion parses "1.0" to "1.4".
func ParseVersion(s string) (kmip.ProtocolVersion, error) {
	maj, min, ok := strings.Cut(s, ".")
	if !ok {
		return kmip.ProtocolVersion{}, fmt.Errorf("KMIP version %q: want MAJOR.MINOR, 1.0 to 1.4", s)
	}
	a, err1 := strconv.Atoi(maj)
	b, err2 := strconv.Atoi(min)
	if err1 != nil || err2 != nil || a != 1 || b < 0 || b > 4 {
		return kmip.ProtocolVersion{}, fmt.Errorf("KMIP version %q: this client speaks 1.0 to 1.4", s)
	}
	return kmip.ProtocolVersion{ProtocolVersionMajor: int32(a), ProtocolVersionMinor: int32(b)}, nil
}

// validate checks the configuration and fills defaults. Errors name the
// field.
func (cfg *Config) validate() error {
	if len(cfg.Servers) == 0 {
		return errors.New("kms config: servers: at least one server is required")
	}
	seen := map[string]bool{}
	for i, s := range cfg.Servers {
		host, port, err := net.SplitHostPort(s.Address)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("kms config: servers[%d].address: %q is not host:port", i, s.Address)
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			return fmt.Errorf("kms config: servers[%d].address: bad port %q", i, port)
		}
		if seen[s.Label()] {
			return fmt.Errorf("kms config: servers[%d]: duplicate server %q", i, s.Label())
		}
		seen[s.Label()] = true
	}
	if cfg.CAFile == "" && len(cfg.CAPEM) == 0 {
		return errors.New("kms config: ca: a CA bundle is required (the system roots are never trusted)")
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return errors.New("kms config: client_cert and client_key go together")
	}
	if (len(cfg.CertPEM) == 0) != (len(cfg.KeyPEM) == 0) {
		return errors.New("kms config: client certificate PEM and key PEM go together")
	}
	if cfg.Version != "" {
		if _, err := ParseVersion(cfg.Version); err != nil {
			return fmt.Errorf("kms config: version: %w", err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"attempt_timeout", cfg.AttemptTimeout}, {"total_timeout", cfg.TotalTimeout}, {"backoff", cfg.Backoff}, {"max_backoff", cfg.MaxBackoff}} {
		if d.v < 0 {
			return fmt.Errorf("kms config: %s: negative duration %s", d.name, d.v)
		}
	}
	switch cfg.Metadata {
	case MetadataAuto, MetadataCustom, MetadataASI, MetadataNone:
	default:
		return fmt.Errorf("kms config: metadata: unknown mode %q (want custom, asi or none)", cfg.Metadata)
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.TotalTimeout == 0 {
		cfg.TotalTimeout = DefaultTotalTimeout
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultRetries
	} else if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	return nil
}

// tlsConfig builds the base TLS configuration (without server name).
func (cfg *Config) tlsConfig() (*tls.Config, error) {
	caPEM := cfg.CAPEM
	if cfg.CAFile != "" {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kms config: ca: %w", err)
		}
		caPEM = b
	}
	cas, err := pki.ParseCertsPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("kms config: ca %s: %w", cfg.CAFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		RootCAs:            pool,
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}
	var certPEM, keyPEM []byte
	switch {
	case cfg.CertFile != "":
		if certPEM, err = os.ReadFile(cfg.CertFile); err != nil {
			return nil, fmt.Errorf("kms config: client_cert: %w", err)
		}
		if keyPEM, err = os.ReadFile(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("kms config: client_key: %w", err)
		}
	case len(cfg.CertPEM) > 0:
		certPEM, keyPEM = cfg.CertPEM, cfg.KeyPEM
	}
	if certPEM != nil {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if cfg.CertFile != "" {
			clear(keyPEM) // our own copy of the private key file
		}
		if err != nil {
			return nil, fmt.Errorf("kms config: client certificate %s / key %s: %w", cfg.CertFile, cfg.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if len(cfg.CipherSuites) > 0 {
		ids := map[string]uint16{}
		for _, s := range tls.CipherSuites() {
			ids[s.Name] = s.ID
		}
		for _, s := range tls.InsecureCipherSuites() {
			ids[s.Name] = s.ID
		}
		// Start from Go's defaults so that adding a suite never removes
		// the secure ones.
		for _, s := range tls.CipherSuites() {
			tc.CipherSuites = append(tc.CipherSuites, s.ID)
		}
		for _, name := range cfg.CipherSuites {
			id, ok := ids[name]
			if !ok {
				return nil, fmt.Errorf("kms config: cipher_suites: unknown TLS cipher suite %q", name)
			}
			tc.CipherSuites = append(tc.CipherSuites, id)
		}
	}
	return tc, nil
}
