package sed

import (
	"context"
	"errors"
	"fmt"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/stream"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
)

const (
	// maxAtom is the largest byte string go-tcg-storage's stream.Bytes
	// encodes (it panics on 2048 bytes or more).
	maxAtom = 2047
	// maxReadChunk bounds one Get on the DataStore so its response stays
	// well inside any transport's transfer limit.
	maxReadChunk = 16 << 10
	// packetOverhead is what ComPacket, Packet and SubPacket headers and a
	// method call's framing tokens take besides the data.
	packetOverhead = 128
)

// dataStoreInfo returns the DataStore table's size in bytes and its
// mandatory write granularity (Table table row of the DataStore, columns
// Rows and MandatoryWriteGranularity; readable by Anybody).
func (s *session) dataStoreInfo() (size, gran int, err error) {
	vals, err := s.getCells(uidTableDataStore, colTableRows, colTableMandatoryWriteGranularity)
	if err != nil {
		return 0, 0, fmt.Errorf("read DataStore table descriptor: %w", err)
	}
	rows, ok := vals[colTableRows].(uint)
	if !ok {
		return 0, 0, fmt.Errorf("%w: DataStore descriptor has no Rows column", ErrMalformedResponse)
	}
	g, _ := vals[colTableMandatoryWriteGranularity].(uint)
	if g == 0 {
		g = 1
	}
	return int(rows), int(g), nil
}

// chunks returns the largest read and write transfers the negotiated
// communication properties allow.
func (s *session) chunks() (read, write int) {
	hp, tp := s.c.cs.HostProperties, s.c.cs.TPerProperties
	read = min(int(hp.MaxComPacketSize)-packetOverhead, int(hp.MaxIndTokenSize)-8, maxReadChunk)
	if tp.MaxResponseComPacketSize != nil {
		read = min(read, int(*tp.MaxResponseComPacketSize)-packetOverhead)
	}
	write = min(int(tp.MaxComPacketSize)-packetOverhead, int(tp.MaxIndTokenSize)-8, maxAtom)
	return max(read, 64), max(write, 64)
}

func checkRange(off, n, size int) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("DataStore offset %d length %d: negative", off, n)
	}
	if off > size || n > size-off {
		return fmt.Errorf("%w: %d bytes at offset %d, the table holds %d bytes", ErrOutOfRange, n, off, size)
	}
	return nil
}

// readDataStore reads n bytes at off in chunks.
func (s *session) readDataStore(off, n int) ([]byte, error) {
	size, _, err := s.dataStoreInfo()
	if err != nil {
		return nil, err
	}
	if err := checkRange(off, n, size); err != nil {
		return nil, err
	}
	chunk, _ := s.chunks()
	out := make([]byte, 0, n)
	for done := 0; done < n; {
		l := min(chunk, n-done)
		p, err := s.getBytesAt(off+done, l)
		if err != nil {
			return nil, fmt.Errorf("read DataStore bytes %d..%d: %w", off+done, off+done+l-1, err)
		}
		out = append(out, p...)
		done += l
	}
	return out, nil
}

// getBytesAt runs Get on the DataStore table for rows off..off+n-1.
func (s *session) getBytesAt(off, n int) ([]byte, error) {
	mc := s.call(core.InvokingID(uidDataStoreTable), table.MethodIDGet)
	mc.StartList()
	mc.StartOptionalParameter(table.CellBlock_StartRow, "startRow")
	mc.UInt(uint(off))
	mc.EndOptionalParameter()
	mc.StartOptionalParameter(table.CellBlock_EndRow, "endRow")
	mc.UInt(uint(off + n - 1))
	mc.EndOptionalParameter()
	mc.EndList()
	res, err := s.exec(mc)
	if err != nil {
		return nil, err
	}
	if len(res) < 1 {
		return nil, fmt.Errorf("%w: empty Get result", ErrMalformedResponse)
	}
	l, ok := res[0].(stream.List)
	if !ok || len(l) != 1 {
		return nil, fmt.Errorf("%w: byte table Get result is not a one-element list", ErrMalformedResponse)
	}
	p, ok := l[0].([]byte)
	if !ok || len(p) != n {
		return nil, fmt.Errorf("%w: byte table Get returned %T of length %d, want %d bytes", ErrMalformedResponse, l[0], len(p), n)
	}
	return p, nil
}

// writeDataStore writes data at off in chunks, aligned to the table's
// mandatory write granularity (unaligned edges are read, merged and
// written back).
func (s *session) writeDataStore(off int, data []byte) error {
	size, gran, err := s.dataStoreInfo()
	if err != nil {
		return err
	}
	if err := checkRange(off, len(data), size); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if start, end := off/gran*gran, (off+len(data)+gran-1)/gran*gran; start != off || end != off+len(data) {
		if end > size {
			return fmt.Errorf("%w: write granularity %d extends %d bytes at %d past the table", ErrOutOfRange, gran, len(data), off)
		}
		merged, err := s.readDataStore(start, end-start)
		if err != nil {
			return err
		}
		copy(merged[off-start:], data)
		off, data = start, merged
	}
	_, chunk := s.chunks()
	chunk = max(chunk/gran*gran, gran)
	for done := 0; done < len(data); {
		l := min(chunk, len(data)-done)
		mc := s.call(core.InvokingID(uidDataStoreTable), table.MethodIDSet)
		mc.StartOptionalParameter(0, "Where")
		mc.UInt(uint(off + done))
		mc.EndOptionalParameter()
		mc.StartOptionalParameter(1, "Values")
		mc.Bytes(data[done : done+l])
		mc.EndOptionalParameter()
		if _, err := s.exec(mc); err != nil {
			return fmt.Errorf("write DataStore bytes %d..%d: %w", off+done, off+done+l-1, err)
		}
		done += l
	}
	return nil
}

// DataStoreSize returns the DataStore table's size in bytes (readable by
// Anybody once the Locking SP is active).
func (d *Drive) DataStoreSize(ctx context.Context) (int, error) {
	var size int
	err := d.run(ctx, "read DataStore size of", func() (err error) {
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		s, err := c.open(core.LockingSP, false)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		size, _, err = s.dataStoreInfo()
		return err
	})
	return size, err
}

// ReadDataStore reads n bytes at offset off of the DataStore table, as
// Admin1 with admin1, or as Anybody when admin1 is nil (which the drive
// allows only after ShareDataStore).
func (d *Drive) ReadDataStore(ctx context.Context, admin1 []byte, off, n int) ([]byte, error) {
	var out []byte
	err := d.run(ctx, "read DataStore of", func() (err error) {
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		s, err := c.dataStoreSession(admin1, false)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		out, err = s.readDataStore(off, n)
		return err
	})
	return out, err
}

// WriteDataStore writes data at offset off of the DataStore table as
// Admin1. Offsets below DataStoreUserOffset hold the key verifier.
func (d *Drive) WriteDataStore(ctx context.Context, admin1 []byte, off int, data []byte) error {
	return d.run(ctx, "write DataStore of", func() (err error) {
		if err := checkCredential("Admin1 credential", admin1); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		s, err := c.dataStoreSession(admin1, true)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		return s.writeDataStore(off, data)
	})
}

// dataStoreSession opens a Locking SP session as Admin1 (checked against
// the key verifier) or, for a nil credential, as Anybody.
func (c *conn) dataStoreSession(admin1 []byte, write bool) (*session, error) {
	if admin1 == nil {
		return c.open(core.LockingSP, write)
	}
	if err := checkCredential("Admin1 credential", admin1); err != nil {
		return nil, err
	}
	s, _, _, err := c.authSession(Admin1, admin1, write)
	return s, err
}

// ShareDataStore makes the DataStore readable by Anybody by setting the
// BooleanExpr of ACE_DataStore_Get_All to Anybody (Opal lets Admins
// personalize it). It reports false, without error, when the drive
// refuses the change; the key verifier is then readable by Admin1 only
// and callers keep a copy elsewhere (UseVerifier).
func (d *Drive) ShareDataStore(ctx context.Context, admin1 []byte) (bool, error) {
	var shared bool
	err := d.run(ctx, "share DataStore of", func() (err error) {
		if err := checkCredential("Admin1 credential", admin1); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		s, _, _, err := c.authSession(Admin1, admin1, true)
		if err != nil {
			return err
		}
		shared, err = s.shareDataStore()
		if cerr := s.close(); err == nil && cerr != nil {
			return cerr
		}
		if err != nil || !shared {
			return err
		}
		shared, err = c.dataStorePublic()
		return err
	})
	return shared, err
}

// shareDataStore sets ACE_DataStore_Get_All's BooleanExpr to Anybody:
// Set(Values = [BooleanExpr = [ {Authority_object_ref: Anybody} ]]). The
// element's name is a half-UID (a byte string), which core.MethodCall
// cannot encode, so the call goes through execRaw.
func (s *session) shareDataStore() (bool, error) {
	payload := rawCall(core.InvokingID(uidACEDataStoreGetAll), table.MethodIDSet, func(t *tokens) {
		t.tok(stream.StartName)
		t.uint(1) // Values
		t.tok(stream.StartList)
		t.tok(stream.StartName)
		t.uint(colACEBooleanExpr)
		t.tok(stream.StartList)
		t.tok(stream.StartName)
		t.bytes(halfUIDAuthorityObjectRef)
		t.bytes(core.AuthorityAnybody[:])
		t.tok(stream.EndName)
		t.tok(stream.EndList)
		t.tok(stream.EndName)
		t.tok(stream.EndList)
		t.tok(stream.EndName)
	})
	if err := s.c.ctx.Err(); err != nil {
		return false, err
	}
	_, err := s.execRaw(payload)
	if err == nil {
		return true, nil
	}
	if isMethodStatus(err) {
		s.c.d.log.Info("drive refuses to share its DataStore with Anybody", "err", err)
		return false, nil
	}
	return false, fmt.Errorf("set ACE_DataStore_Get_All: %w", err)
}

// dataStorePublic checks that an Anybody session can read the DataStore.
func (c *conn) dataStorePublic() (ok bool, err error) {
	s, err := c.open(core.LockingSP, false)
	if err != nil {
		return false, err
	}
	defer s.closeAfter(&err)
	if _, err := s.getBytesAt(0, 1); err != nil {
		if errors.Is(err, ErrNotAuthorized) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// isMethodStatus reports whether err is a method status the drive
// returned (as opposed to a transport or decoding failure).
func isMethodStatus(err error) bool {
	for _, e := range core.MethodStatusCodeMap {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
