package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/sedboot/sedboot/internal/secret"
)

// Conn is one connection to one server. It never reconnects: after the
// connection drops, every call fails with ErrConnectionLost. A Conn is
// safe for concurrent use (requests are serialised).
type Conn struct {
	client   *Client
	srv      Server
	t        *transport
	version  kmip.ProtocolVersion
	info     ConnInfo
	requests atomic.Int64
}

// Info describes the connection.
func (s *Conn) Info() ConnInfo { return s.info }

// Server is the server this connection goes to.
func (s *Conn) Server() Server { return s.srv }

// Requests is the number of KMIP requests sent so far.
func (s *Conn) Requests() int { return int(s.requests.Load()) }

// Close closes the connection.
func (s *Conn) Close() error {
	s.t.close()
	return nil
}

// newRequest builds a request message of one batch item per payload.
//
// It carries no Time Stamp. The header field is optional, and servers that
// check it (PyKMIP refuses a request stamped even one second in its future,
// or more than a minute in its past) would make a controller whose clock
// drifts unable to fetch its keys at boot. TLS already protects against
// replays.
func newRequest(version kmip.ProtocolVersion, pls ...kmip.OperationPayload) kmip.RequestMessage {
	msg := kmip.NewRequestMessage(version, pls...)
	msg.Header.TimeStamp = nil
	if len(pls) > 1 {
		msg.Header.BatchErrorContinuationOption = kmip.BatchErrorContinuationOptionContinue
	}
	return msg
}

// roundtrip sends payloads as one request (one batch item each) and
// returns the batch items in request order. A failure of the whole
// request (transport, or a server error answered for the message as a
// whole) is returned as an *Error.
func (s *Conn) roundtrip(ctx context.Context, op, key string, pls ...kmip.OperationPayload) ([]kmip.ResponseBatchItem, error) {
	msg := newRequest(s.version, pls...)
	s.requests.Add(1)
	t0 := time.Now()
	resp, err := s.t.roundtrip(ctx, &msg)
	if err != nil {
		return nil, exchangeError(s.srv.Label(), op, key, err)
	}
	s.client.log.Debug("kms request", "server", s.srv.Label(), "op", op, "items", len(pls), "latency", time.Since(t0))
	items := resp.BatchItem
	if len(items) == 1 && len(pls) > 1 && items[0].ResultStatus != kmip.ResultStatusSuccess {
		// The server failed the message as a whole.
		return nil, resultError(s.srv.Label(), op, key, &items[0])
	}
	if len(items) != len(pls) {
		return nil, &Error{Server: s.srv.Label(), Op: op, Key: key,
			Err: fmt.Errorf("%w: %d answers to %d batch items", ErrProtocol, len(items), len(pls))}
	}
	for i := range items {
		id := msg.BatchItem[i].UniqueBatchItemID
		if len(id) > 0 && len(items[i].UniqueBatchItemID) > 0 && !bytes.Equal(id, items[i].UniqueBatchItemID) {
			return nil, &Error{Server: s.srv.Label(), Op: op, Key: key,
				Err: fmt.Errorf("%w: batch answers out of order", ErrProtocol)}
		}
		if items[i].ResultStatus == kmip.ResultStatusSuccess && items[i].ResponsePayload == nil && expectsPayload(pls[i]) {
			return nil, &Error{Server: s.srv.Label(), Op: op, Key: key,
				Err: fmt.Errorf("%w: empty %s answer", ErrProtocol, ttlv.EnumStr(pls[i].Operation()))}
		}
	}
	return items, nil
}

func expectsPayload(pl kmip.OperationPayload) bool {
	switch pl.Operation() {
	case kmip.OperationGet, kmip.OperationLocate, kmip.OperationRegister, kmip.OperationGetAttributes, kmip.OperationQuery:
		return true
	}
	return false
}

// do sends one operation and returns its response payload.
func (s *Conn) do(ctx context.Context, op, key string, pl kmip.OperationPayload) (kmip.OperationPayload, error) {
	items, err := s.roundtrip(ctx, op, key, pl)
	if err != nil {
		return nil, err
	}
	if items[0].ResultStatus != kmip.ResultStatusSuccess {
		return nil, resultError(s.srv.Label(), op, key, &items[0])
	}
	return items[0].ResponsePayload, nil
}

// ServerInfo is what a server says about itself in answer to Query.
type ServerInfo struct {
	// Vendor is the Vendor Identification.
	Vendor string `json:"vendor,omitempty"`
	// Operations and Objects list the operations and object types the
	// server advertises.
	Operations []string `json:"operations"`
	Objects    []string `json:"objects"`
}

// Query asks the server which operations and object types it supports.
func (s *Conn) Query(ctx context.Context) (*ServerInfo, error) {
	pl, err := s.do(ctx, "Query", "", &payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{
		kmip.QueryFunctionOperations, kmip.QueryFunctionObjects, kmip.QueryFunctionServerInformation,
	}})
	if err != nil {
		return nil, err
	}
	q, ok := pl.(*payloads.QueryResponsePayload)
	if !ok {
		return nil, s.protoErr("Query", "", pl)
	}
	info := &ServerInfo{Vendor: cleanMessage(q.VendorIdentification)}
	for _, o := range q.Operations {
		info.Operations = append(info.Operations, ttlv.EnumStr(o))
	}
	for _, o := range q.ObjectType {
		info.Objects = append(info.Objects, ttlv.EnumStr(o))
	}
	return info, nil
}

func (s *Conn) protoErr(op, key string, pl kmip.OperationPayload) *Error {
	return &Error{Server: s.srv.Label(), Op: op, Key: key, Err: fmt.Errorf("%w: unexpected answer %T", ErrProtocol, pl)}
}

func nameAttr(name string) kmip.Attribute {
	return kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{
		NameValue: name, NameType: kmip.NameTypeUninterpretedTextString,
	}}
}

func locatePayload(name, group string) *payloads.LocateRequestPayload {
	pl := &payloads.LocateRequestPayload{}
	if name != "" {
		pl.Attribute = append(pl.Attribute, nameAttr(name))
	}
	if group != "" {
		pl.Attribute = append(pl.Attribute, kmip.Attribute{AttributeName: kmip.AttributeNameObjectGroup, AttributeValue: group})
	}
	return pl
}

// Locate returns the unique identifiers of the objects called name (in
// group, when group is not empty).
func (s *Conn) Locate(ctx context.Context, name, group string) ([]string, error) {
	pl, err := s.do(ctx, "Locate", name, locatePayload(name, group))
	if err != nil {
		return nil, err
	}
	l, ok := pl.(*payloads.LocateResponsePayload)
	if !ok {
		return nil, s.protoErr("Locate", name, pl)
	}
	return l.UniqueIdentifier, nil
}

// LocateGroup returns the unique identifiers of every object in group.
func (s *Conn) LocateGroup(ctx context.Context, group string) ([]string, error) {
	if group == "" {
		return nil, errors.New("kms: locate group: empty group")
	}
	return s.Locate(ctx, "", group)
}

// LocateNames looks every name up in group in one batched request (split
// above MaxBatch names) and returns, per name, its single unique
// identifier or why there is none (ErrNotFound, ErrAmbiguous or the
// server's error). The error is set only when a request failed as a
// whole.
func (s *Conn) LocateNames(ctx context.Context, group string, names []string) ([]string, []error, error) {
	if len(names) == 0 {
		return nil, nil, nil
	}
	pls := make([]kmip.OperationPayload, len(names))
	for i, n := range names {
		pls[i] = locatePayload(n, group)
	}
	items, err := s.batch(ctx, "Locate", names, pls)
	if err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(names))
	errs := make([]error, len(names))
	for i := range items {
		if items[i].ResultStatus != kmip.ResultStatusSuccess {
			errs[i] = resultError(s.srv.Label(), "Locate", names[i], &items[i])
			continue
		}
		l, ok := items[i].ResponsePayload.(*payloads.LocateResponsePayload)
		switch {
		case !ok:
			errs[i] = s.protoErr("Locate", names[i], items[i].ResponsePayload)
		case len(l.UniqueIdentifier) == 0:
			errs[i] = &Error{Server: s.srv.Label(), Op: "Locate", Key: names[i], Err: ErrNotFound}
		case len(l.UniqueIdentifier) > 1:
			errs[i] = &Error{Server: s.srv.Label(), Op: "Locate", Key: names[i],
				Err: fmt.Errorf("%w: identifiers %s", ErrAmbiguous, strings.Join(l.UniqueIdentifier, ", "))}
		default:
			ids[i] = l.UniqueIdentifier[0]
		}
	}
	return ids, errs, nil
}

func keyList(names []string) string {
	if len(names) == 1 {
		return names[0]
	}
	return fmt.Sprintf("%d keys", len(names))
}

// GetSecrets fetches the Secret Data objects ids in one batched request
// (one Get per identifier, never the ID placeholder; split above MaxBatch
// objects) and returns their values in order, with a per-object error for
// those the server did not release. The error is set only when a request
// failed as a whole. The caller must Zero every returned secret.
func (s *Conn) GetSecrets(ctx context.Context, ids []string) ([]*secret.Secret, []error, error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	pls := make([]kmip.OperationPayload, len(ids))
	for i, id := range ids {
		if id == "" {
			return nil, nil, fmt.Errorf("kms: get: empty unique identifier at position %d", i)
		}
		pls[i] = &payloads.GetRequestPayload{UniqueIdentifier: id}
	}
	items, err := s.batch(ctx, "Get", ids, pls)
	if err != nil {
		for i := range items {
			clearMaterial(&items[i])
		}
		return nil, nil, err
	}
	secs := make([]*secret.Secret, len(ids))
	errs := make([]error, len(ids))
	for i := range items {
		secs[i], errs[i] = s.secretFrom(ids[i], &items[i])
	}
	return secs, errs, nil
}

// secretFrom extracts a Secret Data value from a Get answer, checking that
// the server answered for the object asked for. The decoded copy of the
// value is zeroed.
func (s *Conn) secretFrom(id string, bi *kmip.ResponseBatchItem) (*secret.Secret, error) {
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		return nil, resultError(s.srv.Label(), "Get", id, bi)
	}
	g, ok := bi.ResponsePayload.(*payloads.GetResponsePayload)
	if !ok {
		return nil, s.protoErr("Get", id, bi.ResponsePayload)
	}
	raw := rawMaterial(g.Object)
	defer clear(raw)
	if g.UniqueIdentifier != id {
		return nil, &Error{Server: s.srv.Label(), Op: "Get", Key: id,
			Err: fmt.Errorf("%w: answered with object %q", ErrProtocol, g.UniqueIdentifier)}
	}
	if g.ObjectType != kmip.ObjectTypeSecretData {
		return nil, &Error{Server: s.srv.Label(), Op: "Get", Key: id,
			Err: fmt.Errorf("%w: object is a %s, want Secret Data", ErrProtocol, ttlv.EnumStr(g.ObjectType))}
	}
	if len(raw) == 0 {
		return nil, &Error{Server: s.srv.Label(), Op: "Get", Key: id,
			Err: fmt.Errorf("%w: no key material (wrapped or empty value)", ErrProtocol)}
	}
	sec, err := secret.From(raw)
	if err != nil {
		return nil, &Error{Server: s.srv.Label(), Op: "Get", Key: id, Err: err}
	}
	return sec, nil
}

// clearMaterial zeroes the key material of a Get answer not used.
func clearMaterial(bi *kmip.ResponseBatchItem) {
	if g, ok := bi.ResponsePayload.(*payloads.GetResponsePayload); ok {
		clear(rawMaterial(g.Object))
	}
}

// rawMaterial returns the plain key material of a Secret Data object (the
// decoder's own slice, which the caller zeroes), or nil.
func rawMaterial(obj kmip.Object) []byte {
	sd, ok := obj.(*kmip.SecretData)
	if !ok || sd.KeyBlock.KeyValue == nil || sd.KeyBlock.KeyValue.Plain == nil {
		return nil
	}
	if sd.KeyBlock.KeyFormatType != kmip.KeyFormatTypeRaw && sd.KeyBlock.KeyFormatType != kmip.KeyFormatTypeOpaque {
		return nil
	}
	b := sd.KeyBlock.KeyValue.Plain.KeyMaterial.Bytes
	if b == nil {
		return nil
	}
	return *b
}

// Activate moves a Pre-Active object to Active.
func (s *Conn) Activate(ctx context.Context, id string) error {
	_, err := s.do(ctx, "Activate", id, &payloads.ActivateRequestPayload{UniqueIdentifier: id})
	return err
}

// RevocationReason says why an object is revoked.
type RevocationReason uint32

// Revocation reasons (KMIP codes). KeyCompromise and CACompromise move the
// object to Compromised; the others to Deactivated.
const (
	RevokeUnspecified        = RevocationReason(kmip.RevocationReasonCodeUnspecified)
	RevokeKeyCompromise      = RevocationReason(kmip.RevocationReasonCodeKeyCompromise)
	RevokeSuperseded         = RevocationReason(kmip.RevocationReasonCodeSuperseded)
	RevokeCessation          = RevocationReason(kmip.RevocationReasonCodeCessationOfOperation)
	RevokePrivilegeWithdrawn = RevocationReason(kmip.RevocationReasonCodePrivilegeWithdrawn)
)

// Revoke revokes an object with reason and an optional message.
func (s *Conn) Revoke(ctx context.Context, id string, reason RevocationReason, message string) error {
	_, err := s.do(ctx, "Revoke", id, revokePayload(id, reason, message))
	return err
}

// Destroy destroys an object's key material. Servers refuse to destroy an
// Active object: revoke it first.
func (s *Conn) Destroy(ctx context.Context, id string) error {
	_, err := s.do(ctx, "Destroy", id, &payloads.DestroyRequestPayload{UniqueIdentifier: id})
	return err
}

// State is a KMIP object state.
type State string

// Object states.
const (
	StatePreActive            State = "Pre-Active"
	StateActive               State = "Active"
	StateDeactivated          State = "Deactivated"
	StateCompromised          State = "Compromised"
	StateDestroyed            State = "Destroyed"
	StateDestroyedCompromised State = "Destroyed Compromised"
)

func stateFromKMIP(s kmip.State) State {
	switch s {
	case kmip.StatePreActive:
		return StatePreActive
	case kmip.StateActive:
		return StateActive
	case kmip.StateDeactivated:
		return StateDeactivated
	case kmip.StateCompromised:
		return StateCompromised
	case kmip.StateDestroyed:
		return StateDestroyed
	case kmip.StateDestroyedCompromised:
		return StateDestroyedCompromised
	}
	return State(ttlv.EnumStr(s))
}

// AppInfo is an Application Specific Information attribute.
type AppInfo struct {
	Namespace string `json:"namespace"`
	Data      string `json:"data"`
}

// Attributes are the attributes of an object that sedboot uses.
type Attributes struct {
	ID     string   `json:"id"`
	Names  []string `json:"names,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// ObjectType is the KMIP object type ("SecretData").
	ObjectType string `json:"object_type,omitempty"`
	State      State  `json:"state,omitempty"`
	// Extractable and Sensitive are nil when the server did not report
	// them.
	Extractable *bool     `json:"extractable,omitempty"`
	Sensitive   *bool     `json:"sensitive,omitempty"`
	AppInfo     []AppInfo `json:"app_info,omitempty"`
	// Custom holds text-valued custom ("x-") attributes.
	Custom map[string]string `json:"custom,omitempty"`
	// Grants are kmsd's grants on the object (GrantAttribute), in the
	// order the server sent them.
	Grants         []Grant   `json:"grants,omitempty"`
	InitialDate    time.Time `json:"initial_date,omitzero"`
	ActivationDate time.Time `json:"activation_date,omitzero"`
	// Metadata is the sedboot metadata, decoded from x-sedboot-*
	// attributes or the "sedboot" Application Specific Information.
	Metadata map[string]string `json:"metadata,omitempty"`
	// Raw is every attribute as the server sent it.
	Raw []kmip.Attribute `json:"-"`
}

// GetAttributes returns the attributes of an object; with no names, all
// of them.
func (s *Conn) GetAttributes(ctx context.Context, id string, names ...string) (*Attributes, error) {
	req := &payloads.GetAttributesRequestPayload{UniqueIdentifier: id}
	for _, n := range names {
		req.AttributeName = append(req.AttributeName, kmip.AttributeName(n))
	}
	pl, err := s.do(ctx, "Get Attributes", id, req)
	if err != nil {
		return nil, err
	}
	ga, ok := pl.(*payloads.GetAttributesResponsePayload)
	if !ok {
		return nil, s.protoErr("Get Attributes", id, pl)
	}
	if ga.UniqueIdentifier != "" && ga.UniqueIdentifier != id {
		return nil, &Error{Server: s.srv.Label(), Op: "Get Attributes", Key: id,
			Err: fmt.Errorf("%w: answered for object %q", ErrProtocol, ga.UniqueIdentifier)}
	}
	return parseAttributes(id, ga.Attribute), nil
}

func parseAttributes(id string, raw []kmip.Attribute) *Attributes {
	a := &Attributes{ID: id, Raw: raw}
	for _, at := range raw {
		switch v := at.AttributeValue.(type) {
		case kmip.Name:
			a.Names = append(a.Names, v.NameValue)
		case kmip.State:
			a.State = stateFromKMIP(v)
		case kmip.ObjectType:
			a.ObjectType = ttlv.EnumStr(v)
		case kmip.ApplicationSpecificInformation:
			a.AppInfo = append(a.AppInfo, AppInfo{Namespace: v.ApplicationNamespace, Data: v.ApplicationData})
		case bool:
			b := v
			switch at.AttributeName {
			case kmip.AttributeNameExtractable:
				a.Extractable = &b
			case kmip.AttributeNameSensitive:
				a.Sensitive = &b
			}
		case string:
			if at.AttributeName == kmip.AttributeNameObjectGroup {
				a.Groups = append(a.Groups, v)
			}
		case time.Time:
			switch at.AttributeName {
			case kmip.AttributeNameInitialDate:
				a.InitialDate = v
			case kmip.AttributeNameActivationDate:
				a.ActivationDate = v
			}
		case ttlv.Value:
			if at.AttributeName.IsCustom() {
				if str, ok := v.Value.(string); ok {
					if a.Custom == nil {
						a.Custom = map[string]string{}
					}
					a.Custom[string(at.AttributeName)] = str
				}
			}
		}
		if at.AttributeName == GrantAttribute {
			if s, ok := TextValue(at.AttributeValue); ok {
				if g, err := ParseGrant(s); err == nil {
					a.Grants = append(a.Grants, g)
				}
			}
		}
	}
	a.Metadata = decodeMetadata(a)
	return a
}

// SetAttribute sets a single-valued attribute: Modify Attribute when the
// object has it, Add Attribute when it does not, nothing when it already
// has the value (see SetAttributeAll).
func (s *Conn) SetAttribute(ctx context.Context, id, name string, value any) error {
	res, err := s.SetAttributeAll(ctx, []string{id}, name, value)
	if err != nil {
		return err
	}
	return res[0].Err
}

// AddAttribute adds one instance of an attribute (e.g. a custom "x-"
// text attribute).
func (s *Conn) AddAttribute(ctx context.Context, id, name string, value any) error {
	attr := kmip.Attribute{AttributeName: kmip.AttributeName(name), AttributeValue: value}
	_, err := s.do(ctx, "Add Attribute", id, &payloads.AddAttributeRequestPayload{UniqueIdentifier: id, Attribute: attr})
	return err
}

// DeleteAttribute deletes instance index of attribute name (index 0 is
// the first instance).
func (s *Conn) DeleteAttribute(ctx context.Context, id, name string, index int32) error {
	_, err := s.do(ctx, "Delete Attribute", id, &payloads.DeleteAttributeRequestPayload{
		UniqueIdentifier: id, AttributeName: kmip.AttributeName(name), AttributeIndex: &index,
	})
	return err
}

// SetExtractable sets the KMIP 1.4 Extractable attribute. A server that
// enforces it refuses Get of the plain value once it is false: this is
// how a cryptographic lock stops key release.
func (s *Conn) SetExtractable(ctx context.Context, id string, v bool) error {
	return s.SetAttribute(ctx, id, string(kmip.AttributeNameExtractable), v)
}

// SetSensitive sets the KMIP 1.4 Sensitive attribute.
func (s *Conn) SetSensitive(ctx context.Context, id string, v bool) error {
	return s.SetAttribute(ctx, id, string(kmip.AttributeNameSensitive), v)
}

// SecretSpec describes a secret to register.
type SecretSpec struct {
	// Name is the object's Name (e.g. "sedboot-SN123--20260101--key-gen-1").
	Name string
	// Group is the Object Group (one per array, e.g. "sedboot-SN123").
	Group string
	// Value is the secret; Register does not zero it.
	Value *secret.Secret
	// Metadata is stored per the client's MetadataMode; keys are
	// lower-case words ("array", "generation").
	Metadata map[string]string
	// Activate moves the new object to Active.
	Activate bool
}

// Register stores spec as Secret Data of type Password unless an object
// with the same name already exists in the group, in which case it
// returns that object's identifier and created=false (so a retry after a
// lost answer does not create a second object). It fails with
// ErrAmbiguous when the name is already taken more than once.
func (s *Conn) Register(ctx context.Context, spec SecretSpec) (id string, created bool, err error) {
	out, err := s.RegisterAll(ctx, []SecretSpec{spec})
	if err != nil {
		return "", false, err
	}
	return out[0].ID, out[0].Created, out[0].Err
}

// Registered is the outcome of registering one secret.
type Registered struct {
	// ID is the object's unique identifier (set when it exists, even if
	// activating it failed).
	ID string
	// Created is false when the name already existed.
	Created bool
	// Err is why this secret failed.
	Err error
}

// RegisterAll registers several secrets in at most four requests (each
// split above MaxBatch secrets): one batched Locate of every name (an existing name is not registered
// again), one batched Register of the missing ones (again with another
// metadata form for those the server refused), and one batched Activate
// (after a batched Get Attributes of the State of those that already
// existed). The error is set only when a request failed as a whole; then
// the outcome of the secrets not yet reported is unknown, and calling
// RegisterAll again is safe.
func (s *Conn) RegisterAll(ctx context.Context, specs []SecretSpec) ([]Registered, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	names := make([]string, len(specs))
	seen := map[string]bool{}
	hasMeta := false
	for i, sp := range specs {
		switch {
		case sp.Name == "":
			return nil, fmt.Errorf("kms: register: secret %d: empty name", i)
		case sp.Value == nil || sp.Value.Len() == 0:
			return nil, fmt.Errorf("kms: register %q: empty value", sp.Name)
		case seen[sp.Name]:
			return nil, fmt.Errorf("kms: register: %q given twice", sp.Name)
		}
		seen[sp.Name] = true
		names[i] = sp.Name
		hasMeta = hasMeta || len(sp.Metadata) > 0
	}
	out := make([]Registered, len(specs))
	label := s.srv.Label()

	// 1. Which names exist already?
	pls := make([]kmip.OperationPayload, len(specs))
	for i, sp := range specs {
		pls[i] = locatePayload(sp.Name, sp.Group)
	}
	items, err := s.batch(ctx, "Locate", names, pls)
	if err != nil {
		return nil, err
	}
	var create, existing []int
	for i := range items {
		if items[i].ResultStatus != kmip.ResultStatusSuccess {
			out[i].Err = resultError(label, "Locate", names[i], &items[i])
			continue
		}
		l, ok := items[i].ResponsePayload.(*payloads.LocateResponsePayload)
		switch {
		case !ok:
			out[i].Err = s.protoErr("Locate", names[i], items[i].ResponsePayload)
		case len(l.UniqueIdentifier) == 0:
			create = append(create, i)
		case len(l.UniqueIdentifier) == 1:
			out[i].ID = l.UniqueIdentifier[0]
			existing = append(existing, i)
		default:
			out[i].Err = &Error{Server: label, Op: "Register", Key: names[i],
				Err: fmt.Errorf("%w: identifiers %s", ErrAmbiguous, strings.Join(l.UniqueIdentifier, ", "))}
		}
	}

	// 2. Register the missing ones, falling back to the next metadata
	// form for those refused (a refused request created nothing).
	modes := s.client.metadataModes(s.srv, hasMeta)
	var activate []int
	for mi, mode := range modes {
		if len(create) == 0 {
			break
		}
		pls = pls[:0]
		for _, i := range create {
			pls = append(pls, registerPayload(specs[i], mode))
		}
		items, err := s.batch(ctx, "Register", namesAt(names, create), pls)
		if err != nil {
			return out, err
		}
		var retry []int
		for j, i := range create {
			bi := &items[j]
			if bi.ResultStatus == kmip.ResultStatusSuccess {
				r, ok := bi.ResponsePayload.(*payloads.RegisterResponsePayload)
				if !ok || r.UniqueIdentifier == "" {
					out[i].Err = s.protoErr("Register", names[i], bi.ResponsePayload)
					continue
				}
				out[i].ID, out[i].Created = r.UniqueIdentifier, true
				if len(specs[i].Metadata) > 0 {
					s.client.rememberMetadataMode(s.srv, mode)
				}
				if specs[i].Activate {
					activate = append(activate, i)
				}
				continue
			}
			e := resultError(label, "Register", names[i], bi)
			if mi < len(modes)-1 && len(specs[i].Metadata) > 0 && (errors.Is(e, ErrRejected) || errors.Is(e, ErrNotSupported)) {
				s.client.log.Debug("kms register: metadata form refused; trying the next", "server", label, "mode", string(mode), "error", e)
				retry = append(retry, i)
				continue
			}
			out[i].Err = e
		}
		create = retry
	}

	// 3. Activate: the new ones, and the existing ones still Pre-Active.
	var check []int
	for _, i := range existing {
		if specs[i].Activate {
			check = append(check, i)
		}
	}
	if len(check) > 0 {
		pls = pls[:0]
		for _, i := range check {
			pls = append(pls, &payloads.GetAttributesRequestPayload{UniqueIdentifier: out[i].ID, AttributeName: []kmip.AttributeName{kmip.AttributeNameState}})
		}
		items, err := s.batch(ctx, "Get Attributes", namesAt(names, check), pls)
		if err != nil {
			return out, err
		}
		for j, i := range check {
			if items[j].ResultStatus != kmip.ResultStatusSuccess {
				out[i].Err = resultError(label, "Get Attributes", names[i], &items[j])
				continue
			}
			if ga, ok := items[j].ResponsePayload.(*payloads.GetAttributesResponsePayload); ok && parseAttributes(out[i].ID, ga.Attribute).State == StatePreActive {
				activate = append(activate, i)
			}
		}
	}
	if len(activate) > 0 {
		pls = pls[:0]
		for _, i := range activate {
			pls = append(pls, &payloads.ActivateRequestPayload{UniqueIdentifier: out[i].ID})
		}
		items, err := s.batch(ctx, "Activate", namesAt(names, activate), pls)
		if err != nil {
			return out, err
		}
		for j, i := range activate {
			if items[j].ResultStatus != kmip.ResultStatusSuccess {
				out[i].Err = resultError(label, "Activate", names[i], &items[j])
			}
		}
	}
	return out, nil
}

func namesAt(names []string, idx []int) []string {
	out := make([]string, len(idx))
	for j, i := range idx {
		out[j] = names[i]
	}
	return out
}

func registerPayload(spec SecretSpec, mode MetadataMode) *payloads.RegisterRequestPayload {
	value := spec.Value.Bytes()
	attrs := []kmip.Attribute{nameAttr(spec.Name)}
	if spec.Group != "" {
		attrs = append(attrs, kmip.Attribute{AttributeName: kmip.AttributeNameObjectGroup, AttributeValue: spec.Group})
	}
	attrs = append(attrs, encodeMetadata(spec.Metadata, mode)...)
	return &payloads.RegisterRequestPayload{
		ObjectType:        kmip.ObjectTypeSecretData,
		TemplateAttribute: kmip.TemplateAttribute{Attribute: attrs},
		Object: &kmip.SecretData{
			SecretDataType: kmip.SecretDataTypePassword,
			KeyBlock: kmip.KeyBlock{
				KeyFormatType: kmip.KeyFormatTypeOpaque,
				KeyValue:      &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &value}}},
			},
		},
	}
}

// MetadataNamespace is the Application Specific Information namespace and
// the custom attribute prefix ("x-sedboot-") sedboot uses.
const MetadataNamespace = "sedboot"

func encodeMetadata(md map[string]string, mode MetadataMode) []kmip.Attribute {
	if len(md) == 0 || mode == MetadataNone {
		return nil
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	switch mode {
	case MetadataASI:
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + md[k]
		}
		return []kmip.Attribute{{AttributeName: kmip.AttributeNameApplicationSpecificInformation,
			AttributeValue: kmip.ApplicationSpecificInformation{ApplicationNamespace: MetadataNamespace, ApplicationData: strings.Join(parts, ";")}}}
	default:
		attrs := make([]kmip.Attribute, len(keys))
		for i, k := range keys {
			attrs[i] = kmip.Attribute{AttributeName: kmip.AttributeName("x-" + MetadataNamespace + "-" + k), AttributeValue: md[k]}
		}
		return attrs
	}
}

func decodeMetadata(a *Attributes) map[string]string {
	md := map[string]string{}
	prefix := "x-" + MetadataNamespace + "-"
	for k, v := range a.Custom {
		if strings.HasPrefix(k, prefix) {
			md[strings.TrimPrefix(k, prefix)] = v
		}
	}
	for _, ai := range a.AppInfo {
		if ai.Namespace != MetadataNamespace {
			continue
		}
		for part := range strings.SplitSeq(ai.Data, ";") {
			if k, v, ok := strings.Cut(part, "="); ok && k != "" {
				md[k] = v
			}
		}
	}
	if len(md) == 0 {
		return nil
	}
	return md
}

func (c *Client) metadataModes(srv Server, have bool) []MetadataMode {
	if !have {
		return []MetadataMode{MetadataNone}
	}
	switch c.cfg.Metadata {
	case MetadataCustom, MetadataASI, MetadataNone:
		return []MetadataMode{c.cfg.Metadata}
	}
	c.mu.Lock()
	known, ok := c.metaMode[srv.Label()]
	c.mu.Unlock()
	if ok {
		return []MetadataMode{known}
	}
	return []MetadataMode{MetadataCustom, MetadataASI}
}

func (c *Client) rememberMetadataMode(srv Server, m MetadataMode) {
	if m == MetadataNone {
		return
	}
	c.mu.Lock()
	c.metaMode[srv.Label()] = m
	c.mu.Unlock()
}
