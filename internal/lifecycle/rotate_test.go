package lifecycle

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
)

func TestRotate(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 4, servers: 2})
	r.enable(ctx)
	r.writeData()

	// Live: the drives are unlocked and in use.
	a := r.open()
	var events []Event
	a.Progress = func(e Event) { events = append(events, e) }
	res, err := a.Rotate(ctx, RotateOptions{DestroyAfter: DefaultDestroyAfter})
	if err != nil {
		t.Fatal(err)
	}
	if res.From != 1 || res.To != 2 || res.Resumed || res.Canary != "D01" || len(res.Drives) != 4 || res.Deactivated != 8 || len(res.Destroyed) != 0 {
		t.Fatalf("result %+v", res)
	}
	for _, d := range res.Drives {
		if d.Generation != 2 || d.Skipped || len(d.Steps) == 0 {
			t.Errorf("drive %+v", d)
		}
	}
	if !strings.Contains(fmt.Sprint(events), "canary") {
		t.Errorf("no canary step reported: %v", events)
	}
	r.checkData() // still unlocked, still readable: rotation works live
	doc := r.doc()
	if doc.Journal != nil || doc.Keys.Active().Number != 2 || doc.Keys.Generation(1).State != config.GenRetiring {
		t.Fatalf("inventory after rotate: %+v journal %+v", doc.Keys, doc.Journal)
	}
	for i := range r.servers {
		if st := r.states(ctx, i, 1); st[kms.StateDeactivated] != 4 {
			t.Errorf("server %d: old generation states %v, want 4 deactivated", i, st)
		}
		if st := r.states(ctx, i, 2); st[kms.StateActive] != 4 {
			t.Errorf("server %d: new generation states %v", i, st)
		}
	}
	// Power cycle and boot: every drive unlocks with generation 2.
	r.bootAll(ctx, 2, 0)
	r.checkData()

	// Before the delay, nothing is destroyed; after it, a later run
	// destroys the retired generation on every server.
	b := r.open()
	if out, _, err := b.Retire(ctx, DefaultDestroyAfter); err != nil || len(out) != 0 {
		t.Fatalf("early retire: %+v, %v", out, err)
	}
	c := r.open()
	c.Now = func() time.Time { return time.Now().Add(DefaultDestroyAfter + time.Hour) }
	out, warns, err := c.Retire(ctx, DefaultDestroyAfter)
	if err != nil || len(out) != 1 || out[0].Generation != 1 || len(out[0].Servers) != 2 || len(warns) != 0 {
		t.Fatalf("retire: %+v %v %v", out, warns, err)
	}
	if g := r.doc().Keys.Generation(1); g.State != config.GenRetired || g.Drives[0].IDs != nil {
		t.Fatalf("generation 1 after retire: %+v", g)
	}
	for i := range r.servers {
		if st := r.states(ctx, i, 1); st[kms.StateDestroyed] != 4 {
			t.Errorf("server %d: generation 1 %v, want destroyed", i, st)
		}
	}
	noSecretsOnMedium(t, r, ctx, 2)

	// Refusals: a missing drive, a canary that is not in the array.
	d := r.open()
	d.Drives = d.Drives[:3]
	if _, err := d.Rotate(ctx, RotateOptions{}); err == nil || !strings.Contains(err.Error(), "D04") {
		t.Fatalf("rotate with a drive missing: %v", err)
	}
	if _, err := r.open().Rotate(ctx, RotateOptions{Canary: "NOPE"}); err == nil || !strings.Contains(err.Error(), "NOPE") {
		t.Fatalf("rotate with an unknown canary: %v", err)
	}
	if r.doc().Journal != nil {
		t.Fatal("a refused rotation left a journal")
	}
}

func TestRotateNotEnabled(t *testing.T) {
	r := newRig(t, rigOptions{drives: 1, servers: 1})
	if _, err := r.open().Rotate(testCtx(t), RotateOptions{}); !errors.Is(err, ErrNotEnabled) {
		t.Fatalf("err = %v", err)
	}
}

// TestRotateInterrupted cuts the power at every journal point and every
// drive step of a rotation of 4 drives; each time the array boots with at
// most one rejected presentation per drive and no data lost, and running
// rotate again completes the rotation. The rotation destroys the old
// generation at once (DestroyAfter 0), so destroying is interrupted too.
func TestRotateInterrupted(t *testing.T) {
	ctx := testCtx(t)
	rotate := func(r *rig, hook func(string) error) (*RotateResult, error) {
		a := r.open()
		a.Concurrency = 1 // the k-th point is the same in every run
		a.Hook = hook
		return a.Rotate(ctx, RotateOptions{})
	}
	var points []string
	{
		r := newRig(t, rigOptions{drives: 4, servers: 1})
		r.enable(ctx)
		points = countPoints(t, func(hook func(string) error) error { _, err := rotate(r, hook); return err })
	}
	t.Logf("%d interruption points: %s", len(points), strings.Join(points, " | "))

	// Spread the points over a few arrays that run side by side; -short
	// takes every third point.
	const arrays = 3
	step := 1
	if testing.Short() {
		step = 3
	}
	var mu sync.Mutex
	presentations := 0
	for w := range arrays {
		t.Run(fmt.Sprintf("array%d", w), func(t *testing.T) {
			t.Parallel()
			r := newRig(t, rigOptions{drives: 4, servers: 1})
			r.enable(ctx)
			r.writeData()
			for k := w * step; k < len(points); k += arrays * step {
				from := r.doc().Keys.Active().Number
				_, err := rotate(r, crashAt(k, r))
				if !errors.Is(err, ErrInterrupted) {
					t.Fatalf("point %d (%s): rotate stopped with %v, want the injected crash", k, points[k], err)
				}
				// crashAt powered the drives off: boot.
				res := r.boot(ctx)
				for s, br := range res {
					if br.generation != from && br.generation != from+1 || br.wrong > 1 {
						t.Fatalf("point %d (%s): boot: drive %s: generation %d (want %d or %d), %d wrong presentation(s): %v",
							k, points[k], s, br.generation, from, from+1, br.wrong, br.err)
					}
					mu.Lock()
					presentations += br.wrong
					mu.Unlock()
				}
				r.checkData()
				// Run rotate again: it completes (resuming, or, when the
				// crash came after the journal was closed, rotating again).
				b := r.open()
				again, err := b.Rotate(ctx, RotateOptions{})
				if err != nil {
					t.Fatalf("point %d (%s): rotate again: %v", k, points[k], err)
				}
				doc := r.doc()
				if doc.Journal != nil || doc.Keys.Active().Number != again.To {
					t.Fatalf("point %d: after the second run: journal %+v active %d", k, doc.Journal, doc.Keys.Active().Number)
				}
				for _, g := range doc.Keys.Generations {
					if g.Number < again.To && g.State != config.GenRetired {
						t.Fatalf("point %d: generation %d is %s, want retired", k, g.Number, g.State)
					}
				}
				// Rotate verified every drive; power cycle and boot
				// once per array to see it from the agent's side too.
				if k+arrays*step >= len(points) {
					r.bootAll(ctx, again.To, 0)
					r.checkData()
				}
			}
		})
	}
	t.Cleanup(func() { t.Logf("wrong presentations over all interrupted boots: %d", presentations) })
}
