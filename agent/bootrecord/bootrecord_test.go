package bootrecord

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sedboot/sedboot/agent/keysource"
)

func TestConcurrentDrivesAndRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	r := New(t0)
	r.Array, r.Slot, r.Mode = "ARR", "A", "external"
	var wg sync.WaitGroup
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := string(rune('A' + i))
			r.SetDrive(Drive{Serial: s, Result: "locked", TriesLeft: -1})
			r.SetDrive(Drive{Serial: s, Result: "unlocked", Presentations: 1, Latency: time.Duration(i) * time.Millisecond})
		}(i)
	}
	wg.Wait()
	r.AddStep(Step{Name: "unlock", Started: t0, Duration: time.Second, Result: "ok"})
	r.AddKeyServers([]keysource.Attempt{{Source: "kmip", Server: "kms0", Keys: 24, Requests: 1}})
	r.Finish("switch_root", t0.Add(3*time.Second))

	p := filepath.Join(t.TempDir(), "run", "sedboot", "boot-record.json")
	if err := r.Write(p); err != nil {
		t.Fatal(err)
	}
	got, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Drives) != 24 || got.Outcome != "switch_root" || got.Total != 3*time.Second || got.KeyServers[0].Keys != 24 {
		t.Fatalf("round trip: %+v", got)
	}
	for _, d := range got.Drives {
		if d.Result != "unlocked" || d.Presentations != 1 {
			t.Fatalf("drive %s not updated in place: %+v", d.Serial, d)
		}
	}
}
