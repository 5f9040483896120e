package recovery

import (
	"bytes"
	"context"
	"github.com/sedboot/sedboot/internal/testenv"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/techauth"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLoop: a wrong answer is refused and counted, the right one starts the
// shell (here /bin/true), and the prompt comes back when it exits; after
// MaxAttempts wrong answers the loop stays closed.
func TestLoop(t *testing.T) {
	_, err := os.Stat("/bin/true")
	testenv.Require(t, err == nil, "/bin/true (coreutils)")
	hash, err := techauth.Hash("right credential")
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out syncBuf
	noSleep := func(context.Context, time.Duration) error { return nil }
	l := &Loop{Technician: &config.Technician{Hash: hash, MaxAttempts: 2}, In: r, Out: &out, Shell: "/bin/true", Sleep: noSleep}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	w.WriteString("wrong\nright credential\nwrong\nwrong\nright credential\n")
	w.Close()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), Closed) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	s := out.String()
	for _, want := range []string{Banner, Refused + " (1 attempt(s) left", Granted, "recovery shell ended", Closed} {
		if !strings.Contains(s, want) {
			t.Errorf("console lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, Granted) != 1 {
		t.Errorf("shell started %d times, want 1 (the gate must stay locked after its limit):\n%s", strings.Count(s, Granted), s)
	}
}

func TestNoCredentialStaysClosed(t *testing.T) {
	var out syncBuf
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	l := &Loop{Out: &out, Shell: "/bin/true"}
	l.Run(ctx)
	if !strings.Contains(out.String(), Closed) || strings.Contains(out.String(), Granted) {
		t.Fatalf("console:\n%s", out.String())
	}
}
