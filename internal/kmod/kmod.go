// Package kmod loads Linux kernel modules at early boot with finit_module(2),
// in the order given, without modprobe or udev.
//
// Modules may be plain .ko files or XZ-, Zstandard- or gzip-compressed
// (.ko.xz, .ko.zst, .ko.gz; recognised by their magic bytes, not their
// names). A compressed module is first handed to the kernel with
// MODULE_INIT_COMPRESSED_FILE (Linux >= 6.4 with CONFIG_MODULE_DECOMPRESS,
// as Debian's 6.12 kernels are built); when the kernel cannot decompress it
// the module is decompressed here and loaded with init_module(2).
//
// A module that is already loaded or built into the kernel counts as
// loaded. Loading by name resolves dependencies from the kernel's
// modules.dep (see Index). Errors name the module and its file.
package kmod

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoModuleSupport is returned when the running kernel was built without
// loadable module support (finit_module returns ENOSYS).
var ErrNoModuleSupport = errors.New("kernel has no loadable module support")

// Module is one kernel module to load.
type Module struct {
	// Name is the kernel's name for the module (underscores, no suffix),
	// e.g. "nvme_tcp". If empty it is derived from Path.
	Name string
	// Path is the module file (.ko, .ko.xz, .ko.zst or .ko.gz). Empty for
	// a built-in module.
	Path string
	// Params are the module parameters, space separated "key=value"
	// pairs as modprobe passes them, e.g. "multipath=N".
	Params string
	// BuiltIn marks a module compiled into the kernel: nothing to load.
	BuiltIn bool
}

// State says what loading a module did.
type State string

// The outcomes of loading one module.
const (
	// Loaded: the kernel accepted the module now.
	Loaded State = "loaded"
	// AlreadyLoaded: the module was loaded before (EEXIST, or live in
	// /sys/module).
	AlreadyLoaded State = "already-loaded"
	// BuiltIn: the module is compiled into the kernel.
	BuiltIn State = "built-in"
)

// How a compressed module was decompressed (Result.Decompressed).
const (
	DecompressedByKernel    = "kernel"
	DecompressedInUserspace = "userspace"
)

// Result reports one module's outcome, for the boot record.
type Result struct {
	Name  string `json:"name"`
	Path  string `json:"path,omitempty"`
	State State  `json:"state"`
	// Decompressed is "kernel", "userspace" or "" for a plain .ko.
	Decompressed string        `json:"decompressed,omitempty"`
	Duration     time.Duration `json:"duration_ns"`
}

// ModuleError is the error for one module: which module, which file, what
// step, and the cause.
type ModuleError struct {
	Name string
	Path string
	Op   string // "open", "read", "decompress", "load"
	Err  error
}

func (e *ModuleError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("kmod: %s module %s: %v", e.Op, e.Name, e.Err)
	}
	return fmt.Sprintf("kmod: %s module %s (%s): %v", e.Op, e.Name, e.Path, e.Err)
}

func (e *ModuleError) Unwrap() error { return e.Err }

// Loader loads modules. The zero value is ready to use.
type Loader struct {
	// Logger receives one line per module; nil means slog.Default().
	Logger *slog.Logger
	// SysModule is the directory listing the kernel's modules, used to
	// skip modules that are already present; empty means /sys/module.
	SysModule string
	// UserspaceDecompress skips handing compressed modules to the kernel
	// and always decompresses them here (for kernels built without
	// CONFIG_MODULE_DECOMPRESS; saves the refused first attempt).
	UserspaceDecompress bool
	// MaxDecompressed bounds the size of a module decompressed in
	// userspace; 0 means 256 MiB.
	MaxDecompressed int64
}

func (l *Loader) logger() *slog.Logger {
	if l.Logger != nil {
		return l.Logger
	}
	return slog.Default()
}

// Load loads mods in order (callers list dependencies first; Index.Resolve
// does that). It checks ctx before each module and stops at the first
// failure, returning the results so far and a *ModuleError.
func (l *Loader) Load(ctx context.Context, mods []Module) ([]Result, error) {
	results := make([]Result, 0, len(mods))
	for _, m := range mods {
		if m.Name == "" {
			m.Name = ModuleName(m.Path)
		}
		m.Name = NormalizeName(m.Name)
		if err := ctx.Err(); err != nil {
			return results, &ModuleError{Name: m.Name, Path: m.Path, Op: "load", Err: err}
		}
		r, err := l.loadOne(m)
		if err != nil {
			return results, err
		}
		l.logger().Info("kernel module", "module", r.Name, "state", r.State,
			"decompressed", r.Decompressed, "duration", r.Duration.Round(time.Microsecond))
		results = append(results, r)
	}
	return results, nil
}

// LoadByName resolves names (and their dependencies) in the module
// directory dir (DefaultDir when empty) and loads them. params maps module
// names to parameters and may be nil.
func (l *Loader) LoadByName(ctx context.Context, dir string, names []string, params map[string]string) ([]Result, error) {
	if dir == "" {
		d, err := DefaultDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	ix, err := OpenIndex(dir)
	if err != nil {
		return nil, err
	}
	mods, err := ix.Resolve(names, params)
	if err != nil {
		return nil, err
	}
	return l.Load(ctx, mods)
}

func (l *Loader) loadOne(m Module) (Result, error) {
	start := time.Now()
	r := Result{Name: m.Name, Path: m.Path}
	done := func(s State) (Result, error) {
		r.State = s
		r.Duration = time.Since(start)
		return r, nil
	}
	if m.Name == "" {
		return r, &ModuleError{Name: "?", Path: m.Path, Op: "load", Err: errors.New("no module name and no .ko path to derive it from")}
	}
	if strings.ContainsRune(m.Params, 0) {
		return r, &ModuleError{Name: m.Name, Path: m.Path, Op: "load", Err: errors.New("parameters contain a NUL byte")}
	}
	if m.BuiltIn {
		return done(BuiltIn)
	}
	if s := l.present(m.Name); s != "" {
		return done(s)
	}
	if m.Path == "" {
		return r, &ModuleError{Name: m.Name, Op: "open", Err: errors.New("no module file given")}
	}
	f, err := os.Open(m.Path)
	if err != nil {
		return r, &ModuleError{Name: m.Name, Path: m.Path, Op: "open", Err: err}
	}
	defer f.Close()

	var magic [6]byte
	n, err := f.ReadAt(magic[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return r, &ModuleError{Name: m.Name, Path: m.Path, Op: "read", Err: err}
	}
	comp := detect(magic[:n])
	if comp == "" {
		err = unix.FinitModule(int(f.Fd()), m.Params, 0)
	} else {
		if !l.UserspaceDecompress {
			err = unix.FinitModule(int(f.Fd()), m.Params, unix.MODULE_INIT_COMPRESSED_FILE)
			r.Decompressed = DecompressedByKernel
		}
		// EINVAL: the kernel predates the flag or decompresses another
		// format; EOPNOTSUPP: built without CONFIG_MODULE_DECOMPRESS.
		if l.UserspaceDecompress || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			img, derr := decompress(f, comp, l.maxDecompressed())
			if derr != nil {
				return r, &ModuleError{Name: m.Name, Path: m.Path, Op: "decompress", Err: derr}
			}
			r.Decompressed = DecompressedInUserspace
			err = unix.InitModule(img, m.Params)
		}
	}
	switch {
	case err == nil:
		return done(Loaded)
	case errors.Is(err, unix.EEXIST):
		return done(AlreadyLoaded)
	case errors.Is(err, unix.ENOSYS):
		return r, &ModuleError{Name: m.Name, Path: m.Path, Op: "load", Err: ErrNoModuleSupport}
	default:
		return r, &ModuleError{Name: m.Name, Path: m.Path, Op: "load", Err: describe(err)}
	}
}

func (l *Loader) maxDecompressed() int64 {
	if l.MaxDecompressed > 0 {
		return l.MaxDecompressed
	}
	return 256 << 20
}

// present reports whether the kernel already has the module: live in
// /sys/module/<name>/initstate (loaded), or a /sys/module/<name> directory
// without initstate (built in). It returns "" when it cannot tell.
func (l *Loader) present(name string) State {
	dir := l.SysModule
	if dir == "" {
		dir = "/sys/module"
	}
	b, err := os.ReadFile(filepath.Join(dir, name, "initstate"))
	if err == nil {
		if strings.TrimSpace(string(b)) == "live" {
			return AlreadyLoaded
		}
		return "" // coming or going: let the kernel decide
	}
	if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil && errors.Is(err, os.ErrNotExist) {
		return BuiltIn
	}
	return ""
}

// describe adds the usual meaning of the errno values finit_module returns.
func describe(err error) error {
	var hint string
	switch {
	case errors.Is(err, unix.ENOEXEC):
		hint = "not a valid module for this kernel (wrong file, corrupt, or another architecture)"
	case errors.Is(err, unix.ENOKEY), errors.Is(err, unix.EKEYREJECTED):
		hint = "module signature rejected"
	case errors.Is(err, unix.ENOENT):
		hint = "unknown symbol or parameter (a dependency missing, or a bad parameter); see the kernel log"
	case errors.Is(err, unix.EPERM):
		hint = "module loading not permitted (no CAP_SYS_MODULE, or modules disabled)"
	case errors.Is(err, unix.EBUSY):
		hint = "module is being loaded or unloaded concurrently"
	default:
		return err
	}
	return fmt.Errorf("%w: %s", err, hint)
}
