package earlyfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// DefaultWaitLimit bounds WaitPath when ctx has no deadline of its own.
const DefaultWaitLimit = 30 * time.Second

// Poll intervals of WaitPath: the first check is immediate, then the
// interval doubles from pollMin up to pollMax (device nodes usually appear
// within milliseconds of a driver binding).
const (
	pollMin = time.Millisecond
	pollMax = 50 * time.Millisecond
)

// WaitPath waits until path exists (a device node created by devtmpfs, a
// sysfs attribute, a file) and returns how long that took. It polls with
// a growing interval, and gives up when ctx ends or, if ctx has no
// deadline, after DefaultWaitLimit; the error names the path and the time
// waited. Errors other than "does not exist" (e.g. permission) are
// returned at once.
func WaitPath(ctx context.Context, path string) (time.Duration, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultWaitLimit)
		defer cancel()
	}
	start := time.Now()
	interval := pollMin
	var timer *time.Timer
	for {
		_, err := os.Stat(path)
		if err == nil {
			return time.Since(start), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return time.Since(start), fmt.Errorf("wait for %s: %w", path, err)
		}
		if timer == nil {
			timer = time.NewTimer(interval)
			defer timer.Stop()
		} else {
			timer.Reset(interval)
		}
		select {
		case <-ctx.Done():
			waited := time.Since(start)
			return waited, fmt.Errorf("wait for %s: still missing after %v: %w", path, waited.Round(time.Millisecond), ctx.Err())
		case <-timer.C:
		}
		if interval *= 2; interval > pollMax {
			interval = pollMax
		}
	}
}
