package opalsim

import (
	"fmt"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// rangeOf returns the locking range that holds lba (0 = global).
func (st *state) rangeOf(lba uint64) int {
	for r := 1; r <= numRanges; r++ {
		rr := &st.Locking.Ranges[r]
		if rr.Length > 0 && lba >= rr.Start && lba-rr.Start < rr.Length {
			return r
		}
	}
	return 0
}

func (d *Drive) checkIO(lba uint64, n int) (uint64, error) {
	bs := d.st.BlockSize
	if n%bs != 0 {
		return 0, fmt.Errorf("I/O of %d bytes: not a multiple of the %d-byte block", n, bs)
	}
	cnt := uint64(n / bs)
	if lba > d.st.Blocks || cnt > d.st.Blocks-lba {
		return 0, fmt.Errorf("blocks %d+%d past %d: %w", lba, cnt, d.st.Blocks, blockdev.ErrOutOfRange)
	}
	return cnt, nil
}

// mbrShadowed reports whether lba is served from the shadow MBR.
func (d *Drive) mbrShadowed(lba uint64) bool {
	ls := &d.st.Locking
	return ls.LifeCycle == lifeManufactured && ls.MBREnable && !ls.MBRDone &&
		int64(lba)*int64(d.st.BlockSize) < d.st.MBRSize
}

// ReadBlocks reads and decrypts consecutive blocks starting at lba.
func (d *Drive) ReadBlocks(lba uint64, p []byte) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	cnt, err := d.checkIO(lba, len(p))
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	bs := uint64(d.st.BlockSize)
	keys := make([]*mediaKey, cnt)
	for i := uint64(0); i < cnt; i++ {
		b := lba + i
		if d.mbrShadowed(b) {
			continue
		}
		r := d.st.rangeOf(b)
		rr := &d.st.Locking.Ranges[r]
		if rr.readLocked() || d.live[r] == nil {
			return fmt.Errorf("read block %d (range %d): %w", b, r, blockdev.ErrLocked)
		}
		keys[i] = d.live[r]
	}
	if _, err := d.media.ReadAt(p, int64(lba*bs)); err != nil {
		return fmt.Errorf("read blocks %d+%d: %w", lba, cnt, err)
	}
	for i := uint64(0); i < cnt; i++ {
		sec := p[i*bs : (i+1)*bs]
		if keys[i] == nil {
			if err := d.readTable(tableMBR, int64((lba+i)*bs), sec); err != nil {
				return fmt.Errorf("read shadow MBR block %d: %w", lba+i, err)
			}
			continue
		}
		keys[i].decryptSector(sec, lba+i)
	}
	return nil
}

// WriteBlocks encrypts and writes consecutive blocks starting at lba.
func (d *Drive) WriteBlocks(lba uint64, p []byte) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	cnt, err := d.checkIO(lba, len(p))
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	bs := uint64(d.st.BlockSize)
	ct := make([]byte, len(p))
	for i := uint64(0); i < cnt; i++ {
		b := lba + i
		if d.mbrShadowed(b) {
			return fmt.Errorf("write block %d (shadow MBR): %w", b, blockdev.ErrLocked)
		}
		r := d.st.rangeOf(b)
		rr := &d.st.Locking.Ranges[r]
		if rr.writeLocked() || d.live[r] == nil {
			return fmt.Errorf("write block %d (range %d): %w", b, r, blockdev.ErrLocked)
		}
		d.live[r].encryptSector(ct[i*bs:(i+1)*bs], p[i*bs:(i+1)*bs], b)
	}
	if _, err := d.media.WriteAt(ct, int64(lba*bs)); err != nil {
		return fmt.Errorf("write blocks %d+%d: %w", lba, cnt, err)
	}
	return nil
}

// Flush makes completed writes durable.
func (d *Drive) Flush() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	if err := d.media.Sync(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

type byteTable int

const (
	tableMBR byteTable = iota
	tableDataStore
)

func (d *Drive) tableGeom(t byteTable) (off, size int64, key *mediaKey, bitmap []byte) {
	if t == tableMBR {
		return d.st.mbrOffset(), d.st.MBRSize, d.mbrKey, d.st.MBRMap
	}
	return d.st.dsOffset(), d.st.DSSize, d.dsKey, d.st.DSMap
}

// readTable reads p from byte table t at offset off (bounds checked by caller).
// Pages never written since the last revert read as zeros.
func (d *Drive) readTable(t byteTable, off int64, p []byte) error {
	base, _, key, bm := d.tableGeom(t)
	page := make([]byte, tablePage)
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, po := pos/tablePage, pos%tablePage
		n := min(len(p)-done, int(tablePage-po))
		if bm[pg/8]&(1<<(pg%8)) == 0 {
			clear(p[done : done+n])
		} else {
			if _, err := d.media.ReadAt(page, base+pg*tablePage); err != nil {
				return err
			}
			key.c.Decrypt(page, page, uint64(pg))
			copy(p[done:done+n], page[po:])
		}
		done += n
	}
	zero(page)
	return nil
}

// writeTable writes p into byte table t at offset off and marks the pages
// written (the caller persists the state afterwards).
func (d *Drive) writeTable(t byteTable, off int64, p []byte) error {
	base, _, key, bm := d.tableGeom(t)
	page := make([]byte, tablePage)
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, po := pos/tablePage, pos%tablePage
		n := min(len(p)-done, int(tablePage-po))
		if n < tablePage {
			if err := d.readTable(t, pg*tablePage, page); err != nil {
				return err
			}
		}
		copy(page[po:], p[done:done+n])
		key.c.Encrypt(page, page, uint64(pg))
		if _, err := d.media.WriteAt(page, base+pg*tablePage); err != nil {
			return err
		}
		bm[pg/8] |= 1 << (pg % 8)
		done += n
	}
	zero(page)
	return d.media.Sync()
}
