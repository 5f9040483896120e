package sedsim

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func startSim(t *testing.T, dir string, drives int, size int64) *Sim {
	t.Helper()
	s, err := Start(context.Background(), Options{Drives: drives, Size: size, StateDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// icHandshake proves the address speaks NVMe/TCP: ICReq in, ICResp out.
func icHandshake(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	ic := make([]byte, 128)
	ic[2] = 128
	binary.LittleEndian.PutUint32(ic[4:], 128)
	if _, err := c.Write(ic); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 128)
	if _, err := io.ReadFull(c, resp); err != nil || resp[0] != 0x01 {
		t.Fatalf("no ICResp from %s: % x %v", addr, resp[:8], err)
	}
}

func TestStartListPowerCyclePersist(t *testing.T) {
	dir := t.TempDir()
	s := startSim(t, dir, 3, 4<<20)
	icHandshake(t, s.Addr().String())
	list := s.List()
	if len(list) != 3 {
		t.Fatalf("%d drives listed", len(list))
	}
	seen := map[string]bool{}
	for k, d := range list {
		if d.Index != k || d.Bytes != 4<<20 || d.BlockSize != 512 || d.NQN != DefaultNQNPrefix+d.Serial || d.LockingEnabled {
			t.Errorf("drive %d: %+v", k, d)
		}
		if seen[d.Serial] {
			t.Errorf("serial %s repeats", d.Serial)
		}
		seen[d.Serial] = true
		if s.NQN(k) != d.NQN || s.Drive(k) == nil {
			t.Errorf("drive %d accessors disagree", k)
		}
	}
	if s.Drive(3) != nil || s.NQN(-1) != "" {
		t.Errorf("accessors accept bad indices")
	}

	// The control socket answers the client.
	c := NewClient(dir)
	ctx := context.Background()
	cl, err := c.List(ctx)
	if err != nil || len(cl) != 3 || cl[1].Serial != list[1].Serial {
		t.Fatalf("client list: %v %+v", err, cl)
	}
	psid, err := c.PSID(ctx, 2)
	if err != nil || psid != string(s.Drive(2).PSID()) || len(psid) < 16 {
		t.Fatalf("client psid: %v (len %d)", err, len(psid))
	}
	if err := c.PowerCycle(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.PowerCycle(ctx, -1); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int{3, 99} {
		if err := c.PowerCycle(ctx, bad); err == nil || !strings.Contains(err.Error(), "want 0 to 2") {
			t.Errorf("power-cycle drive %d: %v", bad, err)
		}
		if _, err := c.PSID(ctx, bad); err == nil {
			t.Errorf("psid drive %d accepted", bad)
		}
	}

	// Data and identities survive a restart.
	want := bytes.Repeat([]byte{0xA5}, 4096)
	if err := s.Drive(0).WriteBlocks(8, want); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ControlSocketName)); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
	if _, err := c.List(ctx); err == nil {
		t.Errorf("client still reaches a closed sim")
	}
	s2 := startSim(t, dir, 3, 0) // size 0: take the drives as they are
	for k, d := range s2.List() {
		if d.Serial != list[k].Serial || d.NQN != list[k].NQN {
			t.Errorf("drive %d after restart: %s, was %s", k, d.Serial, list[k].Serial)
		}
	}
	got := make([]byte, 4096)
	if err := s2.Drive(0).ReadBlocks(8, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("data after restart: %v", err)
	}
}

func TestStartRefusals(t *testing.T) {
	dir := t.TempDir()
	startSim(t, dir, 1, 1<<20)
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no drives", Options{Drives: 0, Size: 1 << 20, StateDir: t.TempDir(), Listen: "127.0.0.1:0"}, "1 to 64"},
		{"odd size", Options{Drives: 1, Size: 1000, StateDir: t.TempDir(), Listen: "127.0.0.1:0"}, "multiple of the block size"},
		{"no state", Options{Drives: 1, Size: 1 << 20, Listen: "127.0.0.1:0"}, "no state directory"},
		{"remote", Options{Drives: 1, Size: 1 << 20, StateDir: t.TempDir(), Listen: "0.0.0.0:0"}, "not a loopback address"},
		{"hostname", Options{Drives: 1, Size: 1 << 20, StateDir: t.TempDir(), Listen: "localhost:0"}, "literal loopback"},
		{"new drive without size", Options{Drives: 1, StateDir: t.TempDir(), Listen: "127.0.0.1:0"}, "give a size"},
		{"state in use", Options{Drives: 1, Size: 1 << 20, StateDir: dir, Listen: "127.0.0.1:0"}, "in use by another sedsim"},
		{"bad serial prefix", Options{Drives: 1, Size: 1 << 20, StateDir: t.TempDir(), Listen: "127.0.0.1:0", SerialPrefix: "SIM 1"}, "serial prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Start(context.Background(), tc.o)
			if err == nil {
				s.Close()
				t.Fatalf("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
	// A size that does not match an existing drive is refused once the first sim is gone.
	dir2 := t.TempDir()
	s := startSim(t, dir2, 1, 1<<20)
	s.Close()
	if s, err := Start(context.Background(), Options{Drives: 1, Size: 2 << 20, StateDir: dir2, Listen: "127.0.0.1:0"}); err == nil {
		s.Close()
		t.Errorf("size mismatch accepted")
	} else if !strings.Contains(err.Error(), "has 1048576 bytes but 2097152") {
		t.Errorf("size mismatch error: %v", err)
	}
}

func TestCheckListen(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:4420": true, "[::1]:4420": true, "127.0.0.2:1": true,
		"10.0.2.2:4420": false, ":4420": false, "127.0.0.1": false, "example.com:4420": false} {
		if err := CheckListen(addr, false); (err == nil) != ok {
			t.Errorf("CheckListen(%q) = %v", addr, err)
		}
	}
	if err := CheckListen("10.0.2.2:4420", true); err != nil {
		t.Errorf("allow remote: %v", err)
	}
}

func TestSerialPrefix(t *testing.T) {
	s, err := Start(context.Background(), Options{Drives: 3, Size: 1 << 20, StateDir: t.TempDir(), Listen: "127.0.0.1:0",
		SerialPrefix: "RIG", NoControl: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for k, want := range []string{"RIG0001", "RIG0002", "RIG0003"} {
		if got := s.Drive(k).Identity().Serial; got != want {
			t.Errorf("drive %d serial %q, want %q", k, got, want)
		}
		if !strings.HasSuffix(s.NQN(k), ":"+want) {
			t.Errorf("drive %d NQN %q does not end in its serial", k, s.NQN(k))
		}
	}
}
