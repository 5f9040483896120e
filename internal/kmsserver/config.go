package kmsserver

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sedboot/sedboot/internal/pki"
)

// FileConfig is kmsd's configuration file (JSON). Relative paths are
// relative to the file's directory.
type FileConfig struct {
	// Listen is the host:port to listen on (default 127.0.0.1:5696).
	Listen string `json:"listen"`
	// Cert and Key are the server's PEM certificate and key; ClientCA is
	// the PEM bundle of CAs whose client certificates are accepted.
	Cert     string `json:"cert"`
	Key      string `json:"key"`
	ClientCA string `json:"client_ca"`
	// DB is the bbolt database file.
	DB string `json:"db"`
	// MasterKey is a file of exactly 32 random bytes, mode 0600, that
	// seals key material in the database.
	MasterKey string `json:"master_key"`
	// AuditLog is a file the audit records (JSON lines) are appended to;
	// "-" or empty means standard error.
	AuditLog string `json:"audit_log,omitempty"`
	// LogLevel of the operational log on standard error: debug, info,
	// warn or error (default info).
	LogLevel string `json:"log_level,omitempty"`
	// HandshakeTimeout and IdleTimeout are Go durations ("10s", "5m").
	HandshakeTimeout string `json:"handshake_timeout,omitempty"`
	IdleTimeout      string `json:"idle_timeout,omitempty"`
	// MaxBatchItems limits the batch items of one request (0: no limit
	// beyond the 1 MiB message size); see Options.MaxBatchItems.
	MaxBatchItems int `json:"max_batch_items,omitempty"`
	// Policy says who may do what.
	Policy Policy `json:"policy"`

	dir string
}

// DefaultListen is kmsd's default address (KMIP's registered port).
const DefaultListen = "127.0.0.1:5696"

// LoadConfig reads and checks a configuration file. Errors name the file
// and the field.
func LoadConfig(path string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var fc FileConfig
	if err := dec.Decode(&fc); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("config %s: syntax error at byte %d: %v", path, se.Offset, err)
		}
		return nil, fmt.Errorf("config %s: %v", path, strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: trailing data after the JSON object", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	fc.dir = filepath.Dir(abs)
	if err := fc.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &fc, nil
}

// Validate checks every field without touching the files.
func (fc *FileConfig) Validate() error {
	if fc.Listen == "" {
		fc.Listen = DefaultListen
	}
	host, port, err := net.SplitHostPort(fc.Listen)
	if err != nil {
		return fmt.Errorf("listen: %q is not host:port", fc.Listen)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("listen: bad port %q", port)
	}
	_ = host
	for _, f := range []struct{ name, v string }{
		{"cert", fc.Cert}, {"key", fc.Key}, {"client_ca", fc.ClientCA}, {"db", fc.DB}, {"master_key", fc.MasterKey},
	} {
		if f.v == "" {
			return fmt.Errorf("%s: required", f.name)
		}
	}
	if _, err := parseLevel(fc.LogLevel); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	for _, d := range []struct{ name, v string }{{"handshake_timeout", fc.HandshakeTimeout}, {"idle_timeout", fc.IdleTimeout}} {
		if d.v == "" {
			continue
		}
		if v, err := time.ParseDuration(d.v); err != nil || v <= 0 {
			return fmt.Errorf("%s: %q is not a positive duration such as \"10s\"", d.name, d.v)
		}
	}
	if fc.MaxBatchItems < 0 {
		return fmt.Errorf("max_batch_items: %d is negative (0 means no limit)", fc.MaxBatchItems)
	}
	if err := fc.Policy.validate(); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}

// Path resolves p against the configuration file's directory.
func (fc *FileConfig) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || p == "-" {
		return p
	}
	return filepath.Join(fc.dir, p)
}

// Level is the operational log level.
func (fc *FileConfig) Level() slog.Level {
	l, _ := parseLevel(fc.LogLevel)
	return l
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown level %q (want debug, info, warn or error)", s)
}

// Options loads the certificates and the master key and returns the
// server options (without Audit, which the caller opens).
func (fc *FileConfig) Options() (Options, error) {
	cert, err := tls.LoadX509KeyPair(fc.Path(fc.Cert), fc.Path(fc.Key))
	if err != nil {
		return Options{}, fmt.Errorf("cert %s / key %s: %w", fc.Path(fc.Cert), fc.Path(fc.Key), err)
	}
	if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil && time.Now().After(leaf.NotAfter) {
		return Options{}, fmt.Errorf("cert %s: expired on %s", fc.Path(fc.Cert), leaf.NotAfter.Format(time.RFC3339))
	}
	caPEM, err := os.ReadFile(fc.Path(fc.ClientCA))
	if err != nil {
		return Options{}, fmt.Errorf("client_ca: %w", err)
	}
	cas, err := pki.ParseCertsPEM(caPEM)
	if err != nil {
		return Options{}, fmt.Errorf("client_ca %s: %w", fc.Path(fc.ClientCA), err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	mk, err := ReadMasterKey(fc.Path(fc.MasterKey))
	if err != nil {
		return Options{}, err
	}
	opts := Options{
		DBPath:        fc.Path(fc.DB),
		MasterKey:     mk,
		TLS:           &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool},
		Policy:        fc.Policy,
		MaxBatchItems: fc.MaxBatchItems,
	}
	if fc.HandshakeTimeout != "" {
		opts.HandshakeTimeout, _ = time.ParseDuration(fc.HandshakeTimeout)
	}
	if fc.IdleTimeout != "" {
		opts.IdleTimeout, _ = time.ParseDuration(fc.IdleTimeout)
	}
	return opts, nil
}

// ReadMasterKey reads a master key file, refusing one that others can
// read or that is not exactly MasterKeySize bytes.
func ReadMasterKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("master_key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("master_key %s: mode %#o lets others read it; chmod 600 it", path, st.Mode().Perm())
	}
	if st.Size() != MasterKeySize {
		return nil, fmt.Errorf("master_key %s: %d bytes, want %d", path, st.Size(), MasterKeySize)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("master_key: %w", err)
	}
	return b, nil
}

// WriteMasterKey creates a new random master key file (mode 0600); it
// refuses to replace an existing one.
func WriteMasterKey(path string) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("master_key %s already exists", path)
	}
	k := make([]byte, MasterKeySize)
	defer clear(k)
	if _, err := rand.Read(k); err != nil {
		return fmt.Errorf("master_key: %w", err)
	}
	return pki.WriteFileAtomic(path, k, 0o600)
}
