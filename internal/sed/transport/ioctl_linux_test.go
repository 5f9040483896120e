//go:build linux

package transport

import (
	"bytes"
	"testing"
	"unsafe"
)

func TestStructLayouts(t *testing.T) {
	if n := unsafe.Sizeof(nvmeAdminCmd{}); n != 72 {
		t.Errorf("nvme_passthru_cmd is %d bytes, want 72", n)
	}
	if unsafe.Sizeof(uintptr(0)) == 8 {
		if n := unsafe.Sizeof(sgIoHdr{}); n != 88 {
			t.Errorf("sg_io_hdr is %d bytes, want 88", n)
		}
	}
}

func TestATATrustedCDB(t *testing.T) {
	// TRUSTED RECEIVE of 0x102 blocks for protocol 1, ComID 0x07fe.
	cdb := ataPassThrough16(true, ataTrustedRecv, 0x01, 0x02, 0x01, 0xfe, 0x07)
	want := []byte{0x85, 0x08, 0x0e, 0, 0x01, 0, 0x02, 0, 0x01, 0, 0xfe, 0, 0x07, 0x40, 0x5c, 0}
	if !bytes.Equal(cdb, want) {
		t.Fatalf("cdb % x\nwant % x", cdb, want)
	}
	out := ataPassThrough16(false, ataTrustedSend, 0x01, 1, 0, 0x01, 0x00)
	if out[1] != 0x0a || out[2] != 0x06 || out[14] != 0x5e {
		t.Fatalf("send cdb % x", out)
	}
}

func TestBlockBuffer(t *testing.T) {
	b := make([]byte, 1024)
	if x, _ := blockBuffer(b, false); &x[0] != &b[0] {
		t.Error("aligned buffer was copied")
	}
	x, _ := blockBuffer(make([]byte, 100), true)
	if len(x) != 512 {
		t.Errorf("padded send is %d bytes", len(x))
	}
	x, _ = blockBuffer(make([]byte, 1<<20), false)
	if len(x) != MaxSecurityTransfer {
		t.Errorf("receive not capped: %d", len(x))
	}
	if _, err := blockBuffer(make([]byte, 1<<20), true); err == nil {
		t.Error("oversize send accepted")
	}
}

func TestNVMeNSIDFromPath(t *testing.T) {
	for in, want := range map[string]uint32{"/dev/nvme0n1": 1, "/dev/nvme12n3": 3, "/dev/nvme0": 0, "/dev/sda": 0, "/dev/nvme0n1p2": 0} {
		if got := nvmeNSIDFromPath(in); got != want {
			t.Errorf("%s: %d, want %d", in, got, want)
		}
	}
}
