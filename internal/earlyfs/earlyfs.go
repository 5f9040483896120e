// Package earlyfs prepares the file systems an initramfs agent needs and
// hands over to the real root.
//
// Ensure mounts /proc, /sys, /dev (devtmpfs), /run (tmpfs) and, when the
// kernel has configfs, /sys/kernel/config — each only if it is not already
// mounted (checked in the mount table), so running it after u-root's init
// or twice is harmless. WaitPath waits, bounded, for a device node or sysfs
// path. SwitchRoot moves the special mounts into the real root, makes it /
// and executes its init, like switch_root(8).
package earlyfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is one file system to have mounted.
type Mount struct {
	Source string
	Target string // absolute, relative to the Mounter's Root
	FSType string
	Flags  uintptr
	Data   string
	// Optional mounts are skipped (and reported) when the kernel does not
	// know FSType or the target directory cannot be created, e.g. configfs
	// before its module is loaded.
	Optional bool
}

// DefaultMounts returns what the boot agent needs: proc, sysfs, devtmpfs,
// a tmpfs on /run, and configfs (optional; on Debian's kernels configfs is
// a module, so call Ensure again after loading it).
func DefaultMounts() []Mount {
	const nse = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	return []Mount{
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: nse},
		{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: nse},
		{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
		{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755"},
		{Source: "configfs", Target: "/sys/kernel/config", FSType: "configfs", Flags: nse, Optional: true},
	}
}

// MountResult reports what Ensure did for one mount.
type MountResult struct {
	Target string `json:"target"`
	FSType string `json:"fstype"`
	// Action is "mounted", "present" (already mounted; FSType is then
	// what is mounted there) or "skipped" (optional; see Reason).
	Action   string        `json:"action"`
	Reason   string        `json:"reason,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Mounter mounts under Root. The zero value mounts under "/".
type Mounter struct {
	// Root prefixes every target; empty means "/". Tests use a scratch
	// directory in a private mount namespace.
	Root string
	// Logger gets one line per mount; nil means slog.Default().
	Logger *slog.Logger
}

// Ensure mounts the default set under "/" (see DefaultMounts).
func Ensure(ctx context.Context, log *slog.Logger) ([]MountResult, error) {
	m := Mounter{Logger: log}
	return m.Ensure(ctx, DefaultMounts())
}

// Ensure mounts each of mounts, in order, unless something is mounted at
// its target already. It checks ctx before each mount and stops at the
// first failure of a mount that is not optional.
func (mt *Mounter) Ensure(ctx context.Context, mounts []Mount) ([]MountResult, error) {
	log := mt.Logger
	if log == nil {
		log = slog.Default()
	}
	root := mt.Root
	if root == "" {
		root = "/"
	}
	var results []MountResult
	for _, m := range mounts {
		if err := ctx.Err(); err != nil {
			return results, fmt.Errorf("mount %s: %w", m.Target, err)
		}
		if !filepath.IsAbs(m.Target) {
			return results, fmt.Errorf("mount %s: target must be an absolute path", m.Target)
		}
		start := time.Now()
		target := filepath.Join(root, m.Target)
		r := MountResult{Target: target, FSType: m.FSType}

		mi, err := ReadMountInfo()
		switch {
		case err == nil:
			if cur, ok := findMount(mi, target); ok {
				r.Action, r.FSType = "present", cur.FSType
				if cur.FSType != m.FSType {
					log.Warn("mount point already has another file system", "target", target, "want", m.FSType, "have", cur.FSType)
				}
				r.Duration = time.Since(start)
				results = append(results, r)
				continue
			}
		case errors.Is(err, os.ErrNotExist) && m.FSType == "proc":
			// No /proc yet: nothing can tell us it is mounted; mount it.
		default:
			return results, fmt.Errorf("mount %s: cannot tell whether it is mounted (mount proc first): %w", target, err)
		}

		if m.Optional {
			if reason := unavailable(m.FSType, target); reason != "" {
				r.Action, r.Reason = "skipped", reason
				r.Duration = time.Since(start)
				log.Info("mount skipped", "target", target, "fstype", m.FSType, "reason", reason)
				results = append(results, r)
				continue
			}
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return results, fmt.Errorf("mount %s on %s: create mount point: %w", m.FSType, target, err)
		}
		if err := unix.Mount(m.Source, target, m.FSType, m.Flags, m.Data); err != nil {
			return results, fmt.Errorf("mount %s on %s: %w", m.FSType, target, err)
		}
		r.Action = "mounted"
		r.Duration = time.Since(start)
		log.Info("mounted", "target", target, "fstype", m.FSType, "duration", r.Duration.Round(time.Microsecond))
		results = append(results, r)
	}
	return results, nil
}

// unavailable says why an optional mount cannot be done now, or "".
func unavailable(fstype, target string) string {
	known, err := kernelHasFS(fstype)
	if err != nil {
		return "cannot read /proc/filesystems: " + err.Error()
	}
	if !known {
		return "kernel has no " + fstype + " file system (module not loaded?)"
	}
	if _, err := os.Stat(target); err != nil {
		// sysfs directories (like /sys/kernel/config) cannot be made.
		if err := os.MkdirAll(target, 0o755); err != nil {
			return "no mount point: " + err.Error()
		}
	}
	return ""
}

func kernelHasFS(fstype string) (bool, error) {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[len(fields)-1] == fstype {
			return true, nil
		}
	}
	return false, sc.Err()
}
