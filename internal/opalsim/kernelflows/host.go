package kernelflows

import (
	"context"
	"fmt"
	"sync"
	"syscall"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// Host is the kernel's struct opal_dev: one Opal host bound to one device,
// with the kernel's buffers and session state. Its methods serialise on an
// internal mutex (the kernel's dev_lock).
type Host struct {
	mu  sync.Mutex
	dev blockdev.SecurityDevice

	flags uint32
	comid uint16
	hsn   uint32
	tsn   uint32

	align            uint64
	lowestLBA        uint64
	logicalBlockSize uint32
	alignRequired    uint8

	pos    int
	berr   syscall.Errno
	cmd    [ioBufferLength]byte
	resp   [ioBufferLength]byte
	parsed parsedResp

	// prevData carries a value from one step to the next (MSID PIN,
	// active key UID, a table chunk), as the kernel's prev_data.
	prevData []byte
	// prevOwned tells whether prevData is a private copy to wipe.
	prevOwned bool

	// saved is unlk_lst: the lock/unlock requests IOC_OPAL_SAVE keeps.
	saved []savedUnlock
}

type savedUnlock struct {
	lr   uint8
	unlk LockUnlock
}

// step is struct opal_step.
type step struct {
	name string
	fn   func(h *Host) error
}

// New is init_opal_dev: it runs Level 0 discovery on dev and returns a host
// only when dev is an Opal device (a TPer with synchronous protocol and an
// Opal SSC feature carrying a base ComID); otherwise the error wraps
// syscall.EOPNOTSUPP, as the kernel then leaves the disk without sed-opal.
func New(ctx context.Context, dev blockdev.SecurityDevice) (*Host, error) {
	if dev == nil {
		return nil, fmt.Errorf("kernelflows: no device: %w", syscall.ENODEV)
	}
	h := &Host{dev: dev}
	if err := h.checkOpalSupport(ctx); err != nil {
		return nil, fmt.Errorf("kernelflows: opal is not supported on this device: %w", err)
	}
	return h, nil
}

// Close forgets every key IOC_OPAL_SAVE kept, wiping it.
func (h *Host) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cleanSaved()
	h.wipe()
}

// checkOpalSupport is check_opal_support; the caller must not hold mu.
func (h *Host) checkOpalSupport(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.checkOpalSupportLocked(ctx)
}

func (h *Host) checkOpalSupportLocked(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.setup()
	_, err := h.discovery0(nil)
	if err == nil {
		h.flags |= FlagSupported
	}
	return err
}

// setup is setup_opal_dev.
func (h *Host) setup() {
	h.tsn = 0
	h.hsn = 0
	h.dropPrev()
}

// dropPrev forgets prev_data, wiping it when it is a private copy.
func (h *Host) dropPrev() {
	if h.prevOwned {
		clear(h.prevData)
	}
	h.prevData = nil
	h.prevOwned = false
}

// keepPrev stores a private copy of b as prev_data (the kernel's kmemdup).
func (h *Host) keepPrev(b []byte) {
	h.dropPrev()
	h.prevData = append([]byte(nil), b...)
	h.prevOwned = true
}

// wipe clears both buffers, which may hold credentials or table data,
// once an ioctl is over. The kernel leaves them; this changes nothing on
// the wire.
func (h *Host) wipe() {
	clear(h.cmd[:])
	clear(h.resp[:])
	h.parsed = parsedResp{}
	h.dropPrev()
}

func (h *Host) supported() error {
	if h.flags&FlagSupported == 0 {
		return fmt.Errorf("sed_ioctl: %w", syscall.EOPNOTSUPP)
	}
	return nil
}

// sendCmd is opal_send_cmd: the whole 2048-byte buffer, every time.
func (h *Host) sendCmd() error {
	err := h.dev.SecuritySend(tcgProtocol1, h.comid, h.cmd[:])
	if err != nil {
		return &TransportError{Op: fmt.Sprintf("security send (protocol 1, comid 0x%04x)", h.comid), Err: err}
	}
	return nil
}

// recvCmd is opal_recv_cmd: a 2048-byte receive into h.resp. The bytes the
// device does not return read as zero.
func (h *Host) recvCmd() error {
	data, err := h.dev.SecurityRecv(tcgProtocol1, h.comid, ioBufferLength)
	if err != nil {
		return &TransportError{Op: fmt.Sprintf("security receive (protocol 1, comid 0x%04x)", h.comid), Err: err}
	}
	if len(data) > ioBufferLength {
		return fmt.Errorf("security receive (comid 0x%04x): %d bytes answer a %d-byte allocation: %w",
			h.comid, len(data), ioBufferLength, ErrKernelUndefined)
	}
	n := copy(h.resp[:], data)
	clear(h.resp[n:])
	return nil
}

// recvCheck is opal_recv_check: while the TPer reports outstanding data
// and no minimum transfer, receive again. The kernel loops without bound;
// this host stops after recvCheckLimit receives.
func (h *Host) recvCheck(ctx context.Context) error {
	for i := 0; ; i++ {
		outstanding := be32(h.resp[8:12])
		minTransfer := be32(h.resp[12:16])
		if outstanding == 0 || minTransfer != 0 {
			return nil
		}
		if i >= recvCheckLimit {
			return fmt.Errorf("opal_recv_check: TPer still reports %d outstanding bytes after %d receives: %w",
				outstanding, recvCheckLimit, syscall.EIO)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		clear(h.resp[:])
		if err := h.recvCmd(); err != nil {
			return err
		}
	}
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// sendRecv is opal_send_recv followed by the continuation.
func (h *Host) sendRecv(ctx context.Context, cont func(h *Host) error) error {
	err := h.sendCmd()
	clear(h.cmd[:]) // the command may carry a credential
	if err != nil {
		return err
	}
	if err := h.recvCmd(); err != nil {
		return err
	}
	if err := h.recvCheck(ctx); err != nil {
		return err
	}
	return cont(h)
}

// finalizeAndSend is finalize_and_send.
func (h *Host) finalizeAndSend(ctx context.Context, cont func(h *Host) error) error {
	if err := h.cmdFinalize(h.hsn, h.tsn); err != nil {
		return err
	}
	return h.sendRecv(ctx, cont)
}

// parseAndCheckStatus is parse_and_check_status.
func parseAndCheckStatus(step string) func(h *Host) error {
	return func(h *Host) error {
		if err := responseParse(h.resp[:], &h.parsed); err != nil {
			return err
		}
		return statusOrNil(step, h.parsed.status(h.resp[:]))
	}
}

// executeSteps is execute_steps: Level 0 discovery first, then each step;
// when a step after the first fails, the session it opened is ended
// (end_opal_session_error) and the step's error returned.
func (h *Host) executeSteps(ctx context.Context, steps []step) error {
	if _, err := h.discovery0(nil); err != nil {
		return err
	}
	for state, s := range steps {
		err := ctx.Err()
		if err == nil {
			err = s.fn(h)
		}
		if err != nil {
			if state > 0 {
				_ = h.endSession(ctx)
			}
			return err
		}
	}
	return nil
}

// run takes the device lock, resets the session state and executes steps.
func (h *Host) run(ctx context.Context, steps []step) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.wipe()
	if err := h.supported(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h.setup()
	return h.executeSteps(ctx, steps)
}

// endSession is end_opal_session: an EndOfSession token, followed (as
// every kernel command) by the bytes cmd_finalize appends.
func (h *Host) endSession(ctx context.Context) error {
	h.clearCmd()
	h.setComID(h.comid)
	h.addU8(tokEndOfSess)
	if err := h.buildErr("end_opal_session"); err != nil {
		return err
	}
	return h.finalizeAndSend(ctx, func(h *Host) error {
		h.hsn = 0
		h.tsn = 0
		return parseAndCheckStatus("end_opal_session")(h)
	})
}

func endSessionStep(ctx context.Context) step {
	return step{"end_opal_session", func(h *Host) error { return h.endSession(ctx) }}
}

// startSessionCont is start_opal_session_cont: status, then the HSN and
// TSN of the SyncSession reply (tokens 4 and 5).
func (h *Host) startSessionCont(step string) func(h *Host) error {
	return func(h *Host) error {
		if err := parseAndCheckStatus(step)(h); err != nil {
			return err
		}
		hsn := uint32(h.parsed.getU64(4))
		tsn := uint32(h.parsed.getU64(5))
		if hsn != hostSessionNumber || tsn < firstTPerSessionNumber {
			return fmt.Errorf("%s: SyncSession HSN 0x%x TSN %d: %w", step, hsn, tsn, syscall.EPERM)
		}
		h.hsn = hsn
		h.tsn = tsn
		return nil
	}
}

// startGenericSession is start_generic_opal_session: StartSession on sp,
// Write = 1, and for SID, Admin1 and PSID the credential (HostChallenge)
// and the authority (HostSigningAuthority) as named parameters 0 and 3.
func (h *Host) startGenericSession(ctx context.Context, auth, sp uid, key []byte) error {
	const name = "start_generic_opal_session"
	if key == nil && auth != uidAnybody {
		return &StatusError{Step: name, Status: StatusInvalidParameter}
	}
	h.cmdStart(uidSMU, methodStartSession)
	h.addU64(hostSessionNumber)
	h.addBytes(sp[:])
	h.addU8(1)
	switch auth {
	case uidAnybody:
	case uidAdmin1, uidSID, uidPSID:
		h.addU8(tokStartName)
		h.addU8(startSessionHostChallenge)
		h.addBytes(key)
		h.addU8(tokEndName)
		h.addU8(tokStartName)
		h.addU8(startSessionHostSignAuth)
		h.addBytes(auth[:])
		h.addU8(tokEndName)
	default:
		return &StatusError{Step: name, Status: StatusInvalidParameter}
	}
	if err := h.buildErr(name); err != nil {
		return err
	}
	return h.finalizeAndSend(ctx, h.startSessionCont(name))
}

// startAuthSession is start_auth_opal_session: a Locking SP session as
// Admin1, as UserN for session.Who, or (single user mode) as the user of
// the session's locking range.
func (h *Host) startAuthSession(ctx context.Context, s *Session) error {
	const name = "start_auth_opal_session"
	var user uid
	switch {
	case s.SUM:
		user = lockingUserUID(s.Key.LR)
	case s.Who != Admin1:
		user = lockingUserUID(uint8(s.Who) - 1)
	default:
		user = uidAdmin1
	}
	h.cmdStart(uidSMU, methodStartSession)
	h.addU64(hostSessionNumber)
	h.addBytes(uidLockingSP[:])
	h.addU8(1)
	h.addU8(tokStartName)
	h.addU8(startSessionHostChallenge)
	h.addBytes(s.Key.Key)
	h.addU8(tokEndName)
	h.addU8(tokStartName)
	h.addU8(startSessionHostSignAuth)
	h.addBytes(user[:])
	h.addU8(tokEndName)
	if err := h.buildErr(name); err != nil {
		return err
	}
	return h.finalizeAndSend(ctx, h.startSessionCont(name))
}

func startAnybodyASPStep(ctx context.Context) step {
	return step{"start_anybodyASP_opal_session", func(h *Host) error {
		return h.startGenericSession(ctx, uidAnybody, uidAdminSP, nil)
	}}
}

// startSIDASPStep is start_SIDASP_opal_session: SID on the Admin SP with
// prev_data (the MSID PIN read before) when there is one, else key.
func startSIDASPStep(ctx context.Context, key *Key) step {
	return step{"start_SIDASP_opal_session", func(h *Host) error {
		if h.prevData == nil {
			return h.startGenericSession(ctx, uidSID, uidAdminSP, nonNil(key.Key))
		}
		err := h.startGenericSession(ctx, uidSID, uidAdminSP, h.prevData)
		h.dropPrev()
		return err
	}}
}

func startAdmin1LSPStep(ctx context.Context, key *Key) step {
	return step{"start_admin1LSP_opal_session", func(h *Host) error {
		return h.startGenericSession(ctx, uidAdmin1, uidLockingSP, nonNil(key.Key))
	}}
}

func startPSIDStep(ctx context.Context, key *Key) step {
	return step{"start_PSID_opal_session", func(h *Host) error {
		return h.startGenericSession(ctx, uidPSID, uidAdminSP, nonNil(key.Key))
	}}
}

func startAuthStep(ctx context.Context, s *Session) step {
	return step{"start_auth_opal_session", func(h *Host) error { return h.startAuthSession(ctx, s) }}
}

// nonNil maps a nil key to an empty one: in the kernel the key is an
// array inside the ioctl structure and never NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
