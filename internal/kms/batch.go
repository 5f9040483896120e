package kms

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
)

// Batched operations.
//
// Each of them sends one KMIP request with one batch item per object
// (Batch Error Continuation Option Continue, so that one refused item
// does not stop the others) and returns one result per object, in order.
// Requests carry at most MaxBatch items: larger batches are split. A
// server that refuses a request of several items as a whole (as a server
// limiting batch sizes does, kmsd with Options.MaxBatchItems among them)
// gets the items again in requests half the size (rounded up), down to
// one item per request, and the size it accepted is remembered for that
// server and operation for the rest of the Client's life.
//
// They are idempotent, so that running them again after a lost answer or
// an interrupted run is safe:
//
//   - Destroy of an object the server no longer holds counts as done
//     (Already). kmsd keeps the record of a destroyed object and answers a
//     second Destroy with Item Not Found ("already destroyed"); PyKMIP
//     deletes the object and answers Item Not Found ("could not locate").
//   - Revoke of an object already revoked counts as done. kmsd answers a
//     repeated Revoke with success (its handler treats it as done).
//     PyKMIP answers Illegal Operation ("not active and cannot be revoked
//     with reason other than KEY_COMPROMISE"); for every refused item the
//     client then reads the State of those objects in one more batched
//     request, and an object already Deactivated, Compromised or Destroyed
//     (Compromised or Destroyed Compromised for reason Key Compromise) is
//     reported done with Already set.
//   - Activate of an object already Active counts as done, found the same
//     way: both kmsd and PyKMIP answer Permission Denied ("not
//     Pre-Active").
//   - SetAttributeAll leaves an attribute that already has the value
//     alone (Already).

// batchKey names a server and a request kind.
type batchKey struct{ server, op string }

// ItemResult is the outcome of one item of a batched operation.
type ItemResult struct {
	// ID is the object's unique identifier.
	ID string
	// Already reports that the object was found already in the state the
	// operation asks for (a request repeated after a lost answer, an
	// interrupted run resumed); see each operation for how.
	Already bool
	// Err says why the item failed; nil when it is done. It is an *Error
	// naming the server, the operation, the object (Key) and the KMIP
	// result reason, or the error of a request that failed as a whole
	// (then the item's outcome on the server is unknown).
	Err error
}

// Results are the outcomes of a batched operation, one per item in
// request order.
type Results []ItemResult

// Failed returns the indexes of the items that failed.
func (rs Results) Failed() []int {
	var out []int
	for i, r := range rs {
		if r.Err != nil {
			out = append(out, i)
		}
	}
	return out
}

// Err returns nil when every item is done, else an error that counts the
// failures, quotes the first ones and wraps every item's error (so that
// errors.Is(err, ErrDenied) works).
func (rs Results) Err() error {
	var errs []error
	for _, r := range rs {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return &ItemsError{Total: len(rs), Errs: errs}
}

// ItemsError reports the failed items of a batched operation.
type ItemsError struct {
	// Total is the number of items sent; Errs holds one error per failed
	// item.
	Total int
	Errs  []error
}

func (e *ItemsError) Error() string {
	const show = 3
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d objects failed: ", len(e.Errs), e.Total)
	for i, err := range e.Errs[:min(show, len(e.Errs))] {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	if len(e.Errs) > show {
		fmt.Fprintf(&b, "; and %d more", len(e.Errs)-show)
	}
	return b.String()
}

// Unwrap returns every item's error.
func (e *ItemsError) Unwrap() []error { return e.Errs }

// batchLimit is the largest number of items sent in one request of kind
// op to this server.
func (s *Conn) batchLimit(op string) int {
	s.client.mu.Lock()
	defer s.client.mu.Unlock()
	if n, ok := s.client.batchMax[batchKey{s.srv.Label(), op}]; ok {
		return n
	}
	return MaxBatch
}

func (s *Conn) lowerBatchLimit(op string, n int, why error) {
	s.client.mu.Lock()
	k := batchKey{s.srv.Label(), op}
	if cur, ok := s.client.batchMax[k]; !ok || n < cur {
		s.client.batchMax[k] = n
	}
	s.client.mu.Unlock()
	s.client.log.Info("kms: server refused a batched request; sending smaller batches",
		"server", s.srv.Label(), "op", op, "items", n, "error", why)
}

// batchRefused reports whether a request failed as a whole because the
// server refused it (as opposed to a transport failure or a server fault).
func batchRefused(err error) bool {
	return errors.Is(err, ErrRejected) || errors.Is(err, ErrNotSupported)
}

// batch sends pls, one batch item each, in requests of at most
// batchLimit(kind) items, and returns the answers in order; keys[i] names
// item i in errors. On a failure it returns the answers received so far
// with the error of the request that failed.
//
// A request of several items that the server refuses as a whole is sent
// again in halves (rounded up). Once a smaller request is answered item
// by item, its size is remembered as the server's limit for kind. When
// the halving reaches a single item and the server refuses it for the
// same reason as the batch, the server refuses that operation rather
// than batches (PyKMIP, for one, cannot parse Add Attribute and fails the
// whole message): the remaining items of that operation get the same
// answer without being sent, the other items go in batches again, and the
// limit is left alone.
//
// A refused request was not carried out: a server that fails a message
// as a whole answers with a single failed item, leaving no room for the
// results of items it would have carried out. Sending its items again is
// therefore safe, even for Register.
func (s *Conn) batch(ctx context.Context, kind string, keys []string, pls []kmip.OperationPayload) ([]kmip.ResponseBatchItem, error) {
	out := make([]kmip.ResponseBatchItem, 0, len(pls))
	limit := s.batchLimit(kind)
	var refusal *Error // the last refusal of a whole request
	refusedOp := map[kmip.Operation]kmip.ResponseBatchItem{}
	for len(out) < len(pls) {
		lo := len(out)
		if bi, ok := refusedOp[pls[lo].Operation()]; ok {
			out = append(out, kmip.ResponseBatchItem{Operation: bi.Operation, ResultStatus: bi.ResultStatus,
				ResultReason: bi.ResultReason, ResultMessage: bi.ResultMessage})
			continue
		}
		n := 0 // consecutive items, none of a refused operation
		for n < limit && lo+n < len(pls) {
			if _, ok := refusedOp[pls[lo+n].Operation()]; ok {
				break
			}
			n++
		}
		items, err := s.roundtrip(ctx, kind, keyList(keys[lo:lo+n]), pls[lo:lo+n]...)
		if err != nil {
			var ke *Error
			if n > 1 && batchRefused(err) && errors.As(err, &ke) {
				limit, refusal = (n+1)/2, ke
				continue
			}
			return out, err
		}
		if refusal != nil {
			if n == 1 && items[0].ResultStatus != kmip.ResultStatusSuccess && reasonString(items[0].ResultReason) == refusal.Reason {
				refusedOp[pls[lo].Operation()] = items[0]
				limit, refusal = s.batchLimit(kind), nil
			} else {
				s.lowerBatchLimit(kind, n, refusal)
				refusal = nil
			}
		}
		out = append(out, items...)
	}
	return out, nil
}

// apply sends one batch item per payload and fills a result per item:
// ops[i] names the operation of item i in its error. It returns the
// results, the answers received, and the error of a request that failed
// as a whole (whose items carry that error).
func (s *Conn) apply(ctx context.Context, kind string, ids, ops []string, pls []kmip.OperationPayload) (Results, []kmip.ResponseBatchItem, error) {
	out := make(Results, len(ids))
	for i, id := range ids {
		if id == "" {
			return nil, nil, fmt.Errorf("kms: %s: empty unique identifier at position %d", strings.ToLower(kind), i)
		}
		out[i].ID = id
	}
	if len(ids) == 0 {
		return out, nil, nil
	}
	items, err := s.batch(ctx, kind, ids, pls)
	for i := range out {
		switch {
		case i >= len(items):
			out[i].Err = err
		case items[i].ResultStatus != kmip.ResultStatusSuccess:
			out[i].Err = resultError(s.srv.Label(), ops[i], ids[i], &items[i])
		}
	}
	return out, items, err
}

func repeat(op string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = op
	}
	return out
}

// settle reads, in one batched request, the State of the objects whose
// item the server refused, and reports done (Already) those whose state
// done accepts.
func (s *Conn) settle(ctx context.Context, out Results, done func(State) bool) error {
	var check []int
	for i, r := range out {
		if r.Err != nil && refused(r.Err) {
			check = append(check, i)
		}
	}
	if len(check) == 0 {
		return nil
	}
	ids := make([]string, len(check))
	for j, i := range check {
		ids[j] = out[i].ID
	}
	attrs, errs, err := s.GetAttributesAll(ctx, ids, string(kmip.AttributeNameState))
	if err != nil {
		return err
	}
	for j, i := range check {
		if errs[j] == nil && done(attrs[j].State) {
			out[i].Err, out[i].Already = nil, true
		}
	}
	return nil
}

// ActivateAll moves Pre-Active objects to Active in one batched request.
// An object already Active counts as done (Already). The error is set only
// when a request failed as a whole; the results then say what is known.
func (s *Conn) ActivateAll(ctx context.Context, ids []string) (Results, error) {
	pls := make([]kmip.OperationPayload, len(ids))
	for i, id := range ids {
		pls[i] = &payloads.ActivateRequestPayload{UniqueIdentifier: id}
	}
	out, _, err := s.apply(ctx, "Activate", ids, repeat("Activate", len(ids)), pls)
	if err != nil || len(out) == 0 {
		return out, err
	}
	return out, s.settle(ctx, out, func(st State) bool { return st == StateActive })
}

// RevokeAll revokes objects with reason and an optional message in one
// batched request. An object already revoked (Deactivated or Compromised,
// or destroyed) counts as done (Already); for reason RevokeKeyCompromise
// only Compromised and Destroyed Compromised do. The error is set only
// when a request failed as a whole; the results then say what is known.
func (s *Conn) RevokeAll(ctx context.Context, ids []string, reason RevocationReason, message string) (Results, error) {
	pls := make([]kmip.OperationPayload, len(ids))
	for i, id := range ids {
		pls[i] = revokePayload(id, reason, message)
	}
	out, _, err := s.apply(ctx, "Revoke", ids, repeat("Revoke", len(ids)), pls)
	if err != nil || len(out) == 0 {
		return out, err
	}
	done := func(st State) bool {
		switch st {
		case StateCompromised, StateDestroyedCompromised:
			return true
		case StateDeactivated, StateDestroyed:
			return reason != RevokeKeyCompromise
		}
		return false
	}
	return out, s.settle(ctx, out, done)
}

func revokePayload(id string, reason RevocationReason, message string) *payloads.RevokeRequestPayload {
	pl := &payloads.RevokeRequestPayload{
		UniqueIdentifier: id,
		RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCode(reason), RevocationMessage: message},
	}
	if reason == RevokeKeyCompromise {
		now := time.Now().Truncate(time.Second)
		pl.CompromiseOccurrenceDate = &now
	}
	return pl
}

// DestroyAll destroys objects' key material in one batched request. An
// object the server no longer holds (Item Not Found: destroyed before)
// counts as done (Already). Servers refuse to destroy an Active object
// (ErrDenied): revoke it first. The error is set only when a request
// failed as a whole; the results then say what is known.
func (s *Conn) DestroyAll(ctx context.Context, ids []string) (Results, error) {
	pls := make([]kmip.OperationPayload, len(ids))
	for i, id := range ids {
		pls[i] = &payloads.DestroyRequestPayload{UniqueIdentifier: id}
	}
	out, _, err := s.apply(ctx, "Destroy", ids, repeat("Destroy", len(ids)), pls)
	for i := range out {
		var ke *Error
		if errors.As(out[i].Err, &ke) && errors.Is(ke.Err, ErrNotFound) {
			out[i].Err, out[i].Already = nil, true
		}
	}
	return out, err
}

// GetAttributesAll returns the attributes (with no names, all of them) of
// several objects in one batched request, with a per-object error for
// those the server did not answer. The error is set only when a request
// failed as a whole.
func (s *Conn) GetAttributesAll(ctx context.Context, ids []string, names ...string) ([]*Attributes, []error, error) {
	var an []kmip.AttributeName
	for _, n := range names {
		an = append(an, kmip.AttributeName(n))
	}
	pls := make([]kmip.OperationPayload, len(ids))
	for i, id := range ids {
		pls[i] = &payloads.GetAttributesRequestPayload{UniqueIdentifier: id, AttributeName: an}
	}
	res, items, err := s.apply(ctx, "Get Attributes", ids, repeat("Get Attributes", len(ids)), pls)
	if err != nil || res == nil {
		return nil, nil, err
	}
	attrs := make([]*Attributes, len(ids))
	errs := make([]error, len(ids))
	for i := range res {
		if res[i].Err != nil {
			errs[i] = res[i].Err
			continue
		}
		ga, ok := items[i].ResponsePayload.(*payloads.GetAttributesResponsePayload)
		switch {
		case !ok:
			errs[i] = s.protoErr("Get Attributes", ids[i], items[i].ResponsePayload)
		case ga.UniqueIdentifier != "" && ga.UniqueIdentifier != ids[i]:
			errs[i] = &Error{Server: s.srv.Label(), Op: "Get Attributes", Key: ids[i],
				Err: fmt.Errorf("%w: answered for object %q", ErrProtocol, ga.UniqueIdentifier)}
		default:
			attrs[i] = parseAttributes(ids[i], ga.Attribute)
		}
	}
	return attrs, errs, nil
}

// AttributeOp is an attribute operation of ChangeAttributes.
type AttributeOp int

// Attribute operations.
const (
	// AttributeAdd adds an instance (Add Attribute).
	AttributeAdd AttributeOp = iota + 1
	// AttributeModify changes an instance (Modify Attribute).
	AttributeModify
	// AttributeDelete deletes an instance (Delete Attribute).
	AttributeDelete
)

func (o AttributeOp) String() string {
	switch o {
	case AttributeAdd:
		return "Add Attribute"
	case AttributeModify:
		return "Modify Attribute"
	case AttributeDelete:
		return "Delete Attribute"
	}
	return fmt.Sprintf("attribute operation %d", int(o))
}

// AttributeChange is one change of ChangeAttributes.
type AttributeChange struct {
	// ID is the object's unique identifier.
	ID string
	Op AttributeOp
	// Name is the attribute's name; Value its new value (Add, Modify).
	Name  string
	Value any
	// Index is the instance modified or deleted; nil for a single-valued
	// attribute (servers such as PyKMIP refuse an index for those) and,
	// for Delete, the first instance.
	Index *int32
}

// ChangeAttributes makes several attribute changes, on one or several
// objects, in one batched request (mixing Add, Modify and Delete Attribute
// items), and returns one result per change. Whether repeating a change is
// harmless is the attribute's business: Modify and Delete of the same
// instance are; Add of a multi-valued attribute adds another instance,
// except for kmsd's grant attribute ("x-kmsd-grant"), whose Add replaces
// the identity's grant. The error is set only when a request failed as a
// whole; the results then say what is known.
func (s *Conn) ChangeAttributes(ctx context.Context, changes []AttributeChange) (Results, error) {
	ids := make([]string, len(changes))
	ops := make([]string, len(changes))
	pls := make([]kmip.OperationPayload, len(changes))
	for i, c := range changes {
		if c.Name == "" {
			return nil, fmt.Errorf("kms: change attributes: change %d: empty attribute name", i)
		}
		ids[i], ops[i] = c.ID, c.Op.String()
		attr := kmip.Attribute{AttributeName: kmip.AttributeName(c.Name), AttributeIndex: c.Index, AttributeValue: c.Value}
		switch c.Op {
		case AttributeAdd:
			pls[i] = &payloads.AddAttributeRequestPayload{UniqueIdentifier: c.ID, Attribute: attr}
		case AttributeModify:
			pls[i] = &payloads.ModifyAttributeRequestPayload{UniqueIdentifier: c.ID, Attribute: attr}
		case AttributeDelete:
			pls[i] = &payloads.DeleteAttributeRequestPayload{UniqueIdentifier: c.ID, AttributeName: attr.AttributeName, AttributeIndex: c.Index}
		default:
			return nil, fmt.Errorf("kms: change attributes: change %d: unknown operation %d", i, int(c.Op))
		}
	}
	out, _, err := s.apply(ctx, "Attribute changes", ids, ops, pls)
	return out, err
}

// AddAttributeAll adds one instance of attribute name with value to every
// object of ids in one batched request (see ChangeAttributes).
func (s *Conn) AddAttributeAll(ctx context.Context, ids []string, name string, value any) (Results, error) {
	changes := make([]AttributeChange, len(ids))
	for i, id := range ids {
		changes[i] = AttributeChange{ID: id, Op: AttributeAdd, Name: name, Value: value}
	}
	return s.ChangeAttributes(ctx, changes)
}

// SetAttributeAll sets a single-valued attribute on every object of ids in
// two batched requests: Get Attributes of name, then Modify Attribute where
// the object has it and Add Attribute where it does not. An object that
// already has the value is left alone (Already). The error is set only
// when a request failed as a whole; the results then say what is known.
func (s *Conn) SetAttributeAll(ctx context.Context, ids []string, name string, value any) (Results, error) {
	if name == "" {
		return nil, errors.New("kms: set attribute: empty attribute name")
	}
	out := make(Results, len(ids))
	for i, id := range ids {
		out[i].ID = id
	}
	if len(ids) == 0 {
		return out, nil
	}
	attrs, errs, err := s.GetAttributesAll(ctx, ids, name)
	if attrs == nil && err == nil {
		err = errors.New("kms: set attribute: no answer") // not reached: ids is not empty
	}
	if err != nil {
		for i := range out {
			out[i].Err = err
		}
		return out, err
	}
	var changes []AttributeChange
	var at []int
	for i := range ids {
		if errs[i] != nil {
			out[i].Err = errs[i]
			continue
		}
		op := AttributeAdd
		if j := slices.IndexFunc(attrs[i].Raw, func(a kmip.Attribute) bool { return string(a.AttributeName) == name }); j >= 0 {
			if reflect.DeepEqual(attrs[i].Raw[j].AttributeValue, value) {
				out[i].Already = true
				continue
			}
			op = AttributeModify
		}
		changes = append(changes, AttributeChange{ID: ids[i], Op: op, Name: name, Value: value})
		at = append(at, i)
	}
	if len(changes) == 0 {
		return out, nil
	}
	res, err := s.ChangeAttributes(ctx, changes)
	if len(res) != len(changes) {
		return nil, err
	}
	for j, i := range at {
		out[i].Err = res[j].Err
	}
	return out, err
}

// SetExtractableAll sets the KMIP 1.4 Extractable attribute of every
// object of ids (see SetAttributeAll and SetExtractable).
func (s *Conn) SetExtractableAll(ctx context.Context, ids []string, v bool) (Results, error) {
	return s.SetAttributeAll(ctx, ids, string(kmip.AttributeNameExtractable), v)
}

// SetSensitiveAll sets the KMIP 1.4 Sensitive attribute of every object
// of ids (see SetAttributeAll).
func (s *Conn) SetSensitiveAll(ctx context.Context, ids []string, v bool) (Results, error) {
	return s.SetAttributeAll(ctx, ids, string(kmip.AttributeNameSensitive), v)
}
