package bootmedium

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// memDev is a byte slice standing in for a disk; cutAfter simulates a
// power cut: only the first cutAfter bytes of the next WriteAt reach it.
type memDev struct {
	b        []byte
	cutAfter int // -1: no cut
}

func newMemDev(size int) *memDev { return &memDev{b: make([]byte, size), cutAfter: -1} }

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(d.b)) {
		return 0, io.EOF
	}
	return copy(p, d.b[off:]), nil
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	n := len(p)
	if d.cutAfter >= 0 && d.cutAfter < n {
		n = d.cutAfter
		copy(d.b[off:], p[:n])
		return n, errors.New("power cut")
	}
	return copy(d.b[off:], p), nil
}

func (d *memDev) Sync() error { return nil }

func TestReadWriteAlternatesSlots(t *testing.T) {
	m := New(newMemDev(MinSize), "mem")
	if _, _, err := m.Read(); !errors.Is(err, ErrNotMedium) {
		t.Fatalf("fresh medium: got %v, want ErrNotMedium", err)
	}
	docs := []string{`{"v":1}`, `{"v":2}`, `{"v":3, "longer": true}`, `{}`}
	for i, d := range docs {
		seq, err := m.Write([]byte(d))
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if seq != uint64(i+1) {
			t.Fatalf("write %d: seq %d, want %d", i, seq, i+1)
		}
		got, gseq, err := m.Read()
		if err != nil || string(got) != d || gseq != seq {
			t.Fatalf("read after write %d: %q seq %d err %v", i, got, gseq, err)
		}
		slots, err := m.Inspect()
		if err != nil {
			t.Fatal(err)
		}
		if want := i % 2; !slots[want].Valid || slots[want].Sequence != seq {
			t.Fatalf("write %d landed in the wrong slot: %+v", i, slots)
		}
	}
}

func TestPowerCutDuringWriteKeepsOldOrNew(t *testing.T) {
	oldDoc := bytes.Repeat([]byte("old document "), 40)
	newDoc := bytes.Repeat([]byte("NEW document "), 45)
	total := headerSize + len(newDoc)
	for cut := 0; cut <= total; cut += 7 {
		dev := newMemDev(MinSize)
		m := New(dev, "mem")
		for i := 0; i < 3; i++ { // both slots hold older documents
			if _, err := m.Write(oldDoc); err != nil {
				t.Fatal(err)
			}
		}
		dev.cutAfter = cut
		_, werr := m.Write(newDoc)
		dev.cutAfter = -1
		got, _, err := m.Read()
		if err != nil {
			t.Fatalf("cut after %d bytes: read: %v", cut, err)
		}
		switch {
		case bytes.Equal(got, oldDoc):
			if werr == nil {
				t.Fatalf("cut after %d bytes: write reported success but old document read", cut)
			}
		case bytes.Equal(got, newDoc):
		default:
			t.Fatalf("cut after %d bytes: read a document that is neither old nor new (%d bytes)", cut, len(got))
		}
	}
}

func TestCorruptedNewestSlotFallsBack(t *testing.T) {
	dev := newMemDev(MinSize)
	m := New(dev, "mem")
	m.Write([]byte("first"))
	m.Write([]byte("second"))
	dev.b[SlotSize+headerSize] ^= 0xff // flip a payload byte of slot 1 ("second")
	got, seq, err := m.Read()
	if err != nil || string(got) != "first" || seq != 1 {
		t.Fatalf("got %q seq %d err %v, want first/1", got, seq, err)
	}
	slots, _ := m.Inspect()
	if slots[1].Valid || slots[1].Problem == "" {
		t.Fatalf("slot 1 should be reported corrupted: %+v", slots[1])
	}
	// The next write replaces the corrupted slot, not the good one.
	if _, err := m.Write([]byte("third")); err != nil {
		t.Fatal(err)
	}
	got, seq, _ = m.Read()
	if string(got) != "third" || seq != 2 {
		t.Fatalf("after rewrite: %q seq %d", got, seq)
	}
	if slots, _ := m.Inspect(); !slots[0].Valid || slots[0].Sequence != 1 {
		t.Fatalf("good slot was overwritten: %+v", slots)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		run  func() error
		want string
	}{
		{"document too large", func() error {
			_, err := New(newMemDev(MinSize), "mem").Write(make([]byte, MaxDocument+1))
			return err
		}, "exceeds the slot capacity"},
		{"medium too small", func() error {
			_, _, err := New(newMemDev(SlotSize), "mem").Read()
			return err
		}, "smaller than"},
		{"only magic, no valid document", func() error {
			d := newMemDev(MinSize)
			copy(d.b, magic[:])
			_, _, err := New(d, "mem").Read()
			if !errors.Is(err, ErrEmpty) {
				return fmt.Errorf("want ErrEmpty, got %v", err)
			}
			return err
		}, "holds no document"},
		{"future format version", func() error {
			d := newMemDev(MinSize)
			m := New(d, "mem")
			m.Write([]byte("x"))
			d.b[9] = 9
			s, _ := m.Inspect()
			return errors.New(s[0].Problem)
		}, "format version 9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestCreateAndOpenFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "medium.img")
	if err := Create(p, MinSize-1); err == nil {
		t.Fatal("Create accepted a size below the minimum")
	}
	if err := Create(p, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := Create(p, 4<<20); err == nil {
		t.Fatal("Create overwrote an existing medium")
	}
	m, f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := m.Write([]byte("persisted")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m2, f2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	got, _, err := m2.Read()
	if err != nil || string(got) != "persisted" {
		t.Fatalf("reopen: %q %v", got, err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("medium mode %v, want 0600", st.Mode().Perm())
	}
}

func TestFind(t *testing.T) {
	root := t.TempDir()
	sys, dev := filepath.Join(root, "sys"), filepath.Join(root, "dev")
	mk := func(name string, size int64, write bool) {
		t.Helper()
		os.MkdirAll(filepath.Join(sys, "class/block", name), 0o755)
		os.MkdirAll(dev, 0o755)
		os.WriteFile(filepath.Join(sys, "class/block", name, "size"), []byte(fmt.Sprintf("%d\n", size/512)), 0o644)
		p := filepath.Join(dev, name)
		if err := Create(p, size); err != nil {
			t.Fatal(err)
		}
		if write {
			m, f, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			m.Write([]byte("doc"))
			m.Write([]byte("doc2")) // slot 1 too
			f.Close()
		}
	}
	mk("nvme0n1", 4<<20, true)  // the medium
	mk("nvme1n1", 4<<20, false) // blank small disk
	mk("vda", 8<<20, true)      // second medium
	// A large data drive: listed in sysfs, never opened.
	os.MkdirAll(filepath.Join(sys, "class/block/nvme2n1"), 0o755)
	os.WriteFile(filepath.Join(sys, "class/block/nvme2n1/size"), []byte("419430400\n"), 0o644)
	got, err := Find(sys, dev)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dev, "nvme0n1"), filepath.Join(dev, "vda")}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Find = %v, want %v", got, want)
	}
}
