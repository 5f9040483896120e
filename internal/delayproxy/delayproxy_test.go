package delayproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// echoServer answers each line with "echo: " and the line.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, "echo: "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestRelayAndDelay(t *testing.T) {
	for _, delay := range []time.Duration{0, 30 * time.Millisecond} {
		p, err := Start(echoServer(t), Options{Delay: delay})
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		for _, msg := range []string{"one", "two", strings.Repeat("x", 200<<10)} {
			start := time.Now()
			got, err := roundTrip(c, r, msg)
			if err != nil || got != "echo: "+msg {
				t.Fatalf("delay %s: round trip of %d bytes: %q, %v", delay, len(msg), got[:min(len(got), 20)], err)
			}
			// Each direction waits at least the delay (a lower bound,
			// not a performance figure).
			if el := time.Since(start); el < 2*delay {
				t.Fatalf("delay %s: answer after %s, before the round-trip time", delay, el)
			}
		}
		c.Close()
		p.Close()
	}
}

func TestDropReply(t *testing.T) {
	var answers atomic.Int32
	p, err := Start(echoServer(t), Options{DropReply: func() bool { return answers.Add(1) == 2 }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "first"); err != nil || got != "echo: first" {
		t.Fatalf("first: %q, %v", got, err)
	}
	if got, err := roundTrip(c, r, "second"); err == nil || (!errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset")) {
		t.Fatalf("second answer not dropped: %q, %v", got, err)
	}
	// A new connection works.
	c2, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, bufio.NewReader(c2), "third"); err != nil || got != "echo: third" {
		t.Fatalf("after a drop: %q, %v", got, err)
	}
}

func TestNegativeDelay(t *testing.T) {
	if _, err := Start("127.0.0.1:1", Options{Delay: -time.Second}); err == nil {
		t.Fatal("a negative delay was accepted")
	}
}
