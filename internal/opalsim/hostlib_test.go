package opalsim

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/stream"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
	"github.com/open-source-firmware/go-tcg-storage/pkg/locking"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// host drives a simulated drive through the real go-tcg-storage library.
type host struct {
	t  testing.TB
	d  *Drive
	d0 *core.Level0Discovery
	cs *core.ControlSession
}

func newHost(t testing.TB, d *Drive) *host {
	t.Helper()
	d0, err := core.Discovery0(d)
	if err != nil {
		t.Fatalf("Discovery0: %v", err)
	}
	cs, err := core.NewControlSession(d, d0)
	if err != nil {
		t.Fatalf("NewControlSession: %v", err)
	}
	return &host{t: t, d: d, d0: d0, cs: cs}
}

func (h *host) meta() *locking.LockingSPMeta {
	m := &locking.LockingSPMeta{D0: h.d0}
	copy(m.SPID[:], core.LockingSP[:])
	return m
}

// adminSession opens an Admin SP session authenticated as auth (nil proof: Anybody).
func (h *host) adminSession(auth core.AuthorityObjectUID, proof []byte) (*core.Session, error) {
	s, err := h.cs.NewSession(core.AdminSP)
	if err != nil {
		return nil, err
	}
	if proof != nil {
		if err := table.ThisSP_Authenticate(s, auth, proof); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (h *host) lockingSession(auth core.AuthorityObjectUID, proof []byte) (*core.Session, error) {
	s, err := h.cs.NewSession(core.LockingSP)
	if err != nil {
		return nil, err
	}
	if err := table.ThisSP_Authenticate(s, auth, proof); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func setPIN(s *core.Session, row [8]byte, pin []byte) error {
	mc := table.NewSetCall(s, table.RowUID(row))
	mc.StartOptionalParameter(3, "PIN")
	mc.Bytes(pin)
	mc.EndOptionalParameter()
	table.FinishSetCall(s, mc)
	_, err := s.ExecuteMethod(mc)
	return err
}

func (h *host) takeOwnership(sidPIN []byte) {
	h.t.Helper()
	s, err := h.adminSession(core.AuthorityAnybody, nil)
	if err != nil {
		h.t.Fatalf("anybody session: %v", err)
	}
	msid, err := table.Admin_C_PIN_MSID_GetPIN(s)
	if err != nil {
		h.t.Fatalf("get MSID: %v", err)
	}
	if err := table.ThisSP_Authenticate(s, core.AuthoritySID, msid); err != nil {
		h.t.Fatalf("authenticate SID with MSID: %v", err)
	}
	if err := setPIN(s, cpinSID, sidPIN); err != nil {
		h.t.Fatalf("set SID PIN: %v", err)
	}
	if err := s.Close(); err != nil {
		h.t.Fatalf("close: %v", err)
	}
}

func (h *host) activate(sidPIN []byte) {
	h.t.Helper()
	s, err := h.adminSession(core.AuthoritySID, sidPIN)
	if err != nil {
		h.t.Fatalf("SID session: %v", err)
	}
	defer s.Close()
	lcs, err := table.Admin_SP_GetLifeCycleState(s, core.LockingSP)
	if err != nil || lcs != locking.LifeCycleStateManufacturedInactive {
		h.t.Fatalf("life cycle before activate: %v %v", lcs, err)
	}
	mc := s.NewMethodCall(core.InvokingID(core.LockingSP), table.MethodIDAdmin_Activate)
	if _, err := s.ExecuteMethod(mc); err != nil {
		h.t.Fatalf("Activate: %v", err)
	}
	lcs, err = table.Admin_SP_GetLifeCycleState(s, core.LockingSP)
	if err != nil || lcs != locking.LifeCycleStateManufactured {
		h.t.Fatalf("life cycle after activate: %v %v", lcs, err)
	}
}

// configureGlobal enables read/write locking with LockOnReset=PowerCycle.
func (h *host) configureGlobal(admin1PIN []byte) {
	h.t.Helper()
	l, err := locking.NewSession(h.cs, h.meta(), locking.DefaultAuthority(admin1PIN))
	if err != nil {
		h.t.Fatalf("locking session: %v", err)
	}
	defer l.Close()
	if l.GlobalRange == nil {
		h.t.Fatal("no global range enumerated")
	}
	if err := l.GlobalRange.SetReadLockEnabled(true); err != nil {
		h.t.Fatalf("RLE: %v", err)
	}
	if err := l.GlobalRange.SetWriteLockEnabled(true); err != nil {
		h.t.Fatalf("WLE: %v", err)
	}
	mc := table.NewSetCall(l.Session, table.RowUID(lockingRangeUID(0)))
	mc.StartOptionalParameter(9, "LockOnReset")
	mc.StartList()
	mc.UInt(0)
	mc.EndList()
	mc.EndOptionalParameter()
	table.FinishSetCall(l.Session, mc)
	if _, err := l.Session.ExecuteMethod(mc); err != nil {
		h.t.Fatalf("LockOnReset: %v", err)
	}
}

func (h *host) unlock(admin1PIN []byte) error {
	l, err := locking.NewSession(h.cs, h.meta(), locking.DefaultAuthority(admin1PIN))
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.GlobalRange.UnlockRead(); err != nil {
		return err
	}
	return l.GlobalRange.UnlockWrite()
}

func testDrive(t testing.TB) (*Drive, string) {
	dir := filepath.Join(t.TempDir(), "drive")
	d, err := Create(dir, Config{Serial: "SIM0001", Model: "opalsim test", Firmware: "T1", Blocks: 2048,
		MBRSize: 1 << 20, DataStoreSize: 64 << 10})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d, dir
}

func TestLifeCycleThroughGoTCGStorage(t *testing.T) {
	d, dir := testDrive(t)
	plain := bytes.Repeat([]byte("sedboot known plaintext 0123456789abcdef!"), 100)[:4096]
	if err := d.WriteBlocks(10, plain); err != nil {
		t.Fatalf("write before enable: %v", err)
	}
	h := newHost(t, d)
	if h.d0.OpalV2 == nil || h.d0.OpalV2.BaseComID != baseComID || h.d0.Locking == nil || !h.d0.Locking.LockingSupported || h.d0.Locking.LockingEnabled {
		t.Fatalf("discovery: %+v %+v", h.d0.OpalV2, h.d0.Locking)
	}
	if h.d0.OpalV2.NumLockingSPAdminSupported != 4 || h.d0.OpalV2.NumLockingSPUserSupported != 8 || h.d0.OpalV2.InitialCPINSIDIndicator != 0 {
		t.Fatalf("Opal V2 feature: %+v", h.d0.OpalV2)
	}
	sid := []byte("sid-credential-0123456789")
	h.takeOwnership(sid)
	h.activate(sid)
	h.configureGlobal(sid) // Admin1 inherits SID's PIN on activation
	d0, _ := core.Discovery0(d)
	if !d0.Locking.LockingEnabled {
		t.Fatal("LockingEnabled not reported after activation")
	}
	if err := d.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := d.ReadBlocks(10, buf); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("read after power cycle: %v, want ErrLocked", err)
	}
	if err := d.WriteBlocks(10, buf); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("write after power cycle: %v, want ErrLocked", err)
	}
	st := d.Status()
	if !st.Ranges[0].ReadLocked || !st.Ranges[0].ReadLockEnabled || !st.Ranges[0].LockOnReset {
		t.Fatalf("status after power cycle: %+v", st.Ranges[0])
	}
	h = newHost(t, d)
	if err := h.unlock(sid); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if err := d.ReadBlocks(10, buf); err != nil || !bytes.Equal(buf, plain) {
		t.Fatalf("read after unlock: %v (data equal %v)", err, bytes.Equal(buf, plain))
	}
	// Rotate Admin1's credential.
	newPIN := []byte("rotated-admin1-credential")
	s, err := h.lockingSession(locking.LockingAuthorityAdmin1, sid)
	if err != nil {
		t.Fatal(err)
	}
	if err := setPIN(s, cpinAdminN(1), newPIN); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	s.Close()
	if err := d.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	h = newHost(t, d)
	if err := h.unlock(sid); err == nil {
		t.Fatal("old credential still unlocks")
	}
	// go-tcg-storage leaves the session open when authentication fails;
	// a stack reset on the ComID aborts it.
	if err := core.StackReset(d, h.cs.ComID); err != nil {
		t.Fatalf("stack reset: %v", err)
	}
	if err := h.unlock(newPIN); err != nil {
		t.Fatalf("unlock with rotated credential: %v", err)
	}
	if err := d.ReadBlocks(10, buf); err != nil || !bytes.Equal(buf, plain) {
		t.Fatalf("read after rotated unlock: %v", err)
	}
	// Reopen from disk: locked again, unlock works, data intact.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer d2.Close()
	if err := d2.ReadBlocks(10, buf); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("read after reopen: %v", err)
	}
	h = newHost(t, d2)
	if err := h.unlock(newPIN); err != nil {
		t.Fatalf("unlock after reopen: %v", err)
	}
	if err := d2.ReadBlocks(10, buf); err != nil || !bytes.Equal(buf, plain) {
		t.Fatalf("read after reopen+unlock: %v", err)
	}
	// The media file never holds the plaintext.
	media, err := os.ReadFile(filepath.Join(dir, mediaFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(media, plain[:64]) || bytes.Contains(media, []byte("sedboot known plaintext")) {
		t.Fatal("media file contains plaintext")
	}
	state, _ := os.ReadFile(filepath.Join(dir, stateFile))
	for _, secret := range [][]byte{sid, newPIN, d2.PSID()} {
		if bytes.Contains(state, secret) || bytes.Contains(media, secret) {
			t.Fatalf("credential %q stored in plain", secret)
		}
	}
	// PSID revert: data cryptographically erased, drive back to factory.
	s, err = h.adminSession(core.AuthorityPSID, d2.PSID())
	if err != nil {
		t.Fatalf("PSID session: %v", err)
	}
	mc := s.NewMethodCall(core.InvokingID(core.AdminSP), [8]byte{0, 0, 0, 6, 0, 0, 2, 2})
	if _, err := s.ExecuteMethod(mc); err != nil {
		t.Fatalf("PSID revert: %v", err)
	}
	if st := d2.Status(); st.LockingEnabled || st.OpenSessions != 0 {
		t.Fatalf("after revert: %+v", st)
	}
	if err := d2.ReadBlocks(10, buf); err != nil {
		t.Fatalf("read after revert: %v", err)
	}
	if bytes.Equal(buf, plain) || bytes.Contains(buf, []byte("sedboot")) {
		t.Fatal("data readable after PSID revert")
	}
	_ = stream.EqualToken
}

// TestActivateInSessionThatChangedSID covers a host that takes ownership
// and activates in one Admin SP session: Activate must hand Admin1 the
// SID credential as it is now, so Admin1 works fully with the new PIN
// (changes its own PIN, and unlocks after a power cycle).
func TestActivateInSessionThatChangedSID(t *testing.T) {
	d, _ := testDrive(t)
	h := newHost(t, d)
	sid := []byte("new-sid-credential")
	s, err := h.adminSession(core.AuthorityAnybody, nil)
	if err != nil {
		t.Fatal(err)
	}
	msid, err := table.Admin_C_PIN_MSID_GetPIN(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := table.ThisSP_Authenticate(s, core.AuthoritySID, msid); err != nil {
		t.Fatal(err)
	}
	if err := setPIN(s, cpinSID, sid); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ExecuteMethod(s.NewMethodCall(core.InvokingID(core.LockingSP), table.MethodIDAdmin_Activate)); err != nil {
		t.Fatalf("Activate in the session that changed SID: %v", err)
	}
	s.Close()

	admin1 := []byte("admin1-credential")
	ls, err := h.lockingSession(core.AuthorityObjectUID(authAdminN(1)), sid)
	if err != nil {
		t.Fatalf("Admin1 with the new SID value: %v", err)
	}
	if err := setPIN(ls, cpinAdminN(1), admin1); err != nil {
		t.Fatalf("Admin1 sets its own PIN: %v", err)
	}
	ls.Close()
	h.configureGlobal(admin1)
	want := bytes.Repeat([]byte{0x5a}, 512)
	if err := d.WriteBlocks(7, want); err != nil {
		t.Fatal(err)
	}
	if err := d.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	h = newHost(t, d)
	if err := h.unlock(admin1); err != nil {
		t.Fatalf("unlock after power cycle: %v", err)
	}
	got := make([]byte, 512)
	if err := d.ReadBlocks(7, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("data after unlock: %v (equal=%v)", err, bytes.Equal(got, want))
	}
}

func TestSIDIsMSID(t *testing.T) {
	d, _ := testDrive(t)
	if !d.SIDIsMSID() {
		t.Fatal("factory-fresh drive: SID should be MSID")
	}
	h := newHost(t, d)
	h.takeOwnership([]byte("owned-sid"))
	if d.SIDIsMSID() {
		t.Fatal("after take ownership: SID should not be MSID")
	}
	if err := d.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	if d.SIDIsMSID() {
		t.Fatal("a power cycle must not restore MSID")
	}
}

// TestHostPropertiesBounded: go-tcg-storage offers 1 MiB host buffers; the
// TPer reports the host properties it will use, bounded by the largest
// response it ever sends, and the library then sizes its receive buffers
// by those.
func TestHostPropertiesBounded(t *testing.T) {
	d, _ := testDrive(t)
	h := newHost(t, d)
	hp := h.cs.HostProperties
	if hp.MaxComPacketSize != maxComPacket || hp.MaxPacketSize != maxPacket || hp.MaxIndTokenSize != maxIndToken || hp.MaxAggTokenSize != maxIndToken {
		t.Fatalf("host properties MaxComPacketSize %d, MaxPacketSize %d, MaxIndTokenSize %d, MaxAggTokenSize %d; want %d, %d, %d, %d",
			hp.MaxComPacketSize, hp.MaxPacketSize, hp.MaxIndTokenSize, hp.MaxAggTokenSize, maxComPacket, maxPacket, maxIndToken, maxIndToken)
	}
	if tp := h.cs.TPerProperties; tp.MaxComPacketSize != maxComPacket || tp.MaxResponseComPacketSize == nil || *tp.MaxResponseComPacketSize != maxComPacket {
		t.Fatalf("TPer properties: MaxComPacketSize %d, MaxResponseComPacketSize %v", tp.MaxComPacketSize, tp.MaxResponseComPacketSize)
	}
	// Sessions still work with the bounded buffers.
	s, err := h.adminSession(core.AuthorityAnybody, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
