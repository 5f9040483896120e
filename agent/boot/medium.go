package boot

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sedboot/sedboot/agent/steps"
	"github.com/sedboot/sedboot/internal/bootmedium"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/earlyfs"
	"github.com/sedboot/sedboot/internal/techauth"
)

// Kernel command-line parameters the agent reads.
const (
	// ArgMedium names the boot medium's device, e.g.
	// sedboot.medium=/dev/nvme0n1 (default: search every small block
	// device for one).
	ArgMedium = "sedboot.medium"
	// ArgMediumWait bounds the wait for the boot medium, e.g. 20s.
	ArgMediumWait = "sedboot.medium_wait"
)

func (a *Agent) mediumWait() time.Duration {
	if v, ok := a.args[ArgMediumWait]; ok {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
	}
	return DefaultMedium
}

// stepMedium finds the boot medium (bounded wait), reads the newest
// document and validates it.
func (a *Agent) stepMedium(ctx context.Context) error {
	path, err := a.findMedium(ctx)
	if err != nil {
		return err
	}
	a.medium = path
	a.mediumDevs = map[string]bool{filepath.Base(path): true}
	f, err := os.Open(path)
	if err != nil {
		return steps.WithHint(fmt.Errorf("open boot medium %s: %w", path, err), "the boot medium is attached and readable")
	}
	defer f.Close()
	raw, seq, err := bootmedium.New(f, path).Read()
	if err != nil {
		return steps.WithHint(fmt.Errorf("read boot medium %s: %w", path, err),
			"the medium was initialised with `sedctl medium init`; a medium with two bad slots must be rewritten")
	}
	a.raw = raw
	doc, err := config.Parse(raw)
	if err != nil {
		a.technician = lenientTechnician(raw)
		return steps.WithHint(fmt.Errorf("boot medium %s (document #%d): %w", path, seq, err),
			"correct that field of the boot-medium document (sedctl medium export / import from the recovery shell or another system)")
	}
	a.doc = doc
	tech := doc.Technician
	a.technician = &tech
	if doc.Root.FSType == "" {
		doc.Root.FSType = "ext4"
	}
	if doc.Root.Init == "" {
		doc.Root.Init = "/sbin/init"
	}
	a.until = a.start.Add(doc.Deadlines.Total.D(DefaultTotal))
	a.record.Array, a.record.Slot, a.record.Mode = doc.Array.Serial, doc.Array.Slot, doc.Mode
	gens := 0
	if g := doc.Keys.Active(); g != nil {
		gens = g.Number
	}
	journal := ""
	if doc.Journal != nil {
		journal = fmt.Sprintf(", journal: %s to generation %d at %q", doc.Journal.Op, doc.Journal.To, doc.Journal.Step)
	}
	a.Printf("  medium %s, document #%d: array %s slot %s, mode %s, active key generation %d%s",
		path, seq, doc.Array.Serial, doc.Array.Slot, doc.Mode, gens, journal)
	return nil
}

// findMedium returns the boot medium's device: the one the kernel command
// line names, or the only block device carrying a boot-medium slot. It
// waits, bounded by ctx, for the device to appear.
func (a *Agent) findMedium(ctx context.Context) (string, error) {
	if p := a.args[ArgMedium]; p != "" {
		if _, err := earlyfs.WaitPath(ctx, p); err != nil {
			return "", steps.WithHint(fmt.Errorf("boot medium %s (from %s=): %w", p, ArgMedium, err),
				"the device named on the kernel command line exists; remove "+ArgMedium+"= to search")
		}
		return p, nil
	}
	delay := 20 * time.Millisecond
	for {
		found, err := bootmedium.Find("/sys", "/dev")
		if err != nil {
			return "", fmt.Errorf("search for the boot medium: %w", err)
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
		default:
			return "", steps.WithHint(fmt.Errorf("%d boot media found: %s", len(found), strings.Join(found, ", ")),
				"attach one boot medium, or name it with "+ArgMedium+"=/dev/...")
		}
		select {
		case <-ctx.Done():
			return "", steps.WithHint(fmt.Errorf("no boot medium found: %w", ctx.Err()),
				"the boot medium is attached; its driver is built into the kernel")
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// lenientTechnician pulls the technician credential out of a document that
// failed validation, so that a technician can still fix it from the
// recovery shell. The hash must itself be well formed.
func lenientTechnician(raw []byte) *config.Technician {
	var loose struct {
		Technician json.RawMessage `json:"technician"`
	}
	if json.Unmarshal(raw, &loose) != nil || len(loose.Technician) == 0 {
		return nil
	}
	var t config.Technician
	if json.Unmarshal(loose.Technician, &t) != nil || techauth.Check(t.Hash) != nil {
		return nil
	}
	return &t
}
