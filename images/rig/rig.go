// Package rig sets up everything a sedboot controller boots against, on
// this host and on 127.0.0.1 only: software SEDs (opalsim) served over
// NVMe/TCP (nvmetcp), a kmsd KMIP key server with a development PKI, the
// real OS's root file system written onto one SED, provisioning of the
// SEDs and key server, the boot medium, and the QEMU configuration that
// reaches all of it through user-network forwards. The boot tests
// (agent/boottest, internal/lifecycle/qemutest) and the demo
// (images/cmd/demo) use it.
//
// Provisioning goes through the product's enable path (lifecycle.Enable,
// as `sedctl enable` runs it), so the boot tests and the demo boot arrays
// enabled exactly as a controller's are.
package rig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/sedboot/sedboot/internal/nvmetcp"
	"github.com/sedboot/sedboot/internal/opalsim"
	"github.com/sedboot/sedboot/internal/sed"
	"github.com/sedboot/sedboot/internal/sedsim"
)

// Guest-side addresses of the forwards (QEMU user network).
const (
	// GuestHost is where the host's services appear in the guest.
	GuestHost = "10.0.2.100"
	// GuestHost2 is a second address, for a second key server.
	GuestHost2 = "10.0.2.101"
	// NVMePort is the NVMe/TCP port in the guest (discovery and I/O).
	NVMePort = 4420
	// KMIPPort is the KMIP port in the guest.
	KMIPPort = 5696
	// NQNPrefix starts the simulated SEDs' subsystem NQNs.
	NQNPrefix = "nqn.2026-11.io.sedboot:sim:"
	// DefaultBlocks is the size of a drive without the root file system
	// (512-byte blocks: 4 MiB).
	DefaultBlocks = 8192
)

// SimDrive is one simulated SED.
type SimDrive struct {
	Serial string
	NQN    string
	Sim    *opalsim.Drive
}

// Options configure New.
type Options struct {
	// Drives is the number of SEDs (at least 1).
	Drives int
	// SerialPrefix starts the drive serials (default "SIM"): SIM0001...
	SerialPrefix string
	// RootImage, when set, is a file system image written at block 0 of
	// drive 0 before provisioning: the real OS.
	RootImage string
	// Log receives the target's messages (nil: none).
	Log *slog.Logger
}

// Rig is the running NVMe/TCP target with its drives: a sedsim
// simulator whose drives have known serials, drive 0 carrying the real OS.
type Rig struct {
	Drives []*SimDrive
	Target *nvmetcp.Target
	// Addr is the target's 127.0.0.1:port.
	Addr string

	sim     *sedsim.Sim
	tempDir string
	once    sync.Once
}

// New creates the drives, writes the root image and serves them.
func New(opts Options) (*Rig, error) {
	if opts.Drives < 1 {
		return nil, errors.New("rig: at least one drive")
	}
	prefix := opts.SerialPrefix
	if prefix == "" {
		prefix = "SIM"
	}
	var root []byte
	if opts.RootImage != "" {
		var err error
		if root, err = os.ReadFile(opts.RootImage); err != nil {
			return nil, fmt.Errorf("rig: root image: %w", err)
		}
	}
	// Every drive gets drive 0's size (media files are sparse).
	blocks := uint64(DefaultBlocks)
	if len(root) > 0 {
		blocks = max(blocks, uint64(len(root)+511)/512+2048)
	}
	dir, err := os.MkdirTemp("", "sedboot-rig-")
	if err != nil {
		return nil, fmt.Errorf("rig: %w", err)
	}
	r := &Rig{tempDir: dir}
	fail := func(err error) (*Rig, error) {
		r.Close()
		return nil, err
	}
	r.sim, err = sedsim.Start(context.Background(), sedsim.Options{
		Drives: opts.Drives, Size: int64(blocks) * 512, StateDir: dir, Listen: "127.0.0.1:0",
		NQNPrefix: NQNPrefix, SerialPrefix: prefix, NoControl: true, Logger: opts.Log,
		Target: nvmetcp.Options{AdvertiseAddr: fmt.Sprintf("%s:%d", GuestHost, NVMePort)},
	})
	if err != nil {
		return fail(fmt.Errorf("rig: %w", err))
	}
	r.Target, r.Addr = r.sim.Target(), r.sim.Addr().String()
	for i := range opts.Drives {
		d := r.sim.Drive(i)
		r.Drives = append(r.Drives, &SimDrive{Serial: d.Identity().Serial, NQN: r.sim.NQN(i), Sim: d})
	}
	if len(root) > 0 {
		buf := make([]byte, (len(root)+511)/512*512)
		copy(buf, root)
		d := r.Drives[0].Sim
		if err := d.WriteBlocks(0, buf); err != nil {
			return fail(fmt.Errorf("rig: write root image to %s: %w", r.Drives[0].Serial, err))
		}
		if err := d.Flush(); err != nil {
			return fail(err)
		}
	}
	return r, nil
}

// Close stops the target and releases the drives and their state.
func (r *Rig) Close() {
	r.once.Do(func() {
		if r.sim != nil {
			r.sim.Close()
		}
		os.RemoveAll(r.tempDir)
	})
}

// PowerCycle power cycles every drive (as a controller power-off does):
// hosts are disconnected, and ranges set to lock on power cycle lock.
func (r *Rig) PowerCycle(ctx context.Context) error {
	return r.sim.PowerCycleAll(ctx)
}

// HostDrive returns drive i as the host's sed layer sees it (through the
// simulator's own interface, not the network).
func (r *Rig) HostDrive(i int) *sed.Drive {
	return sed.New(r.Drives[i].Sim, r.Drives[i].Serial)
}

// Locked reports how many drives have a locked global range now.
func (r *Rig) Locked() int {
	n := 0
	for _, d := range r.Drives {
		st := d.Sim.Status()
		if len(st.Ranges) > 0 && (st.Ranges[0].ReadLocked || st.Ranges[0].WriteLocked) {
			n++
		}
	}
	return n
}
