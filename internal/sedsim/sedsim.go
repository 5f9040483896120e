// Package sedsim serves persistent software self-encrypting drives
// (opalsim) over NVMe/TCP (nvmetcp), with a loopback-only control
// interface to list them, read their labels and power-cycle them. The
// sedsim program is a thin command line around it; Go tests start the same
// drives in-process with Start.
package sedsim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/sedboot/sedboot/internal/nvmetcp"
	"github.com/sedboot/sedboot/internal/opalsim"
)

// Defaults for Options fields left zero.
const (
	DefaultListen    = "127.0.0.1:4420"
	DefaultNQNPrefix = "nqn.2026-11.io.sedboot:sim:"
	DefaultBlockSize = 512
	// ControlSocketName is the control socket's file name in the state directory.
	ControlSocketName = "control.sock"
	// MaxDrives bounds how many drives one simulator serves.
	MaxDrives = 64
)

// Options configures a simulator.
type Options struct {
	// Drives is how many drives to serve (1 to MaxDrives).
	Drives int
	// Size is each new drive's capacity in bytes (a multiple of BlockSize).
	// Drives that already exist in StateDir keep their size; Size must then
	// match it or be 0.
	Size int64
	// BlockSize is the logical block size of new drives (default 512).
	BlockSize int
	// StateDir holds drive-0 ... drive-(N-1) and the control socket.
	StateDir string
	// Listen is the NVMe/TCP listen address (default 127.0.0.1:4420; port
	// 0 picks a free one).
	Listen string
	// AllowRemote permits a Listen address outside the loopback network.
	AllowRemote bool
	// NQNPrefix is prepended to each drive's serial to form its NQN.
	NQNPrefix string
	// SerialPrefix, when set, gives new drives the serials
	// <prefix>0001, <prefix>0002, ... instead of random ones (tests and
	// demos that name drives).
	SerialPrefix string
	// NoControl skips the control socket (in-process users need none).
	NoControl bool
	// Target tunes the NVMe/TCP target.
	Target nvmetcp.Options
	// Logger receives logs (default: discard).
	Logger *slog.Logger
}

// Sim is a running simulator.
type Sim struct {
	opts   Options
	log    *slog.Logger
	target *nvmetcp.Target
	ln     net.Listener
	drives []*opalsim.Drive
	nqns   []string
	ctl    *http.Server
	ctlLn  net.Listener
	cancel context.CancelFunc
	served chan error
	lock   *os.File // flock on StateDir/lock

	closeOnce sync.Once
	closeErr  error
}

// CheckListen returns an error unless addr is a host:port on the loopback
// network (or allowRemote is set).
func CheckListen(addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if port == "" {
		return fmt.Errorf("listen address %q has no port", addr)
	}
	if allowRemote {
		return nil
	}
	ip := net.ParseIP(host)
	if host == "localhost" {
		return fmt.Errorf("listen address %q: give a literal loopback address such as 127.0.0.1", addr)
	}
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q is not a loopback address; software SEDs hold test data with test keys, pass --allow-remote to serve them beyond this machine", addr)
	}
	return nil
}

func (o *Options) normalize() error {
	if o.Drives < 1 || o.Drives > MaxDrives {
		return fmt.Errorf("sedsim: %d drives: want 1 to %d", o.Drives, MaxDrives)
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.Size < 0 || (o.Size > 0 && o.Size%int64(o.BlockSize) != 0) {
		return fmt.Errorf("sedsim: drive size %d is not a positive multiple of the block size %d", o.Size, o.BlockSize)
	}
	if o.StateDir == "" {
		return errors.New("sedsim: no state directory given")
	}
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if err := CheckListen(o.Listen, o.AllowRemote); err != nil {
		return fmt.Errorf("sedsim: %w", err)
	}
	if o.NQNPrefix == "" {
		o.NQNPrefix = DefaultNQNPrefix
	}
	if len(o.SerialPrefix) > 16 || strings.Trim(o.SerialPrefix, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		return fmt.Errorf("sedsim: serial prefix %q: want at most 16 letters, digits, '-' or '_'", o.SerialPrefix)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// driveDir is where drive k persists.
func driveDir(stateDir string, k int) string {
	return filepath.Join(stateDir, fmt.Sprintf("drive-%d", k))
}

// newSerial returns a fresh serial: unique across state directories, so
// drives of two simulators never collide in one host.
func newSerial(k int) (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return fmt.Sprintf("SIM%s%03d", strings.ToUpper(hex.EncodeToString(b[:])), k), nil
}

// openOrCreate opens drive k from the state directory or creates it.
func openOrCreate(o *Options, k int) (*opalsim.Drive, error) {
	dir := driveDir(o.StateDir, k)
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err == nil {
		d, err := opalsim.Open(dir)
		if err != nil {
			return nil, err
		}
		if have := int64(d.NumBlocks()) * int64(d.BlockSize()); o.Size != 0 && have != o.Size {
			d.Close()
			return nil, fmt.Errorf("drive %d in %s has %d bytes but %d were asked for: give its size or a new state directory", k, dir, have, o.Size)
		}
		return d, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("drive %d: %w", k, err)
	}
	if o.Size == 0 {
		return nil, fmt.Errorf("drive %d does not exist in %s yet: give a size to create it", k, o.StateDir)
	}
	serial := fmt.Sprintf("%s%04d", o.SerialPrefix, k+1)
	if o.SerialPrefix == "" {
		var err error
		if serial, err = newSerial(k); err != nil {
			return nil, err
		}
	}
	return opalsim.Create(dir, opalsim.Config{
		Serial:    serial,
		Model:     "sedboot opalsim software SED",
		Firmware:  "SIM1",
		BlockSize: o.BlockSize,
		Blocks:    uint64(o.Size / int64(o.BlockSize)),
	})
}

// Start opens (or creates) the drives in opts.StateDir and serves them
// over NVMe/TCP until ctx ends or Close is called.
func Start(ctx context.Context, opts Options) (*Sim, error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("sedsim: state directory: %w", err)
	}
	s := &Sim{opts: opts, log: opts.Logger}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	// One simulator per state directory: an exclusive lock held while serving.
	lock, err := os.OpenFile(filepath.Join(opts.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sedsim: state directory lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("sedsim: state directory %s is in use by another sedsim: %w", opts.StateDir, err)
	}
	s.lock = lock
	for k := range opts.Drives {
		d, err := openOrCreate(&opts, k)
		if err != nil {
			return nil, fmt.Errorf("sedsim: %w", err)
		}
		s.drives = append(s.drives, d)
		s.nqns = append(s.nqns, opts.NQNPrefix+d.Identity().Serial)
	}
	tg, err := nvmetcp.NewTarget(opts.Logger, opts.Target)
	if err != nil {
		return nil, fmt.Errorf("sedsim: %w", err)
	}
	s.target = tg
	for k, d := range s.drives {
		if err := tg.AddSubsystem(s.nqns[k], d); err != nil {
			return nil, fmt.Errorf("sedsim: drive %d: %w", k, err)
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("sedsim: listen: %w", err)
	}
	s.ln = ln
	if !opts.NoControl {
		if err := s.startControl(); err != nil {
			return nil, err
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.served = make(chan error, 1)
	go func() { s.served <- tg.Serve(sctx, ln) }()
	ok = true
	s.log.Info("sedsim: serving", "drives", len(s.drives), "addr", ln.Addr().String(), "state", opts.StateDir)
	return s, nil
}

// Addr is the NVMe/TCP address the drives are served on.
func (s *Sim) Addr() net.Addr { return s.ln.Addr() }

// Len is the number of drives.
func (s *Sim) Len() int { return len(s.drives) }

// Drive returns drive k, or nil when there is no such drive.
func (s *Sim) Drive(k int) *opalsim.Drive {
	if k < 0 || k >= len(s.drives) {
		return nil
	}
	return s.drives[k]
}

// NQN returns the subsystem NQN of drive k ("" when there is no such drive).
func (s *Sim) NQN(k int) string {
	if k < 0 || k >= len(s.nqns) {
		return ""
	}
	return s.nqns[k]
}

// Target is the NVMe/TCP target serving the drives.
func (s *Sim) Target() *nvmetcp.Target { return s.target }

// PowerCycle ends drive k's NVMe/TCP associations and power-cycles it:
// its sessions drop and ranges with LockOnReset lock.
func (s *Sim) PowerCycle(ctx context.Context, k int) error {
	d := s.Drive(k)
	if d == nil {
		return fmt.Errorf("sedsim: power cycle: no drive %d (have 0 to %d)", k, len(s.drives)-1)
	}
	if err := s.target.PowerCycle(ctx, s.nqns[k], d.PowerCycle); err != nil {
		return fmt.Errorf("sedsim: drive %d: %w", k, err)
	}
	s.log.Info("sedsim: drive power-cycled", "drive", k, "nqn", s.nqns[k])
	return nil
}

// PowerCycleAll power-cycles every drive, one after another.
func (s *Sim) PowerCycleAll(ctx context.Context) error {
	var errs []error
	for k := range s.drives {
		errs = append(errs, s.PowerCycle(ctx, k))
	}
	return errors.Join(errs...)
}

// RangeInfo is one locking range in a listing.
type RangeInfo struct {
	Index            int    `json:"index"`
	Start            uint64 `json:"start"`
	Length           uint64 `json:"length"`
	ReadLockEnabled  bool   `json:"read_lock_enabled"`
	WriteLockEnabled bool   `json:"write_lock_enabled"`
	ReadLocked       bool   `json:"read_locked"`
	WriteLocked      bool   `json:"write_locked"`
	LockOnReset      bool   `json:"lock_on_reset"`
}

// DriveInfo describes one drive for listings.
type DriveInfo struct {
	Index          int    `json:"index"`
	Serial         string `json:"serial"`
	NQN            string `json:"nqn"`
	Bytes          uint64 `json:"bytes"`
	BlockSize      int    `json:"block_size"`
	LockingSP      string `json:"locking_sp"`
	LockingEnabled bool   `json:"locking_enabled"`
	// Locked lists the ranges locked for reading or writing right now.
	Locked []int `json:"locked_ranges"`
	// MSIDIsSID is "yes" while the SID credential is still the factory
	// MSID, "no" once owned, "unknown" when the drive cannot tell.
	MSIDIsSID    string      `json:"msid_is_sid"`
	Associations int         `json:"associations"`
	Ranges       []RangeInfo `json:"ranges"`
}

// sidIsMSIDReporter is implemented by drives that can say whether SID's
// credential is still MSID without an authentication attempt.
type sidIsMSIDReporter interface{ SIDIsMSID() bool }

// List describes every drive.
func (s *Sim) List() []DriveInfo {
	out := make([]DriveInfo, 0, len(s.drives))
	for k, d := range s.drives {
		st := d.Status()
		info := DriveInfo{
			Index: k, Serial: d.Identity().Serial, NQN: s.nqns[k],
			Bytes: d.NumBlocks() * uint64(d.BlockSize()), BlockSize: d.BlockSize(),
			LockingSP: st.LockingSP.String(), LockingEnabled: st.LockingEnabled,
			MSIDIsSID: "unknown", Associations: s.target.Associations(s.nqns[k]), Locked: []int{},
		}
		if r, ok := any(d).(sidIsMSIDReporter); ok {
			info.MSIDIsSID = map[bool]string{true: "yes", false: "no"}[r.SIDIsMSID()]
		}
		for _, r := range st.Ranges {
			info.Ranges = append(info.Ranges, RangeInfo(r))
			if (r.ReadLockEnabled && r.ReadLocked) || (r.WriteLockEnabled && r.WriteLocked) {
				info.Locked = append(info.Locked, r.Index)
			}
		}
		out = append(out, info)
	}
	return out
}

// Close stops serving, flushes and closes every drive and removes the
// control socket. It is safe to call more than once.
func (s *Sim) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.ctl != nil {
			errs = append(errs, s.ctl.Close())
			_ = os.Remove(filepath.Join(s.opts.StateDir, ControlSocketName))
		}
		if s.cancel != nil {
			s.cancel()
		}
		if s.target != nil {
			errs = append(errs, s.target.Close())
		} else if s.ln != nil {
			s.ln.Close()
		}
		if s.served != nil {
			errs = append(errs, <-s.served)
		}
		for k, d := range s.drives {
			if err := d.Flush(); err != nil {
				errs = append(errs, fmt.Errorf("sedsim: flush drive %d: %w", k, err))
			}
			if err := d.Close(); err != nil {
				errs = append(errs, fmt.Errorf("sedsim: close drive %d: %w", k, err))
			}
		}
		if s.lock != nil {
			s.lock.Close() // releases the flock
		}
		s.closeErr = errors.Join(errs...)
		s.log.Info("sedsim: stopped")
	})
	return s.closeErr
}
