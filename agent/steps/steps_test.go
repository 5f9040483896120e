package steps

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sedboot/sedboot/agent/bootrecord"
)

func TestRunReportsAndStopsAtFailure(t *testing.T) {
	var out bytes.Buffer
	rec := bootrecord.New(time.Now())
	r := &Runner{Console: &out, Record: rec}
	var ran []string
	step := func(name string, err error) Step {
		return Step{Name: name, Run: func(context.Context) error { ran = append(ran, name); return err }}
	}
	boom := WithHint(errors.New("kms0: connection refused"), "the key server is running")
	err := r.Run(context.Background(), []Step{step("medium", nil), step("keys", boom), step("unlock", nil)})
	var f *Failure
	if !errors.As(err, &f) || f.Step != "keys" || !errors.Is(err, boom) {
		t.Fatalf("got %v, want a Failure of step keys wrapping the step error", err)
	}
	if strings.Join(ran, ",") != "medium,keys" {
		t.Fatalf("ran %v: a step after the failure ran", ran)
	}
	s := out.String()
	for _, want := range []string{"[1/3] medium  ok", "[2/3] keys    FAILED", "why:   kms0: connection refused", "check: the key server is running"} {
		if !strings.Contains(s, want) {
			t.Errorf("console lacks %q:\n%s", want, s)
		}
	}
	if len(rec.Steps) != 2 || rec.Steps[1].Result != "failed" {
		t.Fatalf("record steps: %+v", rec.Steps)
	}
}

func TestStepDeadline(t *testing.T) {
	r := &Runner{}
	err := r.Run(context.Background(), []Step{{Name: "network", Deadline: 20 * time.Millisecond,
		Run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(Hint(err), "deadline") {
		t.Fatalf("got %v (hint %q)", err, Hint(err))
	}
}

func TestTotalDeadlineAndPanic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &Runner{}
	if err := r.Run(ctx, []Step{{Name: "x", Run: func(context.Context) error { t.Fatal("ran"); return nil }}}); err == nil {
		t.Fatal("step ran after the total deadline")
	}
	err := r.Run(context.Background(), []Step{{Name: "p", Run: func(context.Context) error { panic("bug") }}})
	if err == nil || !strings.Contains(err.Error(), "internal error: bug") {
		t.Fatalf("panic not turned into a failure: %v", err)
	}
}

func TestSkipAndDeadlineFunc(t *testing.T) {
	var out bytes.Buffer
	rec := bootrecord.New(time.Now())
	r := &Runner{Console: &out, Record: rec}
	limit := time.Duration(0)
	err := r.Run(context.Background(), []Step{
		{Name: "network", Run: func(context.Context) error { limit = 30 * time.Millisecond; return Skip("no network configured") }},
		{Name: "keys", DeadlineFunc: func() time.Duration { return limit },
			Run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "step deadline 30ms") {
		t.Fatalf("got %v, want the deadline set by the earlier step", err)
	}
	if !strings.Contains(out.String(), "[1/2] network  skipped (no network configured)") {
		t.Errorf("console:\n%s", out.String())
	}
	if len(rec.Steps) != 2 || rec.Steps[0].Result != "skipped" || rec.Steps[1].Result != "failed" {
		t.Fatalf("record steps: %+v", rec.Steps)
	}
}
