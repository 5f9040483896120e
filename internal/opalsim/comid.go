package opalsim

import (
	"encoding/binary"
	"fmt"
)

// ComID management request codes (Core 3.3.4.3).
const (
	reqVerifyComIDValid = 1
	reqStackReset       = 2
)

// ComID states reported by VERIFY_COMID_VALID.
const (
	comIDInvalid    = 0
	comIDInactive   = 1
	comIDIssued     = 2
	comIDAssociated = 3
)

// allocComID issues a dynamic ComID (GET_COMID), recycling the oldest idle
// one when the pool is full.
func (d *Drive) allocComID() (uint16, uint16) {
	dyn := 0
	var oldest uint16
	var oldestSerial uint64 = ^uint64(0)
	for id, cs := range d.comids {
		if !cs.dynamic {
			continue
		}
		dyn++
		if !d.comIDBusy(id) && cs.serial < oldestSerial {
			oldest, oldestSerial = id, cs.serial
		}
	}
	if dyn >= maxDynComIDs && oldestSerial != ^uint64(0) {
		delete(d.comids, oldest)
	}
	for {
		d.nextDyn++
		id := dynComIDFirst + d.nextDyn%0x1000
		if _, used := d.comids[id]; used {
			continue
		}
		cs := newComState(true)
		cs.ext = uint16(d.nextDyn>>12) + 1
		cs.serial = uint64(d.nextDyn)
		d.comids[id] = cs
		return id, cs.ext
	}
}

func (d *Drive) comIDBusy(id uint16) bool {
	for _, s := range d.sessions {
		if s.comID == id {
			return true
		}
	}
	return false
}

// comIDRequest handles an IF-SEND on protocol 2.
func (d *Drive) comIDRequest(comID uint16, data []byte) error {
	// ComID 4 is TPER_RESET, disabled here (TPerInfo ProgrammaticResetEnable
	// is False): the command is refused at the interface level.
	if comID == 0 || comID == 1 || comID == 4 {
		return fmt.Errorf("IF-SEND protocol 2 ComID 0x%04X: %w", comID, ErrInvalidComID)
	}
	if len(data) < 8 {
		return fmt.Errorf("IF-SEND protocol 2: %d-byte request: %w", len(data), ErrTransferLength)
	}
	if len(data) > 2048 {
		return fmt.Errorf("IF-SEND protocol 2: %d-byte request: %w", len(data), ErrTransferLength)
	}
	if d.p2 == nil {
		d.p2 = map[uint16][]byte{}
	}
	reqID := binary.BigEndian.Uint16(data[0:])
	ext := binary.BigEndian.Uint16(data[2:])
	code := binary.BigEndian.Uint32(data[4:])
	cs, known := d.comids[comID]
	valid := known && reqID == comID && cs.ext == ext
	resp := make([]byte, 12)
	binary.BigEndian.PutUint16(resp[0:], reqID)
	binary.BigEndian.PutUint16(resp[2:], ext)
	binary.BigEndian.PutUint32(resp[4:], code)
	switch code {
	case reqVerifyComIDValid:
		state := uint32(comIDInvalid)
		if valid {
			switch {
			case !cs.dynamic || cs.associated:
				state = comIDAssociated
			default:
				state = comIDIssued
			}
		}
		body := make([]byte, 4)
		binary.BigEndian.PutUint32(body, state)
		if valid && cs.dynamic {
			body = append(body, make([]byte, 30)...) // alloc/expiry/current times: not tracked
		}
		binary.BigEndian.PutUint16(resp[10:], uint16(len(body)))
		resp = append(resp, body...)
	case reqStackReset:
		body := []byte{0, 0, 0, 1} // failure
		if valid {
			d.stackReset(comID, cs)
			body = []byte{0, 0, 0, 0}
		}
		binary.BigEndian.PutUint16(resp[10:], 4)
		resp = append(resp, body...)
	default:
		// Unknown request: answer with no data.
	}
	d.p2[comID] = resp
	return nil
}

// stackReset aborts every session on the ComID and resets its protocol
// stack and host properties (Core 3.3.4.7.5).
func (d *Drive) stackReset(comID uint16, cs *comState) {
	for tsn, s := range d.sessions {
		if s.comID == comID {
			s.wipe()
			delete(d.sessions, tsn)
		}
	}
	cs.pending = nil
	cs.hostMaxComP = initialHostComPk
}

// comIDResponse answers an IF-RECV on protocol 2.
func (d *Drive) comIDResponse(comID uint16) ([]byte, error) {
	if comID == 0 {
		id, ext := d.allocComID()
		out := make([]byte, 4)
		binary.BigEndian.PutUint16(out[0:], id)
		binary.BigEndian.PutUint16(out[2:], ext)
		return out, nil
	}
	if r, ok := d.p2[comID]; ok {
		delete(d.p2, comID)
		return r, nil
	}
	// No request pending: empty response.
	out := make([]byte, 12)
	binary.BigEndian.PutUint16(out[0:], comID)
	if cs, ok := d.comids[comID]; ok {
		binary.BigEndian.PutUint16(out[2:], cs.ext)
	}
	return out, nil
}
