package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// NVMeController is the part of an NVMe Identify Controller page (CNS 01h)
// sedboot uses.
type NVMeController struct {
	VendorID uint16
	Serial   string
	Model    string
	Firmware string
	// SecuritySendReceive reports OACS bit 0: the controller supports the
	// Security Send and Security Receive admin commands.
	SecuritySendReceive bool
}

// ParseNVMeIdentifyController decodes an Identify Controller data
// structure (4096 bytes; at least the first 258 are needed).
func ParseNVMeIdentifyController(p []byte) (NVMeController, error) {
	if len(p) < 258 {
		return NVMeController{}, fmt.Errorf("identify controller: %d bytes, need at least 258", len(p))
	}
	return NVMeController{
		VendorID:            binary.LittleEndian.Uint16(p[0:2]),
		Serial:              asciiField(p[4:24]),
		Model:               asciiField(p[24:64]),
		Firmware:            asciiField(p[64:72]),
		SecuritySendReceive: binary.LittleEndian.Uint16(p[256:258])&1 != 0,
	}, nil
}

// NVMeNamespace is the part of an NVMe Identify Namespace page (CNS 00h)
// sedboot uses.
type NVMeNamespace struct {
	Size      uint64 // NSZE, in logical blocks
	BlockSize uint32 // from the LBA format in use
	NGUID     []byte // nil when zero
	EUI64     []byte // nil when zero
}

// ParseNVMeIdentifyNamespace decodes an Identify Namespace data structure
// (4096 bytes; at least the first 384 are needed).
func ParseNVMeIdentifyNamespace(p []byte) (NVMeNamespace, error) {
	if len(p) < 384 {
		return NVMeNamespace{}, fmt.Errorf("identify namespace: %d bytes, need at least 384", len(p))
	}
	ns := NVMeNamespace{
		Size:  binary.LittleEndian.Uint64(p[0:8]),
		NGUID: nonZero(p[104:120]),
		EUI64: nonZero(p[120:128]),
	}
	nlbaf := int(p[25]) + 1
	flbas := p[26]
	idx := int(flbas&0x0f) | int(flbas>>5&0x03)<<4
	if idx < nlbaf && idx < 64 {
		lbads := p[128+4*idx+2]
		if lbads >= 9 && lbads < 32 {
			ns.BlockSize = 1 << lbads
		}
	}
	return ns, nil
}

// NVMe Namespace Identification Descriptor types (NIDT).
const (
	nidtEUI64 = 1
	nidtNGUID = 2
	nidtUUID  = 3
	nidtCSI   = 4
)

// NVMeNamespaceIDs are the identifiers from a Namespace Identification
// Descriptor list (Identify CNS 03h).
type NVMeNamespaceIDs struct {
	EUI64 []byte
	NGUID []byte
	UUID  []byte
}

// ParseNVMeNamespaceDescriptors decodes a Namespace Identification
// Descriptor list. The list ends at a descriptor of type 0 or at the end of
// p; a descriptor whose length disagrees with its type is an error.
func ParseNVMeNamespaceDescriptors(p []byte) (NVMeNamespaceIDs, error) {
	var ids NVMeNamespaceIDs
	for off := 0; off+4 <= len(p); {
		typ, n := p[off], int(p[off+1])
		if typ == 0 {
			break
		}
		if off+4+n > len(p) {
			return ids, fmt.Errorf("namespace descriptor at offset %d: length %d runs past the %d-byte list", off, n, len(p))
		}
		v := append([]byte(nil), p[off+4:off+4+n]...)
		want := map[byte]int{nidtEUI64: 8, nidtNGUID: 16, nidtUUID: 16, nidtCSI: 1}[typ]
		if want != 0 && n != want {
			return ids, fmt.Errorf("namespace descriptor at offset %d: type %d has length %d, want %d", off, typ, n, want)
		}
		switch typ {
		case nidtEUI64:
			ids.EUI64 = v
		case nidtNGUID:
			ids.NGUID = v
		case nidtUUID:
			ids.UUID = v
		}
		off += 4 + n
	}
	return ids, nil
}

// Inquiry is the part of a SCSI standard INQUIRY response sedboot uses.
type Inquiry struct {
	DeviceType byte // peripheral device type (0 = direct-access block device)
	Vendor     string
	Product    string
	Revision   string
}

// ParseInquiry decodes a standard INQUIRY response (at least 36 bytes).
func ParseInquiry(p []byte) (Inquiry, error) {
	if len(p) < 36 {
		return Inquiry{}, fmt.Errorf("inquiry: %d bytes, need at least 36", len(p))
	}
	return Inquiry{
		DeviceType: p[0] & 0x1f,
		Vendor:     asciiField(p[8:16]),
		Product:    asciiField(p[16:32]),
		Revision:   asciiField(p[32:36]),
	}, nil
}

// vpdPayload checks a VPD page header and returns the page's payload.
func vpdPayload(p []byte, page byte) ([]byte, error) {
	if len(p) < 4 {
		return nil, fmt.Errorf("VPD page 0x%02x: %d bytes, need at least 4", page, len(p))
	}
	if p[1] != page {
		return nil, fmt.Errorf("VPD page 0x%02x: response is page 0x%02x", page, p[1])
	}
	n := int(binary.BigEndian.Uint16(p[2:4]))
	if 4+n > len(p) {
		return nil, fmt.Errorf("VPD page 0x%02x: page length %d exceeds the %d bytes returned", page, n, len(p)-4)
	}
	return p[4 : 4+n], nil
}

// ParseVPDSerial decodes VPD page 0x80 (Unit Serial Number).
func ParseVPDSerial(p []byte) (string, error) {
	b, err := vpdPayload(p, 0x80)
	if err != nil {
		return "", err
	}
	return asciiField(b), nil
}

// Designator is one identification descriptor of VPD page 0x83.
type Designator struct {
	Association byte // 0 logical unit, 1 target port, 2 target device
	Type        byte // 1 T10 vendor ID, 2 EUI-64, 3 NAA, 8 SCSI name string, ...
	CodeSet     byte // 1 binary, 2 ASCII, 3 UTF-8
	Value       []byte
}

// Designator types of VPD page 0x83.
const (
	DesignatorT10      = 1
	DesignatorEUI64    = 2
	DesignatorNAA      = 3
	DesignatorSCSIName = 8
)

// ParseVPDDeviceID decodes VPD page 0x83 (Device Identification) into its
// designators.
func ParseVPDDeviceID(p []byte) ([]Designator, error) {
	b, err := vpdPayload(p, 0x83)
	if err != nil {
		return nil, err
	}
	var out []Designator
	for off := 0; off < len(b); {
		if off+4 > len(b) {
			return nil, fmt.Errorf("VPD page 0x83: truncated designator header at offset %d", off)
		}
		n := int(b[off+3])
		if off+4+n > len(b) {
			return nil, fmt.Errorf("VPD page 0x83: designator at offset %d has length %d past the page end", off, n)
		}
		out = append(out, Designator{
			CodeSet:     b[off] & 0x0f,
			Association: b[off+1] >> 4 & 0x03,
			Type:        b[off+1] & 0x0f,
			Value:       append([]byte(nil), b[off+4:off+4+n]...),
		})
		off += 4 + n
	}
	return out, nil
}

// WWNFromDesignators picks the logical unit's world wide name: the first
// NAA designator associated with the logical unit, else its EUI-64.
func WWNFromDesignators(ds []Designator) []byte {
	for _, want := range []byte{DesignatorNAA, DesignatorEUI64} {
		for _, d := range ds {
			if d.Association == 0 && d.Type == want && len(d.Value) > 0 {
				return d.Value
			}
		}
	}
	return nil
}

// ATAIdentity is the part of an ATA IDENTIFY DEVICE response sedboot uses.
type ATAIdentity struct {
	Serial   string
	Model    string
	Firmware string
	// WWN is the 64-bit NAA world wide name of words 108-111, nil when the
	// device does not report one.
	WWN []byte
	// TrustedComputing reports word 48 bit 0: TRUSTED SEND/RECEIVE
	// are supported.
	TrustedComputing bool
}

// ParseATAIdentify decodes a 512-byte IDENTIFY DEVICE response. Strings in
// it are stored as big-endian character pairs inside little-endian words.
func ParseATAIdentify(p []byte) (ATAIdentity, error) {
	if len(p) < 512 {
		return ATAIdentity{}, fmt.Errorf("ATA IDENTIFY DEVICE: %d bytes, need 512", len(p))
	}
	word := func(i int) uint16 { return binary.LittleEndian.Uint16(p[2*i:]) }
	id := ATAIdentity{
		Serial:   asciiField(ataString(p[20:40])),
		Firmware: asciiField(ataString(p[46:54])),
		Model:    asciiField(ataString(p[54:94])),
	}
	w48 := word(48)
	id.TrustedComputing = w48&0xc000 == 0x4000 && w48&1 != 0
	w87 := word(87)
	if w87&0xc000 == 0x4000 && w87&(1<<8) != 0 {
		var wwn [8]byte
		for i := 0; i < 4; i++ {
			binary.BigEndian.PutUint16(wwn[2*i:], word(108+i))
		}
		id.WWN = nonZero(wwn[:])
	}
	return id, nil
}

// ataString undoes the ATA string byte order (each 16-bit word holds two
// characters, first one in the high byte).
func ataString(b []byte) []byte {
	out := make([]byte, len(b))
	for i := 0; i+1 < len(b); i += 2 {
		out[i], out[i+1] = b[i+1], b[i]
	}
	return out
}

// Sense is decoded SCSI sense data.
type Sense struct {
	Key  byte
	ASC  byte
	ASCQ byte
}

// Sense keys sedboot distinguishes.
const (
	SenseIllegalRequest = 0x05
)

// ParseSense decodes fixed (0x70/0x71) or descriptor (0x72/0x73) format
// sense data.
func ParseSense(p []byte) (Sense, error) {
	if len(p) < 1 {
		return Sense{}, errors.New("sense data: empty")
	}
	switch p[0] & 0x7f {
	case 0x70, 0x71:
		if len(p) < 14 {
			return Sense{Key: senseByte(p, 2) & 0x0f}, nil
		}
		return Sense{Key: p[2] & 0x0f, ASC: p[12], ASCQ: p[13]}, nil
	case 0x72, 0x73:
		if len(p) < 4 {
			return Sense{}, fmt.Errorf("sense data: descriptor format with %d bytes", len(p))
		}
		return Sense{Key: p[1] & 0x0f, ASC: p[2], ASCQ: p[3]}, nil
	default:
		return Sense{}, fmt.Errorf("sense data: unknown response code 0x%02x", p[0])
	}
}

func (s Sense) String() string {
	return fmt.Sprintf("sense key 0x%x, ASC/ASCQ 0x%02x/0x%02x", s.Key, s.ASC, s.ASCQ)
}

func senseByte(p []byte, i int) byte {
	if i < len(p) {
		return p[i]
	}
	return 0
}

// asciiField trims an identification string: NULs and spaces at either end.
func asciiField(b []byte) string {
	return strings.TrimSpace(string(bytes.TrimRight(b, "\x00")))
}

// nonZero returns a copy of b, or nil when every byte is zero.
func nonZero(b []byte) []byte {
	for _, c := range b {
		if c != 0 {
			return append([]byte(nil), b...)
		}
	}
	return nil
}
