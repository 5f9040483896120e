package kernelflows

import (
	"encoding/binary"
	"math/bits"
	"syscall"
)

// The command builder: tokens are appended into the fixed 2048-byte
// h.cmd at h.pos, exactly as sed-opal.c's add_token_* helpers do. A
// failed append sets the sticky h.berr (-ERANGE in the kernel) and every
// later append is a no-op, so a builder sequence is checked once at its
// end.

func (h *Host) remainingSize() int { return ioBufferLength - h.pos }

// canAdd is can_add: room for n more bytes, unless an append already failed.
func (h *Host) canAdd(n int) bool {
	if h.berr != 0 {
		return false
	}
	if h.remainingSize() < n {
		h.berr = syscall.ERANGE
		return false
	}
	return true
}

// addU8 is add_token_u8: one raw byte (a token, or a tiny atom).
func (h *Host) addU8(tok byte) {
	if !h.canAdd(1) {
		return
	}
	h.cmd[h.pos] = tok
	h.pos++
}

// addShortAtomHeader is add_short_atom_header. Like the kernel it checks
// room with a private error, so a missing byte is silently dropped; its
// callers check room for the whole atom first.
func (h *Host) addShortAtomHeader(bytestring, signed bool, n int) {
	atom := byte(shortAtomID)
	if bytestring {
		atom |= shortBytes
	}
	if signed {
		atom |= shortSigned
	}
	atom |= byte(n) & shortLenMask
	if h.remainingSize() < 1 {
		return
	}
	h.cmd[h.pos] = atom
	h.pos++
}

// addMediumAtomHeader is add_medium_atom_header; it writes without a room
// check, as the kernel does (its caller checked).
func (h *Host) addMediumAtomHeader(bytestring, signed bool, n int) {
	header0 := byte(mediumAtomID)
	if bytestring {
		header0 |= mediumBytes
	}
	if signed {
		header0 |= mediumSigned
	}
	header0 |= byte(n>>8) & mediumLenMask
	h.cmd[h.pos] = header0
	h.cmd[h.pos+1] = byte(n)
	h.pos += 2
}

// addU64 is add_token_u64: a tiny atom up to 63, else a short unsigned
// atom of the fewest bytes that hold the value.
func (h *Host) addU64(number uint64) {
	if number&^tinyDataMask == 0 {
		h.addU8(byte(number))
		return
	}
	n := (bits.Len64(number) + 7) / 8
	if !h.canAdd(n + 1) {
		return
	}
	h.addShortAtomHeader(false, false, n)
	for n > 0 {
		n--
		h.addU8(byte(number >> (8 * n)))
	}
}

// addBytestringHeader is add_bytestring_header: a short atom header up to
// 15 bytes, a medium one above, after checking room for header and data.
// It returns the offset where the data goes, or -1.
func (h *Host) addBytestringHeader(n int) int {
	headerLen := 1
	short := true
	if n&^shortLenMask != 0 {
		headerLen = 2
		short = false
	}
	if !h.canAdd(headerLen + n) {
		return -1
	}
	if short {
		h.addShortAtomHeader(true, false, n)
	} else {
		h.addMediumAtomHeader(true, false, n)
	}
	return h.pos
}

// addBytes is add_token_bytestring.
func (h *Host) addBytes(b []byte) {
	start := h.addBytestringHeader(len(b))
	if start < 0 {
		return
	}
	copy(h.cmd[start:], b)
	h.pos += len(b)
}

// clearCmd is clear_opal_cmd: position after the headers, buffer zeroed.
func (h *Host) clearCmd() {
	h.pos = headerLength
	clear(h.cmd[:])
	h.berr = 0
}

// setComID is set_comid: the extended ComID is the ComID and a zero
// extension.
func (h *Host) setComID(comid uint16) {
	binary.BigEndian.PutUint16(h.cmd[4:6], comid)
	h.cmd[6] = 0
	h.cmd[7] = 0
}

// cmdStart is cmd_start: a method call on an object, with the parameter
// list opened (cmdFinalize closes it).
func (h *Host) cmdStart(object, method uid) {
	h.clearCmd()
	h.setComID(h.comid)
	h.addU8(tokCall)
	h.addBytes(object[:])
	h.addBytes(method[:])
	h.addU8(tokStartList)
}

// cmdFinalize is cmd_finalize: close the parameter list, end of data, an
// empty method status list, then the Packet's session numbers and the
// three length fields, the data padded with zeros to a multiple of four.
func (h *Host) cmdFinalize(hsn, tsn uint32) error {
	h.addU8(tokEndList)
	h.addU8(tokEndOfData)
	h.addU8(tokStartList)
	h.addU8(0)
	h.addU8(0)
	h.addU8(0)
	h.addU8(tokEndList)
	if h.berr != 0 {
		return errnoError("cmd_finalize", syscall.EFAULT)
	}
	binary.BigEndian.PutUint32(h.cmd[20:24], tsn)
	binary.BigEndian.PutUint32(h.cmd[24:28], hsn)
	binary.BigEndian.PutUint32(h.cmd[52:56], uint32(h.pos-headerLength))
	for h.pos%4 != 0 {
		if h.pos >= ioBufferLength {
			return errnoError("cmd_finalize", syscall.ERANGE)
		}
		h.cmd[h.pos] = 0
		h.pos++
	}
	binary.BigEndian.PutUint32(h.cmd[40:44], uint32(h.pos-comPacketLength-packetLength))
	binary.BigEndian.PutUint32(h.cmd[16:20], uint32(h.pos-comPacketLength))
	return nil
}

// buildErr turns the sticky builder error into the step's error.
func (h *Host) buildErr(step string) error {
	if h.berr != 0 {
		en := h.berr
		h.berr = 0
		return errnoError(step, en)
	}
	return nil
}

// lockingRangeUID is build_locking_range: the global range for 0, else
// Locking_RangeN.
func lockingRangeUID(lr uint8) uid {
	u := uidGlobalRange
	if lr == 0 {
		return u
	}
	u[5] = lockingRangeNonGlobal
	u[7] = lr
	return u
}

// lockingUserUID is build_locking_user: the User authority lr+1.
func lockingUserUID(lr uint8) uid {
	u := uidUser1
	u[7] = lr + 1
	return u
}
