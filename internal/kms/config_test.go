package kms

import (
	"errors"
	"strings"
	"testing"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Servers: []Server{{Address: "127.0.0.1:5696"}}, CAPEM: []byte("x")}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no servers", func(c *Config) { c.Servers = nil }, "at least one server"},
		{"no port", func(c *Config) { c.Servers[0].Address = "kms1" }, `servers[0].address: "kms1" is not host:port`},
		{"bad port", func(c *Config) { c.Servers[0].Address = "kms1:99999" }, "bad port"},
		{"duplicate", func(c *Config) { c.Servers = append(c.Servers, Server{Address: "127.0.0.1:5696"}) }, "duplicate server"},
		{"no CA", func(c *Config) { c.CAPEM = nil }, "CA bundle is required"},
		{"cert without key", func(c *Config) { c.CertFile = "a.crt" }, "go together"},
		{"bad version", func(c *Config) { c.Version = "2.0" }, "1.0 to 1.4"},
		{"negative timeout", func(c *Config) { c.AttemptTimeout = -1 }, "attempt_timeout"},
		{"bad metadata", func(c *Config) { c.Metadata = "xml" }, "unknown mode"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.Servers = append([]Server(nil), ok.Servers...)
			tc.mod(&c)
			err := c.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	c := ok
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if c.AttemptTimeout != DefaultAttemptTimeout || c.Retries != DefaultRetries || c.Backoff != DefaultBackoff {
		t.Errorf("defaults not applied: %+v", c)
	}
	c = ok
	c.Retries = -1
	_ = c.validate()
	if c.Retries != 0 {
		t.Errorf("Retries -1 -> %d, want 0", c.Retries)
	}
	if _, err := New(Config{Servers: ok.Servers, CAPEM: []byte("not a certificate")}); err == nil {
		t.Error("New with a bad CA bundle succeeded")
	}
}

func TestErrors(t *testing.T) {
	bi := &kmip.ResponseBatchItem{ResultStatus: kmip.ResultStatusOperationFailed, ResultReason: kmip.ResultReasonPermissionDenied,
		ResultMessage: "no\x00way\n" + strings.Repeat("x", 300)}
	e := resultError("kms1", "Get", "key-1", bi)
	if !errors.Is(e, ErrDenied) || e.Transient() {
		t.Errorf("Permission Denied: Is(ErrDenied)=%v transient=%v", errors.Is(e, ErrDenied), e.Transient())
	}
	msg := e.Error()
	if !strings.HasPrefix(msg, `kms kms1: Get "key-1": Permission Denied: no way`) || strings.ContainsAny(msg, "\x00\n") || len(msg) > 300 {
		t.Errorf("message %q", msg)
	}
	for r, want := range map[kmip.ResultReason]error{
		kmip.ResultReasonItemNotFound:          ErrNotFound,
		kmip.ResultReasonOperationNotSupported: ErrNotSupported,
		kmip.ResultReasonInvalidField:          ErrRejected,
		kmip.ResultReasonGeneralFailure:        ErrTransport,
	} {
		if e := resultError("s", "op", "", &kmip.ResponseBatchItem{ResultReason: r}); !errors.Is(e, want) {
			t.Errorf("%v -> %v, want %v", r, e, want)
		}
	}
	if !IsTransient(errors.Join(&Error{Err: ErrNotFound}, &Error{Err: ErrTransport})) {
		t.Error("a joined error with a transient member is not transient")
	}
	if IsTransient(errors.Join(&Error{Err: ErrNotFound}, &Error{Err: ErrDenied})) {
		t.Error("a joined error of definitive members is transient")
	}
	if ReasonOf(e) != "Permission Denied" {
		t.Errorf("ReasonOf = %q", ReasonOf(e))
	}
}

// TestRequestsCarryNoTimeStamp: a request stamped with the controller's
// clock is refused by servers that compare it with theirs (PyKMIP: one
// second ahead or a minute behind), so requests carry none.
func TestRequestsCarryNoTimeStamp(t *testing.T) {
	for _, n := range []int{1, 3} {
		var pls []kmip.OperationPayload
		for i := 0; i < n; i++ {
			pls = append(pls, &payloads.GetRequestPayload{UniqueIdentifier: "1"})
		}
		msg := newRequest(kmip.V1_4, pls...)
		if msg.Header.TimeStamp != nil {
			t.Fatalf("%d-item request carries a time stamp", n)
		}
		if int(msg.Header.BatchCount) != n || len(msg.BatchItem) != n {
			t.Fatalf("%d-item request has batch count %d and %d items", n, msg.Header.BatchCount, len(msg.BatchItem))
		}
		if cont := msg.Header.BatchErrorContinuationOption; (n > 1) != (cont == kmip.BatchErrorContinuationOptionContinue) {
			t.Fatalf("%d-item request: batch error continuation %v", n, cont)
		}
	}
}
