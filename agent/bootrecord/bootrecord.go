// Package bootrecord keeps the structured record of one boot: each step,
// each drive (where its key came from, how many presentations, how long,
// the result) and each key server contacted. The agent hands it to the
// real OS as JSON under /run. It never holds key material.
package bootrecord

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sedboot/sedboot/agent/keysource"
)

// Version is the record format version.
const Version = 1

// DefaultPath is where the agent writes the record for the real OS.
const DefaultPath = "/run/sedboot/boot-record.json"

// Record is one boot's record. Its methods are safe for concurrent use.
type Record struct {
	mu sync.Mutex

	Version    int                 `json:"version"`
	Started    time.Time           `json:"started"`
	Array      string              `json:"array,omitempty"`
	Slot       string              `json:"slot,omitempty"`
	Mode       string              `json:"mode,omitempty"`
	Steps      []Step              `json:"steps"`
	Drives     []Drive             `json:"drives"`
	KeyServers []keysource.Attempt `json:"key_servers,omitempty"`
	// Outcome is "switch_root" or "recovery".
	Outcome string        `json:"outcome,omitempty"`
	Total   time.Duration `json:"total_ns"`
}

// Step records one boot step.
type Step struct {
	Name     string        `json:"name"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	// Result is "ok", "skipped" or "failed".
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
}

// Drive records one drive's unlock.
type Drive struct {
	Serial     string `json:"serial"`
	Path       string `json:"path,omitempty"`
	Model      string `json:"model,omitempty"`
	Source     string `json:"source,omitempty"`
	Server     string `json:"server,omitempty"`
	Generation int    `json:"generation,omitempty"`
	// Presentations counts credentials presented to the drive this boot.
	Presentations int `json:"presentations"`
	// TriesLeft is the Admin1 credential's remaining tries when known
	// (-1: unknown, 0 with TryLimit 0: unlimited).
	TriesLeft int           `json:"tries_left"`
	Latency   time.Duration `json:"latency_ns"`
	// Result is "unlocked", "locked", "not-encrypted" or "failed".
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
}

// New starts a record.
func New(now time.Time) *Record {
	return &Record{Version: Version, Started: now, Steps: []Step{}, Drives: []Drive{}}
}

// AddStep appends a step's outcome.
func (r *Record) AddStep(s Step) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Steps = append(r.Steps, s)
}

// SetDrive adds or replaces the record of drive d.Serial.
func (r *Record) SetDrive(d Drive) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.Drives {
		if r.Drives[i].Serial == d.Serial {
			r.Drives[i] = d
			return
		}
	}
	r.Drives = append(r.Drives, d)
}

// AddKeyServers appends key-server attempts.
func (r *Record) AddKeyServers(a []keysource.Attempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.KeyServers = append(r.KeyServers, a...)
}

// Finish sets the outcome and the total time.
func (r *Record) Finish(outcome string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Outcome = outcome
	r.Total = now.Sub(r.Started)
}

// JSON encodes the record.
func (r *Record) JSON() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("boot record: %w", err)
	}
	return append(b, '\n'), nil
}

// Write stores the record at path atomically (temporary file, rename),
// creating the directory if needed.
func (r *Record) Write(path string) error {
	b, err := r.JSON()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("boot record: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".boot-record-*")
	if err != nil {
		return fmt.Errorf("boot record: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("boot record: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("boot record: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("boot record: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("boot record: %w", err)
	}
	return nil
}

// Read loads a record written by Write.
func Read(path string) (*Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("boot record: %w", err)
	}
	r := &Record{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("boot record %s: %w", path, err)
	}
	return r, nil
}
