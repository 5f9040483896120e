package opalsim

import (
	"crypto/aes"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/crypto/xts"
)

// backing is where ciphertext lives: a sparse file or sparse memory.
type backing interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Close() error
}

type fileBacking struct{ f *os.File }

func (b fileBacking) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.f.ReadAt(p, off)
	if err == io.EOF { // sparse tail: never written
		for i := n; i < len(p); i++ {
			p[i] = 0
		}
		return len(p), nil
	}
	return n, err
}
func (b fileBacking) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }
func (b fileBacking) Sync() error                              { return b.f.Sync() }
func (b fileBacking) Close() error                             { return b.f.Close() }

const memPage = 4096

// memBacking is a sparse in-memory store (missing pages read as zeros).
type memBacking struct {
	mu    sync.Mutex
	pages map[int64][]byte
}

func newMemBacking() *memBacking { return &memBacking{pages: map[int64][]byte{}} }

func (m *memBacking) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 0; i < len(p); {
		pg, po := (off+int64(i))/memPage, (off+int64(i))%memPage
		n := min(len(p)-i, int(memPage-po))
		if page, ok := m.pages[pg]; ok {
			copy(p[i:i+n], page[po:])
		} else {
			clear(p[i : i+n])
		}
		i += n
	}
	return len(p), nil
}

func (m *memBacking) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 0; i < len(p); {
		pg, po := (off+int64(i))/memPage, (off+int64(i))%memPage
		n := min(len(p)-i, int(memPage-po))
		page, ok := m.pages[pg]
		if !ok {
			page = make([]byte, memPage)
			m.pages[pg] = page
		}
		copy(page[po:], p[i:i+n])
		i += n
	}
	return len(p), nil
}
func (m *memBacking) Sync() error  { return nil }
func (m *memBacking) Close() error { return nil }

// mediaKey is a live AES-256-XTS key for one locking range.
type mediaKey struct {
	raw []byte // 64 bytes
	c   *xts.Cipher
}

func newMediaKey(raw []byte) (*mediaKey, error) {
	if len(raw) != 64 {
		return nil, fmt.Errorf("media key: want 64 bytes, have %d", len(raw))
	}
	c, err := xts.NewCipher(aes.NewCipher, raw)
	if err != nil {
		return nil, fmt.Errorf("media key: %w", err)
	}
	k := make([]byte, 64)
	copy(k, raw)
	return &mediaKey{raw: k, c: c}, nil
}

func (k *mediaKey) destroy() {
	if k != nil {
		zero(k.raw)
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// decryptSector decrypts one sector in place; an all-zero ciphertext sector
// has never been written and reads as zeros.
func (k *mediaKey) decryptSector(buf []byte, sector uint64) {
	if allZero(buf) {
		return
	}
	k.c.Decrypt(buf, buf, sector)
}

func (k *mediaKey) encryptSector(dst, src []byte, sector uint64) {
	k.c.Encrypt(dst, src, sector)
}
