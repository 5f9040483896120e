package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/sedsim"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func runCmd(ctx context.Context, args ...string) (int, string, string) {
	var out, errb syncBuffer
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageAndErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		args     []string
		code     int
		contains string
	}{
		{nil, 2, "Usage:"},
		{[]string{"help"}, 0, "sedsim power-cycle"},
		{[]string{"help", "psid"}, 0, "technician reads it off"},
		{[]string{"serve", "-h"}, 0, "-allow-remote"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"serve", "--size", "12Q"}, 1, `size "12Q"`},
		{[]string{"serve", "--size", "1M", "--listen", "0.0.0.0:4420", "--state", t.TempDir()}, 1, "not a loopback address"},
		{[]string{"serve", "--nope"}, 2, "flag provided but not defined"},
		{[]string{"power-cycle", "--state", t.TempDir()}, 2, "exactly one of --drive K and --all"},
		{[]string{"psid", "--state", t.TempDir()}, 2, "give --drive K"},
		{[]string{"list", "--state", t.TempDir()}, 1, "no sedsim serving"},
		{[]string{"list", "extra"}, 2, `unexpected argument "extra"`},
	} {
		code, out, errs := runCmd(ctx, tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.contains) {
			t.Errorf("sedsim %v: exit %d, want %d; output %q does not contain %q", tc.args, code, tc.code, out+errs, tc.contains)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "4K": 4096, "64M": 64 << 20, "64MiB": 64 << 20, "2g": 2 << 30, "1T": 1 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1M", "1.5G", "M", "99999999999T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

func TestServeListPSIDPowerCycle(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serveOut, serveErr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--drives", "2", "--size", "2M", "--state", dir, "--listen", "127.0.0.1:0"}, &serveOut, &serveErr)
	}()
	sock := filepath.Join(dir, sedsim.ControlSocketName)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("control socket never appeared; serve said %q %q", serveOut.String(), serveErr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	code, out, errs := runCmd(context.Background(), "list", "--state", dir, "--json")
	var list []sedsim.DriveInfo
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("list --json: %d %q %q", code, out, errs)
	}
	code, out, _ = runCmd(context.Background(), "list", "--state", dir)
	if code != 0 || !strings.Contains(out, list[1].Serial) || !strings.Contains(out, "Manufactured-Inactive") || !strings.Contains(out, "2M") {
		t.Errorf("list: %d %q", code, out)
	}
	code, out, _ = runCmd(context.Background(), "psid", "--state", dir, "--drive", "1")
	label, err := os.ReadFile(filepath.Join(dir, "drive-1", "label.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 || !strings.Contains(string(label), strings.TrimSpace(out)) || len(strings.TrimSpace(out)) < 16 {
		t.Errorf("psid printed %q; the label says %q", out, label)
	}
	if code, out, errs = runCmd(context.Background(), "power-cycle", "--state", dir, "--drive", "0"); code != 0 || !strings.Contains(out, "power-cycled drive 0") {
		t.Errorf("power-cycle: %d %q %q", code, out, errs)
	}
	if code, out, _ = runCmd(context.Background(), "power-cycle", "--state", dir, "--all"); code != 0 || !strings.Contains(out, "every drive") {
		t.Errorf("power-cycle --all: %d %q", code, out)
	}
	if code, _, errs = runCmd(context.Background(), "power-cycle", "--state", dir, "--drive", "5"); code != 1 || !strings.Contains(errs, "want 0 to 1") {
		t.Errorf("power-cycle --drive 5: %d %q", code, errs)
	}

	cancel() // what SIGINT/SIGTERM do through signal.NotifyContext
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(serveOut.String(), "flushing and closing drives") {
			t.Errorf("serve exit %d, output %q %q", code, serveOut.String(), serveErr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket left after shutdown")
	}
}
