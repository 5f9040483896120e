// Package kms is sedboot's KMIP client: it keeps the drives' authentication
// keys on external KMIP key servers as Secret Data (type Password), one
// Object Group per array, the way the KMIP "Storage Array with
// Self-Encrypting Drives" profile does, and fetches them at boot.
//
// It uses github.com/ovh/kmip-go for the KMIP messages, payloads and TTLV
// encoding, with its own transport (see transport.go for why kmipclient
// is not used), and these choices:
//
//   - Mutual TLS from PEM files (RSA or ECDSA), TLS 1.2 at least, the
//     server's name or IP address checked against its certificate, only
//     the configured CA trusted, TLS sessions resumed across connections.
//   - An ordered list of servers: every operation that is not tied to a
//     server fails over to the next one, each attempt bounded by its own
//     deadline and the whole by a total deadline, with a bounded number of
//     rounds and exponential backoff between them; a Report says what each
//     server did.
//   - kmip-go's kmipclient re-sends a request after a dropped connection.
//     A Conn never reconnects (the request's outcome is reported as
//     unknown instead), and writes are idempotent: Register looks the name
//     up first, so a retry after a lost answer finds the object instead of
//     creating a twin.
//   - Every answer is checked as TTLV before kmip-go decodes it (its
//     decoder panics on malformed input), and receive buffers are zeroed.
//   - Keys are fetched with one batched Get of explicit unique identifiers
//     per server (never the ID placeholder, which PyKMIP resolves to the
//     wrong object), after one batched Locate for the names whose
//     identifiers are not known yet.
//   - Work on many keys is batched: Locate, Get, Register, Activate,
//     Revoke, Destroy, Get Attributes and attribute changes of N keys are
//     one request of N batch items each (ActivateAll, RevokeAll,
//     DestroyAll, GetAttributesAll, ChangeAttributes, AddAttributeAll,
//     SetAttributeAll, ...), split above MaxBatch items, with a result
//     per key. They are idempotent: a repeated Destroy, Revoke or
//     Activate counts as done, however the server answers it (see
//     batch.go for how kmsd and PyKMIP answer). A server that refuses a
//     batch as a whole gets smaller ones, down to one item per request.
//   - Key material is returned in *secret.Secret (locked, zeroed on
//     release) and never appears in an error, a log record or a report.
package kms

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
)

// Client talks to an ordered list of KMIP servers. It is safe for
// concurrent use.
type Client struct {
	cfg     Config
	tls     *tls.Config
	version *kmip.ProtocolVersion
	log     *slog.Logger

	mu       sync.Mutex
	metaMode map[string]MetadataMode // per server: what Register found to work
	// batchMax holds, per server and operation, the largest batch the
	// server accepted after refusing a larger one (see Conn.batch).
	batchMax map[batchKey]int
}

// New checks cfg, loads the CA bundle and the client certificate and
// returns a Client. It does not connect.
func New(cfg Config) (*Client, error) {
	cfg.Servers = append([]Server(nil), cfg.Servers...)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, tls: tc, log: cfg.Logger, metaMode: map[string]MetadataMode{}, batchMax: map[batchKey]int{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Version != "" {
		v, _ := ParseVersion(cfg.Version)
		c.version = &v
	}
	return c, nil
}

// Servers returns the configured servers in order.
func (c *Client) Servers() []Server { return append([]Server(nil), c.cfg.Servers...) }

// Config returns the configuration with defaults filled in.
func (c *Client) Config() Config { return c.cfg }

// HasClientCertificate reports whether a client certificate is configured.
func (c *Client) HasClientCertificate() bool { return len(c.tls.Certificates) > 0 }

// ConnInfo describes an established connection.
type ConnInfo struct {
	// Server is the server connected to.
	Server Server `json:"server"`
	// RemoteAddr is the address actually connected to.
	RemoteAddr string `json:"remote_addr"`
	// TCP, TLS and Version are the durations of the TCP connect, the TLS
	// handshake and the KMIP version negotiation (zero when the version
	// is forced).
	TCP     time.Duration `json:"tcp_ns"`
	TLS     time.Duration `json:"tls_ns"`
	Version time.Duration `json:"version_ns"`
	// TLSVersion and CipherSuite are the negotiated TLS parameters.
	TLSVersion  string `json:"tls_version"`
	CipherSuite string `json:"cipher_suite"`
	// Resumed reports a resumed TLS session.
	Resumed bool `json:"resumed"`
	// KMIPVersion is the protocol version in use ("1.4").
	KMIPVersion string `json:"kmip_version"`
	// State is the TLS connection state (peer certificates and all).
	State tls.ConnectionState `json:"-"`
}

// Connect opens a connection to srv (one attempt, bounded by ctx and the
// attempt timeout) and negotiates the KMIP version.
func (c *Client) Connect(ctx context.Context, srv Server) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	defer cancel()
	return c.connect(ctx, srv)
}

func (c *Client) connect(ctx context.Context, srv Server) (*Conn, error) {
	label := srv.Label()
	info := ConnInfo{Server: srv}
	tc := c.tls.Clone()
	tc.ServerName = srv.ServerName
	if tc.ServerName == "" {
		host, _, _ := net.SplitHostPort(srv.Address)
		tc.ServerName = host
	}
	t0 := time.Now()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", srv.Address)
	if err != nil {
		return nil, transportError(label, "tcp", err)
	}
	info.TCP = time.Since(t0)
	info.RemoteAddr = raw.RemoteAddr().String()
	t1 := time.Now()
	conn := tls.Client(raw, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, transportError(label, "tls", err)
	}
	info.TLS = time.Since(t1)
	cs := conn.ConnectionState()
	info.State = cs
	info.TLSVersion = tls.VersionName(cs.Version)
	info.CipherSuite = tls.CipherSuiteName(cs.CipherSuite)
	info.Resumed = cs.DidResume
	t := &transport{conn: conn}
	cn := &Conn{client: c, srv: srv, t: t}
	if c.version != nil {
		cn.version = *c.version
	} else {
		t2 := time.Now()
		if cn.version, err = cn.negotiate(ctx); err != nil {
			t.close()
			return nil, err
		}
		info.Version = time.Since(t2)
	}
	info.KMIPVersion = cn.version.String()
	cn.info = info
	c.log.Debug("kms connected", "server", label, "addr", info.RemoteAddr,
		"tls", info.TLSVersion, "suite", info.CipherSuite, "resumed", info.Resumed, "kmip", info.KMIPVersion)
	return cn, nil
}

// versions this client speaks, preferred first.
var versions = []kmip.ProtocolVersion{kmip.V1_4, kmip.V1_3, kmip.V1_2, kmip.V1_1, kmip.V1_0}

// negotiate runs Discover Versions and picks the server's preferred
// version among ours; a server that does not know the operation speaks
// KMIP 1.0.
func (s *Conn) negotiate(ctx context.Context) (kmip.ProtocolVersion, error) {
	const op = "Discover Versions"
	s.version = kmip.V1_1
	items, err := s.roundtrip(ctx, op, "", &payloads.DiscoverVersionsRequestPayload{ProtocolVersion: versions})
	if err != nil {
		return kmip.ProtocolVersion{}, err
	}
	bi := &items[0]
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		if bi.ResultReason == kmip.ResultReasonOperationNotSupported {
			return kmip.V1_0, nil
		}
		return kmip.ProtocolVersion{}, resultError(s.srv.Label(), op, "", bi)
	}
	dv, ok := bi.ResponsePayload.(*payloads.DiscoverVersionsResponsePayload)
	if !ok {
		return kmip.ProtocolVersion{}, s.protoErr(op, "", bi.ResponsePayload)
	}
	for _, v := range dv.ProtocolVersion {
		if slices.Contains(versions, v) {
			return v, nil
		}
	}
	return kmip.ProtocolVersion{}, &Error{Server: s.srv.Label(), Op: op,
		Err: fmt.Errorf("%w: no common KMIP version (server offers %v; this client speaks 1.0 to 1.4)", ErrNotSupported, dv.ProtocolVersion)}
}

// ConnectFirst connects to the first server of the list that answers,
// with the same failover, retries and deadlines as Fetch. The report says
// what each server did.
func (c *Client) ConnectFirst(ctx context.Context) (*Conn, *Report, error) {
	var conn *Conn
	rep, err := c.failover(ctx, func(ctx context.Context, srv Server, a *Attempt) (done bool, err error) {
		cn, err := c.connect(ctx, srv)
		if err != nil {
			return false, err
		}
		a.setConn(cn.info)
		conn = cn
		return true, nil
	})
	if err != nil {
		return nil, rep, err
	}
	return conn, rep, nil
}

// Report says what each server did during one operation.
type Report struct {
	// Attempts in the order they were made.
	Attempts []Attempt `json:"attempts"`
	// Elapsed is the whole operation's duration.
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Attempt is one try at one server.
type Attempt struct {
	// Server is the server's label, Address its configured address.
	Server  string `json:"server"`
	Address string `json:"address"`
	// Round counts the passes over the server list, from 0.
	Round int `json:"round"`
	// Start and Latency time the attempt.
	Start   time.Time     `json:"start"`
	Latency time.Duration `json:"latency_ns"`
	// TLSVersion, CipherSuite, Resumed and KMIPVersion describe the
	// connection when one was made.
	TLSVersion  string `json:"tls_version,omitempty"`
	CipherSuite string `json:"cipher_suite,omitempty"`
	Resumed     bool   `json:"resumed,omitempty"`
	KMIPVersion string `json:"kmip_version,omitempty"`
	// Requests is the number of KMIP requests sent, Discover Versions
	// included.
	Requests int `json:"requests"`
	// Fetched names the keys this server supplied.
	Fetched []string `json:"fetched,omitempty"`
	// KeyErrors gives, per key name, why this server did not supply it.
	KeyErrors map[string]string `json:"key_errors,omitempty"`
	// Error is why the attempt failed as a whole, empty on success.
	Error string `json:"error,omitempty"`
}

func (a *Attempt) setConn(info ConnInfo) {
	a.TLSVersion = info.TLSVersion
	a.CipherSuite = info.CipherSuite
	a.Resumed = info.Resumed
	a.KMIPVersion = info.KMIPVersion
}

// attemptFunc does one attempt at one server. done reports that the whole
// operation is complete; err is the attempt's failure, if any.
type attemptFunc func(ctx context.Context, srv Server, a *Attempt) (done bool, err error)

// failover runs try against each server in order, in rounds, until it
// reports done, every remaining failure is definitive, the rounds are
// used up or the total deadline passes.
func (c *Client) failover(ctx context.Context, try attemptFunc) (*Report, error) {
	start := time.Now()
	rep := &Report{}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.TotalTimeout)
	defer cancel()
	var errs []error
	backoff := c.cfg.Backoff
	for round := 0; round <= c.cfg.Retries; round++ {
		if round > 0 {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			backoff = min(2*backoff, c.cfg.MaxBackoff)
		}
		transient := false
		errs = errs[:0]
		for _, srv := range c.cfg.Servers {
			if ctx.Err() != nil {
				break
			}
			a := Attempt{Server: srv.Label(), Address: srv.Address, Round: round, Start: time.Now()}
			actx, acancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
			done, err := try(actx, srv, &a)
			acancel()
			a.Latency = time.Since(a.Start)
			if err != nil {
				a.Error = err.Error()
				errs = append(errs, err)
				if IsTransient(err) {
					transient = true
				}
			}
			rep.Attempts = append(rep.Attempts, a)
			c.log.Debug("kms attempt", "server", a.Server, "round", round, "latency", a.Latency, "error", a.Error)
			if done {
				rep.Elapsed = time.Since(start)
				return rep, nil
			}
		}
		if !transient || ctx.Err() != nil {
			break
		}
	}
	rep.Elapsed = time.Since(start)
	if len(errs) == 0 {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("kms: %w: total deadline %s passed", ErrTransport, c.cfg.TotalTimeout))
		} else {
			errs = append(errs, errors.New("kms: no server completed the operation"))
		}
	}
	return rep, errors.Join(errs...)
}
