package nvmetcp

import (
	"sync"
	"sync/atomic"
	"time"
)

// Controller property offsets (NVMe over Fabrics, "Property Definitions").
const (
	propCAP  = 0x00
	propVS   = 0x08
	propCC   = 0x14
	propCSTS = 0x1C
)

// nvmeVersion is the NVMe version the controllers report (VS and Identify VER): 1.4.
const nvmeVersion = 0x00010400

// CC and CSTS fields.
const (
	ccEN          = 1 << 0
	ccSHNShift    = 14
	cstsRDY       = 1 << 0
	cstsCFS       = 1 << 1
	cstsSHSTShift = 2
	shstComplete  = 2
)

// Feature identifiers.
const (
	featPowerMgmt     = 0x02
	featTempThreshold = 0x04
	featVWC           = 0x06
	featNumQueues     = 0x07
	featAsyncEvent    = 0x0B
	featKeepAlive     = 0x0F
	featHostID        = 0x81
)

// aerLimit is how many Async Event Requests a controller holds (AERL + 1).
const aerLimit = 4

// errLogEntries is the number of Error Information log entries kept (ELPE + 1).
const errLogEntries = 16

// smartStats counts what the SMART / Health log reports, per subsystem.
type smartStats struct {
	unitsRead, unitsWritten atomic.Uint64 // 512-byte units
	readCmds, writeCmds     atomic.Uint64
	mediaErrors             atomic.Uint64
}

// errorEntry is one Error Information log entry.
type errorEntry struct {
	count  uint64
	sqid   uint16
	cid    uint16
	status uint16
	lba    uint64
	nsid   uint32
}

// controller is one association: an admin queue and its I/O queues,
// created by an admin Connect (dynamic controller model).
type controller struct {
	t       *Target
	sub     *subsystem
	id      uint16
	hostNQN string
	hostID  [16]byte
	created time.Time

	mu        sync.Mutex
	cc, csts  uint32
	kato      time.Duration
	kaTimer   *time.Timer
	numIOQ    int // I/O queues granted by Set Features Number of Queues, 0 = not set
	aec       uint32
	vwc       bool
	tempThres uint16
	aers      []aerRequest
	admin     *queue
	ioqs      map[uint16]*queue
	dead      bool
	errCount  uint64
	errLog    []errorEntry // newest last
}

type aerRequest struct {
	q   *queue
	cid uint16
}

func newController(t *Target, s *subsystem, id uint16, hostNQN string, hostID [16]byte) *controller {
	return &controller{
		t: t, sub: s, id: id, hostNQN: hostNQN, hostID: hostID, created: time.Now(),
		vwc: true, tempThres: 343, ioqs: make(map[uint16]*queue),
	}
}

// capValue is the CAP property.
func (c *controller) capValue() uint64 {
	mqes := uint64(c.t.opts.QueueDepth - 1)
	const (
		cqr     = 1 << 16
		timeout = 15 << 24 // CAP.TO: 7.5 s to become ready
		cssNVM  = 1 << 37
	)
	return mqes | cqr | timeout | cssNVM
}

// setKATO arms (or disarms, for 0) the keep-alive timer.
func (c *controller) setKATO(kato time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kato = kato
	if c.kaTimer != nil {
		c.kaTimer.Stop()
		c.kaTimer = nil
	}
	if kato > 0 && !c.dead {
		// The controller may wait longer than KATO; half again as much
		// absorbs scheduling jitter on a loaded test machine.
		c.kaTimer = time.AfterFunc(kato+kato/2, c.keepAliveExpired)
	}
}

// touch restarts the keep-alive timer; every command counts as traffic.
func (c *controller) touch() {
	c.mu.Lock()
	if c.kaTimer != nil {
		c.kaTimer.Reset(c.kato + c.kato/2)
	}
	c.mu.Unlock()
}

func (c *controller) keepAliveExpired() {
	c.t.log.Warn("nvmetcp: keep alive timeout, ending association", "nqn", c.sub.nqn, "cntlid", c.id, "host", c.hostNQN, "kato", c.kato)
	c.teardown("keep alive timeout")
}

// teardown ends the association: it shuts down every queue's connection
// and forgets the controller. It returns the queues so callers can wait.
func (c *controller) teardown(why string) []*queue {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil
	}
	c.dead = true
	if c.kaTimer != nil {
		c.kaTimer.Stop()
		c.kaTimer = nil
	}
	qs := make([]*queue, 0, len(c.ioqs)+1)
	if c.admin != nil {
		qs = append(qs, c.admin)
	}
	for _, q := range c.ioqs {
		qs = append(qs, q)
	}
	c.aers = nil
	c.mu.Unlock()
	c.sub.removeController(c)
	c.t.log.Info("nvmetcp: association ended", "nqn", c.sub.nqn, "cntlid", c.id, "host", c.hostNQN, "reason", why)
	for _, q := range qs {
		q.shutdown()
	}
	return qs
}

// ready reports whether the controller is enabled and ready (CSTS.RDY).
func (c *controller) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.csts&cstsRDY != 0 && !c.dead
}

// attachIO registers I/O queue qid; it fails when qid is taken or out of range.
func (c *controller) attachIO(qid uint16, q *queue) uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return scConnectInvalid
	}
	if c.csts&cstsRDY == 0 {
		return scCmdSeqError
	}
	limit := c.t.opts.MaxIOQueues
	if c.numIOQ > 0 {
		limit = c.numIOQ
	}
	if int(qid) > limit {
		return scConnectInvalid
	}
	if _, taken := c.ioqs[qid]; taken {
		return scConnectInvalid
	}
	c.ioqs[qid] = q
	return scSuccess
}

// detach forgets queue q; losing the admin queue ends the association.
func (c *controller) detach(q *queue) {
	c.mu.Lock()
	isAdmin := c.admin == q
	if !isAdmin && c.ioqs[q.qid] == q {
		delete(c.ioqs, q.qid)
	}
	kept := c.aers[:0]
	for _, a := range c.aers {
		if a.q != q {
			kept = append(kept, a)
		}
	}
	c.aers = kept
	c.mu.Unlock()
	if isAdmin {
		c.teardown("admin queue closed")
	}
}

// propertyGet reads a controller property of 4 or 8 bytes.
func (c *controller) propertyGet(off uint32, size8 bool) (uint64, uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case off == propCAP && size8:
		return c.capValue(), scSuccess
	case off == propVS && !size8:
		return nvmeVersion, scSuccess
	case off == propCC && !size8:
		return uint64(c.cc), scSuccess
	case off == propCSTS && !size8:
		return uint64(c.csts), scSuccess
	}
	return 0, scInvalidField
}

// propertySet writes a controller property; only CC is writable.
func (c *controller) propertySet(off uint32, size8 bool, val uint64) uint16 {
	if off != propCC || size8 {
		return scInvalidField
	}
	newCC := uint32(val)
	c.mu.Lock()
	old := c.cc
	c.cc = newCC
	var resetIO []*queue
	var flush bool
	switch {
	case old&ccEN == 0 && newCC&ccEN != 0:
		if c.validCC(newCC) {
			c.csts = cstsRDY
		} else {
			c.csts = cstsCFS
		}
	case old&ccEN != 0 && newCC&ccEN == 0:
		// Controller reset: I/O queues go away, held AERs are dropped.
		c.csts = 0
		for qid, q := range c.ioqs {
			resetIO = append(resetIO, q)
			delete(c.ioqs, qid)
		}
		c.aers = nil
		c.numIOQ = 0
	}
	if (newCC>>ccSHNShift)&3 != 0 && (old>>ccSHNShift)&3 == 0 {
		flush = true
		c.csts = (c.csts &^ (3 << cstsSHSTShift)) | shstComplete<<cstsSHSTShift
	} else if (newCC>>ccSHNShift)&3 == 0 {
		c.csts &^= 3 << cstsSHSTShift
	}
	c.mu.Unlock()
	for _, q := range resetIO {
		q.shutdown()
	}
	if flush && c.sub.dev != nil {
		if err := c.sub.dev.Flush(); err != nil {
			c.t.log.Error("nvmetcp: flush at shutdown failed", "nqn", c.sub.nqn, "err", err)
		}
		c.t.log.Info("nvmetcp: controller shut down by host", "nqn", c.sub.nqn, "cntlid", c.id)
	}
	return scSuccess
}

// validCC checks the CC fields a host sets when enabling.
func (c *controller) validCC(cc uint32) bool {
	css := (cc >> 4) & 7
	mps := (cc >> 7) & 0xF
	ams := (cc >> 11) & 7
	iosqes := (cc >> 16) & 0xF
	iocqes := (cc >> 20) & 0xF
	if css != 0 || mps != 0 || ams != 0 {
		return false
	}
	if c.sub.discovery {
		return true // the queue entry sizes do not apply without I/O queues
	}
	return iosqes == 6 && iocqes == 4
}

// addAER holds an Async Event Request; it reports false when over the limit.
func (c *controller) addAER(q *queue, cid uint16) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.aers) >= aerLimit {
		return false
	}
	c.aers = append(c.aers, aerRequest{q: q, cid: cid})
	return true
}

// logError records a failed command in the Error Information log.
func (c *controller) logError(sqid, cid, status uint16, nsid uint32, lba uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errCount++
	e := errorEntry{count: c.errCount, sqid: sqid, cid: cid, status: status, nsid: nsid, lba: lba}
	c.errLog = append(c.errLog, e)
	if len(c.errLog) > errLogEntries {
		c.errLog = c.errLog[1:]
	}
}
