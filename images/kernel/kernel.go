// Package kernel fetches the pinned Debian boot kernel (see Package and
// Version), caches it in a build directory and picks the loadable modules a
// boot image needs, decompressed and in load order.
//
// Fetching needs the network and Debian's apt; it is done once, by
// `make kernel` (or Ensure), before any test runs. Tests only Open the cache.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sedboot/sedboot/images/filelock"
)

// ErrNotFetched is returned by Open when the kernel is not in the cache yet.
var ErrNotFetched = errors.New("boot kernel not fetched (run `make kernel`)")

// completeMarker is written last into a version's cache directory; a
// directory without it is a leftover of an interrupted fetch.
const completeMarker = "complete"

// Kernel is an unpacked kernel package in the cache.
type Kernel struct {
	// Version is the kernel release (uname -r).
	Version string
	// VmlinuzPath is the kernel as Debian ships it (a bzImage).
	VmlinuzPath string
	// VmlinuxPath is the same kernel uncompressed (an ELF with a PVH entry
	// point), extracted by Open; empty when that was not possible. Boot
	// BootImage(), which picks it when there.
	VmlinuxPath string
	// Root is the unpacked package (boot/, lib/modules/<Version>/ ...).
	Root string

	dir      string            // cacheDir/<Version>
	shipped  map[string]string // module name -> path under lib/modules/<Version>, as shipped (.ko.xz)
	builtins map[string]bool   // module names built into the kernel
}

// DefaultCacheDir returns build/kernel under the root of the sedboot source
// tree that contains the working directory, which is where `make kernel`
// puts the kernel.
func DefaultCacheDir() (string, error) {
	root, err := SourceRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "build", "kernel"), nil
}

// SourceRoot returns the root of the sedboot source tree (the directory whose
// go.mod declares module github.com/sedboot/sedboot) that contains the
// working directory.
func SourceRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find sedboot source root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(data) == "github.com/sedboot/sedboot" {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("find sedboot source root: no go.mod of github.com/sedboot/sedboot above %s", wd)
		}
	}
}

func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// Open returns the kernel cached in cacheDir by an earlier Ensure. It never
// touches the network; it returns an error wrapping ErrNotFetched when the
// kernel is not there. The first Open of a cache extracts the uncompressed
// kernel (a second or two; see BootImage); if that fails, the kernel is
// still usable through its bzImage and Open logs why.
func Open(cacheDir string) (*Kernel, error) {
	dir := filepath.Join(cacheDir, Version)
	if _, err := os.Stat(filepath.Join(dir, completeMarker)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open kernel %s in %s: %w", Version, cacheDir, ErrNotFetched)
		}
		return nil, fmt.Errorf("open kernel %s: %w", Version, err)
	}
	k := &Kernel{
		Version:     Version,
		Root:        filepath.Join(dir, "root"),
		VmlinuzPath: filepath.Join(dir, "root", "boot", "vmlinuz-"+Version),
		dir:         dir,
	}
	if _, err := os.Stat(k.VmlinuzPath); err != nil {
		return nil, fmt.Errorf("open kernel %s: cache %s is damaged (remove it and run `make kernel`): %w", Version, dir, err)
	}
	if err := k.index(); err != nil {
		return nil, fmt.Errorf("open kernel %s: %w", Version, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), extractTimeout)
	defer cancel()
	if p, err := ensureVmlinux(ctx, dir, k.VmlinuzPath); err == nil {
		k.VmlinuxPath = p
	} else {
		slog.Warn("kernel: no uncompressed kernel, booting the bzImage (slower)", "err", err)
	}
	return k, nil
}

// Ensure returns the pinned kernel from cacheDir, fetching it first with
// `apt-get download` and unpacking it with `dpkg-deb -x` when it is not
// there. Concurrent callers (several test processes, make) serialise on a
// lock file in cacheDir; a fetch interrupted half way leaves nothing that
// Open accepts.
//
// When the package cannot be downloaded, running as root Ensure refreshes
// apt's package lists once and retries; otherwise the error says what to
// run. When Debian no longer serves the package, the error says how to move
// the pin or where to get the file for EnsureFromDeb.
func Ensure(ctx context.Context, cacheDir string) (*Kernel, error) {
	return ensure(ctx, cacheDir, "")
}

// EnsureFromDeb is Ensure with the kernel package taken from the file deb
// (for example one downloaded from snapshot.debian.org) instead of apt. The
// file must be the pinned Package.
func EnsureFromDeb(ctx context.Context, cacheDir, deb string) (*Kernel, error) {
	if deb == "" {
		return nil, errors.New("ensure kernel from .deb: no file given")
	}
	return ensure(ctx, cacheDir, deb)
}

func ensure(ctx context.Context, cacheDir, deb string) (*Kernel, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("ensure kernel: %w", err)
	}
	lock, err := filelock.Lock(ctx, filepath.Join(cacheDir, ".lock"))
	if err != nil {
		return nil, fmt.Errorf("ensure kernel: %w", err)
	}
	defer lock.Unlock()

	if k, err := Open(cacheDir); err == nil {
		return k, nil
	} else if !errors.Is(err, ErrNotFetched) {
		return nil, err
	}

	work, err := os.MkdirTemp(cacheDir, ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("ensure kernel: %w", err)
	}
	defer os.RemoveAll(work)

	if deb == "" {
		if deb, err = download(ctx, work, Package, os.Geteuid() == 0); err != nil {
			return nil, err
		}
	}
	if err := unpack(ctx, deb, Package, filepath.Join(work, "root")); err != nil {
		return nil, err
	}
	for _, want := range []string{
		filepath.Join("boot", "vmlinuz-"+Version),
		filepath.Join("lib", "modules", Version, "modules.builtin"),
	} {
		if _, err := os.Stat(filepath.Join(work, "root", want)); err != nil {
			return nil, fmt.Errorf("ensure kernel: package %s has no %s: is Version (%s) the release it carries?", Package, want, Version)
		}
	}

	dir := filepath.Join(cacheDir, Version)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("ensure kernel: clear stale %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("ensure kernel: %w", err)
	}
	if err := os.Rename(filepath.Join(work, "root"), filepath.Join(dir, "root")); err != nil {
		return nil, fmt.Errorf("ensure kernel: %w", err)
	}
	marker := fmt.Sprintf("package %s\nfetched %s\n", Package, time.Now().UTC().Format(time.RFC3339))
	if err := os.WriteFile(filepath.Join(dir, completeMarker), []byte(marker), 0o644); err != nil {
		return nil, fmt.Errorf("ensure kernel: %w", err)
	}
	return Open(cacheDir)
}

// download fetches pkg into dir with apt-get and returns the .deb's path.
// With mayUpdate it refreshes apt's lists once when the first try fails.
func download(ctx context.Context, dir, pkg string, mayUpdate bool) (string, error) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("download %s: apt-get not found: the kernel is fetched from Debian's archive on a Debian host; elsewhere download the .deb and use EnsureFromDeb", pkg)
	}
	out, err := run(ctx, dir, "apt-get", "download", pkg)
	if err != nil && mayUpdate {
		if uout, uerr := run(ctx, dir, "apt-get", "update", "-qq"); uerr != nil {
			return "", fmt.Errorf("download %s: apt-get update: %w: %s", pkg, uerr, lastLines(uout, 5))
		}
		out, err = run(ctx, dir, "apt-get", "download", pkg)
	}
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("download %s: %w", pkg, ctx.Err())
		}
		hint := "Debian no longer serves it (its security archive keeps only the newest 6.12 build): " +
			"find the current one with `apt-cache search --names-only 'linux-image-6.12.*-cloud-amd64$'`, " +
			"set Package and Version in images/kernel/version.go, or fetch this exact file from " +
			"https://snapshot.debian.org/binary/" + pkg + "/ and pass it to EnsureFromDeb (make kernel KERNEL_DEB=FILE)"
		if !mayUpdate {
			hint = "apt's package lists may be stale: run `sudo apt-get update` and try again; if that does not help, " + hint
		}
		return "", fmt.Errorf("download kernel package %s: %w: %s\n%s", pkg, err, lastLines(out, 5), hint)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("download %s: apt-get left %d .deb files, want 1", pkg, len(debs))
	}
	return debs[0], nil
}

// unpack checks that deb is package pkg and extracts it into dst.
func unpack(ctx context.Context, deb, pkg, dst string) error {
	name, err := run(ctx, "", "dpkg-deb", "--field", deb, "Package")
	if err != nil {
		return fmt.Errorf("unpack %s: not a readable Debian package: %w: %s", deb, err, lastLines(name, 3))
	}
	if got := strings.TrimSpace(string(name)); got != pkg {
		return fmt.Errorf("unpack %s: it is package %q, want %q", deb, got, pkg)
	}
	if out, err := run(ctx, "", "dpkg-deb", "-x", deb, dst); err != nil {
		return fmt.Errorf("unpack %s: %w: %s", deb, err, lastLines(out, 3))
	}
	return nil
}

// run runs a command and returns its combined output.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
