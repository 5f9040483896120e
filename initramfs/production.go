package initramfs

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/sedboot/sedboot/images/kernel"
)

// Agent is the boot agent's main package; it is the production image's
// /init (PID 1; see docs/design.md, "The agent is PID 1"). The same binary
// is sedctl when called by that name: the image's /bin/sedctl, for the
// recovery shell, is a symbolic link to it.
const Agent = "github.com/sedboot/sedboot/agent/cmd/sedboot-agent"

// SedctlPath is where the production image offers sedctl (a link to the
// agent's binary).
const SedctlPath = "bin/sedctl"

// Shell is u-root's shell, the recovery shell of the production image.
const Shell = "github.com/u-root/u-root/cmds/core/gosh"

// ShellTags are the build tags of the u-root commands: gosh's plain line
// interface ("goshsmall") suits a serial console, and its full-screen
// editor would pull in modules the image does not need.
const ShellTags = "goshsmall"

// CoreCommands are the u-root core tools the recovery shell offers, besides
// gosh: files, devices, mounts, processes, network and power.
var CoreCommands = []string{
	"cat", "chmod", "cp", "df", "dmesg", "echo", "find", "free", "grep", "head", "hexdump",
	"ip", "kill", "ln", "ls", "lsmod", "mkdir", "more", "mount", "mv", "poweroff", "ps", "pwd",
	"rm", "shutdown", "sleep", "sync", "tail", "umount", "uname", "wc", "cpio", "shasum", "strings",
	"tee", "touch",
}

// ProductionModules are the kernel modules the production image loads
// (with their dependencies): NVMe over TCP and the virtio NIC. NVMe, ext4
// and sed-opal are built into Debian's cloud kernel.
var ProductionModules = []string{"nvme-tcp", "virtio_net"}

// envMu serialises the process-wide GOFLAGS setting the u-root build
// reads.
var envMu sync.Mutex

// BuildProduction builds the production initramfs: the boot agent as
// /init (and as /bin/sedctl, a link to it), u-root's gosh (/bin/sh) and
// core tools in /bbin, and the kernel modules with their load order.
// u-root's init is in the busybox (the builder always includes it) but
// never runs. The image's compressed size is logged and returned.
func BuildProduction(ctx context.Context, k *kernel.Kernel, spec Spec) (*Image, error) {
	if k == nil {
		return nil, fmt.Errorf("build production initramfs: no kernel")
	}
	mods, err := k.Modules(ctx, ProductionModules...)
	if err != nil {
		return nil, fmt.Errorf("build production initramfs: %w", err)
	}
	work, err := os.MkdirTemp("", "sedboot-agent-")
	if err != nil {
		return nil, fmt.Errorf("build production initramfs: %w", err)
	}
	defer os.RemoveAll(work)
	bins, err := goBuild(ctx, spec.Dir, work, []string{Agent})
	if err != nil {
		return nil, fmt.Errorf("build production initramfs: %w", err)
	}
	cmds := []string{Shell}
	for _, c := range CoreCommands {
		cmds = append(cmds, "github.com/u-root/u-root/cmds/core/"+c)
	}
	spec.Init = ""
	spec.URoot = &URoot{
		Commands: cmds,
		// u-root's init never runs (the agent is /init); the uinit link
		// only distinguishes this busybox in the cache.
		Uinit: "/init",
		Shell: "gosh",
	}
	spec.Modules = mods
	spec.KernelVersion = k.Version
	spec.Files = append(spec.Files, File{Path: "init", Source: bins[0], Mode: 0o755}, File{Path: SedctlPath, Link: "/init"})

	envMu.Lock()
	defer envMu.Unlock()
	old, had := os.LookupEnv("GOFLAGS")
	os.Setenv("GOFLAGS", "-tags="+ShellTags)
	defer func() {
		if had {
			os.Setenv("GOFLAGS", old)
		} else {
			os.Unsetenv("GOFLAGS")
		}
	}()
	img, err := Build(ctx, spec)
	if err != nil {
		return nil, err
	}
	return img, nil
}
