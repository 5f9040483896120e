package earlyfs

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/testenv"
	"golang.org/x/sys/unix"
)

// roleEnv makes the test binary play a part in TestSwitchRoot instead of
// running tests: "switch" (the initramfs side) or "init" (the real init).
const roleEnv = "EARLYFS_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "switch":
		os.Exit(childSwitch())
	case "init":
		os.Exit(childInit())
	}
	os.Exit(m.Run())
}

func TestParseMountInfo(t *testing.T) {
	const in = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 master:2 - ext4 /dev/vda rw,discard
90 27 0:45 /sub /mnt/with\040space\134x rw - tmpfs my\040tmpfs rw,size=4k

`
	got, err := ParseMountInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []MountInfo{
		{ID: 22, ParentID: 27, Major: 0, Minor: 21, Root: "/", MountPoint: "/proc", Options: "rw,relatime", FSType: "proc", Source: "proc", SuperOptions: "rw"},
		{ID: 27, ParentID: 1, Major: 254, Minor: 0, Root: "/", MountPoint: "/", Options: "rw,relatime", FSType: "ext4", Source: "/dev/vda", SuperOptions: "rw,discard"},
		{ID: 90, ParentID: 27, Major: 0, Minor: 45, Root: "/sub", MountPoint: `/mnt/with space\x`, Options: "rw", FSType: "tmpfs", Source: "my tmpfs", SuperOptions: "rw,size=4k"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseMountInfo =\n%+v\nwant\n%+v", got, want)
	}
	for _, bad := range []string{
		"22 27 0:21 / /proc rw proc proc rw\n",
		"x 27 0:21 / /proc rw - proc proc rw\n",
		"22 27 021 / /proc rw - proc proc rw\n",
		"22 27 a:1 / /proc rw - proc proc rw\n",
		"22 27 0:21 / /proc rw - proc\n",
	} {
		if _, err := ParseMountInfo(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("ParseMountInfo(%q) error = %v, want one naming line 1", bad, err)
		}
	}
}

func TestReadMountInfoHasRoot(t *testing.T) {
	mi, err := ReadMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := findMount(mi, "/"); !ok {
		t.Errorf("no mount at / in %d mountinfo entries", len(mi))
	}
}

func TestWaitPath(t *testing.T) {
	dir := t.TempDir()
	late := filepath.Join(dir, "nvme1n1")
	go func() {
		time.Sleep(30 * time.Millisecond)
		_ = os.WriteFile(late, nil, 0o600)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	waited, err := WaitPath(ctx, late)
	if err != nil {
		t.Fatal(err)
	}
	if waited < 20*time.Millisecond {
		t.Errorf("WaitPath returned after %v, before the file was made", waited)
	}

	// Present at once.
	if waited, err := WaitPath(ctx, dir); err != nil || waited > time.Second {
		t.Errorf("WaitPath(existing) = %v, %v", waited, err)
	}

	// Never appears: bounded by ctx, error names the path.
	missing := filepath.Join(dir, "never")
	short, cancel2 := context.WithTimeout(context.Background(), 80*time.Millisecond)
	defer cancel2()
	start := time.Now()
	_, err = WaitPath(short, missing)
	if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitPath(missing) error = %v, want deadline error naming %s", err, missing)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("WaitPath(missing) took %v with an 80ms deadline", el)
	}
}

// inMountNS runs fn on a thread of its own in a new, private mount
// namespace; the thread is discarded afterwards, so nothing leaks to the
// host or other tests.
func inMountNS(t *testing.T, fn func() error) {
	t.Helper()
	type result struct {
		setup bool
		err   error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			done <- result{true, fmt.Errorf("unshare mount namespace: %w", err)}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- result{true, fmt.Errorf("make / private: %w", err)}
			return
		}
		done <- result{false, fn()}
	}()
	r := <-done
	if r.setup {
		testenv.Require(t, false, "a private mount namespace (run as root): "+r.err.Error())
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
}

func TestEnsure(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "root, to mount file systems")
	root := t.TempDir()
	inMountNS(t, func() error {
		mt := Mounter{Root: root}
		ctx := context.Background()
		first, err := mt.Ensure(ctx, DefaultMounts())
		if err != nil {
			return err
		}
		want := map[string]string{"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/run": "tmpfs"}
		mi, err := ReadMountInfo()
		if err != nil {
			return err
		}
		for target, fstype := range want {
			m, ok := findMount(mi, filepath.Join(root, target))
			if !ok || m.FSType != fstype {
				return fmt.Errorf("after Ensure: %s mounted=%v type %q, want %s", target, ok, m.FSType, fstype)
			}
		}
		for _, r := range first {
			switch {
			case want[strings.TrimPrefix(r.Target, root)] != "" && r.Action != "mounted":
				return fmt.Errorf("first Ensure: %s %s, want mounted", r.Target, r.Action)
			case r.FSType == "configfs":
				has, _ := kernelHasFS("configfs")
				if has != (r.Action == "mounted") || (!has && r.Reason == "") {
					return fmt.Errorf("configfs: kernel has it=%v, action %s (%s)", has, r.Action, r.Reason)
				}
			}
		}
		if _, err := os.Stat(filepath.Join(root, "proc/self/mountinfo")); err != nil {
			return fmt.Errorf("mounted proc is not usable: %w", err)
		}
		// Idempotent: nothing is mounted twice.
		second, err := mt.Ensure(ctx, DefaultMounts())
		if err != nil {
			return err
		}
		for _, r := range second {
			if r.Action == "mounted" {
				return fmt.Errorf("second Ensure mounted %s again", r.Target)
			}
		}
		mi2, err := ReadMountInfo()
		if err != nil {
			return err
		}
		if len(mi2) != len(mi) {
			return fmt.Errorf("mount table grew from %d to %d entries on the second Ensure", len(mi), len(mi2))
		}
		// Cancelled context: nothing happens.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := mt.Ensure(cctx, []Mount{{Source: "tmpfs", Target: "/x", FSType: "tmpfs"}}); !errors.Is(err, context.Canceled) {
			return fmt.Errorf("Ensure with cancelled context: %v", err)
		}
		if _, err := mt.Ensure(ctx, []Mount{{Source: "nosuchfs", Target: "/bad", FSType: "sedboot-nosuchfs"}}); err == nil || !strings.Contains(err.Error(), "/bad") {
			return fmt.Errorf("Ensure of an unknown fs: error %v, want one naming the target", err)
		}
		return nil
	})
}

func TestCheckInit(t *testing.T) {
	root := t.TempDir()
	mk := func(p string, mode os.FileMode) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, full); err != nil {
			t.Fatal(err)
		}
	}
	mk("/lib/systemd/systemd", 0o755)
	mk("/bin/noexec", 0o644)
	link("/lib/systemd/systemd", "/sbin/init")        // absolute: resolved inside root
	link("../lib/systemd/systemd", "/usr/sbin/init2") // relative
	link("/sbin/loop2", "/sbin/loop1")
	link("/sbin/loop1", "/sbin/loop2")
	link("/nonexistent-on-host-and-root", "/sbin/dangling")
	for _, tc := range []struct{ init, wantErr string }{
		{"/lib/systemd/systemd", ""},
		{"/sbin/init", ""},
		{"/usr/sbin/init2", "no such file"}, // ../lib from /usr/sbin is /usr/lib
		{"/bin/noexec", "not executable"},
		{"/lib", "not a regular file"},
		{"/missing", "no such file"},
		{"/sbin/loop1", "too many symbolic links"},
		{"/sbin/dangling", "no such file"},
	} {
		err := checkInit(root, tc.init)
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("checkInit(%s) = %v, want %q", tc.init, err, tc.wantErr)
		}
	}
}

func TestPlanSwitchRefuses(t *testing.T) {
	root := t.TempDir()
	for _, tc := range []struct {
		cfg     SwitchRootConfig
		wantErr string
	}{
		{SwitchRootConfig{NewRoot: "relative", Init: "/sbin/init"}, "absolute path"},
		{SwitchRootConfig{NewRoot: "/", Init: "/sbin/init"}, "already /"},
		{SwitchRootConfig{NewRoot: root, Init: "sbin/init"}, "absolute path inside"},
		{SwitchRootConfig{NewRoot: root, Init: "/sbin/init"}, "not a mount point"},
	} {
		_, err := planSwitch(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("planSwitch(%+v) = %v, want %q", tc.cfg, err, tc.wantErr)
		}
	}
	// Through the exported entry point too: a refused plan changes nothing.
	err := MoveMountsAndSwitchRoot(context.Background(), root, "/sbin/init", nil)
	if err == nil || !strings.Contains(err.Error(), root) {
		t.Errorf("MoveMountsAndSwitchRoot(non-mount) = %v, want an error naming %s", err, root)
	}
}

func TestCheckFreeable(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "root, to mount file systems")
	disk := t.TempDir()
	inMountNS(t, func() error {
		tmp := filepath.Join(disk, "tmp")
		other := filepath.Join(disk, "other")
		for _, d := range []string{tmp, other} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return err
			}
			if err := unix.Mount("tmpfs", d, "tmpfs", 0, ""); err != nil {
				return err
			}
		}
		if err := os.Mkdir(filepath.Join(tmp, "sub"), 0o755); err != nil {
			return err
		}
		if _, err := checkFreeable(tmp, other); err != nil {
			return fmt.Errorf("tmpfs old root, new root elsewhere: %v", err)
		}
		if _, err := checkFreeable(tmp, filepath.Join(tmp, "sub")); err == nil || !strings.Contains(err.Error(), "same file system") {
			return fmt.Errorf("new root on the old root's fs: %v, want refusal", err)
		}
		var sfs unix.Statfs_t
		if err := unix.Statfs(disk, &sfs); err != nil {
			return err
		}
		if t := uint32(sfs.Type); t != unix.TMPFS_MAGIC && t != unix.RAMFS_MAGIC {
			if _, err := checkFreeable(disk, other); err == nil || !strings.Contains(err.Error(), "not a ramfs or tmpfs") {
				return fmt.Errorf("non-tmpfs old root: %v, want refusal", err)
			}
		}
		return nil
	})
}

// TestSwitchRoot runs the whole hand-over in a child process with a
// private mount namespace: the child chroots into a tmpfs "initramfs" with
// proc, sysfs and tmpfs mounts, mounts a tmpfs "real root" holding a copy
// of this test binary as /sbin/init (behind a symlink), and calls
// SwitchRoot with FreeInitramfs. The exec'd copy reports what it sees.
func TestSwitchRoot(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "root, for mount namespaces and chroot")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ef, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	static := true
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			static = false
		}
	}
	ef.Close()
	testenv.Require(t, static, "a statically linked test binary (CGO_ENABLED=0) to run as init in an empty root")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), roleEnv+"=switch", "EARLYFS_TEST_DIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("init saw:\n%s", stdout.String())

	for _, want := range []string{
		"args=[/sbin/init arg1]",
		"cwd=/",
		"marker=present",
		"junk=absent",
		"mount /=tmpfs",
		"mount /proc=proc",
		"mount /sys=sysfs",
		"mount /dev=tmpfs",
		"mount /run=tmpfs",
	} {
		if !strings.Contains(stdout.String(), want+"\n") {
			t.Errorf("init output lacks %q", want)
		}
	}

	var freed map[string]any
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "switch_root: freed initramfs" {
			freed = rec
		}
	}
	if freed == nil {
		t.Fatalf("no 'freed initramfs' log line in:\n%s", stderr.String())
	}
	// The child made junk/{a,b} and junk/sub/c (3 files, 15 bytes) and the
	// directories junk, junk/sub, dev, proc, sys, run and new.
	if freed["files"] != float64(3) || freed["dirs"] != float64(7) || freed["bytes"] != float64(15) || freed["kept"] != float64(0) {
		t.Errorf("freed = %v, want files=3 dirs=7 bytes=15 kept=0", freed)
	}
}

// childSwitch is the initramfs side of TestSwitchRoot (in its own mount
// namespace, made private by os/exec).
func childSwitch() int {
	fail := func(step string, err error) int {
		fmt.Fprintf(os.Stderr, "child %s: %v\n", step, err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		return fail("read own binary", err)
	}
	old := filepath.Join(os.Getenv("EARLYFS_TEST_DIR"), "old")
	if err := os.Mkdir(old, 0o755); err != nil {
		return fail("mkdir", err)
	}
	if err := unix.Mount("tmpfs", old, "tmpfs", 0, "mode=0755"); err != nil {
		return fail("mount old root", err)
	}
	mt := Mounter{Root: old, Logger: log}
	if _, err := mt.Ensure(ctx, []Mount{
		{Source: "proc", Target: "/proc", FSType: "proc"},
		{Source: "sysfs", Target: "/sys", FSType: "sysfs"},
		{Source: "tmpfs", Target: "/dev", FSType: "tmpfs"},
		{Source: "tmpfs", Target: "/run", FSType: "tmpfs"},
	}); err != nil {
		return fail("ensure", err)
	}
	for p, content := range map[string]string{"junk/a": "aaaaa", "junk/b": "bbbbb", "junk/sub/c": "ccccc"} {
		full := filepath.Join(old, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fail("mkdir junk", err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			return fail("write junk", err)
		}
	}
	if err := unix.Chdir(old); err != nil {
		return fail("chdir", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fail("chroot", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fail("chdir /", err)
	}
	if err := os.Mkdir("/new", 0o755); err != nil {
		return fail("mkdir /new", err)
	}
	if err := unix.Mount("tmpfs", "/new", "tmpfs", 0, "mode=0755"); err != nil {
		return fail("mount new root", err)
	}
	if err := os.MkdirAll("/new/sbin", 0o755); err != nil {
		return fail("mkdir sbin", err)
	}
	if err := os.Mkdir("/new/proc", 0o755); err != nil { // the rest SwitchRoot makes
		return fail("mkdir proc", err)
	}
	if err := os.WriteFile("/new/sbin/sedboot-test-init", self, 0o755); err != nil {
		return fail("write init", err)
	}
	if err := os.Symlink("/sbin/sedboot-test-init", "/new/sbin/init"); err != nil {
		return fail("symlink init", err)
	}
	if err := os.WriteFile("/new/marker", []byte("real root"), 0o644); err != nil {
		return fail("write marker", err)
	}
	err = SwitchRoot(ctx, SwitchRootConfig{
		NewRoot:       "/new",
		Init:          "/sbin/init",
		Args:          []string{"/sbin/init", "arg1"},
		Env:           []string{roleEnv + "=init"},
		FreeInitramfs: true,
		Logger:        log,
	})
	return fail("SwitchRoot returned", err)
}

// childInit is the "real init" of TestSwitchRoot: it prints what it sees.
func childInit() int {
	fmt.Printf("args=%v\n", os.Args)
	wd, _ := os.Getwd()
	fmt.Printf("cwd=%s\n", wd)
	if _, err := os.Stat("/marker"); err == nil {
		fmt.Println("marker=present")
	}
	if _, err := os.Stat("/junk"); errors.Is(err, os.ErrNotExist) {
		fmt.Println("junk=absent")
	}
	mi, err := ReadMountInfo()
	if err != nil {
		fmt.Println("mountinfo error:", err)
		return 1
	}
	for _, p := range []string{"/", "/proc", "/sys", "/dev", "/run"} {
		if m, ok := findMount(mi, p); ok {
			fmt.Printf("mount %s=%s\n", p, m.FSType)
		}
	}
	return 0
}
