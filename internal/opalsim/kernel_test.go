package opalsim

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/opalsim/token"
)

func newWireDrive(t *testing.T) (*Drive, *wire) {
	d, err := NewMemory(Config{Blocks: 8192, MBRSize: 1 << 20, DataStoreSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, newWire(t, d)
}

func must(t *testing.T, what string, st int) {
	t.Helper()
	if st != 0 {
		t.Fatalf("%s: status 0x%02X", what, st)
	}
}

// kernelOwnAndActivate reproduces sed-opal's take ownership and activate LSP.
func kernelOwnAndActivate(t *testing.T, w *wire, sid []byte) {
	must(t, "anybody session", w.startSession(spAdmin, nil, nil))
	res, st := w.method(cpinMSID, mGet, getCols(3, 3))
	must(t, "get MSID", st)
	msid, ok := res[0].L[0].V.Bytes()
	if !ok || len(msid) == 0 {
		t.Fatalf("MSID result %+v", res)
	}
	w.endSession()
	a := authSID
	must(t, "SID session with MSID", w.startSession(spAdmin, &a, msid))
	_, st = w.method(cpinSID, mSet, setValues(col(3, b(sid))))
	must(t, "set SID pin", st)
	w.endSession()
	must(t, "SID session", w.startSession(spAdmin, &a, sid))
	res, st = w.method(spLocking, mGet, getCols(6, 6))
	must(t, "get LSP life cycle", st)
	if v, _ := res[0].L[0].V.Uint(); v != lifeManufacturedInactive {
		t.Fatalf("life cycle %d", v)
	}
	_, st = w.method(spLocking, mActivate, nil)
	must(t, "activate", st)
	w.endSession()
}

func TestKernelFlows(t *testing.T) {
	d, w := newWireDrive(t)
	sid := []byte("kernel-sid-password")
	kernelOwnAndActivate(t, w, sid)
	admin1 := authAdminN(1)
	user1 := authUserN(1)
	// Locking range 1 setup (RangeStart, RangeLength, RLE, WLE) as Admin1.
	must(t, "admin1 session", w.startSession(spLocking, &admin1, sid))
	_, st := w.method(lockingRangeUID(1), mSet, setValues(col(3, u(1024)), col(4, u(1024)), col(5, u(1)), col(6, u(1))))
	must(t, "setup range 1", st)
	// Overlapping range 2 is refused.
	_, st = w.method(lockingRangeUID(2), mSet, setValues(col(3, u(2000)), col(4, u(100))))
	if st != stInvalidParameter {
		t.Fatalf("overlapping range: status 0x%02X", st)
	}
	// Activate User1, set its password, add it to range 1 (RW).
	_, st = w.method(user1, mSet, setValues(col(5, u(1))))
	must(t, "enable user1", st)
	user1pw := []byte("user1-password")
	_, st = w.method(cpinUserN(1), mSet, setValues(col(3, b(user1pw))))
	must(t, "set user1 password", st)
	_, st = w.method(aceLockingSetRd(1), mSet, setValues(col(3, expr(user1, user1))))
	must(t, "add user1 to range 1 read ACE", st)
	_, st = w.method(aceLockingSetWr(1), mSet, setValues(col(3, expr(user1, user1))))
	must(t, "add user1 to range 1 write ACE", st)
	// Lock range 1 and write something in it first.
	_, st = w.method(lockingRangeUID(1), mSet, setValues(col(7, u(0)), col(8, u(0))))
	must(t, "unlock range 1 as admin", st)
	w.endSession()
	plain := bytes.Repeat([]byte{0xA5, 0x5A, 'k'}, 512)[:1536]
	if err := d.WriteBlocks(1100, plain); err != nil {
		t.Fatalf("write range 1: %v", err)
	}
	must(t, "admin1 session", w.startSession(spLocking, &admin1, sid))
	_, st = w.method(lockingRangeUID(1), mSet, setValues(col(7, u(1)), col(8, u(1))))
	must(t, "lock range 1", st)
	w.endSession()
	buf := make([]byte, 1536)
	if err := d.ReadBlocks(1100, buf); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("read locked range 1: %v", err)
	}
	if err := d.ReadBlocks(0, buf); err != nil {
		t.Fatalf("global range (not lock-enabled) read: %v", err)
	}
	// User1 unlocks range 1 but may not touch range 2 or the global range.
	must(t, "user1 session", w.startSession(spLocking, &user1, user1pw))
	_, st = w.method(lockingRangeUID(1), mSet, setValues(col(7, u(0)), col(8, u(0))))
	must(t, "user1 unlocks range 1", st)
	_, st = w.method(lockingRangeUID(2), mSet, setValues(col(7, u(0))))
	if st != stNotAuthorized {
		t.Fatalf("user1 on range 2: 0x%02X", st)
	}
	_, st = w.method(cpinAdminN(1), mGet, getCols(0, 7))
	if st != stNotAuthorized {
		t.Fatalf("user1 reads C_PIN_Admin1: 0x%02X", st)
	}
	w.endSession()
	if err := d.ReadBlocks(1100, buf); err != nil || !bytes.Equal(buf, plain) {
		t.Fatalf("read after user unlock: %v", err)
	}
	// Power cycle: range 1 (LockOnReset=PowerCycle by default) locks again.
	if err := d.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadBlocks(1100, buf); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("range 1 after power cycle: %v", err)
	}
	// Wrong user password in StartSession: NOT_AUTHORIZED, counted.
	if st := w.startSession(spLocking, &user1, []byte("nope")); st != stNotAuthorized {
		t.Fatalf("wrong password: 0x%02X", st)
	}
	if d.st.Locking.UserPIN[0].Tries != 1 {
		t.Fatalf("tries = %d", d.st.Locking.UserPIN[0].Tries)
	}
	// Generic table write/read on the DataStore (Where/Values, startRow/endRow).
	must(t, "admin1 session", w.startSession(spLocking, &admin1, sid))
	ds := mkUID(tDataStore, 0)
	blob := bytes.Repeat([]byte("ds"), 700)
	_, st = w.method(ds, mSet, func(e *token.Encoder) {
		e.Token(token.StartName).Uint(0).Uint(300).Token(token.EndName)
		e.Token(token.StartName).Uint(1).ByteString(blob).Token(token.EndName)
	})
	must(t, "datastore write", st)
	res, st := w.method(ds, mGet, func(e *token.Encoder) { e.StartList().NamedUint(1, 300).NamedUint(2, 300+1399).EndList() })
	must(t, "datastore read", st)
	if got, _ := res[0].Bytes(); !bytes.Equal(got, blob) {
		t.Fatal("datastore read back differs")
	}
	// A Get whose response exceeds the 2048-byte host buffer: RESPONSE_OVERFLOW.
	_, st = w.method(ds, mGet, func(e *token.Encoder) { e.StartList().NamedUint(1, 0).NamedUint(2, 4095).EndList() })
	if st != stResponseOverflow {
		t.Fatalf("oversize Get: 0x%02X", st)
	}
	// Table table: MBR rows (the kernel's shadow MBR size check).
	res, st = w.method(mkUID(tTable, tMBR), mGet, getCols(7, 7))
	must(t, "MBR table rows", st)
	if v, _ := res[0].L[0].V.Uint(); v != 1<<20 {
		t.Fatalf("MBR rows %d", v)
	}
	// Secure erase range 1 (get ActiveKey, GenKey).
	res, st = w.method(lockingRangeUID(1), mGet, getCols(10, 10))
	must(t, "get active key", st)
	key, _ := res[0].L[0].V.Bytes()
	var ku UID
	copy(ku[:], key)
	_, st = w.method(ku, mGenKey, nil)
	must(t, "genkey", st)
	_, st = w.method(lockingRangeUID(1), mSet, setValues(col(7, u(0)), col(8, u(0))))
	must(t, "unlock range 1", st)
	w.endSession()
	if err := d.ReadBlocks(1100, buf); err != nil || bytes.Equal(buf, plain) {
		t.Fatalf("read after GenKey: %v (plaintext survived: %v)", err, bytes.Equal(buf, plain))
	}
	// PSID revert: the controller ends the session itself.
	psid := authPSID
	must(t, "PSID session", w.startSession(spAdmin, &psid, d.PSID()))
	_, st = w.method(spAdmin, mRevert, nil)
	must(t, "revert", st)
	if s := d.Status(); s.OpenSessions != 0 || s.LockingEnabled {
		t.Fatalf("after PSID revert: %+v", s)
	}
	// SID is MSID again: take ownership works anew.
	kernelOwnAndActivate(t, newWire(t, d), []byte("second owner"))
}

func TestDataStoreAnybodyReadable(t *testing.T) {
	_, w := newWireDrive(t)
	sid := []byte("owner")
	kernelOwnAndActivate(t, w, sid)
	admin1 := authAdminN(1)
	ds := mkUID(tDataStore, 0)
	readDS := func() int {
		_, st := w.method(ds, mGet, func(e *token.Encoder) { e.StartList().NamedUint(1, 0).NamedUint(2, 7).EndList() })
		return st
	}
	must(t, "anybody session", w.startSession(spLocking, nil, nil))
	if st := readDS(); st != stNotAuthorized {
		t.Fatalf("anybody reads DataStore by default: 0x%02X", st)
	}
	w.endSession()
	must(t, "admin1 session", w.startSession(spLocking, &admin1, sid))
	_, st := w.method(aceDataStoreGetAll, mSet, setValues(col(3, expr(authAdmins, authAnybody))))
	must(t, "personalize ACE_DataStore_Get_All", st)
	_, st = w.method(aceLockingSetRd(0), mSet, setValues(col(3, func(e *token.Encoder) { e.StartList().EndList() })))
	if st != stInvalidParameter {
		t.Fatalf("empty BooleanExpr accepted: 0x%02X", st)
	}
	_, st = w.method(aceAdmin, mSet, setValues(col(3, expr(authAnybody))))
	if st != stNotAuthorized {
		t.Fatalf("Set on a fixed ACE: 0x%02X", st)
	}
	w.endSession()
	must(t, "anybody session", w.startSession(spLocking, nil, nil))
	must(t, "anybody reads DataStore", readDS())
	_, st = w.method(ds, mSet, func(e *token.Encoder) { e.Token(token.StartName).Uint(1).ByteString([]byte("x")).Token(token.EndName) })
	if st != stNotAuthorized {
		t.Fatalf("anybody writes DataStore: 0x%02X", st)
	}
	w.endSession()
}

// TestResponseExactlyFillsHostBuffer: a response whose ComPacket is exactly
// the host's 2048 bytes fits; one byte more overflows.
func TestResponseExactlyFillsHostBuffer(t *testing.T) {
	_, w := newWireDrive(t)
	sid := []byte("owner")
	kernelOwnAndActivate(t, w, sid)
	admin1 := authAdminN(1)
	must(t, "admin1", w.startSession(spLocking, &admin1, sid))
	// 56 header bytes + [ F0 D7 F8 <n bytes> F1 F9 F0 00 00 00 F1 ] = 2048 when n = 1982.
	for n, want := range map[uint64]int{1982: stSuccess, 1983: stResponseOverflow} {
		res, st := w.method(mkUID(tDataStore, 0), mGet, func(e *token.Encoder) { e.StartList().NamedUint(1, 0).NamedUint(2, n-1).EndList() })
		if st != want {
			t.Fatalf("%d-byte Get: status 0x%02X, want 0x%02X", n, st, want)
		}
		if st == stSuccess {
			if got, _ := res[0].Bytes(); uint64(len(got)) != n {
				t.Fatalf("got %d bytes", len(got))
			}
		}
	}
	w.endSession()
}
