package kms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/ovh/kmip-go"

	"github.com/sedboot/sedboot/internal/kms/kmipwire"
)

// transport carries KMIP requests and responses over one TLS connection,
// one exchange at a time.
//
// kmip-go v0.8.1's kmipclient is not used for this: it re-sends a request
// on a new connection after the old one drops (a Register could then be
// applied twice), it dereferences a nil connection when that reconnection
// fails during version negotiation, it closes its send channel from its
// read loop without synchronising with senders (a data race that can panic
// with "send on closed channel" when a server drops the connection), and
// it decodes answers without checking them (its decoder panics on
// malformed TTLV). A boot agent must not crash on a bad server; here an
// exchange either completes or fails with an error, and the connection is
// then unusable.
type transport struct {
	mu     sync.Mutex
	conn   net.Conn
	buf    []byte
	broken error
}

// errBroken is returned for requests on a connection that failed before.
var errBroken = errors.New("connection unusable after an earlier failure")

// roundtrip sends msg and reads the answer, within ctx. The encoded
// request and the receive buffer are zeroed afterwards (they may hold key
// material).
func (t *transport) roundtrip(ctx context.Context, msg *kmip.RequestMessage) (*kmip.ResponseMessage, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken != nil {
		return nil, t.broken
	}
	out, err := kmipwire.Encode(msg)
	if err != nil {
		return nil, err
	}
	defer clear(out)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dl, _ := ctx.Deadline()
	_ = t.conn.SetDeadline(dl)
	// Cancelation interrupts blocked I/O through the deadline.
	stop := context.AfterFunc(ctx, func() { _ = t.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := t.conn.Write(out); err != nil {
		return nil, t.fail(ctx, err)
	}
	t.buf, err = kmipwire.ReadMessage(t.conn, kmip.TagResponseMessage, kmipwire.DefaultMaxMessage, t.buf)
	if err != nil {
		clear(t.buf[:cap(t.buf)])
		return nil, t.fail(ctx, err)
	}
	resp, err := kmipwire.DecodeResponse(t.buf)
	clear(t.buf)
	if err != nil {
		return nil, t.fail(ctx, err)
	}
	return resp, nil
}

// fail closes the connection after a failed exchange and says why.
func (t *transport) fail(ctx context.Context, err error) error {
	_ = t.conn.Close()
	t.broken = errBroken
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

func (t *transport) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.broken == nil {
		t.broken = errBroken
	}
	_ = t.conn.Close()
	clear(t.buf[:cap(t.buf)])
}

// exchangeError classifies a failed exchange.
func exchangeError(server, op, key string, err error) *Error {
	switch {
	case isRemoteTLSAlert(err):
		return transportError(server, op, err)
	case errors.Is(err, kmipwire.ErrMalformed):
		return &Error{Server: server, Op: op, Key: key, Err: fmt.Errorf("%w: %v", ErrProtocol, err)}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return &Error{Server: server, Op: op, Key: key, Err: classifyTransport(err)}
	case errors.Is(err, errBroken), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return &Error{Server: server, Op: op, Key: key, Err: fmt.Errorf("%w: %v", ErrConnectionLost, err)}
	}
	return &Error{Server: server, Op: op, Key: key, Err: classifyTransport(err)}
}
