package guest

import (
	"bytes"
	"errors"
	"github.com/sedboot/sedboot/internal/testenv"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseKernelArgs(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"console=ttyS0 panic=-1 quiet sedboot.test=smoke\n",
			map[string]string{"console": "ttyS0", "panic": "-1", "quiet": "", "sedboot.test": "smoke"}},
		{"a=b=c  a2=", map[string]string{"a": "b=c", "a2": ""}},
		{"x=1 x=2", map[string]string{"x": "2"}},
	}
	for _, tt := range tests {
		if got := ParseKernelArgs(tt.in); !maps.Equal(got, tt.want) {
			t.Errorf("ParseKernelArgs(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestKmsgMessage(t *testing.T) {
	for _, tc := range []struct{ rec, want string }{
		{"6,1234,5678901,-;nvme nvme0: new ctrl: NQN \"x\"\n", `nvme nvme0: new ctrl: NQN "x"`},
		{"3,9,10,c;first line \n SUBSYSTEM=block\n DEVICE=+block:nvme0n1\n", "first line"},
		{"no separator", ""},
		{"4,1,2,-;", ""},
	} {
		if got := kmsgMessage(tc.rec); got != tc.want {
			t.Errorf("kmsgMessage(%q) = %q, want %q", tc.rec, got, tc.want)
		}
	}
}

func TestDirectReadWrite(t *testing.T) {
	data := bytes.Repeat([]byte("sedboot guest "), 4096/14+1)[:4096]
	// The temporary directory may be on tmpfs, which refuses O_DIRECT;
	// the package's own directory is on the checkout's disk.
	var f string
	var err error
	for _, dir := range []string{t.TempDir(), ""} {
		if dir == "" {
			if dir, err = os.MkdirTemp(".", ".odirect-"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
		}
		f = filepath.Join(dir, "disk.img")
		if err = os.WriteFile(f, make([]byte, 1<<16), 0o600); err != nil {
			t.Fatal(err)
		}
		if err = DirectWrite(f, 8192, data); err == nil || !errors.Is(err, unix.EINVAL) {
			break
		}
	}
	testenv.Require(t, !errors.Is(err, unix.EINVAL), "a file system that accepts O_DIRECT (tried the temporary directory and the package directory)")
	if err != nil {
		t.Fatal(err)
	}
	got, err := DirectRead(f, 8192, len(data))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data read back differs")
	}
	if raw, _ := os.ReadFile(f); !bytes.Equal(raw[8192:8192+4096], data) {
		t.Fatal("the write did not land at its offset")
	}
	if _, err := DirectRead(filepath.Join(t.TempDir(), "missing"), 0, 512); err == nil {
		t.Fatal("read of a missing device succeeded")
	}
}
