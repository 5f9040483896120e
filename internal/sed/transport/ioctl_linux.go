//go:build linux

package transport

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ---- NVMe admin passthrough (linux/nvme_ioctl.h) ----

// nvmeAdminCmd mirrors struct nvme_passthru_cmd (72 bytes).
type nvmeAdminCmd struct {
	opcode      uint8
	flags       uint8
	rsvd1       uint16
	nsid        uint32
	cdw2        uint32
	cdw3        uint32
	metadata    uint64
	addr        uint64
	metadataLen uint32
	dataLen     uint32
	cdw10       uint32
	cdw11       uint32
	cdw12       uint32
	cdw13       uint32
	cdw14       uint32
	cdw15       uint32
	timeoutMs   uint32
	result      uint32
}

const (
	// _IOWR('N', 0x41, struct nvme_admin_cmd)
	nvmeIoctlAdminCmd = 0xC0484E41

	nvmeOpIdentify     = 0x06
	nvmeOpSecuritySend = 0x81
	nvmeOpSecurityRecv = 0x82

	cnsNamespace   = 0x00
	cnsController  = 0x01
	cnsDescriptors = 0x03

	nvmeTimeoutMs = 30000
)

// NVMeStatusError is a command completion with a non-zero NVMe status.
type NVMeStatusError struct {
	Opcode uint8
	Status uint16 // status field: SCT in bits 10:8, SC in bits 7:0
}

func (e *NVMeStatusError) Error() string {
	return fmt.Sprintf("NVMe admin opcode 0x%02x: status type 0x%x code 0x%02x", e.Opcode, e.Status>>8&7, e.Status&0xff)
}

// Unwrap maps Invalid Command Opcode and Invalid Field in Command (generic
// status) to ErrNotSupported.
func (e *NVMeStatusError) Unwrap() error {
	if e.Status>>8&7 == 0 && (e.Status&0xff == 0x01 || e.Status&0xff == 0x02) {
		return ErrNotSupported
	}
	return nil
}

func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var r1 uintptr
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		r1, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return r1, nil
}

// nvmeAdmin submits cmd with buf as its data buffer. The ioctl returns the
// NVMe status as its (positive) result; go-tcg-storage ignores it, this
// function does not.
func nvmeAdmin(f *os.File, cmd *nvmeAdminCmd, buf []byte) error {
	var pin runtime.Pinner
	defer pin.Unpin()
	if len(buf) > 0 {
		pin.Pin(&buf[0])
		cmd.addr = uint64(uintptr(unsafe.Pointer(&buf[0])))
		cmd.dataLen = uint32(len(buf))
	}
	cmd.timeoutMs = nvmeTimeoutMs
	status, err := ioctl(f, nvmeIoctlAdminCmd, unsafe.Pointer(cmd))
	if err != nil {
		return fmt.Errorf("NVMe admin opcode 0x%02x: %w", cmd.opcode, err)
	}
	if status != 0 {
		return &NVMeStatusError{Opcode: cmd.opcode, Status: uint16(status)}
	}
	return nil
}

func nvmeIdentify(f *os.File, nsid uint32, cns uint32) ([]byte, error) {
	buf := make([]byte, 4096)
	cmd := nvmeAdminCmd{opcode: nvmeOpIdentify, nsid: nsid, cdw10: cns}
	if err := nvmeAdmin(f, &cmd, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// nvmeSecurity issues Security Send (send) or Security Receive. CDW10
// holds SECP in bits 31:24 and SPSP in bits 23:8; CDW11 the transfer or
// allocation length in bytes.
func nvmeSecurity(f *os.File, send bool, proto uint8, sps uint16, buf []byte) error {
	cmd := nvmeAdminCmd{
		opcode: nvmeOpSecurityRecv,
		cdw10:  uint32(proto)<<24 | uint32(sps)<<8,
		cdw11:  uint32(len(buf)),
	}
	if send {
		cmd.opcode = nvmeOpSecuritySend
	}
	return nvmeAdmin(f, &cmd, buf)
}

func nvmeIdentity(f *os.File, nsid uint32) (Identity, error) {
	raw, err := nvmeIdentify(f, 0, cnsController)
	if err != nil {
		return Identity{}, err
	}
	c, err := ParseNVMeIdentifyController(raw)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{Kind: KindNVMe, Model: c.Model, Serial: c.Serial, Firmware: c.Firmware, SecuritySupported: c.SecuritySendReceive}
	// Namespace identifiers are optional: a controller without namespace
	// nsid still has an identity.
	if raw, err := nvmeIdentify(f, nsid, cnsNamespace); err == nil {
		if ns, err := ParseNVMeIdentifyNamespace(raw); err == nil {
			id.EUI64, id.NGUID = ns.EUI64, ns.NGUID
		}
	}
	if raw, err := nvmeIdentify(f, nsid, cnsDescriptors); err == nil {
		if ids, err := ParseNVMeNamespaceDescriptors(raw); err == nil {
			if ids.EUI64 != nil {
				id.EUI64 = ids.EUI64
			}
			if ids.NGUID != nil {
				id.NGUID = ids.NGUID
			}
			id.UUID = ids.UUID
		}
	}
	return id, nil
}

var nvmeNSPath = regexp.MustCompile(`^nvme\d+n(\d+)$`)

// nvmeNSIDFromPath returns M for /dev/nvmeXnM, else 0.
func nvmeNSIDFromPath(path string) uint32 {
	m := nvmeNSPath.FindStringSubmatch(filepath.Base(path))
	if m == nil {
		return 0
	}
	n, err := strconv.ParseUint(m[1], 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// ---- SCSI generic (scsi/sg.h) ----

// sgIoHdr mirrors struct sg_io_hdr.
type sgIoHdr struct {
	interfaceID    int32
	dxferDirection int32
	cmdLen         uint8
	mxSbLen        uint8
	iovecCount     uint16
	dxferLen       uint32
	dxferp         unsafe.Pointer
	cmdp           unsafe.Pointer
	sbp            unsafe.Pointer
	timeout        uint32
	flags          uint32
	packID         int32
	usrPtr         unsafe.Pointer
	status         uint8
	maskedStatus   uint8
	msgStatus      uint8
	sbLenWr        uint8
	hostStatus     uint16
	driverStatus   uint16
	resid          int32
	duration       uint32
	info           uint32
}

const (
	sgIO          = 0x2285
	sgDxferNone   = -1
	sgDxferToDev  = -2
	sgDxferFromDv = -3
	sgInfoCheck   = 0x1
	sgTimeoutMs   = 30000

	scsiInquiryOp     = 0x12
	scsiSecurityIn    = 0xa2
	scsiSecurityOut   = 0xb5
	scsiATAPassThru16 = 0x85

	ataIdentifyDevice = 0xec
	ataTrustedRecv    = 0x5c
	ataTrustedSend    = 0x5e
)

// SCSIError is a SCSI command that ended with a CHECK CONDITION or a
// transport error.
type SCSIError struct {
	Opcode       byte
	Status       byte
	HostStatus   uint16
	DriverStatus uint16
	Sense        *Sense
}

func (e *SCSIError) Error() string {
	s := fmt.Sprintf("SCSI opcode 0x%02x: status 0x%02x host 0x%x driver 0x%x", e.Opcode, e.Status, e.HostStatus, e.DriverStatus)
	if e.Sense != nil {
		s += ", " + e.Sense.String()
	}
	return s
}

// Unwrap maps ILLEGAL REQUEST to ErrNotSupported.
func (e *SCSIError) Unwrap() error {
	if e.Sense != nil && e.Sense.Key == SenseIllegalRequest {
		return ErrNotSupported
	}
	return nil
}

// sgCommand sends cdb with buf as the data buffer in direction dir.
func sgCommand(f *os.File, cdb []byte, dir int32, buf []byte) error {
	sense := make([]byte, 64)
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&cdb[0])
	pin.Pin(&sense[0])
	hdr := sgIoHdr{
		interfaceID:    'S',
		dxferDirection: dir,
		cmdLen:         uint8(len(cdb)),
		mxSbLen:        uint8(len(sense)),
		cmdp:           unsafe.Pointer(&cdb[0]),
		sbp:            unsafe.Pointer(&sense[0]),
		timeout:        sgTimeoutMs,
	}
	if len(buf) > 0 {
		pin.Pin(&buf[0])
		hdr.dxferp = unsafe.Pointer(&buf[0])
		hdr.dxferLen = uint32(len(buf))
	} else {
		hdr.dxferDirection = sgDxferNone
	}
	if _, err := ioctl(f, sgIO, unsafe.Pointer(&hdr)); err != nil {
		return fmt.Errorf("SG_IO opcode 0x%02x: %w", cdb[0], err)
	}
	if hdr.info&sgInfoCheck == 0 {
		return nil
	}
	e := &SCSIError{Opcode: cdb[0], Status: hdr.status, HostStatus: hdr.hostStatus, DriverStatus: hdr.driverStatus}
	if hdr.sbLenWr > 0 {
		if s, err := ParseSense(sense[:hdr.sbLenWr]); err == nil {
			e.Sense = &s
		}
	}
	return e
}

func scsiInquiryPage(f *os.File, evpd bool, page byte, n int) ([]byte, error) {
	buf := make([]byte, n)
	cdb := []byte{scsiInquiryOp, 0, page, byte(n >> 8), byte(n), 0}
	if evpd {
		cdb[1] = 1
	}
	if err := sgCommand(f, cdb, sgDxferFromDv, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

func scsiInquiry(f *os.File) (Inquiry, error) {
	raw, err := scsiInquiryPage(f, false, 0, 96)
	if err != nil {
		return Inquiry{}, err
	}
	return ParseInquiry(raw)
}

func scsiIdentity(f *os.File) (Identity, error) {
	inq, err := scsiInquiry(f)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{Kind: KindSCSI, Model: inq.Product, Firmware: inq.Revision, SecuritySupported: true}
	if inq.Vendor != "" {
		id.Model = inq.Vendor + " " + inq.Product
	}
	if raw, err := scsiInquiryPage(f, true, 0x80, 252); err == nil {
		if s, err := ParseVPDSerial(raw); err == nil {
			id.Serial = s
		}
	}
	if raw, err := scsiInquiryPage(f, true, 0x83, 1024); err == nil {
		if ds, err := ParseVPDDeviceID(raw); err == nil {
			id.WWN = WWNFromDesignators(ds)
		}
	}
	return id, nil
}

// scsiSecurity issues SECURITY PROTOCOL IN/OUT with INC_512 set, so the
// transfer length counts 512-byte blocks (some drives require it; libata
// translates either form). Buffers that are not a whole number of blocks
// go through a padded bounce buffer.
func scsiSecurity(f *os.File, send bool, proto uint8, sps uint16, buf []byte) error {
	xfer, err := blockBuffer(buf, send)
	if err != nil {
		return err
	}
	cdb := make([]byte, 12)
	cdb[0] = scsiSecurityIn
	dir := int32(sgDxferFromDv)
	if send {
		cdb[0], dir = scsiSecurityOut, sgDxferToDev
	}
	cdb[1] = proto
	cdb[2], cdb[3] = byte(sps>>8), byte(sps)
	cdb[4] = 0x80 // INC_512
	blocks := uint32(len(xfer) / 512)
	cdb[6], cdb[7], cdb[8], cdb[9] = byte(blocks>>24), byte(blocks>>16), byte(blocks>>8), byte(blocks)
	if err := sgCommand(f, cdb, dir, xfer); err != nil {
		return err
	}
	if !send {
		copy(buf, xfer)
	}
	return nil
}

// blockBuffer returns buf itself when it is a whole number of 512-byte
// blocks no larger than MaxSecurityTransfer, else a bounce buffer (a
// receive is capped, a send padded with zeros).
func blockBuffer(buf []byte, send bool) ([]byte, error) {
	n := len(buf)
	if !send && n > MaxSecurityTransfer {
		n = MaxSecurityTransfer
	}
	if send && n > MaxSecurityTransfer {
		return nil, fmt.Errorf("security send of %d bytes exceeds the %d-byte transfer limit", n, MaxSecurityTransfer)
	}
	n = (n + 511) &^ 511
	if n == len(buf) {
		return buf, nil
	}
	x := make([]byte, n)
	if send {
		copy(x, buf)
	}
	return x, nil
}

// ataPassThrough16 builds an ATA PASS-THROUGH (16) CDB for a PIO data
// command that transfers blocks 512-byte blocks, counted in the COUNT field.
func ataPassThrough16(in bool, command, features byte, blocks uint16, lbaLow, lbaMid, lbaHigh byte) []byte {
	cdb := make([]byte, 16)
	cdb[0] = scsiATAPassThru16
	if in {
		cdb[1] = 4 << 1 // PIO Data-In
		cdb[2] = 0x0e   // T_DIR from device, BYTE_BLOCK, T_LENGTH in COUNT
	} else {
		cdb[1] = 5 << 1 // PIO Data-Out
		cdb[2] = 0x06   // T_DIR to device, BYTE_BLOCK, T_LENGTH in COUNT
	}
	cdb[4] = features
	cdb[5], cdb[6] = byte(blocks>>8), byte(blocks)
	cdb[8] = lbaLow
	cdb[10] = lbaMid
	cdb[12] = lbaHigh
	cdb[13] = 0x40 // device: LBA mode
	cdb[14] = command
	return cdb
}

// ataTrusted issues ATA TRUSTED SEND (5Eh) or TRUSTED RECEIVE (5Ch) through
// ATA PASS-THROUGH (16): FEATURES = security protocol, COUNT and LBA(7:0)
// = transfer length in blocks, LBA(23:8) = the protocol-specific field.
// Linux passes these only with libata.allow_tpm=1.
func ataTrusted(f *os.File, send bool, proto uint8, sps uint16, buf []byte) error {
	xfer, err := blockBuffer(buf, send)
	if err != nil {
		return err
	}
	blocks := len(xfer) / 512
	if blocks > 0xffff {
		return errors.New("ATA trusted transfer longer than 65535 blocks")
	}
	cmd, dir := byte(ataTrustedRecv), int32(sgDxferFromDv)
	if send {
		cmd, dir = ataTrustedSend, sgDxferToDev
	}
	// COUNT(7:0) = TRANSFER LENGTH(7:0), LBA(7:0) = TRANSFER LENGTH(15:8).
	cdb := ataPassThrough16(!send, cmd, proto, uint16(blocks&0xff), byte(blocks>>8), byte(sps), byte(sps>>8))
	if err := sgCommand(f, cdb, dir, xfer); err != nil {
		return err
	}
	if !send {
		copy(buf, xfer)
	}
	return nil
}

func sataIdentity(f *os.File) (Identity, error) {
	buf := make([]byte, 512)
	cdb := ataPassThrough16(true, ataIdentifyDevice, 0, 1, 0, 0, 0)
	if err := sgCommand(f, cdb, sgDxferFromDv, buf); err != nil {
		// A SAT layer without ATA PASS-THROUGH still answers INQUIRY.
		id, serr := scsiIdentity(f)
		id.Kind = KindSATA
		return id, serr
	}
	a, err := ParseATAIdentify(buf)
	if err != nil {
		return Identity{}, err
	}
	id := Identity{Kind: KindSATA, Model: a.Model, Serial: a.Serial, Firmware: a.Firmware, WWN: a.WWN, SecuritySupported: a.TrustedComputing}
	if id.WWN == nil {
		if raw, err := scsiInquiryPage(f, true, 0x83, 1024); err == nil {
			if ds, err := ParseVPDDeviceID(raw); err == nil {
				id.WWN = WWNFromDesignators(ds)
			}
		}
	}
	return id, nil
}
