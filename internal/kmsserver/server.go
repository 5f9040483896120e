// Package kmsserver is the logic behind kmsd, sedboot's small KMIP server
// for development, demos and tests. It serves KMIP 1.0 to 1.4 over mutual
// TLS with github.com/ovh/kmip-go's kmipserver and keeps objects in a bbolt
// database, their key material sealed under a master key.
//
// kmip-go's kmipserver.BatchExecutor routes the operations; the
// connection loop is kmsd's own (kmipserver.Server v0.8.1 decodes
// messages without checking them and without recovering, so one malformed
// message would take the whole server down): every message is checked by
// kmipwire before decoding, panics are contained per connection, and the
// buffers that held key material are zeroed after each exchange.
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
// A request may carry many batch items (sedboot's client sends one item
// per key: a rotation revokes or destroys a whole generation in one
// request). The items are carried out in order, each in its own
// transaction, authorised for the caller on its own object, and audited
// on its own; with Batch Error Continuation Option Continue a refused item
// does not stop the others (Undo is refused). Options.MaxBatchItems can
// cap the items per request; a larger request is refused as a whole
// before any item is carried out.
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
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"

	"github.com/sedboot/sedboot/internal/kms/kmipwire"
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
	// MaxMessage is the largest request accepted (default 1 MiB).
	MaxMessage int
	// MaxBatchItems, when positive, is the largest number of batch items
	// accepted in one request; a larger request is refused as a whole
	// (Invalid Message) before any item is carried out. Zero leaves the
	// number bounded by MaxMessage only.
	MaxBatchItems int
}

// Server is a KMIP server.
type Server struct {
	opts  Options
	st    *store
	h     *handler
	exec  *kmipserver.BatchExecutor
	audit *slog.Logger

	ctx    context.Context // canceled by Shutdown
	cancel context.CancelFunc

	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]struct{}
	serving bool
	stopped bool
	wg      sync.WaitGroup
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
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = kmipwire.DefaultMaxMessage
	}
	key := append([]byte(nil), opts.MasterKey...)
	st, err := openStore(opts.DBPath, key)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("kmsserver: %w", err)
	}
	s := &Server{opts: opts, st: st, audit: opts.Audit, conns: map[net.Conn]struct{}{}}
	if s.audit == nil {
		s.audit = slog.New(slog.DiscardHandler)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.h = &handler{st: st, policy: opts.Policy, now: time.Now}
	s.exec = kmipserver.NewBatchExecutor()
	s.h.route(s.exec)
	s.exec.BatchItemUse(s.auditMiddleware)
	return s, nil
}

// Serve accepts connections on l (a plain TCP listener: the server does
// TLS itself) until Shutdown, and then returns nil.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	switch {
	case s.stopped:
		s.mu.Unlock()
		return errors.New("kmsserver: server was shut down")
	case s.serving:
		s.mu.Unlock()
		return errors.New("kmsserver: already serving")
	}
	s.serving, s.ln = true, l
	s.mu.Unlock()
	s.audit.Info("serving", "event", "start", "addr", l.Addr().String())
	for {
		raw, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("kmsserver: accept: %w", err)
		}
		if !s.track(raw) {
			_ = raw.Close()
			return nil
		}
		go s.serveConn(raw)
	}
}

// track registers a connection; false once shutting down.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting connections, lets each connection finish the
// request it is processing (waiting at most timeout; 5s when zero), closes
// them and the database.
func (s *Server) Shutdown(timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	s.mu.Lock()
	already := s.stopped
	s.stopped = true
	ln := s.ln
	// Wake connections waiting for a request; one in the middle of a
	// request finishes it first (its write has no deadline).
	for c := range s.conns {
		_ = c.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	if already {
		return nil
	}
	s.cancel()
	var errs []error
	if ln != nil {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		<-done
		errs = append(errs, fmt.Errorf("kmsserver: connections still busy after %s were closed", timeout))
	}
	if err := s.st.close(); err != nil {
		errs = append(errs, err)
	}
	s.audit.Info("stopped", "event", "stop")
	return errors.Join(errs...)
}

// serveConn runs one client connection: TLS handshake, then requests one
// at a time until the client leaves, idles out, sends something malformed
// or the server shuts down.
func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	defer raw.Close()
	remote := raw.RemoteAddr().String()
	tc := tls.Server(raw, s.opts.TLS)
	hctx, cancel := context.WithTimeout(s.ctx, s.opts.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.audit.Warn("TLS handshake failed", "event", "tls", "remote", remote, "error", err.Error())
		return
	}
	cs := tc.ConnectionState()
	if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].Subject.CommonName == "" {
		s.audit.Warn("connection refused", "event", "connect", "remote", remote, "error", "client certificate has no common name")
		return
	}
	c := &caller{identity: cs.PeerCertificates[0].Subject.CommonName, remote: remote}
	s.audit.Info("connection", "event", "connect", "remote", remote, "identity", c.identity,
		"tls", tls.VersionName(cs.Version), "suite", tls.CipherSuiteName(cs.CipherSuite), "resumed", cs.DidResume)
	defer func() {
		c.wipeAll()
		s.audit.Info("disconnection", "event", "disconnect", "remote", remote, "identity", c.identity)
	}()
	ctx := withCaller(s.ctx, c)
	var buf []byte
	defer func() { clear(buf[:cap(buf)]) }()
	for s.ctx.Err() == nil {
		_ = raw.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		buf, err = kmipwire.ReadMessage(tc, kmip.TagRequestMessage, s.opts.MaxMessage, buf)
		if err != nil {
			if errors.Is(err, kmipwire.ErrMalformed) {
				s.audit.Warn("malformed request", "event", "kmip", "remote", remote, "identity", c.identity, "error", err.Error())
				s.reply(tc, raw, messageError(nil, kmip.ResultReasonInvalidMessage, err.Error()))
			} else if !errors.Is(err, io.EOF) && s.ctx.Err() == nil {
				s.audit.Info("connection ended", "event", "disconnect", "remote", remote, "identity", c.identity, "error", err.Error())
			}
			return
		}
		_ = raw.SetReadDeadline(time.Time{})
		resp, fatal := s.handleMessage(ctx, buf)
		clear(buf)
		if !s.reply(tc, raw, resp) || fatal {
			return
		}
		c.wipeAll()
	}
}

// reply encodes and writes a response, zeroing the encoded copy.
func (s *Server) reply(tc *tls.Conn, raw net.Conn, resp *kmip.ResponseMessage) bool {
	out, err := kmipwire.Encode(resp)
	if err != nil {
		s.audit.Error("response encoding failed", "event", "kmip", "error", err.Error())
		out, err = kmipwire.Encode(messageError(nil, kmip.ResultReasonGeneralFailure, "response encoding failed"))
		if err != nil {
			return false
		}
	}
	defer clear(out)
	_ = raw.SetWriteDeadline(time.Now().Add(s.opts.IdleTimeout))
	_, err = tc.Write(out)
	_ = raw.SetWriteDeadline(time.Time{})
	return err == nil
}

// handleMessage checks, decodes and executes one request message. fatal
// reports a message so broken that the connection should end after the
// error response.
func (s *Server) handleMessage(ctx context.Context, msg []byte) (resp *kmip.ResponseMessage, fatal bool) {
	req, err := kmipwire.DecodeRequest(msg)
	if err != nil {
		return messageError(nil, kmip.ResultReasonInvalidMessage, err.Error()), true
	}
	defer func() {
		if r := recover(); r != nil {
			s.audit.Error("request handler panicked", "event", "kmip", "panic", fmt.Sprint(r))
			resp, fatal = messageError(req, kmip.ResultReasonGeneralFailure, "internal server error"), true
		}
	}()
	defer wipeRequest(req)
	if n, limit := len(req.BatchItem), s.opts.MaxBatchItems; limit > 0 && n > limit {
		attrs := []any{"event", "kmip", "items", n, "limit", limit, "result", "failure", "reason", "InvalidMessage"}
		if c := callerOf(ctx); c != nil {
			attrs = append(attrs, "identity", c.identity, "remote", c.remote)
		}
		s.audit.Warn("batch refused", attrs...)
		return messageError(req, kmip.ResultReasonInvalidMessage,
			fmt.Sprintf("%d batch items exceed this server's limit of %d per request", n, limit)), false
	}
	return s.exec.HandleRequest(ctx, req), false
}

// wipeRequest zeroes the key material a decoded Register carried.
func wipeRequest(req *kmip.RequestMessage) {
	for _, bi := range req.BatchItem {
		r, ok := bi.RequestPayload.(*payloads.RegisterRequestPayload)
		if !ok {
			continue
		}
		if sd, ok := r.Object.(*kmip.SecretData); ok {
			if kv := sd.KeyBlock.KeyValue; kv != nil && kv.Plain != nil && kv.Plain.KeyMaterial.Bytes != nil {
				clear(*kv.Plain.KeyMaterial.Bytes)
			}
		}
	}
}

// messageError is a response failing the message as a whole.
func messageError(req *kmip.RequestMessage, reason kmip.ResultReason, msg string) *kmip.ResponseMessage {
	hdr := kmip.ResponseHeader{ProtocolVersion: kmip.V1_0, TimeStamp: time.Now().Truncate(time.Second), BatchCount: 1}
	if req != nil && req.Header.ProtocolVersion != (kmip.ProtocolVersion{}) {
		hdr.ProtocolVersion = req.Header.ProtocolVersion
		hdr.ClientCorrelationValue = req.Header.ClientCorrelationValue
	}
	return &kmip.ResponseMessage{Header: hdr, BatchItem: []kmip.ResponseBatchItem{{
		ResultStatus: kmip.ResultStatusOperationFailed, ResultReason: reason, ResultMessage: msg,
	}}}
}

// HandleAs processes one encoded request message as if it came from
// identity over an authenticated connection, for tests and fuzzing, and
// returns the encoded response. Key material the server handed out is
// zeroed before it returns (the encoded copy excepted).
func (s *Server) HandleAs(ctx context.Context, identity string, msg []byte) []byte {
	c := &caller{identity: identity, remote: "in-process"}
	defer c.wipeAll()
	resp, _ := s.handleMessage(withCaller(ctx, c), msg)
	out, err := kmipwire.Encode(resp)
	if err != nil {
		out, _ = kmipwire.Encode(messageError(nil, kmip.ResultReasonGeneralFailure, "response encoding failed"))
	}
	return out
}
