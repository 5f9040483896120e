package nvmetcp

// A small NVMe/TCP host (initiator) for the tests. It encodes and decodes
// PDUs byte by byte from the transport specification, independently of
// the target's own codec, so the two cannot share a mistake silently.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"testing"
	"time"
)

var hostCRC = crc32.MakeTable(crc32.Castagnoli)

type hostOpts struct {
	hdgst, ddgst bool
	hpda         uint8
}

// testHost is one host connection (one queue).
type testHost struct {
	tb     testing.TB
	nc     net.Conn
	br     *bufio.Reader
	opts   hostOpts
	maxH2C uint32
	cid    uint16
	qid    uint16
	// inline is how much data the host places in a capsule.
	inline int
}

// cqe is a decoded completion.
type cqe struct {
	result uint64
	sqhd   uint16
	sqid   uint16
	cid    uint16
	status uint16 // SCT<<8 | SC
	dnr    bool
}

// termError is a C2HTermReq received from the target.
type termError struct {
	fes uint16
	fei uint32
}

func (e *termError) Error() string { return fmt.Sprintf("C2HTermReq FES %#x FEI %d", e.fes, e.fei) }

func dialHost(tb testing.TB, addr string, o hostOpts) *testHost {
	tb.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { nc.Close() })
	h := &testHost{tb: tb, nc: nc, br: bufio.NewReader(nc), opts: o, inline: 8192}
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	ic := make([]byte, 128)
	ic[0], ic[2] = 0x00, 128
	binary.LittleEndian.PutUint32(ic[4:], 128)
	ic[10] = o.hpda
	if o.hdgst {
		ic[11] |= 1
	}
	if o.ddgst {
		ic[11] |= 2
	}
	binary.LittleEndian.PutUint32(ic[12:], 0) // MAXR2T: one outstanding R2T
	if _, err := nc.Write(ic); err != nil {
		tb.Fatalf("send ICReq: %v", err)
	}
	resp := make([]byte, 128)
	if _, err := io.ReadFull(h.br, resp); err != nil {
		tb.Fatalf("read ICResp: %v", err)
	}
	if resp[0] != 0x01 || resp[2] != 128 || binary.LittleEndian.Uint32(resp[4:]) != 128 {
		tb.Fatalf("bad ICResp header % x", resp[:8])
	}
	if resp[10] != 0 {
		tb.Fatalf("ICResp CPDA %d, Linux hosts need 0", resp[10])
	}
	wantDgst := byte(0)
	if o.hdgst {
		wantDgst |= 1
	}
	if o.ddgst {
		wantDgst |= 2
	}
	if resp[11] != wantDgst {
		tb.Fatalf("ICResp digests %#x, asked %#x", resp[11], wantDgst)
	}
	h.maxH2C = binary.LittleEndian.Uint32(resp[12:])
	if h.maxH2C < 4096 {
		tb.Fatalf("ICResp MAXH2CDATA %d < 4096", h.maxH2C)
	}
	return h
}

// pdu is a PDU as the host reads it.
type hostPDU struct {
	typ, flags uint8
	hdr        []byte
	data       []byte
}

func (h *testHost) readPDU() (*hostPDU, error) {
	ch := make([]byte, 8)
	if _, err := io.ReadFull(h.br, ch); err != nil {
		return nil, err
	}
	p := &hostPDU{typ: ch[0], flags: ch[1]}
	hlen, pdo, plen := int(ch[2]), int(ch[3]), int(binary.LittleEndian.Uint32(ch[4:]))
	if hlen < 8 || plen < hlen || plen > 16<<20 {
		return nil, fmt.Errorf("bad PDU header % x", ch)
	}
	p.hdr = make([]byte, hlen)
	copy(p.hdr, ch)
	if _, err := io.ReadFull(h.br, p.hdr[8:]); err != nil {
		return nil, err
	}
	consumed := hlen
	if p.typ == 0x03 { // C2HTermReq: no digests
		rest := make([]byte, plen-hlen)
		if _, err := io.ReadFull(h.br, rest); err != nil {
			return nil, err
		}
		return p, &termError{fes: binary.LittleEndian.Uint16(p.hdr[8:]), fei: binary.LittleEndian.Uint32(p.hdr[10:])}
	}
	if h.opts.hdgst {
		if p.flags&0x01 == 0 {
			return nil, fmt.Errorf("PDU type %#x without HDGSTF while header digests are on", p.typ)
		}
		d := make([]byte, 4)
		if _, err := io.ReadFull(h.br, d); err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint32(d) != crc32.Checksum(p.hdr, hostCRC) {
			return nil, fmt.Errorf("header digest mismatch on PDU type %#x", p.typ)
		}
		consumed += 4
	} else if p.flags&0x01 != 0 {
		return nil, fmt.Errorf("HDGSTF set without header digests")
	}
	if plen > consumed {
		if pdo < consumed {
			return nil, fmt.Errorf("PDO %d inside header (%d)", pdo, consumed)
		}
		if h.opts.hpda > 0 && pdo%((int(h.opts.hpda)+1)*4) != 0 {
			return nil, fmt.Errorf("PDO %d not aligned to HPDA %d", pdo, h.opts.hpda)
		}
		if _, err := io.CopyN(io.Discard, h.br, int64(pdo-consumed)); err != nil {
			return nil, err
		}
		dl := plen - pdo
		if h.opts.ddgst {
			if p.flags&0x02 == 0 {
				return nil, fmt.Errorf("data PDU without DDGSTF while data digests are on")
			}
			dl -= 4
		}
		p.data = make([]byte, dl)
		if _, err := io.ReadFull(h.br, p.data); err != nil {
			return nil, err
		}
		if h.opts.ddgst {
			d := make([]byte, 4)
			if _, err := io.ReadFull(h.br, d); err != nil {
				return nil, err
			}
			if binary.LittleEndian.Uint32(d) != crc32.Checksum(p.data, hostCRC) {
				return nil, fmt.Errorf("data digest mismatch")
			}
		}
	}
	return p, nil
}

// buildPDU frames hdr (PDU-specific header included) and data with the
// negotiated digests.
func (h *testHost) buildPDU(typ uint8, flags uint8, hdr []byte, data []byte) []byte {
	hlen := len(hdr)
	hd := 0
	if h.opts.hdgst {
		flags |= 0x01
		hd = 4
	}
	dd := 0
	if len(data) > 0 && h.opts.ddgst {
		flags |= 0x02
		dd = 4
	}
	out := make([]byte, 0, hlen+hd+len(data)+dd)
	hdr[0], hdr[1], hdr[2] = typ, flags, uint8(hlen)
	if len(data) > 0 {
		hdr[3] = uint8(hlen + hd)
	} else {
		hdr[3] = 0
	}
	binary.LittleEndian.PutUint32(hdr[4:], uint32(hlen+hd+len(data)+dd))
	out = append(out, hdr...)
	if hd > 0 {
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(hdr, hostCRC))
	}
	out = append(out, data...)
	if dd > 0 {
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(data, hostCRC))
	}
	return out
}

// sqe is a submission queue entry being built.
type sqe [64]byte

func newCmd(opcode uint8) *sqe {
	var c sqe
	c[0] = opcode
	c[1] = 0x40 // PSDT: SGL
	return &c
}

func (c *sqe) dw(n int, v uint32) *sqe  { binary.LittleEndian.PutUint32(c[4*n:], v); return c }
func (c *sqe) nsid(v uint32) *sqe       { return c.dw(1, v) }
func fabricsCmd(fctype uint8) *sqe      { c := newCmd(0x7F); c[4] = fctype; return c }
func (c *sqe) putU16(off int, v uint16) { binary.LittleEndian.PutUint16(c[off:], v) }
func (c *sqe) putU64(off int, v uint64) { binary.LittleEndian.PutUint64(c[off:], v) }

// send transmits a command with optional write data (in the capsule when
// it fits, else by R2T) and a read buffer length, and waits for its
// completion.
func (h *testHost) send(c *sqe, write []byte, readLen int) (cqe, []byte, error) {
	h.cid++
	cid := h.cid
	binary.LittleEndian.PutUint16(c[2:], cid)
	inCapsule := len(write) > 0 && len(write) <= h.inline
	switch {
	case inCapsule:
		c.putU64(24, 0)
		binary.LittleEndian.PutUint32(c[32:], uint32(len(write)))
		c[39] = 0x01
	case len(write) > 0:
		binary.LittleEndian.PutUint32(c[32:], uint32(len(write)))
		c[39] = 0x5A
	case readLen > 0:
		binary.LittleEndian.PutUint32(c[32:], uint32(readLen))
		c[39] = 0x5A
	default:
		c[39] = 0x50
	}
	hdr := make([]byte, 72)
	copy(hdr[8:], c[:])
	var capData []byte
	if inCapsule {
		capData = write
	}
	if _, err := h.nc.Write(h.buildPDU(0x04, 0, hdr, capData)); err != nil {
		return cqe{}, nil, err
	}
	return h.wait(cid, write, readLen)
}

// wait handles R2T and C2HData for command cid until its CapsuleResp.
func (h *testHost) wait(cid uint16, write []byte, readLen int) (cqe, []byte, error) {
	var rd []byte
	if readLen > 0 {
		rd = make([]byte, readLen)
	}
	got := 0
	for {
		p, err := h.readPDU()
		if err != nil {
			return cqe{}, nil, err
		}
		switch p.typ {
		case 0x05: // CapsuleResp
			b := p.hdr[8:24]
			st := binary.LittleEndian.Uint16(b[14:])
			r := cqe{
				result: binary.LittleEndian.Uint64(b[0:]),
				sqhd:   binary.LittleEndian.Uint16(b[8:]),
				sqid:   binary.LittleEndian.Uint16(b[10:]),
				cid:    binary.LittleEndian.Uint16(b[12:]),
				status: (st >> 1) & 0x7FF,
				dnr:    st&0x8000 != 0,
			}
			if r.cid != cid {
				return r, nil, fmt.Errorf("response for CID %d, waiting for %d", r.cid, cid)
			}
			return r, rd[:got], nil
		case 0x07: // C2HData
			pcid := binary.LittleEndian.Uint16(p.hdr[8:])
			off := binary.LittleEndian.Uint32(p.hdr[12:])
			l := binary.LittleEndian.Uint32(p.hdr[16:])
			if pcid != cid || int(l) != len(p.data) || int(off) != got || got+len(p.data) > len(rd) {
				return cqe{}, nil, fmt.Errorf("bad C2HData cid %d off %d len %d (have %d of %d)", pcid, off, l, got, len(rd))
			}
			copy(rd[off:], p.data)
			got += len(p.data)
		case 0x09: // R2T
			pcid := binary.LittleEndian.Uint16(p.hdr[8:])
			ttag := binary.LittleEndian.Uint16(p.hdr[10:])
			off := binary.LittleEndian.Uint32(p.hdr[12:])
			l := binary.LittleEndian.Uint32(p.hdr[16:])
			if pcid != cid || l == 0 || l > h.maxH2C || uint64(off)+uint64(l) > uint64(len(write)) {
				return cqe{}, nil, fmt.Errorf("bad R2T cid %d off %d len %d for %d bytes", pcid, off, l, len(write))
			}
			if err := h.sendH2C(cid, ttag, write, off, l, h.maxH2C); err != nil {
				return cqe{}, nil, err
			}
		default:
			return cqe{}, nil, fmt.Errorf("unexpected PDU type %#x", p.typ)
		}
	}
}

// sendH2C answers an R2T with H2CData PDUs of at most chunk bytes.
func (h *testHost) sendH2C(cid, ttag uint16, write []byte, off, l, chunk uint32) error {
	for sent := uint32(0); sent < l; {
		n := min(chunk, l-sent)
		hdr := make([]byte, 24)
		binary.LittleEndian.PutUint16(hdr[8:], cid)
		binary.LittleEndian.PutUint16(hdr[10:], ttag)
		binary.LittleEndian.PutUint32(hdr[12:], off+sent)
		binary.LittleEndian.PutUint32(hdr[16:], n)
		var flags uint8
		if sent+n == l {
			flags = 0x04
		}
		if _, err := h.nc.Write(h.buildPDU(0x06, flags, hdr, write[off+sent:off+sent+n])); err != nil {
			return err
		}
		sent += n
	}
	return nil
}

// mustOK runs a command and fails the test on a transport error or a non-zero status.
func (h *testHost) mustOK(c *sqe, write []byte, readLen int) (cqe, []byte) {
	h.tb.Helper()
	r, data, err := h.send(c, write, readLen)
	if err != nil {
		h.tb.Fatalf("command %#x: %v", c[0], err)
	}
	if r.status != 0 {
		h.tb.Fatalf("command %#x (fctype %#x): status %#x", c[0], c[4], r.status)
	}
	return r, data
}

func connectData(hostID [16]byte, cntlid uint16, subnqn, hostnqn string) []byte {
	d := make([]byte, 1024)
	copy(d[0:16], hostID[:])
	binary.LittleEndian.PutUint16(d[16:], cntlid)
	copy(d[256:512], subnqn)
	copy(d[512:768], hostnqn)
	return d
}

// connect sends a fabrics Connect for queue qid.
func (h *testHost) connect(qid, sqsize uint16, kato uint32, hostID [16]byte, cntlid uint16, subnqn, hostnqn string) (cqe, error) {
	c := fabricsCmd(0x01)
	c.putU16(42, qid)
	c.putU16(44, sqsize)
	binary.LittleEndian.PutUint32(c[48:], kato)
	r, _, err := h.send(c, connectData(hostID, cntlid, subnqn, hostnqn), 0)
	if err == nil && r.status == 0 {
		h.qid = qid
	}
	return r, err
}

func (h *testHost) propGet(off uint32, size8 bool) uint64 {
	h.tb.Helper()
	c := fabricsCmd(0x04)
	if size8 {
		c[40] = 1
	}
	binary.LittleEndian.PutUint32(c[44:], off)
	r, _ := h.mustOK(c, nil, 0)
	return r.result
}

func (h *testHost) propSet(off uint32, v uint32) {
	h.tb.Helper()
	c := fabricsCmd(0x00)
	binary.LittleEndian.PutUint32(c[44:], off)
	c.putU64(48, uint64(v))
	h.mustOK(c, nil, 0)
}

// enable sets CC like Linux does and waits for CSTS.RDY.
func (h *testHost) enable() {
	h.tb.Helper()
	h.propSet(0x14, 1|6<<16|4<<20)
	for range 100 {
		if h.propGet(0x1C, false)&1 == 1 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.tb.Fatalf("controller never became ready")
}

func (h *testHost) identify(cns uint8, nsid uint32) []byte {
	h.tb.Helper()
	_, d := h.mustOK(newCmd(0x06).nsid(nsid).dw(10, uint32(cns)), nil, 4096)
	if len(d) != 4096 {
		h.tb.Fatalf("identify CNS %d returned %d bytes", cns, len(d))
	}
	return d
}

func (h *testHost) getLog(lid uint8, nsid uint32, length int, offset uint64) (cqe, []byte, error) {
	numd := uint32(length/4 - 1)
	c := newCmd(0x02).nsid(nsid).dw(10, uint32(lid)|(numd&0xFFFF)<<16).dw(11, numd>>16).
		dw(12, uint32(offset)).dw(13, uint32(offset>>32))
	return h.send(c, nil, length)
}

func rwCmd(op uint8, slba uint64, nlb uint32) *sqe {
	return newCmd(op).nsid(1).dw(10, uint32(slba)).dw(11, uint32(slba>>32)).dw(12, nlb-1)
}

// session is an admin queue plus one I/O queue of one controller.
type session struct {
	admin, io *testHost
	cntlid    uint16
}

var testHostID = [16]byte{0x5e, 0xdb, 0x00, 0x75, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

const testHostNQN = "nqn.2014-08.org.nvmexpress:uuid:5edb0075-0102-0304-0506-0708090a0b0c"

// openSession connects an admin queue, enables the controller and
// connects I/O queue 1, the way Linux does.
func openSession(tb testing.TB, addr, subnqn string, o hostOpts) *session {
	tb.Helper()
	a := dialHost(tb, addr, o)
	r, err := a.connect(0, 31, 5000, testHostID, 0xFFFF, subnqn, testHostNQN)
	if err != nil || r.status != 0 {
		tb.Fatalf("admin connect to %s: status %#x err %v", subnqn, r.status, err)
	}
	cntlid := uint16(r.result)
	a.propGet(0x00, true)
	a.enable()
	if subnqn == DiscoveryNQN {
		return &session{admin: a, cntlid: cntlid}
	}
	a.mustOK(newCmd(0x09).dw(10, 0x07).dw(11, 0), nil, 0) // one I/O queue
	io := dialHost(tb, addr, o)
	r, err = io.connect(1, 127, 0, testHostID, cntlid, subnqn, testHostNQN)
	if err != nil || r.status != 0 {
		tb.Fatalf("I/O connect to %s: status %#x err %v", subnqn, r.status, err)
	}
	return &session{admin: a, io: io, cntlid: cntlid}
}

func (s *session) write(tb testing.TB, lba uint64, data []byte, bs int) cqe {
	tb.Helper()
	r, _, err := s.io.send(rwCmd(0x01, lba, uint32(len(data)/bs)), data, 0)
	if err != nil {
		tb.Fatalf("write LBA %d: %v", lba, err)
	}
	return r
}

func (s *session) read(tb testing.TB, lba uint64, n, bs int) (cqe, []byte) {
	tb.Helper()
	r, d, err := s.io.send(rwCmd(0x02, lba, uint32(n/bs)), nil, n)
	if err != nil {
		tb.Fatalf("read LBA %d: %v", lba, err)
	}
	return r, d
}

// expectTerm reads until the target sends a C2HTermReq and closes.
func expectTerm(h *testHost) (*termError, error) {
	_ = h.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range 16 {
		_, err := h.readPDU()
		var te *termError
		if errors.As(err, &te) {
			// After a TermReq the target closes the connection.
			if _, err := h.br.ReadByte(); !errors.Is(err, io.EOF) {
				return te, fmt.Errorf("connection still open after TermReq: %v", err)
			}
			return te, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, errors.New("no TermReq")
}

func trimNUL(b []byte) string { return string(bytes.TrimRight(b, "\x00")) }
