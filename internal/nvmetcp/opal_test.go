package nvmetcp

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
	"github.com/open-source-firmware/go-tcg-storage/pkg/locking"

	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/opalsim"
)

// wireDrive carries go-tcg-storage's IF-SEND/IF-RECV as NVMe Security
// Send/Receive commands over the test initiator's admin queue, the way
// go-tcg-storage's own NVMe driver fills cdw10/cdw11.
type wireDrive struct{ s *session }

func (w wireDrive) IFSend(proto drive.SecurityProtocol, sps uint16, data []byte) error {
	c := newCmd(0x81).dw(10, uint32(proto&0xFF)<<24|uint32(sps)<<8).dw(11, uint32(len(data)))
	r, _, err := w.s.admin.send(c, data, 0)
	if err != nil {
		return err
	}
	if r.status != 0 {
		return fmt.Errorf("security send: NVMe status %#x", r.status)
	}
	return nil
}

func (w wireDrive) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	c := newCmd(0x82).dw(10, uint32(proto&0xFF)<<24|uint32(sps)<<8).dw(11, uint32(len(*data)))
	r, got, err := w.s.admin.send(c, nil, len(*data))
	if err != nil {
		return err
	}
	if r.status != 0 {
		return fmt.Errorf("security receive: NVMe status %#x", r.status)
	}
	copy(*data, got)
	return nil
}

func (w wireDrive) Identify() (*drive.Identity, error) {
	id := w.s.admin.identify(1, 0)
	return &drive.Identity{Protocol: "NVMe", SerialNumber: strings.TrimSpace(string(id[4:24])),
		Model: strings.TrimSpace(string(id[24:64])), Firmware: strings.TrimSpace(string(id[64:72]))}, nil
}

func (w wireDrive) SerialNumber() ([]byte, error) { return w.s.admin.identify(1, 0)[4:24], nil }
func (w wireDrive) Close() error                  { return nil }

func setCPIN(s *core.Session, row table.RowUID, pin []byte) error {
	mc := table.NewSetCall(s, row)
	mc.StartOptionalParameter(3, "PIN")
	mc.Bytes(pin)
	mc.EndOptionalParameter()
	table.FinishSetCall(s, mc)
	_, err := s.ExecuteMethod(mc)
	return err
}

// TestOpalOverTCP runs a whole self-encrypting drive life over NVMe/TCP
// against opalsim: discovery, ownership, activation, locking with
// LockOnReset, a power cycle through the target, Access Denied, unlock,
// data intact.
func TestOpalOverTCP(t *testing.T) {
	d, err := opalsim.NewMemory(opalsim.Config{Serial: "OPALTCP1", Model: "sedboot opalsim", Firmware: "T1", Blocks: 4096,
		MBRSize: 1 << 20, DataStoreSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tg, addr := startTarget(t, Options{}, map[string]blockdev.Device{nqnA: d})
	s := openSession(t, addr, nqnA, hostOpts{hdgst: true, ddgst: true})

	wd := wireDrive{s}
	d0, err := core.Discovery0(wd)
	if err != nil {
		t.Fatalf("Level 0 discovery over NVMe/TCP: %v", err)
	}
	if d0.OpalV2 == nil || d0.Locking == nil {
		t.Fatalf("Level 0 discovery lacks Opal 2 or Locking feature: %+v", d0)
	}
	if d0.Locking.LockingEnabled {
		t.Fatalf("factory-fresh drive reports locking enabled")
	}
	cs, err := core.NewControlSession(wd, d0)
	if err != nil {
		t.Fatalf("control session: %v", err)
	}

	pin := []byte("sedboot-test-pin-not-a-secret-01")
	// Take ownership with MSID, set the SID PIN, activate the Locking SP.
	as, err := cs.NewSession(core.AdminSP)
	if err != nil {
		t.Fatal(err)
	}
	msid, err := table.Admin_C_PIN_MSID_GetPIN(as)
	if err != nil {
		t.Fatalf("read MSID: %v", err)
	}
	if err := table.ThisSP_Authenticate(as, core.AuthoritySID, msid); err != nil {
		t.Fatalf("SID with MSID: %v", err)
	}
	if err := setCPIN(as, table.RowUID{0x00, 0x00, 0x00, 0x0B, 0x00, 0x00, 0x00, 0x01}, pin); err != nil {
		t.Fatalf("set SID PIN: %v", err)
	}
	if err := as.Close(); err != nil {
		t.Fatal(err)
	}
	// Activate in a new session authenticated with the new SID PIN.
	if as, err = cs.NewSession(core.AdminSP); err != nil {
		t.Fatal(err)
	}
	if err := table.ThisSP_Authenticate(as, core.AuthoritySID, pin); err != nil {
		t.Fatalf("SID with its new PIN: %v", err)
	}
	mc := as.NewMethodCall(core.InvokingID(core.LockingSP), table.MethodIDAdmin_Activate)
	if _, err := as.ExecuteMethod(mc); err != nil {
		t.Fatalf("activate: %v", err)
	}
	if err := as.Close(); err != nil {
		t.Fatal(err)
	}

	meta := &locking.LockingSPMeta{D0: d0}
	copy(meta.SPID[:], core.LockingSP[:])
	l, err := locking.NewSession(cs, meta, locking.DefaultAuthority(pin))
	if err != nil {
		t.Fatalf("locking session as Admin1: %v", err)
	}
	if err := l.GlobalRange.SetReadLockEnabled(true); err != nil {
		t.Fatal(err)
	}
	if err := l.GlobalRange.SetWriteLockEnabled(true); err != nil {
		t.Fatal(err)
	}
	lor := table.NewSetCall(l.Session, table.RowUID{0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x00, 0x01})
	lor.StartOptionalParameter(9, "LockOnReset")
	lor.StartList()
	lor.UInt(0)
	lor.EndList()
	lor.EndOptionalParameter()
	table.FinishSetCall(l.Session, lor)
	if _, err := l.Session.ExecuteMethod(lor); err != nil {
		t.Fatalf("LockOnReset: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	want := randBytes(64 << 10)
	if r := s.write(t, 100, want, 512); r.status != 0 {
		t.Fatalf("write while unlocked: %#x", r.status)
	}

	// Power cycle through the target: associations drop, the range locks.
	if err := tg.PowerCycle(context.Background(), nqnA, d.PowerCycle); err != nil {
		t.Fatal(err)
	}
	s = openSession(t, addr, nqnA, hostOpts{})
	if r, _ := s.read(t, 100, 4096, 512); r.status != 0x286 || !r.dnr {
		t.Fatalf("read after power cycle: status %#x, want Access Denied (0x286) with DNR", r.status)
	}
	if r := s.write(t, 100, want[:4096], 512); r.status != 0x286 {
		t.Fatalf("write after power cycle: status %#x, want Access Denied", r.status)
	}
	wd = wireDrive{s}
	if d0, err = core.Discovery0(wd); err != nil || !d0.Locking.Locked {
		t.Fatalf("Level 0 after power cycle: locked=%v err %v", d0 != nil && d0.Locking.Locked, err)
	}
	cs, err = core.NewControlSession(wd, d0)
	if err != nil {
		t.Fatal(err)
	}
	meta.D0 = d0
	l, err = locking.NewSession(cs, meta, locking.DefaultAuthority(pin))
	if err != nil {
		t.Fatalf("locking session after power cycle: %v", err)
	}
	if err := l.GlobalRange.UnlockRead(); err != nil {
		t.Fatal(err)
	}
	if err := l.GlobalRange.UnlockWrite(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	r, got := s.read(t, 100, len(want), 512)
	if r.status != 0 || !bytes.Equal(got, want) {
		t.Fatalf("after unlock: status %#x, data intact %v", r.status, bytes.Equal(got, want))
	}
}
