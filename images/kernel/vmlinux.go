package kernel

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// xenElfnotePhys32Entry is the ELF note type of the PVH entry point
// (XEN_ELFNOTE_PHYS32_ENTRY), which lets QEMU start an uncompressed kernel
// directly.
const xenElfnotePhys32Entry = 18

// extractTimeout bounds the one-time decompression of the kernel.
const extractTimeout = 2 * time.Minute

// BootImage returns the kernel file that boots fastest under QEMU: the
// uncompressed ELF kernel when it could be extracted (QEMU enters it through
// its PVH entry point, skipping the firmware's real-mode setup and the
// kernel's own decompression, which under TCG halves the time to init),
// otherwise the bzImage.
func (k *Kernel) BootImage() string {
	if k.VmlinuxPath != "" {
		return k.VmlinuxPath
	}
	return k.VmlinuzPath
}

// ensureVmlinux extracts the uncompressed kernel from the bzImage into dir
// once and returns its path.
func ensureVmlinux(ctx context.Context, dir, vmlinuz string) (string, error) {
	out := filepath.Join(dir, "vmlinux")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	bz, err := os.ReadFile(vmlinuz)
	if err != nil {
		return "", err
	}
	payload, size, err := bzPayload(bz)
	if err != nil {
		return "", fmt.Errorf("%s: %w", vmlinuz, err)
	}
	var tool string
	switch {
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		tool = "zstd"
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		tool = "xz"
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		tool = "gzip"
	default:
		return "", fmt.Errorf("%s: payload compression %x not supported", vmlinuz, payload[:min(6, len(payload))])
	}
	tmp, err := os.CreateTemp(dir, ".vmlinux-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-dc")
	cmd.Stdin = bytes.NewReader(payload)
	cmd.Stdout = tmp
	cmd.Stderr = &stderr
	err = cmd.Run()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("decompress %s with %s: %w: %s", vmlinuz, tool, err, strings.TrimSpace(stderr.String()))
	}
	if err := checkPVH(tmp.Name(), size); err != nil {
		return "", fmt.Errorf("%s: %w", vmlinuz, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	return out, nil
}

// bzPayload returns the compressed kernel inside a bzImage (boot protocol
// 2.08 or later) without its trailing 32-bit uncompressed size, and that
// size.
func bzPayload(bz []byte) ([]byte, uint32, error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return nil, 0, errors.New("not a bzImage (no HdrS header)")
	}
	if v := binary.LittleEndian.Uint16(bz[0x206:]); v < 0x208 {
		return nil, 0, fmt.Errorf("boot protocol %#x has no payload fields", v)
	}
	setupSects := int(bz[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if n < 4 || off < 0 || off+n > len(bz) {
		return nil, 0, fmt.Errorf("payload [%d, +%d) outside the %d-byte file", off, n, len(bz))
	}
	p := bz[off : off+n]
	return p[:n-4], binary.LittleEndian.Uint32(p[n-4:]), nil
}

// checkPVH checks that path is an ELF kernel of the expected size with a
// PVH entry point.
func checkPVH(path string, size uint32) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Size() != int64(size) {
		return fmt.Errorf("decompressed kernel is %d bytes, the bzImage says %d", st.Size(), size)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("decompressed kernel: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return fmt.Errorf("decompressed kernel notes: %w", err)
		}
		if hasNote(data, "Xen", xenElfnotePhys32Entry) {
			return nil
		}
	}
	return errors.New("decompressed kernel has no PVH entry point (CONFIG_PVH)")
}

// hasNote reports whether an ELF note segment holds a note of the given
// owner and type.
func hasNote(data []byte, owner string, typ uint32) bool {
	align4 := func(n int) int { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz := int(binary.LittleEndian.Uint32(data))
		descsz := int(binary.LittleEndian.Uint32(data[4:]))
		t := binary.LittleEndian.Uint32(data[8:])
		end := 12 + align4(namesz) + align4(descsz)
		if namesz < 0 || descsz < 0 || end > len(data) || end < 12 {
			return false
		}
		name := strings.TrimRight(string(data[12:12+namesz]), "\x00")
		if name == owner && t == typ {
			return true
		}
		data = data[end:]
	}
	return false
}
