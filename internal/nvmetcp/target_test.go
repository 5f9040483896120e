package nvmetcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// memDevice is an in-memory block device for transport tests. Its
// security protocol keeps the last payload sent per (protocol, SPSP) and
// returns it, which shows how fields travel; the Opal behaviour itself is
// tested against opalsim.
type memDevice struct {
	id      blockdev.Identity
	bs      int
	mu      sync.Mutex
	data    []byte
	locked  atomic.Bool
	flushes atomic.Int64
	sec     map[[2]uint16][]byte
}

func newMemDevice(serial string, bs int, blocks int) *memDevice {
	return &memDevice{
		id:   blockdev.Identity{Serial: serial, Model: "sedboot test disk", Firmware: "T1"},
		bs:   bs,
		data: make([]byte, bs*blocks),
		sec:  make(map[[2]uint16][]byte),
	}
}

func (d *memDevice) Identity() blockdev.Identity { return d.id }
func (d *memDevice) BlockSize() int              { return d.bs }
func (d *memDevice) NumBlocks() uint64           { return uint64(len(d.data) / d.bs) }
func (d *memDevice) span(lba uint64, n int) (int, error) {
	if n%d.bs != 0 {
		return 0, fmt.Errorf("length %d not a multiple of %d", n, d.bs)
	}
	if lba > d.NumBlocks() || uint64(n/d.bs) > d.NumBlocks()-lba {
		return 0, blockdev.ErrOutOfRange
	}
	if d.locked.Load() {
		return 0, fmt.Errorf("lba %d: %w", lba, blockdev.ErrLocked)
	}
	return int(lba) * d.bs, nil
}
func (d *memDevice) ReadBlocks(lba uint64, p []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	off, err := d.span(lba, len(p))
	if err != nil {
		return err
	}
	copy(p, d.data[off:])
	return nil
}
func (d *memDevice) WriteBlocks(lba uint64, p []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	off, err := d.span(lba, len(p))
	if err != nil {
		return err
	}
	copy(d.data[off:], p)
	return nil
}
func (d *memDevice) Flush() error { d.flushes.Add(1); return nil }
func (d *memDevice) SecuritySend(proto uint8, spsp uint16, data []byte) error {
	if proto != 1 {
		return fmt.Errorf("security protocol %#x not supported", proto)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sec[[2]uint16{uint16(proto), spsp}] = append([]byte(nil), data...)
	return nil
}
func (d *memDevice) SecurityRecv(proto uint8, spsp uint16, alloc int) ([]byte, error) {
	if proto != 1 {
		return nil, fmt.Errorf("security protocol %#x not supported", proto)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.sec[[2]uint16{uint16(proto), spsp}]
	return b[:min(len(b), alloc)], nil
}

func testLogger(tb testing.TB) *slog.Logger {
	if os.Getenv("NVMETCP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// startTarget serves devs (subsystem NQN -> device) on a loopback port.
func startTarget(tb testing.TB, opts Options, devs map[string]blockdev.Device) (*Target, string) {
	tb.Helper()
	tg, err := NewTarget(testLogger(tb), opts)
	if err != nil {
		tb.Fatal(err)
	}
	for nqn, d := range devs {
		if err := tg.AddSubsystem(nqn, d); err != nil {
			tb.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tg.Serve(ctx, l) }()
	tb.Cleanup(func() {
		cancel()
		tg.Close()
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	return tg, l.Addr().String()
}

const nqnA = "nqn.2026-11.io.sedboot:sim:TESTA"
const nqnB = "nqn.2026-11.io.sedboot:sim:TESTB"

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestConnectIdentifyReadWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    hostOpts
		bs   int
	}{
		{"plain", hostOpts{}, 512},
		{"header-digest", hostOpts{hdgst: true}, 512},
		{"data-digest", hostOpts{ddgst: true}, 4096},
		{"both-digests-hpda", hostOpts{hdgst: true, ddgst: true, hpda: 7}, 512},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMemDevice("SN"+strings.ToUpper(tc.name[:4]), tc.bs, 4096)
			_, addr := startTarget(t, Options{MaxH2CData: 16 << 10, MaxTransfer: 256 << 10}, map[string]blockdev.Device{nqnA: dev})
			s := openSession(t, addr, nqnA, tc.o)
			a := s.admin

			capv := a.propGet(0x00, true)
			if mqes := capv & 0xFFFF; mqes != 127 {
				t.Errorf("CAP.MQES %d, want 127", mqes)
			}
			if capv&(1<<37) == 0 || capv&(1<<16) == 0 {
				t.Errorf("CAP %#x lacks NVM command set or CQR", capv)
			}
			if vs := a.propGet(0x08, false); vs != 0x10400 {
				t.Errorf("VS %#x", vs)
			}

			id := a.identify(1, 0)
			checks := []struct {
				what      string
				got, want any
			}{
				{"serial", strings.TrimSpace(string(id[4:24])), dev.id.Serial},
				{"model", strings.TrimSpace(string(id[24:64])), dev.id.Model},
				{"cntlid", binary.LittleEndian.Uint16(id[78:]), s.cntlid},
				{"OACS security", binary.LittleEndian.Uint16(id[256:]) & 1, uint16(1)},
				{"SGLS supported", binary.LittleEndian.Uint32(id[536:]) & 3, uint32(1)},
				{"subnqn", trimNUL(id[768:1024]), nqnA},
				{"IOCCSZ", binary.LittleEndian.Uint32(id[1792:]), uint32((64 + 8192) / 16)},
				{"IORCSZ", binary.LittleEndian.Uint32(id[1796:]), uint32(1)},
				{"ICDOFF", binary.LittleEndian.Uint16(id[1800:]), uint16(0)},
				{"MAXCMD", binary.LittleEndian.Uint16(id[514:]), uint16(128)},
				{"KAS", binary.LittleEndian.Uint16(id[320:]) != 0, true},
				{"NN", binary.LittleEndian.Uint32(id[516:]), uint32(1)},
				{"MDTS", id[77], uint8(6)},
				{"CNTRLTYPE", id[111], uint8(1)},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("identify controller %s = %v, want %v", c.what, c.got, c.want)
				}
			}

			ns := a.identify(0, 1)
			if nsze := binary.LittleEndian.Uint64(ns[0:]); nsze != 4096 {
				t.Errorf("NSZE %d", nsze)
			}
			if lbads := ns[130]; 1<<lbads != tc.bs {
				t.Errorf("LBADS %d for block size %d", lbads, tc.bs)
			}
			list := a.identify(2, 0)
			if binary.LittleEndian.Uint32(list[0:]) != 1 || binary.LittleEndian.Uint32(list[4:]) != 0 {
				t.Errorf("active namespace list % x", list[:8])
			}
			desc := a.identify(3, 1)
			var seenEUI, seenNGUID bool
			for p := desc; len(p) >= 4 && p[0] != 0; p = p[4+int(p[1]):] {
				switch p[0] {
				case 1:
					seenEUI = p[1] == 8 && !bytes.Equal(p[4:12], make([]byte, 8)) && bytes.Equal(p[4:12], ns[120:128])
				case 2:
					seenNGUID = p[1] == 16 && bytes.Equal(p[4:20], ns[104:120])
				}
			}
			if !seenEUI || !seenNGUID {
				t.Errorf("descriptor list lacks EUI-64 (%v) or NGUID (%v) matching Identify Namespace", seenEUI, seenNGUID)
			}

			// In-capsule write, R2T write across several H2CData PDUs, reads back.
			for _, n := range []int{tc.bs, 8192, 40 << 10, 256 << 10} {
				if n%tc.bs != 0 {
					continue
				}
				want := randBytes(n)
				if r := s.write(t, 7, want, tc.bs); r.status != 0 {
					t.Fatalf("write %d bytes: status %#x", n, r.status)
				}
				r, got := s.read(t, 7, n, tc.bs)
				if r.status != 0 || !bytes.Equal(got, want) {
					t.Fatalf("read back %d bytes: status %#x equal %v", n, r.status, bytes.Equal(got, want))
				}
			}
			// Write Zeroes, Flush.
			s.io.mustOK(rwCmd(0x08, 7, 2), nil, 0)
			if _, got := s.read(t, 7, 2*tc.bs, tc.bs); !bytes.Equal(got, make([]byte, 2*tc.bs)) {
				t.Errorf("write zeroes left data")
			}
			f := dev.flushes.Load()
			s.io.mustOK(newCmd(0x00).nsid(1), nil, 0)
			if dev.flushes.Load() != f+1 {
				t.Errorf("flush did not reach the device")
			}
			// Errors: out of range, too large, bad namespace.
			if r, _ := s.read(t, 4095, 2*tc.bs, tc.bs); r.status != 0x080 || !r.dnr {
				t.Errorf("read past end: status %#x dnr %v, want LBA out of range", r.status, r.dnr)
			}
			if r, _, _ := s.io.send(rwCmd(0x02, 0, 1).nsid(2), nil, tc.bs); r.status != 0x00B {
				t.Errorf("read NSID 2: status %#x", r.status)
			}
			if r, _, _ := s.io.send(rwCmd(0x02, 0, uint32(512<<10/tc.bs)), nil, 512<<10); r.status != 0x002 {
				t.Errorf("read beyond MDTS: status %#x", r.status)
			}
			// Logs and features.
			if r, d, err := a.getLog(0x02, 0xFFFFFFFF, 512, 0); err != nil || r.status != 0 || binary.LittleEndian.Uint64(d[80:]) == 0 {
				t.Errorf("SMART log: status %#x err %v", r.status, err)
			}
			if r, _, err := a.getLog(0x01, 0, 64, 0); err != nil || r.status != 0 {
				t.Errorf("error log: status %#x err %v", r.status, err)
			}
			if r, _, _ := a.getLog(0x0C, 0, 4096, 0); r.status != 0x109 {
				t.Errorf("ANA log (not advertised): status %#x", r.status)
			}
			if r, _ := a.mustOK(newCmd(0x0A).dw(10, 0x07), nil, 0); r.result != 0 {
				t.Errorf("Get Features number of queues %#x, want 0 (one queue each)", r.result)
			}
			if r, _ := a.mustOK(newCmd(0x0A).dw(10, 0x0F), nil, 0); r.result != 5000 {
				t.Errorf("Get Features KATO %d", r.result)
			}
			a.mustOK(newCmd(0x18), nil, 0) // Keep Alive
		})
	}
}

func TestSecurityFieldsAndLockStatus(t *testing.T) {
	dev := newMemDevice("SECF", 512, 64)
	_, addr := startTarget(t, Options{}, map[string]blockdev.Device{nqnA: dev})
	s := openSession(t, addr, nqnA, hostOpts{})
	payload := randBytes(2048)
	// SECP 1, SPSP (ComID) 0x07FE, TL 2048, in capsule.
	s.admin.mustOK(newCmd(0x81).dw(10, 1<<24|0x07FE<<8).dw(11, 2048), payload, 0)
	r, got := s.admin.mustOK(newCmd(0x82).dw(10, 1<<24|0x07FE<<8).dw(11, 4096), nil, 4096)
	if r.status != 0 || len(got) != 4096 || !bytes.Equal(got[:2048], payload) || !bytes.Equal(got[2048:], make([]byte, 2048)) {
		t.Fatalf("security receive did not return the payload padded to AL")
	}
	// Large security send through R2T.
	big := randBytes(64 << 10)
	s.admin.mustOK(newCmd(0x81).dw(10, 1<<24|0x0001<<8).dw(11, uint32(len(big))), big, 0)
	if _, got := s.admin.mustOK(newCmd(0x82).dw(10, 1<<24|0x0001<<8).dw(11, uint32(len(big))), nil, len(big)); !bytes.Equal(got, big) {
		t.Fatalf("64 KiB security round trip differs")
	}
	// Device error -> Invalid Field.
	if r, _, _ := s.admin.send(newCmd(0x82).dw(10, 2<<24).dw(11, 512), nil, 512); r.status != 0x002 {
		t.Errorf("unsupported protocol: status %#x", r.status)
	}
	// Locked device -> Access Denied on read and write.
	s.write(t, 0, randBytes(512), 512)
	dev.locked.Store(true)
	if r, _ := s.read(t, 0, 512, 512); r.status != 0x286 || !r.dnr {
		t.Errorf("locked read: status %#x dnr %v, want 0x286 with DNR", r.status, r.dnr)
	}
	if r := s.write(t, 0, randBytes(4096), 512); r.status != 0x286 {
		t.Errorf("locked write: status %#x", r.status)
	}
	if r := s.write(t, 0, randBytes(16<<10), 512); r.status != 0x286 {
		t.Errorf("locked R2T write: status %#x", r.status)
	}
	if r, _, _ := s.io.send(rwCmd(0x08, 0, 8), nil, 0); r.status != 0x286 {
		t.Errorf("locked write zeroes: status %#x", r.status)
	}
	dev.locked.Store(false)
	if r, _ := s.read(t, 0, 512, 512); r.status != 0 {
		t.Errorf("unlocked read: status %#x", r.status)
	}
}

func TestDiscovery(t *testing.T) {
	_, addr := startTarget(t, Options{}, map[string]blockdev.Device{
		nqnA: newMemDevice("DISCA", 512, 64),
		nqnB: newMemDevice("DISCB", 512, 64),
	})
	s := openSession(t, addr, DiscoveryNQN, hostOpts{})
	id := s.admin.identify(1, 0)
	if id[111] != 2 || trimNUL(id[768:1024]) != DiscoveryNQN {
		t.Fatalf("discovery identify: CNTRLTYPE %d subnqn %q", id[111], trimNUL(id[768:1024]))
	}
	r, hdr, err := s.admin.getLog(0x70, 0, 1024, 0)
	if err != nil || r.status != 0 {
		t.Fatalf("discovery log header: %v %#x", err, r.status)
	}
	numrec := binary.LittleEndian.Uint64(hdr[8:])
	if numrec != 2 {
		t.Fatalf("discovery log has %d records", numrec)
	}
	_, recs, err := s.admin.getLog(0x70, 0, 2048, 1024)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	var nqns []string
	for i := range 2 {
		e := recs[i*1024:]
		if e[0] != 3 || e[1] != 1 || e[2] != 2 {
			t.Errorf("entry %d: trtype %d adrfam %d subtype %d", i, e[0], e[1], e[2])
		}
		if strings.TrimSpace(string(e[32:64])) != port || strings.TrimSpace(trimNUL(e[512:768])) != host {
			t.Errorf("entry %d: address %q:%q, want %s", i, e[512:530], e[32:40], addr)
		}
		nqns = append(nqns, trimNUL(e[256:512]))
	}
	if strings.Join(nqns, ",") != nqnA+","+nqnB && strings.Join(nqns, ",") != nqnB+","+nqnA {
		t.Errorf("discovery NQNs %v", nqns)
	}
	// A discovery controller has no I/O queues.
	h := dialHost(t, addr, hostOpts{})
	if r, _ := h.connect(1, 31, 0, testHostID, s.cntlid, DiscoveryNQN, testHostNQN); r.status != 0x182 {
		t.Errorf("I/O queue on discovery: status %#x", r.status)
	}
}

func TestConnectRefusals(t *testing.T) {
	_, addr := startTarget(t, Options{}, map[string]blockdev.Device{nqnA: newMemDevice("REFA", 512, 64)})
	s := openSession(t, addr, nqnA, hostOpts{})
	otherID := testHostID
	otherID[0] ^= 0xFF
	for _, tc := range []struct {
		name    string
		qid     uint16
		sqsize  uint16
		hostID  [16]byte
		cntlid  uint16
		sub     string
		hostnqn string
		status  uint16
		ipo     uint64
	}{
		{"unknown subsystem", 0, 31, testHostID, 0xFFFF, "nqn.2026-11.io.sedboot:sim:NONE", testHostNQN, 0x182, 1<<16 | 256},
		{"static cntlid", 0, 31, testHostID, 1, nqnA, testHostNQN, 0x182, 1<<16 | 16},
		{"zero sqsize", 0, 0, testHostID, 0xFFFF, nqnA, testHostNQN, 0x182, 44},
		{"queue too deep", 0, 1024, testHostID, 0xFFFF, nqnA, testHostNQN, 0x182, 44},
		{"bad host nqn", 0, 31, testHostID, 0xFFFF, nqnA, "host", 0x182, 1<<16 | 512},
		{"io unknown controller", 1, 31, testHostID, 999, nqnA, testHostNQN, 0x182, 1<<16 | 16},
		{"io other host id", 1, 31, otherID, s.cntlid, nqnA, testHostNQN, 0x182, 1<<16 | 16},
		{"io qid taken", 1, 31, testHostID, s.cntlid, nqnA, testHostNQN, 0x182, 42},
		{"io qid beyond granted", 2, 31, testHostID, s.cntlid, nqnA, testHostNQN, 0x182, 42},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := dialHost(t, addr, hostOpts{})
			r, err := h.connect(tc.qid, tc.sqsize, 0, tc.hostID, tc.cntlid, tc.sub, tc.hostnqn)
			if err != nil {
				t.Fatal(err)
			}
			if r.status != tc.status || r.result != tc.ipo {
				t.Errorf("status %#x result %#x, want %#x %#x", r.status, r.result, tc.status, tc.ipo)
			}
			// Commands other than Connect are refused on an unconnected queue.
			if r, _, err := h.send(newCmd(0x18), nil, 0); err != nil || r.status != 0x00C {
				t.Errorf("keep alive before connect: status %#x err %v", r.status, err)
			}
		})
	}
}

// malformed PDUs: each must end only its own connection with the right FES.
func TestMalformedPDUs(t *testing.T) {
	_, addr := startTarget(t, Options{}, map[string]blockdev.Device{nqnA: newMemDevice("MALF", 512, 256)})
	bystander := openSession(t, addr, nqnA, hostOpts{hdgst: true})
	payload := randBytes(4096)

	capsule := func(h *testHost) []byte {
		hdr := make([]byte, 72)
		hdr[8] = 0x18
		return h.buildPDU(0x04, 0, hdr, nil)
	}
	for _, tc := range []struct {
		name string
		o    hostOpts
		pdu  func(h *testHost) []byte
		fes  uint16
	}{
		{"unknown type", hostOpts{}, func(h *testHost) []byte { return []byte{0x0F, 0, 24, 0, 24, 0, 0, 0} }, 1},
		{"controller-only type", hostOpts{}, func(h *testHost) []byte { return []byte{0x05, 0, 24, 0, 24, 0, 0, 0} }, 1},
		{"second ICReq", hostOpts{}, func(h *testHost) []byte {
			b := make([]byte, 128)
			b[2] = 128
			binary.LittleEndian.PutUint32(b[4:], 128)
			return b
		}, 2},
		{"capsule HLEN", hostOpts{}, func(h *testHost) []byte { b := capsule(h); b[2] = 71; return b }, 1},
		{"capsule PLEN below header", hostOpts{}, func(h *testHost) []byte {
			b := capsule(h)
			binary.LittleEndian.PutUint32(b[4:], 40)
			return b
		}, 1},
		{"capsule data beyond limit", hostOpts{}, func(h *testHost) []byte {
			b := capsule(h)
			b[3] = 72
			binary.LittleEndian.PutUint32(b[4:], 72+1<<20)
			return b
		}, 1},
		{"PDO inside header", hostOpts{}, func(h *testHost) []byte {
			b := append(capsule(h), payload[:16]...)
			b[3] = 40
			binary.LittleEndian.PutUint32(b[4:], 72+16)
			return b
		}, 1},
		{"header digest wrong", hostOpts{hdgst: true}, func(h *testHost) []byte { b := capsule(h); b[len(b)-1] ^= 1; return b }, 3},
		{"header digest missing", hostOpts{hdgst: true}, func(h *testHost) []byte {
			hdr := make([]byte, 72)
			hdr[8] = 0x18
			hdr[0], hdr[2] = 0x04, 72
			binary.LittleEndian.PutUint32(hdr[4:], 72)
			return hdr
		}, 1},
		{"H2CData without R2T", hostOpts{}, func(h *testHost) []byte {
			hdr := make([]byte, 24)
			binary.LittleEndian.PutUint32(hdr[16:], 512)
			return h.buildPDU(0x06, 0x04, hdr, payload[:512])
		}, 1},
		{"H2CData DATAL mismatch", hostOpts{}, func(h *testHost) []byte {
			hdr := make([]byte, 24)
			binary.LittleEndian.PutUint32(hdr[16:], 100)
			return h.buildPDU(0x06, 0x04, hdr, payload[:512])
		}, 1},
		{"TermReq-sized garbage", hostOpts{}, func(h *testHost) []byte { return bytes.Repeat([]byte{0xFF}, 64) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := dialHost(t, addr, tc.o)
			if _, err := h.nc.Write(tc.pdu(h)); err != nil {
				t.Fatal(err)
			}
			te, err := expectTerm(h)
			if err != nil {
				t.Fatalf("%v", err)
			}
			if te.fes != tc.fes {
				t.Errorf("FES %#x, want %#x", te.fes, tc.fes)
			}
			// The other host is unaffected.
			want := randBytes(4096)
			if r := bystander.write(t, 9, want, 512); r.status != 0 {
				t.Fatalf("bystander write: %#x", r.status)
			}
			if _, got := bystander.read(t, 9, 4096, 512); !bytes.Equal(got, want) {
				t.Fatalf("bystander read back differs")
			}
		})
	}
}

// An H2CData PDU beyond its R2T, and a host vanishing mid-transfer.
func TestTransferErrorsAndDisconnect(t *testing.T) {
	tg, addr := startTarget(t, Options{MaxH2CData: 8192}, map[string]blockdev.Device{nqnA: newMemDevice("XFER", 512, 256)})
	bystander := openSession(t, addr, nqnA, hostOpts{})
	data := randBytes(64 << 10)

	startWrite := func(s *session) (ttag uint16, r2tLen uint32) {
		t.Helper()
		c := rwCmd(0x01, 0, uint32(len(data)/512))
		binary.LittleEndian.PutUint16(c[2:], 77)
		binary.LittleEndian.PutUint32(c[32:], uint32(len(data)))
		c[39] = 0x5A
		hdr := make([]byte, 72)
		copy(hdr[8:], c[:])
		if _, err := s.io.nc.Write(s.io.buildPDU(0x04, 0, hdr, nil)); err != nil {
			t.Fatal(err)
		}
		p, err := s.io.readPDU()
		if err != nil || p.typ != 0x09 {
			t.Fatalf("want R2T, got %+v err %v", p, err)
		}
		return binary.LittleEndian.Uint16(p.hdr[10:]), binary.LittleEndian.Uint32(p.hdr[16:])
	}

	t.Run("data beyond R2T", func(t *testing.T) {
		s := openSession(t, addr, nqnA, hostOpts{})
		ttag, l := startWrite(s)
		first := make([]byte, 24)
		binary.LittleEndian.PutUint16(first[8:], 77)
		binary.LittleEndian.PutUint16(first[10:], ttag)
		binary.LittleEndian.PutUint32(first[16:], 4096)
		if _, err := s.io.nc.Write(s.io.buildPDU(0x06, 0, first, data[:4096])); err != nil {
			t.Fatal(err)
		}
		// The second PDU overruns the R2T's end.
		hdr := make([]byte, 24)
		binary.LittleEndian.PutUint16(hdr[8:], 77)
		binary.LittleEndian.PutUint16(hdr[10:], ttag)
		binary.LittleEndian.PutUint32(hdr[12:], 4096)
		binary.LittleEndian.PutUint32(hdr[16:], l)
		if _, err := s.io.nc.Write(s.io.buildPDU(0x06, 0x04, hdr, data[4096:4096+l])); err != nil {
			t.Fatal(err)
		}
		te, err := expectTerm(s.io)
		if err != nil || te.fes != 0x04 {
			t.Fatalf("want FES 4 (data out of range), got %v %v", te, err)
		}
	})
	t.Run("disconnect mid-transfer", func(t *testing.T) {
		before := tg.Associations(nqnA)
		s := openSession(t, addr, nqnA, hostOpts{})
		ttag, _ := startWrite(s)
		// Half the first R2T, then the host vanishes.
		hdr := make([]byte, 24)
		binary.LittleEndian.PutUint16(hdr[8:], 77)
		binary.LittleEndian.PutUint16(hdr[10:], ttag)
		binary.LittleEndian.PutUint32(hdr[16:], 4096)
		if _, err := s.io.nc.Write(s.io.buildPDU(0x06, 0, hdr, data[:4096])); err != nil {
			t.Fatal(err)
		}
		s.io.nc.Close()
		s.admin.nc.Close()
		// The association this host opened must end. (before may still
		// count an association of an earlier subtest that is closing, so
		// the count may also fall below it.)
		deadline := time.Now().Add(5 * time.Second)
		for tg.Associations(nqnA) > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := tg.Associations(nqnA); n > before {
			t.Errorf("associations %d after disconnect, want at most %d: the vanished host's association was kept", n, before)
		}
	})
	want := randBytes(8192)
	if r := bystander.write(t, 100, want, 512); r.status != 0 {
		t.Fatalf("bystander write after errors: %#x", r.status)
	}
	if _, got := bystander.read(t, 100, 8192, 512); !bytes.Equal(got, want) {
		t.Fatalf("bystander read differs")
	}
}

func TestKeepAliveTimeout(t *testing.T) {
	tg, addr := startTarget(t, Options{}, map[string]blockdev.Device{nqnA: newMemDevice("KATO", 512, 64)})
	h := dialHost(t, addr, hostOpts{})
	r, err := h.connect(0, 31, 200, testHostID, 0xFFFF, nqnA, testHostNQN)
	if err != nil || r.status != 0 {
		t.Fatalf("connect: %#x %v", r.status, err)
	}
	// Keep-alives keep it up...
	for range 5 {
		time.Sleep(100 * time.Millisecond)
		h.propGet(0x1C, false)
	}
	if tg.Associations(nqnA) != 1 {
		t.Fatalf("association lost despite traffic")
	}
	// ...silence ends it.
	_ = h.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.br.ReadByte(); err == nil {
		t.Fatalf("connection still open after KATO")
	}
	if tg.Associations(nqnA) != 0 {
		t.Fatalf("association kept after KATO")
	}
}

func TestPowerCycleDropsAssociations(t *testing.T) {
	dev := newMemDevice("PWRC", 512, 64)
	other := newMemDevice("PWRO", 512, 64)
	tg, addr := startTarget(t, Options{}, map[string]blockdev.Device{nqnA: dev, nqnB: other})
	s := openSession(t, addr, nqnA, hostOpts{})
	o := openSession(t, addr, nqnB, hostOpts{})
	s.write(t, 0, randBytes(512), 512)
	var during uint16
	err := tg.PowerCycle(context.Background(), nqnA, func() error {
		// While the drive is off, Connects are refused with Controller Busy.
		h := dialHost(t, addr, hostOpts{})
		r, err := h.connect(0, 31, 0, testHostID, 0xFFFF, nqnA, testHostNQN)
		if err != nil {
			return err
		}
		during = r.status
		dev.locked.Store(true)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if during != 0x181 {
		t.Errorf("connect during power cycle: status %#x, want 0x181", during)
	}
	if _, _, err := s.io.send(rwCmd(0x02, 0, 1), nil, 512); err == nil {
		t.Errorf("old association still answers after power cycle")
	}
	s2 := openSession(t, addr, nqnA, hostOpts{})
	if r, _ := s2.read(t, 0, 512, 512); r.status != 0x286 {
		t.Errorf("read after power cycle: %#x, want access denied", r.status)
	}
	if r, _ := o.read(t, 0, 512, 512); r.status != 0 {
		t.Errorf("other subsystem disturbed: %#x", r.status)
	}
}

func TestSeveralHostsAndQueues(t *testing.T) {
	devs := map[string]blockdev.Device{}
	for i := range 3 {
		devs[fmt.Sprintf("nqn.2026-11.io.sedboot:sim:MULTI%d", i)] = newMemDevice(fmt.Sprintf("MULTI%d", i), 512, 2048)
	}
	_, addr := startTarget(t, Options{}, devs)
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nqn := fmt.Sprintf("nqn.2026-11.io.sedboot:sim:MULTI%d", i%3)
			s := openSession(t, addr, nqn, hostOpts{hdgst: i%2 == 0, ddgst: i%3 == 0})
			lba := uint64(i * 64)
			for j := range 10 {
				want := randBytes((j%4 + 1) * 8192)
				if r := s.write(t, lba, want, 512); r.status != 0 {
					errs <- fmt.Errorf("host %d write: %#x", i, r.status)
					return
				}
				if _, got := s.read(t, lba, len(want), 512); !bytes.Equal(got, want) {
					errs <- fmt.Errorf("host %d read back differs", i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestShutdownViaCC(t *testing.T) {
	dev := newMemDevice("SHDN", 512, 64)
	_, addr := startTarget(t, Options{}, map[string]blockdev.Device{nqnA: dev})
	s := openSession(t, addr, nqnA, hostOpts{})
	f := dev.flushes.Load()
	cc := uint32(s.admin.propGet(0x14, false))
	s.admin.propSet(0x14, cc|1<<14)
	if csts := s.admin.propGet(0x1C, false); (csts>>2)&3 != 2 {
		t.Errorf("CSTS.SHST %d after shutdown, want 2", (csts>>2)&3)
	}
	if dev.flushes.Load() == f {
		t.Errorf("shutdown did not flush the device")
	}
	// Disconnect on the I/O queue ends that queue only.
	s.io.mustOK(fabricsCmd(0x08), nil, 0)
	_ = s.io.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.io.br.ReadByte(); err == nil {
		t.Errorf("I/O queue open after Disconnect")
	}
	s.admin.mustOK(newCmd(0x18), nil, 0)
}

func TestOptionsAndSubsystemValidation(t *testing.T) {
	for _, o := range []Options{{MaxTransfer: 3000}, {MaxH2CData: 1024}, {InCapsuleData: 17}, {QueueDepth: 4}, {MaxIOQueues: 1000}} {
		if _, err := NewTarget(nil, o); err == nil {
			t.Errorf("NewTarget(%+v) accepted", o)
		}
	}
	tg, err := NewTarget(nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if err := tg.AddSubsystem(nqnA, newMemDevice("DUP", 512, 8)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		nqn string
		dev blockdev.Device
	}{
		{nqnA, newMemDevice("OTHER", 512, 8)},
		{nqnB, newMemDevice("DUP", 512, 8)},
		{"not-an-nqn", newMemDevice("X1", 512, 8)},
		{DiscoveryNQN, newMemDevice("X2", 512, 8)},
		{nqnB, newMemDevice("X3", 520, 8)},
		{nqnB, newMemDevice("", 512, 8)},
	} {
		if err := tg.AddSubsystem(tc.nqn, tc.dev); err == nil {
			t.Errorf("AddSubsystem(%q, serial %q) accepted", tc.nqn, tc.dev.Identity().Serial)
		}
	}
}

// Memory per connection is bounded: a host may not exceed its queue size,
// and the target serves at most MaxConnections connections.
func TestBoundsQueueSizeAndConnections(t *testing.T) {
	tg, addr := startTarget(t, Options{MaxConnections: 3}, map[string]blockdev.Device{nqnA: newMemDevice("BOUND", 512, 256)})
	s := openSession(t, addr, nqnA, hostOpts{}) // two connections
	// A third: an I/O queue with two entries, given three writes that wait for data.
	q := dialHost(t, addr, hostOpts{})
	if r, err := q.connect(2, 1, 0, testHostID, s.cntlid, nqnA, testHostNQN); err != nil || r.status != 0x182 {
		t.Fatalf("qid 2 beyond the one granted queue: %#x %v", r.status, err)
	}
	q.nc.Close()
	// The refused connection above freed its slot once closed; wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tg.mu.Lock()
		n := len(tg.queues)
		tg.mu.Unlock()
		if n == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	a := s.admin
	// Grant a second I/O queue? Not allowed once queues exist.
	if r, _, _ := a.send(newCmd(0x09).dw(10, 0x07).dw(11, 1|1<<16), nil, 0); r.status != 0x00C {
		t.Errorf("Set Features number of queues with queues live: %#x", r.status)
	}
	h := dialHost(t, addr, hostOpts{})
	s.io.nc.Close() // make room for qid 1 again
	deadline = time.Now().Add(5 * time.Second)
	var r cqe
	var err error
	for time.Now().Before(deadline) {
		if r, err = h.connect(1, 1, 0, testHostID, s.cntlid, nqnA, testHostNQN); err != nil || r.status == 0 {
			break
		}
		h = dialHost(t, addr, hostOpts{})
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || r.status != 0 {
		t.Fatalf("reconnect I/O queue 1 with 2 entries: %#x %v", r.status, err)
	}
	for i := range 3 {
		c := rwCmd(0x01, uint64(i*16), 16)
		binary.LittleEndian.PutUint16(c[2:], uint16(100+i))
		binary.LittleEndian.PutUint32(c[32:], 8192*2)
		c[39] = 0x5A
		hdr := make([]byte, 72)
		copy(hdr[8:], c[:])
		if _, err := h.nc.Write(h.buildPDU(0x04, 0, hdr, nil)); err != nil {
			t.Fatal(err)
		}
	}
	te, err := expectTerm(h)
	if err != nil || te.fes != 0x02 {
		t.Fatalf("third command on a two-entry queue: %v %v, want FES 2", te, err)
	}
	// At the connection limit, a new connection is closed at once.
	extra := make([]net.Conn, 0, 3)
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, c)
	}
	refused := 0
	for _, c := range extra {
		// An expired deadline hides a pending EOF: give each its own.
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			refused++
		}
		c.Close()
	}
	if refused == 0 {
		t.Errorf("no connection refused at MaxConnections")
	}
}
