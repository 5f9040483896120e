package keysource

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/sedboot/sedboot/internal/kms"
)

// KMIP fetches keys from the array's external KMIP key servers over mutual
// TLS: one batched request per server (kms.Client.Fetch), failing over in
// the configured order.
type KMIP struct {
	// Client is configured with the array's servers and TLS identity.
	Client *kms.Client
	// Group is the array's Object Group (keys.Group).
	Group string
}

// Name returns "kmip".
func (k *KMIP) Name() string { return "kmip" }

// Fetch asks the key servers for every requested key at once. Keys no
// server released are listed in Result.Missing with the reasons; err is
// set when no key at all could be fetched, and then says why (and whether a
// server refused, errors.Is(err, kms.ErrDenied), or could not be reached,
// kms.ErrTransport / kms.ErrTLSConfig).
func (k *KMIP) Fetch(ctx context.Context, reqs []Request) (*Result, error) {
	if k.Client == nil {
		return nil, errors.New("kmip: no client configured")
	}
	byName := make(map[string]Request, len(reqs))
	fr := kms.FetchRequest{Group: k.Group}
	for _, r := range reqs {
		if r.Name == "" {
			return nil, fmt.Errorf("kmip: request for drive %s generation %d has no key name", r.Drive, r.Generation)
		}
		if _, dup := byName[r.Name]; dup {
			continue
		}
		byName[r.Name] = r
		fr.Keys = append(fr.Keys, kms.KeyRef{Name: r.Name, IDs: r.IDs})
	}
	res := &Result{Missing: map[string]string{}}
	if len(fr.Keys) == 0 {
		return res, nil
	}
	out, ferr := k.Client.Fetch(ctx, fr)
	if out != nil {
		if out.Report != nil {
			res.Attempts = attempts(out.Report)
		}
		for name, s := range out.Secrets {
			r, ok := byName[name]
			if !ok {
				s.Zero()
				continue
			}
			server := ""
			if id, ok := out.IDs[name]; ok {
				server = id.Server
			}
			res.Keys = append(res.Keys, Key{Request: r, Secret: s, Source: k.Name(), Server: server})
		}
		// The secrets now belong to res.Keys; forget them here so that
		// nobody zeroes them twice.
		out.Secrets = nil
	}
	got := make(map[string]bool, len(res.Keys))
	for _, key := range res.Keys {
		got[key.Name] = true
	}
	var fe *kms.FetchError
	errors.As(ferr, &fe)
	for name := range byName {
		if got[name] {
			continue
		}
		res.Missing[name] = missingReason(fe, name, ferr)
	}
	if len(res.Keys) == 0 && ferr != nil {
		return res, fmt.Errorf("kmip: %w", ferr)
	}
	return res, nil
}

// missingReason says, in one line, why no server released name.
func missingReason(fe *kms.FetchError, name string, whole error) string {
	if fe != nil {
		var parts []string
		for _, e := range fe.Errs[name] {
			parts = append(parts, e.Error())
		}
		if len(parts) > 0 {
			return strings.Join(parts, "; ")
		}
	}
	if whole != nil {
		return whole.Error()
	}
	return "no server released it"
}

// attempts turns a kms report into the boot record's per-server lines.
func attempts(rep *kms.Report) []Attempt {
	var out []Attempt
	for _, a := range rep.Attempts {
		at := Attempt{Source: "kmip", Server: a.Server, Latency: a.Latency, Requests: a.Requests, Keys: len(a.Fetched), Error: a.Error}
		if at.Error == "" && len(a.KeyErrors) > 0 {
			names := make([]string, 0, len(a.KeyErrors))
			for n := range a.KeyErrors {
				names = append(names, n)
			}
			sort.Strings(names)
			at.Error = fmt.Sprintf("%d key(s) not released, e.g. %s: %s", len(names), names[0], a.KeyErrors[names[0]])
		}
		out = append(out, at)
	}
	return out
}
