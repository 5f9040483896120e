package sed

import (
	"encoding/binary"
	"sync"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
)

// exchangeTracker passes IF-SEND and IF-RECV through to a drive and keeps,
// per ComID, whether a response can still be waiting in the TPer. That
// lets it answer go-tcg-storage's check before every method call, an
// IF-RECV that must come back empty ("nothing pending"), without a round
// trip to the drive when nothing can be pending: after an IF-RECV that
// returned a whole response, or nothing, with nothing outstanding, and
// after a successful stack reset. Over NVMe/TCP in a QEMU guest each
// round trip costs 1-3 ms and the check is a third of an unlock's
// commands.
//
// Anything else (the first exchange, an IF-SEND, a response not ready yet,
// an error) makes the next IF-RECV go to the drive. sed's own code never
// receives without having sent, so only the library's check is answered
// locally; it never hides a response of this Drive's own commands.
type exchangeTracker struct {
	core.DriveIntf

	mu   sync.Mutex
	idle map[uint16]bool // ComID -> no response can be pending
}

func newExchangeTracker(intf core.DriveIntf) *exchangeTracker {
	return &exchangeTracker{DriveIntf: intf, idle: map[uint16]bool{}}
}

// ComPacket header fields (TCG Core 3.2.3.2): reserved (4), ComID (2),
// ComID extension (2), OutstandingData (4), MinTransfer (4), Length (4).
const (
	comPacketHdrLen   = 20
	comPacketComID    = 4
	comPacketOutstand = 8
)

// comIDRequestStackReset is the STACK_RESET request code of protocol 2
// (TCG Core 3.3.4.7).
const comIDRequestStackReset = 2

func (x *exchangeTracker) set(comID uint16, idle bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.idle[comID] = idle
}

// IFSend implements core.DriveIntf.
func (x *exchangeTracker) IFSend(proto drive.SecurityProtocol, sps uint16, data []byte) error {
	x.set(sps, false)
	return x.DriveIntf.IFSend(proto, sps, data)
}

// IFRecv implements core.DriveIntf.
func (x *exchangeTracker) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	isComPacket := proto == drive.SecurityProtocolTCGManagement && sps != uint16(core.ComIDDiscoveryL0)
	if isComPacket && len(*data) >= comPacketHdrLen {
		x.mu.Lock()
		idle := x.idle[sps]
		x.mu.Unlock()
		if idle {
			// An empty ComPacket: no payload, nothing outstanding.
			clear((*data)[:min(len(*data), 64)])
			binary.BigEndian.PutUint16((*data)[comPacketComID:], sps)
			return nil
		}
	}
	x.set(sps, false)
	if err := x.DriveIntf.IFRecv(proto, sps, data); err != nil {
		return err
	}
	b := *data
	switch {
	case isComPacket && len(b) >= comPacketHdrLen:
		// A whole response, or nothing at all, leaves nothing pending;
		// OutstandingData set (not ready, or too big) leaves it pending.
		if binary.BigEndian.Uint32(b[comPacketOutstand:]) == 0 {
			x.set(sps, true)
		}
	case proto == drive.SecurityProtocolTCGTPer && len(b) >= 16:
		// HANDLE_COMID_RESPONSE: ComID (2), extension (2), request code
		// (4), reserved (2), available data length (2), data; a stack
		// reset's data is its status, 0 for success.
		if binary.BigEndian.Uint32(b[4:]) == comIDRequestStackReset &&
			binary.BigEndian.Uint16(b[10:]) >= 4 && binary.BigEndian.Uint32(b[12:]) == 0 {
			x.set(binary.BigEndian.Uint16(b[0:]), true)
		}
	}
	return nil
}
