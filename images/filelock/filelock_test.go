package filelock

import (
	"context"
	"errors"
	"github.com/sedboot/sedboot/internal/testenv"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestTryLockExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	a, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to open file descriptions, so a second open in
	// the same process contends like another process would.
	if _, err := TryLock(path); !errors.Is(err, ErrBusy) {
		t.Fatalf("second TryLock = %v, want ErrBusy", err)
	}
	a.Unlock()
	a.Unlock()
	b, err := TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after Unlock = %v", err)
	}
	b.Unlock()
}

func TestLockWaitsAndHonoursContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l")
	a, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Lock(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock on a held lock = %v, want the context's deadline", err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		a.Unlock()
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	b, err := Lock(ctx2, path)
	if err != nil {
		t.Fatalf("Lock after the holder let go = %v", err)
	}
	b.Unlock()
}

// A lock held by a process that dies is free again.
func TestLockDiesWithProcess(t *testing.T) {
	flock := testenv.LookPath(t, "flock", "util-linux")
	path := filepath.Join(t.TempDir(), "l")
	cmd := exec.Command(flock, "--close", path, "sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killGroup := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	defer killGroup()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := TryLock(path)
		if errors.Is(err, ErrBusy) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		l.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("flock(1) never took the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	killGroup()
	cmd.Wait()
	l, err := TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after the holder died = %v", err)
	}
	l.Unlock()
}
