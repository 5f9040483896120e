package opalsim

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"

	"golang.org/x/crypto/pbkdf2"
)

// pinIterations is the PBKDF2-SHA256 work factor for credential verifiers.
const pinIterations = 4096

// verifier is what the drive stores for a credential: never the PIN itself.
// An empty Salt means "no PIN set" (only an empty proof matches, and it
// unlocks no key material).
type verifier struct {
	Salt []byte `json:"salt,omitempty"`
	Iter int    `json:"iter,omitempty"`
	Hash []byte `json:"hash,omitempty"`
}

// credKey is the secret derived from a presented PIN: it proves the PIN
// (via its hash) and derives the key-encryption key for wrapped secrets.
type credKey []byte

func deriveCred(pin, salt []byte, iter int) credKey {
	return pbkdf2.Key(pin, salt, iter, 32, sha256.New)
}

func (k credKey) label(l string) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(l))
	return m.Sum(nil)
}

func (k credKey) verifyHash() []byte { return k.label("opalsim credential verifier") }
func (k credKey) kek() []byte        { return k.label("opalsim key encryption key") }

// newVerifier makes a verifier for pin and returns the derived key too.
func newVerifier(pin []byte) (verifier, credKey) {
	if len(pin) == 0 {
		return verifier{}, nil
	}
	salt := randBytes(16)
	k := deriveCred(pin, salt, pinIterations)
	return verifier{Salt: salt, Iter: pinIterations, Hash: k.verifyHash()}, k
}

// check verifies pin; on success it returns the derived key (nil for an
// empty credential).
func (v verifier) check(pin []byte) (credKey, bool) {
	if len(v.Salt) == 0 {
		return nil, len(pin) == 0
	}
	k := deriveCred(pin, v.Salt, v.Iter)
	if subtle.ConstantTimeCompare(k.verifyHash(), v.Hash) != 1 {
		zero(k)
		return nil, false
	}
	return k, true
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("opalsim: system random source failed: %v", err))
	}
	return b
}

func zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

var errUnwrap = errors.New("key unwrap failed")

// seal wraps secret under kek (AES-256-GCM); ad binds the wrapped copy to
// its purpose so copies cannot be swapped between slots.
func seal(kek, secret []byte, ad string) []byte {
	blk, err := aes.NewCipher(kek)
	if err != nil {
		panic(fmt.Sprintf("opalsim: bad KEK length %d", len(kek)))
	}
	g, _ := cipher.NewGCM(blk)
	nonce := randBytes(g.NonceSize())
	return g.Seal(nonce, nonce, secret, []byte(ad))
}

func unseal(kek, wrapped []byte, ad string) ([]byte, error) {
	blk, err := aes.NewCipher(kek)
	if err != nil {
		return nil, errUnwrap
	}
	g, _ := cipher.NewGCM(blk)
	if len(wrapped) < g.NonceSize() {
		return nil, errUnwrap
	}
	pt, err := g.Open(nil, wrapped[:g.NonceSize()], wrapped[g.NonceSize():], []byte(ad))
	if err != nil {
		return nil, errUnwrap
	}
	return pt, nil
}
