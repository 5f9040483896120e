package kernelflows

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// Status flags reported by GetStatus (OPAL_FL_* in the uapi header).
const (
	FlagSupported        = 0x00000001
	FlagLockingSupported = 0x00000002
	FlagLockingEnabled   = 0x00000004
	FlagLocked           = 0x00000008
	FlagMBREnabled       = 0x00000010
	FlagMBRDone          = 0x00000020
	FlagSUMSupported     = 0x00000040
)

// Status is struct opal_status.
type Status struct {
	Flags uint32
}

// Geometry is struct opal_geometry: the Geometry feature descriptor as the
// kernel keeps it.
type Geometry struct {
	Align                bool
	LogicalBlockSize     uint32
	AlignmentGranularity uint64
	LowestAlignedLBA     uint64
}

// discovery0 is opal_discovery0: read Level 0 discovery on ComID 1 into
// h.resp and digest it. out, when not nil, receives the raw data as
// IOC_OPAL_DISCOVERY returns it; the returned size is the header's length
// field.
func (h *Host) discovery0(out []byte) (int, error) {
	clear(h.resp[:])
	h.comid = discoveryComID
	if err := h.recvCmd(); err != nil {
		return 0, err
	}
	return h.discovery0End(out)
}

// discovery0End is opal_discovery0_end.
func (h *Host) discovery0End(out []byte) (int, error) {
	hlen := binary.BigEndian.Uint32(h.resp[0:4])
	h.flags &= FlagSupported
	if hlen > ioBufferLength-d0HeaderLength {
		return 0, fmt.Errorf("opal_discovery0: discovery length %d overflows the buffer: %w", hlen, syscall.EFAULT)
	}
	if out != nil {
		// The kernel copies min(size, hlen) bytes from the start of the
		// response: hlen counts the bytes after the length field, so the
		// copy stops four bytes short of the data the TPer returned.
		copy(out, h.resp[:min(len(out), int(hlen))])
	}

	foundComID, supported, singleUser := false, true, false
	var comid uint16
	epos := int(hlen) // end, as the kernel computes it: start + hlen
	cpos := d0HeaderLength
	for cpos < epos && supported {
		if cpos+4 > ioBufferLength {
			return 0, fmt.Errorf("opal_discovery0: feature header at %d past the buffer: %w", cpos, ErrKernelUndefined)
		}
		code := binary.BigEndian.Uint16(h.resp[cpos : cpos+2])
		length := int(h.resp[cpos+3])
		body := cpos + 4
		need := func(n int) error {
			if body+n > ioBufferLength {
				return fmt.Errorf("opal_discovery0: feature 0x%04x at %d past the buffer: %w", code, cpos, ErrKernelUndefined)
			}
			return nil
		}
		switch {
		case code == featTPer:
			if err := need(1); err != nil {
				return 0, err
			}
			supported = h.resp[body]&tperSyncSupported != 0
		case code == featSingleUser:
			if err := need(4); err != nil {
				return 0, err
			}
			singleUser = binary.BigEndian.Uint32(h.resp[body:body+4]) != 0
			if singleUser {
				h.flags |= FlagSUMSupported
			}
		case code == featGeometry:
			// check_geometry is handed the descriptor including its header.
			if err := need(28); err != nil {
				return 0, err
			}
			h.alignRequired = h.resp[cpos+4] & 1
			h.logicalBlockSize = binary.BigEndian.Uint32(h.resp[cpos+12 : cpos+16])
			h.align = binary.BigEndian.Uint64(h.resp[cpos+16 : cpos+24])
			h.lowestLBA = binary.BigEndian.Uint64(h.resp[cpos+24 : cpos+32])
		case code == featLocking:
			if err := need(1); err != nil {
				return 0, err
			}
			f := h.resp[body]
			if f&lockingSupported != 0 {
				h.flags |= FlagLockingSupported
			}
			if f&lockingEnabled != 0 {
				h.flags |= FlagLockingEnabled
			}
			if f&lockingLocked != 0 {
				h.flags |= FlagLocked
			}
			if f&lockingMBREnabled != 0 {
				h.flags |= FlagMBREnabled
			}
			if f&lockingMBRDone != 0 {
				h.flags |= FlagMBRDone
			}
		case code == featEnterprise || code == featDataStore:
			// ignored, as in the kernel
		case code == featOpalV100 || code == featOpalV200:
			if err := need(2); err != nil {
				return 0, err
			}
			comid = binary.BigEndian.Uint16(h.resp[body : body+2])
			foundComID = true
		case code >= featVendorFirst:
			// vendor specific
		}
		cpos += length + 4
	}
	if !supported {
		return 0, fmt.Errorf("opal_discovery0: TPer does not support synchronous protocol: %w", syscall.EOPNOTSUPP)
	}
	if !foundComID {
		return 0, fmt.Errorf("opal_discovery0: no Opal SSC feature with a base ComID: %w", syscall.EOPNOTSUPP)
	}
	h.comid = comid
	return int(hlen), nil
}
