// Package blockdev defines the contract between a storage device that can
// be self-encrypting (such as the simulated TPer in opalsim) and the
// transports that export it (such as the NVMe/TCP target in nvmetcp).
//
// It holds only interfaces and sentinel errors so that producers and
// consumers depend on it and never on each other.
package blockdev

import "errors"

// ErrLocked reports an I/O to a block range that is locked by the drive's
// security subsystem. Transports map it to their "access denied" status
// (for NVMe: Status Code Type 2h, Status Code 86h).
var ErrLocked = errors.New("block range is locked")

// ErrOutOfRange reports an I/O beyond the last block of the device.
var ErrOutOfRange = errors.New("block address out of range")

// Identity describes a device the way an NVMe Identify or a SCSI INQUIRY
// reports it. Serial, Model and Firmware are ASCII; EUI64 and NGUID are
// zero when the device has none.
type Identity struct {
	Serial   string
	Model    string
	Firmware string
	EUI64    [8]byte
	NGUID    [16]byte
}

// Device is a block device addressed in fixed-size logical blocks.
// Read and write lengths are whole multiples of BlockSize. Implementations
// are safe for concurrent use.
type Device interface {
	// Identity returns the device's identification strings and IDs.
	Identity() Identity
	// BlockSize returns the logical block size in bytes.
	BlockSize() int
	// NumBlocks returns the device capacity in logical blocks.
	NumBlocks() uint64
	// ReadBlocks fills p from consecutive blocks starting at lba.
	// It returns an error wrapping ErrLocked when any block read is in a
	// read-locked range, and ErrOutOfRange past the end of the device.
	ReadBlocks(lba uint64, p []byte) error
	// WriteBlocks writes p to consecutive blocks starting at lba.
	// It returns an error wrapping ErrLocked when any block written is in
	// a write-locked range, and ErrOutOfRange past the end of the device.
	WriteBlocks(lba uint64, p []byte) error
	// Flush makes every completed write durable.
	Flush() error
}

// SecurityDevice carries the storage security protocols (SPC-4 SECURITY
// PROTOCOL IN/OUT, NVMe Security Send/Receive, ATA TRUSTED SEND/RECEIVE).
type SecurityDevice interface {
	// SecuritySend delivers data for security protocol proto and
	// protocol-specific field spsp (the ComID for TCG protocols 1 and 2).
	SecuritySend(proto uint8, spsp uint16, data []byte) error
	// SecurityRecv returns the device's response for proto and spsp,
	// never more than alloc bytes (the host's allocation length).
	SecurityRecv(proto uint8, spsp uint16, alloc int) ([]byte, error)
}

// SelfEncryptingDevice is a block device with a security subsystem.
type SelfEncryptingDevice interface {
	Device
	SecurityDevice
}
