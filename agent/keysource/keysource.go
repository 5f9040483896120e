// Package keysource defines how the boot agent obtains drive keys. Each
// source (external KMIP key servers, the partner controller, internal key
// segments) lives in its own file and implements Source; the unlock path
// depends only on this interface.
package keysource

import (
	"context"
	"time"

	"github.com/sedboot/sedboot/internal/secret"
)

// Request asks for one drive's key of one generation.
type Request struct {
	// Drive is the drive's serial number.
	Drive string
	// Generation is the key generation wanted.
	Generation int
	// Name is the key's name on the key servers.
	Name string
	// IDs maps a server name to the key's unique identifier there, when
	// known; a source looks the name up where it is missing or stale.
	IDs map[string]string
}

// Key is a fetched key. Whoever holds it zeroes Secret when done.
type Key struct {
	Request
	Secret *secret.Secret
	// Source and Server say where the key came from (for the boot record).
	Source string
	Server string
}

// Attempt records what one server (or peer) did for one fetch.
type Attempt struct {
	Source  string        `json:"source"`
	Server  string        `json:"server"`
	Latency time.Duration `json:"latency_ns"`
	// Requests counts the round trips made to this server.
	Requests int `json:"requests"`
	// Keys counts the keys this server returned.
	Keys  int    `json:"keys"`
	Error string `json:"error,omitempty"`
}

// Result is the outcome of one Fetch.
type Result struct {
	// Keys holds one key per satisfied request, in no particular order.
	Keys []Key
	// Missing maps the name of each key no server could supply to the reason.
	Missing map[string]string
	// Attempts lists what each server did, in the order tried.
	Attempts []Attempt
}

// Zero releases every key in the result.
func (r *Result) Zero() {
	if r == nil {
		return
	}
	for i := range r.Keys {
		r.Keys[i].Secret.Zero()
	}
	r.Keys = nil
}

// Source fetches drive keys.
type Source interface {
	// Name identifies the source in the console and the boot record
	// ("kmip", "peer", "internal").
	Name() string
	// Fetch obtains the requested keys within ctx's deadline. It returns
	// what it got and what is missing; err is set only when the source
	// could not be used at all (no server reachable, bad credentials).
	Fetch(ctx context.Context, reqs []Request) (*Result, error)
}
