package kernelflows

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"syscall"
	"testing"
)

// These tests pin the builder and parser to the kernel's algorithm with
// byte sequences worked out by hand from block/sed-opal.c and the TCG Core
// token encoding (3.2.2).

func newTestHost() *Host {
	h := &Host{comid: 0x07fe}
	h.clearCmd()
	return h
}

func TestAddU64Encoding(t *testing.T) {
	tests := []struct {
		n    uint64
		want string
	}{
		{0, "00"},
		{1, "01"},
		{0x3f, "3f"},
		{0x40, "8140"},
		{0x41, "8141"},
		{0xff, "81ff"},
		{0x100, "820100"},
		{0x060000, "83060000"},
		{4096, "821000"},
		{0xffffffffffffffff, "88ffffffffffffffff"},
	}
	for _, tc := range tests {
		h := newTestHost()
		h.addU64(tc.n)
		got := hex.EncodeToString(h.cmd[headerLength:h.pos])
		if got != tc.want || h.berr != 0 {
			t.Errorf("addU64(%#x) = %s (err %v), want %s", tc.n, got, h.berr, tc.want)
		}
	}
}

func TestBytestringHeader(t *testing.T) {
	tests := []struct {
		n      int
		header string
	}{
		{0, "a0"},
		{1, "a1"},
		{15, "af"},
		{16, "d010"},
		{255, "d0ff"},
		{256, "d100"},
		{1981, "d7bd"},
	}
	for _, tc := range tests {
		h := newTestHost()
		h.addBytes(make([]byte, tc.n))
		hl := len(tc.header) / 2
		got := hex.EncodeToString(h.cmd[headerLength : headerLength+hl])
		if got != tc.header || h.pos != headerLength+hl+tc.n {
			t.Errorf("addBytes(%d bytes): header %s, pos %d; want %s, pos %d", tc.n, got, h.pos, tc.header, headerLength+hl+tc.n)
		}
	}
}

func TestBuilderOverflowIsSticky(t *testing.T) {
	h := newTestHost()
	h.addBytes(make([]byte, ioBufferLength-headerLength-2)) // 2-byte header: buffer full
	if h.berr != 0 || h.pos != ioBufferLength {
		t.Fatalf("fill: err %v pos %d", h.berr, h.pos)
	}
	h.addU8(tokEndList)
	h.addU64(0x1234)
	if h.berr != syscall.ERANGE || h.pos != ioBufferLength {
		t.Fatalf("after overflow: err %v pos %d, want ERANGE at %d", h.berr, h.pos, ioBufferLength)
	}
	if err := h.cmdFinalize(0, 0); !errors.Is(err, syscall.EFAULT) {
		t.Fatalf("cmdFinalize after overflow = %v, want EFAULT", err)
	}
}

// header builds the 56-byte ComPacket/Packet/SubPacket header for payload
// as the spec lays it out, independently of cmdFinalize.
func header(comid uint16, tsn, hsn uint32, payload int) []byte {
	padded := (payload + 3) &^ 3
	b := make([]byte, headerLength)
	binary.BigEndian.PutUint16(b[4:], comid)
	binary.BigEndian.PutUint32(b[16:], uint32(packetLength+12+padded))
	binary.BigEndian.PutUint32(b[20:], tsn)
	binary.BigEndian.PutUint32(b[24:], hsn)
	binary.BigEndian.PutUint32(b[40:], uint32(12+padded))
	binary.BigEndian.PutUint32(b[52:], uint32(payload))
	return b
}

func TestStartSessionWire(t *testing.T) {
	h := newTestHost()
	s := Session{Who: User2, Key: Key{LR: 1, Key: []byte("k3y")}}
	// startAuthSession up to the send: build it the same way.
	user := lockingUserUID(uint8(s.Who) - 1)
	h.cmdStart(uidSMU, methodStartSession)
	h.addU64(hostSessionNumber)
	h.addBytes(uidLockingSP[:])
	h.addU8(1)
	h.addU8(tokStartName)
	h.addU8(startSessionHostChallenge)
	h.addBytes(s.Key.Key)
	h.addU8(tokEndName)
	h.addU8(tokStartName)
	h.addU8(startSessionHostSignAuth)
	h.addBytes(user[:])
	h.addU8(tokEndName)
	if err := h.cmdFinalize(0, 0); err != nil {
		t.Fatal(err)
	}
	payload, _ := hex.DecodeString("f8" +
		"a8" + "00000000000000ff" + // SMUID
		"a8" + "000000000000ff02" + // StartSession
		"f0" +
		"8141" + // HSN 0x41: above 63, so a one-byte short atom
		"a8" + "0000020500000002" + // Locking SP
		"01" + // Write
		"f200a36b3379f3" + // HostChallenge "k3y"
		"f203a8" + "0000000900030002" + "f3" + // HostSigningAuthority User2
		"f1" + "f9" + "f0000000f1")
	want := append(header(0x07fe, 0, 0, len(payload)), payload...)
	for len(want)%4 != 0 {
		want = append(want, 0)
	}
	if !bytes.Equal(h.cmd[:h.pos], want) {
		t.Fatalf("StartSession:\n got %x\nwant %x", h.cmd[:h.pos], want)
	}
	if rest := h.cmd[h.pos:]; !bytes.Equal(rest, make([]byte, len(rest))) {
		t.Fatal("bytes after the ComPacket are not zero")
	}
}

func TestEndSessionWire(t *testing.T) {
	h := newTestHost()
	h.clearCmd()
	h.setComID(h.comid)
	h.addU8(tokEndOfSess)
	if err := h.cmdFinalize(0x41, 4097); err != nil {
		t.Fatal(err)
	}
	// The kernel's end-of-session carries cmd_finalize's tokens too.
	payload, _ := hex.DecodeString("faf1f9f0000000f1")
	want := append(header(0x07fe, 4097, 0x41, len(payload)), payload...)
	if !bytes.Equal(h.cmd[:h.pos], want) {
		t.Fatalf("EndOfSession:\n got %x\nwant %x", h.cmd[:h.pos], want)
	}
}

func TestLockUnlockWire(t *testing.T) {
	h := newTestHost()
	h.cmdStart(lockingRangeUID(3), methodSet)
	h.addU8(tokStartName)
	h.addU8(cellValues)
	h.addU8(tokStartList)
	h.addU8(tokStartName)
	h.addU8(colReadLocked)
	h.addU8(0)
	h.addU8(tokEndName)
	h.addU8(tokStartName)
	h.addU8(colWriteLocked)
	h.addU8(1)
	h.addU8(tokEndName)
	h.addU8(tokEndList)
	h.addU8(tokEndName)
	if err := h.cmdFinalize(0x41, 5000); err != nil {
		t.Fatal(err)
	}
	payload, _ := hex.DecodeString("f8" + "a8" + "0000080200030003" + "a8" + "0000000600000017" +
		"f0" + "f201f0" + "f20700f3" + "f20801f3" + "f1f3" + "f1f9f0000000f1")
	want := append(header(0x07fe, 5000, 0x41, len(payload)), payload...)
	for len(want)%4 != 0 {
		want = append(want, 0)
	}
	if !bytes.Equal(h.cmd[:h.pos], want) {
		t.Fatalf("Set ReadLocked/WriteLocked:\n got %x\nwant %x", h.cmd[:h.pos], want)
	}
}

func TestAddUserACEWire(t *testing.T) {
	h := newTestHost()
	h.setLRBooleanACE(uidACEStartToKey, 2, []User{Admin1, User3})
	if err := h.buildErr("t"); err != nil {
		t.Fatal(err)
	}
	got := hex.EncodeToString(h.cmd[headerLength:h.pos])
	want := "f8" + "a8" + "000000080003d002" + "a8" + "0000000600000017" + "f0" +
		"f201f0f203f0" +
		"f2" + "a400000c05" + "a80000000900010001" + "f3" +
		"f2" + "a400000c05" + "a80000000900030003" + "f3" +
		"f2" + "a40000040e" + "01" + "f3" +
		"f1f3f1f3"
	if got != want {
		t.Fatalf("ACE BooleanExpr:\n got %s\nwant %s", got, want)
	}
}

// resp builds a response buffer around payload with the given subpacket
// length (or len(payload) when slen < 0).
func resp(payload []byte, slen int) []byte {
	if slen < 0 {
		slen = len(payload)
	}
	b := make([]byte, ioBufferLength)
	binary.BigEndian.PutUint32(b[16:], uint32(packetLength+12+len(payload)))
	binary.BigEndian.PutUint32(b[40:], uint32(12+len(payload)))
	binary.BigEndian.PutUint32(b[52:], uint32(slen))
	copy(b[headerLength:], payload)
	return b
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestResponseStatus(t *testing.T) {
	const syncSession = "f8a800000000000000ffa8000000000000ff03f08141821001f1f9f0000000f1"
	tests := []struct {
		name    string
		payload string
		slen    int
		status  uint8
		wantErr error
	}{
		{"sync session ok", syncSession, -1, 0, nil},
		{"not authorized", "f8a800000000000000ffa8000000000000ff03f0f1f9f0010000f1", -1, StatusNotAuthorized, nil},
		{"locked out", "f0f1f9f0120000f1", -1, StatusAuthorityLockedOut, nil},
		{"end of session", "fa", -1, 0, nil},
		{"no status list", "f0f1f9", -1, StatusNoMethodStatus, nil},
		{"trailing empty atoms", "f0f1f9f0000000f1ffffff", -1, 0, nil},
		{"zero padding counted in subpacket", "f0f1f9f0000000f1000000", -1, StatusNoMethodStatus, nil},
		{"status as medium atom", "f0f1f9f0c001120000f1", -1, 0, nil},
		{"zero subpacket length", "f0f1f9f0000000f1", 0, 0, syscall.EINVAL},
		{"subpacket past buffer", "f0f1f9f0000000f1", ioBufferLength, 0, syscall.EINVAL},
		{"uint of 9 bytes", "89010203040506070809", -1, 0, syscall.EINVAL},
		{"65 tokens", string(bytes.Repeat([]byte("01"), 65)), -1, 0, ErrKernelUndefined},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buf := resp(mustHex(t, tc.payload), tc.slen)
			var p parsedResp
			err := responseParse(buf, &p)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("responseParse = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("responseParse: %v", err)
			}
			if got := p.status(buf); got != tc.status {
				t.Fatalf("status = %#x, want %#x", got, tc.status)
			}
		})
	}
}

func TestSyncSessionNumbers(t *testing.T) {
	buf := resp(mustHex(t, "f8a800000000000000ffa8000000000000ff03f08141821001f1f9f0000000f1"), -1)
	var p parsedResp
	if err := responseParse(buf, &p); err != nil {
		t.Fatal(err)
	}
	if hsn, tsn := p.getU64(4), p.getU64(5); hsn != 0x41 || tsn != 4097 {
		t.Fatalf("HSN %#x TSN %d, want 0x41 4097", hsn, tsn)
	}
	if s := p.getString(buf, 1); !bytes.Equal(s, uidSMU[:]) {
		t.Fatalf("token 1 = %x, want the SMUID", s)
	}
}

func TestCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{&StatusError{Step: "s", Status: StatusNotAuthorized}, 1},
		{errnoError("s", syscall.EINVAL), -int(syscall.EINVAL)},
		{&TransportError{Op: "send", Err: errors.New("gone")}, -int(syscall.EIO)},
	}
	for _, tc := range tests {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("Code(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
