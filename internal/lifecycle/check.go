package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sedboot/sedboot/internal/kms"
)

// ServerCheck is what CheckServers found on one key server.
type ServerCheck struct {
	Server string `json:"server"`
	// OK: the server does everything sedboot needs.
	OK           bool              `json:"ok"`
	Capabilities *kms.Capabilities `json:"capabilities,omitempty"`
	// Missing lists required operations the server does not do.
	Missing []string `json:"missing,omitempty"`
	// CanLock names the way the server can refuse keys to the array
	// ("" when it enforces none).
	CanLock string `json:"can_lock,omitempty"`
	Error   string `json:"error,omitempty"`
}

// requiredChecks are the capabilities enabling and booting depend on.
var requiredChecks = []string{kms.CheckRegister, kms.CheckObjectGroup, kms.CheckLocate, kms.CheckGet, kms.CheckBatchedGet, kms.CheckActivate}

// CheckServers checks every configured key server the way enabling needs
// it: a connection with the administrator's identity and one with the
// array's, and a capability probe (on probe objects it registers and
// destroys) showing that Register with an Object Group, Locate, Get,
// batched Get and Activate work. It returns an error naming each server
// that falls short.
func (a *Array) CheckServers(ctx context.Context) ([]ServerCheck, error) {
	if a.Doc.KMS == nil {
		return nil, errNoKMS
	}
	if a.Admin == nil {
		return nil, errors.New("no administrator key-server client")
	}
	agent, err := a.agent()
	if err != nil {
		return nil, err
	}
	var out []ServerCheck
	var bad []string
	for _, srv := range a.Admin.Servers() {
		sc := ServerCheck{Server: srv.Label()}
		if err := a.checkServer(ctx, srv, agent, &sc); err != nil {
			sc.Error = err.Error()
		}
		if !sc.OK {
			why := sc.Error
			if why == "" {
				why = "missing " + strings.Join(sc.Missing, ", ")
			}
			bad = append(bad, fmt.Sprintf("%s: %s", srv.Label(), why))
		}
		out = append(out, sc)
	}
	if len(bad) > 0 {
		return out, fmt.Errorf("key server check failed: %s", strings.Join(bad, "; "))
	}
	return out, nil
}

func (a *Array) checkServer(ctx context.Context, srv kms.Server, agent *kms.Client, sc *ServerCheck) error {
	c, err := a.connect(ctx, a.Admin, srv)
	if err != nil {
		return fmt.Errorf("administrator identity: %w", err)
	}
	defer a.release(c)
	ac, err := a.connect(ctx, agent, srv)
	if err != nil {
		return fmt.Errorf("array identity: %w", err)
	}
	defer a.release(ac)
	caps, err := c.Probe(ctx, kms.ProbeOptions{Other: ac, Prefix: a.prefix() + "-check"})
	if err != nil {
		return fmt.Errorf("capability probe: %w", err)
	}
	sc.Capabilities = caps
	for _, chk := range requiredChecks {
		if !caps.Has(chk) {
			sc.Missing = append(sc.Missing, chk)
		}
	}
	if ok, how := caps.CanLock(); ok {
		sc.CanLock = how
	}
	if len(caps.Leftovers) > 0 {
		return fmt.Errorf("the probe could not destroy its objects %v", caps.Leftovers)
	}
	sc.OK = len(sc.Missing) == 0
	return nil
}
