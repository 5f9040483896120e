package sed

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
)

// Step names a change Enable or Rotate made to a drive, for the caller's
// journal.
type Step string

// Steps of Enable and Rotate.
const (
	StepOwnership       Step = "take ownership (SID from MSID)"
	StepActivate        Step = "activate Locking SP"
	StepVerifierPending Step = "write pending key verifier"
	StepShareDataStore  Step = "share DataStore with Anybody"
	StepAdmin1          Step = "set Admin1 credential"
	StepSID             Step = "set SID credential"
	StepConfigure       Step = "configure global range"
	StepVerifier        Step = "write key verifier"
)

// EnableRequest holds the credentials Enable provisions. The caller owns
// and zeroes the keys.
type EnableRequest struct {
	SID, Admin1 []byte
	// ArraySerial and Generation go into the key verifier.
	ArraySerial string
	Generation  uint64
	// Progress, when set, is called after each step that changed the
	// drive.
	Progress func(Step)
}

// EnableResult reports what Enable did.
type EnableResult struct {
	// Steps lists the changes made by this call, in order (none: the
	// drive was already enabled with these keys).
	Steps []Step
	// DataStoreShared reports that Anybody can read the key verifier;
	// when false the caller keeps Verifier elsewhere (UseVerifier).
	DataStoreShared bool
	Verifier        *Verifier
	SIDTries        TriesInfo
	Admin1Tries     TriesInfo
}

// candidate is a credential that may be an authority's current one.
type candidate struct {
	label string
	cred  []byte
}

// presentCandidates authenticates as a with the first candidate the drive
// accepts. When the state a drive was left in (by an interrupted Enable or
// Rotate) cannot be told from outside, it holds one of two credentials;
// after the first is rejected the guard is deliberately reset once so the
// other can be presented: at most one failed presentation per authority
// for a drive in such a state, two for a drive owned by someone else.
func (s *session) presentCandidates(a Authority, cands []candidate) (int, TriesInfo, error) {
	var rejected []string
	for i, c := range cands {
		t, err := s.present(a, c.cred)
		if err == nil {
			if len(rejected) > 0 {
				s.c.d.log.Info("resumed with a later candidate", "authority", a.String(), "rejected", rejected, "accepted", c.label)
			}
			return i, t, nil
		}
		if !errors.Is(err, ErrWrongCredential) {
			return -1, t, err
		}
		rejected = append(rejected, c.label)
		if i == len(cands)-1 {
			return -1, t, fmt.Errorf("%s rejected %v: %w", a, rejected, err)
		}
		s.c.d.guard.reset(a)
	}
	return -1, TriesInfo{Authority: a}, errors.New("no candidate credentials")
}

func same(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// Enable provisions the drive: take ownership (SID from MSID to req.SID),
// activate the Locking SP, set Admin1 to req.Admin1, write the key
// verifier, share the DataStore with Anybody where the drive allows,
// configure the global range to lock on power cycle. It is idempotent and
// resumable: each step looks at the drive first (Level 0, the Locking SP
// life cycle, the key verifier), so running it again after an
// interruption finishes the job, and running it on an enabled drive
// changes nothing. The range is not locked until the next power cycle.
func (d *Drive) Enable(ctx context.Context, req EnableRequest) (EnableResult, error) {
	var res EnableResult
	err := d.run(ctx, "enable", func() (err error) {
		if err := checkCredential("SID key", req.SID); err != nil {
			return err
		}
		if err := checkCredential("Admin1 key", req.Admin1); err != nil {
			return err
		}
		if len(req.ArraySerial) > maxVerifierText {
			return fmt.Errorf("array serial %q is longer than %d bytes", req.ArraySerial, maxVerifierText)
		}
		serial, err := d.Serial()
		if err != nil {
			return err
		}
		progress := func(s Step) {
			res.Steps = append(res.Steps, s)
			d.log.Info("enable step", "step", string(s))
			if req.Progress != nil {
				req.Progress(s)
			}
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		if !c.sum.LockingSupported || !c.sum.MediaEncryption {
			return fmt.Errorf("%w: locking supported=%v, media encryption=%v", ErrNotOpal, c.sum.LockingSupported, c.sum.MediaEncryption)
		}
		v, _, err := c.verifier()
		if err != nil {
			return fmt.Errorf("read key verifier: %w", err)
		}
		if v != nil {
			if v.ArraySerial != req.ArraySerial {
				return fmt.Errorf("the drive's key verifier belongs to array %q, not %q", v.ArraySerial, req.ArraySerial)
			}
			if v.DriveSerial != serial {
				return fmt.Errorf("%w: the verifier belongs to drive %q, this drive reports %q", ErrVerifierMismatch, v.DriveSerial, serial)
			}
		}

		activated, err := c.enableSID(req, v, progress, &res)
		if err != nil {
			return err
		}
		if activated {
			v = nil // a just-activated Locking SP has an empty DataStore
		}
		return c.enableAdmin1(req, serial, v, activated, progress, &res)
	})
	return res, err
}

// enableSID authenticates as SID (MSID on a new drive), takes ownership
// and activates the Locking SP when needed.
func (c *conn) enableSID(req EnableRequest, v *Verifier, progress func(Step), res *EnableResult) (activated bool, err error) {
	ours := candidate{"SID key", req.SID}
	const msidLabel = "MSID"
	var order []string
	switch {
	case v != nil && v.Has(RoleSID):
		if _, ok := v.Match(RoleSID, req.SID); !ok {
			return false, fmt.Errorf("SID key: %w", ErrVerifierMismatch)
		}
		order = []string{ours.label}
	case c.sum.SID == SIDNotMSID:
		order = []string{ours.label}
	case c.sum.SID == SIDIsMSID:
		order = []string{msidLabel}
	case c.sum.LockingEnabled:
		// Enable sets SID before it activates the Locking SP, so an
		// active Locking SP most likely has our SID already.
		order = []string{ours.label, msidLabel}
	default:
		order = []string{msidLabel, ours.label}
	}
	var cands []candidate
	for _, l := range order {
		if l == ours.label {
			cands = append(cands, ours)
			continue
		}
		msid, err := c.readMSID()
		if err != nil {
			return false, err
		}
		defer zero(msid)
		cands = append(cands, candidate{msidLabel, msid})
	}

	s, err := c.open(core.AdminSP, true)
	if err != nil {
		return false, err
	}
	defer func() { s.closeAfter(&err) }()
	i, tries, err := s.presentCandidates(SID, cands)
	if err != nil {
		return false, fmt.Errorf("take ownership: %w", err)
	}
	res.SIDTries = tries
	if cands[i].label == msidLabel {
		if err := s.setPIN(SID, req.SID); err != nil {
			return false, err
		}
		progress(StepOwnership)
		// Verify the new credential in a new session and activate
		// from there, so activation copies a verified SID credential
		// to Admin1.
		if err := s.close(); err != nil {
			return false, fmt.Errorf("close Admin SP session: %w", err)
		}
		if s, res.SIDTries, _, err = c.authSessionNoVerifier(SID, req.SID); err != nil {
			return false, fmt.Errorf("verify new SID credential: %w", err)
		}
	}
	if activated, err = s.activate(); err != nil {
		return false, err
	}
	if activated {
		progress(StepActivate)
	}
	return activated, nil
}

// enableAdmin1 sets Admin1, the key verifier, the DataStore ACE and the
// global range, in that order.
func (c *conn) enableAdmin1(req EnableRequest, serial string, v *Verifier, activated bool, progress func(Step), res *EnableResult) (err error) {
	ours := candidate{"Admin1 key", req.Admin1}
	fromSID := candidate{"SID key (Admin1 after activation)", req.SID}
	var cands []candidate
	switch {
	case activated:
		cands = []candidate{fromSID}
	case v != nil && v.Has(RoleAdmin1):
		if _, ok := v.Match(RoleAdmin1, req.Admin1); !ok {
			return fmt.Errorf("Admin1 key: %w", ErrVerifierMismatch)
		}
		if v.Pending {
			cands = []candidate{ours, fromSID}
		} else {
			cands = []candidate{ours}
		}
	default:
		cands = []candidate{fromSID, ours}
	}
	if same(req.SID, req.Admin1) {
		cands = []candidate{ours}
	}

	final := &Verifier{ArraySerial: req.ArraySerial, DriveSerial: serial}
	final.Add(RoleSID, req.Generation, req.SID)
	final.Add(RoleAdmin1, req.Generation, req.Admin1)
	res.Verifier = final

	s, err := c.open(core.LockingSP, true)
	if err != nil {
		return err
	}
	defer func() { s.closeAfter(&err) }()
	i, tries, err := s.presentCandidates(Admin1, cands)
	if err != nil {
		return fmt.Errorf("authenticate Locking SP admin: %w", err)
	}
	res.Admin1Tries = tries
	admin1Changed := cands[i].label != ours.label
	if admin1Changed {
		pending := *final
		pending.Pending = true
		if err := s.writeVerifier(&pending); err != nil {
			return err
		}
		progress(StepVerifierPending)
	}
	wasPublic := c.vSrc == VerifierOnDrive
	shared, err := s.shareDataStore()
	if err != nil {
		return err
	}
	if shared && !wasPublic {
		progress(StepShareDataStore)
	}
	if admin1Changed {
		if err := s.setPIN(Admin1, req.Admin1); err != nil {
			return err
		}
		progress(StepAdmin1)
		if err := s.close(); err != nil {
			return fmt.Errorf("close Locking SP session: %w", err)
		}
		// Verify the new credential in a new session and store the
		// final verifier from it.
		if s, res.Admin1Tries, _, err = c.authSessionNoVerifier(Admin1, req.Admin1); err != nil {
			return fmt.Errorf("verify new Admin1 credential: %w", err)
		}
	}
	// Lock on power cycle only once Admin1 holds its final credential: a
	// power cut before this point leaves a drive that does not lock, never
	// one locked under the interim credential.
	if changed, err := s.ensureGlobalRange(); err != nil {
		return err
	} else if changed {
		progress(StepConfigure)
	}
	if changed, err := s.ensureVerifier(final); err != nil {
		return err
	} else if changed {
		progress(StepVerifier)
	}
	if err := s.close(); err != nil {
		return fmt.Errorf("close Locking SP session: %w", err)
	}
	if res.DataStoreShared, err = c.dataStorePublic(); err != nil {
		return err
	}
	return nil
}

// authSessionNoVerifier opens a write session authenticated as a without
// consulting the key verifier (used right after this package set the
// credential itself; the guard and the tries check still apply).
func (c *conn) authSessionNoVerifier(a Authority, cred []byte) (*session, TriesInfo, KeyCheck, error) {
	s, err := c.open(a.sp, true)
	if err != nil {
		return nil, TriesInfo{Authority: a}, KeyCheck{}, err
	}
	t, err := s.present(a, cred)
	if err != nil {
		s.closeAfter(&err)
		return nil, t, KeyCheck{}, err
	}
	return s, t, KeyCheck{}, nil
}

// ensureGlobalRange configures the global range unless it already is.
func (s *session) ensureGlobalRange() (bool, error) {
	if st, err := s.globalRange(); err == nil && st.ReadLockEnabled && st.WriteLockEnabled && st.LockOnPowerCycle {
		return false, nil
	}
	return true, s.configureGlobalRange()
}

// ensureVerifier writes v unless the DataStore already holds it.
func (s *session) ensureVerifier(v *Verifier) (bool, error) {
	want, err := v.MarshalBinary()
	if err != nil {
		return false, err
	}
	if have, err := s.readVerifierRegion(); err == nil && bytes.HasPrefix(have, want) {
		return false, nil
	}
	return true, s.writeVerifier(v)
}
