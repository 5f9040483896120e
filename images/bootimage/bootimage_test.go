package bootimage

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	data := []byte("not a kernel, but bytes all the same")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := copyFile(src, filepath.Join(dir, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if f.Name != "vmlinuz" || f.Size != int64(len(data)) || f.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("got %+v", f)
	}
	got, err := os.ReadFile(filepath.Join(dir, "vmlinuz"))
	if err != nil || string(got) != string(data) {
		t.Fatalf("copy: %q, %v", got, err)
	}
	if _, err := copyFile(filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Fatal("copy of a missing file succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Fatalf("left files behind: %v", entries)
	}
}
