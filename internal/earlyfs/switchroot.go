package earlyfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// specialMounts are moved from the initramfs into the new root by
// SwitchRoot, when they are mount points.
var specialMounts = [...]string{"/dev", "/proc", "/sys", "/run"}

// SwitchRootConfig describes the hand-over to the real root.
type SwitchRootConfig struct {
	// NewRoot is the mounted real root file system, e.g. /newroot. It
	// must be a mount point.
	NewRoot string
	// Init is the program to execute, as a path inside NewRoot, e.g.
	// /sbin/init. Symbolic links are resolved inside NewRoot.
	Init string
	// Args is init's argument vector; nil means []string{Init}.
	Args []string
	// Env is init's environment; nil means this process's environment.
	Env []string
	// FreeInitramfs deletes the old root's contents after the switch, to
	// return its memory (as switch_root(8) does). It is refused unless the
	// old root is a ramfs or tmpfs on another device than NewRoot, and it
	// never crosses into another file system.
	FreeInitramfs bool
	// Logger gets a line per step; nil means slog.Default().
	Logger *slog.Logger
}

// MoveMountsAndSwitchRoot moves /dev, /proc, /sys and /run into newRoot,
// makes newRoot the root (mount --move newRoot /, chroot .) and executes
// init with args, keeping the initramfs contents. It returns only on
// failure. See SwitchRoot.
func MoveMountsAndSwitchRoot(ctx context.Context, newRoot, init string, args []string) error {
	return SwitchRoot(ctx, SwitchRootConfig{NewRoot: newRoot, Init: init, Args: args})
}

// SwitchRoot hands the system over to the real root. Every check (new root
// is a mount point, init exists and is executable inside it, mount point
// directories exist or can be made, the old root may be freed) happens
// before anything changes; a failure while moving mounts moves the
// already-moved ones back. Once the new root is /, there is no way back:
// a failure to execute init is returned but the process stays in the new
// root. On success it does not return.
func SwitchRoot(ctx context.Context, cfg SwitchRootConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("switch_root: %w", err)
	}
	p, err := planSwitch(cfg)
	if err != nil {
		return fmt.Errorf("switch_root to %s: %w", cfg.NewRoot, err)
	}
	start := time.Now()

	var oldRoot *os.File
	if cfg.FreeInitramfs {
		if oldRoot, err = os.Open("/"); err != nil {
			return fmt.Errorf("switch_root: open old root: %w", err)
		}
		defer oldRoot.Close()
	}

	var moved []string
	undo := func() {
		for i := len(moved) - 1; i >= 0; i-- {
			src := filepath.Join(p.newRoot, moved[i])
			if err := unix.Mount(src, moved[i], "", unix.MS_MOVE, ""); err != nil {
				log.Error("switch_root: cannot move mount back", "from", src, "to", moved[i], "err", err)
			}
		}
	}
	for _, m := range p.move {
		dst := filepath.Join(p.newRoot, m)
		if err := unix.Mount(m, dst, "", unix.MS_MOVE, ""); err != nil {
			undo()
			return fmt.Errorf("switch_root: move %s to %s: %w", m, dst, err)
		}
		moved = append(moved, m)
		log.Debug("switch_root: moved mount", "from", m, "to", dst)
	}
	if err := unix.Chdir(p.newRoot); err != nil {
		undo()
		return fmt.Errorf("switch_root: chdir %s: %w", p.newRoot, err)
	}
	if err := unix.Mount(p.newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		_ = unix.Chdir("/")
		undo()
		return fmt.Errorf("switch_root: move %s to /: %w", p.newRoot, err)
	}
	// From here on the new root is mounted on /; there is no way back.
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch_root: chroot %s (new root already moved to /): %w", p.newRoot, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch_root: chdir / in new root: %w", err)
	}
	log.Info("switch_root: new root in place", "root", p.newRoot, "moved", moved, "duration", time.Since(start).Round(time.Microsecond))

	if oldRoot != nil {
		st := freeStats{}
		freeDir(int(oldRoot.Fd()), p.oldDev, 0, &st, log)
		log.Info("switch_root: freed initramfs", "files", st.files, "dirs", st.dirs, "bytes", st.bytes, "kept", st.kept)
	}

	log.Info("switch_root: executing init", "init", cfg.Init)
	if err := unix.Exec(p.init, p.args, p.env); err != nil {
		return fmt.Errorf("switch_root: exec %s in new root: %w", cfg.Init, err)
	}
	return nil
}

type switchPlan struct {
	newRoot string
	init    string // path to exec after chroot (inside the new root)
	args    []string
	env     []string
	move    []string
	oldDev  uint64
}

// planSwitch checks everything that can be checked before the switch and
// makes the mount point directories in the new root.
func planSwitch(cfg SwitchRootConfig) (*switchPlan, error) {
	if cfg.NewRoot == "" || !filepath.IsAbs(cfg.NewRoot) {
		return nil, fmt.Errorf("new root %q must be an absolute path", cfg.NewRoot)
	}
	newRoot := filepath.Clean(cfg.NewRoot)
	if newRoot == "/" {
		return nil, errors.New("new root is already /")
	}
	if cfg.Init == "" || !filepath.IsAbs(cfg.Init) {
		return nil, fmt.Errorf("init %q must be an absolute path inside the new root", cfg.Init)
	}
	mi, err := ReadMountInfo()
	if err != nil {
		return nil, err
	}
	if _, ok := findMount(mi, newRoot); !ok {
		return nil, fmt.Errorf("%s is not a mount point (mount the real root there first)", newRoot)
	}
	if err := checkInit(newRoot, cfg.Init); err != nil {
		return nil, err
	}
	p := &switchPlan{newRoot: newRoot, init: cfg.Init, args: cfg.Args, env: cfg.Env}
	if p.args == nil {
		p.args = []string{cfg.Init}
	}
	if p.env == nil {
		p.env = os.Environ()
	}
	for _, m := range specialMounts {
		if _, ok := findMount(mi, m); !ok {
			continue
		}
		dst := filepath.Join(newRoot, m)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return nil, fmt.Errorf("mount point for %s in new root: %w", m, err)
		}
		p.move = append(p.move, m)
	}
	if cfg.FreeInitramfs {
		dev, err := checkFreeable("/", newRoot)
		if err != nil {
			return nil, err
		}
		p.oldDev = dev
	}
	return p, nil
}

// checkInit resolves init inside newRoot (following symbolic links as the
// new root will see them) and checks it is an executable regular file.
func checkInit(newRoot, init string) error {
	p := init
	for hops := 0; ; hops++ {
		if hops > 40 {
			return fmt.Errorf("init %s: too many symbolic links", init)
		}
		full := filepath.Join(newRoot, p)
		fi, err := os.Lstat(full)
		if err != nil {
			return fmt.Errorf("init %s in new root: %w", init, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			t, err := os.Readlink(full)
			if err != nil {
				return fmt.Errorf("init %s in new root: %w", init, err)
			}
			if !filepath.IsAbs(t) {
				t = filepath.Join(filepath.Dir(p), t)
			}
			p = filepath.Clean("/" + t)
			continue
		}
		// Intermediate directory symlinks are followed by the host here;
		// Lstat of the final component is what matters for the check.
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("init %s in new root: not a regular file (%v)", init, fi.Mode().Type())
		}
		if fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("init %s in new root: not executable (mode %v)", init, fi.Mode().Perm())
		}
		return nil
	}
}

// checkFreeable allows deleting the contents of oldRoot only when it is an
// initramfs (ramfs or tmpfs) and newRoot lives on another device. It
// returns oldRoot's device.
func checkFreeable(oldRoot, newRoot string) (uint64, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(oldRoot, &sfs); err != nil {
		return 0, fmt.Errorf("free initramfs: statfs %s: %w", oldRoot, err)
	}
	if t := uint32(sfs.Type); t != unix.RAMFS_MAGIC && t != unix.TMPFS_MAGIC {
		return 0, fmt.Errorf("free initramfs: refusing to delete %s: it is not a ramfs or tmpfs (file system magic %#x)", oldRoot, t)
	}
	var o, n unix.Stat_t
	if err := unix.Stat(oldRoot, &o); err != nil {
		return 0, fmt.Errorf("free initramfs: stat %s: %w", oldRoot, err)
	}
	if err := unix.Stat(newRoot, &n); err != nil {
		return 0, fmt.Errorf("free initramfs: stat %s: %w", newRoot, err)
	}
	if o.Dev == n.Dev {
		return 0, fmt.Errorf("free initramfs: refusing: new root %s is on the same file system as %s", newRoot, oldRoot)
	}
	return o.Dev, nil
}

type freeStats struct {
	files, dirs, kept int
	bytes             int64
}

// maxFreeDepth bounds the recursion of freeDir.
const maxFreeDepth = 64

// freeDir deletes what it can below the directory fd, staying on device
// dev and never following symbolic links. Failures are counted as kept and
// logged at debug level: freeing memory is best effort.
func freeDir(fd int, dev uint64, depth int, st *freeStats, log *slog.Logger) {
	dup, err := unix.Dup(fd)
	if err != nil {
		st.kept++
		return
	}
	dir := os.NewFile(uintptr(dup), "old-root")
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		log.Debug("switch_root: read old root directory", "err", err)
		st.kept++
		return
	}
	for _, name := range names {
		var s unix.Stat_t
		if err := unix.Fstatat(fd, name, &s, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			st.kept++
			continue
		}
		if uint64(s.Dev) != dev {
			st.kept++ // another file system mounted here: leave it alone
			continue
		}
		if s.Mode&unix.S_IFMT == unix.S_IFDIR {
			if depth >= maxFreeDepth {
				st.kept++
				continue
			}
			child, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				st.kept++
				continue
			}
			var cs unix.Stat_t
			if err := unix.Fstat(child, &cs); err != nil || uint64(cs.Dev) != dev {
				unix.Close(child) // a mount point: its root has another device
				st.kept++
				continue
			}
			freeDir(child, dev, depth+1, st, log)
			unix.Close(child)
			if err := unix.Unlinkat(fd, name, unix.AT_REMOVEDIR); err != nil {
				st.kept++
				continue
			}
			st.dirs++
			continue
		}
		if err := unix.Unlinkat(fd, name, 0); err != nil {
			log.Debug("switch_root: keep old root entry", "name", name, "err", err)
			st.kept++
			continue
		}
		st.files++
		st.bytes += s.Size
	}
}
