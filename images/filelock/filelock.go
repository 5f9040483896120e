// Package filelock takes advisory flock(2) locks on files, so that several
// processes (parallel test binaries, make) can share build caches and limit
// how many QEMU guests run at once. A lock dies with the process holding it.
package filelock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBusy is returned by TryLock when another holder has the lock.
var ErrBusy = errors.New("lock held by another process")

// pollInterval is how often Lock retries a busy lock.
const pollInterval = 100 * time.Millisecond

// Held is a held lock.
type Held struct {
	f *os.File
}

// TryLock takes an exclusive lock on path (creating the file) without
// waiting; it returns ErrBusy when someone else holds it.
func TryLock(path string) (*Held, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	switch {
	case err == nil:
		return &Held{f: f}, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, ErrBusy)
	default:
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
}

// Lock takes an exclusive lock on path, waiting for it until ctx is done.
func Lock(ctx context.Context, path string) (*Held, error) {
	for {
		l, err := TryLock(path)
		if !errors.Is(err, ErrBusy) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// Unlock releases the lock. It is safe to call more than once.
func (l *Held) Unlock() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
