package sed

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/stream"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
	"github.com/sedboot/sedboot/internal/blockdev"
	"github.com/sedboot/sedboot/internal/sed/transport"
)

// Discover reads the drive's Level 0 discovery. It presents no
// credential.
func (d *Drive) Discover(ctx context.Context) (*Summary, error) {
	var sum *Summary
	err := d.run(ctx, "discover", func() (err error) {
		_, sum, err = d.readLevel0()
		return err
	})
	return sum, err
}

// Identity returns what the drive reports about itself: model, serial,
// firmware and, for real drives, WWN / EUI-64 / NGUID.
func (d *Drive) Identity(ctx context.Context) (transport.Identity, error) {
	var id transport.Identity
	err := d.run(ctx, "identify", func() (err error) {
		return safe(func() error {
			switch x := d.intf.(type) {
			case interface {
				Identity() (transport.Identity, error)
			}:
				var err error
				id, err = x.Identity()
				return err
			case interface{ Identity() blockdev.Identity }:
				bi := x.Identity()
				id = transport.Identity{Model: bi.Model, Serial: bi.Serial, Firmware: bi.Firmware, SecuritySupported: true,
					EUI64: nonZero(bi.EUI64[:]), NGUID: nonZero(bi.NGUID[:])}
				return nil
			case interface {
				Identify() (*drive.Identity, error)
			}:
				di, err := x.Identify()
				if err != nil {
					return err
				}
				id = transport.Identity{Model: di.Model, Serial: di.SerialNumber, Firmware: di.Firmware, SecuritySupported: true}
				return nil
			}
			return errors.New("the drive interface reports no identity")
		})
	})
	return id, err
}

// MSID reads the drive's manufactured SID credential (C_PIN_MSID, readable
// by Anybody).
func (d *Drive) MSID(ctx context.Context) ([]byte, error) {
	var msid []byte
	err := d.run(ctx, "read MSID of", func() (err error) {
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		msid, err = c.readMSID()
		return err
	})
	return msid, err
}

func (c *conn) readMSID() (msid []byte, err error) {
	s, err := c.open(core.AdminSP, false)
	if err != nil {
		return nil, err
	}
	defer s.closeAfter(&err)
	msid, err = s.getBytes(uidCPINMSID, colCPINPIN)
	if err != nil {
		return nil, fmt.Errorf("read C_PIN_MSID: %w", err)
	}
	return msid, nil
}

// TakeOwnership sets the SID credential, which a new drive has equal to
// MSID, to sid. It reads MSID, authenticates as SID with it, sets the new
// PIN and verifies it in a new session. It returns SID's try counters.
func (d *Drive) TakeOwnership(ctx context.Context, sid []byte) (TriesInfo, error) {
	var tries TriesInfo
	err := d.run(ctx, "take ownership of", func() (err error) {
		if err := checkCredential("SID credential", sid); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		msid, err := c.readMSID()
		if err != nil {
			return err
		}
		defer zero(msid)
		if err := c.changePIN(SID, msid, SID, sid); err != nil {
			if errors.Is(err, ErrWrongCredential) {
				return fmt.Errorf("SID no longer accepts MSID (the drive is already owned): %w", err)
			}
			return err
		}
		tries, err = c.verify(SID, sid)
		return err
	})
	return tries, err
}

// inSession runs f in a session authenticated as as with cred (checked
// against the key verifier first), closing it afterwards: the shape of
// every operation that needs one authenticated session and nothing else.
// op names the operation in errors, as for Drive.run.
func (d *Drive) inSession(ctx context.Context, op string, as Authority, cred []byte, write bool, f func(*session) error) error {
	return d.run(ctx, op, func() (err error) {
		if err := checkCredential(as.String()+" credential", cred); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		s, _, _, err := c.authSession(as, cred, write)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		return f(s)
	})
}

// changePIN authenticates as as with cred and sets target's PIN.
func (c *conn) changePIN(as Authority, cred []byte, target Authority, pin []byte) (err error) {
	if as.sp != target.sp {
		return fmt.Errorf("%s and %s live in different SPs", as, target)
	}
	s, _, _, err := c.authSession(as, cred, true)
	if err != nil {
		return err
	}
	defer s.closeAfter(&err)
	return s.setPIN(target, pin)
}

// verify authenticates as a with cred in a new session (the check after
// a PIN change) and returns a's try counters.
func (c *conn) verify(a Authority, cred []byte) (t TriesInfo, err error) {
	s, err := c.open(a.sp, false)
	if err != nil {
		return TriesInfo{Authority: a}, err
	}
	defer s.closeAfter(&err)
	t, err = s.present(a, cred)
	if err != nil {
		return t, fmt.Errorf("verify new %s credential: %w", a, err)
	}
	return t, nil
}

// ActivateLocking activates the Locking SP (Manufactured-Inactive to
// Manufactured) as SID; Opal then gives Admin1 the SID credential. It
// reports whether it activated (false: already active).
func (d *Drive) ActivateLocking(ctx context.Context, sid []byte) (bool, error) {
	var activated bool
	err := d.inSession(ctx, "activate locking SP of", SID, sid, true, func(s *session) (err error) {
		activated, err = s.activate()
		return err
	})
	return activated, err
}

// activate runs Activate on the Locking SP unless it is already active.
func (s *session) activate() (bool, error) {
	lcs, err := s.getUint(table.RowUID(core.LockingSP), colSPLifeCycle)
	if err != nil {
		return false, fmt.Errorf("read Locking SP life cycle: %w", err)
	}
	switch lcs {
	case lifeCycleManufactured:
		return false, nil
	case lifeCycleManufacturedInactive:
	default:
		return false, fmt.Errorf("locking SP is in life cycle state %d, not Manufactured-Inactive or Manufactured", lcs)
	}
	if _, err := s.exec(s.call(core.InvokingID(core.LockingSP), methodIDActivate)); err != nil {
		return false, fmt.Errorf("activate: %w", err)
	}
	return true, nil
}

// SetAdmin1 sets the Admin1 credential to admin1, authenticating as
// Admin1 with sid (after activation Admin1 holds the SID credential), and
// verifies it in a new session. It returns Admin1's try counters.
func (d *Drive) SetAdmin1(ctx context.Context, sid, admin1 []byte) (TriesInfo, error) {
	return d.setPIN(ctx, "set Admin1 credential of", Admin1, sid, Admin1, admin1)
}

// ChangePIN changes who's credential from old to new (rotation) and
// verifies the new one in a new session, refusing first when a failed
// verification could exhaust who's tries. It does not touch the key
// verifier: the product rotates with Rotate.
func (d *Drive) ChangePIN(ctx context.Context, who Authority, old, new []byte) (TriesInfo, error) {
	return d.setPIN(ctx, "change "+who.String()+" credential of", who, old, who, new)
}

func (d *Drive) setPIN(ctx context.Context, op string, as Authority, cred []byte, target Authority, pin []byte) (TriesInfo, error) {
	var tries TriesInfo
	err := d.run(ctx, op, func() (err error) {
		if !as.valid() || !target.valid() {
			return errors.New("no authority given")
		}
		if err := checkCredential("current credential", cred); err != nil {
			return err
		}
		if err := checkCredential("new credential", pin); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		if role := roleOf(target); role != 0 {
			v, _, err := c.verifier()
			if err != nil {
				return fmt.Errorf("read key verifier: %w", err)
			}
			if v != nil && v.Has(role) {
				return fmt.Errorf("the drive's key verifier covers %s; change it with Rotate so the verifier follows", target)
			}
		}
		if err := c.changePIN(as, cred, target, pin); err != nil {
			return err
		}
		tries, err = c.verify(target, pin)
		return err
	})
	return tries, err
}

// ConfigureGlobalRange enables read and write locking on the global range
// and makes it lock on power cycle (LockOnReset = {PowerCycle}). It does
// not lock the range now.
func (d *Drive) ConfigureGlobalRange(ctx context.Context, admin1 []byte) error {
	return d.inSession(ctx, "configure global range of", Admin1, admin1, true, func(s *session) error {
		return s.configureGlobalRange()
	})
}

func (s *session) configureGlobalRange() error {
	err := s.set(uidLockingGlobal, func(mc *core.MethodCall) {
		namedBool(mc, colLockingReadLockEnabled, true)
		namedBool(mc, colLockingWriteLockEnabled, true)
		mc.StartOptionalParameter(colLockingLockOnReset, "")
		mc.StartList()
		mc.UInt(uint(table.ResetPowerOff))
		mc.EndList()
		mc.EndOptionalParameter()
	})
	if err != nil {
		return fmt.Errorf("set global range locking: %w", err)
	}
	return nil
}

// RangeState is the global range's locking configuration and state.
type RangeState struct {
	ReadLockEnabled  bool
	WriteLockEnabled bool
	ReadLocked       bool
	WriteLocked      bool
	// LockOnPowerCycle reports LockOnReset containing PowerCycle.
	LockOnPowerCycle bool
}

// GlobalRange reads the global range's locking columns as Admin1.
func (d *Drive) GlobalRange(ctx context.Context, admin1 []byte) (RangeState, error) {
	var st RangeState
	err := d.inSession(ctx, "read global range of", Admin1, admin1, false, func(s *session) (err error) {
		st, err = s.globalRange()
		return err
	})
	return st, err
}

func (s *session) globalRange() (RangeState, error) {
	vals, err := s.getCells(uidLockingGlobal, colLockingReadLockEnabled, colLockingLockOnReset)
	if err != nil {
		return RangeState{}, fmt.Errorf("read global range: %w", err)
	}
	b := func(col uint) bool { v, _ := vals[col].(uint); return v != 0 }
	st := RangeState{
		ReadLockEnabled:  b(colLockingReadLockEnabled),
		WriteLockEnabled: b(colLockingWriteLockEnabled),
		ReadLocked:       b(colLockingReadLocked),
		WriteLocked:      b(colLockingWriteLocked),
	}
	if l, ok := vals[colLockingLockOnReset].(stream.List); ok {
		st.LockOnPowerCycle = slices.Contains(l, any(uint(table.ResetPowerOff)))
	}
	return st, nil
}

// Lock read- and write-locks the global range as Admin1. It returns
// Admin1's try counters.
func (d *Drive) Lock(ctx context.Context, admin1 []byte) (TriesInfo, error) {
	var tries TriesInfo
	err := d.run(ctx, "lock", func() (err error) {
		if err := checkCredential("Admin1 credential", admin1); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		var s *session
		s, tries, _, err = c.authSession(Admin1, admin1, true)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		return s.setGlobalLocked(true)
	})
	return tries, err
}

func (s *session) setGlobalLocked(locked bool) error {
	err := s.set(uidLockingGlobal, func(mc *core.MethodCall) {
		namedBool(mc, colLockingReadLocked, locked)
		namedBool(mc, colLockingWriteLocked, locked)
	})
	if err != nil {
		return fmt.Errorf("set global range locked=%v: %w", locked, err)
	}
	return nil
}

// Tries authenticates as as with cred and reads the try counters of each
// authority in of (default: as itself), which must live in as's SP.
// Opal lets only administrators (SID in the Admin SP, Admins in the
// Locking SP) read them.
func (d *Drive) Tries(ctx context.Context, as Authority, cred []byte, of ...Authority) ([]TriesInfo, error) {
	var out []TriesInfo
	err := d.run(ctx, "read tries of", func() (err error) {
		if !as.valid() {
			return errors.New("no authority given")
		}
		if err := checkCredential(as.String()+" credential", cred); err != nil {
			return err
		}
		if len(of) == 0 {
			of = []Authority{as}
		}
		for _, a := range of {
			if a.sp != as.sp {
				return fmt.Errorf("%s's tries cannot be read in a session with %s's SP", a, as)
			}
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		s, own, _, err := c.authSession(as, cred, false)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		for _, a := range of {
			t := own
			if a != as {
				t = s.readTries(a)
			}
			if !t.Known {
				return fmt.Errorf("%s may not read %s's tries: %w", as, a, ErrNotAuthorized)
			}
			out = append(out, t)
		}
		return nil
	})
	return out, err
}

// RevertSID reverts the whole drive to its original factory state as SID
// (Admin SP Revert): every Locking SP range key is destroyed, so all data
// becomes unreadable, and SID returns to MSID.
func (d *Drive) RevertSID(ctx context.Context, sid []byte) error {
	return d.revert(ctx, "revert (SID)", SID, sid)
}

// RevertPSID reverts the drive with the Physical Secure ID from its label
// (Admin SP Revert as PSID), destroying all data. It is the recovery for
// a drive whose credentials are lost.
func (d *Drive) RevertPSID(ctx context.Context, psid []byte) error {
	return d.revert(ctx, "revert (PSID)", PSID, psid)
}

func (d *Drive) revert(ctx context.Context, op string, as Authority, cred []byte) error {
	return d.run(ctx, op, func() (err error) {
		if err := checkCredential(as.String()+" credential", cred); err != nil {
			return err
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		if as == PSID {
			// Anybody may read PSID's try counters (Opal PSID feature
			// set): refuse before presenting when too few are left.
			if t := c.publicTries(PSID); t.Known {
				if left := t.Left(); left >= 0 && left <= 1 {
					return &TriesError{Authority: PSID, Left: left, Tries: t}
				}
			}
		}
		s, _, _, err := c.authSession(as, cred, true)
		if err != nil {
			return err
		}
		_, err = s.exec(s.call(core.InvokingID(core.AdminSP), methodIDRevert))
		// A successful Revert of the Admin SP ends the session on the
		// TPer's side; closing it from here may fail and does not matter.
		if cerr := s.close(); cerr != nil {
			d.log.Debug("close after revert", "err", cerr)
		}
		if err != nil {
			return fmt.Errorf("revert Admin SP: %w", err)
		}
		for _, a := range []Authority{SID, Admin(1), Admin(2), Admin(3), Admin(4)} {
			d.guard.forget(a)
		}
		_, sum, err := d.readLevel0()
		if err != nil {
			return fmt.Errorf("level 0 discovery after revert: %w", err)
		}
		if sum.LockingEnabled {
			return errors.New("drive still reports locking enabled after revert")
		}
		return nil
	})
}

// publicTries reads a's try counters in an Anybody session (Opal allows
// it for PSID only); Known is false when the drive refuses.
func (c *conn) publicTries(a Authority) (t TriesInfo) {
	s, err := c.open(a.sp, false)
	if err != nil {
		return TriesInfo{Authority: a}
	}
	defer s.close()
	return s.readTries(a)
}

// PublicTries reads a's try counters without presenting any credential,
// which Opal allows for PSID; for other authorities the drive refuses
// (ErrNotAuthorized).
func (d *Drive) PublicTries(ctx context.Context, a Authority) (TriesInfo, error) {
	var t TriesInfo
	err := d.run(ctx, "read "+a.String()+" tries of", func() (err error) {
		if !a.valid() {
			return errors.New("no authority given")
		}
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		t = c.publicTries(a)
		if !t.Known {
			return fmt.Errorf("%s's tries without authentication: %w", a, ErrNotAuthorized)
		}
		return nil
	})
	return t, err
}

// nonZero returns b, or nil when every byte is zero.
func nonZero(b []byte) []byte {
	for _, c := range b {
		if c != 0 {
			return append([]byte(nil), b...)
		}
	}
	return nil
}

// ProbeSID reports whether C_PIN_SID still holds MSID. It asks, in order,
// Level 0 discovery (the Block SID feature), then the key verifier (a
// verifier with a SID entry means sedboot owns the drive); both cost
// nothing. Only when spendTry is true and neither answers does it
// authenticate as SID with MSID, which costs one SID try when the answer
// is "no" (and counts as a failure for the guard).
func (d *Drive) ProbeSID(ctx context.Context, spendTry bool) (SIDState, error) {
	state := SIDUnknown
	err := d.run(ctx, "probe SID of", func() (err error) {
		c, err := d.connect(ctx, true)
		if err != nil {
			return err
		}
		if state = c.sum.SID; state != SIDUnknown {
			return nil
		}
		v, _, err := c.verifier()
		if err != nil {
			return err
		}
		if v != nil && v.Has(RoleSID) {
			state = SIDNotMSID
			return nil
		}
		if !spendTry {
			return nil
		}
		msid, err := c.readMSID()
		if err != nil {
			return err
		}
		defer zero(msid)
		s, err := c.open(core.AdminSP, false)
		if err != nil {
			return err
		}
		defer s.closeAfter(&err)
		switch _, err := s.present(SID, msid); {
		case err == nil:
			state = SIDIsMSID
		case errors.Is(err, ErrWrongCredential):
			state = SIDNotMSID
		default:
			return err
		}
		return nil
	})
	return state, err
}
