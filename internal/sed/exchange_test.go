package sed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
)

// scriptedIntf answers IF-RECV with the ComPacket headers (or errors) it is
// given, in order, and logs every command that reaches it.
type scriptedIntf struct {
	recvs []func(b []byte) error
	log   []string
}

func (s *scriptedIntf) IFSend(proto drive.SecurityProtocol, sps uint16, _ []byte) error {
	s.log = append(s.log, fmt.Sprintf("send %d/%#x", proto, sps))
	return nil
}

func (s *scriptedIntf) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	s.log = append(s.log, fmt.Sprintf("recv %d/%#x", proto, sps))
	if len(s.recvs) == 0 {
		return errors.New("unscripted IF-RECV")
	}
	f := s.recvs[0]
	s.recvs = s.recvs[1:]
	return f(*data)
}

// header writes a ComPacket header.
func header(outstanding, length uint32) func([]byte) error {
	return func(b []byte) error {
		binary.BigEndian.PutUint32(b[8:], outstanding)
		binary.BigEndian.PutUint32(b[16:], length)
		return nil
	}
}

// stackResetResponse writes a HANDLE_COMID_RESPONSE to STACK_RESET.
func stackResetResponse(comID uint16, status uint32) func([]byte) error {
	return func(b []byte) error {
		binary.BigEndian.PutUint16(b[0:], comID)
		binary.BigEndian.PutUint32(b[4:], comIDRequestStackReset)
		binary.BigEndian.PutUint16(b[10:], 4)
		binary.BigEndian.PutUint32(b[12:], status)
		return nil
	}
}

type step struct {
	send  bool
	proto drive.SecurityProtocol
	comID uint16
}

func TestExchangeTracker(t *testing.T) {
	const c = 0x07fe
	mgmt, tper := drive.SecurityProtocolTCGManagement, drive.SecurityProtocolTCGTPer
	recv := func(id uint16) step { return step{proto: mgmt, comID: id} }
	send := func(id uint16) step { return step{send: true, proto: mgmt, comID: id} }
	for _, tc := range []struct {
		name    string
		steps   []step
		replies []func([]byte) error
		want    string // commands that reach the drive
	}{
		{
			name:  "first check goes to the drive",
			steps: []step{recv(c)}, replies: []func([]byte) error{header(0, 0)},
			want: "recv 1/0x7fe",
		},
		{
			name:    "a method call after a whole response skips the check",
			steps:   []step{recv(c), send(c), recv(c), recv(c), send(c), recv(c)},
			replies: []func([]byte) error{header(0, 0), header(0, 100), header(0, 80)},
			want:    "recv 1/0x7fe, send 1/0x7fe, recv 1/0x7fe, send 1/0x7fe, recv 1/0x7fe",
		},
		{
			name:    "a response not ready yet is polled at the drive",
			steps:   []step{send(c), recv(c), recv(c), recv(c)},
			replies: []func([]byte) error{header(1, 0), header(1, 0), header(0, 64)},
			want:    "send 1/0x7fe, recv 1/0x7fe, recv 1/0x7fe, recv 1/0x7fe",
		},
		{
			name:    "a response too big for the buffer stays pending",
			steps:   []step{send(c), recv(c), recv(c)},
			replies: []func([]byte) error{header(9000, 0), header(0, 8980)},
			want:    "send 1/0x7fe, recv 1/0x7fe, recv 1/0x7fe",
		},
		{
			name:    "an error leaves the state unknown",
			steps:   []step{send(c), recv(c), recv(c)},
			replies: []func([]byte) error{func([]byte) error { return errors.New("transport down") }, header(0, 0)},
			want:    "send 1/0x7fe, recv 1/0x7fe, recv 1/0x7fe",
		},
		{
			name:    "a successful stack reset leaves nothing pending",
			steps:   []step{{send: true, proto: tper, comID: c}, {proto: tper, comID: c}, recv(c)},
			replies: []func([]byte) error{stackResetResponse(c, 0)},
			want:    "send 2/0x7fe, recv 2/0x7fe",
		},
		{
			name:    "a failed stack reset does not",
			steps:   []step{{send: true, proto: tper, comID: c}, {proto: tper, comID: c}, recv(c)},
			replies: []func([]byte) error{stackResetResponse(c, 1), header(0, 0)},
			want:    "send 2/0x7fe, recv 2/0x7fe, recv 1/0x7fe",
		},
		{
			name:    "ComIDs are tracked apart",
			steps:   []step{recv(c), recv(0x1000), recv(c), recv(0x1000)},
			replies: []func([]byte) error{header(0, 0), header(0, 0)},
			want:    "recv 1/0x7fe, recv 1/0x1000",
		},
		{
			name:    "level 0 discovery always reaches the drive",
			steps:   []step{recv(uint16(core.ComIDDiscoveryL0)), recv(uint16(core.ComIDDiscoveryL0))},
			replies: []func([]byte) error{header(0, 0), header(0, 0)},
			want:    "recv 1/0x1, recv 1/0x1",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &scriptedIntf{recvs: tc.replies}
			x := newExchangeTracker(fake)
			for i, s := range tc.steps {
				if s.send {
					if err := x.IFSend(s.proto, s.comID, make([]byte, 512)); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					continue
				}
				buf := make([]byte, 4096)
				for j := range buf {
					buf[j] = 0xEE // a local answer must not leave garbage
				}
				forwarded := len(fake.log)
				err := x.IFRecv(s.proto, s.comID, &buf)
				if err != nil {
					continue // the scripted error
				}
				if len(fake.log) == forwarded { // answered locally
					if got := binary.BigEndian.Uint16(buf[4:]); got != s.comID {
						t.Errorf("step %d: local answer names ComID %#x, want %#x", i, got, s.comID)
					}
					for _, off := range []int{8, 12, 16, 20 + 20, 20 + 24 + 8} { // OutstandingData, MinTransfer, Length, packet and subpacket lengths
						if v := binary.BigEndian.Uint32(buf[off:]); v != 0 {
							t.Errorf("step %d: local answer has %#x at offset %d, want an empty ComPacket", i, v, off)
						}
					}
				}
			}
			if got := strings.Join(fake.log, ", "); got != tc.want {
				t.Errorf("drive saw %q\nwant       %q", got, tc.want)
			}
		})
	}
}

// countingIntf counts the commands that reach a drive.
type countingIntf struct {
	core.DriveIntf
	sends, recvs int
	// checks counts ComPacket IF-RECVs that followed another IF-RECV on
	// the same ComID without an IF-SEND between: go-tcg-storage's
	// "nothing pending" checks.
	checks   int
	lastRecv map[uint16]bool
}

func (c *countingIntf) SerialNumber() ([]byte, error) {
	return c.DriveIntf.(interface{ SerialNumber() ([]byte, error) }).SerialNumber()
}

func (c *countingIntf) IFSend(proto drive.SecurityProtocol, sps uint16, data []byte) error {
	c.sends++
	c.lastRecv[sps] = false
	return c.DriveIntf.IFSend(proto, sps, data)
}

func (c *countingIntf) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	c.recvs++
	if proto == drive.SecurityProtocolTCGManagement && sps != uint16(core.ComIDDiscoveryL0) {
		if c.lastRecv[sps] {
			c.checks++
		}
		c.lastRecv[sps] = true
	}
	return c.DriveIntf.IFRecv(proto, sps, data)
}

// TestExchangeTrackerUnlock runs a real unlock against the simulator: it
// works, and the drive sees none of the library's "nothing pending" checks.
func TestExchangeTrackerUnlock(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "XCHG0001", 5)
	cnt := &countingIntf{DriveIntf: sim, lastRecv: map[uint16]bool{}}
	d := New(cnt, "sim0")
	sid, admin1 := key(t), key(t)
	if _, err := d.Enable(ctx, EnableRequest{SID: sid, Admin1: admin1, ArraySerial: "A1", Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	*cnt = countingIntf{DriveIntf: sim, lastRecv: map[uint16]bool{}}
	if _, err := d.Unlock(ctx, admin1); err != nil {
		t.Fatal(err)
	}
	if st := sim.Status(); st.Ranges[0].ReadLocked || st.Ranges[0].WriteLocked {
		t.Fatal("global range still locked after Unlock")
	}
	t.Logf("unlock: %d IF-SEND, %d IF-RECV reached the drive", cnt.sends, cnt.recvs)
	if cnt.checks != 0 {
		t.Errorf("%d \"nothing pending\" checks reached the drive, want 0", cnt.checks)
	}
	// Every method call and session close is one IF-SEND and one IF-RECV
	// (the stack reset and Level 0 discovery add their own).
	if cnt.recvs > cnt.sends+1 {
		t.Errorf("%d IF-RECV for %d IF-SEND", cnt.recvs, cnt.sends)
	}
}
