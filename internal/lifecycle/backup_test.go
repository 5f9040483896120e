package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sedboot/sedboot/internal/backup"
	"github.com/sedboot/sedboot/internal/config"
	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/kms"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

const passphrase = "a long enough passphrase"

// makeBackup writes a backup of the rig's keys.
func makeBackup(t *testing.T, r *rig, ctx context.Context) []byte {
	t.Helper()
	set, err := r.open().BackupKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Zero()
	var buf bytes.Buffer
	if err := backup.Write(&buf, set, passphrase, backup.Options{WorkFactor: 10}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readBackup(t *testing.T, file []byte) *backup.Set {
	t.Helper()
	set, err := backup.Read(bytes.NewReader(file), passphrase)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Zero)
	return set
}

// destroyAll revokes and destroys every live key of the array on server i.
func destroyAll(t *testing.T, r *rig, ctx context.Context, i int) {
	t.Helper()
	c := r.adminConn(ctx, i)
	doc := r.doc()
	for _, g := range liveGenerations(doc) {
		for _, dk := range g.Drives {
			id := dk.IDs[c.Server().Label()]
			if err := c.Revoke(ctx, id, kms.RevokeCessation, "test"); err != nil {
				t.Fatal(err)
			}
			if err := c.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestBackupRestore(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 3, servers: 2})
	r.enable(ctx)
	r.writeData()
	file := makeBackup(t, r, ctx)
	for _, g := range liveGenerations(r.doc()) {
		for _, dk := range g.Drives {
			if bytes.Contains(file, []byte(dk.Name)) {
				t.Fatal("the backup file shows a key name in clear")
			}
		}
	}
	oldIDs := r.doc().Keys.Active().Drives[0].IDs

	// The keys are lost on both key servers: the array no longer boots.
	destroyAll(t, r, ctx, 0)
	destroyAll(t, r, ctx, 1)
	r.powerCycle()
	for s, br := range r.boot(ctx) {
		if br.generation != 0 || br.wrong != 0 {
			t.Fatalf("boot without keys: drive %s: %+v", s, br)
		}
	}

	// A wrong passphrase and a damaged file change nothing.
	before := r.doc()
	if _, err := backup.Read(bytes.NewReader(file), "not the passphrase"); !errors.Is(err, backup.ErrPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	damaged := bytes.Clone(file)
	damaged[len(damaged)-80] ^= 0x01
	if _, err := backup.Read(bytes.NewReader(damaged), passphrase); !errors.Is(err, backup.ErrCorrupt) && !errors.Is(err, backup.ErrFormat) {
		t.Fatalf("damaged file: %v", err)
	}
	unchanged(t, r, before)

	// Restore re-registers the keys under their names on both servers.
	set := readBackup(t, file)
	res, err := r.open().Restore(ctx, set)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Generations) != 1 || res.Generations[0] != 1 || res.Adopted || len(res.Servers) != 2 {
		t.Fatalf("result %+v", res)
	}
	newIDs := r.doc().Keys.Active().Drives[0].IDs
	if newIDs["kms0"] == "" || newIDs["kms0"] == oldIDs["kms0"] || newIDs["kms1"] == oldIDs["kms1"] {
		t.Fatalf("identifiers not updated: %v -> %v", oldIDs, newIDs)
	}
	r.bootAll(ctx, 1, 0)
	r.checkData()

	// Running it again changes nothing on the servers (idempotent).
	if _, err := r.open().Restore(ctx, set); err != nil {
		t.Fatalf("second restore: %v", err)
	}
	if ids := r.doc().Keys.Active().Drives[0].IDs; ids["kms0"] != newIDs["kms0"] {
		t.Fatalf("second restore re-registered: %v -> %v", newIDs, ids)
	}
}

func TestRestoreRefusals(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 2, servers: 1})
	r.enable(ctx)
	file := makeBackup(t, r, ctx)

	t.Run("another array", func(t *testing.T) {
		set := readBackup(t, file)
		set.Array = "OTHER"
		before := r.doc()
		if _, err := r.open().Restore(ctx, set); err == nil || !strings.Contains(err.Error(), "OTHER") {
			t.Fatalf("err = %v", err)
		}
		unchanged(t, r, before)
	})
	t.Run("different key under the name", func(t *testing.T) {
		// The server holds another value under D02's key name.
		doc := r.doc()
		dk := doc.Keys.Active().Drives[1]
		c := r.adminConn(ctx, 0)
		if err := c.Revoke(ctx, dk.IDs["kms0"], kms.RevokeCessation, "test"); err != nil {
			t.Fatal(err)
		}
		if err := c.Destroy(ctx, dk.IDs["kms0"]); err != nil {
			t.Fatal(err)
		}
		other, _ := secret.Random(keys.KeySize)
		defer other.Zero()
		if _, _, err := c.Register(ctx, kms.SecretSpec{Name: dk.Name, Group: keys.Group("sedboot", testArray), Value: other, Activate: true}); err != nil {
			t.Fatal(err)
		}
		set := readBackup(t, file)
		before := r.doc()
		if _, err := r.open().Restore(ctx, set); !errors.Is(err, ErrKeyConflict) {
			t.Fatalf("err = %v", err)
		}
		unchanged(t, r, before)
	})
	t.Run("keys that do not open the drives", func(t *testing.T) {
		set := readBackup(t, file)
		v := set.Generations[0].Keys[0].Value.Bytes()
		v[0] ^= 1
		before := r.doc()
		if _, err := r.open().Restore(ctx, set); err == nil || !strings.Contains(err.Error(), "would not open") {
			t.Fatalf("err = %v", err)
		}
		unchanged(t, r, before)
	})
}

// TestRestoreNewMedium restores onto a replaced boot medium that has the
// array's settings but no key inventory.
func TestRestoreNewMedium(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 2, servers: 1})
	r.enable(ctx)
	file := makeBackup(t, r, ctx)
	destroyAll(t, r, ctx, 0)
	blank := r.document() // mode none, no inventory
	r.writeDoc(blank)

	res, err := r.open().Restore(ctx, readBackup(t, file))
	if err != nil {
		t.Fatal(err)
	}
	doc := r.doc()
	if !res.Adopted || doc.Mode != config.ModeExternal || doc.Keys.Active() == nil || doc.Keys.Active().Drives[0].IDs["kms0"] == "" {
		t.Fatalf("result %+v, document %+v", res, doc.Keys)
	}
	r.bootAll(ctx, 1, 0)
}

func TestUnlockFromBackup(t *testing.T) {
	ctx := testCtx(t)
	r := newRig(t, rigOptions{drives: 2, servers: 1})
	r.enable(ctx)
	r.writeData()
	file := makeBackup(t, r, ctx)
	a := r.open()
	if _, err := a.Rotate(ctx, RotateOptions{DestroyAfter: DefaultDestroyAfter}); err != nil {
		t.Fatal(err)
	}
	// The backup holds generation 1; the drives are on 2 now, so the
	// key is checked against the verifier and never presented.
	r.powerCycle()
	set := readBackup(t, file)
	d := r.drives()[0]
	if _, err := UnlockFromBackup(ctx, d, set, nil, false); err == nil || !strings.Contains(err.Error(), "nothing was presented") {
		t.Fatalf("stale backup: %v", err)
	}
	if d.Failures(sed.Admin1) != 0 {
		t.Fatal("a stale key was presented")
	}
	// A backup taken now opens it.
	set2 := readBackup(t, makeBackup(t, r, ctx))
	res, err := UnlockFromBackup(ctx, d, set2, []int{2}, false)
	if err != nil || res.Generation != 2 || res.Drive != "D01" {
		t.Fatalf("unlock: %+v, %v", res, err)
	}
	p := make([]byte, 512)
	if err := r.sims[0].ReadBlocks(7, p); err != nil || !bytes.Equal(p, pattern(0, 7)) {
		t.Fatalf("read after unlock: %v", err)
	}
	if err := r.sims[1].ReadBlocks(7, p); err == nil {
		t.Fatal("the other drive was unlocked too")
	}
}
