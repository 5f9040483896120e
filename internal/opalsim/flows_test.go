package opalsim

import (
	"bytes"
	"errors"
	"testing"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/stream"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
	"github.com/open-source-firmware/go-tcg-storage/pkg/locking"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// enabledDrive returns an in-memory drive owned, activated and with the
// global range configured, plus a host and the Admin1 credential.
func enabledDrive(t testing.TB) (*Drive, *host, []byte) {
	t.Helper()
	d, err := NewMemory(Config{Blocks: 4096, MBRSize: 1 << 20, DataStoreSize: 64 << 10, TryLimit: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	h := newHost(t, d)
	pin := []byte("admin-credential-xyz")
	h.takeOwnership(pin)
	h.activate(pin)
	h.configureGlobal(pin)
	return d, h, pin
}

func dsWrite(s *core.Session, off int, data []byte) error {
	const chunk = 1900 // go-tcg-storage's stream.Bytes panics at >= 2048 bytes
	for i := 0; i < len(data); i += chunk {
		end := min(i+chunk, len(data))
		mc := s.NewMethodCall(core.InvokingID(mkUID(tDataStore, 0)), table.MethodIDSet)
		mc.StartOptionalParameter(0, "Where")
		mc.UInt(uint(off + i))
		mc.EndOptionalParameter()
		mc.StartOptionalParameter(1, "Values")
		mc.Bytes(data[i:end])
		mc.EndOptionalParameter()
		if _, err := s.ExecuteMethod(mc); err != nil {
			return err
		}
	}
	return nil
}

func dsRead(s *core.Session, off, n int) ([]byte, error) {
	mc := s.NewMethodCall(core.InvokingID(mkUID(tDataStore, 0)), table.MethodIDGet)
	mc.StartList()
	mc.StartOptionalParameter(1, "startRow")
	mc.UInt(uint(off))
	mc.EndOptionalParameter()
	mc.StartOptionalParameter(2, "endRow")
	mc.UInt(uint(off + n - 1))
	mc.EndOptionalParameter()
	mc.EndList()
	res, err := s.ExecuteMethod(mc)
	if err != nil {
		return nil, err
	}
	l, ok := res[0].(stream.List)
	if !ok || len(l) != 1 {
		return nil, errors.New("malformed DataStore Get result")
	}
	b, ok := l[0].([]byte)
	if !ok {
		return nil, errors.New("DataStore Get result is not bytes")
	}
	return b, nil
}

func TestDataStoreRoundTrip(t *testing.T) {
	_, h, pin := enabledDrive(t)
	s, err := h.lockingSession(locking.LockingAuthorityAdmin1, pin)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct{ off, n int }{{0, 1}, {5, 2047}, {100, 2048}, {4000, 2049}, {9000, 5000}, {64<<10 - 3000, 3000}} {
		data := make([]byte, tc.n)
		for i := range data {
			data[i] = byte(i*7 + tc.off)
		}
		if err := dsWrite(s, tc.off, data); err != nil {
			t.Fatalf("write %d@%d: %v", tc.n, tc.off, err)
		}
		got, err := dsRead(s, tc.off, tc.n)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d@%d: %v (equal %v)", tc.n, tc.off, err, bytes.Equal(got, data))
		}
	}
	if _, err := dsRead(s, 64<<10-10, 11); !errors.Is(err, core.ErrMethodStatusInvalidParameter) {
		t.Fatalf("read past the end: %v", err)
	}
}

func TestWrongCredentialAndLockout(t *testing.T) {
	d, h, pin := enabledDrive(t)
	tries := func() (uint, uint) {
		s, err := h.lockingSession(locking.LockingAuthorityAdmin1, pin)
		if err != nil {
			t.Fatalf("admin session: %v", err)
		}
		defer s.Close()
		row, err := table.GetPartialRow(s, table.RowUID(cpinAdminN(1)), 5, "TryLimit", 6, "Tries")
		if err != nil {
			t.Fatalf("get tries: %v", err)
		}
		if _, leaked := row["3"]; leaked {
			t.Fatal("PIN column readable")
		}
		return row["5"].(uint), row["6"].(uint)
	}
	if lim, n := tries(); lim != 3 || n != 0 {
		t.Fatalf("TryLimit/Tries = %d/%d", lim, n)
	}
	wrong := []byte("wrong")
	s, err := h.cs.NewSession(core.LockingSP)
	if err != nil {
		t.Fatal(err)
	}
	if err := table.ThisSP_Authenticate(s, locking.LockingAuthorityAdmin1, wrong); !errors.Is(err, table.ErrAuthenticationFailed) {
		t.Fatalf("wrong credential: %v", err)
	}
	s.Close()
	if _, n := tries(); n != 0 {
		t.Fatalf("tries after success = %d, want reset to 0 by the successful authentication", n)
	}
	// Count a failure and read it through SID-free means: the status snapshot.
	for i := 1; i <= 3; i++ {
		s, _ := h.cs.NewSession(core.LockingSP)
		err := table.ThisSP_Authenticate(s, locking.LockingAuthorityAdmin1, wrong)
		s.Close()
		if !errors.Is(err, table.ErrAuthenticationFailed) {
			t.Fatalf("try %d: %v", i, err)
		}
		if got := d.st.Locking.AdminPIN[0].Tries; got != uint(i) {
			t.Fatalf("Tries after %d failures = %d", i, got)
		}
	}
	s, _ = h.cs.NewSession(core.LockingSP)
	err = table.ThisSP_Authenticate(s, locking.LockingAuthorityAdmin1, pin)
	s.Close()
	if !errors.Is(err, core.ErrMethodStatusAuthorityLockedOut) {
		t.Fatalf("right credential at TryLimit: %v, want AUTHORITY_LOCKED_OUT", err)
	}
	if err := d.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	h = newHost(t, d)
	if err := h.unlock(pin); err != nil {
		t.Fatalf("unlock after power cycle: %v", err)
	}
	if err := d.ReadBlocks(0, make([]byte, 512)); err != nil {
		t.Fatalf("read after unlock: %v", err)
	}
}

func TestLockedIOAndRangeLayout(t *testing.T) {
	d, _, pin := enabledDrive(t)
	if err := d.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadBlocks(0, make([]byte, 512)); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("locked read: %v", err)
	}
	if err := d.ReadBlocks(4095, make([]byte, 1024)); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("read past end: %v", err)
	}
	if err := d.ReadBlocks(0, make([]byte, 100)); err == nil {
		t.Fatal("partial block read accepted")
	}
	h := newHost(t, d)
	if err := h.unlock(pin); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadBlocks(0, make([]byte, 512)); err != nil {
		t.Fatalf("unlocked read: %v", err)
	}
}
