// Package bootmedium stores the controller's per-array document (identity,
// settings, key inventory and operation journal) on the boot medium: a
// small raw block device (a disk image file on a build host, /dev/nvme0n1
// or similar on a controller).
//
// The medium holds two copies ("slots") of the document. Each write goes
// to the slot holding the older copy, with a sequence number one above the
// newer copy and a SHA-256 checksum, and is synced before Write returns.
// A reader takes the valid slot with the highest sequence number. A power
// cut during a write therefore leaves either the previous document or the
// new one, never a torn one, and the journal kept in the document always
// has a complete copy.
//
// Layout (all integers big-endian), documented in docs/boot-medium.md:
//
//	slot 0 at offset 0, slot 1 at offset SlotSize; each slot:
//	  0  [8]  magic "SEDBOOTM"
//	  8  u16  format version (1)
//	  10 u16  flags (0)
//	  12 u32  payload length
//	  16 u64  sequence number (1 for the first write)
//	  24 [32] SHA-256 over bytes 0..23 and the payload
//	  56 [8]  reserved, zero
//	  64 ...  payload (the document)
package bootmedium

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

const (
	// SlotSize is the size of each of the two document slots.
	SlotSize = 1 << 20
	// MinSize is the smallest usable medium: two slots.
	MinSize = 2 * SlotSize
	// MaxDocument is the largest document a slot can hold.
	MaxDocument = SlotSize - headerSize
	// FormatVersion is the slot format this package writes.
	FormatVersion = 1

	headerSize = 64
)

var magic = [8]byte{'S', 'E', 'D', 'B', 'O', 'O', 'T', 'M'}

// ErrEmpty reports a medium that holds no valid document (freshly
// formatted, or never written).
var ErrEmpty = errors.New("boot medium holds no document")

// ErrNotMedium reports a device that has no sedboot boot-medium slot at
// all (neither slot carries the magic).
var ErrNotMedium = errors.New("not a sedboot boot medium")

// Device is the storage under a Medium: a file or a block device.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// Medium is an opened boot medium.
type Medium struct {
	dev  Device
	name string
}

// New wraps dev, which must be at least MinSize bytes, as a boot medium.
// name identifies it in errors (e.g. the device path).
func New(dev Device, name string) *Medium {
	return &Medium{dev: dev, name: name}
}

// Open opens the boot medium at path (an image file or a block device)
// for reading and writing. Close the returned file when done.
func Open(path string) (*Medium, *os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open boot medium: %w", err)
	}
	return New(f, path), f, nil
}

// Create makes a new boot-medium image file of the given size (at least
// MinSize) with both slots empty. It refuses to overwrite an existing file.
func Create(path string, size int64) error {
	if size < MinSize {
		return fmt.Errorf("create boot medium %s: size %d is below the minimum %d", path, size, MinSize)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create boot medium: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("create boot medium %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("create boot medium %s: %w", path, err)
	}
	return f.Close()
}

// Slot describes what one slot holds.
type Slot struct {
	Index    int    // 0 or 1
	Valid    bool   // magic, version and checksum all good
	Sequence uint64 // sequence number when Valid
	Length   int    // payload length when Valid
	Problem  string // why the slot is not valid ("empty", "bad checksum", ...)
}

// Inspect reports the state of both slots without choosing between them.
func (m *Medium) Inspect() ([2]Slot, error) {
	var out [2]Slot
	for i := range out {
		s, _, err := m.readSlot(i)
		if err != nil {
			return out, err
		}
		out[i] = s
	}
	return out, nil
}

// Read returns the newest valid document and its sequence number. It
// returns ErrEmpty when the medium carries the magic but no valid
// document, and ErrNotMedium when neither slot carries the magic.
func (m *Medium) Read() ([]byte, uint64, error) {
	var (
		best     []byte
		bestSeq  uint64
		anyMagic bool
	)
	for i := 0; i < 2; i++ {
		s, payload, err := m.readSlot(i)
		if err != nil {
			return nil, 0, err
		}
		if s.Problem != "empty" {
			anyMagic = true
		}
		if s.Valid && (best == nil || s.Sequence > bestSeq) {
			best, bestSeq = payload, s.Sequence
		}
	}
	if best == nil {
		if !anyMagic {
			return nil, 0, fmt.Errorf("read %s: %w", m.name, ErrNotMedium)
		}
		return nil, 0, fmt.Errorf("read %s: %w", m.name, ErrEmpty)
	}
	return best, bestSeq, nil
}

// Write stores doc as the newest document. It writes the slot that does
// not hold the current newest document, syncs the device, and returns the
// new sequence number. The previous document stays intact in the other
// slot until the next Write.
func (m *Medium) Write(doc []byte) (uint64, error) {
	if len(doc) > MaxDocument {
		return 0, fmt.Errorf("write %s: document of %d bytes exceeds the slot capacity of %d bytes", m.name, len(doc), MaxDocument)
	}
	var slots [2]Slot
	for i := range slots {
		s, _, err := m.readSlot(i)
		if err != nil {
			return 0, err
		}
		slots[i] = s
	}
	target, seq := 0, uint64(1)
	switch {
	case slots[0].Valid && slots[1].Valid:
		if slots[0].Sequence >= slots[1].Sequence {
			target, seq = 1, slots[0].Sequence+1
		} else {
			target, seq = 0, slots[1].Sequence+1
		}
	case slots[0].Valid:
		target, seq = 1, slots[0].Sequence+1
	case slots[1].Valid:
		target, seq = 0, slots[1].Sequence+1
	}
	buf := make([]byte, headerSize+len(doc))
	copy(buf[0:8], magic[:])
	binary.BigEndian.PutUint16(buf[8:10], FormatVersion)
	binary.BigEndian.PutUint32(buf[12:16], uint32(len(doc)))
	binary.BigEndian.PutUint64(buf[16:24], seq)
	copy(buf[headerSize:], doc)
	sum := checksum(buf[0:24], doc)
	copy(buf[24:56], sum[:])
	if _, err := m.dev.WriteAt(buf, int64(target)*SlotSize); err != nil {
		return 0, fmt.Errorf("write %s slot %d: %w", m.name, target, err)
	}
	if err := m.dev.Sync(); err != nil {
		return 0, fmt.Errorf("sync %s: %w", m.name, err)
	}
	return seq, nil
}

func checksum(head, payload []byte) [32]byte {
	h := sha256.New()
	h.Write(head)
	h.Write(payload)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func (m *Medium) readSlot(i int) (Slot, []byte, error) {
	s := Slot{Index: i}
	hdr := make([]byte, headerSize)
	off := int64(i) * SlotSize
	if _, err := m.dev.ReadAt(hdr, off); err != nil {
		if errors.Is(err, io.EOF) {
			return s, nil, fmt.Errorf("read %s slot %d: medium is smaller than %d bytes", m.name, i, MinSize)
		}
		return s, nil, fmt.Errorf("read %s slot %d: %w", m.name, i, err)
	}
	if !bytes.Equal(hdr[0:8], magic[:]) {
		s.Problem = "empty"
		return s, nil, nil
	}
	if v := binary.BigEndian.Uint16(hdr[8:10]); v != FormatVersion {
		s.Problem = fmt.Sprintf("format version %d (this build reads %d)", v, FormatVersion)
		return s, nil, nil
	}
	n := binary.BigEndian.Uint32(hdr[12:16])
	if n > MaxDocument {
		s.Problem = fmt.Sprintf("payload length %d exceeds the slot", n)
		return s, nil, nil
	}
	payload := make([]byte, n)
	if _, err := m.dev.ReadAt(payload, off+headerSize); err != nil {
		return s, nil, fmt.Errorf("read %s slot %d payload: %w", m.name, i, err)
	}
	want := checksum(hdr[0:24], payload)
	if !bytes.Equal(want[:], hdr[24:56]) {
		s.Problem = "bad checksum (torn or corrupted write)"
		return s, nil, nil
	}
	s.Valid = true
	s.Sequence = binary.BigEndian.Uint64(hdr[16:24])
	s.Length = int(n)
	return s, payload, nil
}

// MaxProbeSize is the largest block device Find considers: a boot medium
// is small, and skipping large devices keeps the scan away from data
// drives (and from I/O errors on locked SEDs).
const MaxProbeSize = 1 << 30

// Find returns the block devices under sysRoot/class/block (whole disks
// and partitions of at most MaxProbeSize bytes) that carry a boot-medium
// slot, as paths under devRoot. Pass "/sys" and "/dev" on a live system.
func Find(sysRoot, devRoot string) ([]string, error) {
	entries, err := os.ReadDir(sysRoot + "/class/block")
	if err != nil {
		return nil, fmt.Errorf("find boot medium: %w", err)
	}
	var found []string
	for _, e := range entries {
		name := e.Name()
		sectors, err := os.ReadFile(sysRoot + "/class/block/" + name + "/size")
		if err != nil {
			continue
		}
		var n int64
		if _, err := fmt.Sscan(string(sectors), &n); err != nil || n*512 < MinSize || n*512 > MaxProbeSize {
			continue
		}
		path := devRoot + "/" + name
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var head [8]byte
		_, rerr := f.ReadAt(head[:], 0)
		if rerr != nil || head != magic {
			_, rerr = f.ReadAt(head[:], SlotSize)
		}
		f.Close()
		if rerr == nil && head == magic {
			found = append(found, path)
		}
	}
	return found, nil
}
