package sed

import (
	"context"
	"errors"
	"fmt"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
)

// VerifierSource says where the key verifier a credential was checked
// against came from.
type VerifierSource int

// Verifier sources.
const (
	// VerifierNone: no verifier for the credential's role was available;
	// only the guard and the tries check protected the presentation.
	VerifierNone VerifierSource = iota
	// VerifierOnDrive: read from the drive's DataStore as Anybody.
	VerifierOnDrive
	// VerifierSupplied: given by the caller (UseVerifier, WithVerifier).
	VerifierSupplied
)

func (s VerifierSource) String() string {
	return [...]string{"none", "on drive", "supplied"}[s]
}

// KeyCheck is the outcome of checking a credential against a verifier
// before presenting it.
type KeyCheck struct {
	Source     VerifierSource
	Generation uint64 // generation of the matching entry
	Pending    bool   // the verifier records a credential change in progress
}

// roleOf maps an authority to its verifier role (0: none).
func roleOf(a Authority) Role {
	switch a {
	case Admin1:
		return RoleAdmin1
	case SID:
		return RoleSID
	}
	return 0
}

// UseVerifier makes the Drive check Admin1 and SID credentials against v
// (a verifier kept off the drive, for drives that refuse ShareDataStore)
// instead of reading the DataStore. nil returns to reading the drive.
func (d *Drive) UseVerifier(v *Verifier) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.offDrive = v
}

// verifier returns the verifier to check credentials against: the one
// supplied, else the drive's own when Anybody may read it. A drive without
// a readable, intact verifier yields nil.
func (c *conn) verifier() (*Verifier, VerifierSource, error) {
	if c.vLoaded {
		return c.v, c.vSrc, nil
	}
	switch {
	case c.override != nil:
		c.v, c.vSrc = c.override, VerifierSupplied
	case c.d.offDrive != nil:
		c.v, c.vSrc = c.d.offDrive, VerifierSupplied
	case c.sum.LockingEnabled:
		v, err := c.readPublicVerifier()
		if err != nil {
			return nil, VerifierNone, err
		}
		if v != nil {
			c.v, c.vSrc = v, VerifierOnDrive
		}
	}
	c.vLoaded = true
	return c.v, c.vSrc, nil
}

// readPublicVerifier reads the verifier region as Anybody. A drive that
// refuses the read, or holds no intact verifier, yields nil.
func (c *conn) readPublicVerifier() (v *Verifier, err error) {
	s, err := c.open(core.LockingSP, false)
	if err != nil {
		return nil, err
	}
	defer s.closeAfter(&err)
	p, err := s.readVerifierRegion()
	if errors.Is(err, ErrNotAuthorized) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	v, err = ParseVerifier(p)
	if err != nil {
		if !errors.Is(err, ErrNotVerifier) {
			c.d.log.Warn("ignoring damaged key verifier", "err", err)
		}
		return nil, nil
	}
	return v, nil
}

func (s *session) readVerifierRegion() ([]byte, error) {
	size, _, err := s.dataStoreInfo()
	if err != nil {
		return nil, err
	}
	return s.readDataStore(0, min(size, VerifierRegionSize))
}

// checkKey checks cred against the verifier entry for a's role before it
// is presented. A mismatch returns ErrVerifierMismatch: nothing reaches
// the drive.
func (c *conn) checkKey(a Authority, cred []byte) (KeyCheck, error) {
	role := roleOf(a)
	if role == 0 {
		return KeyCheck{}, nil
	}
	v, src, err := c.verifier()
	if err != nil {
		return KeyCheck{}, fmt.Errorf("read key verifier: %w", err)
	}
	if v == nil || !v.Has(role) {
		return KeyCheck{}, nil
	}
	if serial, err := c.d.Serial(); err == nil && serial != v.DriveSerial {
		return KeyCheck{}, fmt.Errorf("%w: the verifier belongs to drive %q, this drive reports %q", ErrVerifierMismatch, v.DriveSerial, serial)
	}
	gen, ok := v.Match(role, cred)
	if !ok {
		return KeyCheck{}, fmt.Errorf("%s credential: %w", a, ErrVerifierMismatch)
	}
	kc := KeyCheck{Source: src, Generation: gen, Pending: v.Pending}
	if c.wantGen != 0 && gen != c.wantGen {
		return kc, fmt.Errorf("%s credential of generation %d matches the verifier's generation %d entry: %w", a, c.wantGen, gen, ErrGenerationMismatch)
	}
	return kc, nil
}

// authSession checks cred against the verifier, opens a session with a's
// SP and authenticates as a. On error nothing is left open.
func (c *conn) authSession(a Authority, cred []byte, write bool) (*session, TriesInfo, KeyCheck, error) {
	kc, err := c.checkKey(a, cred)
	if err != nil {
		return nil, TriesInfo{Authority: a}, kc, err
	}
	s, err := c.open(a.sp, write)
	if err != nil {
		return nil, TriesInfo{Authority: a}, kc, err
	}
	t, err := s.present(a, cred)
	if err != nil {
		s.closeAfter(&err)
		return nil, t, kc, err
	}
	return s, t, kc, nil
}

// UnlockResult reports an unlock for the boot record.
type UnlockResult struct {
	// Tries are Admin1's counters read after authenticating.
	Tries TriesInfo
	// Check says which verifier the key was checked against.
	Check KeyCheck
}

// UnlockOption adjusts Unlock.
type UnlockOption func(*unlockConfig)

type unlockConfig struct {
	verifier   *Verifier
	require    bool
	generation uint64
}

// WithVerifier checks the key against v (kept off the drive) instead of
// the drive's own verifier.
func WithVerifier(v *Verifier) UnlockOption {
	return func(c *unlockConfig) { c.verifier = v }
}

// RequireVerifier refuses to present a key that no verifier can check.
func RequireVerifier() UnlockOption {
	return func(c *unlockConfig) { c.require = true }
}

// ExpectGeneration refuses, without presenting it, a key that the
// verifier matches under another generation than g (ErrGenerationMismatch):
// a key source that mislabels its keys. A drive without a verifier is not
// checked.
func ExpectGeneration(g uint64) UnlockOption {
	return func(c *unlockConfig) { c.generation = g }
}

// Unlock read- and write-unlocks the global range with the Admin1
// credential. The key is first checked against the key verifier (refused
// with ErrVerifierMismatch, without reaching the drive, when it does not
// match), then presented under the guard (ErrGuard after an earlier
// failure, ErrTriesLow when the tries left are too few). When the shadow
// MBR is enabled and not done, Unlock also sets MBRDone.
func (d *Drive) Unlock(ctx context.Context, admin1 []byte, opts ...UnlockOption) (UnlockResult, error) {
	var cfg unlockConfig
	for _, o := range opts {
		o(&cfg)
	}
	var res UnlockResult
	err := d.run(ctx, "unlock", func() (err error) {
		if err := checkCredential("Admin1 credential", admin1); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		c.override, c.wantGen = cfg.verifier, cfg.generation
		if !c.sum.LockingEnabled {
			return errors.New("locking is not enabled on this drive (Locking SP inactive)")
		}
		if cfg.require {
			if v, _, err := c.verifier(); err != nil {
				return err
			} else if v == nil || !v.Has(RoleAdmin1) {
				return fmt.Errorf("%w for Admin1 (none supplied, none readable on the drive)", ErrNoVerifier)
			}
		}
		s, tries, kc, err := c.authSession(Admin1, admin1, true)
		res.Tries, res.Check = tries, kc
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		if err := s.setGlobalLocked(false); err != nil {
			return err
		}
		if c.sum.MBREnabled && !c.sum.MBRDone {
			if err := s.set(uidMBRControl, func(mc *core.MethodCall) { namedBool(mc, colMBRControlDone, true) }); err != nil {
				return fmt.Errorf("set MBRDone: %w", err)
			}
		}
		return nil
	})
	return res, err
}

// CheckKey checks a candidate credential for who (Admin1 or SID) against
// the key verifier without presenting it: the preflight check.
func (d *Drive) CheckKey(ctx context.Context, who Authority, cred []byte) (KeyCheck, error) {
	var kc KeyCheck
	err := d.run(ctx, "check "+who.String()+" key of", func() (err error) {
		if roleOf(who) == 0 {
			return fmt.Errorf("no key verifier role for %s", who)
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		v, _, err := c.verifier()
		if err != nil {
			return err
		}
		if v == nil || !v.Has(roleOf(who)) {
			return fmt.Errorf("%w for %s", ErrNoVerifier, who)
		}
		kc, err = c.checkKey(who, cred)
		return err
	})
	return kc, err
}

// ReadVerifier reads the key verifier from the DataStore, as Admin1 with
// admin1 or as Anybody when admin1 is nil.
func (d *Drive) ReadVerifier(ctx context.Context, admin1 []byte) (*Verifier, error) {
	var v *Verifier
	err := d.run(ctx, "read key verifier of", func() (err error) {
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		s, err := c.dataStoreSession(admin1, false)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		p, err := s.readVerifierRegion()
		if err != nil {
			return err
		}
		v, err = ParseVerifier(p)
		return err
	})
	return v, err
}

// writeVerifier stores v at the start of the DataStore, zero-padded to
// the verifier region.
func (s *session) writeVerifier(v *Verifier) error {
	p, err := v.MarshalBinary()
	if err != nil {
		return err
	}
	size, _, err := s.dataStoreInfo()
	if err != nil {
		return err
	}
	region := make([]byte, min(size, VerifierRegionSize))
	if len(p) > len(region) {
		return fmt.Errorf("key verifier of %d bytes does not fit the %d-byte DataStore", len(p), size)
	}
	copy(region, p)
	if err := s.writeDataStore(0, region); err != nil {
		return fmt.Errorf("write key verifier: %w", err)
	}
	return nil
}
