package sed

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/opalsim"
)

// newSim returns a factory-fresh simulated drive (in memory).
func newSim(t testing.TB, serial string, tryLimit uint) *opalsim.Drive {
	t.Helper()
	sim, err := opalsim.NewMemory(opalsim.Config{
		Serial: serial, Model: "sedboot test drive", Firmware: "T1",
		BlockSize: 512, Blocks: 2048, TryLimit: tryLimit,
		MBRSize: 1 << 20, DataStoreSize: 64 << 10,
	})
	if err != nil {
		t.Fatalf("opalsim.NewMemory: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func key(t testing.TB) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// rawProvision provisions with the individual operations and no key
// verifier: take ownership, activate, set Admin1, configure.
func rawProvision(t *testing.T, ctx context.Context, d *Drive, sid, admin1 []byte) {
	t.Helper()
	if _, err := d.TakeOwnership(ctx, sid); err != nil {
		t.Fatalf("TakeOwnership: %v", err)
	}
	if ok, err := d.ActivateLocking(ctx, sid); err != nil || !ok {
		t.Fatalf("ActivateLocking = %v, %v", ok, err)
	}
	if _, err := d.SetAdmin1(ctx, sid, admin1); err != nil {
		t.Fatalf("SetAdmin1: %v", err)
	}
	if err := d.ConfigureGlobalRange(ctx, admin1); err != nil {
		t.Fatalf("ConfigureGlobalRange: %v", err)
	}
}

func readBlock(sim *opalsim.Drive, lba uint64) ([]byte, error) {
	p := make([]byte, 512)
	err := sim.ReadBlocks(lba, p)
	return p, err
}

func TestRawProvisionLockUnlock(t *testing.T) {
	ctx := testCtx(t)
	sim := newSim(t, "RAW0001", 5)
	d := New(sim, "sim0")

	sum, err := d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum.SSC != SSCOpal2 || !sum.LockingSupported || sum.LockingEnabled || sum.Locked || sum.BaseComID == 0 {
		t.Fatalf("fresh drive summary: %+v", sum)
	}

	data := bytes.Repeat([]byte("plaintext!"), 52)[:512]
	if err := sim.WriteBlocks(7, data); err != nil {
		t.Fatal(err)
	}
	sid, admin1 := key(t), key(t)
	rawProvision(t, ctx, d, sid, admin1)

	sum, err = d.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.LockingEnabled || sum.Locked {
		t.Fatalf("after provisioning: %+v", sum)
	}
	st, err := d.GlobalRange(ctx, admin1)
	if err != nil {
		t.Fatal(err)
	}
	if st != (RangeState{ReadLockEnabled: true, WriteLockEnabled: true, LockOnPowerCycle: true}) {
		t.Fatalf("global range %+v", st)
	}

	if err := sim.PowerCycle(); err != nil {
		t.Fatal(err)
	}
	if sum, _ := d.Discover(ctx); !sum.Locked {
		t.Fatalf("not locked after power cycle: %+v", sum)
	}
	if _, err := readBlock(sim, 7); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("read while locked: %v", err)
	}
	res, err := d.Unlock(ctx, admin1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Check.Source != VerifierNone || !res.Tries.Known || res.Tries.TryLimit != 5 || res.Tries.Tries != 0 {
		t.Fatalf("unlock result %+v", res)
	}
	got, err := readBlock(sim, 7)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after unlock: %v, equal=%v", err, bytes.Equal(got, data))
	}
	if _, err := d.Lock(ctx, admin1); err != nil {
		t.Fatal(err)
	}
	if _, err := readBlock(sim, 7); !errors.Is(err, blockdev.ErrLocked) {
		t.Fatalf("read after Lock: %v", err)
	}
}
