package initramfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"

	"github.com/sedboot/sedboot/images/filelock"
)

// urootArchive returns the (cached) cpio holding u-root's busybox, its
// command links, /init and the uinit and shell links, building it when the
// cache has none for these inputs. The caller closes the file.
func urootArchive(ctx context.Context, spec Spec, cacheDir string, log *slog.Logger) (*os.File, error) {
	u := spec.URoot
	cmds := append([]string{URootInit}, u.Commands...)
	slices.Sort(cmds)
	cmds = slices.Compact(cmds)

	uinit := u.Uinit
	if !strings.Contains(uinit, "/") {
		for _, p := range spec.Programs {
			if path.Base(p) == uinit {
				uinit = "/bin/" + uinit
			}
		}
	}

	key, err := urootKey(ctx, spec.Dir, cmds, uinit, u)
	if err != nil {
		return nil, fmt.Errorf("u-root: %w", err)
	}
	file := filepath.Join(cacheDir, "uroot-"+key[:16]+".cpio")
	if f, err := os.Open(file); err == nil {
		touch(file)
		return f, nil
	}
	lock, err := filelock.Lock(ctx, file+".lock")
	if err != nil {
		return nil, fmt.Errorf("u-root: %w", err)
	}
	defer lock.Unlock()
	if f, err := os.Open(file); err == nil {
		return f, nil // built by another process while we waited
	}

	start := time.Now()
	log.Info("initramfs: building u-root busybox (tens of seconds; cached afterwards)", "commands", len(cmds))
	tmp, err := os.MkdirTemp(cacheDir, ".uroot-")
	if err != nil {
		return nil, fmt.Errorf("u-root: %w", err)
	}
	defer os.RemoveAll(tmp)
	dir := spec.Dir
	if dir == "" {
		if dir, err = os.Getwd(); err != nil {
			return nil, fmt.Errorf("u-root: %w", err)
		}
	}
	env := golang.Default(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH("amd64"),
		golang.WithWorkingDir(dir), golang.WithBuildTag(u.Tags...))
	out := filepath.Join(tmp, "uroot.cpio")
	mods := []uimage.Modifier{
		uimage.WithReplaceEnv(env),
		uimage.WithTempDir(tmp),
		uimage.WithCPIOOutput(out),
		uimage.WithBusyboxCommands(cmds...),
		uimage.WithInit("init"),
		uimage.WithUinit(uinit, u.UinitArgs...),
		uimage.WithSkipLDD(),
	}
	if u.Shell != "" {
		mods = append(mods, uimage.WithShell(u.Shell))
	}
	l := llog.New(slog.LevelInfo, func(format string, v ...any) {
		log.Debug("u-root: " + strings.TrimSpace(fmt.Sprintf(format, v...)))
	})
	// uimage cannot be cancelled; it is bounded by the go build it runs.
	done := make(chan error, 1)
	go func() { done <- uimage.Create(l, mods...) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("u-root: %w", ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("u-root build of %s: %w", strings.Join(cmds, " "), err)
	}
	if err := os.Rename(out, file); err != nil {
		return nil, fmt.Errorf("u-root: %w", err)
	}
	log.Info("initramfs: u-root busybox built", "elapsed", time.Since(start).Round(time.Millisecond), "cache", file)
	return os.Open(file)
}

// urootKey hashes everything the u-root archive depends on: the toolchain,
// the module's requirements, and the build's settings (GOFLAGS included).
func urootKey(ctx context.Context, dir string, cmds []string, uinit string, u *URoot) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "env", "GOVERSION", "GOMOD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || lines[1] == "" || lines[1] == os.DevNull {
		return "", fmt.Errorf("directory %q is not inside a Go module", dir)
	}
	h := sha256.New()
	fmt.Fprintf(h, "go %s\ngoflags %q\ncmds %q\nuinit %q %q\nshell %q\ntags %q\n",
		lines[0], os.Getenv("GOFLAGS"), cmds, uinit, u.UinitArgs, u.Shell, u.Tags)
	for _, f := range []string{lines[1], strings.TrimSuffix(lines[1], ".mod") + ".sum"} {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
