package kernelflows

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// User is enum opal_user: Admin1, or User1 to User9.
type User uint32

// Authorities a session can use (enum opal_user).
const (
	Admin1 User = iota
	User1
	User2
	User3
	User4
	User5
	User6
	User7
	User8
	User9
)

// LockState is enum opal_lock_state.
type LockState uint32

// Locking states (enum opal_lock_state).
const (
	ReadOnly  LockState = 0x01
	ReadWrite LockState = 0x02
	Locked    LockState = 0x04
)

// Key is struct opal_key with an included key: the credential and the
// locking range it applies to. The host never keeps or wipes Key.Key
// (except a copy kept by Save); the caller owns it.
type Key struct {
	LR  uint8
	Key []byte
}

// Session is struct opal_session_info: who authenticates (in single user
// mode, the user of Key.LR) with which key.
type Session struct {
	SUM bool
	Who User
	Key Key
}

// LRActivate is struct opal_lr_act.
type LRActivate struct {
	Key Key
	// SUM activates with these ranges in single user mode.
	SUM bool
	// LRs are the ranges (1 to 9 of them; used only with SUM).
	LRs []uint8
}

// LRSetup is struct opal_user_lr_setup. The range is Session.Key.LR.
type LRSetup struct {
	RangeStart       uint64
	RangeLength      uint64
	ReadLockEnabled  bool
	WriteLockEnabled bool
	Session          Session
}

// LockUnlock is struct opal_lock_unlock. The range is Session.Key.LR.
type LockUnlock struct {
	Session Session
	State   LockState
	// SaveForLock is OPAL_SAVE_FOR_LOCK: with Save, the kept key also
	// locks the range when a later Lock request carries no key.
	SaveForLock bool
}

// NewPassword is struct opal_new_pw: open a session as Session, then set
// the password of NewUserPW.Who to NewUserPW.Key.
type NewPassword struct {
	Session   Session
	NewUserPW Session
}

// LRStatus is the output of struct opal_lr_status.
type LRStatus struct {
	RangeStart       uint64
	RangeLength      uint64
	ReadLockEnabled  bool
	WriteLockEnabled bool
	State            LockState
}

// TableUID is the 8-byte UID of a byte table for ReadTable and WriteTable.
type TableUID [8]byte

// Byte tables of the Locking SP.
var (
	TableDataStore = TableUID(uidDataStore)
	TableMBR       = TableUID(uidMBR)
)

// opalGetKey is opal_get_key for an included key: it must not be empty
// (and cannot exceed what key_len holds).
func opalGetKey(k *Key) error {
	if len(k.Key) == 0 || len(k.Key) > maxKeyLength {
		return fmt.Errorf("opal_get_key: key of %d bytes: %w", len(k.Key), syscall.EINVAL)
	}
	return nil
}

// keyFits rejects what struct opal_key cannot carry, for the ioctls the
// kernel does not pass through opal_get_key.
func keyFits(k *Key) error {
	if len(k.Key) > maxKeyLength {
		return fmt.Errorf("opal_key: key of %d bytes: %w", len(k.Key), syscall.EINVAL)
	}
	return nil
}

// TakeOwnership is IOC_OPAL_TAKE_OWNERSHIP: read the MSID PIN in an
// Anybody session on the Admin SP, then as SID (authenticated with the
// MSID) set the SID PIN to key.
func (h *Host) TakeOwnership(ctx context.Context, key Key) error {
	if err := opalGetKey(&key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAnybodyASPStep(ctx),
		getMSIDCPINPinStep(ctx),
		endSessionStep(ctx),
		startSIDASPStep(ctx, &key),
		setSIDCPINPinStep(ctx, &key),
		endSessionStep(ctx),
	})
}

// ActivateLSP is IOC_OPAL_ACTIVATE_LSP: as SID, check that the Locking SP
// is Manufactured-Inactive (else ENODEV) and Activate it.
func (h *Host) ActivateLSP(ctx context.Context, act LRActivate) error {
	if len(act.LRs) == 0 || len(act.LRs) > maxLRs {
		return fmt.Errorf("opal_activate_lsp: %d locking ranges: %w", len(act.LRs), syscall.EINVAL)
	}
	if err := opalGetKey(&act.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startSIDASPStep(ctx, &act.Key),
		getLSPLifecycleStep(ctx),
		activateLSPStep(ctx, &act),
		endSessionStep(ctx),
	})
}

// SetupLockingRange is IOC_OPAL_LR_SETUP. For range 0 (global) only the
// lock enables are set, and the range is unlocked.
func (h *Host) SetupLockingRange(ctx context.Context, s LRSetup) error {
	if err := opalGetKey(&s.Session.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAuthStep(ctx, &s.Session),
		setupLockingRangeStep(ctx, &s),
		endSessionStep(ctx),
	})
}

// LockUnlock is IOC_OPAL_LOCK_UNLOCK. A Locked request without a key uses
// the key Save kept for the same range with SaveForLock.
func (h *Host) LockUnlock(ctx context.Context, lk LockUnlock) error {
	if lk.Session.Who > User9 {
		return fmt.Errorf("opal_lock_unlock: user %d: %w", lk.Session.Who, syscall.EINVAL)
	}
	if err := keyFits(&lk.Session.Key); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.wipe()
	if err := h.supported(); err != nil {
		return err
	}
	if lk.State == Locked && len(lk.Session.Key.Key) == 0 {
		h.setup()
		for _, s := range h.saved {
			if s.unlk.SaveForLock && s.lr == lk.Session.Key.LR && len(s.unlk.Session.Key.Key) > 0 {
				// The kernel copies the key into the request; this
				// copy is wiped when the call returns.
				k := append([]byte(nil), s.unlk.Session.Key.Key...)
				defer clear(k)
				lk.Session.Key.Key = k
				break
			}
		}
	}
	if err := opalGetKey(&lk.Session.Key); err != nil {
		return err
	}
	return h.lockUnlockLocked(ctx, &lk)
}

// lockUnlockLocked is __opal_lock_unlock.
func (h *Host) lockUnlockLocked(ctx context.Context, lk *LockUnlock) error {
	return h.executeSteps(ctx, []step{
		startAuthStep(ctx, &lk.Session),
		lockUnlockStep(ctx, lk),
		endSessionStep(ctx),
	})
}

// Save is IOC_OPAL_SAVE: keep a copy of lk (key included) so that
// UnlockFromSuspend can replay it after the drive lost power; a request
// for the same range replaces the previous one. Nothing is sent.
func (h *Host) Save(ctx context.Context, lk LockUnlock) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := keyFits(&lk.Session.Key); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.supported(); err != nil {
		return err
	}
	h.setup()
	lk.Session.Key.Key = append([]byte(nil), lk.Session.Key.Key...)
	for i, s := range h.saved {
		if s.lr == lk.Session.Key.LR {
			clear(s.unlk.Session.Key.Key)
			h.saved = append(h.saved[:i], h.saved[i+1:]...)
			break
		}
	}
	h.saved = append(h.saved, savedUnlock{lr: lk.Session.Key.LR, unlk: lk})
	return nil
}

// UnlockFromSuspend is opal_unlock_from_suspend, which the kernel runs when
// the disk comes back from suspend: replay every saved lock/unlock request
// and, when the last discovery showed the shadow MBR enabled, set MBRDone
// with the same key. It returns the joined errors of the failed replays
// (the kernel reports only that one failed).
func (h *Host) UnlockFromSuspend(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.wipe()
	if h.flags&FlagSupported == 0 {
		return nil
	}
	h.setup()
	var errs []error
	for i := range h.saved {
		s := &h.saved[i]
		h.tsn = 0
		h.hsn = 0
		if err := h.lockUnlockLocked(ctx, &s.unlk); err != nil {
			errs = append(errs, fmt.Errorf("unlock range %d: %w", s.lr, err))
		}
		if h.flags&FlagMBREnabled != 0 {
			key := s.unlk.Session.Key
			_ = h.executeSteps(ctx, []step{
				startAdmin1LSPStep(ctx, &key),
				setMBRColumnStep(ctx, "set_mbr_done", colMBRDone, opalTrue),
				endSessionStep(ctx),
			})
		}
	}
	return errors.Join(errs...)
}

// cleanSaved is clean_opal_dev: forget (and wipe) every saved request.
func (h *Host) cleanSaved() {
	for _, s := range h.saved {
		clear(s.unlk.Session.Key.Key)
	}
	h.saved = nil
}

// SetPassword is IOC_OPAL_SET_PW: in a Locking SP session as pw.Session,
// set the C_PIN of pw.NewUserPW.Who. (The kernel then also stores the new
// key in its keyring; that has no effect on the drive and is not done
// here.)
func (h *Host) SetPassword(ctx context.Context, pw NewPassword) error {
	if pw.Session.Who > User9 || pw.NewUserPW.Who > User9 {
		return fmt.Errorf("opal_set_new_pw: user %d or %d: %w", pw.Session.Who, pw.NewUserPW.Who, syscall.EINVAL)
	}
	if err := keyFits(&pw.Session.Key); err != nil {
		return err
	}
	if err := keyFits(&pw.NewUserPW.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAuthStep(ctx, &pw.Session),
		setNewPWStep(ctx, &pw.NewUserPW),
		endSessionStep(ctx),
	})
}

// SetSIDPassword is IOC_OPAL_SET_SID_PW: as SID with pw.Session.Key, set
// the SID PIN to pw.NewUserPW.Key.
func (h *Host) SetSIDPassword(ctx context.Context, pw NewPassword) error {
	if err := keyFits(&pw.Session.Key); err != nil {
		return err
	}
	if err := keyFits(&pw.NewUserPW.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startSIDASPStep(ctx, &pw.Session.Key),
		setSIDCPINPinStep(ctx, &pw.NewUserPW.Key),
		endSessionStep(ctx),
	})
}

// AddUserToRange is IOC_OPAL_ADD_USR_TO_LR: as Admin1 (lk.Session.Key),
// make lk.Session.Who the authority of the range's Set_RdLocked ACE (state
// ReadOnly) or Set_WrLocked ACE (state ReadWrite), and add it with Admin1
// to the range's Get_RangeStartToActiveKey ACE.
func (h *Host) AddUserToRange(ctx context.Context, lk LockUnlock) error {
	if lk.State != ReadOnly && lk.State != ReadWrite {
		return fmt.Errorf("opal_add_user_to_lr: locking state %d is not RO or RW: %w", lk.State, syscall.EINVAL)
	}
	if lk.Session.Who < User1 || lk.Session.Who > User9 {
		return fmt.Errorf("opal_add_user_to_lr: authority %d is not a user: %w", lk.Session.Who, syscall.EINVAL)
	}
	if lk.Session.SUM {
		return fmt.Errorf("opal_add_user_to_lr: not supported in single user mode: %w", syscall.EINVAL)
	}
	if err := opalGetKey(&lk.Session.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &lk.Session.Key),
		addUserToLRStep(ctx, &lk),
		addUserToLRACEStep(ctx, &lk),
		endSessionStep(ctx),
	})
}

// ActivateUser is IOC_OPAL_ACTIVATE_USR: as Admin1 (s.Key), enable the
// authority s.Who.
func (h *Host) ActivateUser(ctx context.Context, s Session) error {
	if s.Who < User1 || s.Who > User9 {
		return fmt.Errorf("opal_activate_user: %d is not a user: %w", s.Who, syscall.EINVAL)
	}
	if err := opalGetKey(&s.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &s.Key),
		activateUserStep(ctx, &s),
		endSessionStep(ctx),
	})
}

// RevertTPer is IOC_OPAL_REVERT_TPR: as SID, Revert the Admin SP (the TPer
// returns to its manufactured state). On success the saved requests are
// forgotten.
func (h *Host) RevertTPer(ctx context.Context, key Key) error {
	return h.revertTPer(ctx, key, false)
}

// PSIDRevert is IOC_OPAL_PSID_REVERT_TPR: Revert the Admin SP as PSID.
func (h *Host) PSIDRevert(ctx context.Context, key Key) error {
	return h.revertTPer(ctx, key, true)
}

func (h *Host) revertTPer(ctx context.Context, key Key, psid bool) error {
	if err := opalGetKey(&key); err != nil {
		return err
	}
	start := startSIDASPStep(ctx, &key)
	if psid {
		start = startPSIDStep(ctx, &key)
	}
	err := h.run(ctx, []step{start, revertTPerStep(ctx)})
	if err == nil {
		h.mu.Lock()
		h.cleanSaved()
		h.mu.Unlock()
	}
	return err
}

// RevertLSP is IOC_OPAL_REVERT_LSP: as Admin1, RevertSP on the Locking SP,
// keeping the global range's key when preserve is set (OPAL_PRESERVE).
func (h *Host) RevertLSP(ctx context.Context, key Key, preserve bool) error {
	if err := opalGetKey(&key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &key),
		revertLSPStep(ctx, preserve),
	})
}

// EnableDisableMBR is IOC_OPAL_ENABLE_DISABLE_MBR: as Admin1, set MBRDone
// and then, in a second session, MBREnable to enable.
func (h *Host) EnableDisableMBR(ctx context.Context, key Key, enable bool) error {
	if err := opalGetKey(&key); err != nil {
		return err
	}
	v := byte(opalFalse)
	if enable {
		v = opalTrue
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &key),
		setMBRColumnStep(ctx, "set_mbr_done", colMBRDone, v),
		endSessionStep(ctx),
		startAdmin1LSPStep(ctx, &key),
		setMBRColumnStep(ctx, "set_mbr_enable_disable", colMBREnable, v),
		endSessionStep(ctx),
	})
}

// SetMBRDone is IOC_OPAL_MBR_DONE: as Admin1, set MBRDone.
func (h *Host) SetMBRDone(ctx context.Context, key Key, done bool) error {
	if err := opalGetKey(&key); err != nil {
		return err
	}
	v := byte(opalFalse)
	if done {
		v = opalTrue
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &key),
		setMBRColumnStep(ctx, "set_mbr_done", colMBRDone, v),
		endSessionStep(ctx),
	})
}

// WriteShadowMBR is IOC_OPAL_WRITE_SHADOW_MBR: as Admin1, write data into
// the MBR table at offset.
func (h *Host) WriteShadowMBR(ctx context.Context, key Key, offset uint64, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if err := opalGetKey(&key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &key),
		{"write_shadow_mbr", func(h *Host) error {
			return h.genericTableWriteData(ctx, "write_shadow_mbr", data, offset, uidMBR)
		}},
		endSessionStep(ctx),
	})
}

// EraseLockingRange is IOC_OPAL_ERASE_LR: Erase on the session's range.
func (h *Host) EraseLockingRange(ctx context.Context, s Session) error {
	if err := opalGetKey(&s.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAuthStep(ctx, &s),
		eraseLockingRangeStep(ctx, &s),
		endSessionStep(ctx),
	})
}

// SecureEraseLockingRange is IOC_OPAL_SECURE_ERASE_LR: read the range's
// ActiveKey and GenKey on it.
func (h *Host) SecureEraseLockingRange(ctx context.Context, s Session) error {
	if err := opalGetKey(&s.Key); err != nil {
		return err
	}
	return h.run(ctx, []step{
		startAuthStep(ctx, &s),
		getActiveKeyStep(ctx, s.Key.LR),
		genKeyStep(ctx),
		endSessionStep(ctx),
	})
}

// ReadTable is IOC_OPAL_GENERIC_TABLE_RW with OPAL_TABLE_READ: as Admin1,
// fill p from the byte table at offset. As in the kernel, a one-byte
// read transfers nothing.
func (h *Host) ReadTable(ctx context.Context, key Key, table TableUID, offset uint64, p []byte) error {
	if err := opalGetKey(&key); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &key),
		readTableDataStep(ctx, uid(table), offset, p),
		endSessionStep(ctx),
	})
}

// WriteTable is IOC_OPAL_GENERIC_TABLE_RW with OPAL_TABLE_WRITE: as
// Admin1, write data into the byte table at offset.
func (h *Host) WriteTable(ctx context.Context, key Key, table TableUID, offset uint64, data []byte) error {
	if err := opalGetKey(&key); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	return h.run(ctx, []step{
		startAdmin1LSPStep(ctx, &key),
		{"write_table_data", func(h *Host) error {
			return h.genericTableWriteData(ctx, "write_table_data", data, offset, uid(table))
		}},
		endSessionStep(ctx),
	})
}

// GetStatus is IOC_OPAL_GET_STATUS: a fresh Level 0 discovery's flags, or
// no flags when discovery fails (which the kernel does not report).
func (h *Host) GetStatus(ctx context.Context) (Status, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.wipe()
	if err := h.supported(); err != nil {
		return Status{}, err
	}
	if err := h.checkOpalSupportLocked(ctx); err != nil {
		if ctx.Err() != nil {
			return Status{}, ctx.Err()
		}
		return Status{}, nil
	}
	return Status{Flags: h.flags}, nil
}

// GetLRStatus is IOC_OPAL_GET_LR_STATUS: in a session as s, read the
// attributes of range s.Key.LR.
func (h *Host) GetLRStatus(ctx context.Context, s Session) (LRStatus, error) {
	if err := keyFits(&s.Key); err != nil {
		return LRStatus{}, err
	}
	var out LRStatus
	err := h.run(ctx, []step{
		startAuthStep(ctx, &s),
		lockingRangeStatusStep(ctx, s.Key.LR, &out),
		endSessionStep(ctx),
	})
	if err != nil {
		return LRStatus{}, err
	}
	return out, nil
}

// GetGeometry is IOC_OPAL_GET_GEOMETRY: the Geometry feature of a fresh
// discovery (EINVAL when discovery fails).
func (h *Host) GetGeometry(ctx context.Context) (Geometry, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.wipe()
	if err := h.supported(); err != nil {
		return Geometry{}, err
	}
	if err := h.checkOpalSupportLocked(ctx); err != nil {
		return Geometry{}, fmt.Errorf("opal_get_geometry: %v: %w", err, syscall.EINVAL)
	}
	return Geometry{
		Align:                h.alignRequired != 0,
		LogicalBlockSize:     h.logicalBlockSize,
		AlignmentGranularity: h.align,
		LowestAlignedLBA:     h.lowestLBA,
	}, nil
}

// Discovery is IOC_OPAL_DISCOVERY: run Level 0 discovery, copy the start of
// the raw response into p (at most the header's length field, which is
// four bytes less than the data) and return that length.
func (h *Host) Discovery(ctx context.Context, p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.wipe()
	if err := h.supported(); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	h.setup()
	return h.discovery0(p)
}
