package kmsserver

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/ovh/kmip-go"
	bolt "go.etcd.io/bbolt"
)

func TestIndexesFollowChangesAndAreRebuilt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	key := make([]byte, MasterKeySize)
	st, err := openStore(path, key)
	if err != nil {
		t.Fatal(err)
	}
	o := &object{ObjectType: kmip.ObjectTypeSecretData, Names: []string{"a"}, Groups: []string{"g1", "g2"}}
	if err := st.create(o, []byte("v"), nil); err != nil {
		t.Fatal(err)
	}
	ids := func(bucket []byte, v string) []string {
		t.Helper()
		objs, err := st.lookup(bucket, v)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, o := range objs {
			out = append(out, o.ID)
		}
		return out
	}
	if got := ids(bucketNames, "a"); !slices.Equal(got, []string{o.ID}) {
		t.Fatalf("name a -> %v", got)
	}
	// "a" must not match "ab" (prefix) and vice versa.
	if got := ids(bucketNames, ""); len(got) != 0 {
		t.Fatalf("empty name -> %v", got)
	}
	if _, err := st.update(o.ID, func(_ *bolt.Tx, x *object) error {
		x.Names = []string{"ab"}
		x.Groups = []string{"g2"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := ids(bucketNames, "a"); len(got) != 0 {
		t.Errorf("old name still indexed: %v", got)
	}
	if got := ids(bucketNames, "ab"); !slices.Equal(got, []string{o.ID}) {
		t.Errorf("new name -> %v", got)
	}
	if got := ids(bucketGroups, "g1"); len(got) != 0 {
		t.Errorf("removed group still indexed: %v", got)
	}
	// A database without indexes gets them on open.
	if err := st.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketNames); err != nil {
			return err
		}
		return tx.DeleteBucket(bucketGroups)
	}); err != nil {
		t.Fatal(err)
	}
	st.close()
	if st, err = openStore(path, key); err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if got := ids(bucketGroups, "g2"); !slices.Equal(got, []string{o.ID}) {
		t.Errorf("rebuilt group index -> %v", got)
	}
}
