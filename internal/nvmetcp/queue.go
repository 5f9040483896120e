package nvmetcp

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// queue is one NVMe/TCP connection: an admin or I/O queue pair.
type queue struct {
	t    *Target
	nc   net.Conn
	log  *slog.Logger
	br   *bufio.Reader
	hbuf [256]byte
	lim  pduLimits
	pw   pduWriter

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when serve returns
	cmds   chan *request

	wmu sync.Mutex
	bw  *bufio.Writer

	mu          sync.Mutex
	connected   bool
	qid         uint16
	entries     int // SQ entries (Connect SQSIZE + 1)
	ctrl        *controller
	sqhd        uint16
	outstanding int
	xfers       []*xfer // R2T transfers in progress, indexed by TTAG (= worker)
}

// xfer is a host-to-controller data transfer solicited by R2T.
type xfer struct {
	cid       uint16
	buf       []byte // the command's whole data buffer
	next      uint32 // next expected DATAO
	end       uint32 // end of the current R2T
	digestErr bool
	done      chan struct{}
}

// request is one command with its in-capsule data.
type request struct {
	cmd       command
	inCapsule []byte
	digestErr bool // the in-capsule data failed its digest
}

func newQueue(t *Target, nc net.Conn) *queue {
	ctx, cancel := context.WithCancel(context.Background())
	q := &queue{
		t: t, nc: nc,
		log:    t.log.With("remote", nc.RemoteAddr().String()),
		br:     bufio.NewReaderSize(nc, 64<<10),
		bw:     bufio.NewWriterSize(nc, 64<<10),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		cmds:   make(chan *request, t.opts.QueueDepth+1),
		xfers:  make([]*xfer, t.opts.WorkersPerQueue),
	}
	q.lim.maxCapsule = max(8192, t.opts.InCapsuleData)
	q.lim.maxH2CData = uint32(t.opts.MaxH2CData)
	return q
}

// shutdown ends the connection; serve notices and cleans up.
func (q *queue) shutdown() {
	q.cancel()
	q.nc.Close()
}

func (q *queue) serve() {
	defer close(q.done)
	defer q.nc.Close()
	defer q.cancel()
	if err := q.handshake(); err != nil {
		q.endWith(err)
		return
	}
	var wg sync.WaitGroup
	for i := range q.t.opts.WorkersPerQueue {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{q: q, idx: uint16(i)}
			for {
				select {
				case r := <-q.cmds:
					if q.ctx.Err() != nil {
						return
					}
					w.run(r)
				case <-q.ctx.Done():
					return
				}
			}
		}()
	}
	err := q.readLoop()
	q.endWith(err)
	q.cancel()
	q.nc.Close()
	wg.Wait()
	q.mu.Lock()
	ctrl := q.ctrl
	q.mu.Unlock()
	if ctrl != nil {
		ctrl.detach(q)
	}
}

// endWith logs why the connection ends and, for a protocol error, sends a
// C2HTermReq first.
func (q *queue) endWith(err error) {
	q.mu.Lock()
	qid := q.qid
	q.mu.Unlock()
	var pe *protoError
	switch {
	case errors.As(err, &pe):
		q.log.Warn("nvmetcp: ending connection on protocol error", "qid", qid, "err", pe.Error())
		q.sendTermReq(pe)
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), q.ctx.Err() != nil:
		q.log.Debug("nvmetcp: connection closed", "qid", qid)
	case errors.Is(err, os.ErrDeadlineExceeded):
		q.log.Warn("nvmetcp: connection timed out", "qid", qid)
	default:
		q.log.Warn("nvmetcp: connection ended", "qid", qid, "err", err)
	}
}

func (q *queue) handshake() error {
	_ = q.nc.SetReadDeadline(time.Now().Add(q.t.opts.HandshakeTimeout))
	h, err := readHeader(q.br, q.hbuf[:], &q.lim)
	if err != nil {
		return err
	}
	ic, err := parseICReq(h)
	if err != nil {
		return err
	}
	_ = q.nc.SetReadDeadline(time.Time{})
	q.lim.established = true
	q.lim.hdgst, q.lim.ddgst = ic.hdgst, ic.ddgst
	q.pw = pduWriter{hdgst: ic.hdgst, ddgst: ic.ddgst}
	if ic.hpda > 0 {
		q.pw.hpda = (int(ic.hpda) + 1) * 4
	}
	resp := make([]byte, icLen)
	resp[0], resp[2] = pduICResp, icLen
	binary.LittleEndian.PutUint32(resp[4:], icLen)
	// PFV 0, CPDA 0: no alignment needed for host data.
	var dgst byte
	if ic.hdgst {
		dgst |= 1
	}
	if ic.ddgst {
		dgst |= 2
	}
	resp[11] = dgst
	binary.LittleEndian.PutUint32(resp[12:], uint32(q.t.opts.MaxH2CData))
	q.log.Debug("nvmetcp: connection initialized", "hdgst", ic.hdgst, "ddgst", ic.ddgst, "hpda", ic.hpda, "maxr2t", ic.maxR2T)
	return q.writePDU(resp, nil)
}

func (q *queue) readLoop() error {
	for {
		h, err := readHeader(q.br, q.hbuf[:], &q.lim)
		if err != nil {
			return err
		}
		switch h.typ {
		case pduH2CTermReq:
			fes := binary.LittleEndian.Uint16(h.raw[8:])
			q.log.Warn("nvmetcp: host terminated the connection", "fes", fes, "fei", binary.LittleEndian.Uint32(h.raw[10:]))
			return nil
		case pduCapsuleCmd:
			r := &request{}
			copy(r.cmd[:], h.raw[chLen:capsuleCmdLen])
			if h.dataLen > 0 {
				r.inCapsule = make([]byte, h.dataLen)
				if err := readData(q.br, h, r.inCapsule); err != nil {
					if !errors.Is(err, errDataDigest) {
						return err
					}
					r.digestErr = true
				}
			}
			if err := q.submit(r); err != nil {
				return err
			}
		case pduH2CData:
			if err := q.receiveData(h); err != nil {
				return err
			}
		}
	}
}

// submit accounts a new command and hands it to a worker (or, for an
// Async Event Request, parks it on the controller).
func (q *queue) submit(r *request) error {
	q.mu.Lock()
	limit := q.entries
	if !q.connected {
		limit = q.t.opts.QueueDepth
	}
	if q.outstanding >= limit {
		q.mu.Unlock()
		return perr(fesSequence, 0, nil, "host exceeded the queue size: %d commands outstanding", limit)
	}
	q.outstanding++
	q.sqhd = uint16((int(q.sqhd) + 1) % limit)
	ctrl := q.ctrl
	qid := q.qid
	q.mu.Unlock()
	if ctrl != nil {
		ctrl.touch()
		if qid == 0 && r.cmd.opcode() == adminAsyncEvent && !r.digestErr && ctrl.ready() {
			if ctrl.addAER(q, r.cmd.cid()) {
				return nil
			}
			q.complete(r.cmd.cid(), fail(scAERLimit), false)
			return nil
		}
	}
	select {
	case q.cmds <- r:
		return nil
	default:
		return perr(fesSequence, 0, nil, "command queue full")
	}
}

// receiveData places an H2CData PDU's data into the transfer it answers.
func (q *queue) receiveData(h *pduHeader) error {
	d, err := parseH2CData(h)
	if err != nil {
		return err
	}
	q.mu.Lock()
	var x *xfer
	if int(d.ttag) < len(q.xfers) {
		x = q.xfers[d.ttag]
	}
	q.mu.Unlock()
	if x == nil || x.cid != d.cccid {
		return perr(fesInvalidHeader, 10, h.raw, "H2CData for unknown TTAG %d / CCCID %d", d.ttag, d.cccid)
	}
	if d.datao != x.next {
		return perr(fesDataOutOfRange, 12, h.raw, "H2CData DATAO %d, expected %d", d.datao, x.next)
	}
	if uint64(d.datao)+uint64(d.datal) > uint64(x.end) {
		return perr(fesDataOutOfRange, 16, h.raw, "H2CData [%d, +%d) beyond the R2T end %d", d.datao, d.datal, x.end)
	}
	last := h.flags&flagLast != 0
	if last != (d.datao+d.datal == x.end) {
		return perr(fesInvalidHeader, 1, h.raw, "H2CData LAST_PDU flag %v at offset %d of R2T ending at %d", last, d.datao+d.datal, x.end)
	}
	if err := readData(q.br, h, x.buf[d.datao:d.datao+d.datal]); err != nil {
		if !errors.Is(err, errDataDigest) {
			return err
		}
		x.digestErr = true
	}
	x.next += d.datal
	if x.next == x.end {
		q.mu.Lock()
		if int(d.ttag) < len(q.xfers) && q.xfers[d.ttag] == x {
			q.xfers[d.ttag] = nil
		}
		q.mu.Unlock()
		close(x.done)
	}
	return nil
}

// writePDU writes a header and optional data (with its digest when the
// header says so) as one PDU, and sends what is buffered.
func (q *queue) writePDU(hdr, data []byte) error {
	return q.putPDU(hdr, data, true)
}

// putPDU writes a PDU like writePDU; without flush it may stay in the
// buffer until the next flush. sendData uses that so that a command's last
// C2HData PDU and its CapsuleResp, which always follows, leave in one
// write: over QEMU's user networking a response that reaches the guest in
// two pieces can wait for the guest's delayed ACK (about 40 ms).
func (q *queue) putPDU(hdr, data []byte, flush bool) error {
	var dd [digestLen]byte
	if len(data) > 0 && hdr[1]&flagDDGST != 0 {
		binary.LittleEndian.PutUint32(dd[:], crc32c(data))
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	_ = q.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := q.bw.Write(hdr); err != nil {
		return q.writeFailed(err)
	}
	if len(data) > 0 {
		if _, err := q.bw.Write(data); err != nil {
			return q.writeFailed(err)
		}
		if hdr[1]&flagDDGST != 0 {
			if _, err := q.bw.Write(dd[:]); err != nil {
				return q.writeFailed(err)
			}
		}
	}
	if !flush {
		return nil
	}
	if err := q.bw.Flush(); err != nil {
		return q.writeFailed(err)
	}
	return nil
}

func (q *queue) writeFailed(err error) error {
	q.shutdown()
	return err
}

// complete sends a command's CapsuleResp.
func (q *queue) complete(cid uint16, cpl completion, closeAfter bool) {
	q.mu.Lock()
	q.outstanding--
	sqhd, qid := q.sqhd, q.qid
	ctrl := q.ctrl
	q.mu.Unlock()
	if cpl.status&0x7FF != scSuccess && ctrl != nil {
		ctrl.logError(qid, cid, cpl.status, 0, 0)
	}
	hdr, _ := q.pw.header(pduCapsuleResp, 0, capsuleRespLen, 0)
	cpl.encode(hdr[chLen:capsuleRespLen], sqhd, qid, cid)
	q.pw.sealHeader(hdr, capsuleRespLen)
	if err := q.writePDU(hdr, nil); err != nil {
		q.log.Debug("nvmetcp: response not sent", "cid", cid, "err", err)
		return
	}
	if closeAfter {
		q.shutdown()
	}
}

// sendData sends data to the host for command cid in C2HData PDUs of at
// most MaxH2CData bytes each. The caller sends the CapsuleResp next, which
// flushes what is still buffered.
func (q *queue) sendData(cid uint16, data []byte) error {
	chunk := q.t.opts.MaxH2CData
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		var flags uint8
		if end == len(data) {
			flags = flagLast
		}
		hdr, _ := q.pw.header(pduC2HData, flags, dataHdrLen, end-off)
		binary.LittleEndian.PutUint16(hdr[8:], cid)
		binary.LittleEndian.PutUint32(hdr[12:], uint32(off))
		binary.LittleEndian.PutUint32(hdr[16:], uint32(end-off))
		q.pw.sealHeader(hdr, dataHdrLen)
		if err := q.putPDU(hdr, data[off:end], false); err != nil {
			return err
		}
	}
	return nil
}

// sendR2T asks the host for length bytes at offset of command cid.
func (q *queue) sendR2T(cid, ttag uint16, offset, length uint32) error {
	hdr, _ := q.pw.header(pduR2T, 0, r2tLen, 0)
	binary.LittleEndian.PutUint16(hdr[8:], cid)
	binary.LittleEndian.PutUint16(hdr[10:], ttag)
	binary.LittleEndian.PutUint32(hdr[12:], offset)
	binary.LittleEndian.PutUint32(hdr[16:], length)
	q.pw.sealHeader(hdr, r2tLen)
	return q.writePDU(hdr, nil)
}

// sendTermReq sends a C2HTermReq for a fatal protocol error.
func (q *queue) sendTermReq(pe *protoError) {
	data := pe.hdr
	if len(data) > maxTermData {
		data = data[:maxTermData]
	}
	hdr, _ := q.pw.header(pduC2HTermReq, 0, termHdrLen, len(data))
	binary.LittleEndian.PutUint16(hdr[8:], pe.fes)
	binary.LittleEndian.PutUint32(hdr[10:], pe.fei)
	_ = q.writePDU(hdr, append([]byte(nil), data...))
}
