package sed

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
)

// level0 assembles a Level 0 discovery response from feature descriptors.
func level0(features ...[]byte) []byte {
	body := bytes.Join(features, nil)
	p := make([]byte, 48, 48+len(body))
	binary.BigEndian.PutUint32(p[0:], uint32(44+len(body)))
	binary.BigEndian.PutUint16(p[4:], 0)
	binary.BigEndian.PutUint16(p[6:], 1)
	return append(p, body...)
}

func feat(code uint16, data ...byte) []byte {
	return append([]byte{byte(code >> 8), byte(code), 0x10, byte(len(data))}, data...)
}

func opal2(comID uint16, admins, users uint16, initialSID, revertSID byte) []byte {
	d := make([]byte, 16)
	binary.BigEndian.PutUint16(d[0:], comID)
	binary.BigEndian.PutUint16(d[2:], 1)
	binary.BigEndian.PutUint16(d[5:], admins)
	binary.BigEndian.PutUint16(d[7:], users)
	d[9], d[10] = initialSID, revertSID
	return feat(featOpal2, d...)
}

func TestParseLevel0(t *testing.T) {
	ds := make([]byte, 12)
	binary.BigEndian.PutUint16(ds[2:], 1)
	binary.BigEndian.PutUint32(ds[4:], 10<<20)
	binary.BigEndian.PutUint32(ds[8:], 1)
	geo := make([]byte, 28)
	binary.BigEndian.PutUint32(geo[8:], 4096)
	tests := []struct {
		name string
		in   []byte
		want Summary
	}{
		{
			name: "fresh Opal 2",
			in:   level0(feat(featTPer, 0x01), feat(featLocking, 0x09), feat(featGeometry, geo...), feat(featDataStore, ds...), opal2(0x07fe, 4, 8, 0, 0)),
			want: Summary{SSCs: []SSC{SSCOpal2}, SSC: SSCOpal2, BaseComID: 0x07fe, NumComIDs: 1, SyncSupported: true,
				LockingPresent: true, LockingSupported: true, MediaEncryption: true, NumAdmins: 4, NumUsers: 8,
				InitialSIDIsMSID: true, RevertSIDToMSID: true, DataStoreTables: 1, DataStoreMaxSize: 10 << 20,
				DataStoreAlignment: 1, LogicalBlockSize: 4096},
		},
		{
			name: "enabled, locked, MBR, Block SID says SID changed",
			in:   level0(feat(featTPer, 0x01), feat(featLocking, 0x3f), opal2(0x1000, 4, 8, 0xff, 0), feat(featBlockSID, 0x03, 0x01)),
			want: Summary{SSCs: []SSC{SSCOpal2}, SSC: SSCOpal2, BaseComID: 0x1000, NumComIDs: 1, SyncSupported: true,
				LockingPresent: true, LockingSupported: true, LockingEnabled: true, Locked: true, MediaEncryption: true,
				MBREnabled: true, MBRDone: true, NumAdmins: 4, NumUsers: 8, RevertSIDToMSID: true, SID: SIDNotMSID, SIDBlocked: true},
		},
		{
			name: "Opal 1 and Opal 2 both reported: Opal 2 wins",
			in:   level0(feat(featTPer, 0x01), feat(featOpal1, 0x0b, 0xb0, 0, 1), opal2(0x07fe, 1, 2, 0, 0)),
			want: Summary{SSCs: []SSC{SSCOpal2, SSCOpal1}, SSC: SSCOpal2, BaseComID: 0x07fe, NumComIDs: 1, SyncSupported: true,
				NumAdmins: 1, NumUsers: 2, InitialSIDIsMSID: true, RevertSIDToMSID: true},
		},
		{
			name: "Enterprise",
			in:   level0(feat(featTPer, 0x01), feat(featLocking, 0x01), feat(featEnterprise, 0x07, 0xfe, 0, 1, 0)),
			want: Summary{SSCs: []SSC{SSCEnterprise}, SSC: SSCEnterprise, BaseComID: 0x07fe, NumComIDs: 1, SyncSupported: true,
				LockingPresent: true, LockingSupported: true},
		},
		{
			name: "Pyrite 2, Block SID says SID is MSID",
			in:   level0(feat(featTPer, 0x01), feat(featLocking, 0x01), feat(featPyrite2, 0x07, 0xfe, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0), feat(featBlockSID, 0, 0)),
			want: Summary{SSCs: []SSC{SSCPyrite2}, SSC: SSCPyrite2, BaseComID: 0x07fe, NumComIDs: 1, SyncSupported: true,
				LockingPresent: true, LockingSupported: true, InitialSIDIsMSID: true, RevertSIDToMSID: true, SID: SIDIsMSID},
		},
		{
			name: "unknown features skipped",
			in:   level0(feat(0xc001, 1, 2, 3, 4), feat(featTPer, 0x01)),
			want: Summary{SyncSupported: true},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseLevel0(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !equalSummary(*got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", *got, tc.want)
			}
		})
	}
	if s, _ := parseLevel0(tests[0].in); !s.Opal() || !strings.Contains(s.String(), "Opal 2, ComID 0x07fe") {
		t.Errorf("Opal()=%v String()=%q", s.Opal(), s.String())
	}
	if s, _ := parseLevel0(tests[4].in); s.Opal() {
		t.Error("Pyrite reported as Opal")
	}
}

func equalSummary(a, b Summary) bool {
	if strings.Join(sscStrings(a.SSCs), ",") != strings.Join(sscStrings(b.SSCs), ",") {
		return false
	}
	a.SSCs, b.SSCs = nil, nil
	return reflect.DeepEqual(a, b)
}

func sscStrings(s []SSC) []string {
	var out []string
	for _, x := range s {
		out = append(out, string(x))
	}
	return out
}

func TestParseLevel0Errors(t *testing.T) {
	good := level0(feat(featTPer, 0x01), opal2(0x07fe, 4, 8, 0, 0))
	trunc := append([]byte(nil), good...)
	binary.BigEndian.PutUint32(trunc[0:], uint32(len(good)-4))
	trunc[48+3] = 200 // TPer descriptor claims 200 bytes
	for name, in := range map[string][]byte{
		"short":            good[:20],
		"length below 44":  append([]byte{0, 0, 0, 4}, make([]byte, 44)...),
		"feature past end": trunc,
	} {
		if _, err := parseLevel0(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A response cut short by the host's allocation length is parsed as
	// far as it goes: the header is honoured only up to len(p).
	if _, err := parseLevel0(good[:48+4+1]); err != nil {
		t.Errorf("cut after a complete descriptor: %v", err)
	}
}

func TestVerifierFormat(t *testing.T) {
	k1, k2, sid := []byte("admin1 key gen 1"), []byte("admin1 key gen 2"), []byte("sid key")
	v := &Verifier{ArraySerial: "ARRAY-7", DriveSerial: "SN123", Pending: true}
	v.Add(RoleAdmin1, 1, k1)
	v.Add(RoleAdmin1, 2, k2)
	v.Add(RoleSID, 2, sid)
	v.Add(RoleAdmin1, 2, k2) // replaces, does not duplicate
	p, err := v.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(p, k1) || bytes.Contains(p, k2) || bytes.Contains(p, sid) {
		t.Fatal("verifier contains a key")
	}
	got, err := ParseVerifier(append(p, make([]byte, 100)...))
	if err != nil {
		t.Fatal(err)
	}
	if got.ArraySerial != "ARRAY-7" || got.DriveSerial != "SN123" || !got.Pending || len(got.Entries) != 3 {
		t.Fatalf("parsed %+v", got)
	}
	for _, tc := range []struct {
		role Role
		key  []byte
		gen  uint64
		ok   bool
	}{{RoleAdmin1, k1, 1, true}, {RoleAdmin1, k2, 2, true}, {RoleSID, sid, 2, true}, {RoleSID, k1, 0, false}, {RoleAdmin1, sid, 0, false}} {
		if g, ok := got.Match(tc.role, tc.key); ok != tc.ok || g != tc.gen {
			t.Errorf("Match(%v, %q) = %d, %v", tc.role, tc.key, g, ok)
		}
	}
	// The MAC binds the drive serial and the generation.
	if VerifierMAC(k1, "SN123", 1) == VerifierMAC(k1, "SN124", 1) || VerifierMAC(k1, "SN123", 1) == VerifierMAC(k1, "SN123", 2) {
		t.Fatal("MAC ignores serial or generation")
	}

	bad := func(name string, mutate func([]byte) []byte, want error) {
		q := mutate(append([]byte(nil), p...))
		_, err := ParseVerifier(q)
		if err == nil || (want != nil && !errors.Is(err, want)) {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad("zeros", func([]byte) []byte { return make([]byte, 512) }, ErrNotVerifier)
	bad("flipped MAC bit", func(q []byte) []byte { q[len(q)-10] ^= 1; return q }, nil)
	bad("truncated", func(q []byte) []byte { return q[:len(q)-5] }, nil)
	bad("future version", func(q []byte) []byte { q[8] = 9; return q }, nil)
	bad("no entries", func(q []byte) []byte { q[10] = 0; return q }, nil)

	for name, v := range map[string]*Verifier{
		"no entries":   {DriveSerial: "x"},
		"no serial":    {Entries: []VerifierEntry{{Role: RoleAdmin1}}},
		"long serial":  {DriveSerial: strings.Repeat("x", 65), Entries: []VerifierEntry{{}}},
		"five entries": {DriveSerial: "x", Entries: make([]VerifierEntry, 5)},
	} {
		if _, err := v.MarshalBinary(); err == nil {
			t.Errorf("%s: marshalled", name)
		}
	}
}

// fakeDrive answers Level 0 with a fixed response and fails every other
// command with the configured error.
type fakeDrive struct {
	l0  []byte
	err error
}

func (f *fakeDrive) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	if proto == drive.SecurityProtocolTCGManagement && sps == 1 && f.l0 != nil {
		copy(*data, f.l0)
		return nil
	}
	return f.err
}

func (f *fakeDrive) IFSend(drive.SecurityProtocol, uint16, []byte) error { return f.err }

func TestNotOpal(t *testing.T) {
	ctx := context.Background()
	pyrite := &fakeDrive{l0: level0(feat(featTPer, 0x01), feat(featLocking, 0x01), feat(featPyrite2, 0x07, 0xfe, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0)), err: errors.New("unexpected command")}
	d := New(pyrite, "pyrite0")
	sum, err := d.Discover(ctx)
	if err != nil || sum.SSC != SSCPyrite2 {
		t.Fatalf("Discover: %+v, %v", sum, err)
	}
	if _, err := d.Unlock(ctx, []byte("key")); !errors.Is(err, ErrNotOpal) || !strings.Contains(err.Error(), "pyrite0") {
		t.Fatalf("Unlock on Pyrite: %v", err)
	}
	noTCG := New(&fakeDrive{err: drive.ErrNotSupported}, "plain0")
	if _, err := noTCG.Discover(ctx); !errors.Is(err, ErrNotOpal) {
		t.Fatalf("Discover without TCG: %v", err)
	}
}

// garbageDrive passes Level 0 and the control session through to a real
// simulator but answers session traffic with a ComPacket whose payload is
// a truncated token stream.
type garbageDrive struct {
	inner interface {
		IFRecv(drive.SecurityProtocol, uint16, *[]byte) error
		IFSend(drive.SecurityProtocol, uint16, []byte) error
	}
	sends int
}

func (g *garbageDrive) IFSend(proto drive.SecurityProtocol, sps uint16, data []byte) error {
	g.sends++
	return g.inner.IFSend(proto, sps, data)
}

func (g *garbageDrive) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	if err := g.inner.IFRecv(proto, sps, data); err != nil {
		return err
	}
	// After StackReset and Properties, mangle every non-empty response:
	// a short atom that claims 15 bytes with none following.
	p := *data
	if g.sends >= 3 && proto == drive.SecurityProtocolTCGManagement && len(p) > 56 && binary.BigEndian.Uint32(p[52:56]) > 0 {
		binary.BigEndian.PutUint32(p[16:20], 24+12+4)
		binary.BigEndian.PutUint32(p[40:44], 12+4)
		binary.BigEndian.PutUint32(p[52:56], 1)
		p[56] = 0xaf
	}
	return nil
}

func TestMalformedResponseIsAnError(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "BAD0001", 5)
	d := New(&garbageDrive{inner: sim}, "garbage0")
	_, err := d.MSID(ctx)
	if !errors.Is(err, ErrMalformedResponse) || !strings.Contains(err.Error(), "garbage0") {
		t.Fatalf("garbage response: %v", err)
	}
}

func TestEnumerateHostRoot(t *testing.T) {
	// Read-only walk of this machine's sysfs: it must not fail.
	if _, err := Enumerate(context.Background(), "/"); err != nil {
		t.Fatal(err)
	}
}
