package kmod

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compression formats recognised by their magic bytes.
const (
	compXZ   = "xz"
	compZstd = "zstd"
	compGzip = "gzip"
)

var (
	magicXZ   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicGzip = []byte{0x1f, 0x8b}
)

// detect returns the compression format of a file from its first bytes, or
// "" for anything else (an ELF .ko, or garbage the kernel will reject).
func detect(head []byte) string {
	switch {
	case bytes.HasPrefix(head, magicXZ):
		return compXZ
	case bytes.HasPrefix(head, magicZstd):
		return compZstd
	case bytes.HasPrefix(head, magicGzip):
		return compGzip
	}
	return ""
}

// decompress reads the whole compressed module r (format comp) into
// memory, refusing images larger than limit bytes.
func decompress(r io.ReaderAt, comp string, limit int64) ([]byte, error) {
	// Buffered: the decoders read in small pieces, each a pread(2) on a
	// file otherwise.
	src := bufio.NewReaderSize(io.NewSectionReader(r, 0, 1<<62), 64<<10)
	var dec io.Reader
	switch comp {
	case compXZ:
		x, err := xz.NewReader(src)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		dec = x
	case compZstd:
		z, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer z.Close()
		dec = z
	case compGzip:
		g, err := gzip.NewReader(src)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		defer g.Close()
		dec = g
	default:
		return nil, fmt.Errorf("unknown compression %q", comp)
	}
	img, err := io.ReadAll(io.LimitReader(dec, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", comp, err)
	}
	if int64(len(img)) > limit {
		return nil, fmt.Errorf("%s: decompressed module larger than %d bytes", comp, limit)
	}
	return img, nil
}
