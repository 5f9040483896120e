// Package techauth hashes and checks the technician credential that
// guards the recovery shell. Only the hash (scrypt) is stored, on the
// boot medium; wrong answers are delayed, with the delay doubling, and
// counted, and a Gate refuses every answer once the limit is reached.
package techauth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/scrypt"
)

// Default scrypt cost: N = 2^15, r = 8, p = 1 (32 MiB, ~0.1 s).
const (
	defaultLogN = 15
	defaultR    = 8
	defaultP    = 1
	saltSize    = 16
	hashSize    = 32
	// MinLength is the shortest credential Hash accepts.
	MinLength = 8
)

var b64 = base64.RawStdEncoding

// Hash returns the stored form of a credential:
// $scrypt$ln=15,r=8,p=1$<salt>$<hash> (base64, no padding).
func Hash(credential string) (string, error) {
	if len(credential) < MinLength {
		return "", fmt.Errorf("technician credential: at least %d characters required", MinLength)
	}
	salt := make([]byte, saltSize)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("technician credential: salt: %w", err)
	}
	h, err := scrypt.Key([]byte(credential), salt, 1<<defaultLogN, defaultR, defaultP, hashSize)
	if err != nil {
		return "", fmt.Errorf("technician credential: %w", err)
	}
	return fmt.Sprintf("$scrypt$ln=%d,r=%d,p=%d$%s$%s", defaultLogN, defaultR, defaultP, b64.EncodeToString(salt), b64.EncodeToString(h)), nil
}

type params struct {
	logN, r, p int
	salt, hash []byte
}

func parse(stored string) (params, error) {
	var pr params
	parts := strings.Split(stored, "$")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "scrypt" {
		return pr, errors.New("technician credential hash: not of the form $scrypt$ln=N,r=R,p=P$salt$hash")
	}
	if _, err := fmt.Sscanf(parts[2], "ln=%d,r=%d,p=%d", &pr.logN, &pr.r, &pr.p); err != nil {
		return pr, fmt.Errorf("technician credential hash: parameters %q: want ln=N,r=R,p=P", parts[2])
	}
	if pr.logN < 10 || pr.logN > 20 || pr.r < 1 || pr.r > 32 || pr.p < 1 || pr.p > 16 {
		return pr, fmt.Errorf("technician credential hash: parameters %q out of range", parts[2])
	}
	var err error
	if pr.salt, err = b64.DecodeString(parts[3]); err != nil || len(pr.salt) < 8 {
		return pr, errors.New("technician credential hash: bad salt")
	}
	if pr.hash, err = b64.DecodeString(parts[4]); err != nil || len(pr.hash) < 16 {
		return pr, errors.New("technician credential hash: bad hash")
	}
	return pr, nil
}

// Check validates the form of a stored hash without a credential.
func Check(stored string) error {
	_, err := parse(stored)
	return err
}

// Verify reports whether credential matches the stored hash.
func Verify(stored, credential string) (bool, error) {
	pr, err := parse(stored)
	if err != nil {
		return false, err
	}
	h, err := scrypt.Key([]byte(credential), pr.salt, 1<<pr.logN, pr.r, pr.p, len(pr.hash))
	if err != nil {
		return false, fmt.Errorf("technician credential: %w", err)
	}
	return subtle.ConstantTimeCompare(h, pr.hash) == 1, nil
}

// ErrLockedOut means the gate has seen its maximum of wrong answers.
var ErrLockedOut = errors.New("too many wrong technician credentials: recovery shell locked until the next boot")

// ErrWrong means the answer did not match.
var ErrWrong = errors.New("wrong technician credential")

// Gate counts answers to the technician prompt for one boot.
type Gate struct {
	// Hash is the stored credential hash.
	Hash string
	// MaxAttempts wrong answers lock the gate (default 5).
	MaxAttempts int
	// Delay follows the first wrong answer and doubles after each one,
	// up to one minute (default 2s).
	Delay time.Duration
	// Sleep waits d or until ctx ends; nil uses a timer.
	Sleep func(ctx context.Context, d time.Duration) error

	wrong int
}

// Wrong returns the number of wrong answers so far.
func (g *Gate) Wrong() int { return g.wrong }

// Remaining returns how many more wrong answers the gate accepts.
func (g *Gate) Remaining() int { return g.max() - g.wrong }

func (g *Gate) max() int {
	if g.MaxAttempts <= 0 {
		return 5
	}
	return g.MaxAttempts
}

// Try checks one answer. It returns nil for the right credential, ErrWrong
// (after the delay) for a wrong one, and ErrLockedOut once the limit is
// reached, without looking at the answer.
func (g *Gate) Try(ctx context.Context, answer string) error {
	if g.wrong >= g.max() {
		return ErrLockedOut
	}
	ok, err := Verify(g.Hash, answer)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	g.wrong++
	d := g.Delay
	if d <= 0 {
		d = 2 * time.Second
	}
	for i := 1; i < g.wrong && d < time.Minute; i++ {
		d *= 2
	}
	d = min(d, time.Minute)
	sleep := g.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	if err := sleep(ctx, d); err != nil {
		return err
	}
	if g.wrong >= g.max() {
		return ErrLockedOut
	}
	return ErrWrong
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
