package kmsserver

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// auditMiddleware records each batch item. Only identifiers, names and
// results are logged, never a value.
func (s *Server) auditMiddleware(next kmipserver.BatchItemNext, ctx context.Context, bi *kmip.RequestBatchItem) (*kmip.ResponseBatchItem, error) {
	t0 := time.Now()
	resp, err := next(ctx, bi)
	if err != nil && resp != nil {
		// A failed handler returns a typed nil payload; drop it so that
		// nothing below (or the encoder) dereferences it.
		resp.ResponsePayload = nil
	}
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
		if p != nil {
			return []any{"id", p.UniqueIdentifier}
		}
	case *payloads.LocateResponsePayload:
		if p != nil {
			return []any{"found", len(p.UniqueIdentifier)}
		}
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
