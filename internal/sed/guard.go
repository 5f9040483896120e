package sed

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// TriesInfo is an authority's C_PIN try counter as read from the drive
// inside an authenticated session.
type TriesInfo struct {
	Authority Authority
	// Known is false when the drive did not let the session read them.
	Known bool
	// Tries counts failed authentications; TryLimit is the count at
	// which the authority locks out (0: no limit).
	Tries    int
	TryLimit int
}

// Left returns how many failed presentations the authority can still
// absorb before it locks out, or -1 when there is no limit or the
// counters are unknown.
func (t TriesInfo) Left() int {
	if !t.Known || t.TryLimit == 0 {
		return -1
	}
	if l := t.TryLimit - t.Tries; l > 0 {
		return l
	}
	return 0
}

// String renders e.g. "Admin1 tries 1/5".
func (t TriesInfo) String() string {
	if !t.Known {
		return t.Authority.String() + " tries unknown"
	}
	if t.TryLimit == 0 {
		return fmt.Sprintf("%s tries %d (no limit)", t.Authority, t.Tries)
	}
	return fmt.Sprintf("%s tries %d/%d", t.Authority, t.Tries, t.TryLimit)
}

// TriesError refuses a presentation that could exhaust an authority's
// tries. It matches ErrTriesLow.
type TriesError struct {
	Authority Authority
	// Left is the number of failed presentations the authority can
	// still absorb, by the last count read plus failures seen since.
	Left  int
	Tries TriesInfo
}

func (e *TriesError) Error() string {
	return fmt.Sprintf("refused to present a new credential to %s: %d of %d tries left", e.Authority, e.Left, e.Tries.TryLimit)
}

// Is makes errors.Is(err, ErrTriesLow) true.
func (e *TriesError) Is(target error) bool { return target == ErrTriesLow }

// GuardError refuses a presentation after an earlier failure. It matches
// ErrGuard.
type GuardError struct {
	Authority Authority
	Failures  int
}

func (e *GuardError) Error() string {
	return fmt.Sprintf("refused to present a credential to %s: %d presentation(s) already failed in this boot (reset the guard to allow more)", e.Authority, e.Failures)
}

// Is makes errors.Is(err, ErrGuard) true.
func (e *GuardError) Is(target error) bool { return target == ErrGuard }

// guard is a Drive's memory of presentations: failures per authority, the
// last try counters read, and a fingerprint (HMAC under a per-Drive random
// key, never the credential) of the credential last accepted.
type guard struct {
	fpKey  [32]byte
	failed map[Authority]int
	auth   map[Authority]*authState
}

type authState struct {
	tries TriesInfo
	// failuresSince counts failures after tries were read.
	failuresSince int
	good          [32]byte
	haveGood      bool
}

func (g *guard) init() {
	if _, err := rand.Read(g.fpKey[:]); err != nil {
		panic("sed: no randomness for the credential fingerprint key: " + err.Error())
	}
	g.failed = map[Authority]int{}
	g.auth = map[Authority]*authState{}
}

func (g *guard) fingerprint(cred []byte) [32]byte {
	m := hmac.New(sha256.New, g.fpKey[:])
	m.Write(cred)
	var out [32]byte
	copy(out[:], m.Sum(nil))
	return out
}

func (g *guard) state(a Authority) *authState {
	s := g.auth[a]
	if s == nil {
		s = &authState{}
		g.auth[a] = s
	}
	return s
}

// check decides whether cred may be presented to a.
func (g *guard) check(a Authority, cred []byte) error {
	if n := g.failed[a]; n > 0 {
		return &GuardError{Authority: a, Failures: n}
	}
	st := g.state(a)
	if f := g.fingerprint(cred); st.haveGood && hmac.Equal(st.good[:], f[:]) {
		// The credential the drive last accepted for a: no try at risk.
		return nil
	}
	if st.tries.Known && st.tries.TryLimit > 0 {
		left := st.tries.TryLimit - st.tries.Tries - st.failuresSince
		if left <= 1 {
			return &TriesError{Authority: a, Left: max(left, 0), Tries: st.tries}
		}
	}
	return nil
}

// estimate returns the tries a has left by the last count read plus the
// failures seen since, when a count with a limit was read.
func (g *guard) estimate(a Authority) (left, limit int, ok bool) {
	st := g.auth[a]
	if st == nil || !st.tries.Known || st.tries.TryLimit == 0 {
		return 0, 0, false
	}
	return max(st.tries.TryLimit-st.tries.Tries-st.failuresSince, 0), st.tries.TryLimit, true
}

// failure records a rejected presentation.
func (g *guard) failure(a Authority) {
	g.failed[a]++
	g.state(a).failuresSince++
}

// success records an accepted presentation.
func (g *guard) success(a Authority, cred []byte) {
	st := g.state(a)
	st.good = g.fingerprint(cred)
	st.haveGood = true
}

// observed records try counters read in an authenticated session.
func (g *guard) observed(t TriesInfo) {
	if !t.Known {
		return
	}
	st := g.state(t.Authority)
	st.tries = t
	st.failuresSince = 0
}

// forget drops what is known about a's credential (after a revert).
func (g *guard) forget(a Authority) {
	delete(g.auth, a)
}

// failures reports the failed presentations to a since the last reset.
func (g *guard) failures(a Authority) int { return g.failed[a] }

// reset forgets failures (all authorities when none are given).
func (g *guard) reset(as ...Authority) {
	if len(as) == 0 {
		clear(g.failed)
		return
	}
	for _, a := range as {
		delete(g.failed, a)
	}
}

// ResetGuard allows presentations again after a failure: for the given
// authorities, or all when none are given. Call it only when a further
// failed presentation is acceptable (the caller knows the tries left or
// has a reason to believe the next credential is right).
func (d *Drive) ResetGuard(as ...Authority) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.guard.reset(as...)
}

// Failures reports how many presentations to a failed on this Drive
// since its guard was last reset.
func (d *Drive) Failures(a Authority) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.guard.failures(a)
}

// LastTries returns the try counters last read for a on this Drive.
func (d *Drive) LastTries(a Authority) TriesInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st := d.guard.auth[a]; st != nil {
		return st.tries
	}
	return TriesInfo{Authority: a}
}
