package kernelflows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// ErrKernelUndefined marks a response on which the kernel's parser has no
// defined behaviour (it would read or write outside its buffers). The Go
// host stops there instead; a TPer that produces one is wrong for Linux.
var ErrKernelUndefined = errors.New("response outside what the kernel parser handles safely")

type atomWidth int

const (
	widthTiny atomWidth = iota
	widthShort
	widthMedium
	widthLong
	widthToken
)

type tokenType int

const (
	typeInvalid tokenType = iota
	typeBytestring
	typeSint
	typeUint
	typeToken
)

// respTok is struct opal_resp_tok: where a token starts in h.resp, its
// length including its header, and for unsigned tiny and short atoms the
// value.
type respTok struct {
	pos   int
	len   int
	typ   tokenType
	width atomWidth
	u     uint64
}

// parsedResp is struct parsed_resp.
type parsedResp struct {
	num  int
	toks [maxToks]respTok
}

func parseTiny(t *respTok, buf []byte, pos int) int {
	t.pos, t.len, t.width = pos, 1, widthTiny
	if buf[pos]&tinySigned != 0 {
		t.typ = typeSint
	} else {
		t.typ = typeUint
		t.u = uint64(buf[pos] & tinyDataMask)
	}
	return t.len
}

func parseShort(t *respTok, buf []byte, pos int) (int, error) {
	t.pos, t.len, t.width = pos, int(buf[pos]&shortLenMask)+1, widthShort
	switch {
	case buf[pos]&shortBytes != 0:
		t.typ = typeBytestring
	case buf[pos]&shortSigned != 0:
		t.typ = typeSint
	default:
		t.typ = typeUint
		if t.len > 9 {
			return 0, errnoError("response_parse_short: uint64 with more than 8 bytes", syscall.EINVAL)
		}
		if pos+t.len > len(buf) {
			return 0, fmt.Errorf("response_parse_short: atom at %d runs past the buffer: %w", pos, ErrKernelUndefined)
		}
		var v uint64
		for i := 1; i < t.len; i++ {
			v = v<<8 | uint64(buf[pos+i])
		}
		t.u = v
	}
	return t.len, nil
}

func parseMedium(t *respTok, buf []byte, pos int) (int, error) {
	if pos+1 >= len(buf) {
		return 0, fmt.Errorf("response_parse_medium: header at %d runs past the buffer: %w", pos, ErrKernelUndefined)
	}
	t.pos, t.width = pos, widthMedium
	t.len = (int(buf[pos]&mediumLenMask)<<8 | int(buf[pos+1])) + 2
	switch {
	case buf[pos]&mediumBytes != 0:
		t.typ = typeBytestring
	case buf[pos]&mediumSigned != 0:
		t.typ = typeSint
	default:
		t.typ = typeUint
	}
	return t.len, nil
}

func parseLong(t *respTok, buf []byte, pos int) (int, error) {
	if pos+3 >= len(buf) {
		return 0, fmt.Errorf("response_parse_long: header at %d runs past the buffer: %w", pos, ErrKernelUndefined)
	}
	t.pos, t.width = pos, widthLong
	t.len = (int(buf[pos+1])<<16 | int(buf[pos+2])<<8 | int(buf[pos+3])) + 4
	switch {
	case buf[pos]&longBytes != 0:
		t.typ = typeBytestring
	case buf[pos]&longSigned != 0:
		t.typ = typeSint
	default:
		t.typ = typeUint
	}
	return t.len, nil
}

// responseParse is response_parse: check the three header lengths, then
// split the subpacket's payload into tokens. Empty atoms advance the slot
// but are not counted, exactly as in the kernel (so only trailing empty
// atoms are harmless).
func responseParse(buf []byte, resp *parsedResp) error {
	clen := binary.BigEndian.Uint32(buf[16:20])
	plen := binary.BigEndian.Uint32(buf[40:44])
	slen := binary.BigEndian.Uint32(buf[52:56])
	if clen == 0 || plen == 0 || slen == 0 || slen > ioBufferLength-headerLength {
		return fmt.Errorf("response_parse: bad header length cp %d pkt %d subpkt %d: %w", clen, plen, slen, syscall.EINVAL)
	}
	*resp = parsedResp{}
	pos := headerLength
	total := int(slen)
	slot := 0
	num := 0
	for total > 0 {
		if pos >= len(buf) {
			return fmt.Errorf("response_parse: token at %d past the 2048-byte buffer: %w", pos, ErrKernelUndefined)
		}
		b := buf[pos]
		if slot >= maxToks && b != tokEmptyAtom {
			return fmt.Errorf("response_parse: more than %d tokens (the kernel writes past its table): %w", maxToks, ErrKernelUndefined)
		}
		var n int
		var err error
		var scratch respTok
		t := &scratch
		if slot < maxToks {
			t = &resp.toks[slot]
		}
		switch {
		case b <= tinyAtomMax:
			n = parseTiny(t, buf, pos)
		case b <= shortAtomMax:
			n, err = parseShort(t, buf, pos)
		case b <= mediumAtomMax:
			n, err = parseMedium(t, buf, pos)
		case b <= longAtomMax:
			n, err = parseLong(t, buf, pos)
		case b == tokEmptyAtom:
			n = 1
		default:
			t.pos, t.len, t.typ, t.width = pos, 1, typeToken, widthToken
			n = 1
		}
		if err != nil {
			return err
		}
		if b != tokEmptyAtom {
			num++
		}
		pos += n
		total -= n
		slot++
	}
	resp.num = num
	return nil
}

// getToken is response_get_token.
func (r *parsedResp) getToken(n int) (*respTok, bool) {
	if n < 0 || n >= r.num || n >= maxToks {
		return nil, false
	}
	t := &r.toks[n]
	if t.len == 0 {
		return nil, false
	}
	return t, true
}

// getString is response_get_string: the bytes of byte-string token n, or
// nil. The slice aliases buf.
func (r *parsedResp) getString(buf []byte, n int) []byte {
	t, ok := r.getToken(n)
	if !ok || t.typ != typeBytestring {
		return nil
	}
	var skip int
	switch t.width {
	case widthTiny, widthShort:
		skip = 1
	case widthMedium:
		skip = 2
	case widthLong:
		skip = 4
	default:
		return nil
	}
	end := t.pos + t.len
	if end > len(buf) {
		// The kernel would hand out bytes past its response buffer.
		return nil
	}
	return buf[t.pos+skip : end : end]
}

// getU64 is response_get_u64: 0 unless token n is an unsigned tiny or
// short atom.
func (r *parsedResp) getU64(n int) uint64 {
	t, ok := r.getToken(n)
	if !ok || t.typ != typeUint {
		return 0
	}
	if t.width != widthTiny && t.width != widthShort {
		return 0
	}
	return t.u
}

// tokenMatches is response_token_matches.
func tokenMatches(buf []byte, t *respTok, ok bool, match byte) bool {
	return ok && t.typ == typeToken && buf[t.pos] == match
}

// status is response_status: 0 for an end-of-session response, else the
// status from a trailing [ status 0 0 ] list, else NO_METHOD_STATUS.
func (r *parsedResp) status(buf []byte) uint8 {
	t, ok := r.getToken(0)
	if tokenMatches(buf, t, ok, tokEndOfSess) {
		return 0
	}
	if r.num < 5 {
		return StatusNoMethodStatus
	}
	t, ok = r.getToken(r.num - 5)
	if !tokenMatches(buf, t, ok, tokStartList) {
		return StatusNoMethodStatus
	}
	t, ok = r.getToken(r.num - 1)
	if !tokenMatches(buf, t, ok, tokEndList) {
		return StatusNoMethodStatus
	}
	return uint8(r.getU64(r.num - 4))
}
