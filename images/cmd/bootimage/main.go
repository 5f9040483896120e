// Command bootimage assembles the controller boot image (kernel, production
// initramfs, manifest) into a directory, default build/bootimage, and
// prints the sizes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sedboot/sedboot/images/bootimage"
	"github.com/sedboot/sedboot/images/kernel"
)

func main() {
	out := flag.String("o", "", "output directory (default build/bootimage in the source tree)")
	level := flag.Int("level", 19, "zstd level of the initramfs")
	flag.Parse()
	if err := run(*out, *level); err != nil {
		fmt.Fprintf(os.Stderr, "bootimage: %v\n", err)
		os.Exit(1)
	}
}

func run(out string, level int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	src, err := kernel.SourceRoot()
	if err != nil {
		return err
	}
	if out == "" {
		out = filepath.Join(src, "build", "bootimage")
	}
	kdir, err := kernel.DefaultCacheDir()
	if err != nil {
		return err
	}
	k, err := kernel.Ensure(ctx, kdir)
	if err != nil {
		return err
	}
	m, err := bootimage.Assemble(ctx, k, src, out, level)
	if err != nil {
		return err
	}
	fmt.Printf("boot image in %s: kernel %s\n  vmlinuz            %9d bytes\n  initramfs.cpio.zst %9d bytes (zstd -%d)\n  cmdline            %s\n",
		out, m.Kernel, m.Vmlinuz.Size, m.Initramfs.Size, level, m.Cmdline)
	return nil
}
