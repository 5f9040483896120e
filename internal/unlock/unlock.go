// Package unlock opens one self-encrypting drive from an ordered list of
// candidate keys, with sedboot's lockout policy. The boot agent, the
// recovery shell's unlock from a backup and the key life cycle's tests all
// unlock through Drive, so the policy exists once:
//
//   - Each candidate's Admin1 PIN is derived from its key (keys.PIN) and
//     checked against the drive's key verifier before it is presented. A
//     key the verifier rejects (sed.ErrVerifierMismatch) costs nothing and
//     the next candidate is tried.
//   - A presentation the drive refuses (sed.ErrWrongCredential) ends the
//     attempt: at most one failed presentation per drive. The one
//     exception is a verifier that records a credential change in progress
//     (sed.KeyCheck.Pending, a rotation or enable cut short): it admits
//     both generations and only the drive knows which one it holds, so
//     after that refusal the sed guard is reset once and the next
//     candidate is presented.
//   - Any other error (the guard, too few tries left, a transport error)
//     ends the attempt.
//
// Every candidate key and every derived PIN is zeroed before Drive
// returns, except the accepted PIN when the caller asks to keep it.
package unlock

import (
	"context"
	"errors"

	"github.com/sedboot/sedboot/internal/keys"
	"github.com/sedboot/sedboot/internal/secret"
	"github.com/sedboot/sedboot/internal/sed"
)

// ErrNoCandidate reports a drive for which no candidate key was given.
var ErrNoCandidate = errors.New("no candidate key")

// Candidate is one key that may open the drive.
type Candidate struct {
	// Generation is the key's generation.
	Generation int
	// Source and Server say where the key came from ("kmip" and the
	// server's name, "backup" and the file), for reports.
	Source string
	Server string
	// Key is the drive key (not the PIN). Drive zeroes it.
	Key *secret.Secret
}

// Result reports what Drive did.
type Result struct {
	// Unlocked says a candidate opened the drive; Generation, Source and
	// Server are then the accepted candidate's.
	Unlocked   bool
	Generation int
	Source     string
	Server     string
	// Presentations counts the keys that reached the drive (accepted or
	// refused); Wrong counts the refused ones.
	Presentations int
	Wrong         int
	// Skipped lists the generations the verifier rejected: never
	// presented, no try spent.
	Skipped []int
	// Retried says a refusal during an interrupted key change was
	// followed by the next candidate.
	Retried bool
	// Tries are the Admin1 try counters read at the last presentation
	// (Known false when none was read).
	Tries sed.TriesInfo
	// Check is the verifier check of the last candidate checked.
	Check sed.KeyCheck
	// PIN is the accepted Admin1 PIN when KeepPIN was given (the caller
	// zeroes it), else nil.
	PIN *secret.Secret
	// Err is nil when unlocked, else the error that ended the attempt.
	Err error
}

// Option adjusts Drive.
type Option func(*config)

type config struct {
	keepPIN         bool
	requireVerifier bool
	exactGeneration bool
	onRetry         func(refused, next int)
}

// KeepPIN returns the accepted Admin1 PIN in Result.PIN (to lock the drive
// again later).
func KeepPIN() Option { return func(c *config) { c.keepPIN = true } }

// RequireVerifier presents no key that a key verifier cannot check: on a
// drive without one the attempt ends with sed.ErrNoVerifier and nothing
// presented.
func RequireVerifier() Option { return func(c *config) { c.requireVerifier = true } }

// ExactGeneration ends the attempt, without presenting it, at a key that
// the verifier matches under another generation than its candidate's
// (sed.ErrGenerationMismatch): the key source mislabels its keys.
func ExactGeneration() Option { return func(c *config) { c.exactGeneration = true } }

// OnRetry is called with the refused and the next candidate's
// generations before the next candidate is presented after a refusal
// during an interrupted key change (for the console).
func OnRetry(f func(refused, next int)) Option {
	return func(c *config) { c.onRetry = f }
}

// Drive tries cands in order on d, whose serial number is serial (bound
// into the PIN derivation), and reports the outcome. It zeroes every
// candidate's key.
func Drive(ctx context.Context, d *sed.Drive, serial string, cands []Candidate, opts ...Option) Result {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	defer func() {
		for _, c := range cands {
			c.Key.Zero()
		}
	}()
	var res Result
	retried := false
	for i, c := range cands {
		pin, err := keys.PIN(c.Key, keys.RoleAdmin1, serial)
		c.Key.Zero()
		if err != nil {
			res.Err = err
			continue
		}
		var uo []sed.UnlockOption
		if cfg.requireVerifier {
			uo = append(uo, sed.RequireVerifier())
		}
		if cfg.exactGeneration {
			uo = append(uo, sed.ExpectGeneration(uint64(c.Generation)))
		}
		ur, err := d.Unlock(ctx, pin.Bytes(), uo...)
		res.Check = ur.Check
		if ur.Tries.Known {
			res.Tries = ur.Tries
		}
		if err == nil || errors.Is(err, sed.ErrWrongCredential) {
			res.Presentations++
		}
		if err == nil {
			res.Unlocked, res.Err = true, nil
			res.Generation, res.Source, res.Server = c.Generation, c.Source, c.Server
			if cfg.keepPIN {
				res.PIN = pin
			} else {
				pin.Zero()
			}
			return res
		}
		pin.Zero()
		res.Err = err
		if errors.Is(err, sed.ErrVerifierMismatch) {
			res.Skipped = append(res.Skipped, c.Generation)
			continue // not presented: the next candidate may match
		}
		if !errors.Is(err, sed.ErrWrongCredential) {
			break // the guard, the tries, the transport: nothing more
		}
		res.Wrong++
		if ur.Check.Pending && !retried && i+1 < len(cands) {
			// The verifier records a credential change in progress: it
			// admits both generations, and only the drive knows which
			// one it holds. This refusal was the one that costs; the
			// next candidate is the drive's credential.
			retried, res.Retried = true, true
			d.ResetGuard(sed.Admin1)
			if cfg.onRetry != nil {
				cfg.onRetry(c.Generation, cands[i+1].Generation)
			}
			continue
		}
		break
	}
	if res.Err == nil {
		res.Err = ErrNoCandidate
	}
	return res
}
