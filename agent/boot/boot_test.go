package boot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sedboot/sedboot/internal/testenv"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/techauth"
)

func TestParseCmdline(t *testing.T) {
	got := ParseCmdline("console=ttyS0 quiet sedboot.medium=/dev/nvme0n1 x=\"a b\" panic=-1\n")
	want := map[string]string{"console": "ttyS0", "quiet": "", "sedboot.medium": "/dev/nvme0n1", "x": "a b", "panic": "-1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestReadExt(t *testing.T) {
	testenv.LookPath(t, "mkfs.ext4", "e2fsprogs; run scripts/prereqs.sh")
	img := filepath.Join(t.TempDir(), "fs.img")
	uuid := "0b6c1a64-7f8e-4c1e-9d51-2f0c4f1e8a77"
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "ROOTLABEL", "-U", uuid, img, "2M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e, err := ReadExt(f)
	if err != nil {
		t.Fatal(err)
	}
	if e.UUID != uuid || e.Label != "ROOTLABEL" {
		t.Fatalf("got %+v", e)
	}
	if _, err := ReadExt(bytes.NewReader(make([]byte, 4096))); !errors.Is(err, ErrNotExt) {
		t.Fatalf("zeros: %v, want ErrNotExt", err)
	}
}

func TestLenientTechnician(t *testing.T) {
	hash, err := techauth.Hash("a technician credential")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		doc  string
		ok   bool
	}{
		{"other field broken", `{"format":1,"mode":"bogus","technician":{"hash":"` + hash + `","max_attempts":3}}`, true},
		{"hash broken", `{"technician":{"hash":"plain"}}`, false},
		{"no technician", `{"format":1}`, false},
		{"not json", `{"format":`, false},
	} {
		got := lenientTechnician([]byte(tc.doc))
		if (got != nil) != tc.ok {
			t.Errorf("%s: got %+v", tc.name, got)
		}
		if got != nil && (got.Hash != hash || got.MaxAttempts != 3) {
			t.Errorf("%s: got %+v", tc.name, got)
		}
	}
}

func TestKmsgHandler(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(NewKmsgHandler(&out, slog.LevelInfo)).With("drive", "SIM0001")
	log.Debug("hidden")
	log.Warn("unlock failed", "err", "line one\nline two")
	got := out.String()
	if !strings.HasPrefix(got, "<4>sedboot: ") || strings.Contains(got, "hidden") || strings.Count(got, "\n") != 0 ||
		!strings.Contains(got, "drive=SIM0001") || strings.Contains(got, "time=") {
		t.Fatalf("kmsg line %q", got)
	}
}

func TestKeysHint(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&kms.Error{Err: kms.ErrDenied}, "cryptographically locked"},
		{&kms.Error{Err: kms.ErrTLSConfig}, "certificate"},
		{&kms.Error{Err: kms.ErrTransport}, "reachable"},
		{&classified{msg: "x", causes: []error{fmt.Errorf("kmip: %w", &kms.Error{Err: kms.ErrDenied})}}, "cryptographically locked"},
	} {
		if h := keysHint(tc.err); !strings.Contains(h, tc.want) {
			t.Errorf("hint for %v: %q, want %q", tc.err, h, tc.want)
		}
	}
}

func TestModeNoneSkipsKeys(t *testing.T) {
	a := New(Options{Console: &bytes.Buffer{}})
	a.doc = &config.Document{Mode: config.ModeNone}
	if err := a.stepKeys(context.Background()); err == nil || !strings.Contains(err.Error(), "skipped") {
		t.Fatalf("keys in mode none: %v", err)
	}
	if needsNetwork(a.doc) {
		t.Fatal("mode none without fabrics needs no network")
	}
	b, _ := json.Marshal(a.Record())
	if bytes.Contains(b, []byte("key")) && !bytes.Contains(b, []byte("key_servers")) {
		t.Fatalf("record %s", b)
	}
}
