// Package steps runs the boot as an explicit sequence of named steps, each
// bounded by its own deadline, and reports each on the console as it goes.
// A failing step stops the sequence; its error may carry a hint telling
// the technician what to check.
package steps

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/sedboot/sedboot/agent/bootrecord"
)

// Step is one boot step.
type Step struct {
	// Name is short and lower-case ("network", "unlock drives").
	Name string
	// Deadline bounds the step; zero means only the parent context.
	Deadline time.Duration
	// DeadlineFunc, when set, is called just before the step runs and
	// replaces Deadline: for deadlines that come from a configuration an
	// earlier step reads.
	DeadlineFunc func() time.Duration
	// Run does the work; it must return when ctx ends.
	Run func(ctx context.Context) error
}

// Runner runs steps and reports them.
type Runner struct {
	// Console receives one progress line per step (and failure details).
	Console io.Writer
	// Log receives structured events (e.g. to /dev/kmsg).
	Log *slog.Logger
	// Record, if set, receives each step's outcome.
	Record *bootrecord.Record
	// Now returns the time (default time.Now).
	Now func() time.Time
}

// Failure describes the step that stopped the boot.
type Failure struct {
	Step string
	Err  error
}

func (f *Failure) Error() string { return fmt.Sprintf("step %q: %v", f.Step, f.Err) }

// Unwrap returns the step's error.
func (f *Failure) Unwrap() error { return f.Err }

type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() }
func (h *hinted) Unwrap() error { return h.err }

type skipped struct{ reason string }

func (s *skipped) Error() string { return "skipped: " + s.reason }

// Skip is returned by a step's Run when the step has nothing to do in this
// configuration; the runner reports it as skipped, with the reason, and
// goes on.
func Skip(reason string) error { return &skipped{reason: reason} }

// WithHint attaches advice for the technician ("check that ...") to err.
func WithHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &hinted{err: err, hint: hint}
}

// Hint returns the innermost-first hints attached to err, joined.
func Hint(err error) string {
	var hints []string
	for err != nil {
		if h, ok := err.(*hinted); ok {
			hints = append(hints, h.hint)
		}
		err = errors.Unwrap(err)
	}
	return strings.Join(hints, "; ")
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Runner) log() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Printf writes one console line prefixed with "sedboot: ".
func (r *Runner) Printf(format string, args ...any) {
	if r.Console != nil {
		fmt.Fprintf(r.Console, "sedboot: "+format+"\n", args...)
	}
}

// Run runs steps in order until one fails or ctx ends. It returns a
// *Failure naming the step that failed.
func (r *Runner) Run(ctx context.Context, steps []Step) error {
	width := 0
	for _, s := range steps {
		width = max(width, len(s.Name))
	}
	for i, s := range steps {
		start := r.now()
		err := r.runOne(ctx, s)
		d := r.now().Sub(start)
		label := fmt.Sprintf("[%d/%d] %-*s", i+1, len(steps), width, s.Name)
		rec := bootrecord.Step{Name: s.Name, Started: start, Duration: d, Result: "ok"}
		var sk *skipped
		if errors.As(err, &sk) {
			r.Printf("%s  skipped (%s)", label, sk.reason)
			r.log().Info("boot step skipped", "step", s.Name, "reason", sk.reason)
			if r.Record != nil {
				rec.Result, rec.Error = "skipped", sk.reason
				r.Record.AddStep(rec)
			}
			continue
		}
		if err == nil {
			r.Printf("%s  ok (%s)", label, round(d))
			r.log().Info("boot step done", "step", s.Name, "duration", d)
			if r.Record != nil {
				r.Record.AddStep(rec)
			}
			continue
		}
		rec.Result, rec.Error = "failed", err.Error()
		if r.Record != nil {
			r.Record.AddStep(rec)
		}
		r.Printf("%s  FAILED after %s", label, round(d))
		r.Printf("  what:  %s", s.Name)
		r.Printf("  why:   %v", err)
		if h := Hint(err); h != "" {
			r.Printf("  check: %s", h)
		}
		r.log().Error("boot step failed", "step", s.Name, "duration", d, "err", err)
		return &Failure{Step: s.Name, Err: err}
	}
	return nil
}

func (r *Runner) runOne(ctx context.Context, s Step) (err error) {
	if err := ctx.Err(); err != nil {
		return WithHint(fmt.Errorf("boot deadline passed before this step: %w", err), "the total boot deadline (deadlines.total) is long enough for every step")
	}
	if s.DeadlineFunc != nil {
		s.Deadline = s.DeadlineFunc()
	}
	sctx, cancel := ctx, context.CancelFunc(func() {})
	if s.Deadline > 0 {
		sctx, cancel = context.WithTimeout(ctx, s.Deadline)
	}
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("internal error: %v", p)
		}
	}()
	err = s.Run(sctx)
	if err != nil && errors.Is(err, context.DeadlineExceeded) && s.Deadline > 0 && sctx.Err() != nil && ctx.Err() == nil {
		err = WithHint(fmt.Errorf("%w (step deadline %s)", err, s.Deadline), "raise this step's deadline on the boot medium if the hardware is slow")
	}
	return err
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Microsecond)
}
