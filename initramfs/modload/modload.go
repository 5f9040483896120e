// Package modload runs inside the boot image: it inserts the kernel modules
// the image builder (package initramfs) put there, in the order the builder
// recorded in OrderFile.
package modload

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// OrderFile lists the image's module files, one absolute path a line, each
// after the modules it depends on.
const OrderFile = "etc/sedboot/modules.order"

// Result is what happened to one module.
type Result struct {
	// Name is the module's name as the kernel spells it (file name without
	// ".ko", "-" as "_").
	Name string
	// Path is the module file.
	Path string
	// AlreadyLoaded reports that the kernel had it already (EEXIST).
	AlreadyLoaded bool
	// Elapsed is how long the insertion took.
	Elapsed time.Duration
}

// Load inserts every module listed in root/OrderFile, in order. It stops at
// the first failure, returning what was loaded so far and an error naming
// the module. A module the kernel already has counts as loaded.
func Load(ctx context.Context, root string) ([]Result, error) {
	list, err := os.ReadFile(path.Join(root, OrderFile))
	if err != nil {
		return nil, fmt.Errorf("load modules: %w", err)
	}
	paths, err := parseOrder(list)
	if err != nil {
		return nil, fmt.Errorf("load modules: %s: %w", OrderFile, err)
	}
	var done []Result
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return done, fmt.Errorf("load modules: %w", err)
		}
		r, err := insert(path.Join(root, p))
		if err != nil {
			return done, fmt.Errorf("load modules: %w", err)
		}
		done = append(done, r)
	}
	return done, nil
}

func parseOrder(list []byte) ([]string, error) {
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(list))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.HasPrefix(line, "/") || !strings.HasSuffix(line, ".ko") {
			return nil, fmt.Errorf("line %d: %q is not an absolute path to a .ko file", n, line)
		}
		paths = append(paths, line)
	}
	return paths, sc.Err()
}

// insert loads one module file with finit_module(2).
func insert(file string) (Result, error) {
	r := Result{Name: strings.ReplaceAll(strings.TrimSuffix(path.Base(file), ".ko"), "-", "_"), Path: file}
	f, err := os.Open(file)
	if err != nil {
		return r, fmt.Errorf("module %s: %w", r.Name, err)
	}
	defer f.Close()
	start := time.Now()
	for {
		err = unix.FinitModule(int(f.Fd()), "", 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	r.Elapsed = time.Since(start)
	switch {
	case err == nil:
	case errors.Is(err, unix.EEXIST):
		r.AlreadyLoaded = true
	default:
		return r, fmt.Errorf("module %s: finit_module: %w", r.Name, err)
	}
	return r, nil
}
