package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Index is the module dependency graph of one kernel, read from the
// modules.dep (and, when present, modules.builtin) that depmod writes into
// the kernel's module directory, e.g. /lib/modules/6.12.107+deb12-cloud-amd64.
type Index struct {
	// Dir is the module directory the relative paths in modules.dep are
	// resolved against.
	Dir string

	entries map[string]indexEntry
	builtin map[string]bool
}

type indexEntry struct {
	path string   // absolute (Dir joined with the modules.dep path)
	deps []string // module names of the direct and indirect dependencies
}

// DefaultDir returns the module directory of the running kernel:
// /lib/modules/<uname -r>.
func DefaultDir() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("kmod: uname: %w", err)
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])), nil
}

// OpenIndex reads dir/modules.dep and, if it exists, dir/modules.builtin.
// A missing modules.dep is an error that says to run depmod.
func OpenIndex(dir string) (*Index, error) {
	depPath := filepath.Join(dir, "modules.dep")
	dep, err := os.Open(depPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("kmod: %s is missing (run depmod -b for this kernel): %w", depPath, err)
		}
		return nil, fmt.Errorf("kmod: open module index: %w", err)
	}
	defer dep.Close()

	var builtin io.Reader
	bf, err := os.Open(filepath.Join(dir, "modules.builtin"))
	switch {
	case err == nil:
		defer bf.Close()
		builtin = bf
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("kmod: open built-in module list: %w", err)
	}
	return ParseIndex(dir, dep, builtin)
}

// ParseIndex parses a modules.dep stream (and an optional modules.builtin
// stream, which may be nil) for the module directory dir. Each modules.dep
// line is "path: dep-path dep-path ..."; paths are relative to dir unless
// absolute. Errors name the line.
func ParseIndex(dir string, dep io.Reader, builtin io.Reader) (*Index, error) {
	ix := &Index{Dir: dir, entries: map[string]indexEntry{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		path, rest, ok := strings.Cut(line, ":")
		path = strings.TrimSpace(path)
		if !ok || path == "" {
			return nil, fmt.Errorf("kmod: modules.dep line %d: want \"path: deps...\", got %q", n, line)
		}
		name := ModuleName(path)
		if name == "" {
			return nil, fmt.Errorf("kmod: modules.dep line %d: %q is not a .ko file", n, path)
		}
		e := indexEntry{path: ix.abs(path)}
		for _, d := range strings.Fields(rest) {
			dn := ModuleName(d)
			if dn == "" {
				return nil, fmt.Errorf("kmod: modules.dep line %d: dependency %q is not a .ko file", n, d)
			}
			e.deps = append(e.deps, dn)
		}
		ix.entries[name] = e
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kmod: read modules.dep: %w", err)
	}
	if builtin != nil {
		sc := bufio.NewScanner(builtin)
		for sc.Scan() {
			if name := ModuleName(strings.TrimSpace(sc.Text())); name != "" {
				ix.builtin[name] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("kmod: read modules.builtin: %w", err)
		}
	}
	return ix, nil
}

func (ix *Index) abs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(ix.Dir, p)
}

// Path returns the file of the named module and whether the index has it.
func (ix *Index) Path(name string) (string, bool) {
	e, ok := ix.entries[NormalizeName(name)]
	return e.path, ok
}

// BuiltIn reports whether the named module is compiled into the kernel
// according to modules.builtin.
func (ix *Index) BuiltIn(name string) bool {
	return ix.builtin[NormalizeName(name)]
}

// Resolve returns the modules to load for names, dependencies first, each
// module once. Built-in modules are returned with BuiltIn set (and no
// path); a name neither in modules.dep nor in modules.builtin is an error
// naming it. params maps a module name to its parameters ("key=value ...");
// it may be nil and applies to dependencies too.
func (ix *Index) Resolve(names []string, params map[string]string) ([]Module, error) {
	norm := make(map[string]string, len(params))
	for k, v := range params {
		norm[NormalizeName(k)] = v
	}
	var out []Module
	done := map[string]bool{}
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		if done[name] {
			return nil
		}
		for _, s := range stack {
			if s == name {
				return fmt.Errorf("kmod: dependency cycle in %s/modules.dep: %s -> %s", ix.Dir, strings.Join(stack, " -> "), name)
			}
		}
		e, ok := ix.entries[name]
		if !ok {
			if ix.builtin[name] {
				done[name] = true
				out = append(out, Module{Name: name, BuiltIn: true})
				return nil
			}
			if len(stack) > 0 {
				return fmt.Errorf("kmod: module %s (needed by %s) is not in %s/modules.dep", name, stack[len(stack)-1], ix.Dir)
			}
			return fmt.Errorf("kmod: module %s is not in %s/modules.dep nor modules.builtin", name, ix.Dir)
		}
		stack = append(stack, name)
		for _, d := range e.deps {
			if err := visit(d, stack); err != nil {
				return err
			}
		}
		done[name] = true
		out = append(out, Module{Name: name, Path: e.path, Params: norm[name]})
		return nil
	}
	for _, n := range names {
		name := NormalizeName(n)
		if name == "" || strings.ContainsAny(name, "/ \t\n") {
			return nil, fmt.Errorf("kmod: invalid module name %q", n)
		}
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ModuleName returns the kernel's name for a module file path
// ("kernel/drivers/nvme/host/nvme-tcp.ko.xz" -> "nvme_tcp"), or "" when
// the path does not name a .ko, .ko.xz, .ko.zst or .ko.gz file.
func ModuleName(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if stem, ok := strings.CutSuffix(base, ext); ok && stem != "" {
			return NormalizeName(stem)
		}
	}
	return ""
}

// NormalizeName maps a module name to the kernel's spelling: dashes become
// underscores ("nvme-tcp" and "nvme_tcp" name the same module).
func NormalizeName(name string) string {
	return strings.ReplaceAll(strings.TrimSpace(name), "-", "_")
}
