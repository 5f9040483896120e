package kms_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/delayproxy"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/kms/pykmiptest"
	"github.com/sedboot/sedboot/internal/kmsserver/kmsdtest"
	"github.com/sedboot/sedboot/internal/pki"
	"github.com/sedboot/sedboot/internal/testenv"
)

// PyKMIP is started at most once per test binary and shared by every test
// (its start-up takes seconds); tests use unique names.
var shared struct {
	once sync.Once
	srv  *pykmiptest.Server
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	// kmip-go's server logs every connection to the default logger.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	code := m.Run()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			os.Stderr.WriteString("stop PyKMIP: " + err.Error() + "\n")
			code = 1
		}
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

func pykmip(t testing.TB) *pykmiptest.Server {
	t.Helper()
	testenv.LookPath(t, pykmiptest.Program, pykmiptest.Hint)
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "pykmip-")
		if shared.err != nil {
			return
		}
		shared.srv, shared.err = pykmiptest.Launch(context.Background(), shared.dir, pykmiptest.Options{})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

// backend is a server the client suite runs against.
type backend struct {
	name   string
	addr   string
	caFile string
	ca     *pki.CA
	dir    string
	kmsd   *kmsdtest.Server
}

// issue makes a client certificate for cn signed by the backend's CA.
func (b *backend) issue(t testing.TB, cn string) (string, string) {
	t.Helper()
	is, err := b.ca.Issue(pki.Request{CommonName: cn, Role: pki.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	cf, kf, err := is.WriteFiles(t.TempDir(), cn)
	if err != nil {
		t.Fatal(err)
	}
	return cf, kf
}

// config is a client configuration for identity cn against servers.
func (b *backend) config(t testing.TB, cn string, servers ...kms.Server) kms.Config {
	t.Helper()
	cf, kf := b.issue(t, cn)
	if len(servers) == 0 {
		servers = []kms.Server{b.server()}
	}
	return kms.Config{Servers: servers, CAFile: b.caFile, CertFile: cf, KeyFile: kf,
		AttemptTimeout: 5 * time.Second, TotalTimeout: 20 * time.Second, Retries: -1}
}

func (b *backend) server() kms.Server { return kms.Server{Name: b.name, Address: b.addr} }

func (b *backend) client(t testing.TB, cn string, servers ...kms.Server) *kms.Client {
	t.Helper()
	c, err := kms.New(b.config(t, cn, servers...))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (b *backend) connect(t testing.TB, c *kms.Client) *kms.Conn {
	t.Helper()
	conn, err := c.Connect(context.Background(), b.server())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func kmsdBackend(t testing.TB) *backend { return kmsdBackendWith(t, 0) }

// kmsdBackendWith is a kmsd that refuses requests of more than maxItems
// batch items (no limit when 0).
func kmsdBackendWith(t testing.TB, maxItems int) *backend {
	s := kmsdtest.Start(t, kmsdtest.Options{MaxBatchItems: maxItems})
	return &backend{name: "kmsd", addr: s.Addr, caFile: s.CAFile, ca: s.CA, dir: s.Dir, kmsd: s}
}

func pykmipBackend(t testing.TB) *backend {
	s := pykmip(t)
	return &backend{name: "pykmip", addr: s.Addr, caFile: s.CAFile, ca: s.CA, dir: s.Dir}
}

// eachBackend runs f as a subtest against kmsd and against PyKMIP.
func eachBackend(t *testing.T, f func(t *testing.T, b *backend)) {
	t.Run("kmsd", func(t *testing.T) { f(t, kmsdBackend(t)) })
	t.Run("pykmip", func(t *testing.T) { f(t, pykmipBackend(t)) })
}

// unique returns a fresh name prefix: PyKMIP is shared between tests.
func unique(t testing.TB) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "t-" + hex.EncodeToString(b)
}

// refusingAddr is a 127.0.0.1 address nobody listens on.
func refusingAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentServer accepts TCP connections and never answers.
func silentServer(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

// proxy forwards TCP between a client and target on 127.0.0.1, adding a
// one-way delay in each direction (RTT/2), and can drop a connection
// instead of forwarding a server answer.
type proxy struct {
	*delayproxy.Proxy

	mu    sync.Mutex
	armed bool // drop the connection at the next server answer after skip ones
	skip  int
}

func newProxy(t testing.TB, target string, rtt time.Duration) *proxy {
	p := &proxy{}
	dp, err := delayproxy.Start(target, delayproxy.Options{Delay: rtt / 2, DropReply: p.shouldDrop})
	if err != nil {
		t.Fatal(err)
	}
	p.Proxy = dp
	t.Cleanup(dp.Close)
	return p
}

func (p *proxy) addr() string { return p.Addr }

// dropAfter arms the proxy: after skip more server answers, it closes the
// client connection instead of forwarding the next one.
func (p *proxy) dropAfter(skip int) {
	p.mu.Lock()
	p.armed, p.skip = true, skip
	p.mu.Unlock()
}

func (p *proxy) shouldDrop() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.armed {
		return false
	}
	if p.skip > 0 {
		p.skip--
		return false
	}
	p.armed = false
	return true
}
