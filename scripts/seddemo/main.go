// Command seddemo walks four software SEDs (opalsim) through the life cycle
// sedboot manages, on the host, narrating each stage: write data, enable
// (take ownership, activate locking, set credentials, lock on power cycle),
// power cycle, locked I/O, unlock, data intact, wrong key refused without
// spending a try, rotate, PSID revert destroying the data.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/opalsim"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

const array = "DEMO-ARRAY-1"

type drive struct {
	sim    *opalsim.Drive
	sed    *sed.Drive
	serial string
	data   []byte
	key    map[int]*secret.Secret // generation -> drive key
}

func main() {
	dir := flag.String("dir", "", "directory for the drives' state (default: a new temporary directory, removed at the end)")
	n := flag.Int("drives", 4, "number of software SEDs")
	flag.Parse()
	if err := run(context.Background(), *dir, *n); err != nil {
		fmt.Fprintf(os.Stderr, "seddemo: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func stage(n int, title string) { say("\n== %d. %s", n, title) }

func run(ctx context.Context, dir string, n int) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "seddemo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	stage(1, fmt.Sprintf("create %d factory-fresh software SEDs in %s", n, dir))
	var drives []*drive
	for i := 0; i < n; i++ {
		serial := fmt.Sprintf("DEMO%04d", i+1)
		sim, err := opalsim.Create(filepath.Join(dir, serial), opalsim.Config{Serial: serial, Model: "sedboot software SED", Firmware: "1.0", Blocks: 2048})
		if err != nil {
			return err
		}
		defer sim.Close()
		d := &drive{sim: sim, sed: sed.New(sim, serial), serial: serial, key: map[int]*secret.Secret{}}
		defer func() {
			for _, k := range d.key {
				k.Zero()
			}
		}()
		sum, err := d.sed.Discover(ctx)
		if err != nil {
			return err
		}
		say("  %s: %s, locking enabled=%v, locked=%v, media encryption=%v", serial, sum.SSC, sum.LockingEnabled, sum.Locked, sum.MediaEncryption)
		drives = append(drives, d)
	}

	stage(2, "write known data to each drive (not yet locked)")
	for _, d := range drives {
		d.data = bytes.Repeat([]byte(fmt.Sprintf("data of %s written %s | ", d.serial, time.Now().Format(time.RFC3339))), 128)[:4096]
		if err := d.sim.WriteBlocks(100, d.data); err != nil {
			return err
		}
		say("  %s: wrote %d bytes at LBA 100", d.serial, len(d.data))
	}

	stage(3, "enable encryption: own each drive, activate locking, set credentials, lock on power cycle")
	for _, d := range drives {
		if err := genKey(d, 1); err != nil {
			return err
		}
		res, err := withPINs(d, 1, func(sid, admin1 []byte) (sed.EnableResult, error) {
			return d.sed.Enable(ctx, sed.EnableRequest{SID: sid, Admin1: admin1, ArraySerial: array, Generation: 1})
		})
		if err != nil {
			return err
		}
		say("  %s: %d steps, key verifier readable by anybody=%v", d.serial, len(res.Steps), res.DataStoreShared)
		for _, s := range res.Steps {
			say("      - %s", s)
		}
	}

	stage(4, "power cycle every drive: the global range locks")
	for _, d := range drives {
		if err := d.sim.PowerCycle(); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		err := d.sim.ReadBlocks(100, buf)
		say("  %s: read LBA 100 -> %v (locked=%v)", d.serial, err, errors.Is(err, blockdev.ErrLocked))
		if !errors.Is(err, blockdev.ErrLocked) {
			return fmt.Errorf("%s: expected a locked read", d.serial)
		}
	}

	stage(5, "a wrong key is refused by the key verifier before it reaches the drive")
	wrong, err := secret.Random(keys.KeySize)
	if err != nil {
		return err
	}
	defer wrong.Zero()
	wpin, err := keys.PIN(wrong, keys.RoleAdmin1, drives[0].serial)
	if err != nil {
		return err
	}
	_, err = drives[0].sed.Unlock(ctx, wpin.Bytes())
	wpin.Zero()
	say("  %s: %v", drives[0].serial, err)
	if !errors.Is(err, sed.ErrVerifierMismatch) {
		return fmt.Errorf("wrong key not refused by the verifier: %v", err)
	}

	stage(6, "unlock with the right keys and read the data back")
	if err := unlockAndCheck(ctx, drives, 1); err != nil {
		return err
	}

	stage(7, "rotate every drive to key generation 2, power cycle, unlock with the new keys")
	for _, d := range drives {
		if err := genKey(d, 2); err != nil {
			return err
		}
		oldSID, oldA1, err := pins(d, 1)
		if err != nil {
			return err
		}
		newSID, newA1, err := pins(d, 2)
		if err != nil {
			return err
		}
		res, err := d.sed.Rotate(ctx, sed.RotateRequest{Admin1Old: oldA1.Bytes(), Admin1New: newA1.Bytes(),
			SIDOld: oldSID.Bytes(), SIDNew: newSID.Bytes(), Generation: 2, OldGeneration: 1})
		for _, s := range []*secret.Secret{oldSID, oldA1, newSID, newA1} {
			s.Zero()
		}
		if err != nil {
			return err
		}
		say("  %s: rotated (%d steps), %s", d.serial, len(res.Steps), res.Admin1Tries)
		if err := d.sim.PowerCycle(); err != nil {
			return err
		}
		d.sed.ResetGuard()
	}
	if err := unlockAndCheck(ctx, drives, 2); err != nil {
		return err
	}
	old, err := keys.PIN(drives[1].key[1], keys.RoleAdmin1, drives[1].serial)
	if err != nil {
		return err
	}
	_, err = drives[1].sed.Unlock(ctx, old.Bytes())
	old.Zero()
	say("  %s with the retired generation-1 key: %v", drives[1].serial, err)

	stage(8, "PSID revert (the label on the drive): all data destroyed cryptographically")
	d := drives[len(drives)-1]
	if err := d.sed.RevertPSID(ctx, d.sim.PSID()); err != nil {
		return err
	}
	buf := make([]byte, len(d.data))
	if err := d.sim.ReadBlocks(100, buf); err != nil {
		return err
	}
	sum, err := d.sed.Discover(ctx)
	if err != nil {
		return err
	}
	say("  %s: locking enabled=%v, old data readable=%v", d.serial, sum.LockingEnabled, bytes.Equal(buf, d.data))
	if bytes.Equal(buf, d.data) {
		return errors.New("data survived a PSID revert")
	}
	say("\nDone: %d drives enabled, locked by a power cycle, unlocked, rotated; one reverted.", len(drives))
	return nil
}

func genKey(d *drive, gen int) error {
	k, err := secret.Random(keys.KeySize)
	if err != nil {
		return err
	}
	d.key[gen] = k
	return nil
}

func pins(d *drive, gen int) (sid, admin1 *secret.Secret, err error) {
	sid, err = keys.PIN(d.key[gen], keys.RoleSID, d.serial)
	if err != nil {
		return nil, nil, err
	}
	admin1, err = keys.PIN(d.key[gen], keys.RoleAdmin1, d.serial)
	if err != nil {
		sid.Zero()
		return nil, nil, err
	}
	return sid, admin1, nil
}

func withPINs[T any](d *drive, gen int, f func(sid, admin1 []byte) (T, error)) (T, error) {
	sid, admin1, err := pins(d, gen)
	if err != nil {
		var zero T
		return zero, err
	}
	defer sid.Zero()
	defer admin1.Zero()
	return f(sid.Bytes(), admin1.Bytes())
}

func unlockAndCheck(ctx context.Context, drives []*drive, gen int) error {
	for _, d := range drives {
		start := time.Now()
		res, err := withPINs(d, gen, func(_, admin1 []byte) (sed.UnlockResult, error) { return d.sed.Unlock(ctx, admin1) })
		if err != nil {
			return err
		}
		buf := make([]byte, len(d.data))
		if err := d.sim.ReadBlocks(100, buf); err != nil {
			return err
		}
		say("  %s: unlocked in %s (verifier generation %d, %s), data intact=%v",
			d.serial, time.Since(start).Round(time.Millisecond), res.Check.Generation, res.Tries, bytes.Equal(buf, d.data))
		if !bytes.Equal(buf, d.data) {
			return fmt.Errorf("%s: data changed", d.serial)
		}
	}
	return nil
}
