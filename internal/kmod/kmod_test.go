package kmod

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// depFile is shaped like the modules.dep depmod writes for Debian's 6.12
// cloud kernel (paths relative to the module directory, deps deepest last).
const depFile = `kernel/drivers/nvme/host/nvme-fabrics.ko.xz:
kernel/drivers/nvme/host/nvme-tcp.ko.xz: kernel/drivers/nvme/host/nvme-fabrics.ko.xz
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/fs/configfs/configfs.ko.xz:
kernel/drivers/x/needs-builtin.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/x/needs-missing.ko: kernel/drivers/x/missing.ko
kernel/drivers/x/a.ko: kernel/drivers/x/b.ko
kernel/drivers/x/b.ko: kernel/drivers/x/a.ko
`

const builtinFile = `kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/virtio/virtio_pci.ko
`

func TestResolve(t *testing.T) {
	ix, err := ParseIndex("/lib/modules/k", strings.NewReader(depFile), strings.NewReader(builtinFile))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		names   []string
		params  map[string]string
		want    []Module
		wantErr string
	}{
		{
			name:  "dependencies first",
			names: []string{"nvme-tcp"},
			want: []Module{
				{Name: "nvme_fabrics", Path: "/lib/modules/k/kernel/drivers/nvme/host/nvme-fabrics.ko.xz"},
				{Name: "nvme_tcp", Path: "/lib/modules/k/kernel/drivers/nvme/host/nvme-tcp.ko.xz"},
			},
		},
		{
			name:   "chain, dedup and params on a dependency",
			names:  []string{"virtio_net", "net_failover", "failover"},
			params: map[string]string{"failover": "x=1", "virtio-net": "napi_tx=1"},
			want: []Module{
				{Name: "failover", Path: "/lib/modules/k/kernel/net/core/failover.ko.xz", Params: "x=1"},
				{Name: "net_failover", Path: "/lib/modules/k/kernel/drivers/net/net_failover.ko.xz"},
				{Name: "virtio_net", Path: "/lib/modules/k/kernel/drivers/net/virtio_net.ko.xz", Params: "napi_tx=1"},
			},
		},
		{
			name:  "built-in named directly and as a dependency",
			names: []string{"virtio_pci", "needs-builtin"},
			want: []Module{
				{Name: "virtio_pci", BuiltIn: true},
				{Name: "nvme_core", BuiltIn: true},
				{Name: "needs_builtin", Path: "/lib/modules/k/kernel/drivers/x/needs-builtin.ko"},
			},
		},
		{name: "unknown module", names: []string{"nosuch"}, wantErr: "module nosuch is not in /lib/modules/k/modules.dep"},
		{name: "missing dependency", names: []string{"needs_missing"}, wantErr: "module missing (needed by needs_missing)"},
		{name: "cycle", names: []string{"a"}, wantErr: "dependency cycle in /lib/modules/k/modules.dep: a -> b -> a"},
		{name: "bad name", names: []string{"../etc"}, wantErr: `invalid module name "../etc"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ix.Resolve(tc.names, tc.params)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve(%v) error = %v, want it to contain %q", tc.names, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Resolve(%v) =\n %+v\nwant\n %+v", tc.names, got, tc.want)
			}
		})
	}
}

func TestParseIndexErrors(t *testing.T) {
	for _, tc := range []struct{ dep, want string }{
		{"kernel/a.ko kernel/b.ko\n", `line 1: want "path: deps...`},
		{"kernel/a.ko:\nkernel/readme.txt:\n", `line 2: "kernel/readme.txt" is not a .ko file`},
		{"kernel/a.ko: kernel/b.o\n", `line 1: dependency "kernel/b.o" is not a .ko file`},
	} {
		_, err := ParseIndex("/m", strings.NewReader(tc.dep), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseIndex(%q) error = %v, want %q", tc.dep, err, tc.want)
		}
	}
}

func TestOpenIndex(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenIndex(dir); err == nil || !strings.Contains(err.Error(), "run depmod") {
		t.Fatalf("OpenIndex without modules.dep: error = %v, want a hint to run depmod", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(depFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtinFile), 0o644); err != nil {
		t.Fatal(err)
	}
	ix, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := ix.Path("nvme-tcp"); !ok || p != filepath.Join(dir, "kernel/drivers/nvme/host/nvme-tcp.ko.xz") {
		t.Errorf("Path(nvme-tcp) = %q, %v", p, ok)
	}
	if !ix.BuiltIn("nvme-core") || ix.BuiltIn("nvme_tcp") {
		t.Error("BuiltIn: nvme-core should be built in, nvme_tcp not")
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/nvme/host/nvme-tcp.ko.xz": "nvme_tcp",
		"virtio_net.ko":      "virtio_net",
		"/x/y/zz-top.ko.zst": "zz_top",
		"a.ko.gz":            "a",
		"kernel/readme":      "",
		".ko":                "",
		"a.ko.bz2":           "",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParamsFromCmdline(t *testing.T) {
	tests := []struct {
		cmdline string
		want    map[string]string
	}{
		{"console=ttyS0 quiet", map[string]string{}},
		{"nvme_core.multipath=N nvme-tcp.so_priority=3 nvme_core.io_timeout=60",
			map[string]string{"nvme_core": "multipath=N io_timeout=60", "nvme_tcp": "so_priority=3"}},
		{`virtio_net.flag mod.p="a b c" root=UUID=x -- init.arg=1`,
			map[string]string{"virtio_net": "flag", "mod": `p="a b c"`}},
		{"bad/mod.x=1 .x=2 m.=3", map[string]string{}},
	}
	for _, tc := range tests {
		if got := ParamsFromCmdline(tc.cmdline); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParamsFromCmdline(%q) = %v, want %v", tc.cmdline, got, tc.want)
		}
	}
}

// fakeModule is a payload shaped like an ELF module; only its bytes matter.
func fakeModule(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b[64:]); err != nil {
		t.Fatal(err)
	}
	copy(b, "\x7fELF\x02\x01\x01")
	return b
}

func TestDecompress(t *testing.T) {
	img := fakeModule(t, 300<<10)
	compressors := map[string]func(*bytes.Buffer) error{
		compXZ: func(buf *bytes.Buffer) error {
			w, err := xz.NewWriter(buf)
			if err != nil {
				return err
			}
			if _, err := w.Write(img); err != nil {
				return err
			}
			return w.Close()
		},
		compZstd: func(buf *bytes.Buffer) error {
			w, err := zstd.NewWriter(buf)
			if err != nil {
				return err
			}
			if _, err := w.Write(img); err != nil {
				return err
			}
			return w.Close()
		},
		compGzip: func(buf *bytes.Buffer) error {
			w := gzip.NewWriter(buf)
			if _, err := w.Write(img); err != nil {
				return err
			}
			return w.Close()
		},
	}
	for format, compress := range compressors {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			if err := compress(&buf); err != nil {
				t.Fatal(err)
			}
			if got := detect(buf.Bytes()[:6]); got != format {
				t.Fatalf("detect = %q, want %q", got, format)
			}
			got, err := decompress(bytes.NewReader(buf.Bytes()), format, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, img) {
				t.Fatalf("decompressed %d bytes, differ from the %d-byte original", len(got), len(img))
			}
			if _, err := decompress(bytes.NewReader(buf.Bytes()), format, 100<<10); err == nil || !strings.Contains(err.Error(), "larger than") {
				t.Errorf("decompress over the limit: error = %v, want a size error", err)
			}
			corrupt := append([]byte(nil), buf.Bytes()[:buf.Len()/2]...)
			if _, err := decompress(bytes.NewReader(corrupt), format, 1<<20); err == nil {
				t.Error("decompress of a truncated stream succeeded")
			}
		})
	}
	if got := detect(img); got != "" {
		t.Errorf("detect(ELF) = %q, want plain", got)
	}
}

// TestLoadSkipsPresent checks that modules the kernel already has (live in
// /sys/module, or built in) are reported without opening their file.
func TestLoadSkipsPresent(t *testing.T) {
	sys := t.TempDir()
	for _, d := range []string{"live_mod", "builtin_mod"} {
		if err := os.Mkdir(filepath.Join(sys, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(sys, "live_mod", "initstate"), []byte("live\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	l := &Loader{SysModule: sys}
	res, err := l.Load(context.Background(), []Module{
		{Path: "/nonexistent/live-mod.ko.xz"},
		{Name: "builtin_mod", Path: "/nonexistent/builtin_mod.ko"},
		{Name: "nvme_core", BuiltIn: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []State{AlreadyLoaded, BuiltIn, BuiltIn}
	for i, r := range res {
		if r.State != want[i] {
			t.Errorf("module %s: state %s, want %s", r.Name, r.State, want[i])
		}
	}
	if res[0].Name != "live_mod" {
		t.Errorf("name derived from path = %q, want live_mod", res[0].Name)
	}
}

// TestLoadErrorsNameModuleAndFile runs the real syscalls on files the
// kernel must refuse and checks the error says which module and file.
func TestLoadErrorsNameModuleAndFile(t *testing.T) {
	dir := t.TempDir()
	bogus := filepath.Join(dir, "sedboot-bogus.ko")
	if err := os.WriteFile(bogus, []byte("this is not an ELF module"), 0o644); err != nil {
		t.Fatal(err)
	}
	var xzBuf bytes.Buffer
	w, err := xz.NewWriter(&xzBuf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("still not an ELF module")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	bogusXZ := filepath.Join(dir, "sedboot-bogus2.ko.xz")
	if err := os.WriteFile(bogusXZ, xzBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &Loader{SysModule: dir}
	for _, tc := range []struct{ path, name string }{
		{bogus, "sedboot_bogus"},
		{bogusXZ, "sedboot_bogus2"},
		{filepath.Join(dir, "absent.ko"), "absent"},
	} {
		res, err := l.Load(context.Background(), []Module{{Path: tc.path}})
		if err == nil {
			t.Fatalf("Load(%s) succeeded: %+v", tc.path, res)
		}
		var me *ModuleError
		if !errors.As(err, &me) || me.Name != tc.name || me.Path != tc.path {
			t.Fatalf("Load(%s) error = %#v, want a *ModuleError for %s", tc.path, err, tc.name)
		}
		if !strings.Contains(err.Error(), tc.name) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("error %q does not name module %s and file %s", err, tc.name, tc.path)
		}
		switch {
		case strings.HasPrefix(filepath.Base(tc.path), "absent"):
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("missing file: error %v, want not-exist", err)
			}
		case errors.Is(err, ErrNoModuleSupport):
			t.Logf("this kernel has no module support: %v", err)
		case errors.Is(err, unix.ENOEXEC), errors.Is(err, unix.EPERM), errors.Is(err, unix.EINVAL):
			t.Logf("kernel refused as expected: %v", err)
		default:
			t.Errorf("Load(%s): unexpected error %v", tc.path, err)
		}
	}
}

func TestLoadHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l := &Loader{SysModule: t.TempDir()}
	res, err := l.Load(ctx, []Module{{Name: "nvme_core", BuiltIn: true}})
	if !errors.Is(err, context.Canceled) || len(res) != 0 {
		t.Fatalf("Load with a cancelled context = %v, %v; want context.Canceled and no results", res, err)
	}
}

// TestRealModuleTree resolves and decompresses real modules when
// SEDBOOT_TEST_MODULES_DIR names an unpacked kernel module directory (for
// example Debian's 6.12 cloud kernel after depmod -b); loading them is left
// to the QEMU boot tests.
func TestRealModuleTree(t *testing.T) {
	dir := os.Getenv("SEDBOOT_TEST_MODULES_DIR")
	if dir == "" {
		t.Skip("SEDBOOT_TEST_MODULES_DIR not set")
	}
	ix, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := ix.Resolve([]string{"nvme-tcp", "virtio_net", "nvme-core"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		t.Logf("%s builtin=%v %s", m.Name, m.BuiltIn, m.Path)
		if m.BuiltIn {
			continue
		}
		f, err := os.Open(m.Path)
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 6)
		if _, err := f.ReadAt(head, 0); err != nil {
			t.Fatal(err)
		}
		img := head
		if c := detect(head); c != "" {
			if img, err = decompress(f, c, 256<<20); err != nil {
				t.Fatalf("%s: %v", m.Path, err)
			}
		}
		f.Close()
		if !bytes.HasPrefix(img, []byte("\x7fELF")) {
			t.Errorf("%s: decompressed image is not ELF", m.Path)
		}
	}
}

// BenchmarkDecompressXZ measures the userspace fallback on a module-sized
// image (about nvme-tcp's 115 KiB), half random and half zero, compressed as
// the kernel's build does.
func BenchmarkDecompressXZ(b *testing.B) {
	img := make([]byte, 115<<10)
	if _, err := rand.Read(img[:len(img)/2]); err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	// As the kernel's build compresses modules: --check=crc32 --lzma2=dict=1MiB.
	w, err := xz.WriterConfig{DictCap: 1 << 20, CheckSum: xz.CRC32}.NewWriter(&buf)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.Write(img); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := decompress(bytes.NewReader(buf.Bytes()), compXZ, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUserspaceDecompressError: with UserspaceDecompress a corrupt
// compressed module fails in the decompress step, naming the file.
func TestUserspaceDecompressError(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "broken.ko.xz")
	if err := os.WriteFile(p, append(append([]byte(nil), magicXZ...), "garbage after the magic"...), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &Loader{SysModule: dir, UserspaceDecompress: true}
	_, err := l.Load(context.Background(), []Module{{Path: p}})
	var me *ModuleError
	if !errors.As(err, &me) || me.Op != "decompress" || me.Name != "broken" || !strings.Contains(err.Error(), p) {
		t.Fatalf("Load(corrupt xz) = %v, want a decompress error for broken naming %s", err, p)
	}
}
