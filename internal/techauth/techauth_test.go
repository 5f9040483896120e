package techauth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHashVerify(t *testing.T) {
	h, err := Hash("correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(h, "correct") || !strings.HasPrefix(h, "$scrypt$ln=15,r=8,p=1$") {
		t.Fatalf("unexpected stored form %q", h)
	}
	if err := Check(h); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		answer string
		want   bool
	}{{"correct horse battery", true}, {"correct horse batter", false}, {"", false}} {
		ok, err := Verify(h, tc.answer)
		if err != nil || ok != tc.want {
			t.Errorf("Verify(%q) = %v, %v; want %v", tc.answer, ok, err, tc.want)
		}
	}
	h2, _ := Hash("correct horse battery")
	if h2 == h {
		t.Fatal("two hashes of one credential are equal: salt not random")
	}
	if _, err := Hash("short"); err == nil {
		t.Fatal("accepted a short credential")
	}
}

func TestBadStoredHash(t *testing.T) {
	for _, s := range []string{"", "plain", "$scrypt$ln=15$x$y", "$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$scrypt$ln=15,r=8,p=1$!!$aGFzaGhhc2hoYXNoaGFzaA", "$bcrypt$ln=15,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"} {
		if err := Check(s); err == nil {
			t.Errorf("Check(%q) accepted", s)
		}
		if _, err := Verify(s, "x"); err == nil {
			t.Errorf("Verify(%q) accepted", s)
		}
	}
}

func TestGateDelaysCountsAndLocks(t *testing.T) {
	h, _ := Hash("technician-1")
	var slept []time.Duration
	g := &Gate{Hash: h, MaxAttempts: 3, Delay: time.Second,
		Sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }}
	ctx := context.Background()
	if err := g.Try(ctx, "nope-nope"); !errors.Is(err, ErrWrong) {
		t.Fatalf("first wrong: %v", err)
	}
	if err := g.Try(ctx, "technician-1"); err != nil {
		t.Fatalf("right answer refused: %v", err)
	}
	if err := g.Try(ctx, "nope-nope"); !errors.Is(err, ErrWrong) {
		t.Fatalf("second wrong: %v", err)
	}
	if err := g.Try(ctx, "nope-nope"); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("third wrong: %v, want ErrLockedOut", err)
	}
	if err := g.Try(ctx, "technician-1"); !errors.Is(err, ErrLockedOut) {
		t.Fatalf("right answer after lockout: %v, want ErrLockedOut", err)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}
	if len(slept) != len(want) {
		t.Fatalf("delays %v, want %v", slept, want)
	}
	for i := range want {
		if slept[i] != want[i] {
			t.Fatalf("delays %v, want %v", slept, want)
		}
	}
	if g.Wrong() != 3 || g.Remaining() != 0 {
		t.Fatalf("wrong=%d remaining=%d", g.Wrong(), g.Remaining())
	}
}

func TestGateHonoursContext(t *testing.T) {
	h, _ := Hash("technician-1")
	g := &Gate{Hash: h, Delay: time.Hour}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.Try(ctx, "wrong-answer"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's error", err)
	}
}
