// Package initramfs builds sedboot's boot images: a zstd-compressed newc cpio
// holding an init program, extra programs, kernel modules with their load
// order, and extra files.
//
// Two kinds of /init are supported:
//
//   - a single static Go program of ours as /init (Spec.Init), which is what
//     small test images use: no shell, no other commands, a few MB;
//   - u-root's init with u-root commands built as one busybox
//     (Spec.URoot), running our program as its payload (/bin/uinit), which
//     is what the production image uses.
//
// Builds are content-addressed: the image lands in the cache directory under
// the hash of its uncompressed archive, so building the same Spec again (in
// the same or another test process) costs only the Go compiles, which the Go
// build cache answers, and the u-root busybox is cached separately because it
// takes tens of seconds to build. Tests build an image once and choose their
// scenario on the kernel command line.
package initramfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/uimage"

	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/initramfs/modload"
)

// Spec says what goes into an image.
type Spec struct {
	// Init is the Go main package (import path, or a directory relative to
	// Dir such as "./testdata/init") built static and installed as /init.
	// Exactly one of Init and URoot must be set.
	Init string
	// URoot, when set, makes u-root's init the /init.
	URoot *URoot
	// Programs are more Go main packages, each built static into
	// /bin/<last element of its path>.
	Programs []string
	// Modules are kernel modules in load order (as kernel.Kernel.Modules
	// returns them). They are installed under /lib/modules/<KernelVersion>
	// with a modules.dep, and listed in load order in modload.OrderFile.
	Modules []kernel.Module
	// KernelVersion is the release the modules belong to; required with
	// Modules.
	KernelVersion string
	// Files are extra files.
	Files []File
	// Dir is the directory Go packages are resolved from (default: the
	// working directory). It must be inside a Go module that requires every
	// package named.
	Dir string
	// CacheDir holds built images and u-root busyboxes (default:
	// build/initramfs in the sedboot source tree).
	CacheDir string
	// Level is the zstd compression level (default 19).
	Level int
	// Log receives progress and the built image's size (default
	// slog.Default()).
	Log *slog.Logger
}

// URoot configures an image whose /init is u-root's init.
type URoot struct {
	// Commands are u-root command packages (e.g.
	// "github.com/u-root/u-root/cmds/core/gosh") built as one busybox into
	// /bbin; u-root's init is always included. Every package must be
	// resolvable in the main module: add new ones with
	// `go get -tool <package>@<u-root version>`.
	Commands []string
	// Uinit is the program init runs once it has set the system up: a path
	// inside the image ("/bin/sedboot-agent") or the name of one of
	// Commands or Programs.
	Uinit string
	// UinitArgs are arguments for Uinit (the kernel's uroot.uinitargs= are
	// appended by init at boot).
	UinitArgs []string
	// Shell, if set, is the command /bin/sh and /bin/defaultsh point to
	// (init starts it when Uinit exits).
	Shell string
	// Tags are Go build tags for the u-root commands (e.g. "goshsmall",
	// gosh's plain line editor).
	Tags []string
}

// File is one extra file.
type File struct {
	// Path is where it goes in the image, e.g. "etc/sedboot/identity".
	Path string
	// Link, when set, makes the file a symbolic link to Link (Source,
	// Data and Mode are then unused).
	Link string
	// Source is a host file to copy; when empty, Data is the content.
	Source string
	// Data is the content when Source is empty.
	Data []byte
	// Mode is the permission bits (default 0644, or the source file's).
	Mode fs.FileMode
}

// Image is a built initramfs.
type Image struct {
	// Path is the zstd-compressed cpio, named by its content hash.
	Path string
	// Size is the compressed size in bytes; RawSize the cpio's.
	Size, RawSize int64
	// Cached reports whether an identical image was already in the cache.
	Cached bool
	// Elapsed is how long Build took.
	Elapsed time.Duration
}

// URootInit is u-root's init command.
const URootInit = "github.com/u-root/u-root/cmds/core/init"

// DefaultCacheDir returns build/initramfs in the sedboot source tree that
// contains the working directory.
func DefaultCacheDir() (string, error) {
	root, err := kernel.SourceRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "build", "initramfs"), nil
}

// Build builds the image spec describes (or finds it in the cache) and
// logs its path and size.
func Build(ctx context.Context, spec Spec) (*Image, error) {
	start := time.Now()
	log := spec.Log
	if log == nil {
		log = slog.Default()
	}
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	cacheDir := spec.CacheDir
	if cacheDir == "" {
		var err error
		if cacheDir, err = DefaultCacheDir(); err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	work, err := os.MkdirTemp(cacheDir, ".work-")
	if err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	defer os.RemoveAll(work)

	a := newArchive()
	if err := a.addBase(); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	if spec.URoot != nil {
		bb, err := urootArchive(ctx, spec, cacheDir, log)
		if err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
		defer bb.Close()
		if err := a.addCPIO(bb); err != nil {
			return nil, fmt.Errorf("build initramfs: u-root archive %s: %w", bb.Name(), err)
		}
	}

	// Our Go programs, built static for the guest.
	pkgs := append([]string(nil), spec.Programs...)
	if spec.Init != "" {
		pkgs = append(pkgs, spec.Init)
	}
	if len(pkgs) > 0 {
		bins, err := goBuild(ctx, spec.Dir, filepath.Join(work, "bin"), pkgs)
		if err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
		for i, pkg := range pkgs {
			dst := "bin/" + path.Base(pkg)
			if spec.Init != "" && i == len(pkgs)-1 {
				dst = "init"
			}
			if err := a.addHostFile(dst, bins[i], 0o755); err != nil {
				return nil, fmt.Errorf("build initramfs: %w", err)
			}
		}
	}

	if err := a.addModules(spec.KernelVersion, spec.Modules); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	for _, f := range spec.Files {
		var err error
		switch {
		case f.Link != "":
			a.add(cpio.Symlink(f.Path, f.Link))
		case f.Source != "":
			err = a.addHostFile(f.Path, f.Source, f.Mode)
		default:
			mode := f.Mode
			if mode == 0 {
				mode = 0o644
			}
			err = a.addData(f.Path, f.Data, mode)
		}
		if err != nil {
			return nil, fmt.Errorf("build initramfs: file %s: %w", f.Path, err)
		}
	}

	raw := filepath.Join(work, "initramfs.cpio")
	sum, rawSize, err := a.write(raw)
	if err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	level := spec.Level
	if level == 0 {
		level = 19
	}
	img := &Image{
		Path:    filepath.Join(cacheDir, fmt.Sprintf("initramfs-%s-zstd%d.cpio.zst", sum[:16], level)),
		RawSize: rawSize,
	}
	if st, err := os.Stat(img.Path); err == nil {
		img.Cached = true
		img.Size = st.Size()
		touch(img.Path) // in use: keep pruneCache away
	} else {
		tmp := filepath.Join(work, "initramfs.cpio.zst")
		if err := compress(ctx, raw, tmp, level); err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
		st, err := os.Stat(tmp)
		if err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
		img.Size = st.Size()
		if err := os.Rename(tmp, img.Path); err != nil {
			return nil, fmt.Errorf("build initramfs: %w", err)
		}
		pruneCache(cacheDir, img.Path, log)
	}
	img.Elapsed = time.Since(start)
	log.Info("initramfs built", "path", img.Path, "size", img.Size, "uncompressed", rawSize,
		"files", len(a.records), "cached", img.Cached, "elapsed", img.Elapsed.Round(time.Millisecond))
	return img, nil
}

func (s Spec) validate() error {
	switch {
	case s.Init == "" && s.URoot == nil:
		return errors.New("no init: set Spec.Init or Spec.URoot")
	case s.Init != "" && s.URoot != nil:
		return errors.New("both Spec.Init and Spec.URoot set: choose one /init")
	case s.URoot != nil && s.URoot.Uinit == "":
		return errors.New("Spec.URoot.Uinit is empty: u-root's init needs a program to run")
	case len(s.Modules) > 0 && s.KernelVersion == "":
		return errors.New("Spec.Modules without Spec.KernelVersion")
	case s.Level < 0 || s.Level > 22:
		return fmt.Errorf("zstd level %d out of range 1..22", s.Level)
	}
	seen := map[string]string{}
	for _, p := range s.Programs {
		name := path.Base(p)
		if other, dup := seen[name]; dup {
			return fmt.Errorf("programs %s and %s would both be /bin/%s", other, p, name)
		}
		seen[name] = p
	}
	for _, f := range s.Files {
		if clean := cpio.Normalize(f.Path); clean == "." || strings.HasPrefix(clean, "..") {
			return fmt.Errorf("file path %q is not inside the image", f.Path)
		}
		if f.Link == "" && f.Source == "" && f.Data == nil {
			return fmt.Errorf("file %s has neither Source nor Data, and is not a Link", f.Path)
		}
	}
	return nil
}

// goBuild builds static guest binaries of pkgs into outDir, returning their
// paths in the order of pkgs.
func goBuild(ctx context.Context, dir, outDir string, pkgs []string) ([]string, error) {
	var paths []string
	for i, pkg := range pkgs {
		sub := filepath.Join(outDir, fmt.Sprint(i))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return nil, err
		}
		paths = append(paths, filepath.Join(sub, path.Base(pkg)))
	}
	// One go command builds them all (a package at a time into its own
	// directory would serialise the compiles), so build into a directory:
	// `go build -o dir/` names each binary after its package directory.
	all := filepath.Join(outDir, "all")
	if err := os.MkdirAll(all, 0o755); err != nil {
		return nil, err
	}
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", all + "/"}
	cmd := exec.CommandContext(ctx, "go", append(args, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, strings.TrimSpace(stderr.String()))
	}
	for i, pkg := range pkgs {
		if err := os.Rename(filepath.Join(all, path.Base(pkg)), paths[i]); err != nil {
			return nil, fmt.Errorf("go build %s: %w", pkg, err)
		}
	}
	return paths, nil
}

// compress runs zstd over src into dst.
func compress(ctx context.Context, src, dst string, level int) error {
	args := []string{"-q", "-f", "-T0", fmt.Sprintf("-%d", level)}
	if level > 19 {
		args = append(args, "--ultra")
	}
	cmd := exec.CommandContext(ctx, "zstd", append(args, src, "-o", dst)...)
	out, err := cmd.CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		return errors.New("zstd not found (scripts/prereqs.sh installs it)")
	}
	if err != nil {
		return fmt.Errorf("zstd: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// pruneCache removes cached images and u-root archives other than keep
// that nobody used for a day.
func pruneCache(dir, keep string, log *slog.Logger) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		cached := strings.HasPrefix(e.Name(), "initramfs-") || (strings.HasPrefix(e.Name(), "uroot-") && strings.HasSuffix(e.Name(), ".cpio"))
		if p == keep || !cached {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > 24*time.Hour {
			if err := os.Remove(p); err == nil {
				log.Debug("initramfs cache: removed stale image", "path", p)
			}
		}
	}
}

// touch marks a cached file as used now.
func touch(path string) {
	now := time.Now()
	os.Chtimes(path, now, now)
}

// archive collects records by path; a later record for a path replaces an
// earlier one, so our files override the base and u-root's.
type archive struct {
	records map[string]cpio.Record
}

func newArchive() *archive {
	return &archive{records: map[string]cpio.Record{}}
}

func (a *archive) add(r cpio.Record) {
	r = cpio.MakeReproducible(r)
	a.records[r.Name] = r
}

// addBase adds the device nodes and directories every image needs
// (/dev/console, /dev/null, /tmp ...), as u-root's default ramfs has them.
func (a *archive) addBase() error {
	return cpio.ForEachRecord(uimage.DefaultRamfs().Reader(), func(r cpio.Record) error {
		a.add(r)
		return nil
	})
}

func (a *archive) addCPIO(f *os.File) error {
	return cpio.ForEachRecord(cpio.EOFReader{RecordReader: cpio.Newc.Reader(f)}, func(r cpio.Record) error {
		a.add(r)
		return nil
	})
}

func (a *archive) addData(name string, data []byte, mode fs.FileMode) error {
	a.add(cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | uint64(mode.Perm())}))
	return nil
}

func (a *archive) addHostFile(name, src string, mode fs.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if mode == 0 {
		st, err := os.Stat(src)
		if err != nil {
			return err
		}
		mode = st.Mode().Perm()
	}
	return a.addData(name, data, mode)
}

// addModules installs modules under lib/modules/<version>, with a
// modules.dep (so kmod or u-root's modprobe can use them) and the load order
// list modload reads.
func (a *archive) addModules(version string, mods []kernel.Module) error {
	if len(mods) == 0 {
		return nil
	}
	base := path.Join("lib/modules", version)
	byName := map[string]kernel.Module{}
	var order, dep strings.Builder
	for _, m := range mods {
		for _, d := range m.Depends {
			if _, ok := byName[d]; !ok {
				return fmt.Errorf("module %s needs %s, which is not listed before it", m.Name, d)
			}
		}
		byName[m.Name] = m
		if err := a.addHostFile(path.Join(base, m.RelPath), m.Path, 0o644); err != nil {
			return fmt.Errorf("module %s: %w", m.Name, err)
		}
		fmt.Fprintf(&order, "/%s\n", path.Join(base, m.RelPath))
		// modules.dep lists every module's transitive dependencies,
		// the one to load first last.
		var deps []string
		seen := map[string]bool{}
		var walk func(string)
		walk = func(n string) {
			for _, d := range byName[n].Depends {
				if !seen[d] {
					seen[d] = true
					deps = append(deps, byName[d].RelPath)
					walk(d)
				}
			}
		}
		walk(m.Name)
		fmt.Fprintf(&dep, "%s:", m.RelPath)
		for _, d := range deps {
			fmt.Fprintf(&dep, " %s", d)
		}
		dep.WriteString("\n")
	}
	if err := a.addData(path.Join(base, "modules.dep"), []byte(dep.String()), 0o644); err != nil {
		return err
	}
	return a.addData(modload.OrderFile, []byte(order.String()), 0o644)
}

// write writes the archive as newc, parents before children, sorted, and
// returns the SHA-256 of the result and its size.
func (a *archive) write(dst string) (string, int64, error) {
	names := make([]string, 0, len(a.records))
	for n := range a.records {
		names = append(names, n)
	}
	sort.Strings(names)

	f, err := os.Create(dst)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	w := cpio.NewDedupWriter(cpio.Newc.Writer(cw))
	written := map[string]bool{}
	var writeDirs func(dir string) error
	writeDirs = func(dir string) error {
		if dir == "." || written[dir] {
			return nil
		}
		if err := writeDirs(path.Dir(dir)); err != nil {
			return err
		}
		written[dir] = true
		if r, ok := a.records[dir]; ok {
			return w.WriteRecord(r)
		}
		return w.WriteRecord(cpio.MakeReproducible(cpio.Directory(dir, 0o755)))
	}
	for _, n := range names {
		if err := writeDirs(path.Dir(n)); err != nil {
			return "", 0, fmt.Errorf("write %s: %w", n, err)
		}
		if written[n] {
			continue
		}
		written[n] = true
		if err := w.WriteRecord(a.records[n]); err != nil {
			return "", 0, fmt.Errorf("write %s: %w", n, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return "", 0, err
	}
	if err := f.Close(); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
