package kernel

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Module is one loadable kernel module, decompressed.
type Module struct {
	// Name is the kernel's name for the module (underscores, e.g. "nvme_tcp").
	Name string
	// RelPath is where the module belongs under /lib/modules/<Version>,
	// without a compression suffix, e.g. "kernel/drivers/nvme/host/nvme-tcp.ko".
	RelPath string
	// Path is the decompressed module file on this host.
	Path string
	// Depends are the names of the modules this one needs loaded first
	// (built-in ones excluded: the kernel lists only loadable ones).
	Depends []string
}

// CanonicalName returns the kernel's spelling of a module name: the kernel
// treats "-" and "_" in module names alike and reports them with "_".
func CanonicalName(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

// Builtin reports whether the module name is built into the kernel (so it
// needs no loading).
func (k *Kernel) Builtin(name string) bool {
	return k.builtins[CanonicalName(name)]
}

// Modules returns the loadable modules needed to have every named module
// available, dependencies included, decompressed, in an order in which
// they can be inserted one by one (each after everything it depends on), and
// without duplicates. Names that are built into the kernel need nothing and
// contribute nothing. A name the kernel neither builds in nor ships is an
// error.
func (k *Kernel) Modules(ctx context.Context, names ...string) ([]Module, error) {
	var order []Module
	state := map[string]int{} // 1: being visited, 2: done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		case 2:
			return nil
		}
		state[name] = 1
		m, err := k.module(ctx, name)
		if err != nil {
			if len(chain) > 0 {
				return fmt.Errorf("%w (needed by %s)", err, chain[len(chain)-1])
			}
			return err
		}
		for _, dep := range m.Depends {
			if k.builtins[dep] {
				continue
			}
			if err := visit(dep, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, m)
		return nil
	}
	for _, n := range names {
		name := CanonicalName(n)
		if k.builtins[name] {
			continue
		}
		if err := visit(name, nil); err != nil {
			return nil, fmt.Errorf("kernel %s modules: %w", k.Version, err)
		}
	}
	return order, nil
}

// module decompresses one shipped module into the cache (once) and reads
// its metadata.
func (k *Kernel) module(ctx context.Context, name string) (Module, error) {
	shipped, ok := k.shipped[name]
	if !ok {
		return Module{}, fmt.Errorf("module %q is neither built into kernel %s nor shipped with it", name, k.Version)
	}
	rel := shipped
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		rel = strings.TrimSuffix(rel, ext)
	}
	out := filepath.Join(k.dir, "ko", rel)
	if _, err := os.Stat(out); errors.Is(err, fs.ErrNotExist) {
		if err := decompress(ctx, filepath.Join(k.Root, "lib", "modules", k.Version, shipped), out); err != nil {
			return Module{}, fmt.Errorf("module %s: %w", name, err)
		}
	} else if err != nil {
		return Module{}, fmt.Errorf("module %s: %w", name, err)
	}
	info, err := readModinfo(out)
	if err != nil {
		return Module{}, fmt.Errorf("module %s: %w", name, err)
	}
	if got := CanonicalName(info["name"]); got != name {
		return Module{}, fmt.Errorf("module %s: file %s calls itself %q", name, shipped, info["name"])
	}
	if vermagic := strings.Fields(info["vermagic"]); len(vermagic) == 0 || vermagic[0] != k.Version {
		return Module{}, fmt.Errorf("module %s: built for kernel %q, not %s", name, info["vermagic"], k.Version)
	}
	m := Module{Name: name, RelPath: rel, Path: out}
	for _, d := range strings.Split(info["depends"], ",") {
		if d = strings.TrimSpace(d); d != "" {
			m.Depends = append(m.Depends, CanonicalName(d))
		}
	}
	sort.Strings(m.Depends)
	return m, nil
}

// decompress writes the decompressed module src to dst atomically (so a
// concurrent reader never sees half a file).
func decompress(ctx context.Context, src, dst string) error {
	var tool string
	switch filepath.Ext(src) {
	case ".ko":
		tool = "cat"
	case ".xz":
		tool = "xz"
	case ".zst":
		tool = "zstd"
	case ".gz":
		tool = "gzip"
	default:
		return fmt.Errorf("decompress %s: unknown compression", src)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("decompress %s: %w", src, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".ko-")
	if err != nil {
		return fmt.Errorf("decompress %s: %w", src, err)
	}
	defer os.Remove(tmp.Name())
	args := []string{"-dc", src}
	if tool == "cat" {
		args = []string{src}
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Stdout = tmp
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		tmp.Close()
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("decompress %s: %s not found (scripts/prereqs.sh installs it)", src, tool)
		}
		return fmt.Errorf("decompress %s: %s: %w: %s", src, tool, err, strings.TrimSpace(stderr.String()))
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("decompress %s: %w", src, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("decompress %s: %w", src, err)
	}
	return nil
}

// readModinfo returns the key=value pairs of a module's .modinfo section.
func readModinfo(path string) (map[string]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read modinfo: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("read modinfo: %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read modinfo of %s: %w", path, err)
	}
	return parseModinfo(data), nil
}

// parseModinfo parses a .modinfo section: NUL-separated key=value strings.
// A key that appears more than once (alias, parm ...) keeps its first value;
// the keys used here (name, depends, vermagic) appear once.
func parseModinfo(data []byte) map[string]string {
	info := map[string]string{}
	for _, field := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(field), "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := info[k]; !dup {
			info[k] = v
		}
	}
	return info
}

// index lists the modules the package ships and those built in.
func (k *Kernel) index() error {
	base := filepath.Join(k.Root, "lib", "modules", k.Version)
	k.shipped = map[string]string{}
	err := filepath.WalkDir(filepath.Join(base, "kernel"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if name, ok := moduleFileName(d.Name()); ok {
			rel, err := filepath.Rel(base, path)
			if err != nil {
				return err
			}
			k.shipped[name] = rel
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("index modules: %w", err)
	}
	f, err := os.Open(filepath.Join(base, "modules.builtin"))
	if err != nil {
		return fmt.Errorf("index built-in modules: %w", err)
	}
	defer f.Close()
	k.builtins = map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, ok := moduleFileName(filepath.Base(strings.TrimSpace(sc.Text()))); ok {
			k.builtins[name] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("index built-in modules: %w", err)
	}
	return nil
}

// moduleFileName returns the module name of a file name such as
// "nvme-tcp.ko.xz" ("nvme_tcp").
func moduleFileName(file string) (string, bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if name, ok := strings.CutSuffix(file, ext); ok && name != "" {
			return CanonicalName(name), true
		}
	}
	return "", false
}
