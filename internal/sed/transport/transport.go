// Package transport carries TCG storage security commands to real drives on
// Linux: NVMe controllers through the admin passthrough ioctl
// (NVME_IOCTL_ADMIN_CMD: Security Send/Receive, Identify), SCSI and SAS
// devices through SG_IO (SECURITY PROTOCOL IN/OUT, INQUIRY and its VPD
// pages), and SATA devices through the SCSI/ATA Translation (SAT): first
// SECURITY PROTOCOL IN/OUT as libata translates them, then ATA PASS-THROUGH
// (16) with TRUSTED SEND/RECEIVE.
//
// A *Device implements go-tcg-storage's core.DriveIntf (IFSend/IFRecv) plus
// Identify, SerialNumber and Close, so the sed package drives it the same
// way it drives the simulator. The byte-level parsers (NVMe Identify pages,
// SCSI VPD pages, ATA IDENTIFY DEVICE, sense data) are pure functions and
// are tested without hardware.
package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
)

// Kind names the command set used to reach a drive.
type Kind string

// The transports this package speaks.
const (
	KindNVMe Kind = "nvme" // NVMe admin passthrough
	KindSCSI Kind = "scsi" // SCSI/SAS via SG_IO
	KindSATA Kind = "sata" // SATA behind a SAT layer (libata) via SG_IO
)

// ErrNotSupported reports that the device rejected a security protocol
// command as not supported (SCSI ILLEGAL REQUEST, NVMe Invalid Opcode or
// Invalid Field). It wraps go-tcg-storage's drive.ErrNotSupported so that
// core.Discovery0 recognises it.
var ErrNotSupported = fmt.Errorf("transport: %w", drive.ErrNotSupported)

// MaxSecurityTransfer is the largest IF-SEND or IF-RECV transfer a Device
// issues; receive buffers beyond it are not filled.
const MaxSecurityTransfer = 64 << 10

// Identity is what a drive reports about itself. Byte identifiers are nil
// when the drive does not report them.
type Identity struct {
	Kind     Kind
	Model    string
	Serial   string
	Firmware string
	// WWN is the SCSI/SAS/SATA world wide name (an NAA designator from
	// VPD page 0x83 or ATA IDENTIFY words 108-111).
	WWN []byte
	// EUI64 and NGUID are the NVMe namespace identifiers (Identify
	// Namespace and the Namespace Identification Descriptor list).
	EUI64 []byte
	NGUID []byte
	// UUID is the NVMe namespace UUID when reported.
	UUID []byte
	// SecuritySupported reports whether the drive advertises the
	// security send/receive commands (NVMe OACS bit 0, ATA IDENTIFY word
	// 48 bit 0). SCSI devices report true: SECURITY PROTOCOL IN is probed
	// by the caller.
	SecuritySupported bool
}

// Device is an open drive. Its methods are safe for concurrent use; the
// commands themselves are serialised.
type Device struct {
	f    *os.File
	kind Kind
	path string
	// nsid is the namespace queried for namespace identifiers (NVMe).
	nsid uint32

	mu sync.Mutex
	// ataPassThrough is set for SATA devices whose SAT layer rejects
	// SECURITY PROTOCOL IN/OUT; commands then go as ATA TRUSTED SEND and
	// TRUSTED RECEIVE inside ATA PASS-THROUGH (16).
	ataPassThrough bool
}

// Open opens path (an NVMe controller /dev/nvmeN or namespace
// /dev/nvmeNnM, or a SCSI disk /dev/sdX or /dev/sgN) and works out which
// command set reaches it.
func Open(path string) (*Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := &Device{f: f, path: path, nsid: 1}
	if _, err := nvmeIdentify(f, 0, cnsController); err == nil {
		d.kind = KindNVMe
		if ns := nvmeNSIDFromPath(path); ns != 0 {
			d.nsid = ns
		}
		return d, nil
	}
	inq, err := scsiInquiry(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: neither an NVMe controller nor a SCSI device: %w", path, err)
	}
	d.kind = KindSCSI
	if strings.TrimSpace(inq.Vendor) == "ATA" {
		d.kind = KindSATA
		if err := d.probeSATSecurity(); err != nil {
			d.ataPassThrough = true
		}
	}
	return d, nil
}

// Kind reports the command set used to reach the device.
func (d *Device) Kind() Kind { return d.kind }

// Path is the device node the Device was opened from.
func (d *Device) Path() string { return d.path }

// Close closes the device node.
func (d *Device) Close() error { return d.f.Close() }

// IFRecv implements core.DriveIntf: IF-RECV (security protocol in) of
// len(*data) bytes for protocol proto and protocol-specific field sps.
//
// go-tcg-storage sizes receive buffers by the negotiated host properties
// (up to 1 MiB): far more than a TPer answers in one ComPacket and more
// than some controllers transfer in one command, so at most
// MaxSecurityTransfer bytes are asked for. A ComPacket (TCG protocol 1,
// any ComID but Level 0 discovery's) is first received with an allocation
// of FirstComPacketRecv bytes, which holds every response sedboot's
// methods get; only when the TPer answers that its response needs more
// (TCG Core 3.3.10.4: an empty ComPacket whose MinTransfer exceeds the
// allocation, the response kept) is it received again with room for it.
// A Security Receive transfers its whole allocation (drives fill it), so
// this keeps transfers small, which matters over NVMe/TCP: a 64 KiB
// receive costs a QEMU guest 4-10 ms, a 4 KiB one 1-2 ms.
func (d *Device) IFRecv(proto drive.SecurityProtocol, sps uint16, data *[]byte) error {
	if len(*data) == 0 {
		return errors.New("transport: IF-RECV with an empty buffer")
	}
	p := *data
	if len(p) > MaxSecurityTransfer {
		p = p[:MaxSecurityTransfer]
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	recv := func(b []byte) error {
		switch {
		case d.kind == KindNVMe:
			return nvmeSecurity(d.f, false, uint8(proto), sps, b)
		case d.ataPassThrough:
			return ataTrusted(d.f, false, uint8(proto), sps, b)
		default:
			return scsiSecurity(d.f, false, uint8(proto), sps, b)
		}
	}
	if proto == drive.SecurityProtocolTCGManagement && sps != comIDLevel0 {
		return recvComPacket(recv, p)
	}
	return recv(p)
}

const (
	// comIDLevel0 is the ComID of Level 0 discovery, whose response is
	// not a ComPacket.
	comIDLevel0 = 0x0001
	// comPacketHeaderLen is the size of a ComPacket header: reserved (4),
	// ComID (2), ComID extension (2), OutstandingData (4), MinTransfer (4),
	// Length (4).
	comPacketHeaderLen = 20
)

// FirstComPacketRecv is the allocation length of the first IF-RECV of a
// ComPacket (see Device.IFRecv).
const FirstComPacketRecv = 4 << 10

// recvComPacket receives a ComPacket into p through recv: first into
// FirstComPacketRecv bytes of it, then, if the TPer reports a response
// that needs more, again with room for it.
func recvComPacket(recv func([]byte) error, p []byte) error {
	if len(p) <= FirstComPacketRecv {
		return recv(p)
	}
	first := p[:FirstComPacketRecv]
	if err := recv(first); err != nil {
		return err
	}
	length := binary.BigEndian.Uint32(first[16:20])
	minTransfer := binary.BigEndian.Uint32(first[12:16])
	if length > FirstComPacketRecv-comPacketHeaderLen {
		return fmt.Errorf("transport: IF-RECV: the TPer returned a %d-byte ComPacket into a %d-byte allocation (truncated)", length+comPacketHeaderLen, FirstComPacketRecv)
	}
	if length != 0 || minTransfer <= FirstComPacketRecv-comPacketHeaderLen {
		// A response, nothing (OutstandingData 0), or one not ready yet
		// (OutstandingData 1, MinTransfer 0): the caller sees it as is.
		return nil
	}
	if int(minTransfer) > len(p) {
		return fmt.Errorf("transport: IF-RECV: the TPer's response needs %d bytes, the receive buffer holds %d", minTransfer, len(p))
	}
	// Whether MinTransfer counts the ComPacket header is read differently
	// by TPers: allow for it, in whole 512-byte blocks.
	need := min((int(minTransfer)+comPacketHeaderLen+511)&^511, len(p))
	return recv(p[:need])
}

// IFSend implements core.DriveIntf: IF-SEND (security protocol out) of
// data for protocol proto and protocol-specific field sps.
func (d *Device) IFSend(proto drive.SecurityProtocol, sps uint16, data []byte) error {
	if len(data) == 0 {
		return errors.New("transport: IF-SEND with an empty buffer")
	}
	if len(data) > MaxSecurityTransfer {
		return fmt.Errorf("transport: IF-SEND of %d bytes exceeds the %d-byte limit", len(data), MaxSecurityTransfer)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.kind == KindNVMe:
		return nvmeSecurity(d.f, true, uint8(proto), sps, data)
	case d.ataPassThrough:
		return ataTrusted(d.f, true, uint8(proto), sps, data)
	default:
		return scsiSecurity(d.f, true, uint8(proto), sps, data)
	}
}

// Identify returns the drive's identity in go-tcg-storage's form.
func (d *Device) Identify() (*drive.Identity, error) {
	id, err := d.Identity()
	if err != nil {
		return nil, err
	}
	proto := map[Kind]string{KindNVMe: "NVMe", KindSCSI: "SCSI", KindSATA: "SATA"}[d.kind]
	return &drive.Identity{Protocol: proto, Model: id.Model, SerialNumber: id.Serial, Firmware: id.Firmware}, nil
}

// SerialNumber returns the drive's serial number (trimmed ASCII).
func (d *Device) SerialNumber() ([]byte, error) {
	id, err := d.Identity()
	if err != nil {
		return nil, err
	}
	return []byte(id.Serial), nil
}

// Identity queries the drive: NVMe Identify Controller, Identify Namespace
// and the Namespace Identification Descriptor list; SCSI INQUIRY and VPD
// pages 0x80 and 0x83; for SATA also ATA IDENTIFY DEVICE.
func (d *Device) Identity() (Identity, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.kind {
	case KindNVMe:
		return nvmeIdentity(d.f, d.nsid)
	case KindSATA:
		return sataIdentity(d.f)
	default:
		return scsiIdentity(d.f)
	}
}

// probeSATSecurity asks the SAT layer for the security protocol list with
// SECURITY PROTOCOL IN; libata translates it into TRUSTED RECEIVE when the
// drive supports trusted computing.
func (d *Device) probeSATSecurity() error {
	buf := make([]byte, 512)
	return scsiSecurity(d.f, false, 0, 0, buf)
}
