package opalsim

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"sync"
	"testing"

	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/opalsim/token"
)

var (
	fuzzOnce     sync.Once
	fuzzTemplate []byte // JSON state of an owned, activated, locked drive
	fuzzPSID     []byte
)

const fuzzAdminPIN = "fuzz-admin-credential"

// fuzzDrive returns a fresh in-memory copy of the template drive.
func fuzzDrive(t testing.TB) *Drive {
	fuzzOnce.Do(func() {
		d, h, _ := func() (*Drive, *host, []byte) {
			d, err := NewMemory(Config{Blocks: 64, MBRSize: 8192, DataStoreSize: 8192, TryLimit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			h := newHost(t, d)
			pin := []byte(fuzzAdminPIN)
			h.takeOwnership(pin)
			h.activate(pin)
			h.configureGlobal(pin)
			return d, h, pin
		}()
		_ = h
		d.mu.Lock()
		b, err := json.Marshal(d.st)
		d.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		fuzzTemplate, fuzzPSID = b, d.PSID()
		d.Close()
	})
	st := &state{}
	if err := json.Unmarshal(fuzzTemplate, st); err != nil {
		t.Fatal(err)
	}
	if err := st.validate(); err != nil {
		t.Fatal(err)
	}
	d := &Drive{st: st, media: newMemBacking(), psid: fuzzPSID}
	if err := d.powerOn(); err != nil {
		t.Fatal(err)
	}
	return d
}

func seedPackets() [][]byte {
	anybody := call(uidSMU, mStartSession, func(e *token.Encoder) { e.Uint(1).ByteString(spLocking[:]).Uint(1) })
	getMSID := call(cpinMSID, mGet, getCols(3, 3))
	setRL := call(lockingRangeUID(0), mSet, setValues(col(7, u(0))))
	props := call(uidSMU, mProperties, func(e *token.Encoder) {
		e.Token(token.StartName).Uint(0).StartList().Token(token.StartName).ByteString([]byte("MaxComPacketSize")).Uint(4096).Token(token.EndName).EndList().Token(token.EndName)
	})
	return [][]byte{anybody, getMSID, setRL, props, {0xFA}, {0xF8, 0xF0, 0xF1}}
}

// FuzzIFSend feeds arbitrary IF-SEND payloads (raw, or framed for the
// session manager or an open Anybody session), then IF-RECV, and checks
// that nothing panics and no authority or unlock leaks out of the input.
func FuzzIFSend(f *testing.F) {
	for _, p := range seedPackets() {
		f.Add(byte(0), p)
		f.Add(byte(1), p)
		f.Add(byte(2), buildComPacket(baseComID, 0, 0, 0, p))
	}
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		d := fuzzDrive(t)
		defer d.Close()
		w := newWire(t, d)
		switch mode % 4 {
		case 0: // session manager payload
			_ = d.SecuritySend(1, baseComID, buildComPacket(baseComID, 0, 0, 0, data))
		case 1: // inside an Anybody session on the Locking SP
			if st := w.startSession(spLocking, nil, nil); st != 0 {
				t.Fatalf("anybody session: 0x%02X", st)
			}
			_ = d.SecuritySend(1, baseComID, buildComPacket(baseComID, 0, w.tsn, w.hsn, data))
		case 2: // raw IF-SEND, protocol 1
			_ = d.SecuritySend(1, baseComID, data)
		case 3: // raw IF-SEND, protocol 2 and a GET_COMID
			_ = d.SecuritySend(2, baseComID, data)
			_, _ = d.SecurityRecv(2, 0, 4)
		}
		alloc := 2048
		if len(data) > 0 {
			alloc = int(data[0]) * 16
		}
		r1, err := d.SecurityRecv(1, baseComID, alloc)
		if err == nil && len(r1) > alloc {
			t.Fatalf("response of %d bytes for a %d-byte allocation", len(r1), alloc)
		}
		_, _ = d.SecurityRecv(2, baseComID, 512)
		// Nothing the input did may leave the global range unlocked or a
		// fresh session authorized beyond Anybody.
		if err := d.ReadBlocks(0, make([]byte, 512)); !errors.Is(err, blockdev.ErrLocked) {
			t.Fatalf("global range readable after fuzz input: %v", err)
		}
		d.mu.Lock()
		for _, s := range d.sessions {
			for a := range s.auths {
				if a != authAnybody {
					t.Fatalf("session authenticated as %v", a)
				}
			}
		}
		d.stackReset(baseComID, d.comids[baseComID])
		d.mu.Unlock()
		w2 := newWire(t, d)
		if st := w2.startSession(spLocking, nil, nil); st != 0 {
			t.Fatalf("fresh anybody session: 0x%02X", st)
		}
		if _, st := w2.method(cpinAdminN(1), mGet, getCols(6, 6)); st != stNotAuthorized {
			t.Fatalf("fresh session reads Admin1 tries: 0x%02X", st)
		}
		w2.endSession()
	})
}

func TestBadInput(t *testing.T) {
	d := fuzzDrive(t)
	defer d.Close()
	if err := d.SecuritySend(1, 0x0123, make([]byte, 64)); !errors.Is(err, ErrInvalidComID) {
		t.Fatalf("wrong ComID: %v", err)
	}
	if _, err := d.SecurityRecv(1, 0x0123, 64); !errors.Is(err, ErrInvalidComID) {
		t.Fatalf("wrong ComID recv: %v", err)
	}
	if err := d.SecuritySend(7, baseComID, make([]byte, 64)); !errors.Is(err, ErrInvalidProtocol) {
		t.Fatalf("protocol 7: %v", err)
	}
	if err := d.SecuritySend(1, baseComID, make([]byte, maxComPacket+4096)); !errors.Is(err, ErrTransferLength) {
		t.Fatalf("oversize: %v", err)
	}
	w := newWire(t, d)
	// Malformed ComPacket (ComID in the header differs): discarded, no response.
	bad := buildComPacket(0x0800, 0, 0, 0, call(uidSMU, mStartSession, nil))
	if err := d.SecuritySend(1, baseComID, bad); err != nil {
		t.Fatal(err)
	}
	r, _ := d.SecurityRecv(1, baseComID, 2048)
	if binary.BigEndian.Uint32(r[16:]) != 0 {
		t.Fatal("response to a ComPacket with the wrong ComID")
	}
	// StartSession to an unknown SP / with a bad parameter.
	if st := w.startSession(UID{1, 2, 3, 4, 5, 6, 7, 8}, nil, nil); st != stInvalidParameter {
		t.Fatalf("unknown SP: 0x%02X", st)
	}
	a := authAdminN(1)
	must(t, "admin session", w.startSession(spLocking, &a, []byte(fuzzAdminPIN)))
	// Unknown object and unknown method.
	if _, st := w.method(UID{0, 0, 0x77, 0, 0, 0, 0, 1}, mGet, getCols(0, 1)); st != stInvalidParameter {
		t.Fatalf("unknown UID: 0x%02X", st)
	}
	if _, st := w.method(lockingRangeUID(0), UID{0, 0, 0, 6, 0, 0, 0x77, 0x77}, nil); st != stInvalidParameter {
		t.Fatalf("unknown method: 0x%02X", st)
	}
	// Non-boolean value for a boolean column.
	if _, st := w.method(lockingRangeUID(0), mSet, setValues(col(7, u(2)))); st != stInvalidParameter {
		t.Fatalf("ReadLocked=2: 0x%02X", st)
	}
	// Second session: SP_BUSY past the session limit.
	w2 := newWire(t, d)
	if st := w2.startSession(spAdmin, nil, nil); st != stSPBusy {
		t.Fatalf("second session: 0x%02X", st)
	}
	// A response larger than the IF-RECV allocation: OutstandingData/MinTransfer.
	cp := buildComPacket(baseComID, 0, w.tsn, w.hsn, call(lockingRangeUID(0), mGet, getCols(0, 10)))
	if err := d.SecuritySend(1, baseComID, cp); err != nil {
		t.Fatal(err)
	}
	short, _ := d.SecurityRecv(1, baseComID, 40)
	need := binary.BigEndian.Uint32(short[8:])
	if len(short) > 40 || need <= 40 || binary.BigEndian.Uint32(short[12:]) != need || binary.BigEndian.Uint32(short[16:]) != 0 {
		t.Fatalf("short allocation: % X", short)
	}
	full, _ := d.SecurityRecv(1, baseComID, int(need))
	if len(full) != int(need) {
		t.Fatalf("full response %d bytes, want %d", len(full), need)
	}
	// Malformed tokens inside the session: the TPer aborts it and posts CloseSession.
	toks := w.exchange([]byte{0xF8, 0xA8, 1, 2})
	if len(toks) < 4 || toks[0].Kind != token.KindCall {
		t.Fatalf("no CloseSession after malformed tokens: %+v", toks)
	}
	if mid, _ := toks[2].Bytes(); UID(mid[:8]) != mCloseSession {
		t.Fatalf("reply method %x", mid)
	}
	if d.Status().OpenSessions != 0 {
		t.Fatal("session survived a streaming violation")
	}
}
