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

var bucketObjects = []byte("objects")

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
		_, err := tx.CreateBucketIfNotExists(bucketObjects)
		return err
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
		o := new(object)
		if err := json.Unmarshal(v, o); err != nil {
			return err
		}
		if err := fn(tx, o); err != nil {
			return err
		}
		o.LastChange = time.Now().UTC().Truncate(time.Second)
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

// eachTx iterates objects inside an open transaction.
func eachTx(tx *bolt.Tx, fn func(*object) error) error {
	return tx.Bucket(bucketObjects).ForEach(func(_, v []byte) error {
		o := new(object)
		if err := json.Unmarshal(v, o); err != nil {
			return err
		}
		return fn(o)
	})
}
