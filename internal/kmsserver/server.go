// Package kmsserver is the logic behind kmsd, sedboot's small KMIP server
// for development, demos and tests. It serves KMIP 1.0 to 1.4 over mutual
// TLS with github.com/ovh/kmip-go's kmipserver and keeps objects in a bbolt
// database, their key material sealed under a master key.
//
// It stores Secret Data only and implements Query, Discover Versions,
// Register, Locate, Get, Get Attributes, Get Attribute List, Activate,
// Revoke, Destroy, Add/Modify/Delete Attribute, with the KMIP life cycle
// (Pre-Active, Active, Deactivated, Compromised, Destroyed).
//
// The client certificate's subject common name is the caller's identity.
// Every object has an owner (who registered it) and per-identity grants of
// three rights: get (release the value), read (Locate, Get Attributes) and
// manage (life cycle and attributes). The owner starts with all three.
// Administrators (configured) have every right, and alone may change
// grants (attribute "x-kmsd-grant", "IDENTITY=get,read"), make an object
// extractable again or clear Sensitive. Group grants from the
// configuration give rights on every object of matching Object Groups.
//
// Get releases a value only if the caller holds the get right, the object
// is Pre-Active or Active, Extractable is true and Sensitive is false.
// That is how sedboot's cryptographic lock is enforced by the server: an
// administrator sets Extractable to false or withdraws the array
// identity's grant, and the array can no longer fetch its keys.
//
// Every request is recorded in an audit log (log/slog) that names the
// caller, the operation, the object and the result, and never holds key
// material.
package kmsserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// Options configures a Server.
type Options struct {
	// DBPath is the bbolt database file (created with mode 0600).
	DBPath string
	// MasterKey seals key material at rest; MasterKeySize bytes. New
	// keeps its own copy.
	MasterKey []byte
	// TLS must hold the server certificate and the client CAs
	// (ClientCAs). New enforces TLS 1.2 or later and verified client
	// certificates.
	TLS *tls.Config
	// Policy says who may do what.
	Policy Policy
	// Audit receives one record per request item and per connection;
	// nil discards.
	Audit *slog.Logger
	// HandshakeTimeout bounds a client's TLS handshake (default 10s);
	// IdleTimeout closes a connection without requests for that long
	// (default 5m).
	HandshakeTimeout, IdleTimeout time.Duration
}

// Server is a KMIP server.
type Server struct {
	opts  Options
	st    *store
	h     *handler
	exec  *kmipserver.BatchExecutor
	audit *slog.Logger

	mu      sync.Mutex
	ks      *kmipserver.Server
	ln      *tlsListener
	stopped bool
}

// New opens the database and prepares the server.
func New(opts Options) (*Server, error) {
	if opts.DBPath == "" {
		return nil, errors.New("kmsserver: no database path")
	}
	if opts.TLS == nil || len(opts.TLS.Certificates) == 0 && opts.TLS.GetCertificate == nil {
		return nil, errors.New("kmsserver: no server certificate")
	}
	if opts.TLS.ClientCAs == nil {
		return nil, errors.New("kmsserver: no client CA: clients must present certificates")
	}
	if err := opts.Policy.validate(); err != nil {
		return nil, fmt.Errorf("kmsserver: policy: %w", err)
	}
	tc := opts.TLS.Clone()
	tc.ClientAuth = tls.RequireAndVerifyClientCert
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	opts.TLS = tc
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	key := append([]byte(nil), opts.MasterKey...)
	st, err := openStore(opts.DBPath, key)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("kmsserver: %w", err)
	}
	s := &Server{opts: opts, st: st, audit: opts.Audit}
	if s.audit == nil {
		s.audit = slog.New(slog.DiscardHandler)
	}
	s.h = &handler{st: st, policy: opts.Policy, now: time.Now}
	s.exec = kmipserver.NewBatchExecutor()
	s.h.route(s.exec)
	s.exec.Use(s.wipeMiddleware)
	s.exec.BatchItemUse(s.auditMiddleware)
	return s, nil
}

// Serve accepts connections on l (a plain TCP listener: the server does
// TLS itself) until Shutdown. It returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return errors.New("kmsserver: server was shut down")
	}
	if s.ks != nil {
		s.mu.Unlock()
		return errors.New("kmsserver: already serving")
	}
	s.ln = newTLSListener(l, s.opts.TLS, s.opts.HandshakeTimeout, s.opts.IdleTimeout, s.audit)
	s.ks = kmipserver.NewServer(s.ln, s).
		WithConnectHook(s.onConnect).
		WithTerminateHook(s.onTerminate)
	ks := s.ks
	s.mu.Unlock()
	s.audit.Info("serving", "event", "start", "addr", l.Addr().String())
	err := ks.Serve()
	if errors.Is(err, kmipserver.ErrShutdown) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections, lets requests in progress finish
// (kmip-go cancels them after 3 seconds) and closes the database.
func (s *Server) Shutdown() error {
	s.mu.Lock()
	s.stopped = true
	ks := s.ks
	s.mu.Unlock()
	var errs []error
	if ks != nil {
		if err := ks.Shutdown(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := s.st.close(); err != nil {
		errs = append(errs, err)
	}
	s.audit.Info("stopped", "event", "stop")
	return errors.Join(errs...)
}

// HandleRequest implements kmipserver.RequestHandler.
func (s *Server) HandleRequest(ctx context.Context, req *kmip.RequestMessage) *kmip.ResponseMessage {
	return s.exec.HandleRequest(ctx, req)
}

// HandleAs processes one request as if it came from identity over an
// authenticated connection, for tests and fuzzing. It returns a decoded
// copy of the response; the server's own copy of any key material is
// zeroed before it returns.
func (s *Server) HandleAs(ctx context.Context, identity string, req *kmip.RequestMessage) *kmip.ResponseMessage {
	c := &caller{identity: identity, remote: "in-process"}
	defer c.wipeAll()
	resp := s.exec.HandleRequest(withCaller(ctx, c), req)
	out := new(kmip.ResponseMessage)
	if err := ttlv.UnmarshalTTLV(ttlv.MarshalTTLV(resp), out); err != nil {
		return resp
	}
	return out
}

func (s *Server) onConnect(ctx context.Context) (context.Context, error) {
	certs := kmipserver.PeerCertificates(ctx)
	remote := kmipserver.RemoteAddr(ctx)
	if len(certs) == 0 || certs[0].Subject.CommonName == "" {
		s.audit.Warn("connection refused", "event", "connect", "remote", remote, "error", "no client certificate common name")
		return ctx, errors.New("client certificate has no common name")
	}
	c := &caller{identity: certs[0].Subject.CommonName, remote: remote}
	s.audit.Info("connection", "event", "connect", "remote", remote, "identity", c.identity)
	return withCaller(ctx, c), nil
}

func (s *Server) onTerminate(ctx context.Context) {
	if c := callerOf(ctx); c != nil {
		c.wipeAll()
		s.audit.Info("disconnection", "event", "disconnect", "remote", c.remote, "identity", c.identity)
	}
}

// wipeMiddleware zeroes the key material of the previous response on the
// connection: by the time the next request arrives it has been sent.
func (s *Server) wipeMiddleware(next kmipserver.Next, ctx context.Context, msg *kmip.RequestMessage) (*kmip.ResponseMessage, error) {
	if c := callerOf(ctx); c != nil {
		c.wipeAll()
	}
	return next(ctx, msg)
}

// auditMiddleware records each batch item. Only identifiers, names and
// results are logged, never a value.
func (s *Server) auditMiddleware(next kmipserver.BatchItemNext, ctx context.Context, bi *kmip.RequestBatchItem) (*kmip.ResponseBatchItem, error) {
	t0 := time.Now()
	resp, err := next(ctx, bi)
	attrs := []any{"event", "kmip", "op", ttlv.EnumStr(bi.Operation), "duration_ms", time.Since(t0).Milliseconds()}
	if c := callerOf(ctx); c != nil {
		attrs = append(attrs, "identity", c.identity, "remote", c.remote)
	}
	attrs = append(attrs, describeRequest(bi.RequestPayload)...)
	if resp != nil && resp.ResponsePayload != nil {
		attrs = append(attrs, describeResponse(resp.ResponsePayload)...)
	}
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
		reason := kmip.ResultReasonGeneralFailure
		var ke kmipserver.Error
		if errors.As(err, &ke) {
			reason = ke.Reason
		}
		attrs = append(attrs, "result", "failure", "reason", ttlv.EnumStr(reason), "message", err.Error())
	} else {
		attrs = append(attrs, "result", "success")
	}
	s.audit.Log(ctx, level, "request", attrs...)
	return resp, err
}

func describeRequest(pl kmip.OperationPayload) []any {
	switch p := pl.(type) {
	case *payloads.GetRequestPayload:
		return []any{"id", p.UniqueIdentifier}
	case *payloads.GetAttributesRequestPayload:
		return []any{"id", p.UniqueIdentifier}
	case *payloads.GetAttributeListRequestPayload:
		return []any{"id", p.UniqueIdentifier}
	case *payloads.ActivateRequestPayload:
		return []any{"id", p.UniqueIdentifier}
	case *payloads.RevokeRequestPayload:
		return []any{"id", p.UniqueIdentifier, "revocation_reason", ttlv.EnumStr(p.RevocationReason.RevocationReasonCode)}
	case *payloads.DestroyRequestPayload:
		return []any{"id", p.UniqueIdentifier}
	case *payloads.AddAttributeRequestPayload:
		return []any{"id", p.UniqueIdentifier, "attribute", string(p.Attribute.AttributeName)}
	case *payloads.ModifyAttributeRequestPayload:
		return []any{"id", p.UniqueIdentifier, "attribute", string(p.Attribute.AttributeName)}
	case *payloads.DeleteAttributeRequestPayload:
		return []any{"id", p.UniqueIdentifier, "attribute", string(p.AttributeName)}
	case *payloads.RegisterRequestPayload:
		return []any{"object_type", ttlv.EnumStr(p.ObjectType), "names", templateNames(p.TemplateAttribute)}
	case *payloads.LocateRequestPayload:
		return []any{"names", attrNames(p.Attribute), "groups", attrGroups(p.Attribute)}
	}
	return nil
}

func describeResponse(pl kmip.OperationPayload) []any {
	switch p := pl.(type) {
	case *payloads.RegisterResponsePayload:
		return []any{"id", p.UniqueIdentifier}
	case *payloads.LocateResponsePayload:
		return []any{"found", len(p.UniqueIdentifier)}
	}
	return nil
}

func templateNames(t kmip.TemplateAttribute) []string {
	var out []string
	//lint:ignore SA1019 KMIP 1.0 to 1.2 clients send names here.
	for _, n := range t.Name {
		out = append(out, n.NameValue)
	}
	return append(out, attrNames(t.Attribute)...)
}

func attrNames(as []kmip.Attribute) []string {
	var out []string
	for _, a := range as {
		if n, ok := a.AttributeValue.(kmip.Name); ok && a.AttributeName == kmip.AttributeNameName {
			out = append(out, n.NameValue)
		}
	}
	return out
}

func attrGroups(as []kmip.Attribute) []string {
	var out []string
	for _, a := range as {
		if g, ok := a.AttributeValue.(string); ok && a.AttributeName == kmip.AttributeNameObjectGroup {
			out = append(out, g)
		}
	}
	return out
}

// tlsListener accepts TCP connections and completes their TLS handshakes
// concurrently, each bounded in time, so a client that connects and says
// nothing neither blocks others nor holds a goroutine forever. It hands
// kmip-go *tls.Conn values whose underlying reads time out after the
// idle timeout.
type tlsListener struct {
	inner   net.Listener
	cfg     *tls.Config
	hs      time.Duration
	idle    time.Duration
	audit   *slog.Logger
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	errOnce sync.Once
	err     error
}

func newTLSListener(l net.Listener, cfg *tls.Config, hs, idle time.Duration, audit *slog.Logger) *tlsListener {
	tl := &tlsListener{inner: l, cfg: cfg, hs: hs, idle: idle, audit: audit,
		conns: make(chan net.Conn), done: make(chan struct{})}
	tl.wg.Add(1)
	go tl.acceptLoop()
	return tl
}

func (l *tlsListener) acceptLoop() {
	defer l.wg.Done()
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.errOnce.Do(func() { l.err = err })
			l.Close()
			return
		}
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

func (l *tlsListener) handshake(raw net.Conn) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), l.hs)
	defer cancel()
	go func() {
		select {
		case <-l.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	tc := tls.Server(&idleConn{Conn: raw, idle: l.idle}, l.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		l.audit.Warn("TLS handshake failed", "event", "tls", "remote", raw.RemoteAddr().String(), "error", err.Error())
		_ = raw.Close()
		return
	}
	select {
	case l.conns <- tc:
	case <-l.done:
		_ = tc.Close()
	}
}

// Accept returns the next connection that completed its handshake.
func (l *tlsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting; handshakes in progress are abandoned.
func (l *tlsListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
	})
	return err
}

// Addr is the listening address.
func (l *tlsListener) Addr() net.Addr { return l.inner.Addr() }

// idleConn sets a read deadline before every read, so a connection idle
// for longer than idle fails its pending read and is closed.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	if c.idle > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	return c.Conn.Read(p)
}
