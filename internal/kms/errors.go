package kms

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/ttlv"
)

// Sentinel errors; an *Error matches one of them with errors.Is according
// to the KMIP result reason or the transport failure behind it.
var (
	// ErrNotFound: the server has no such object (Item Not Found), or a
	// Locate matched nothing.
	ErrNotFound = errors.New("object not found")
	// ErrAmbiguous: a Locate by name matched more than one object.
	ErrAmbiguous = errors.New("name matches more than one object")
	// ErrDenied: the server refused (Permission Denied, Authentication
	// Not Successful, Sensitive, Not Extractable).
	ErrDenied = errors.New("refused by the server")
	// ErrNotSupported: the server does not support the operation or a
	// feature of the request.
	ErrNotSupported = errors.New("not supported by the server")
	// ErrRejected: the server rejected the request as invalid (Invalid
	// Field, Invalid Message, Missing Data, Illegal Operation, ...).
	ErrRejected = errors.New("rejected by the server")
	// ErrTransport: the server could not be reached or the connection
	// failed (TCP, TLS, timeout).
	ErrTransport = errors.New("transport failure")
	// ErrTLSConfig: the TLS handshake failed for a reason that retrying
	// will not fix (unknown CA, wrong server name, expired or rejected
	// certificate).
	ErrTLSConfig = errors.New("TLS verification failure")
	// ErrProtocol: the server answered with something this client cannot
	// use (wrong object type, mismatched batch, malformed response).
	ErrProtocol = errors.New("protocol error")
	// ErrConnectionLost: the connection dropped in the middle of an
	// operation; the outcome on the server is unknown.
	ErrConnectionLost = errors.New("connection lost; outcome unknown")
)

// Error describes a failed operation against one server. It names the
// server, the operation and the key (name or unique identifier) and gives
// the KMIP result reason. It never holds key material.
type Error struct {
	// Server is the server's name (or address when it has no name).
	Server string
	// Op is the KMIP operation ("Get", "Register", ...) or the connection
	// stage ("tcp", "tls", "discover versions").
	Op string
	// Key is the key name or unique identifier concerned, if any.
	Key string
	// Reason is the KMIP result reason ("Permission Denied", ...), empty
	// for transport failures.
	Reason string
	// Message is the server's result message, shortened and stripped of
	// control characters.
	Message string
	// Err is the underlying error: one of the sentinels above, possibly
	// wrapping the lower-level cause.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kms %s: %s", e.Server, e.Op)
	if e.Key != "" {
		fmt.Fprintf(&b, " %q", e.Key)
	}
	b.WriteString(": ")
	switch {
	case e.Reason != "" && e.Message != "":
		fmt.Fprintf(&b, "%s: %s", e.Reason, e.Message)
	case e.Reason != "":
		b.WriteString(e.Reason)
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("failed")
	}
	return b.String()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Transient reports whether retrying the same operation later, on the same
// or another server, may succeed.
func (e *Error) Transient() bool { return isTransient(e.Err) }

func isTransient(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrTransport), errors.Is(err, ErrConnectionLost):
		return true
	case errors.Is(err, ErrRejected), errors.Is(err, ErrDenied), errors.Is(err, ErrNotFound),
		errors.Is(err, ErrNotSupported), errors.Is(err, ErrAmbiguous), errors.Is(err, ErrTLSConfig),
		errors.Is(err, ErrProtocol):
		return false
	}
	return true
}

// IsTransient reports whether err (an *Error or anything wrapping one) may
// go away on retry; for a joined error, whether any of its errors may.
func IsTransient(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if IsTransient(e) {
				return true
			}
		}
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Transient()
	}
	return isTransient(err)
}

// ReasonOf returns the KMIP result reason carried by err, or "".
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// resultError turns a failed batch item into an *Error.
func resultError(server, op, key string, bi *kmip.ResponseBatchItem) *Error {
	reason := bi.ResultReason
	return &Error{
		Server:  server,
		Op:      op,
		Key:     key,
		Reason:  reasonString(reason),
		Message: cleanMessage(bi.ResultMessage),
		Err:     reasonSentinel(reason),
	}
}

func reasonString(r kmip.ResultReason) string {
	if r == 0 {
		return "Operation Failed"
	}
	s := ttlv.EnumStr(r)
	// kmip-go spells reasons in CamelCase; the specification uses words.
	var b strings.Builder
	for i, c := range s {
		if i > 0 && c >= 'A' && c <= 'Z' && s[i-1] >= 'a' && s[i-1] <= 'z' {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func reasonSentinel(r kmip.ResultReason) error {
	switch r {
	case kmip.ResultReasonItemNotFound:
		return ErrNotFound
	case kmip.ResultReasonPermissionDenied, kmip.ResultReasonAuthenticationNotSuccessful,
		kmip.ResultReasonSensitive, kmip.ResultReasonNotExtractable:
		return ErrDenied
	case kmip.ResultReasonOperationNotSupported, kmip.ResultReasonFeatureNotSupported,
		kmip.ResultReasonApplicationNamespaceNotSupported, kmip.ResultReasonKeyFormatTypeNotSupported,
		kmip.ResultReasonKeyCompressionTypeNotSupported:
		return ErrNotSupported
	case kmip.ResultReasonGeneralFailure, kmip.ResultReasonResponseTooLarge:
		// A server-side failure may be temporary.
		return fmt.Errorf("%w: server failure", ErrTransport)
	}
	return ErrRejected
}

// cleanMessage keeps a server's result message readable and short.
func cleanMessage(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	const max = 200
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// transportError classifies a connection-level failure.
func transportError(server, op string, err error) *Error {
	return &Error{Server: server, Op: op, Err: classifyTransport(err)}
}

func classifyTransport(err error) error {
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		alert     tls.AlertError
		verifyErr *tls.CertificateVerificationError
		opErr     *net.OpError
	)
	switch {
	case errors.As(err, &unknownCA):
		return fmt.Errorf("%w: server certificate is not signed by a trusted CA (check the CA bundle): %v", ErrTLSConfig, err)
	case errors.As(err, &hostErr):
		return fmt.Errorf("%w: server certificate does not match the server name (check server_name / the certificate's SANs): %v", ErrTLSConfig, err)
	case errors.As(err, &invalid):
		return fmt.Errorf("%w: server certificate is invalid: %v", ErrTLSConfig, err)
	case errors.As(err, &verifyErr):
		return fmt.Errorf("%w: %v", ErrTLSConfig, err)
	case errors.As(err, &alert), isRemoteTLSAlert(err):
		return fmt.Errorf("%w: the server refused our TLS handshake (%v): check that the client certificate is present, unexpired and signed by a CA the server trusts", ErrTLSConfig, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: timed out: %v", ErrTransport, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: canceled: %v", ErrTransport, err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: connection refused", ErrTransport)
	case errors.As(err, &opErr):
		return fmt.Errorf("%w: %v", ErrTransport, err)
	}
	return fmt.Errorf("%w: %v", ErrTransport, err)
}

// isRemoteTLSAlert recognises alerts sent by the peer. crypto/tls reports
// them as unexported errors whose text starts with "remote error: tls:";
// with TLS 1.3 a client-certificate rejection only shows on the first
// read after the handshake.
func isRemoteTLSAlert(err error) bool {
	return err != nil && strings.Contains(err.Error(), "remote error: tls:")
}
