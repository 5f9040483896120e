package nvmetcp

import (
	"bytes"
	"encoding/binary"
	"time"
)

// Connect command and data layout (NVMe over Fabrics, "Connect Command").
const (
	connectDataLen   = 1024
	cdHostID         = 0
	cdCntlID         = 16
	cdSubNQN         = 256
	cdHostNQN        = 512
	ccRecFmt         = 40
	ccQID            = 42
	ccSQSize         = 44
	ccKATO           = 48
	dynamicCntlID    = 0xFFFF
	iattrConnectData = 1 << 16
)

// cString returns the NUL-terminated string in b.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// invalidParam is a Connect Invalid Parameters completion naming the offset
// of the bad field in the command (data false) or the connect data (data true).
func invalidParam(off uint32, data bool) completion {
	cpl := fail(scConnectInvalid)
	cpl.result = uint64(off)
	if data {
		cpl.result |= iattrConnectData
	}
	return cpl
}

func (q *queue) fabrics(e *exec) (completion, []byte) {
	c := e.c
	switch c.fctype() {
	case fcConnect:
		return q.connect(e), nil
	case fcPropertyGet, fcPropertySet:
		q.mu.Lock()
		ctrl, qid := q.ctrl, q.qid
		q.mu.Unlock()
		if ctrl == nil {
			return fail(scCmdSeqError), nil
		}
		if qid != 0 {
			return fail(scInvalidOpcode), nil
		}
		size8 := c[40]&7 == 1
		if c[40]&7 > 1 {
			return fail(scInvalidField), nil
		}
		off := binary.LittleEndian.Uint32(c[44:])
		if c.fctype() == fcPropertyGet {
			v, st := ctrl.propertyGet(off, size8)
			if st != scSuccess {
				return fail(st), nil
			}
			return ok(v), nil
		}
		if st := ctrl.propertySet(off, size8, binary.LittleEndian.Uint64(c[48:])); st != scSuccess {
			return fail(st), nil
		}
		return ok(0), nil
	case fcDisconnect:
		q.mu.Lock()
		connected := q.connected
		q.mu.Unlock()
		if !connected {
			return fail(scCmdSeqError), nil
		}
		e.closeAfter = true
		return ok(0), nil
	}
	return fail(scInvalidOpcode), nil
}

func (q *queue) connect(e *exec) completion {
	c := e.c
	q.mu.Lock()
	already := q.connected
	q.mu.Unlock()
	if already {
		return fail(scCmdSeqError)
	}
	data, st := e.hostData(connectDataLen)
	if st != scSuccess {
		return completion{status: st}
	}
	if len(data) < connectDataLen {
		return fail(scSGLInvalidData)
	}
	recfmt := binary.LittleEndian.Uint16(c[ccRecFmt:])
	qid := binary.LittleEndian.Uint16(c[ccQID:])
	sqsize := binary.LittleEndian.Uint16(c[ccSQSize:])
	kato := binary.LittleEndian.Uint32(c[ccKATO:])
	var hostID [16]byte
	copy(hostID[:], data[cdHostID:cdHostID+16])
	cntlid := binary.LittleEndian.Uint16(data[cdCntlID:])
	subNQN := cString(data[cdSubNQN : cdSubNQN+256])
	hostNQN := cString(data[cdHostNQN : cdHostNQN+256])
	log := q.log.With("subnqn", subNQN, "hostnqn", hostNQN, "qid", qid)

	if recfmt != 0 {
		log.Warn("nvmetcp: connect refused: record format", "recfmt", recfmt)
		return fail(scConnectFormat)
	}
	sub, err := q.t.subsystem(subNQN)
	if err != nil {
		log.Warn("nvmetcp: connect refused: unknown subsystem")
		return invalidParam(cdSubNQN, true)
	}
	if ValidNQN(hostNQN) != nil {
		log.Warn("nvmetcp: connect refused: bad host NQN")
		return invalidParam(cdHostNQN, true)
	}
	if sqsize == 0 || int(sqsize)+1 > q.t.opts.QueueDepth {
		log.Warn("nvmetcp: connect refused: queue size", "sqsize", sqsize)
		return invalidParam(ccSQSize, false)
	}
	var ctrl *controller
	if qid == 0 {
		if cntlid != dynamicCntlID {
			log.Warn("nvmetcp: connect refused: static controller ID requested", "cntlid", cntlid)
			return invalidParam(cdCntlID, true)
		}
		var st uint16
		ctrl, st = sub.newController(q.t, hostNQN, hostID)
		if ctrl == nil {
			log.Warn("nvmetcp: connect refused: subsystem busy")
			return completion{status: st}
		}
		ctrl.mu.Lock()
		ctrl.admin = q
		ctrl.mu.Unlock()
		q.mu.Lock()
		q.connected, q.qid, q.entries, q.ctrl = true, 0, int(sqsize)+1, ctrl
		q.mu.Unlock()
		ctrl.setKATO(time.Duration(kato) * time.Millisecond)
		log.Info("nvmetcp: admin queue connected", "cntlid", ctrl.id, "kato_ms", kato, "sqsize", sqsize)
		return ok(uint64(ctrl.id))
	}
	if sub.discovery {
		return invalidParam(ccQID, false)
	}
	ctrl = sub.controller(cntlid)
	if ctrl == nil || ctrl.hostNQN != hostNQN || ctrl.hostID != hostID {
		log.Warn("nvmetcp: connect refused: no such controller for this host", "cntlid", cntlid)
		return invalidParam(cdCntlID, true)
	}
	q.mu.Lock()
	q.connected, q.qid, q.entries, q.ctrl = true, qid, int(sqsize)+1, ctrl
	q.mu.Unlock()
	if st := ctrl.attachIO(qid, q); st != scSuccess {
		q.mu.Lock()
		q.connected, q.ctrl = false, nil
		q.mu.Unlock()
		log.Warn("nvmetcp: connect refused: I/O queue", "cntlid", cntlid, "status", st)
		if st == scConnectInvalid {
			return invalidParam(ccQID, false)
		}
		return fail(st)
	}
	log.Debug("nvmetcp: I/O queue connected", "cntlid", cntlid, "sqsize", sqsize)
	return ok(uint64(ctrl.id))
}
