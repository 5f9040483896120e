package nvmetcp

import (
	"errors"
	"fmt"
)

// worker runs one command at a time for its queue. Its index is the TTAG
// of the R2T transfers it solicits, and it owns a data buffer of at most
// MaxTransfer bytes, which bounds the memory a queue uses.
type worker struct {
	q   *queue
	idx uint16
	buf []byte
}

// errConnClosed reports that the connection went away mid-command.
var errConnClosed = errors.New("connection closed")

// buffer returns a scratch buffer of n bytes (n <= MaxTransfer).
func (w *worker) buffer(n int) []byte {
	if cap(w.buf) < n {
		w.buf = make([]byte, n)
	}
	return w.buf[:n]
}

// exec is what a handler sees of a command being executed.
type exec struct {
	w *worker
	r *request
	c *command
	// closeAfter ends the connection once the response is sent (Disconnect).
	closeAfter bool
	// parked means the command stays outstanding with no response yet (AER).
	parked bool
}

// hostData returns the n bytes of data the host sends with the command,
// from the capsule or, for a transport SGL, solicited with R2Ts.
func (e *exec) hostData(n int) ([]byte, uint16) {
	c := e.c
	if n == 0 {
		return nil, scSuccess
	}
	if uint32(n) > c.sglLen() {
		return nil, scSGLInvalidData | dnr
	}
	switch c.sglType() {
	case sglDataOffset:
		off := c.sglAddr()
		if off > uint64(len(e.r.inCapsule)) || uint64(len(e.r.inCapsule))-off < uint64(n) {
			return nil, scSGLInvalidOffset | dnr
		}
		return e.r.inCapsule[off : off+uint64(n)], scSuccess
	case sglTransportA:
		if len(e.r.inCapsule) > 0 {
			return nil, scSGLInvalidType | dnr
		}
		if n > e.w.q.t.opts.MaxTransfer {
			return nil, scInvalidField | dnr
		}
		buf := e.w.buffer(n)
		if err := e.solicit(buf); err != nil {
			if errors.Is(err, errDataDigest) {
				return nil, scTransientTransErr
			}
			return nil, scDataXferError
		}
		return buf, scSuccess
	}
	return nil, scSGLInvalidType | dnr
}

// solicit fills buf from the host with one R2T at a time, each at most
// MaxH2CData bytes.
func (e *exec) solicit(buf []byte) error {
	q := e.w.q
	x := &xfer{cid: e.c.cid(), buf: buf}
	digestErr := false
	for off := 0; off < len(buf); {
		l := min(len(buf)-off, q.t.opts.MaxH2CData)
		x.next, x.end = uint32(off), uint32(off+l)
		x.done = make(chan struct{})
		q.mu.Lock()
		q.xfers[e.w.idx] = x
		q.mu.Unlock()
		if err := q.sendR2T(x.cid, e.w.idx, uint32(off), uint32(l)); err != nil {
			return fmt.Errorf("send R2T: %w", err)
		}
		select {
		case <-x.done:
		case <-q.ctx.Done():
			q.mu.Lock()
			q.xfers[e.w.idx] = nil
			q.mu.Unlock()
			// The reader may still be filling buf: never reuse it.
			e.w.buf = nil
			return errConnClosed
		}
		digestErr = digestErr || x.digestErr
		off += l
	}
	if digestErr {
		return errDataDigest
	}
	return nil
}

// run executes one command and sends its data and response.
func (w *worker) run(r *request) {
	q := w.q
	e := &exec{w: w, r: r, c: &r.cmd}
	var cpl completion
	var out []byte
	if r.digestErr {
		cpl = completion{status: scTransientTransErr}
	} else {
		cpl, out = q.dispatch(e)
	}
	if q.ctx.Err() != nil || e.parked {
		return
	}
	if len(out) > 0 && cpl.status&0x7FF == scSuccess {
		c := &r.cmd
		if c.sglType() != sglTransportA {
			cpl = fail(scSGLInvalidType)
		} else {
			if uint32(len(out)) > c.sglLen() {
				out = out[:c.sglLen()]
			}
			if err := q.sendData(c.cid(), out); err != nil {
				return
			}
		}
	}
	q.complete(r.cmd.cid(), cpl, e.closeAfter)
}

// dispatch routes a command by queue type and opcode.
func (q *queue) dispatch(e *exec) (completion, []byte) {
	c := e.c
	if c.flags()&0xC0 != 0x40 && c.opcode() != opFabrics {
		// NVMe/TCP commands must describe data with SGLs (PSDT 01b).
		if c.dataDirection() != 0 {
			return fail(scInvalidField), nil
		}
	}
	if c.opcode() == opFabrics {
		return q.fabrics(e)
	}
	q.mu.Lock()
	ctrl, qid, connected := q.ctrl, q.qid, q.connected
	q.mu.Unlock()
	if !connected || ctrl == nil {
		return fail(scCmdSeqError), nil
	}
	if !ctrl.ready() {
		return fail(scCmdSeqError), nil
	}
	if qid == 0 {
		return ctrl.adminCmd(e)
	}
	return ctrl.io(e)
}
