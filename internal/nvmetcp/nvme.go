package nvmetcp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/sedboot/sedboot/internal/blockdev"
)

const (
	sqeSize = 64 // submission queue entry
	cqeSize = 16 // completion queue entry
)

// Admin command opcodes (NVMe Base Specification, figure "Opcodes for Admin Commands").
const (
	adminGetLogPage   = 0x02
	adminIdentify     = 0x06
	adminAbort        = 0x08
	adminSetFeatures  = 0x09
	adminGetFeatures  = 0x0A
	adminAsyncEvent   = 0x0C
	adminKeepAlive    = 0x18
	adminSecuritySend = 0x81
	adminSecurityRecv = 0x82
	opFabrics         = 0x7F
)

// NVM command set I/O opcodes.
const (
	ioFlush       = 0x00
	ioWrite       = 0x01
	ioRead        = 0x02
	ioWriteZeroes = 0x08
)

// Fabrics command types (FCTYPE).
const (
	fcPropertySet = 0x00
	fcConnect     = 0x01
	fcPropertyGet = 0x04
	fcDisconnect  = 0x08
)

// Status values are (SCT << 8) | SC, as the Linux kernel spells them.
const (
	scSuccess           = 0x000
	scInvalidOpcode     = 0x001
	scInvalidField      = 0x002
	scDataXferError     = 0x004
	scInternal          = 0x006
	scAbortReq          = 0x007
	scInvalidNS         = 0x00B
	scCmdSeqError       = 0x00C
	scSGLInvalidData    = 0x00F // Data SGL Length Invalid
	scSGLInvalidType    = 0x011 // SGL Descriptor Type Invalid
	scSGLInvalidOffset  = 0x016
	scTransientTransErr = 0x022
	scLBARange          = 0x080
	scNSNotReady        = 0x082
	// command specific (SCT 1)
	scAERLimit           = 0x105
	scInvalidLogPage     = 0x109
	scFeatureNotSavable  = 0x10D
	scConnectFormat      = 0x180
	scConnectCtrlBusy    = 0x181
	scConnectInvalid     = 0x182
	scConnectRestartDisc = 0x183
	scConnectInvalidHost = 0x184
	// media and data integrity errors (SCT 2)
	scWriteFault   = 0x280
	scReadError    = 0x281
	scAccessDenied = 0x286
	// dnr is the Do Not Retry bit in the completion's status field.
	dnr = 0x4000
)

// SGL descriptor types used by NVMe/TCP (byte 15 of the descriptor).
const (
	sglDataOffset   = 0x01 // data block, offset: in-capsule data
	sglTransportA   = 0x5A // transport data block: data moves by R2T/C2HData
	sglTransportNil = 0x50 // transport data block with no address (no data)
)

// command is one submission queue entry.
type command [sqeSize]byte

func (c *command) opcode() uint8    { return c[0] }
func (c *command) flags() uint8     { return c[1] }
func (c *command) cid() uint16      { return binary.LittleEndian.Uint16(c[2:]) }
func (c *command) nsid() uint32     { return binary.LittleEndian.Uint32(c[4:]) }
func (c *command) fctype() uint8    { return c[4] }
func (c *command) cdw(n int) uint32 { return binary.LittleEndian.Uint32(c[4*n:]) }
func (c *command) sglAddr() uint64  { return binary.LittleEndian.Uint64(c[24:]) }
func (c *command) sglLen() uint32   { return binary.LittleEndian.Uint32(c[32:]) }
func (c *command) sglType() uint8   { return c[39] }

// dataDirection returns the direction of data transfer encoded in the low
// two bits of the opcode (or of FCTYPE for fabrics commands): 0 none,
// 1 host to controller, 2 controller to host, 3 bidirectional.
func (c *command) dataDirection() int {
	if c.opcode() == opFabrics {
		return int(c.fctype() & 3)
	}
	return int(c.opcode() & 3)
}

func (c *command) String() string {
	if c.opcode() == opFabrics {
		return fmt.Sprintf("fabrics fctype %#x cid %d", c.fctype(), c.cid())
	}
	return fmt.Sprintf("opcode %#02x cid %d nsid %d", c.opcode(), c.cid(), c.nsid())
}

// completion is a completion queue entry under construction.
type completion struct {
	result uint64
	status uint16 // (SCT << 8) | SC, plus dnr
}

func (cq *completion) encode(b []byte, sqhd, sqid, cid uint16) {
	binary.LittleEndian.PutUint64(b[0:], cq.result)
	binary.LittleEndian.PutUint16(b[8:], sqhd)
	binary.LittleEndian.PutUint16(b[10:], sqid)
	binary.LittleEndian.PutUint16(b[12:], cid)
	st := cq.status & 0x7FF
	field := st << 1
	if cq.status&dnr != 0 {
		field |= 0x8000
	}
	binary.LittleEndian.PutUint16(b[14:], field)
}

// fail returns a completion with status sc and Do Not Retry set.
func fail(sc uint16) completion { return completion{status: sc | dnr} }

// ok returns a successful completion with result dw0.
func ok(result uint64) completion { return completion{result: result} }

// deviceStatus maps a block device error to an NVMe status.
func deviceStatus(err error, write bool) uint16 {
	switch {
	case err == nil:
		return scSuccess
	case errors.Is(err, blockdev.ErrLocked):
		return scAccessDenied | dnr
	case errors.Is(err, blockdev.ErrOutOfRange):
		return scLBARange | dnr
	case write:
		return scWriteFault | dnr
	default:
		return scReadError | dnr
	}
}

// putString copies s into b padded with spaces, as Identify ASCII fields are.
func putString(b []byte, s string) {
	for i := range b {
		if i < len(s) && s[i] >= 0x20 && s[i] < 0x7F {
			b[i] = s[i]
		} else if i < len(s) {
			b[i] = '?'
		} else {
			b[i] = ' '
		}
	}
}
