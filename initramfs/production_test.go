package initramfs

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/images/kernel"
	"github.com/sedboot/sedboot/internal/testenv"
)

// TestBuildProduction builds the production image and checks what a
// controller needs is in it: the agent as /init (a regular file, not u-root's
// init), sedctl (a link to it), gosh as /bin/sh, the core tools and the
// modules in order.
func TestBuildProduction(t *testing.T) {
	if testing.Short() {
		t.Skip("builds u-root (tens of seconds when not cached)")
	}
	testenv.LookPath(t, "zstd", "run scripts/prereqs.sh")
	testenv.LookPath(t, "cpio", "run scripts/prereqs.sh")
	dir, err := kernel.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	k, err := kernel.Open(dir)
	testenv.Require(t, err == nil, "boot kernel (run `make kernel`)")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := BuildProduction(ctx, k, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("production initramfs: %d bytes zstd (%d uncompressed)", img.Size, img.RawSize)
	list := cpioList(t, img.Path)
	for _, want := range []string{"init", "bin/sedctl", "bbin/gosh", "bbin/ls", "bin/sh", "etc/sedboot/modules.order"} {
		if !list[want] {
			t.Errorf("image lacks %s", want)
		}
	}
	out, err := exec.Command("sh", "-c", "zstd -dc "+img.Path+" | cpio -tv "+SedctlPath+" 2>/dev/null").Output()
	if err != nil || !strings.HasPrefix(string(out), "l") || !strings.Contains(string(out), SedctlPath+" -> /init") {
		t.Errorf("/%s is not a link to /init (the agent's binary is sedctl too): %q, %v", SedctlPath, out, err)
	}
	out, err = exec.Command("sh", "-c", "zstd -dc "+img.Path+" | cpio -i --to-stdout init 2>/dev/null | head -c 4").Output()
	if err != nil || !bytes.Equal(out, []byte("\x7fELF")) {
		t.Errorf("/init is not a program of its own (got %q, %v): u-root's init link was not replaced", out, err)
	}
}

func cpioList(t *testing.T, path string) map[string]bool {
	t.Helper()
	out, err := exec.Command("sh", "-c", "zstd -dc "+path+" | cpio -t 2>/dev/null").Output()
	if err != nil {
		t.Fatalf("list %s: %v", path, err)
	}
	m := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		m[strings.TrimPrefix(l, "./")] = true
	}
	return m
}
