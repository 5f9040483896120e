package kernel

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sedboot/sedboot/internal/testenv"
)

// cachedKernel opens the kernel `make kernel` fetched; a missing kernel fails
// the test under CI and skips it elsewhere.
func cachedKernel(t *testing.T) *Kernel {
	t.Helper()
	dir, err := DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	k, err := Open(dir)
	testenv.Require(t, err == nil, "boot kernel "+Version+" in "+dir+" (run `make kernel`)")
	return k
}

func TestParseModinfo(t *testing.T) {
	tests := []struct {
		name string
		data string
		want map[string]string
	}{
		{"empty", "", map[string]string{}},
		{"typical", "license=GPL\x00depends=nvme-fabrics\x00name=nvme_tcp\x00vermagic=6.12 SMP\x00",
			map[string]string{"license": "GPL", "depends": "nvme-fabrics", "name": "nvme_tcp", "vermagic": "6.12 SMP"}},
		{"empty depends", "depends=\x00name=failover\x00", map[string]string{"depends": "", "name": "failover"}},
		{"repeated key keeps first", "alias=a\x00alias=b\x00", map[string]string{"alias": "a"}},
		{"padding and junk", "\x00\x00noequals\x00=novalue\x00name=x\x00\x00", map[string]string{"name": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := parseModinfo([]byte(tt.data))
			if len(got) != len(tt.want) {
				t.Fatalf("parseModinfo = %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestModuleFileName(t *testing.T) {
	tests := []struct {
		file, want string
		ok         bool
	}{
		{"nvme-tcp.ko.xz", "nvme_tcp", true},
		{"virtio_net.ko", "virtio_net", true},
		{"x.ko.zst", "x", true},
		{"modules.order", "", false},
		{".ko", "", false},
		{"nvme.ko.bz2", "", false},
	}
	for _, tt := range tests {
		got, ok := moduleFileName(tt.file)
		if got != tt.want || ok != tt.ok {
			t.Errorf("moduleFileName(%q) = %q, %v; want %q, %v", tt.file, got, ok, tt.want, tt.ok)
		}
	}
}

func TestOpenNotFetched(t *testing.T) {
	_, err := Open(t.TempDir())
	if !errors.Is(err, ErrNotFetched) {
		t.Fatalf("Open(empty dir) = %v, want ErrNotFetched", err)
	}
}

func TestModules(t *testing.T) {
	k := cachedKernel(t)
	ctx := context.Background()
	tests := []struct {
		name      string
		request   []string
		want      []string // every module, in some valid order
		wantError string
	}{
		{"nvme-tcp", []string{"nvme-tcp"}, []string{"nvme_fabrics", "nvme_tcp"}, ""},
		{"virtio-net chain", []string{"virtio_net"}, []string{"failover", "net_failover", "virtio_net"}, ""},
		{"both, deps named too, no duplicates", []string{"nvme_fabrics", "virtio-net", "nvme-tcp", "failover"},
			[]string{"nvme_fabrics", "failover", "net_failover", "virtio_net", "nvme_tcp"}, ""},
		{"built-ins need nothing", []string{"nvme-core", "nvme", "virtio_pci", "ext4", "nvme-auth", "nvme_keyring"}, nil, ""},
		{"unknown", []string{"virtio_net", "no_such_module"}, nil, `"no_such_module" is neither built into`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := k.Modules(ctx, tt.request...)
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("Modules(%v) error = %v, want one containing %q", tt.request, err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			pos := map[string]int{}
			for i, m := range got {
				names = append(names, m.Name)
				pos[m.Name] = i
			}
			if a, b := slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(tt.want)); !slices.Equal(a, b) {
				t.Fatalf("Modules(%v) = %v, want the set %v", tt.request, names, tt.want)
			}
			for _, m := range got {
				for _, d := range m.Depends {
					if p, ok := pos[d]; !ok || p > pos[m.Name] {
						t.Errorf("%s depends on %s, which is not loaded before it (order %v)", m.Name, d, names)
					}
				}
				if !strings.HasSuffix(m.RelPath, ".ko") || !strings.HasPrefix(m.RelPath, "kernel/") {
					t.Errorf("%s: RelPath %q, want kernel/....ko", m.Name, m.RelPath)
				}
				info, err := readModinfo(m.Path)
				if err != nil {
					t.Fatalf("%s: decompressed file unreadable: %v", m.Name, err)
				}
				if CanonicalName(info["name"]) != m.Name {
					t.Errorf("%s: file %s names itself %q", m.Name, m.Path, info["name"])
				}
			}
		})
	}
}

func TestBuiltin(t *testing.T) {
	k := cachedKernel(t)
	for name, want := range map[string]bool{
		"nvme-core": true, "nvme": true, "ext4": true, "virtio_pci": true,
		"nvme-tcp": false, "nvme_fabrics": false, "virtio_net": false, "nonexistent": false,
	} {
		if got := k.Builtin(name); got != want {
			t.Errorf("Builtin(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestUnpackChecksPackageName(t *testing.T) {
	dpkgDeb := testenv.LookPath(t, "dpkg-deb", "Debian's dpkg")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "DEBIAN"), 0o755); err != nil {
		t.Fatal(err)
	}
	control := "Package: not-a-kernel\nVersion: 1\nArchitecture: all\nMaintainer: test <t@example.invalid>\nDescription: test\n"
	if err := os.WriteFile(filepath.Join(tree, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, "x.deb")
	if out, err := exec.Command(dpkgDeb, "--root-owner-group", "-b", tree, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -b: %v: %s", err, out)
	}
	ctx := context.Background()
	if err := unpack(ctx, deb, Package, filepath.Join(dir, "out")); err == nil || !strings.Contains(err.Error(), `it is package "not-a-kernel"`) {
		t.Errorf("unpack(wrong package) = %v, want an error naming the package", err)
	}
	garbage := filepath.Join(dir, "garbage.deb")
	if err := os.WriteFile(garbage, []byte("not an ar archive"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unpack(ctx, garbage, Package, filepath.Join(dir, "out2")); err == nil || !strings.Contains(err.Error(), "not a readable Debian package") {
		t.Errorf("unpack(garbage) = %v, want a clear error", err)
	}
	if _, err := EnsureFromDeb(ctx, filepath.Join(dir, "cache"), deb); err == nil {
		t.Error("EnsureFromDeb(wrong package) succeeded")
	}
	if _, err := Open(filepath.Join(dir, "cache")); !errors.Is(err, ErrNotFetched) {
		t.Errorf("after a failed EnsureFromDeb, Open = %v, want ErrNotFetched", err)
	}
}

// A package apt has never heard of fails with advice, resolved from apt's
// local lists only (no update, so no network).
func TestDownloadUnknownPackage(t *testing.T) {
	testenv.LookPath(t, "apt-get", "a Debian host")
	_, err := download(context.Background(), t.TempDir(), "sedboot-no-such-package", false)
	if err == nil {
		t.Fatal("download of an unknown package succeeded")
	}
	for _, want := range []string{"sedboot-no-such-package", "apt-get update", "images/kernel/version.go", "snapshot.debian.org"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
