package kernel

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

func bzHeader(proto uint16, setupSects byte, off, n uint32, total int) []byte {
	b := make([]byte, total)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], proto)
	b[0x1f1] = setupSects
	binary.LittleEndian.PutUint32(b[0x248:], off)
	binary.LittleEndian.PutUint32(b[0x24c:], n)
	return b
}

func TestBzPayload(t *testing.T) {
	good := bzHeader(0x20f, 1, 16, 10, 2048)
	copy(good[1024+16:], "payload!")
	binary.LittleEndian.PutUint32(good[1024+16+6:], 12345)
	tests := []struct {
		name     string
		bz       []byte
		want     string
		wantSize uint32
		wantErr  string
	}{
		{"good", good, "payloa", 12345, ""},
		{"not a bzImage", make([]byte, 4096), "", 0, "HdrS"},
		{"short", []byte("MZ"), "", 0, "HdrS"},
		{"old protocol", bzHeader(0x206, 1, 0, 10, 2048), "", 0, "boot protocol"},
		{"payload past the end", bzHeader(0x20f, 1, 1000, 100, 2048), "", 0, "outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, size, err := bzPayload(tt.bz)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("bzPayload = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(p) != tt.want || size != tt.wantSize {
				t.Fatalf("bzPayload = %q, %d, %v; want %q, %d", p, size, err, tt.want, tt.wantSize)
			}
		})
	}
}

func note(name string, typ uint32, desc []byte) []byte {
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	h := make([]byte, 12)
	binary.LittleEndian.PutUint32(h, uint32(len(name)+1))
	binary.LittleEndian.PutUint32(h[4:], uint32(len(desc)))
	binary.LittleEndian.PutUint32(h[8:], typ)
	return append(append(h, pad(append([]byte(name), 0))...), pad(desc)...)
}

func TestHasNote(t *testing.T) {
	seg := append(note("GNU", 3, []byte{1, 2, 3, 4, 5}), note("Xen", 18, []byte{0, 0, 0, 1})...)
	tests := []struct {
		name  string
		data  []byte
		owner string
		typ   uint32
		want  bool
	}{
		{"second note", seg, "Xen", 18, true},
		{"first note", seg, "GNU", 3, true},
		{"other type", seg, "Xen", 5, false},
		{"truncated", seg[:len(seg)-2], "Xen", 18, false},
		{"empty", nil, "Xen", 18, false},
		{"huge size", []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 18, 0, 0, 0}, "Xen", 18, false},
	}
	for _, tt := range tests {
		if got := hasNote(tt.data, tt.owner, tt.typ); got != tt.want {
			t.Errorf("%s: hasNote = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestBootImageIsTheUncompressedKernel(t *testing.T) {
	k := cachedKernel(t)
	if k.VmlinuxPath == "" || k.BootImage() != k.VmlinuxPath {
		t.Fatalf("VmlinuxPath = %q, BootImage = %q; want the extracted kernel", k.VmlinuxPath, k.BootImage())
	}
	bz, err := os.ReadFile(k.VmlinuzPath)
	if err != nil {
		t.Fatal(err)
	}
	_, size, err := bzPayload(bz)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPVH(k.VmlinuxPath, size); err != nil {
		t.Fatal(err)
	}
}
