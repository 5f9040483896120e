package opalsim

import (
	"testing"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
	"github.com/open-source-firmware/go-tcg-storage/pkg/locking"
)

// BenchmarkUnlock measures one unlock through go-tcg-storage: StartSession,
// Authenticate Admin1, Set ReadLocked/WriteLocked=False, close.
func BenchmarkUnlock(b *testing.B) {
	_, h, pin := enabledDrive(b)
	f := false
	for b.Loop() {
		s, err := h.cs.NewSession(core.LockingSP)
		if err != nil {
			b.Fatal(err)
		}
		if err := table.ThisSP_Authenticate(s, locking.LockingAuthorityAdmin1, pin); err != nil {
			b.Fatal(err)
		}
		row := &table.LockingRow{ReadLocked: &f, WriteLocked: &f}
		copy(row.UID[:], locking.GlobalRangeRowUID[:])
		if err := table.Locking_Set(s, row); err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func benchMedia(b *testing.B, write bool) {
	d, err := NewMemory(Config{Blocks: 1 << 15, MBRSize: 4096, DataStoreSize: 4096})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 1<<20)
	if err := d.WriteBlocks(0, buf); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if write {
			err = d.WriteBlocks(0, buf)
		} else {
			err = d.ReadBlocks(0, buf)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMediaWrite measures AES-256-XTS encryption throughput of writes (1 MiB I/Os).
func BenchmarkMediaWrite(b *testing.B) { benchMedia(b, true) }

// BenchmarkMediaRead measures decryption throughput of reads (1 MiB I/Os).
func BenchmarkMediaRead(b *testing.B) { benchMedia(b, false) }
