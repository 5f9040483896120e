package boot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/sedboot/sedboot/agent/steps"
	"github.com/sedboot/sedboot/initramfs/modload"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/earlyfs"
	"github.com/sedboot/sedboot/internal/netup"
	"github.com/sedboot/sedboot/internal/nvmeof"
)

// maxParallelConnects bounds the NVMe/TCP connects in flight at once.
const maxParallelConnects = 16

// stepModules loads the kernel modules the image ships, in the order the
// image builder recorded.
func (a *Agent) stepModules(ctx context.Context) error {
	if _, err := os.Stat("/" + modload.OrderFile); errors.Is(err, os.ErrNotExist) {
		return steps.Skip("the image ships no modules")
	}
	res, err := modload.Load(ctx, "/")
	if err != nil {
		return steps.WithHint(err, "the initramfs was built for this kernel (same release as uname -r)")
	}
	var names []string
	for _, r := range res {
		names = append(names, r.Name)
	}
	a.Printf("  %d modules: %s", len(res), strings.Join(names, " "))
	// configfs may be a module: mount it now if it was not before.
	if _, err := earlyfs.Ensure(ctx, a.log); err != nil {
		return err
	}
	return nil
}

// needsNetwork reports whether anything in the document is reached over
// the network.
func needsNetwork(doc *config.Document) bool {
	return doc.Mode == config.ModeExternal || len(doc.Fabrics) > 0
}

func (a *Agent) stepNetwork(ctx context.Context) error {
	if !needsNetwork(a.doc) {
		return steps.Skip("no key server or fabric to reach")
	}
	n := a.doc.Network
	cfg := netup.Config{
		Interface: n.Interface,
		MAC:       n.MAC,
		Mode:      netup.Mode(n.Mode),
		Addresses: n.Addresses,
		Gateway:   n.Gateway,
		MTU:       n.MTU,
	}
	for _, r := range n.Routes {
		cfg.Routes = append(cfg.Routes, netup.Route{Destination: r.Destination, Gateway: r.Via})
	}
	res, err := netup.Up(ctx, cfg, a.log)
	if err != nil {
		return steps.WithHint(err, "the network section of the boot medium (interface, addressing) and the cable/link")
	}
	var addrs []string
	for _, p := range res.Addresses {
		addrs = append(addrs, p.String())
	}
	extra := ""
	if res.Mode == netup.ModeDHCP {
		extra = fmt.Sprintf(", lease from %s", res.DHCPServer)
	}
	a.Printf("  %s %s: %s%s", res.Interface, res.Mode, strings.Join(addrs, " "), extra)
	return nil
}

// stepFabrics connects the configured NVMe over Fabrics targets; a fabric
// without an NQN is asked (discovery) for its subsystems, and each is
// connected.
func (a *Agent) stepFabrics(ctx context.Context) error {
	if len(a.doc.Fabrics) == 0 {
		return steps.Skip("no NVMe over Fabrics targets configured")
	}
	h := &nvmeof.Host{Logger: a.log}
	var targets []nvmeof.Target
	for i, f := range a.doc.Fabrics {
		t := nvmeof.Target{Transport: f.Transport, Address: f.Address, Port: f.Port, NQN: f.NQN, HostNQN: f.HostNQN}
		if f.NQN != "" {
			targets = append(targets, t)
			continue
		}
		d := t
		d.NQN = nvmeof.DiscoveryNQN
		entries, err := h.Discover(ctx, d)
		if err != nil {
			return steps.WithHint(fmt.Errorf("fabrics[%d]: discovery at %s:%d: %w", i, f.Address, f.Port, err),
				"the NVMe/TCP target is reachable from the management network")
		}
		for _, e := range entries {
			if !e.IsNVMSubsystem() {
				continue
			}
			et, err := e.Target(t)
			if err != nil {
				return fmt.Errorf("fabrics[%d]: discovery entry %s: %w", i, e.SubNQN, err)
			}
			targets = append(targets, et)
		}
	}
	var (
		mu   sync.Mutex
		errs []error
		devs int
		wg   sync.WaitGroup
		sem  = make(chan struct{}, maxParallelConnects)
	)
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := h.Connect(ctx, t)
			if err == nil {
				var ns []string
				ns, err = h.WaitNamespaces(ctx, c, 1)
				mu.Lock()
				devs += len(ns)
				mu.Unlock()
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("connect %s: %w", t, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return steps.WithHint(errors.Join(errs...), "the NVMe/TCP targets and the fabrics section of the boot medium")
	}
	a.Printf("  %d subsystem(s) connected, %d namespace(s)", len(targets), devs)
	return nil
}
