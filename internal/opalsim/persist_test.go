package opalsim

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPersistence(t *testing.T) {
	d, dir := testDrive(t)
	if _, err := Create(dir, Config{Blocks: 8}); err == nil {
		t.Fatal("Create over an existing drive succeeded")
	}
	psid := d.PSID()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// A leftover temp file from an interrupted state write is ignored.
	if err := os.WriteFile(filepath.Join(dir, ".state.json.tmp-123"), []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer d2.Close()
	if string(d2.PSID()) != string(psid) || d2.Identity().Serial != "SIM0001" || d2.NumBlocks() != 2048 || d2.BlockSize() != 512 {
		t.Fatalf("reopened drive differs: %+v", d2.Identity())
	}
	if _, err := Open(t.TempDir()); err == nil {
		t.Fatal("Open of an empty directory succeeded")
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, stateFile), []byte(`{"version":7}`), 0o600)
	if _, err := Open(bad); err == nil {
		t.Fatal("Open of a bad state file succeeded")
	}
	for _, cfg := range []Config{{}, {Blocks: 8, BlockSize: 1000}, {Blocks: 8, Serial: "this serial is far too long"}, {Blocks: 8, MBRSize: 100}} {
		if _, err := NewMemory(cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}
