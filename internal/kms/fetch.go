package kms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"

	"github.com/sedboot/sedboot/internal/secret"
)

// KeyRef names a key to fetch.
type KeyRef struct {
	// Name is the key's KMIP Name.
	Name string
	// IDs optionally maps a server's label to the key's unique identifier
	// on that server (the inventory kept on the boot medium). A known
	// identifier saves the Locate round trip; Fetch checks, in the same
	// batched request, that the object still carries Name.
	IDs map[string]string
}

// FetchRequest asks for a set of keys of one array.
type FetchRequest struct {
	// Group is the array's Object Group; Locate matches on it. Empty
	// matches on the name alone.
	Group string
	// Keys to fetch; names must be unique.
	Keys []KeyRef
}

// FetchResult holds the keys fetched. The caller must call Zero when done,
// including when Fetch also returned an error.
type FetchResult struct {
	// Secrets maps a key name to its value.
	Secrets map[string]*secret.Secret
	// IDs maps a key name to the server label and unique identifier that
	// supplied it, for the caller's inventory.
	IDs map[string]ServerID
	// Report says what each server did.
	Report *Report
}

// ServerID is a unique identifier on a given server.
type ServerID struct {
	Server string `json:"server"`
	ID     string `json:"id"`
}

// Zero wipes every fetched secret.
func (r *FetchResult) Zero() {
	if r == nil {
		return
	}
	for _, s := range r.Secrets {
		s.Zero()
	}
}

// FetchError lists the keys Fetch could not obtain from any server.
type FetchError struct {
	// Missing names the keys not fetched, in request order.
	Missing []string
	// Errs gives, per missing key, the error from each server that was
	// asked.
	Errs map[string][]error
}

func (e *FetchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kms: %d key(s) not fetched from any server", len(e.Missing))
	for i, n := range e.Missing {
		if i == 4 {
			fmt.Fprintf(&b, "; and %d more", len(e.Missing)-i)
			break
		}
		errs := e.Errs[n]
		if len(errs) == 0 {
			fmt.Fprintf(&b, "; %s: no server was reached", n)
			continue
		}
		fmt.Fprintf(&b, "; %s: %v", n, errs[len(errs)-1])
	}
	return b.String()
}

// Unwrap returns every per-server error, so that errors.Is(err,
// ErrDenied) tells whether a server refused.
func (e *FetchError) Unwrap() []error {
	var all []error
	for _, n := range e.Missing {
		all = append(all, e.Errs[n]...)
	}
	return all
}

// Fetch obtains the keys of req from the first servers able to supply
// them: per server, one batched Locate for the names whose identifier on
// that server is not known, then one batched Get of explicit identifiers.
// Keys a server did not supply are asked of the next one; rounds over the
// list repeat while failures are transient, within the total deadline.
//
// The result is non-nil whenever req is valid, even with an error, and
// must be zeroed by the caller. The error is a *FetchError when some keys
// were not fetched.
func (c *Client) Fetch(ctx context.Context, req FetchRequest) (*FetchResult, error) {
	if len(req.Keys) == 0 {
		return nil, errors.New("kms: fetch: no keys requested")
	}
	if len(req.Keys) > MaxBatch {
		return nil, fmt.Errorf("kms: fetch: %d keys exceeds %d per request", len(req.Keys), MaxBatch)
	}
	seen := map[string]bool{}
	for i, k := range req.Keys {
		if k.Name == "" {
			return nil, fmt.Errorf("kms: fetch: keys[%d]: empty name", i)
		}
		if seen[k.Name] {
			return nil, fmt.Errorf("kms: fetch: keys[%d]: %q requested twice", i, k.Name)
		}
		seen[k.Name] = true
	}
	res := &FetchResult{Secrets: map[string]*secret.Secret{}, IDs: map[string]ServerID{}}
	keyErrs := map[string][]error{}
	rep, _ := c.failover(ctx, func(ctx context.Context, srv Server, a *Attempt) (bool, error) {
		var want []KeyRef
		for _, k := range req.Keys {
			if _, ok := res.Secrets[k.Name]; !ok {
				want = append(want, k)
			}
		}
		got, ids, errs, err := c.fetchFrom(ctx, srv, req.Group, want, a)
		for name, s := range got {
			res.Secrets[name] = s
			res.IDs[name] = ServerID{Server: srv.Label(), ID: ids[name]}
			a.Fetched = append(a.Fetched, name)
		}
		sort.Strings(a.Fetched)
		if err != nil {
			for _, k := range want {
				keyErrs[k.Name] = append(keyErrs[k.Name], err)
			}
			return false, err
		}
		if len(errs) > 0 {
			a.KeyErrors = map[string]string{}
			pe := &partialError{wanted: len(want)}
			for name, e := range errs {
				keyErrs[name] = append(keyErrs[name], e)
				a.KeyErrors[name] = e.Error()
				pe.errs = append(pe.errs, e)
			}
			return false, pe
		}
		return true, nil
	})
	res.Report = rep
	var missing []string
	for _, k := range req.Keys {
		if _, ok := res.Secrets[k.Name]; !ok {
			missing = append(missing, k.Name)
		}
	}
	if len(missing) > 0 {
		fe := &FetchError{Missing: missing, Errs: map[string][]error{}}
		for _, n := range missing {
			fe.Errs[n] = keyErrs[n]
		}
		return res, fe
	}
	return res, nil
}

// partialError is an attempt that supplied only some keys; the per-key
// errors are in the attempt's KeyErrors.
type partialError struct {
	wanted int
	errs   []error
}

func (e *partialError) Error() string {
	return fmt.Sprintf("%d of %d keys not supplied (see key_errors)", len(e.errs), e.wanted)
}

func (e *partialError) Unwrap() []error { return e.errs }

// fetchFrom gets keys from one server. It returns the secrets obtained,
// their identifiers, per-key errors, and an error when the server could
// not be used at all.
func (c *Client) fetchFrom(ctx context.Context, srv Server, group string, keys []KeyRef, a *Attempt) (map[string]*secret.Secret, map[string]string, map[string]error, error) {
	conn, err := c.connect(ctx, srv)
	if err != nil {
		return nil, nil, nil, err
	}
	defer conn.Close()
	defer func() { a.Requests = conn.Requests() }()
	a.setConn(conn.info)

	got := map[string]*secret.Secret{}
	ids := map[string]string{}
	keyErrs := map[string]error{}
	fail := func(err error) (map[string]*secret.Secret, map[string]string, map[string]error, error) {
		for _, s := range got {
			s.Zero()
		}
		return nil, nil, nil, err
	}

	var hinted, unknown []string
	for _, k := range keys {
		if id := k.IDs[srv.Label()]; id != "" {
			hinted = append(hinted, k.Name)
			ids[k.Name] = id
		} else {
			unknown = append(unknown, k.Name)
		}
	}
	if err := conn.locateInto(ctx, group, unknown, ids, keyErrs); err != nil {
		return fail(err)
	}
	stale, err := conn.getInto(ctx, keys, hinted, ids, got, keyErrs)
	if err != nil {
		return fail(err)
	}
	if len(stale) > 0 {
		// Known identifiers that no longer name the key: look the names
		// up and try once more.
		for _, n := range stale {
			delete(ids, n)
			delete(keyErrs, n)
		}
		if err := conn.locateInto(ctx, group, stale, ids, keyErrs); err != nil {
			return fail(err)
		}
		if _, err := conn.getInto(ctx, keys, nil, ids, got, keyErrs); err != nil {
			return fail(err)
		}
	}
	return got, ids, keyErrs, nil
}

// locateInto looks names up in one batch and records identifiers or
// per-key errors.
func (s *Conn) locateInto(ctx context.Context, group string, names []string, ids map[string]string, keyErrs map[string]error) error {
	if len(names) == 0 {
		return nil
	}
	found, errs, err := s.LocateNames(ctx, group, names)
	if err != nil {
		return err
	}
	for i, n := range names {
		if errs[i] != nil {
			keyErrs[n] = errs[i]
			continue
		}
		ids[n] = found[i]
	}
	return nil
}

// getInto fetches, in one batched request, every key of keys that has an
// identifier in ids and no error yet; for the names in verify it also asks
// for the Name attribute and returns those whose identifier turned out to
// be stale.
func (s *Conn) getInto(ctx context.Context, keys []KeyRef, verify []string, ids map[string]string,
	got map[string]*secret.Secret, keyErrs map[string]error) (stale []string, err error) {
	type item struct {
		name   string
		verify bool
	}
	var (
		plan  []item
		pls   []kmip.OperationPayload
		names []string // per batch item
	)
	for _, k := range keys {
		id, ok := ids[k.Name]
		if !ok || got[k.Name] != nil || keyErrs[k.Name] != nil {
			continue
		}
		v := slices.Contains(verify, k.Name)
		plan = append(plan, item{k.Name, v})
		pls = append(pls, &payloads.GetRequestPayload{UniqueIdentifier: id})
		names = append(names, k.Name)
		if v {
			pls = append(pls, &payloads.GetAttributesRequestPayload{UniqueIdentifier: id, AttributeName: []kmip.AttributeName{kmip.AttributeNameName}})
			names = append(names, k.Name)
		}
	}
	if len(plan) == 0 {
		return nil, nil
	}
	items, err := s.batch(ctx, "Get", names, pls)
	if err != nil {
		for i := range items {
			clearMaterial(&items[i])
		}
		return nil, err
	}
	j := 0
	for _, it := range plan {
		id := ids[it.name]
		sec, gerr := s.secretFrom(id, &items[j])
		j++
		if it.verify {
			bi := &items[j]
			j++
			if !s.namesMatch(id, it.name, bi) {
				sec.Zero()
				stale = append(stale, it.name)
				continue
			}
		}
		if gerr != nil {
			var ke *Error
			if errors.As(gerr, &ke) && ke.Key == id {
				ke.Key = it.name + " (" + id + ")"
			}
			keyErrs[it.name] = gerr
			continue
		}
		got[it.name] = sec
	}
	return stale, nil
}

// namesMatch reports whether a Get Attributes answer shows the object id
// carrying name.
func (s *Conn) namesMatch(id, name string, bi *kmip.ResponseBatchItem) bool {
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		return false
	}
	ga, ok := bi.ResponsePayload.(*payloads.GetAttributesResponsePayload)
	if !ok || (ga.UniqueIdentifier != "" && ga.UniqueIdentifier != id) {
		return false
	}
	return slices.Contains(parseAttributes(id, ga.Attribute).Names, name)
}
