package opalsim

import (
	"encoding/hex"
	"fmt"
)

// MarshalText encodes a UID as 16 hex digits (JSON map keys and values).
func (u UID) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(u[:])), nil }

// UnmarshalText decodes 16 hex digits.
func (u *UID) UnmarshalText(b []byte) error {
	if len(b) != 16 {
		return fmt.Errorf("UID %q: want 16 hex digits", b)
	}
	_, err := hex.Decode(u[:], b)
	return err
}

// Life cycle states (Opal SSC 5.2).
const (
	lifeManufacturedInactive = 8
	lifeManufactured         = 9
)

// numAdmins and numUsers are the Locking SP authority counts.
const (
	numAdmins = 4
	numUsers  = 8
	numRanges = 8 // non-global ranges
)

// cpinRow is one C_PIN object.
type cpinRow struct {
	Name        string   `json:"name"`
	V           verifier `json:"v"`
	TryLimit    uint     `json:"try_limit"`
	Tries       uint     `json:"tries"`
	Persistence bool     `json:"persistence"`
}

func (c *cpinRow) lockedOut() bool { return c.TryLimit > 0 && c.Tries >= c.TryLimit }

// exprElem is one element of an ACE BooleanExpr in postfix order: an
// authority reference, or an operator (Op 0 = AND, 1 = OR).
type exprElem struct {
	Auth  *UID `json:"auth,omitempty"`
	Op    uint `json:"op,omitempty"`
	IsOp  bool `json:"is_op,omitempty"`
	Empty bool `json:"-"`
}

// rangeRow is one Locking object with its media key slots.
type rangeRow struct {
	Name        string            `json:"name,omitempty"`
	CommonName  string            `json:"common_name,omitempty"`
	Start       uint64            `json:"start"`
	Length      uint64            `json:"length"`
	RLE         bool              `json:"rle"`
	WLE         bool              `json:"wle"`
	RL          bool              `json:"rl"`
	WL          bool              `json:"wl"`
	LockOnReset []uint            `json:"lock_on_reset"`
	Wrapped     map[string][]byte `json:"wrapped"` // slot name -> AES-GCM(media key)
}

func (r *rangeRow) readLocked() bool  { return r.RLE && r.RL }
func (r *rangeRow) writeLocked() bool { return r.WLE && r.WL }

// accessible reports whether data in the range can be read or written now.
func (r *rangeRow) accessible() bool { return !r.readLocked() || !r.writeLocked() }

func hasReset(l []uint, t uint) bool {
	for _, x := range l {
		if x == t {
			return true
		}
	}
	return false
}

// accessibleAfterReset reports whether the range is accessible right after
// a power cycle, so that its key must survive one.
func (r *rangeRow) accessibleAfterReset() bool {
	lor := hasReset(r.LockOnReset, 0)
	rl := r.RL || lor
	wl := r.WL || lor
	return !(r.RLE && rl) || !(r.WLE && wl)
}

// lockingSP is the persistent Locking SP state.
type lockingSP struct {
	LifeCycle   uint                    `json:"life_cycle"`
	AdminEn     [numAdmins]bool         `json:"admin_enabled"`
	UserEn      [numUsers]bool          `json:"user_enabled"`
	AdminPIN    [numAdmins]cpinRow      `json:"admin_pin"`
	UserPIN     [numUsers]cpinRow       `json:"user_pin"`
	AdminCommon [numAdmins]string       `json:"admin_common,omitempty"`
	UserCommon  [numUsers]string        `json:"user_common,omitempty"`
	ACE         map[UID][]exprElem      `json:"ace"` // personalized BooleanExprs
	Ranges      [numRanges + 1]rangeRow `json:"ranges"`
	MBREnable   bool                    `json:"mbr_enable"`
	MBRDone     bool                    `json:"mbr_done"`
	MBRDOR      []uint                  `json:"mbr_done_on_reset"`
	// LAK (Locking SP admin key) wrapped per admin credential: "admin:N".
	LAK map[string][]byte `json:"lak"`
	// User keys: "user:N:lak" (under LAK) and "user:N:pin" (under the user's credential).
	UK map[string][]byte `json:"uk"`
}

// state is everything a drive persists besides the media.
type state struct {
	Version   int    `json:"version"`
	Serial    string `json:"serial"`
	Model     string `json:"model"`
	Firmware  string `json:"firmware"`
	BlockSize int    `json:"block_size"`
	Blocks    uint64 `json:"blocks"`
	MBRSize   int64  `json:"mbr_size"`
	DSSize    int64  `json:"datastore_size"`
	MaxSess   int    `json:"max_sessions"`
	TryLimit  uint   `json:"try_limit"`

	MSID      []byte  `json:"msid"`       // public by design (C_PIN_MSID is readable by Anybody)
	SystemKey []byte  `json:"system_key"` // drive-internal secret: policy-unlocked keys, byte tables
	PSIDPIN   cpinRow `json:"psid_pin"`
	SID       cpinRow `json:"sid"`
	// Byte tables: their XTS keys (wrapped by SystemKey) and written-page bitmaps.
	MBRKey []byte `json:"mbr_key"`
	DSKey  []byte `json:"ds_key"`
	MBRMap []byte `json:"mbr_map"`
	DSMap  []byte `json:"ds_map"`

	Locking lockingSP `json:"locking"`
}
