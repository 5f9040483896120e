package kmsserver

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// MasterKeySize is the size of the key that seals key material at rest.
const MasterKeySize = 32

var (
	bucketObjects = []byte("objects")
	// Indexes: key NAME "\x00" ID (resp. GROUP "\x00" ID), empty value.
	bucketNames  = []byte("index-names")
	bucketGroups = []byte("index-groups")
)

// indexes lists each index bucket with the values it indexes.
var indexes = []struct {
	bucket []byte
	values func(*object) []string
}{
	{bucketNames, func(o *object) []string { return o.Names }},
	{bucketGroups, func(o *object) []string { return o.Groups }},
}

func idxKey(value, id string) []byte {
	k := make([]byte, 0, len(value)+1+len(id))
	k = append(k, value...)
	k = append(k, 0)
	return append(k, id...)
}

// reindex replaces old's index entries (nil for a new object) by o's.
func reindex(tx *bolt.Tx, old, o *object) error {
	for _, ix := range indexes {
		b := tx.Bucket(ix.bucket)
		if old != nil {
			for _, v := range ix.values(old) {
				if err := b.Delete(idxKey(v, old.ID)); err != nil {
					return err
				}
			}
		}
		for _, v := range ix.values(o) {
			if err := b.Put(idxKey(v, o.ID), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// errNoObject is returned by the store for an unknown identifier.
var errNoObject = errors.New("no such object")

// store keeps managed objects in a bbolt database. Key material is sealed
// with AES-256-GCM under the master key (the object's identifier is the
// additional data), so the database file never holds it in plain.
type store struct {
	db   *bolt.DB
	aead cipher.AEAD
}

func openStore(path string, masterKey []byte) (*store, error) {
	if len(masterKey) != MasterKeySize {
		return nil, fmt.Errorf("store: master key is %d bytes, want %d", len(masterKey), MasterKeySize)
	}
	block, err := aes.NewCipher(masterKey)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("store %s: locked by another process (is another kmsd running?)", path)
		}
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		objs, err := tx.CreateBucketIfNotExists(bucketObjects)
		if err != nil {
			return err
		}
		missing := false
		for _, ix := range indexes {
			missing = missing || tx.Bucket(ix.bucket) == nil
		}
		if !missing {
			return nil
		}
		// A database from before the indexes (or with one lost): rebuild
		// them all.
		for _, ix := range indexes {
			if tx.Bucket(ix.bucket) != nil {
				if err := tx.DeleteBucket(ix.bucket); err != nil {
					return err
				}
			}
			if _, err := tx.CreateBucket(ix.bucket); err != nil {
				return err
			}
		}
		if err := objs.ForEach(func(_, v []byte) error {
			o := new(object)
			if err := json.Unmarshal(v, o); err != nil {
				return err
			}
			return reindex(tx, nil, o)
		}); err != nil {
			return err
		}
		return nil
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return &store{db: db, aead: aead}, nil
}

func (s *store) close() error { return s.db.Close() }

// seal encrypts material for object id.
func (s *store) seal(id string, material []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(material)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, material, []byte(id)), nil
}

// open decrypts the material of object id into a new slice the caller
// must zero.
func (s *store) open(id string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, fmt.Errorf("object %s: sealed material too short", id)
	}
	pt, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(id))
	if err != nil {
		return nil, fmt.Errorf("object %s: material does not authenticate under the master key", id)
	}
	return pt, nil
}

// get reads object id.
func (s *store) get(id string) (*object, error) {
	var o *object
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketObjects).Get([]byte(id))
		if v == nil {
			return errNoObject
		}
		o = new(object)
		return json.Unmarshal(v, o)
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// each calls fn for every object, in identifier order.
func (s *store) each(fn func(*object) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketObjects).ForEach(func(_, v []byte) error {
			o := new(object)
			if err := json.Unmarshal(v, o); err != nil {
				return err
			}
			return fn(o)
		})
	})
}

// create stores a new object, assigning its identifier and sealing
// material. check runs inside the transaction and may refuse the
// creation (e.g. a name already in use).
func (s *store) create(o *object, material []byte, check func(tx *bolt.Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if check != nil {
			if err := check(tx); err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketObjects)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		o.ID = strconv.FormatUint(seq, 10)
		if o.Sealed, err = s.seal(o.ID, material); err != nil {
			return err
		}
		if err := reindex(tx, nil, o); err != nil {
			return err
		}
		return put(b, o)
	})
}

// update reads object id, lets fn change it and writes it back, all in
// one transaction. fn returning an error aborts the change.
func (s *store) update(id string, fn func(tx *bolt.Tx, o *object) error) (*object, error) {
	var out *object
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketObjects)
		v := b.Get([]byte(id))
		if v == nil {
			return errNoObject
		}
		o, old := new(object), new(object)
		if err := json.Unmarshal(v, o); err != nil {
			return err
		}
		if err := json.Unmarshal(v, old); err != nil {
			return err
		}
		if err := fn(tx, o); err != nil {
			return err
		}
		o.LastChange = time.Now().UTC().Truncate(time.Second)
		if err := reindex(tx, old, o); err != nil {
			return err
		}
		out = o
		return put(b, o)
	})
	return out, err
}

func put(b *bolt.Bucket, o *object) error {
	v, err := json.Marshal(o)
	if err != nil {
		return err
	}
	return b.Put([]byte(o.ID), v)
}

// lookupTx returns the identifiers indexed under value in bucket.
func lookupTx(tx *bolt.Tx, bucket []byte, value string) []string {
	var ids []string
	prefix := append([]byte(value), 0)
	c := tx.Bucket(bucket).Cursor()
	for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
		ids = append(ids, string(k[len(prefix):]))
	}
	return ids
}

// lookup returns the objects indexed under value in bucket.
func (s *store) lookup(bucket []byte, value string) ([]*object, error) {
	var out []*object
	err := s.db.View(func(tx *bolt.Tx) error {
		objs := tx.Bucket(bucketObjects)
		for _, id := range lookupTx(tx, bucket, value) {
			v := objs.Get([]byte(id))
			if v == nil {
				continue
			}
			o := new(object)
			if err := json.Unmarshal(v, o); err != nil {
				return err
			}
			out = append(out, o)
		}
		return nil
	})
	return out, err
}

// getTx reads object id inside a transaction; nil when absent.
func getTx(tx *bolt.Tx, id string) (*object, error) {
	v := tx.Bucket(bucketObjects).Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	o := new(object)
	return o, json.Unmarshal(v, o)
}
