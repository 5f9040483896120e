// Package boottest is the glue between Go tests and the boot image
// machinery: it finds the cached kernel, builds initramfs images and boots
// guests whose lifetime is tied to the test, failing (under CI) or skipping
// (elsewhere) when QEMU or the kernel is missing.
//
//	k := boottest.Kernel(t)
//	img := boottest.Image(t, initramfs.Spec{Init: "./testdata/init", ...})
//	m := boottest.Boot(t, qemu.Config{Kernel: k.BootImage(), Initrd: img.Path, ...})
//	boottest.WaitFor(t, m, guest.Passed)
package boottest

import (
	"context"
	"errors"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/guest"
	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/images/qemu"
	"github.com/sedboot/sedboot/initramfs"
	"github.com/sedboot/sedboot/internal/testenv"
)

// DefaultWait bounds each WaitFor/Expect of this package.
const DefaultWait = 2 * time.Minute

// Kernel returns the kernel `make kernel` cached; when it is missing the
// test fails under CI and is skipped elsewhere.
func Kernel(t testing.TB) *kernel.Kernel {
	t.Helper()
	dir, err := kernel.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	k, err := kernel.Open(dir)
	if err != nil && !errors.Is(err, kernel.ErrNotFetched) {
		t.Fatal(err)
	}
	testenv.Require(t, err == nil, "boot kernel "+kernel.Version+" (run `make kernel`)")
	return k
}

// RequireQEMU fails (CI) or skips the test when QEMU is not installed.
func RequireQEMU(t testing.TB) {
	t.Helper()
	testenv.LookPath(t, "qemu-system-x86_64", "run scripts/prereqs.sh")
}

// Modules returns the named modules of k and their dependencies in load
// order.
func Modules(t testing.TB, k *kernel.Kernel, names ...string) []kernel.Module {
	t.Helper()
	ms, err := k.Modules(context.Background(), names...)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// Image builds (or finds in the cache) the initramfs spec describes.
func Image(t testing.TB, spec initramfs.Spec) *initramfs.Image {
	t.Helper()
	testenv.LookPath(t, "zstd", "run scripts/prereqs.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := initramfs.Build(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs %s: %d bytes (%d uncompressed), cached=%v, %s", img.Path, img.Size, img.RawSize, img.Cached, img.Elapsed.Round(time.Millisecond))
	return img
}

// Boot starts a guest for the test. It is killed when the test ends; when
// the test failed, the console's last lines are logged and, if the
// environment variable SEDBOOT_CONSOLE_DIR names a directory, the whole
// console is saved there.
func Boot(t testing.TB, cfg qemu.Config) *qemu.Machine {
	t.Helper()
	return BootAll(t, cfg)[0]
}

// BootAll starts guests that must run together (see qemu.StartAll).
func BootAll(t testing.TB, cfgs ...qemu.Config) []*qemu.Machine {
	t.Helper()
	RequireQEMU(t)
	ctx, cancel := context.WithCancel(context.Background())
	ms, err := qemu.StartAll(ctx, cfgs...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		for _, m := range ms {
			m.Close()
			if t.Failed() {
				t.Logf("guest %s console (last 40 lines):\n%s", m.Name(), m.Tail(40))
				if dir := os.Getenv("SEDBOOT_CONSOLE_DIR"); dir != "" {
					name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name() + "-" + m.Name() + ".log")
					if err := os.WriteFile(dir+"/"+name, []byte(m.ConsoleText()), 0o644); err == nil {
						t.Logf("console saved to %s/%s", dir, name)
					}
				}
			}
		}
	})
	return ms
}

// WaitFor waits (at most DefaultWait) for marker on m's console, after the
// previous match, and fails the test if the guest reports a failure first.
func WaitFor(t testing.TB, m *qemu.Machine, marker string) {
	t.Helper()
	Expect(t, m, regexp.QuoteMeta(marker))
}

// Expect waits (at most DefaultWait) for the regular expression on m's
// console, after the previous match, and returns its submatches. A guest
// failure report (guest.Failed) ends the wait with a test failure.
func Expect(t testing.TB, m *qemu.Machine, re string) []string {
	t.Helper()
	return ExpectWithin(t, m, re, DefaultWait)
}

// ExpectWithin is Expect waiting at most wait.
func ExpectWithin(t testing.TB, m *qemu.Machine, re string, wait time.Duration) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	// The failure line must be complete: the console may deliver it in
	// pieces, and matching its start alone would lose the reason.
	all := regexp.MustCompile("(" + re + ")|" + regexp.QuoteMeta(guest.Failed) + " ([^\r\n]*)\r?\n")
	subs, err := m.Expect(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	if subs[1] == "" {
		t.Fatalf("guest %s failed: %s", m.Name(), subs[len(subs)-1])
	}
	return subs[1 : len(subs)-1]
}

// WaitExit waits for the guest to end by itself and returns how.
func WaitExit(t testing.TB, m *qemu.Machine) qemu.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultWait)
	defer cancel()
	e, err := m.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Listen opens a TCP listener on 127.0.0.1 for the test.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
