package opalsim

import (
	"encoding/binary"
	"testing"

	"github.com/sedboot/sedboot/internal/opalsim/token"
)

// wire is a minimal host that speaks the TCG wire format directly, the way
// the Linux kernel's sed-opal does: static base ComID, no Properties,
// 2048-byte buffers, HSN 0x41, authentication inside StartSession.
type wire struct {
	t        testing.TB
	d        *Drive
	comID    uint16
	hsn, tsn uint32
}

func newWire(t testing.TB, d *Drive) *wire { return &wire{t: t, d: d, comID: baseComID} }

func (w *wire) exchange(payload []byte) []token.Value {
	w.t.Helper()
	cp := buildComPacket(w.comID, 0, w.tsn, w.hsn, payload)
	buf := make([]byte, 2048)
	copy(buf, cp)
	if err := w.d.SecuritySend(1, w.comID, buf); err != nil {
		w.t.Fatalf("IF-SEND: %v", err)
	}
	resp, err := w.d.SecurityRecv(1, w.comID, 2048)
	if err != nil {
		w.t.Fatalf("IF-RECV: %v", err)
	}
	if len(resp) < 56 {
		return nil
	}
	sl := binary.BigEndian.Uint32(resp[52:])
	if binary.BigEndian.Uint32(resp[16:]) == 0 || int(sl) > len(resp)-56 {
		return nil
	}
	toks, err := token.Decode(resp[56 : 56+sl])
	if err != nil {
		w.t.Fatalf("response tokens: %v", err)
	}
	return toks
}

// status extracts the method status from a response token list.
func status(toks []token.Value) int {
	if len(toks) < 2 || toks[len(toks)-2].Kind != token.KindEndOfData || toks[len(toks)-1].Kind != token.KindList {
		return -1
	}
	st := toks[len(toks)-1].L
	if len(st) != 3 {
		return -1
	}
	v, _ := st[0].Uint()
	return int(v)
}

func call(iid, mid UID, args func(e *token.Encoder)) []byte {
	e := &token.Encoder{}
	e.Token(token.Call).ByteString(iid[:]).ByteString(mid[:]).StartList()
	if args != nil {
		args(e)
	}
	e.EndList().Token(token.EndOfData).StartList().Uint(0).Uint(0).Uint(0).EndList()
	return e.Bytes()
}

// startSession opens a session as the kernel does; auth nil = Anybody.
func (w *wire) startSession(sp UID, auth *UID, pin []byte) int {
	w.t.Helper()
	w.tsn, w.hsn = 0, 0
	toks := w.exchange(call(uidSMU, mStartSession, func(e *token.Encoder) {
		e.Uint(0x41).ByteString(sp[:]).Uint(1)
		if auth != nil {
			e.Token(token.StartName).Uint(0).ByteString(pin).Token(token.EndName)
			e.Token(token.StartName).Uint(3).ByteString(auth[:]).Token(token.EndName)
		}
	}))
	st := status(toks)
	if st == 0 {
		p := toks[3].L
		h, _ := p[0].Uint()
		tsn, _ := p[1].Uint()
		if h != 0x41 || tsn < 4096 {
			w.t.Fatalf("SyncSession HSN %d TSN %d", h, tsn)
		}
		w.hsn, w.tsn = uint32(h), uint32(tsn)
	}
	return st
}

func (w *wire) method(iid, mid UID, args func(e *token.Encoder)) ([]token.Value, int) {
	w.t.Helper()
	toks := w.exchange(call(iid, mid, args))
	st := status(toks)
	if st < 0 || len(toks) < 3 || toks[0].Kind != token.KindList {
		return toks, st
	}
	return toks[0].L, st
}

// endSession sends the end-of-session token followed by the junk the
// kernel appends (end list, end of data, status list).
func (w *wire) endSession() {
	w.t.Helper()
	toks := w.exchange([]byte{0xFA, 0xF1, 0xF9, 0xF0, 0, 0, 0, 0xF1})
	if len(toks) != 1 || toks[0].Kind != token.KindEndOfSession {
		w.t.Fatalf("end of session reply: %+v", toks)
	}
	w.tsn, w.hsn = 0, 0
}

func setValues(cols ...func(e *token.Encoder)) func(e *token.Encoder) {
	return func(e *token.Encoder) {
		e.Token(token.StartName).Uint(1).StartList()
		for _, c := range cols {
			c(e)
		}
		e.EndList().Token(token.EndName)
	}
}

func col(n uint64, v func(e *token.Encoder)) func(e *token.Encoder) {
	return func(e *token.Encoder) {
		e.Token(token.StartName).Uint(n)
		v(e)
		e.Token(token.EndName)
	}
}

func u(v uint64) func(e *token.Encoder) { return func(e *token.Encoder) { e.Uint(v) } }
func b(v []byte) func(e *token.Encoder) { return func(e *token.Encoder) { e.ByteString(v) } }
func getCols(c1, c2 uint64) func(e *token.Encoder) {
	return func(e *token.Encoder) {
		e.StartList().NamedUint(3, c1).NamedUint(4, c2).EndList()
	}
}

// expr builds a BooleanExpr "a1 a2 OR ..." as the kernel's add_user_to_lr does.
func expr(auths ...UID) func(e *token.Encoder) {
	return func(e *token.Encoder) {
		e.StartList()
		for i, a := range auths {
			e.Token(token.StartName).ByteString([]byte{0, 0, 0x0C, 0x05}).ByteString(a[:]).Token(token.EndName)
			if i > 0 {
				e.Token(token.StartName).ByteString([]byte{0, 0, 0x04, 0x0E}).Uint(1).Token(token.EndName)
			}
		}
		e.EndList()
	}
}
