package opalsim

import "fmt"

// UID is a TCG 8-byte unique identifier.
type UID [8]byte

func (u UID) String() string { return fmt.Sprintf("%016X", u[:]) }

func mkUID(hi, lo uint32) UID {
	return UID{byte(hi >> 24), byte(hi >> 16), byte(hi >> 8), byte(hi), byte(lo >> 24), byte(lo >> 16), byte(lo >> 8), byte(lo)}
}

func (u UID) hi() uint32 { return uint32(u[0])<<24 | uint32(u[1])<<16 | uint32(u[2])<<8 | uint32(u[3]) }
func (u UID) lo() uint32 { return uint32(u[4])<<24 | uint32(u[5])<<16 | uint32(u[6])<<8 | uint32(u[7]) }

// Session manager and special invoking IDs (Core 6.3).
var (
	uidSMU    = mkUID(0, 0xFF)
	uidThisSP = mkUID(0, 0x01)
)

// Method UIDs.
var (
	mProperties   = mkUID(0, 0xFF01)
	mStartSession = mkUID(0, 0xFF02)
	mSyncSession  = mkUID(0, 0xFF03)
	mCloseSession = mkUID(0, 0xFF06)

	mNext         = mkUID(6, 0x08)
	mGetACL       = mkUID(6, 0x0D)
	mGenKey       = mkUID(6, 0x10)
	mRevertSP     = mkUID(6, 0x11)
	mGet          = mkUID(6, 0x16)
	mSet          = mkUID(6, 0x17)
	mAuthenticate = mkUID(6, 0x1C)
	mRevert       = mkUID(6, 0x202)
	mActivate     = mkUID(6, 0x203)
	mRandom       = mkUID(6, 0x601)
	mErase        = mkUID(6, 0x803)
)

// Table UIDs (high half).
const (
	tTable        = 0x00000001
	tSPInfo       = 0x00000002
	tSPTemplates  = 0x00000003
	tMethodID     = 0x00000006
	tAccessCtrl   = 0x00000007
	tACE          = 0x00000008
	tAuthority    = 0x00000009
	tCPIN         = 0x0000000B
	tSecretProt   = 0x0000001D
	tTPerInfo     = 0x00000201
	tTemplate     = 0x00000204
	tSP           = 0x00000205
	tLockingInfo  = 0x00000801
	tLocking      = 0x00000802
	tMBRControl   = 0x00000803
	tMBR          = 0x00000804
	tKAES128      = 0x00000805
	tKAES256      = 0x00000806
	tDataStore    = 0x00001001
	halfAuthRef   = 0x00000C05 // Authority_object_ref half-UID (BooleanExpr element)
	halfBooleanOp = 0x0000040E // boolean_ACE half-UID (BooleanExpr operator)
)

// SP UIDs.
var (
	spAdmin   = mkUID(tSP, 1)
	spLocking = mkUID(tSP, 2)
)

// Authority UIDs.
var (
	authAnybody = mkUID(tAuthority, 0x01)
	authAdmins  = mkUID(tAuthority, 0x02)
	authMakers  = mkUID(tAuthority, 0x03)
	authSID     = mkUID(tAuthority, 0x06)
	authPSID    = mkUID(tAuthority, 0x0001FF01)
	authUsers   = mkUID(tAuthority, 0x00030000)
)

func authAdminN(n int) UID { return mkUID(tAuthority, 0x00010000+uint32(n)) }
func authUserN(n int) UID  { return mkUID(tAuthority, 0x00030000+uint32(n)) }

// C_PIN UIDs.
var (
	cpinSID  = mkUID(tCPIN, 0x01)
	cpinMSID = mkUID(tCPIN, 0x8402)
	cpinPSID = mkUID(tCPIN, 0x0001FF01)
)

func cpinAdminN(n int) UID { return mkUID(tCPIN, 0x00010000+uint32(n)) }
func cpinUserN(n int) UID  { return mkUID(tCPIN, 0x00030000+uint32(n)) }

// Locking SP objects.
var (
	objLockingInfo = mkUID(tLockingInfo, 1)
	objMBRControl  = mkUID(tMBRControl, 1)
	objTPerInfo    = mkUID(tTPerInfo, 0x00030001)
)

// lockingRangeUID returns the Locking object of range r (0 = global).
func lockingRangeUID(r int) UID {
	if r == 0 {
		return mkUID(tLocking, 1)
	}
	return mkUID(tLocking, 0x00030000+uint32(r))
}

// keyUID returns the K_AES_256 object of range r.
func keyUID(r int) UID {
	if r == 0 {
		return mkUID(tKAES256, 1)
	}
	return mkUID(tKAES256, 0x00030000+uint32(r))
}

// rangeOfLocking maps a Locking object UID to its range index.
func rangeOfLocking(u UID, ranges int) (int, bool) {
	if u.hi() != tLocking {
		return 0, false
	}
	if u.lo() == 1 {
		return 0, true
	}
	n := int(u.lo()) - 0x00030000
	if n >= 1 && n <= ranges {
		return n, true
	}
	return 0, false
}

func rangeOfKey(u UID, ranges int) (int, bool) {
	if u.hi() != tKAES256 {
		return 0, false
	}
	if u.lo() == 1 {
		return 0, true
	}
	n := int(u.lo()) - 0x00030000
	if n >= 1 && n <= ranges {
		return n, true
	}
	return 0, false
}

// ACE UIDs (Opal SSC 2.01 preconfiguration).
var (
	aceAnybody             = mkUID(tACE, 0x00000001)
	aceAdmin               = mkUID(tACE, 0x00000002)
	aceAnybodyGetCommon    = mkUID(tACE, 0x00000003)
	aceAdminsSetCommon     = mkUID(tACE, 0x00000004)
	aceCPINSIDGetNoPIN     = mkUID(tACE, 0x00008C02)
	aceCPINSIDSetPIN       = mkUID(tACE, 0x00008C03)
	aceCPINMSIDGetPIN      = mkUID(tACE, 0x00008C04)
	aceSPSID               = mkUID(tACE, 0x00030002)
	aceCPINGetPSIDNoPIN    = mkUID(tACE, 0x000100E1)
	aceSPPSID              = mkUID(tACE, 0x000100E0)
	aceACEGetAll           = mkUID(tACE, 0x00038000)
	aceACESetBooleanExpr   = mkUID(tACE, 0x00038001)
	aceAuthorityGetAll     = mkUID(tACE, 0x00039000)
	aceAuthoritySetEnabled = mkUID(tACE, 0x00039001)
	aceCPINAdminsGetNoPIN  = mkUID(tACE, 0x0003A000)
	aceCPINAdminsSetPIN    = mkUID(tACE, 0x0003A001)
	aceKAESMode            = mkUID(tACE, 0x0003BFFF)
	aceLockingGlblAdminSet = mkUID(tACE, 0x0003F000)
	aceLockingAdminsSOR    = mkUID(tACE, 0x0003F001)
	aceMBRControlAdminsSet = mkUID(tACE, 0x0003F800)
	aceMBRControlSetDone   = mkUID(tACE, 0x0003F801)
	aceDataStoreGetAll     = mkUID(tACE, 0x0003FC00)
	aceDataStoreSetAll     = mkUID(tACE, 0x0003FC01)
)

func aceCPINUserSetPIN(n int) UID { return mkUID(tACE, 0x0003A800+uint32(n)) }
func aceKAES256GenKey(r int) UID  { return mkUID(tACE, 0x0003B800+uint32(r)) }
func aceLockingGetRange(r int) UID {
	return mkUID(tACE, 0x0003D000+uint32(r))
}
func aceLockingSetRd(r int) UID { return mkUID(tACE, 0x0003E000+uint32(r)) }
func aceLockingSetWr(r int) UID { return mkUID(tACE, 0x0003E800+uint32(r)) }
