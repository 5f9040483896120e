package opalsim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
)

// Communication limits this TPer reports in Properties.
const (
	baseComID        = 0x07FE
	maxComPacket     = 65536
	maxPacket        = maxComPacket - 20
	maxIndToken      = maxPacket - 24 - 12
	initialHostComPk = 2048 // Opal initial host MaxComPacketSize assumption
	dynComIDFirst    = 0x1000
	maxDynComIDs     = 16
	comPacketHdr     = 20
	packetHdr        = 24
	subPacketHdr     = 12
)

// Interface-level errors (the transport maps them to its own status).
var (
	// ErrInvalidComID reports an IF-SEND/IF-RECV to an inactive or unsupported ComID.
	ErrInvalidComID = errors.New("opalsim: inactive or unsupported ComID")
	// ErrInvalidProtocol reports an unsupported security protocol.
	ErrInvalidProtocol = errors.New("opalsim: unsupported security protocol")
	// ErrTransferLength reports an IF-SEND longer than MaxComPacketSize.
	ErrTransferLength = errors.New("opalsim: invalid transfer length")
)

// comState is one ComID's synchronous protocol stack.
type comState struct {
	ext         uint16
	dynamic     bool
	associated  bool
	hostMaxComP int
	pending     []byte // protocol 1 response awaiting IF-RECV
	serial      uint64 // allocation order for recycling
}

func newComState(dynamic bool) *comState {
	return &comState{dynamic: dynamic, associated: !dynamic, hostMaxComP: initialHostComPk}
}

// IFSend delivers an IF-SEND (go-tcg-storage's drive interface).
func (d *Drive) IFSend(proto drive.SecurityProtocol, sps uint16, data []byte) error {
	if proto < 0 || proto > 0xFF {
		return ErrInvalidProtocol
	}
	return d.SecuritySend(uint8(proto), sps, data)
}

// IFRecv performs an IF-RECV into *data, never beyond len(*data); the rest
// of the buffer is zeroed.
func (d *Drive) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	if data == nil {
		return errors.New("opalsim: IF-RECV with nil buffer")
	}
	if proto < 0 || proto > 0xFF {
		return ErrInvalidProtocol
	}
	buf := *data
	out, err := d.SecurityRecv(uint8(proto), sps, len(buf))
	if err != nil {
		return err
	}
	n := copy(buf, out)
	clear(buf[n:])
	return nil
}

// Identify reports the drive identity as go-tcg-storage expects it.
func (d *Drive) Identify() (*drive.Identity, error) {
	return &drive.Identity{Protocol: "NVMe", SerialNumber: d.st.Serial, Model: d.st.Model, Firmware: d.st.Firmware}, nil
}

// SerialNumber returns the serial number.
func (d *Drive) SerialNumber() ([]byte, error) { return []byte(d.st.Serial), nil }

// SecuritySend carries an IF-SEND for protocol proto and ComID spsp.
func (d *Drive) SecuritySend(proto uint8, spsp uint16, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	switch proto {
	case 1:
		cs, ok := d.comids[spsp]
		if !ok {
			return fmt.Errorf("IF-SEND protocol 1 ComID 0x%04X: %w", spsp, ErrInvalidComID)
		}
		if len(data) > maxComPacket+512 {
			return fmt.Errorf("IF-SEND of %d bytes: %w", len(data), ErrTransferLength)
		}
		d.handleComPacket(spsp, cs, data)
		return nil
	case 2:
		return d.comIDRequest(spsp, data)
	default:
		return fmt.Errorf("IF-SEND protocol 0x%02X: %w", proto, ErrInvalidProtocol)
	}
}

// SecurityRecv returns the response for proto/spsp, at most alloc bytes.
func (d *Drive) SecurityRecv(proto uint8, spsp uint16, alloc int) ([]byte, error) {
	if alloc < 0 {
		return nil, fmt.Errorf("IF-RECV: negative allocation length %d", alloc)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var out []byte
	switch proto {
	case 0:
		switch spsp {
		case 0:
			// Supported security protocol list (SPC-4): 6 reserved, length, list.
			out = []byte{0, 0, 0, 0, 0, 0, 0, 3, 0x00, 0x01, 0x02}
		case 1:
			// Certificate data: none.
			out = []byte{0, 0, 0, 0}
		default:
			return nil, fmt.Errorf("IF-RECV protocol 0 SP specific 0x%04X: %w", spsp, ErrInvalidComID)
		}
	case 1:
		if spsp == 1 {
			out = d.level0()
			break
		}
		cs, ok := d.comids[spsp]
		if !ok {
			return nil, fmt.Errorf("IF-RECV protocol 1 ComID 0x%04X: %w", spsp, ErrInvalidComID)
		}
		out = d.takeResponse(spsp, cs, alloc)
	case 2:
		var err error
		out, err = d.comIDResponse(spsp)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("IF-RECV protocol 0x%02X: %w", proto, ErrInvalidProtocol)
	}
	if len(out) > alloc {
		out = out[:alloc]
	}
	return out, nil
}

// takeResponse hands the pending ComPacket to the host if it fits in alloc;
// otherwise it answers with an empty ComPacket whose OutstandingData and
// MinTransfer give the size needed (Core 3.3.10.4), keeping the response.
func (d *Drive) takeResponse(comID uint16, cs *comState, alloc int) []byte {
	if len(cs.pending) == 0 {
		return comPacketHeader(comID, cs.ext, 0, 0, 0)
	}
	if len(cs.pending) <= alloc {
		out := cs.pending
		cs.pending = nil
		return out
	}
	n := uint32(len(cs.pending))
	return comPacketHeader(comID, cs.ext, n, n, 0)
}

func comPacketHeader(comID, ext uint16, outstanding, minTransfer, length uint32) []byte {
	h := make([]byte, comPacketHdr)
	binary.BigEndian.PutUint16(h[4:], comID)
	binary.BigEndian.PutUint16(h[6:], ext)
	binary.BigEndian.PutUint32(h[8:], outstanding)
	binary.BigEndian.PutUint32(h[12:], minTransfer)
	binary.BigEndian.PutUint32(h[16:], length)
	return h
}

// buildComPacket frames payload in one Packet and one data Subpacket.
func buildComPacket(comID, ext uint16, tsn, hsn uint32, payload []byte) []byte {
	pad := (4 - len(payload)%4) % 4
	subLen := subPacketHdr + len(payload) + pad
	pktLen := packetHdr + subLen
	out := comPacketHeader(comID, ext, 0, 0, uint32(pktLen))
	ph := make([]byte, packetHdr)
	binary.BigEndian.PutUint32(ph[0:], tsn)
	binary.BigEndian.PutUint32(ph[4:], hsn)
	binary.BigEndian.PutUint32(ph[20:], uint32(subLen))
	out = append(out, ph...)
	sh := make([]byte, subPacketHdr)
	binary.BigEndian.PutUint32(sh[8:], uint32(len(payload)))
	out = append(out, sh...)
	out = append(out, payload...)
	return append(out, make([]byte, pad)...)
}

// handleComPacket parses one ComPacket. Framing errors discard the payload
// (Opal 3.3.4.1.3): the host then finds no response.
func (d *Drive) handleComPacket(comID uint16, cs *comState, data []byte) {
	cs.pending = nil
	if len(data) < comPacketHdr+packetHdr+subPacketHdr {
		return
	}
	if binary.BigEndian.Uint16(data[4:]) != comID || binary.BigEndian.Uint16(data[6:]) != cs.ext {
		return
	}
	cpLen := binary.BigEndian.Uint32(data[16:])
	if cpLen < packetHdr+subPacketHdr || uint64(cpLen) > uint64(len(data)-comPacketHdr) || cpLen > maxComPacket-comPacketHdr {
		return
	}
	pkt := data[comPacketHdr : comPacketHdr+int(cpLen)]
	tsn := binary.BigEndian.Uint32(pkt[0:])
	hsn := binary.BigEndian.Uint32(pkt[4:])
	pLen := binary.BigEndian.Uint32(pkt[20:])
	if pLen < subPacketHdr || uint64(pLen) > uint64(len(pkt)-packetHdr) {
		return
	}
	sub := pkt[packetHdr : packetHdr+int(pLen)]
	kind := binary.BigEndian.Uint16(sub[6:])
	sLen := binary.BigEndian.Uint32(sub[8:])
	if kind != 0 || uint64(sLen) > uint64(len(sub)-subPacketHdr) {
		return
	}
	payload := sub[subPacketHdr : subPacketHdr+int(sLen)]
	cs.associated = true
	var resp []byte
	var rtsn, rhsn uint32
	if tsn == 0 && hsn == 0 {
		resp = d.sessionManager(comID, cs, payload)
	} else {
		s, ok := d.sessions[tsn]
		if !ok || s.hsn != hsn || s.comID != comID {
			return // no such session: discard
		}
		resp, rtsn, rhsn = d.sessionPayload(s, payload)
	}
	if resp == nil {
		return
	}
	limit := min(cs.hostMaxComP, maxComPacket)
	if comPacketHdr+packetHdr+subPacketHdr+len(resp)+(4-len(resp)%4)%4 > limit {
		resp = overflowResponse(resp)
	}
	cs.pending = buildComPacket(comID, cs.ext, rtsn, rhsn, resp)
}

// overflowResponse replaces a method response that does not fit the host's
// buffer with an empty result and RESPONSE_OVERFLOW (Opal 3.3.1).
func overflowResponse(resp []byte) []byte {
	if len(resp) > 0 && resp[0] == 0xF8 && len(resp) >= 19 {
		// session manager reply: keep the call header
		e := newReply()
		e.Token(0xF8).ByteString(resp[2:10]).ByteString(resp[11:19]).StartList().EndList()
		return finishStatus(e, stResponseOverflow)
	}
	return methodReply(stResponseOverflow, nil)
}

// level0 builds the Level 0 Discovery response from live state.
func (d *Drive) level0() []byte {
	st := d.st
	ls := &st.Locking
	feat := func(code uint16, ver byte, body []byte) []byte {
		h := []byte{byte(code >> 8), byte(code), ver << 4, byte(len(body))}
		return append(h, body...)
	}
	var body []byte
	// TPer: Sync, Streaming, ComID management.
	body = append(body, feat(0x0001, 1, append([]byte{0x01 | 0x10 | 0x40}, make([]byte, 11)...))...)
	// Locking.
	var lf byte = 0x01 | 0x08 // supported, media encryption
	if ls.LifeCycle == lifeManufactured {
		lf |= 0x02
		for r := range ls.Ranges {
			if ls.Ranges[r].readLocked() || ls.Ranges[r].writeLocked() {
				lf |= 0x04
			}
		}
		if ls.MBREnable {
			lf |= 0x10
		}
		if ls.MBRDone {
			lf |= 0x20
		}
	}
	body = append(body, feat(0x0002, 1, append([]byte{lf}, make([]byte, 11)...))...)
	// Geometry: no alignment required, granularity 1 block, lowest aligned LBA 0.
	g := make([]byte, 28)
	binary.BigEndian.PutUint32(g[8:], uint32(st.BlockSize))
	binary.BigEndian.PutUint64(g[12:], 1)
	body = append(body, feat(0x0003, 1, g)...)
	// DataStore: one table.
	ds := make([]byte, 12)
	binary.BigEndian.PutUint16(ds[2:], 1)
	binary.BigEndian.PutUint32(ds[4:], uint32(st.DSSize))
	binary.BigEndian.PutUint32(ds[8:], 1)
	body = append(body, feat(0x0202, 1, ds)...)
	// Opal SSC V2.
	o := make([]byte, 16)
	binary.BigEndian.PutUint16(o[0:], baseComID)
	binary.BigEndian.PutUint16(o[2:], 1)
	o[4] = 0 // range crossing allowed
	binary.BigEndian.PutUint16(o[5:], numAdmins)
	binary.BigEndian.PutUint16(o[7:], numUsers)
	o[9] = 0  // initial C_PIN_SID = MSID
	o[10] = 0 // C_PIN_SID becomes MSID upon TPer revert
	body = append(body, feat(0x0203, 2, o)...)

	hdr := make([]byte, 48)
	binary.BigEndian.PutUint32(hdr[0:], uint32(len(body)+44))
	binary.BigEndian.PutUint16(hdr[4:], 0)
	binary.BigEndian.PutUint16(hdr[6:], 1)
	copy(hdr[16:], []byte(strings.ToUpper("opalsim")))
	return append(hdr, body...)
}
