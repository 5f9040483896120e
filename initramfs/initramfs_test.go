package initramfs

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"

	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/initramfs/modload"
	"github.com/sedboot/sedboot/internal/testenv"
)

func TestSpecValidate(t *testing.T) {
	mod := []kernel.Module{{Name: "a", RelPath: "kernel/a.ko", Path: "/x"}}
	tests := []struct {
		name    string
		spec    Spec
		wantErr string
	}{
		{"init", Spec{Init: "./x"}, ""},
		{"u-root", Spec{URoot: &URoot{Uinit: "agent"}, Programs: []string{"./cmd/agent"}}, ""},
		{"no init", Spec{}, "no init"},
		{"two inits", Spec{Init: "./x", URoot: &URoot{Uinit: "y"}}, "choose one"},
		{"u-root without uinit", Spec{URoot: &URoot{}}, "Uinit is empty"},
		{"modules without version", Spec{Init: "./x", Modules: mod}, "KernelVersion"},
		{"same program name twice", Spec{Init: "./x", Programs: []string{"a/tool", "b/tool"}}, "/bin/tool"},
		{"file outside the image", Spec{Init: "./x", Files: []File{{Path: "../etc/x", Data: []byte{}}}}, "not inside"},
		{"file without content", Spec{Init: "./x", Files: []File{{Path: "etc/x"}}}, "neither Source nor Data"},
		{"level", Spec{Init: "./x", Level: 23}, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("validate = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// readImage decompresses and parses an image.
func readImage(t *testing.T, path string) (map[string]cpio.Record, []string) {
	t.Helper()
	raw, err := exec.Command("zstd", "-dc", path).Output()
	if err != nil {
		t.Fatalf("zstd -dc %s: %v", path, err)
	}
	recs, err := cpio.ReadAllRecords(cpio.EOFReader{RecordReader: cpio.Newc.Reader(bytes.NewReader(raw))})
	if err != nil {
		t.Fatalf("parse cpio: %v", err)
	}
	byName := map[string]cpio.Record{}
	var order []string
	for _, r := range recs {
		if _, dup := byName[r.Name]; dup {
			t.Errorf("%s appears twice", r.Name)
		}
		byName[r.Name] = r
		order = append(order, r.Name)
	}
	return byName, order
}

func content(t *testing.T, r cpio.Record) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBuild(t *testing.T) {
	testenv.LookPath(t, "zstd", "scripts/prereqs.sh")
	testenv.LookPath(t, "go", "the Go toolchain")
	dir := t.TempDir()
	modA := filepath.Join(dir, "a.ko")
	modB := filepath.Join(dir, "b.ko")
	os.WriteFile(modA, []byte("module a"), 0o600)
	os.WriteFile(modB, []byte("module b"), 0o600)
	host := filepath.Join(dir, "host.txt")
	os.WriteFile(host, []byte("from the host"), 0o640)
	spec := Spec{
		Init:     "./testdata/hello",
		Programs: []string{"./testdata/tool"},
		Modules: []kernel.Module{
			{Name: "a", RelPath: "kernel/x/a.ko", Path: modA},
			{Name: "b", RelPath: "kernel/y/b.ko", Path: modB, Depends: []string{"a"}},
		},
		KernelVersion: "6.12-test",
		Files: []File{
			{Path: "etc/sedboot/scenario", Data: []byte("smoke\n")},
			{Path: "/etc/host.txt", Source: host},
			{Path: "etc/secret", Data: []byte("x"), Mode: 0o600},
			{Path: "bin/hello-too", Link: "/init"},
		},
		CacheDir: filepath.Join(dir, "cache"),
		Level:    3,
	}
	img, err := Build(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if img.Cached || img.Size <= 0 || img.RawSize <= img.Size {
		t.Errorf("image = %+v, want a fresh, compressed build", img)
	}
	recs, order := readImage(t, img.Path)

	init, ok := recs["init"]
	if !ok || init.Mode&cpio.S_IFMT != cpio.S_IFREG || init.Mode&0o777 != 0o755 || !strings.HasPrefix(content(t, init), "\x7fELF") {
		t.Errorf("/init missing or not an executable ELF file: %+v", init.Info)
	}
	if _, ok := recs["bin/tool"]; !ok {
		t.Error("/bin/tool missing")
	}
	if r, ok := recs["bin/hello-too"]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK || content(t, r) != "/init" {
		t.Errorf("/bin/hello-too: want a symlink to /init, got %+v", r.Info)
	}
	if r, ok := recs["dev/console"]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFCHR || r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("/dev/console missing or wrong: %+v", r.Info)
	}
	for name, want := range map[string]string{
		"etc/sedboot/scenario":                "smoke\n",
		"etc/host.txt":                        "from the host",
		"lib/modules/6.12-test/kernel/x/a.ko": "module a",
		"lib/modules/6.12-test/kernel/y/b.ko": "module b",
		"lib/modules/6.12-test/modules.dep":   "kernel/x/a.ko:\nkernel/y/b.ko: kernel/x/a.ko\n",
		modload.OrderFile:                     "/lib/modules/6.12-test/kernel/x/a.ko\n/lib/modules/6.12-test/kernel/y/b.ko\n",
	} {
		r, ok := recs[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if got := content(t, r); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if m := recs["etc/host.txt"].Mode & 0o777; m != 0o640 {
		t.Errorf("host file mode %o, want 0640 (its source's)", m)
	}
	if m := recs["etc/secret"].Mode & 0o777; m != 0o600 {
		t.Errorf("etc/secret mode %o, want 0600", m)
	}
	// The kernel unpacks in order and creates no parents: every
	// directory must come before what is in it.
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	for i, n := range order {
		if d := filepath.Dir(n); d != "." {
			if p, ok := pos[d]; !ok || p > i {
				t.Errorf("%s comes before its directory %s", n, d)
			}
		}
		if r := recs[n]; r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s is not reproducible: %+v", n, r.Info)
		}
	}

	again, err := Build(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Path != img.Path {
		t.Errorf("rebuild of the same spec = %+v, want the cached %s", again, img.Path)
	}
	spec.Files[0].Data = []byte("other\n")
	other, err := Build(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if other.Cached || other.Path == img.Path {
		t.Errorf("a changed file gave the cached image %s", other.Path)
	}
}

func TestBuildReportsCompileErrors(t *testing.T) {
	testenv.LookPath(t, "go", "the Go toolchain")
	_, err := Build(context.Background(), Spec{Init: "./testdata/no-such-program", CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "no-such-program") {
		t.Fatalf("Build = %v, want the go build failure naming the package", err)
	}
}

func TestBuildRejectsModuleOutOfOrder(t *testing.T) {
	testenv.LookPath(t, "go", "the Go toolchain")
	_, err := Build(context.Background(), Spec{
		Init:          "./testdata/hello",
		Modules:       []kernel.Module{{Name: "b", RelPath: "kernel/b.ko", Path: "/nonexistent", Depends: []string{"a"}}},
		KernelVersion: "v",
		CacheDir:      t.TempDir(),
	})
	if err == nil || !strings.Contains(err.Error(), "needs a") {
		t.Fatalf("Build = %v, want an error about the missing dependency", err)
	}
}

// u-root's init as /init running our program: the busybox is cached in
// build/initramfs (the first run builds it, tens of seconds).
func TestBuildURoot(t *testing.T) {
	testenv.LookPath(t, "zstd", "scripts/prereqs.sh")
	testenv.LookPath(t, "go", "the Go toolchain")
	spec := Spec{
		URoot:    &URoot{Uinit: "tool", UinitArgs: []string{"-v"}},
		Programs: []string{"./testdata/tool"},
		Level:    3,
	}
	img, err := Build(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	recs, _ := readImage(t, img.Path)
	for name, target := range map[string]string{
		"init":       "bbin/init",
		"bbin/init":  "bb",
		"bin/uinit":  "tool",
		"bbin/uinit": "",
	} {
		r, ok := recs[name]
		if target == "" {
			if ok {
				t.Errorf("%s present; u-root's init would run it before /bin/uinit", name)
			}
			continue
		}
		if !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK || content(t, r) != target {
			t.Errorf("%s: want a symlink to %q, got %+v", name, target, r.Info)
		}
	}
	if r, ok := recs["bbin/bb"]; !ok || !strings.HasPrefix(content(t, r), "\x7fELF") {
		t.Error("bbin/bb (the busybox) missing")
	}
	if r, ok := recs["etc/uinit.flags"]; !ok || !strings.Contains(content(t, r), "-v") {
		t.Error("etc/uinit.flags missing the uinit arguments")
	}
	if _, ok := recs["bin/tool"]; !ok {
		t.Error("bin/tool missing")
	}
}
