package transport

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func pad(s string, n int) []byte {
	b := []byte(s + strings.Repeat(" ", n))
	return b[:n]
}

func TestParseNVMeIdentifyController(t *testing.T) {
	p := make([]byte, 4096)
	binary.LittleEndian.PutUint16(p[0:], 0x1b36)
	copy(p[4:24], pad("SIM0001", 20))
	copy(p[24:64], pad("sedboot simulated Opal drive", 40))
	copy(p[64:72], pad("1.0", 8))
	binary.LittleEndian.PutUint16(p[256:], 0x0007)
	c, err := ParseNVMeIdentifyController(p)
	if err != nil {
		t.Fatal(err)
	}
	want := NVMeController{VendorID: 0x1b36, Serial: "SIM0001", Model: "sedboot simulated Opal drive", Firmware: "1.0", SecuritySendReceive: true}
	if c != want {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	binary.LittleEndian.PutUint16(p[256:], 0x0006)
	if c, _ := ParseNVMeIdentifyController(p); c.SecuritySendReceive {
		t.Error("OACS without bit 0 reported security send/receive")
	}
	if _, err := ParseNVMeIdentifyController(p[:100]); err == nil {
		t.Error("short page accepted")
	}
}

func TestParseNVMeIdentifyNamespace(t *testing.T) {
	p := make([]byte, 4096)
	binary.LittleEndian.PutUint64(p[0:], 2048)
	p[25] = 1    // NLBAF: two formats
	p[26] = 0x01 // FLBAS: format 1
	p[128+2] = 9
	p[132+2] = 12
	nguid := bytes.Repeat([]byte{0xab}, 16)
	eui := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	copy(p[104:], nguid)
	copy(p[120:], eui)
	ns, err := ParseNVMeIdentifyNamespace(p)
	if err != nil {
		t.Fatal(err)
	}
	if ns.Size != 2048 || ns.BlockSize != 4096 || !bytes.Equal(ns.NGUID, nguid) || !bytes.Equal(ns.EUI64, eui) {
		t.Fatalf("got %+v", ns)
	}
	clear(p[104:128])
	ns, _ = ParseNVMeIdentifyNamespace(p)
	if ns.NGUID != nil || ns.EUI64 != nil {
		t.Errorf("zero identifiers reported: %+v", ns)
	}
}

func TestParseNVMeNamespaceDescriptors(t *testing.T) {
	desc := func(typ byte, v []byte) []byte { return append([]byte{typ, byte(len(v)), 0, 0}, v...) }
	eui := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	nguid := bytes.Repeat([]byte{0x22}, 16)
	uuid := bytes.Repeat([]byte{0x33}, 16)
	list := func(parts ...[]byte) []byte {
		b := bytes.Join(parts, nil)
		return append(b, make([]byte, 4096-len(b))...)
	}
	tests := []struct {
		name    string
		in      []byte
		want    NVMeNamespaceIDs
		wantErr bool
	}{
		{"all three", list(desc(1, eui), desc(2, nguid), desc(3, uuid)), NVMeNamespaceIDs{eui, nguid, uuid}, false},
		{"nguid only, csi skipped", list(desc(4, []byte{0}), desc(2, nguid)), NVMeNamespaceIDs{NGUID: nguid}, false},
		{"empty", list(), NVMeNamespaceIDs{}, false},
		{"bad length for type", list(desc(1, eui[:4])), NVMeNamespaceIDs{}, true},
		{"runs past end", desc(2, nguid)[:10], NVMeNamespaceIDs{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNVMeNamespaceDescriptors(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if !bytes.Equal(got.EUI64, tc.want.EUI64) || !bytes.Equal(got.NGUID, tc.want.NGUID) || !bytes.Equal(got.UUID, tc.want.UUID) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseInquiryAndVPD(t *testing.T) {
	inq := make([]byte, 96)
	copy(inq[8:], pad("ATA", 8))
	copy(inq[16:], pad("Samsung SSD 870", 16))
	copy(inq[32:], pad("2B6Q", 4))
	got, err := ParseInquiry(inq)
	if err != nil {
		t.Fatal(err)
	}
	if got != (Inquiry{DeviceType: 0, Vendor: "ATA", Product: "Samsung SSD 870", Revision: "2B6Q"}) {
		t.Fatalf("inquiry %+v", got)
	}

	vpd80 := append([]byte{0, 0x80, 0, 12}, pad("  S1234567X", 12)...)
	if s, err := ParseVPDSerial(vpd80); err != nil || s != "S1234567X" {
		t.Fatalf("serial %q, %v", s, err)
	}
	if _, err := ParseVPDSerial([]byte{0, 0x83, 0, 0}); err == nil {
		t.Error("wrong page accepted as 0x80")
	}

	naa := []byte{0x50, 0x00, 0xc5, 0x00, 0x12, 0x34, 0x56, 0x78}
	body := bytes.Join([][]byte{
		{0x02, 0x01, 0, 8}, pad("ATA     ", 8), // T10 vendor ID, ASCII
		{0x61, 0x93, 0, 8}, naa, // NAA, target port association: not the LU
		{0x01, 0x03, 0, 8}, naa, // NAA, logical unit
	}, nil)
	vpd83 := append([]byte{0, 0x83, 0, byte(len(body))}, body...)
	ds, err := ParseVPDDeviceID(vpd83)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 3 || ds[1].Association != 1 || ds[2].Type != DesignatorNAA {
		t.Fatalf("designators %+v", ds)
	}
	if w := WWNFromDesignators(ds); !bytes.Equal(w, naa) {
		t.Fatalf("WWN %x", w)
	}
	bad := append([]byte{0, 0x83, 0, 6}, 0x01, 0x03, 0, 8, 1, 2)
	if _, err := ParseVPDDeviceID(bad); err == nil {
		t.Error("designator past the page end accepted")
	}
}

func TestParseATAIdentify(t *testing.T) {
	p := make([]byte, 512)
	putATA := func(off int, s string, n int) {
		b := pad(s, n)
		for i := 0; i < n; i += 2 {
			p[off+i], p[off+i+1] = b[i+1], b[i]
		}
	}
	putATA(20, "WD-WX12345678", 20)
	putATA(46, "82.00A82", 8)
	putATA(54, "WDC WD40EFRX-68N32N0", 40)
	binary.LittleEndian.PutUint16(p[96:], 0x4001)  // word 48: trusted computing
	binary.LittleEndian.PutUint16(p[174:], 0x4100) // word 87: WWN valid
	for i, w := range []uint16{0x5001, 0x4a45, 0x6789, 0xabcd} {
		binary.LittleEndian.PutUint16(p[216+2*i:], w)
	}
	id, err := ParseATAIdentify(p)
	if err != nil {
		t.Fatal(err)
	}
	if id.Serial != "WD-WX12345678" || id.Firmware != "82.00A82" || id.Model != "WDC WD40EFRX-68N32N0" || !id.TrustedComputing {
		t.Fatalf("identity %+v", id)
	}
	if want := []byte{0x50, 0x01, 0x4a, 0x45, 0x67, 0x89, 0xab, 0xcd}; !bytes.Equal(id.WWN, want) {
		t.Fatalf("WWN %x, want %x", id.WWN, want)
	}
	binary.LittleEndian.PutUint16(p[96:], 0x0001) // word 48 not valid
	binary.LittleEndian.PutUint16(p[174:], 0x4000)
	id, _ = ParseATAIdentify(p)
	if id.TrustedComputing || id.WWN != nil {
		t.Errorf("invalid words trusted: %+v", id)
	}
}

func TestParseSense(t *testing.T) {
	fixed := make([]byte, 18)
	fixed[0], fixed[2], fixed[12], fixed[13] = 0x70, 0x05, 0x24, 0x00
	desc := []byte{0x72, 0x05, 0x20, 0x00, 0, 0, 0, 0}
	for _, tc := range []struct {
		in   []byte
		want Sense
	}{{fixed, Sense{5, 0x24, 0}}, {desc, Sense{5, 0x20, 0}}} {
		got, err := ParseSense(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSense(% x) = %+v, %v; want %+v", tc.in[:4], got, err, tc.want)
		}
	}
	if _, err := ParseSense([]byte{0x00}); err == nil {
		t.Error("unknown response code accepted")
	}
}
