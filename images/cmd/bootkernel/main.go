// Command bootkernel fetches sedboot's pinned boot kernel (Debian's 6.12
// cloud kernel) into the build cache and prints where it is and which module
// files, in load order, a boot image needs.
//
//	bootkernel [-cache DIR] [-deb FILE] [-modules nvme-tcp,virtio_net]
//
// `make kernel` runs it before the tests, which never fetch anything.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sedboot/sedboot/images/kernel"
)

func main() {
	cache := flag.String("cache", "", "cache directory (default: build/kernel in the source tree)")
	deb := flag.String("deb", "", "use this .deb of "+kernel.Package+" instead of apt-get download")
	mods := flag.String("modules", "nvme-tcp,virtio_net", "comma-separated modules to resolve and decompress")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *cache, *deb, *mods); err != nil {
		slog.Error("bootkernel failed", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cache, deb, mods string) error {
	if cache == "" {
		var err error
		if cache, err = kernel.DefaultCacheDir(); err != nil {
			return err
		}
	}
	var k *kernel.Kernel
	var err error
	if deb != "" {
		k, err = kernel.EnsureFromDeb(ctx, cache, deb)
	} else {
		k, err = kernel.Ensure(ctx, cache)
	}
	if err != nil {
		return err
	}
	fmt.Printf("kernel %s\nvmlinuz %s\nboot %s\n", k.Version, k.VmlinuzPath, k.BootImage())
	var names []string
	for _, n := range strings.Split(mods, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	ms, err := k.Modules(ctx, names...)
	if err != nil {
		return err
	}
	for _, m := range ms {
		fmt.Printf("module %s %s\n", m.Name, m.Path)
	}
	return nil
}
