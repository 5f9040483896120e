package nvmetcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// fuzzSeeds returns well-formed host PDU streams (after ICReq) to start from.
func fuzzSeeds() [][]byte {
	h := &testHost{}
	capsule := func(c *sqe, data []byte) []byte {
		hdr := make([]byte, 72)
		copy(hdr[8:], c[:])
		return h.buildPDU(0x04, 0, hdr, data)
	}
	connect := fabricsCmd(0x01)
	connect.putU16(44, 31)
	binary.LittleEndian.PutUint32(connect[32:], 1024)
	connect[39] = 0x01
	conn := capsule(connect, connectData(testHostID, 0xFFFF, nqnA, testHostNQN))
	enable := fabricsCmd(0x00)
	binary.LittleEndian.PutUint32(enable[44:], 0x14)
	enable.putU64(48, 1|6<<16|4<<20)
	write := rwCmd(0x01, 0, 16)
	binary.LittleEndian.PutUint32(write[32:], 8192)
	write[39] = 0x5A
	h2c := make([]byte, 24)
	binary.LittleEndian.PutUint32(h2c[16:], 512)
	term := make([]byte, 24)
	term[8] = 1
	return [][]byte{
		conn,
		append(append(append([]byte{}, conn...), capsule(enable, nil)...), capsule(newCmd(0x06).dw(10, 1), nil)...),
		append(append(append([]byte{}, conn...), capsule(enable, nil)...), capsule(write, nil)...),
		h.buildPDU(0x06, 0x04, h2c, make([]byte, 512)),
		h.buildPDU(0x02, 0, term, nil),
		capsule(newCmd(0x18), nil),
	}
}

// FuzzPDU feeds arbitrary bytes to the PDU parser and, after a valid
// ICReq, to a whole connection handler: neither may panic, hang, or read
// more data than the negotiated limits allow.
func FuzzPDU(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(uint8(0), s)
		f.Add(uint8(3), s)
	}
	tg, err := NewTarget(nil, Options{HandshakeTimeout: time.Second, MaxH2CData: 8192, MaxTransfer: 64 << 10})
	if err != nil {
		f.Fatal(err)
	}
	if err := tg.AddSubsystem(nqnA, newMemDevice("FUZZ", 512, 256)); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, mode uint8, stream []byte) {
		// 1. The parser alone.
		lim := &pduLimits{established: true, hdgst: mode&1 != 0, ddgst: mode&2 != 0, maxCapsule: 8192, maxH2CData: 8192}
		r := bytes.NewReader(stream)
		buf := make([]byte, 256)
		for range 64 {
			h, err := readHeader(r, buf, lim)
			if err != nil {
				var pe *protoError
				if !errors.As(err, &pe) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error type %T: %v", err, err)
				}
				break
			}
			if int(h.hlen) != len(h.raw) || h.dataLen < 0 {
				t.Fatalf("inconsistent header %+v", h)
			}
			if (h.typ == pduCapsuleCmd && h.dataLen > lim.maxCapsule) || (h.typ == pduH2CData && h.dataLen > int(lim.maxH2CData)) {
				t.Fatalf("data length %d past the limit for type %#x", h.dataLen, h.typ)
			}
			if h.typ == pduH2CData {
				if _, err := parseH2CData(h); err != nil {
					break
				}
			}
			if err := readData(r, h, make([]byte, h.dataLen)); err != nil && !errors.Is(err, errDataDigest) {
				break
			}
		}

		// 2. A whole connection.
		client, server := net.Pipe()
		q := newQueue(tg, server)
		done := make(chan struct{})
		go func() { q.serve(); close(done) }()
		drained := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, client); close(drained) }()
		ic := make([]byte, 128)
		ic[2] = 128
		binary.LittleEndian.PutUint32(ic[4:], 128)
		ic[11] = mode & 3
		_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := client.Write(ic); err == nil {
			_, _ = client.Write(stream)
		}
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection handler did not end after the host hung up")
		}
		<-drained
		// The association, if any, is gone.
		if n := tg.Associations(nqnA); n != 0 {
			deadline := time.Now().Add(2 * time.Second)
			for tg.Associations(nqnA) != 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := tg.Associations(nqnA); n != 0 {
				t.Fatalf("%d associations left after hang-up", n)
			}
		}
	})
}

var _ blockdev.Device = (*memDevice)(nil)
