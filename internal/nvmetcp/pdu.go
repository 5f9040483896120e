package nvmetcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// PDU types of the NVMe/TCP transport (NVMe/TCP Transport Specification,
// section 3.6.1).
const (
	pduICReq       = 0x00
	pduICResp      = 0x01
	pduH2CTermReq  = 0x02
	pduC2HTermReq  = 0x03
	pduCapsuleCmd  = 0x04
	pduCapsuleResp = 0x05
	pduH2CData     = 0x06
	pduC2HData     = 0x07
	pduR2T         = 0x09
)

// Common header flags.
const (
	flagHDGST   = 0x01 // a header digest follows the PDU header
	flagDDGST   = 0x02 // a data digest follows the PDU data
	flagLast    = 0x04 // last data PDU of a transfer (H2CData/C2HData)
	flagSuccess = 0x08 // C2HData: command completed successfully, no CapsuleResp
)

// Header lengths (HLEN) of each PDU type.
const (
	chLen          = 8   // common header
	icLen          = 128 // ICReq and ICResp
	termHdrLen     = 24  // H2CTermReq and C2HTermReq
	capsuleCmdLen  = chLen + sqeSize
	capsuleRespLen = chLen + cqeSize
	dataHdrLen     = 24 // H2CData, C2HData
	r2tLen         = 24
	digestLen      = 4
	// maxTermData is how much of the offending PDU header a TermReq carries.
	maxTermData = 128
)

// Fatal error status values carried by TermReq PDUs (FES).
const (
	fesInvalidHeader    = 0x01 // invalid PDU header field
	fesSequence         = 0x02 // PDU sequence error
	fesHeaderDigest     = 0x03 // header digest error
	fesDataOutOfRange   = 0x04 // data transfer out of range
	fesDataLimitExceed  = 0x05 // data transfer limit exceeded (R2T limit)
	fesUnsupportedParam = 0x06 // unsupported parameter
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c returns the NVMe/TCP digest (CRC32C) of b.
func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// pduHeader is a parsed PDU header: the common header, the PDU-specific
// header bytes and the geometry of the data that follows.
type pduHeader struct {
	typ   uint8
	flags uint8
	hlen  uint8
	pdo   uint8
	plen  uint32
	// raw holds the whole header (hlen bytes).
	raw []byte
	// dataLen is the number of data bytes (without padding or digest).
	dataLen int
	// pad is the number of padding bytes between header (and digest) and data.
	pad int
}

// protoError is a fatal transport error: the association must be ended
// with a C2HTermReq carrying fes and fei.
type protoError struct {
	fes uint16
	fei uint32
	msg string
	hdr []byte // offending header, echoed in the TermReq
}

func (e *protoError) Error() string {
	return fmt.Sprintf("nvme/tcp protocol error (FES %#x, FEI %d): %s", e.fes, e.fei, e.msg)
}

func perr(fes uint16, fei uint32, hdr []byte, format string, args ...any) *protoError {
	return &protoError{fes: fes, fei: fei, hdr: hdr, msg: fmt.Sprintf(format, args...)}
}

// errDataDigest reports a data digest mismatch; the command that carried
// the data is completed with a transient transport error.
var errDataDigest = errors.New("data digest mismatch")

// pduLimits bounds what a host may send on one connection.
type pduLimits struct {
	established bool   // ICReq/ICResp exchanged
	hdgst       bool   // header digests negotiated
	ddgst       bool   // data digests negotiated
	maxCapsule  int    // in-capsule data bytes per CapsuleCmd
	maxH2CData  uint32 // data bytes per H2CData PDU
}

// expectedHLen returns the header length a host-to-controller PDU of type
// typ must carry, or 0 when the type may not be sent by a host.
func expectedHLen(typ uint8) int {
	switch typ {
	case pduICReq:
		return icLen
	case pduH2CTermReq:
		return termHdrLen
	case pduCapsuleCmd:
		return capsuleCmdLen
	case pduH2CData:
		return dataHdrLen
	}
	return 0
}

// readHeader reads and validates the next host PDU header (and its header
// digest) from r into buf, which must hold at least 256 bytes. It does not
// read the PDU's data; the caller reads dataLen bytes with readData.
func readHeader(r io.Reader, buf []byte, lim *pduLimits) (*pduHeader, error) {
	ch := buf[:chLen]
	if _, err := io.ReadFull(r, ch); err != nil {
		return nil, err
	}
	h := &pduHeader{typ: ch[0], flags: ch[1], hlen: ch[2], pdo: ch[3], plen: binary.LittleEndian.Uint32(ch[4:])}
	want := expectedHLen(h.typ)
	if want == 0 {
		return nil, perr(fesInvalidHeader, 0, ch, "PDU type %#x not valid from a host", h.typ)
	}
	if !lim.established && h.typ != pduICReq {
		return nil, perr(fesSequence, 0, ch, "PDU type %#x before ICReq", h.typ)
	}
	if lim.established && h.typ == pduICReq {
		return nil, perr(fesSequence, 0, ch, "second ICReq")
	}
	if int(h.hlen) != want {
		return nil, perr(fesInvalidHeader, 2, ch, "HLEN %d for PDU type %#x, want %d", h.hlen, h.typ, want)
	}
	// Digests: never on ICReq or TermReq; otherwise present exactly when negotiated.
	hd := 0
	switch h.typ {
	case pduICReq, pduH2CTermReq:
		if h.flags&(flagHDGST|flagDDGST) != 0 {
			return nil, perr(fesInvalidHeader, 1, ch, "digest flags %#x on PDU type %#x", h.flags, h.typ)
		}
	default:
		if (h.flags&flagHDGST != 0) != lim.hdgst {
			return nil, perr(fesInvalidHeader, 1, ch, "HDGSTF %v but header digest negotiated %v", h.flags&flagHDGST != 0, lim.hdgst)
		}
		if h.flags&flagDDGST != 0 && !lim.ddgst {
			return nil, perr(fesInvalidHeader, 1, ch, "DDGSTF set but data digest not negotiated")
		}
		if lim.hdgst {
			hd = digestLen
		}
	}
	hdrEnd := uint32(want + hd)
	if h.plen < hdrEnd {
		return nil, perr(fesInvalidHeader, 4, ch, "PLEN %d shorter than header (%d)", h.plen, hdrEnd)
	}
	// Bound the data before reading anything more.
	var maxData uint32
	switch h.typ {
	case pduICReq:
		maxData = 0
	case pduH2CTermReq:
		maxData = maxTermData
	case pduCapsuleCmd:
		maxData = uint32(lim.maxCapsule)
	case pduH2CData:
		maxData = lim.maxH2CData
	}
	dd := uint32(0)
	if h.flags&flagDDGST != 0 {
		dd = digestLen
	}
	rest := h.plen - hdrEnd
	if rest > 0 {
		if h.typ == pduH2CTermReq {
			// TermReq data starts right after the header; PDO is reserved.
			h.dataLen = int(rest)
		} else {
			if h.pdo == 0 || uint32(h.pdo) < hdrEnd || uint32(h.pdo) > h.plen {
				return nil, perr(fesInvalidHeader, 3, ch, "PDO %d outside [%d, %d]", h.pdo, hdrEnd, h.plen)
			}
			if h.plen-uint32(h.pdo) < dd {
				return nil, perr(fesInvalidHeader, 4, ch, "PLEN %d leaves no room for the data digest", h.plen)
			}
			h.pad = int(uint32(h.pdo) - hdrEnd)
			h.dataLen = int(h.plen - uint32(h.pdo) - dd)
		}
		if h.dataLen == 0 && dd != 0 {
			return nil, perr(fesInvalidHeader, 1, ch, "DDGSTF set on a PDU without data")
		}
	} else if dd != 0 {
		return nil, perr(fesInvalidHeader, 1, ch, "DDGSTF set on a PDU without data")
	}
	if uint32(h.dataLen) > maxData {
		fes := uint16(fesInvalidHeader)
		if h.typ == pduH2CData {
			fes = fesDataLimitExceed
		}
		return nil, perr(fes, 4, ch, "PDU type %#x carries %d data bytes, limit %d", h.typ, h.dataLen, maxData)
	}
	if h.typ == pduH2CData && h.dataLen == 0 {
		return nil, perr(fesInvalidHeader, 4, ch, "H2CData PDU without data")
	}
	h.raw = buf[:want]
	if _, err := io.ReadFull(r, h.raw[chLen:]); err != nil {
		return nil, err
	}
	if hd != 0 {
		var d [digestLen]byte
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return nil, err
		}
		if got, exp := binary.LittleEndian.Uint32(d[:]), crc32c(h.raw); got != exp {
			return nil, perr(fesHeaderDigest, 0, h.raw, "header digest %#08x, computed %#08x", got, exp)
		}
	}
	return h, nil
}

// readData reads the PDU's padding, len(dst) == h.dataLen data bytes and
// the data digest. A digest mismatch returns errDataDigest after the whole
// PDU has been consumed, so the stream stays in step.
func readData(r io.Reader, h *pduHeader, dst []byte) error {
	if h.pad > 0 {
		if _, err := io.CopyN(io.Discard, r, int64(h.pad)); err != nil {
			return err
		}
	}
	if _, err := io.ReadFull(r, dst); err != nil {
		return err
	}
	if h.flags&flagDDGST == 0 {
		return nil
	}
	var d [digestLen]byte
	if _, err := io.ReadFull(r, d[:]); err != nil {
		return err
	}
	if binary.LittleEndian.Uint32(d[:]) != crc32c(dst) {
		return errDataDigest
	}
	return nil
}

// icReq is a parsed Initialize Connection Request.
type icReq struct {
	pfv    uint16
	hpda   uint8
	hdgst  bool
	ddgst  bool
	maxR2T uint32
}

func parseICReq(h *pduHeader) (icReq, error) {
	b := h.raw
	if h.plen != icLen {
		return icReq{}, perr(fesInvalidHeader, 4, b, "ICReq PLEN %d, want %d", h.plen, icLen)
	}
	ic := icReq{
		pfv:    binary.LittleEndian.Uint16(b[8:]),
		hpda:   b[10],
		hdgst:  b[11]&0x01 != 0,
		ddgst:  b[11]&0x02 != 0,
		maxR2T: binary.LittleEndian.Uint32(b[12:]),
	}
	if ic.pfv != 0 {
		return ic, perr(fesUnsupportedParam, 8, b, "ICReq PFV %d unsupported", ic.pfv)
	}
	if ic.hpda > 31 {
		return ic, perr(fesInvalidHeader, 10, b, "ICReq HPDA %d > 31", ic.hpda)
	}
	return ic, nil
}

// h2cData is the PDU-specific header of an H2CData PDU.
type h2cData struct {
	cccid uint16
	ttag  uint16
	datao uint32
	datal uint32
}

func parseH2CData(h *pduHeader) (h2cData, error) {
	b := h.raw
	d := h2cData{
		cccid: binary.LittleEndian.Uint16(b[8:]),
		ttag:  binary.LittleEndian.Uint16(b[10:]),
		datao: binary.LittleEndian.Uint32(b[12:]),
		datal: binary.LittleEndian.Uint32(b[16:]),
	}
	if d.datal != uint32(h.dataLen) {
		return d, perr(fesInvalidHeader, 16, b, "H2CData DATAL %d but PDU carries %d bytes", d.datal, h.dataLen)
	}
	return d, nil
}

// pduWriter builds controller-to-host PDUs.
type pduWriter struct {
	hdgst, ddgst bool
	hpda         int // required data alignment in bytes (multiple of 4), 0 for none
}

// header builds the common header and PDU-specific header of length hlen
// with dataLen bytes of data following; it returns the header (with its
// digest space), the padding length and the flags applied.
func (w *pduWriter) header(typ uint8, flags uint8, hlen int, dataLen int) (hdr []byte, pad int) {
	hd := 0
	if w.hdgst && typ != pduICResp && typ != pduC2HTermReq {
		hd = digestLen
		flags |= flagHDGST
	}
	dd := 0
	if dataLen > 0 && w.ddgst && typ == pduC2HData {
		dd = digestLen
		flags |= flagDDGST
	}
	pdo := 0
	if dataLen > 0 && typ != pduC2HTermReq {
		pdo = hlen + hd
		if w.hpda > 0 && pdo%w.hpda != 0 {
			pad = w.hpda - pdo%w.hpda
			pdo += pad
		}
	}
	hdr = make([]byte, hlen+hd+pad)
	hdr[0] = typ
	hdr[1] = flags
	hdr[2] = uint8(hlen)
	hdr[3] = uint8(pdo)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(hlen+hd+pad+dataLen+dd))
	return hdr, pad
}

// sealHeader writes the header digest, if any, once the header is filled.
func (w *pduWriter) sealHeader(hdr []byte, hlen int) {
	if hdr[1]&flagHDGST != 0 {
		binary.LittleEndian.PutUint32(hdr[hlen:], crc32c(hdr[:hlen]))
	}
}
