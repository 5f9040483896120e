package transport

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// fakeTPer answers IF-RECV the way TCG Core 3.3.10.4 asks a TPer to: a
// response that does not fit the allocation is kept, and an empty
// ComPacket says how much room it needs.
type fakeTPer struct {
	pending []byte // the whole response ComPacket, header included
	notYet  bool   // answer "not ready" (OutstandingData 1, MinTransfer 0)
	truncs  bool   // misbehave: truncate instead of keeping the response
	allocs  []int  // allocation lengths seen
}

func comPacket(payload int) []byte {
	b := make([]byte, comPacketHeaderLen+payload)
	binary.BigEndian.PutUint32(b[16:], uint32(payload))
	for i := comPacketHeaderLen; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

func (f *fakeTPer) recv(p []byte) error {
	f.allocs = append(f.allocs, len(p))
	clear(p)
	switch {
	case f.notYet:
		binary.BigEndian.PutUint32(p[8:], 1)
	case f.pending == nil:
	case len(f.pending) <= len(p) || f.truncs:
		copy(p, f.pending)
		f.pending = nil
	default:
		binary.BigEndian.PutUint32(p[8:], uint32(len(f.pending)))
		binary.BigEndian.PutUint32(p[12:], uint32(len(f.pending)))
	}
	return nil
}

func TestRecvComPacket(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tper    fakeTPer
		buf     int
		allocs  []int
		payload int    // the payload the caller must find, -1: none
		err     string // substring of the expected error
	}{
		{name: "small response in one transfer", tper: fakeTPer{pending: comPacket(100)}, buf: 1 << 20, allocs: []int{4096}, payload: 100},
		{name: "nothing pending", tper: fakeTPer{}, buf: 64 << 10, allocs: []int{4096}, payload: 0},
		{name: "not ready yet", tper: fakeTPer{notYet: true}, buf: 64 << 10, allocs: []int{4096}, payload: 0},
		{name: "large response received again", tper: fakeTPer{pending: comPacket(10000)}, buf: 64 << 10, allocs: []int{4096, 10240}, payload: 10000},
		{name: "response exactly filling the first allocation", tper: fakeTPer{pending: comPacket(4096 - 20)}, buf: 64 << 10, allocs: []int{4096}, payload: 4076},
		{name: "small buffer used whole", tper: fakeTPer{pending: comPacket(100)}, buf: 2048, allocs: []int{2048}, payload: 100},
		{name: "response larger than the buffer", tper: fakeTPer{pending: comPacket(20000)}, buf: 16 << 10, allocs: []int{4096}, err: "needs"},
		{name: "response filling the whole buffer", tper: fakeTPer{pending: comPacket(64<<10 - 20)}, buf: 64 << 10, allocs: []int{4096, 64 << 10}, payload: 64<<10 - 20},
		{name: "truncating TPer", tper: fakeTPer{pending: comPacket(10000), truncs: true}, buf: 64 << 10, allocs: []int{4096}, err: "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.tper
			want := append([]byte(nil), f.pending...)
			buf := make([]byte, tc.buf)
			err := recvComPacket(f.recv, buf)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one saying %q", err, tc.err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if len(f.allocs) != len(tc.allocs) {
				t.Fatalf("allocations %v, want %v", f.allocs, tc.allocs)
			}
			for i := range f.allocs {
				if f.allocs[i] != tc.allocs[i] {
					t.Fatalf("allocations %v, want %v", f.allocs, tc.allocs)
				}
			}
			if tc.err != "" {
				return
			}
			if got := int(binary.BigEndian.Uint32(buf[16:20])); got != tc.payload {
				t.Fatalf("ComPacket length %d, want %d", got, tc.payload)
			}
			if tc.payload > 0 && string(buf[:len(want)]) != string(want) {
				t.Fatal("response bytes differ")
			}
		})
	}
}

func TestRecvComPacketError(t *testing.T) {
	boom := errors.New("boom")
	err := recvComPacket(func([]byte) error { return boom }, make([]byte, 64<<10))
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}
