package sed

import (
	"context"
	"testing"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
)

// benchDrive returns an enabled, power-cycled (locked) simulated drive and
// its keys.
func benchDrive(b *testing.B) (*Drive, keys) {
	b.Helper()
	ctx := context.Background()
	sim := newSim(b, "BENCH01", 5)
	k := keys{key(b), key(b)}
	d := New(sim, "bench")
	if _, err := d.Enable(ctx, EnableRequest{SID: k.sid, Admin1: k.admin1, ArraySerial: "A", Generation: 1}); err != nil {
		b.Fatal(err)
	}
	if err := sim.PowerCycle(); err != nil {
		b.Fatal(err)
	}
	return d, k
}

// BenchmarkUnlock measures Drive.Unlock as the boot agent calls it: Level 0
// discovery, control session (stack reset, Properties), key verifier read
// as Anybody, session + Authenticate as Admin1 + Tries read + Set global
// range + close.
func BenchmarkUnlock(b *testing.B) {
	d, k := benchDrive(b)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := d.Unlock(ctx, k.admin1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnlockSession measures the unlock proper on an established
// control session: StartSession + Authenticate + Set (ReadLocked,
// WriteLocked) + close, through go-tcg-storage.
func BenchmarkUnlockSession(b *testing.B) {
	d, k := benchDrive(b)
	c, err := d.connect(context.Background(), true)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		s, err := c.open(core.LockingSP, true)
		if err != nil {
			b.Fatal(err)
		}
		if err := safe(func() error { return authenticateOnly(s, k.admin1) }); err != nil {
			b.Fatal(err)
		}
		if err := s.setGlobalLocked(false); err != nil {
			b.Fatal(err)
		}
		if err := s.close(); err != nil {
			b.Fatal(err)
		}
	}
}

// authenticateOnly presents Admin1 without the Tries read present does.
func authenticateOnly(s *session, cred []byte) error {
	return table.ThisSP_Authenticate(s.s, Admin1.uid, cred)
}
