package sed

import (
	"context"
	"errors"
	"fmt"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
)

// RotateRequest changes a drive's credentials to a new key generation.
// Admin1 is always rotated; SID when SIDOld and SIDNew are given. The
// caller owns and zeroes the keys.
type RotateRequest struct {
	Admin1Old, Admin1New []byte
	SIDOld, SIDNew       []byte
	// Generation is the new keys' generation; OldGeneration the current
	// one, needed only when the drive holds no readable key verifier.
	Generation    uint64
	OldGeneration uint64
	Progress      func(Step)
}

// RotateResult reports what Rotate did.
type RotateResult struct {
	Steps       []Step
	Verifier    *Verifier
	Admin1Tries TriesInfo
	SIDTries    TriesInfo
}

// Rotate changes Admin1 (and SID) from the old keys to the new ones,
// keeping the key verifier in step so that a power cut at any point leaves
// a drive that one of the two generations unlocks and that the verifier
// admits: it first records both generations (pending), then changes the
// credentials, verifies them in new sessions and finally records only the
// new generation. Run again after an interruption, it finishes the job.
func (d *Drive) Rotate(ctx context.Context, req RotateRequest) (RotateResult, error) {
	var res RotateResult
	err := d.run(ctx, "rotate credentials of", func() (err error) {
		for what, k := range map[string][]byte{"old Admin1 key": req.Admin1Old, "new Admin1 key": req.Admin1New} {
			if err := checkCredential(what, k); err != nil {
				return err
			}
		}
		rotateSID := req.SIDOld != nil || req.SIDNew != nil
		if rotateSID {
			for what, k := range map[string][]byte{"old SID key": req.SIDOld, "new SID key": req.SIDNew} {
				if err := checkCredential(what, k); err != nil {
					return err
				}
			}
		}
		serial, err := d.Serial()
		if err != nil {
			return err
		}
		progress := func(s Step) {
			res.Steps = append(res.Steps, s)
			d.log.Info("rotate step", "step", string(s))
			if req.Progress != nil {
				req.Progress(s)
			}
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		if !c.sum.LockingEnabled {
			return errors.New("locking is not enabled on this drive")
		}
		v, _, err := c.verifier()
		if err != nil {
			return fmt.Errorf("read key verifier: %w", err)
		}
		oldA := candidate{"old Admin1 key", req.Admin1Old}
		newA := candidate{"new Admin1 key", req.Admin1New}
		cands := []candidate{oldA, newA}
		if v != nil && v.Has(RoleAdmin1) {
			_, oldOK := v.Match(RoleAdmin1, req.Admin1Old)
			_, newOK := v.Match(RoleAdmin1, req.Admin1New)
			switch {
			case oldOK && newOK:
				cands = []candidate{newA, oldA}
			case oldOK:
				cands = []candidate{oldA}
			case newOK:
				cands = []candidate{newA}
			default:
				return fmt.Errorf("neither Admin1 key: %w", ErrVerifierMismatch)
			}
		}

		needSID := rotateSID
		if rotateSID && v != nil && v.Has(RoleSID) {
			_, oldOK := v.Match(RoleSID, req.SIDOld)
			_, newOK := v.Match(RoleSID, req.SIDNew)
			switch {
			case !oldOK && !newOK:
				return fmt.Errorf("neither SID key: %w", ErrVerifierMismatch)
			case newOK && !oldOK:
				needSID = false // already rotated
			}
		}

		s, err := c.open(core.LockingSP, true)
		if err != nil {
			return err
		}
		defer func() { s.closeAfter(&err) }()
		i, tries, err := s.presentCandidates(Admin1, cands)
		if err != nil {
			return err
		}
		res.Admin1Tries = tries
		if v == nil {
			// Not readable by Anybody: read it as Admin1.
			if p, err := s.readVerifierRegion(); err == nil {
				if pv, err := ParseVerifier(p); err == nil {
					v = pv
				}
			}
		}
		oldGen := req.OldGeneration
		arraySerial := ""
		if v != nil {
			arraySerial = v.ArraySerial
			if g, ok := v.Match(RoleAdmin1, req.Admin1Old); ok {
				oldGen = g
			}
		}
		if oldGen == req.Generation {
			return fmt.Errorf("new generation %d equals the current one", req.Generation)
		}
		final := &Verifier{ArraySerial: arraySerial, DriveSerial: serial}
		final.Add(RoleAdmin1, req.Generation, req.Admin1New)
		pending := &Verifier{ArraySerial: arraySerial, DriveSerial: serial, Pending: true}
		pending.Add(RoleAdmin1, oldGen, req.Admin1Old)
		pending.Add(RoleAdmin1, req.Generation, req.Admin1New)
		switch {
		case rotateSID:
			final.Add(RoleSID, req.Generation, req.SIDNew)
			pending.Add(RoleSID, oldGen, req.SIDOld)
			pending.Add(RoleSID, req.Generation, req.SIDNew)
		case v != nil:
			for _, e := range v.Entries {
				if e.Role == RoleSID {
					final.Entries = append(final.Entries, e)
				}
			}
		}
		res.Verifier = final

		if cands[i].label == oldA.label {
			if err := s.writeVerifier(pending); err != nil {
				return err
			}
			progress(StepVerifierPending)
			if err := s.setPIN(Admin1, req.Admin1New); err != nil {
				return err
			}
			progress(StepAdmin1)
			if err := s.close(); err != nil {
				return fmt.Errorf("close Locking SP session: %w", err)
			}
			if s, res.Admin1Tries, _, err = c.authSessionNoVerifier(Admin1, req.Admin1New); err != nil {
				return fmt.Errorf("verify new Admin1 credential: %w", err)
			}
		} else if needSID && (v == nil || !v.Pending) {
			// Admin1 already rotated; record the SID change as pending
			// before making it.
			if err := s.writeVerifier(pending); err != nil {
				return err
			}
			progress(StepVerifierPending)
		}
		if needSID {
			if err := s.close(); err != nil {
				return fmt.Errorf("close Locking SP session: %w", err)
			}
			if res.SIDTries, err = c.rotateSID(req, progress); err != nil {
				return err
			}
			if s, _, _, err = c.authSessionNoVerifier(Admin1, req.Admin1New); err != nil {
				return err
			}
		}
		if changed, err := s.ensureVerifier(final); err != nil {
			return err
		} else if changed {
			progress(StepVerifier)
		}
		return nil
	})
	return res, err
}

// rotateSID changes SID from SIDOld to SIDNew (or finds it changed) and
// verifies the new credential.
func (c *conn) rotateSID(req RotateRequest, progress func(Step)) (t TriesInfo, err error) {
	oldS := candidate{"old SID key", req.SIDOld}
	newS := candidate{"new SID key", req.SIDNew}
	s, err := c.open(core.AdminSP, true)
	if err != nil {
		return TriesInfo{Authority: SID}, err
	}
	defer s.closeAfter(&err)
	i, t, err := s.presentCandidates(SID, []candidate{oldS, newS})
	if err != nil {
		return t, err
	}
	if i == 1 {
		return t, nil
	}
	if err := s.setPIN(SID, req.SIDNew); err != nil {
		return t, err
	}
	progress(StepSID)
	if err := s.close(); err != nil {
		return t, fmt.Errorf("close Admin SP session: %w", err)
	}
	return c.verify(SID, req.SIDNew)
}

// SetUser enables Locking SP authority User<n> and sets its credential,
// as Admin1.
func (d *Drive) SetUser(ctx context.Context, admin1 []byte, n int, pin []byte) error {
	return d.run(ctx, fmt.Sprintf("set up User%d of", n), func() (err error) {
		if n < 1 || n > 0xffff {
			return fmt.Errorf("user number %d out of range", n)
		}
		if err := checkCredential("Admin1 credential", admin1); err != nil {
			return err
		}
		if err := checkCredential("user credential", pin); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		if int(c.sum.NumUsers) != 0 && n > int(c.sum.NumUsers) {
			return fmt.Errorf("the drive supports %d users, not User%d", c.sum.NumUsers, n)
		}
		s, _, _, err := c.authSession(Admin1, admin1, true)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		u := User(n)
		if err := s.set(rowOfAuthority(u), func(mc *core.MethodCall) { namedBool(mc, colAuthorityEnabled, true) }); err != nil {
			return fmt.Errorf("enable %s: %w", u, err)
		}
		return s.setPIN(u, pin)
	})
}
