package qemu

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sedboot/sedboot/images/filelock"
)

// MaxGuests is how many guests may run at once on this host, across all
// processes (go test runs packages in parallel). Under TCG each guest keeps
// a core busy; the machines this project targets have two. The environment
// variable SEDBOOT_QEMU_MAX_GUESTS overrides it.
const MaxGuests = 2

// SlotDir is the well-known directory of the guest slot lock files.
func SlotDir() string {
	return filepath.Join(os.TempDir(), "sedboot-qemu-slots")
}

func maxGuests() int {
	if n, err := strconv.Atoi(os.Getenv("SEDBOOT_QEMU_MAX_GUESTS")); err == nil && n > 0 {
		return n
	}
	return MaxGuests
}

// reserveSlots takes n guest slots, all or none, waiting while ctx allows.
// Taking them all at once (and giving back a partial set) means callers
// that each need several never deadlock holding some. Waiters queue on a
// gate lock, so a caller that needs two is not starved by a stream of
// callers that need one: while it waits at the head, nobody else takes a
// slot that frees up.
func reserveSlots(ctx context.Context, dir string, limit, n int) ([]*filelock.Held, error) {
	if n > limit {
		return nil, fmt.Errorf("%d guests at once requested, but at most %d may run on this host (SEDBOOT_QEMU_MAX_GUESTS)", n, limit)
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("guest slots: %w", err)
	}
	os.Chmod(dir, 0o777|os.ModeSticky) // shared by every user's tests; best effort
	waited := time.Now()
	gate, err := filelock.Lock(ctx, filepath.Join(dir, "gate"))
	if err != nil {
		return nil, fmt.Errorf("waiting for the guest slot queue: %w", err)
	}
	defer gate.Unlock()
	for attempt := 0; ; attempt++ {
		var held []*filelock.Held
		for i := 0; i < limit && len(held) < n; i++ {
			l, err := filelock.TryLock(filepath.Join(dir, "slot-"+strconv.Itoa(i)))
			if errors.Is(err, filelock.ErrBusy) {
				continue
			}
			if err != nil {
				release(held)
				return nil, fmt.Errorf("guest slots: %w", err)
			}
			held = append(held, l)
		}
		if len(held) == n {
			return held, nil
		}
		release(held)
		// Back off with jitter so two waiters do not keep taking one
		// slot each in lock step.
		delay := time.Duration(100+rand.IntN(200)) * time.Millisecond
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting %s for %d free guest slot(s) in %s: %w", time.Since(waited).Round(time.Second), n, dir, ctx.Err())
		case <-time.After(delay):
		}
	}
}

func release(held []*filelock.Held) {
	for _, l := range held {
		l.Unlock()
	}
}
