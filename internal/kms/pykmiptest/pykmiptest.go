// Package pykmiptest runs Debian's PyKMIP server (/usr/bin/pykmip-server,
// package python3-pykmip) for interoperability tests: it writes the
// server's configuration, an ECDSA P-256 server certificate for 127.0.0.1
// and a CA for client authentication (both made with internal/pki), starts
// the server on a free 127.0.0.1 port with a temporary SQLite database and
// log directory, waits (bounded) until it completes TLS handshakes, and
// stops it cleanly.
//
// PyKMIP's TLS 1.2 profile offers only CBC-SHA256 suites for RSA
// certificates (which Go disables by default) and ECDHE-ECDSA GCM suites:
// hence the ECDSA server certificate. The server logs at INFO: at DEBUG it
// would log every request in hex, key material included.
package pykmiptest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/testenv"
)

// Program is the PyKMIP server launcher installed by python3-pykmip.
const Program = "pykmip-server"

// Hint says how to install PyKMIP.
const Hint = "apt-get install python3-pykmip, or run scripts/prereqs.sh"

// Options configures the server.
type Options struct {
	// KeyType of the server certificate; ECDSA P-256 by default. With an
	// RSA certificate the client must enable a CBC-SHA256 suite.
	KeyType pki.KeyType
	// CipherSuites, when set, is written to tls_cipher_suites (IANA
	// names such as "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256").
	CipherSuites []string
	// StartTimeout bounds the wait for the first TLS handshake; 30s by
	// default.
	StartTimeout time.Duration
}

// Server is a running PyKMIP server.
type Server struct {
	// Addr is the 127.0.0.1:port it listens on.
	Addr string
	// Dir holds the configuration, certificates, database and logs.
	Dir string
	// CA signs the server certificate and is the CA the server trusts
	// for client certificates; tests issue client certificates with it.
	CA *pki.CA
	// CAFile is the CA certificate in PEM, for clients' CA bundle.
	CAFile string
	// LogFile is the server's log.
	LogFile string

	cmd  *exec.Cmd
	done chan struct{}
	werr error
}

// Start starts a server for the test and stops it when the test ends. A
// missing pykmip-server fails the test under CI and skips it elsewhere.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	testenv.LookPath(t, Program, Hint)
	s, err := Launch(context.Background(), t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop PyKMIP: %v", err)
		}
	})
	return s
}

// Available reports whether pykmip-server is installed.
func Available() bool {
	_, err := exec.LookPath(Program)
	return err == nil
}

// Launch starts a server with its files in dir (which must exist) and
// waits until it answers TLS. The caller must Stop it.
func Launch(ctx context.Context, dir string, opts Options) (*Server, error) {
	bin, err := exec.LookPath(Program)
	if err != nil {
		return nil, fmt.Errorf("pykmip: %s not found (%s)", Program, Hint)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	ca, err := pki.NewCA("pykmip test CA", pki.ECDSAP256)
	if err != nil {
		return nil, fmt.Errorf("pykmip: %w", err)
	}
	caFile, _, err := ca.WriteFiles(dir, "ca")
	if err != nil {
		return nil, fmt.Errorf("pykmip: %w", err)
	}
	srvCert, err := ca.Issue(pki.Request{CommonName: "pykmip", Role: pki.RoleServer,
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyType: opts.KeyType})
	if err != nil {
		return nil, fmt.Errorf("pykmip: %w", err)
	}
	certFile, keyFile, err := srvCert.WriteFiles(dir, "server")
	if err != nil {
		return nil, fmt.Errorf("pykmip: %w", err)
	}
	policyDir := filepath.Join(dir, "policies")
	logDir := filepath.Join(dir, "log")
	for _, d := range []string{policyDir, logDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("pykmip: %w", err)
		}
	}
	s := &Server{Dir: dir, CA: ca, CAFile: caFile, LogFile: filepath.Join(logDir, "server.log")}

	// The port is picked by binding :0 and released before PyKMIP binds
	// it; on the rare collision the start is retried with a new port.
	var lastErr error
	for try := 0; try < 3; try++ {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("pykmip: %w", err)
		}
		conf := configFile(port, certFile, keyFile, caFile, policyDir, filepath.Join(dir, "pykmip.db"), opts.CipherSuites)
		confFile := filepath.Join(dir, "server.conf")
		if err := pki.WriteFileAtomic(confFile, []byte(conf), 0o600); err != nil {
			return nil, fmt.Errorf("pykmip: %w", err)
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		lastErr = s.run(ctx, bin, confFile, ca, opts.StartTimeout)
		if lastErr == nil {
			return s, nil
		}
		if !errors.Is(lastErr, errExited) {
			break // only an early exit (the port taken meanwhile) is worth a retry
		}
	}
	return nil, lastErr
}

// errExited marks a server that exited during start-up.
var errExited = errors.New("server exited during start-up")

func configFile(port int, cert, key, ca, policyDir, db string, suites []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[server]\nhostname=127.0.0.1\nport=%d\n", port)
	fmt.Fprintf(&b, "certificate_path=%s\nkey_path=%s\nca_path=%s\n", cert, key, ca)
	fmt.Fprintf(&b, "auth_suite=TLS1.2\nenable_tls_client_auth=True\n")
	fmt.Fprintf(&b, "policy_path=%s\ndatabase_path=%s\nlogging_level=INFO\n", policyDir, db)
	if len(suites) > 0 {
		fmt.Fprintf(&b, "tls_cipher_suites=%s\n", strings.Join(suites, "\n    "))
	}
	return b.String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) run(ctx context.Context, bin, confFile string, ca *pki.CA, timeout time.Duration) error {
	var out bytes.Buffer
	cmd := exec.Command(bin, "-f", confFile, "-l", s.LogFile)
	cmd.Dir = s.Dir
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Own process group: PyKMIP starts a multiprocessing manager process
	// that must go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pykmip: start %s: %w", bin, err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() {
		s.werr = cmd.Wait()
		close(s.done)
	}()
	probeCert, err := ca.Issue(pki.Request{CommonName: "pykmiptest-probe", Role: pki.RoleClient})
	if err != nil {
		_ = s.Stop()
		return fmt.Errorf("pykmip: %w", err)
	}
	tc := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{probeCert.TLSCertificate()}, CipherSuites: ClientCipherSuites()}
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		select {
		case <-s.done:
			return fmt.Errorf("pykmip: %w (%v): %s%s", errExited, s.werr, strings.TrimSpace(out.String()), s.logTail())
		default:
		}
		if err := handshake(ctx, s.Addr, tc); err == nil {
			return nil
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			_ = s.Stop()
			return fmt.Errorf("pykmip: no TLS handshake on %s within %s (%d tries; last: %v)%s", s.Addr, timeout, attempt+1, err, s.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func handshake(ctx context.Context, addr string, tc *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	d := tls.Dialer{Config: tc}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.LogFile)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "\nlast lines of " + s.LogFile + ":\n" + string(b)
}

// Stop interrupts the server (SIGINT, which PyKMIP handles by closing its
// socket and joining its threads), waits up to 15 seconds, then kills its
// process group. It is safe to call more than once.
func (s *Server) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.done:
		s.killGroup()
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	var err error
	select {
	case <-s.done:
	case <-t.C:
		err = errors.New("pykmip: server did not stop within 15s of SIGINT; killed")
	}
	s.killGroup()
	<-s.done
	return err
}

func (s *Server) killGroup() {
	// Negative pid: the whole process group, which this package created
	// for this server alone.
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
}

// ClientCipherSuites are Go's default TLS 1.2 suites plus the CBC-SHA256
// ones PyKMIP's TLS 1.2 profile offers for an RSA certificate.
func ClientCipherSuites() []uint16 {
	var ids []uint16
	for _, s := range tls.CipherSuites() {
		ids = append(ids, s.ID)
	}
	return append(ids, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256, tls.TLS_RSA_WITH_AES_128_CBC_SHA256)
}

// IssueClient makes a client certificate the server accepts and writes it
// to the server's directory as NAME.crt and NAME.key.
func (s *Server) IssueClient(name string, kt pki.KeyType) (certFile, keyFile string, err error) {
	is, err := s.CA.Issue(pki.Request{CommonName: name, Role: pki.RoleClient, KeyType: kt})
	if err != nil {
		return "", "", err
	}
	return is.WriteFiles(s.Dir, name)
}
