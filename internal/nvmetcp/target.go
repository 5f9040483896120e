// Package nvmetcp is an NVMe over TCP target (controller side). It exports
// block devices, typically simulated self-encrypting drives, as NVMe
// subsystems that a host such as the Linux kernel's nvme-tcp driver
// connects to.
//
// It implements the NVMe/TCP transport (ICReq/ICResp, command and response
// capsules with in-capsule data, R2T/H2CData and C2HData data transfer,
// TermReq, CRC32C header and data digests), the fabrics commands (Connect,
// Property Get/Set, Disconnect) under the dynamic controller model, a
// discovery controller, the admin commands a Linux host needs (Identify,
// Get Log Page, Set/Get Features, Keep Alive, Async Event Request, Abort,
// Security Send/Receive) and the NVM I/O commands Read, Write, Flush and
// Write Zeroes.
//
// Each subsystem has one namespace (NSID 1) backed by a blockdev.Device.
// When the device also implements blockdev.SecurityDevice, Security
// Send/Receive reach it and the controller reports the OACS security bit,
// so hosts run TCG Opal over the wire. Block errors map to NVMe statuses:
// blockdev.ErrLocked to Access Denied (SCT 2h, SC 86h), blockdev.ErrOutOfRange
// to LBA Out of Range.
package nvmetcp

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// DiscoveryNQN is the well-known NQN of the discovery subsystem.
const DiscoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"

// Options tunes a Target. The zero value gives sensible defaults.
type Options struct {
	// MaxTransfer is the largest data transfer of one command in bytes
	// (reported as MDTS). A power of two from 4 KiB to 8 MiB; default 1 MiB,
	// which go-tcg-storage needs: it receives into 1 MiB ComPacket buffers.
	MaxTransfer int
	// MaxH2CData is the largest H2CData PDU the host may send and the
	// largest R2T (and C2HData PDU) the target uses. At least 4 KiB;
	// default MaxTransfer, so a write takes one R2T: each R2T costs a round
	// trip, and over QEMU's user networking each H2CData burst also waits
	// about 40 ms for ACKs (writes of 1 MiB: 2.8 MB/s with 128 KiB, 8 MB/s
	// with 1 MiB).
	MaxH2CData int
	// InCapsuleData is the in-capsule data size of I/O queues (IOCCSZ); the
	// admin queue always accepts at least 8 KiB. Default 8 KiB, at most 64 KiB.
	InCapsuleData int
	// QueueDepth is the most entries a queue may have (CAP.MQES + 1). Default 128.
	QueueDepth int
	// MaxIOQueues is the most I/O queues per controller. Default 8.
	MaxIOQueues int
	// WorkersPerQueue is how many commands of one queue run at once. Default 4.
	WorkersPerQueue int
	// MaxConnections bounds the connections (queues) served at once.
	// Default 128. A connection holds at most QueueDepth in-capsule buffers
	// (max(8 KiB, InCapsuleData) each) and WorkersPerQueue data buffers
	// (MaxTransfer each): about 5 MiB with the defaults.
	MaxConnections int
	// AdvertiseAddr is the host:port written into discovery log entries.
	// Default: the local address of the connection asking.
	AdvertiseAddr string
	// HandshakeTimeout bounds the wait for a new connection's ICReq. Default 10s.
	HandshakeTimeout time.Duration
}

func (o *Options) withDefaults() (Options, error) {
	r := *o
	if r.MaxTransfer == 0 {
		r.MaxTransfer = 1 << 20
	}
	if r.MaxTransfer < 4096 || r.MaxTransfer > 8<<20 || r.MaxTransfer&(r.MaxTransfer-1) != 0 {
		return r, fmt.Errorf("nvmetcp options: MaxTransfer %d is not a power of two in [4096, 8 MiB]", r.MaxTransfer)
	}
	if r.MaxH2CData == 0 {
		r.MaxH2CData = r.MaxTransfer
	}
	if r.MaxH2CData < 4096 || r.MaxH2CData > r.MaxTransfer {
		return r, fmt.Errorf("nvmetcp options: MaxH2CData %d outside [4096, MaxTransfer]", r.MaxH2CData)
	}
	if r.InCapsuleData == 0 {
		r.InCapsuleData = 8192
	}
	if r.InCapsuleData < 0 || r.InCapsuleData > 64<<10 || r.InCapsuleData%16 != 0 {
		return r, fmt.Errorf("nvmetcp options: InCapsuleData %d not a multiple of 16 in [0, 64 KiB]", r.InCapsuleData)
	}
	if r.QueueDepth == 0 {
		r.QueueDepth = 128
	}
	if r.QueueDepth < 32 || r.QueueDepth > 1024 {
		return r, fmt.Errorf("nvmetcp options: QueueDepth %d outside [32, 1024]", r.QueueDepth)
	}
	if r.MaxIOQueues == 0 {
		r.MaxIOQueues = 8
	}
	if r.MaxIOQueues < 1 || r.MaxIOQueues > 128 {
		return r, fmt.Errorf("nvmetcp options: MaxIOQueues %d outside [1, 128]", r.MaxIOQueues)
	}
	if r.WorkersPerQueue == 0 {
		r.WorkersPerQueue = 4
	}
	if r.WorkersPerQueue < 1 || r.WorkersPerQueue > 64 {
		return r, fmt.Errorf("nvmetcp options: WorkersPerQueue %d outside [1, 64]", r.WorkersPerQueue)
	}
	if r.MaxConnections == 0 {
		r.MaxConnections = 128
	}
	if r.HandshakeTimeout == 0 {
		r.HandshakeTimeout = 10 * time.Second
	}
	return r, nil
}

// Target is an NVMe/TCP target serving any number of subsystems on any
// number of listeners. It is safe for concurrent use.
type Target struct {
	log  *slog.Logger
	opts Options

	mu         sync.Mutex
	subsystems map[string]*subsystem
	order      []*subsystem // in the order added, for the discovery log
	genctr     uint64       // discovery log generation counter
	listeners  map[net.Listener]struct{}
	queues     map[*queue]struct{}
	disc       *subsystem // the discovery subsystem
	closed     bool
	wg         sync.WaitGroup
}

// NewTarget returns a Target that logs to logger (nil for no logs).
func NewTarget(logger *slog.Logger, opts Options) (*Target, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Target{
		log:        logger,
		opts:       o,
		subsystems: make(map[string]*subsystem),
		listeners:  make(map[net.Listener]struct{}),
		queues:     make(map[*queue]struct{}),
		disc:       &subsystem{nqn: DiscoveryNQN, discovery: true, online: true, ctrls: make(map[uint16]*controller), nextCtrl: 1},
	}, nil
}

// ValidNQN reports why nqn cannot name a subsystem or host, or nil.
func ValidNQN(nqn string) error {
	switch {
	case len(nqn) == 0:
		return errors.New("NQN is empty")
	case len(nqn) > 223:
		return fmt.Errorf("NQN %q is %d bytes, longer than 223", nqn, len(nqn))
	case !strings.HasPrefix(nqn, "nqn."):
		return fmt.Errorf("NQN %q does not start with \"nqn.\"", nqn)
	}
	for i := 0; i < len(nqn); i++ {
		if nqn[i] < 0x21 || nqn[i] > 0x7E {
			return fmt.Errorf("NQN %q has a control, space or non-ASCII byte at %d", nqn, i)
		}
	}
	return nil
}

// AddSubsystem exports dev as an NVMe subsystem named nqn with one
// namespace. Serial numbers and NQNs must be unique within the target.
func (t *Target) AddSubsystem(nqn string, dev blockdev.Device) error {
	if err := ValidNQN(nqn); err != nil {
		return fmt.Errorf("add subsystem: %w", err)
	}
	if nqn == DiscoveryNQN {
		return fmt.Errorf("add subsystem: %s is the discovery subsystem", nqn)
	}
	if dev == nil {
		return fmt.Errorf("add subsystem %s: nil device", nqn)
	}
	bs := dev.BlockSize()
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return fmt.Errorf("add subsystem %s: block size %d is not a power of two in [512, 65536]", nqn, bs)
	}
	if bs > t.opts.MaxTransfer {
		return fmt.Errorf("add subsystem %s: block size %d larger than MaxTransfer %d", nqn, bs, t.opts.MaxTransfer)
	}
	if dev.NumBlocks() == 0 {
		return fmt.Errorf("add subsystem %s: device has no blocks", nqn)
	}
	id := dev.Identity()
	if id.Serial == "" || len(id.Serial) > 20 {
		return fmt.Errorf("add subsystem %s: serial %q must be 1 to 20 ASCII characters", nqn, id.Serial)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("add subsystem %s: target closed", nqn)
	}
	if _, dup := t.subsystems[nqn]; dup {
		return fmt.Errorf("add subsystem %s: NQN already exported", nqn)
	}
	for _, s := range t.order {
		if s.id.Serial == id.Serial {
			return fmt.Errorf("add subsystem %s: serial %q already used by %s", nqn, id.Serial, s.nqn)
		}
	}
	s := newSubsystem(nqn, dev, id)
	t.subsystems[nqn] = s
	t.order = append(t.order, s)
	t.genctr++
	t.log.Info("nvmetcp: subsystem added", "nqn", nqn, "serial", id.Serial, "blocks", dev.NumBlocks(), "block_size", bs)
	return nil
}

// RemoveSubsystem ends the subsystem's associations and stops exporting it.
func (t *Target) RemoveSubsystem(ctx context.Context, nqn string) error {
	t.mu.Lock()
	s, found := t.subsystems[nqn]
	if found {
		delete(t.subsystems, nqn)
		for i, o := range t.order {
			if o == s {
				t.order = append(t.order[:i:i], t.order[i+1:]...)
				break
			}
		}
		t.genctr++
	}
	t.mu.Unlock()
	if !found {
		return fmt.Errorf("remove subsystem %s: not exported", nqn)
	}
	s.setOnline(false)
	return s.dropAll(ctx)
}

// Subsystems returns the NQNs exported, in the order they were added.
func (t *Target) Subsystems() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.order))
	for _, s := range t.order {
		out = append(out, s.nqn)
	}
	return out
}

func (t *Target) subsystem(nqn string) (*subsystem, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if nqn == DiscoveryNQN {
		return t.disc, nil
	}
	s, found := t.subsystems[nqn]
	if !found {
		return nil, fmt.Errorf("subsystem %s not exported", nqn)
	}
	return s, nil
}

// DropAssociations ends every association (controller and its queues) of
// subsystem nqn, closing their connections, and waits until their
// handlers are done, so no command of theirs is still running.
func (t *Target) DropAssociations(ctx context.Context, nqn string) error {
	s, err := t.subsystem(nqn)
	if err != nil {
		return fmt.Errorf("drop associations: %w", err)
	}
	return s.dropAll(ctx)
}

// PowerCycle simulates a power cycle of subsystem nqn: it refuses new
// Connects, ends every association, runs cycle (typically the device's own
// PowerCycle) while no host can reach the device, and takes new Connects
// again.
func (t *Target) PowerCycle(ctx context.Context, nqn string, cycle func() error) error {
	s, err := t.subsystem(nqn)
	if err != nil {
		return fmt.Errorf("power cycle: %w", err)
	}
	s.setOnline(false)
	defer s.setOnline(true)
	if err := s.dropAll(ctx); err != nil {
		return fmt.Errorf("power cycle %s: %w", nqn, err)
	}
	if cycle != nil {
		if err := cycle(); err != nil {
			return fmt.Errorf("power cycle %s: %w", nqn, err)
		}
	}
	t.log.Info("nvmetcp: subsystem power-cycled", "nqn", nqn)
	return nil
}

// Associations returns how many controllers of subsystem nqn are live.
func (t *Target) Associations(nqn string) int {
	s, err := t.subsystem(nqn)
	if err != nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ctrls)
}

// Serve accepts connections on l until ctx is done, l fails or the target
// is closed. It closes l before returning. Serve returns nil when stopped
// by ctx or Close.
func (t *Target) Serve(ctx context.Context, l net.Listener) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		l.Close()
		return errors.New("nvmetcp: serve: target closed")
	}
	t.listeners[l] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	defer t.wg.Done()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer func() {
		t.mu.Lock()
		delete(t.listeners, l)
		t.mu.Unlock()
		l.Close()
	}()
	t.log.Info("nvmetcp: serving", "addr", l.Addr().String())
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			t.mu.Lock()
			closed := t.closed
			t.mu.Unlock()
			if closed || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nvmetcp: accept on %s: %w", l.Addr(), err)
		}
		backoff = 0
		t.mu.Lock()
		if t.closed || len(t.queues) >= t.opts.MaxConnections {
			full := !t.closed
			t.mu.Unlock()
			if full {
				t.log.Warn("nvmetcp: connection refused, too many connections", "remote", nc.RemoteAddr().String(), "max", t.opts.MaxConnections)
			}
			nc.Close()
			continue
		}
		q := newQueue(t, nc)
		t.queues[q] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.wg.Done()
			q.serve()
			t.mu.Lock()
			delete(t.queues, q)
			t.mu.Unlock()
		}()
	}
}

// Close stops every listener and ends every association, then waits for
// all connection handlers to return. Devices are not closed.
func (t *Target) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	for l := range t.listeners {
		l.Close()
	}
	for q := range t.queues {
		q.shutdown()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return nil
}

// subsystem is one exported device with its controllers.
type subsystem struct {
	nqn   string
	dev   blockdev.Device
	sec   blockdev.SecurityDevice // nil when the device has no security protocols
	id    blockdev.Identity
	eui64 [8]byte
	nguid [16]byte
	// discovery marks the discovery subsystem, which has no device.
	discovery bool

	mu       sync.Mutex
	online   bool
	ctrls    map[uint16]*controller
	nextCtrl uint16
	stats    smartStats
}

func newSubsystem(nqn string, dev blockdev.Device, id blockdev.Identity) *subsystem {
	s := &subsystem{nqn: nqn, dev: dev, id: id, online: true, ctrls: make(map[uint16]*controller), nextCtrl: 1}
	if sd, isSec := dev.(blockdev.SecurityDevice); isSec {
		s.sec = sd
	}
	s.eui64, s.nguid = id.EUI64, id.NGUID
	// Hosts refuse namespaces whose identifiers collide across subsystems,
	// so a device without identifiers gets ones derived from its serial and NQN.
	sum := sha256.Sum256([]byte("sedboot nvmetcp namespace\x00" + id.Serial + "\x00" + nqn))
	if s.eui64 == ([8]byte{}) {
		copy(s.eui64[:], sum[:8])
		s.eui64[0] = 0x02 // locally administered
	}
	if s.nguid == ([16]byte{}) {
		copy(s.nguid[:], sum[8:24])
	}
	return s
}

func (s *subsystem) setOnline(v bool) {
	s.mu.Lock()
	s.online = v
	s.mu.Unlock()
}

// dropAll tears down every controller and waits for their queues to stop.
func (s *subsystem) dropAll(ctx context.Context) error {
	s.mu.Lock()
	ctrls := make([]*controller, 0, len(s.ctrls))
	for _, c := range s.ctrls {
		ctrls = append(ctrls, c)
	}
	s.mu.Unlock()
	var qs []*queue
	for _, c := range ctrls {
		qs = append(qs, c.teardown("associations dropped")...)
	}
	for _, q := range qs {
		select {
		case <-q.done:
		case <-ctx.Done():
			return fmt.Errorf("drop associations of %s: %w", s.nqn, ctx.Err())
		}
	}
	return nil
}

// newController allocates a controller ID under the dynamic model.
func (s *subsystem) newController(t *Target, hostNQN string, hostID [16]byte) (*controller, uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.online {
		return nil, scConnectCtrlBusy
	}
	if len(s.ctrls) >= 0xFFEF {
		return nil, scConnectCtrlBusy
	}
	for {
		id := s.nextCtrl
		s.nextCtrl++
		if s.nextCtrl > 0xFFEF {
			s.nextCtrl = 1
		}
		if _, used := s.ctrls[id]; !used {
			c := newController(t, s, id, hostNQN, hostID)
			s.ctrls[id] = c
			return c, scSuccess
		}
	}
}

func (s *subsystem) controller(id uint16) *controller {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ctrls[id]
}

func (s *subsystem) removeController(c *controller) {
	s.mu.Lock()
	if s.ctrls[c.id] == c {
		delete(s.ctrls, c.id)
	}
	s.mu.Unlock()
}
