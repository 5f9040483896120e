// Package bootimage assembles a controller boot image: the pinned kernel,
// the production initramfs (package initramfs) and a manifest naming both
// with their sizes and SHA-256 sums and the kernel command line, in one
// directory that a controller's boot loader (or QEMU's -kernel/-initrd)
// uses as is. One image serves every array: the per-array identity lives on
// the boot medium.
package bootimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/initramfs"
)

// Cmdline is the kernel command line of a controller boot (serial console).
const Cmdline = "console=ttyS0 quiet panic=-1"

// File is one file of the image.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest describes an assembled image.
type Manifest struct {
	Kernel    string    `json:"kernel_version"`
	Vmlinuz   File      `json:"vmlinuz"`
	Initramfs File      `json:"initramfs"`
	Cmdline   string    `json:"cmdline"`
	Built     time.Time `json:"built"`
}

// Assemble builds the production initramfs for k (zstd level, 0 for the
// builder's default) and writes vmlinuz, initramfs.cpio.zst and
// manifest.json into out.
func Assemble(ctx context.Context, k *kernel.Kernel, srcDir, out string, level int) (*Manifest, error) {
	img, err := initramfs.BuildProduction(ctx, k, initramfs.Spec{Dir: srcDir, Level: level})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	m := &Manifest{Kernel: k.Version, Cmdline: Cmdline, Built: time.Now().UTC()}
	if m.Vmlinuz, err = copyFile(k.VmlinuzPath, filepath.Join(out, "vmlinuz")); err != nil {
		return nil, err
	}
	if m.Initramfs, err = copyFile(img.Path, filepath.Join(out, "initramfs.cpio.zst")); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(out, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return m, nil
}

// copyFile copies src to dst (via a temporary file and rename) and
// describes the copy.
func copyFile(src, dst string) (File, error) {
	in, err := os.Open(src)
	if err != nil {
		return File{}, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".part-")
	if err != nil {
		return File{}, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), in)
	if err == nil {
		err = tmp.Close()
	} else {
		tmp.Close()
	}
	if err != nil {
		return File{}, fmt.Errorf("copy %s: %w", src, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return File{}, err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return File{}, err
	}
	return File{Name: filepath.Base(dst), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
