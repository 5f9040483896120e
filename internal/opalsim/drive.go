// Package opalsim is a software TCG Opal 2.0 SSC TPer: a self-encrypting
// drive simulator faithful enough for independent hosts (go-tcg-storage,
// the Linux kernel's sed-opal, nvme-cli) to run their flows against it.
//
// A Drive speaks the TCG storage security protocols through IFSend/IFRecv
// (go-tcg-storage's drive interface) and SecuritySend/SecurityRecv
// (blockdev.SecurityDevice), and serves encrypted blocks through
// blockdev.Device. Every block is encrypted at rest with AES-256-XTS under
// its locking range's media key; media keys are stored only wrapped by keys
// derived from the credentials allowed to unlock the range (or by a
// drive-internal secret while the range is unlocked by policy).
package opalsim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/sedboot/sedboot/internal/blockdev"
)

// Config describes a factory-fresh drive.
type Config struct {
	Serial, Model, Firmware string // ASCII; Serial <= 20 chars, Model <= 40, Firmware <= 8
	BlockSize               int    // logical block size, default 512
	Blocks                  uint64 // capacity in blocks
	TryLimit                uint   // default TryLimit for SID/Admin/User/PSID C_PIN rows (default 5)
	// MaxSessions is the TPer's session limit (default 1, the Opal minimum).
	MaxSessions int
	// MBRSize and DataStoreSize are the byte table sizes (defaults 128 MiB
	// and 10 MiB, the Opal 2 minimums). Both are multiples of 4096.
	MBRSize, DataStoreSize int64
}

// Drive is one simulated self-encrypting drive. It is safe for concurrent use.
type Drive struct {
	mu    sync.RWMutex
	dir   string // "" for an in-memory drive
	st    *state
	media backing
	psid  []byte // the label value, kept as a physical label would be

	live          [numRanges + 1]*mediaKey
	mbrKey, dsKey *mediaKey
	comids        map[uint16]*comState
	p2            map[uint16][]byte
	nextDyn       uint16
	sessions      map[uint32]*session
	nextTSN       uint32
	closed        bool
}

const (
	stateFile = "state.json"
	mediaFile = "media.img"
	labelFile = "label.txt"
	// tablePage is the sector size of the encrypted byte tables.
	tablePage = 4096
)

// ErrClosed reports use of a closed drive.
var ErrClosed = errors.New("opalsim: drive is closed")

func (c *Config) normalize() error {
	if c.BlockSize == 0 {
		c.BlockSize = 512
	}
	if c.BlockSize < 512 || c.BlockSize > 65536 || c.BlockSize&(c.BlockSize-1) != 0 {
		return fmt.Errorf("block size %d: want a power of two in [512, 65536]", c.BlockSize)
	}
	if c.Blocks == 0 {
		return errors.New("capacity: Blocks must be > 0")
	}
	if c.Blocks > (1<<62)/uint64(c.BlockSize) {
		return fmt.Errorf("capacity %d blocks is too large", c.Blocks)
	}
	if c.TryLimit == 0 {
		c.TryLimit = 5
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = 1
	}
	if c.MBRSize == 0 {
		c.MBRSize = 128 << 20
	}
	if c.DataStoreSize == 0 {
		c.DataStoreSize = 10 << 20
	}
	if c.MBRSize < 0 || c.MBRSize%tablePage != 0 || c.DataStoreSize < 0 || c.DataStoreSize%tablePage != 0 {
		return fmt.Errorf("byte table sizes %d/%d: want multiples of %d", c.MBRSize, c.DataStoreSize, tablePage)
	}
	if c.Serial == "" {
		c.Serial = fmt.Sprintf("SIM%X", randBytes(6))
	}
	if c.Model == "" {
		c.Model = "sedboot opalsim"
	}
	if c.Firmware == "" {
		c.Firmware = "1.0"
	}
	for name, v := range map[string]struct {
		s   string
		max int
	}{"serial": {c.Serial, 20}, "model": {c.Model, 40}, "firmware": {c.Firmware, 8}} {
		if len(v.s) > v.max {
			return fmt.Errorf("%s %q: longer than %d characters", name, v.s, v.max)
		}
		for _, r := range v.s {
			if r < 0x20 || r > 0x7E {
				return fmt.Errorf("%s %q: not printable ASCII", name, v.s)
			}
		}
	}
	return nil
}

// newState builds the factory state of a drive.
func newState(cfg Config, psid []byte) *state {
	st := &state{
		Version: 1, Serial: cfg.Serial, Model: cfg.Model, Firmware: cfg.Firmware,
		BlockSize: cfg.BlockSize, Blocks: cfg.Blocks, MBRSize: cfg.MBRSize, DSSize: cfg.DataStoreSize,
		MaxSess: cfg.MaxSessions, TryLimit: cfg.TryLimit,
		SystemKey: randBytes(32),
	}
	// MSID: 32 printable characters, as real drives print it.
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	raw := randBytes(32)
	st.MSID = make([]byte, 32)
	for i, b := range raw {
		st.MSID[i] = alnum[int(b)%len(alnum)]
	}
	v, k := newVerifier(psid)
	zero(k)
	st.PSIDPIN = cpinRow{Name: "C_PIN_PSID", V: v, TryLimit: cfg.TryLimit}
	st.factoryReset()
	return st
}

// factoryReset returns everything but the PSID and MSID to the original
// factory state, destroying every media key (TPer Revert).
func (st *state) factoryReset() {
	v, k := newVerifier(st.MSID)
	zero(k)
	st.SID = cpinRow{Name: "C_PIN_SID", V: v, TryLimit: st.TryLimit}
	st.PSIDPIN.Tries = 0
	st.MBRKey = seal(st.SystemKey, randBytes(64), "table:mbr")
	st.DSKey = seal(st.SystemKey, randBytes(64), "table:datastore")
	st.MBRMap = make([]byte, (st.MBRSize/tablePage+7)/8)
	st.DSMap = make([]byte, (st.DSSize/tablePage+7)/8)
	st.lockingFactory()
}

// lockingFactory puts the Locking SP in its original factory state with
// fresh media keys (RevertSP / Revert).
func (st *state) lockingFactory() {
	ls := lockingSP{LifeCycle: lifeManufacturedInactive, ACE: map[UID][]exprElem{}, LAK: map[string][]byte{}, UK: map[string][]byte{}}
	for i := range ls.AdminPIN {
		ls.AdminPIN[i] = cpinRow{Name: fmt.Sprintf("C_PIN_Admin%d", i+1), TryLimit: st.TryLimit}
	}
	for i := range ls.UserPIN {
		ls.UserPIN[i] = cpinRow{Name: fmt.Sprintf("C_PIN_User%d", i+1), TryLimit: st.TryLimit}
	}
	ls.AdminEn[0] = true
	for r := range ls.Ranges {
		rr := rangeRow{LockOnReset: []uint{0}, Wrapped: map[string][]byte{}}
		if r == 0 {
			rr.Name = "Locking_GlobalRange"
		} else {
			rr.Name = fmt.Sprintf("Locking_Range%d", r)
		}
		mk := randBytes(64)
		rr.Wrapped[slotSystem] = seal(st.SystemKey, mk, keyAD(r, slotSystem))
		zero(mk)
		ls.Ranges[r] = rr
	}
	ls.MBRDOR = []uint{0}
	st.Locking = ls
}

const (
	slotSystem = "system"
	slotLAK    = "lak"
)

func slotUser(n int) string { return fmt.Sprintf("user:%d", n) }

func keyAD(r int, slot string) string { return fmt.Sprintf("range:%d:%s", r, slot) }

// Create makes a factory-fresh drive persisted in dir (state file, media
// file and the label with the PSID). It refuses a dir that already holds
// a drive.
func Create(dir string, cfg Config) (*Drive, error) {
	if err := cfg.normalize(); err != nil {
		return nil, fmt.Errorf("create drive in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create drive: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		return nil, fmt.Errorf("create drive in %s: directory already holds a drive", dir)
	}
	psid := newPSID()
	st := newState(cfg, psid)
	f, err := os.OpenFile(filepath.Join(dir, mediaFile), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create drive media: %w", err)
	}
	if err := f.Truncate(st.mediaSize()); err != nil {
		f.Close()
		return nil, fmt.Errorf("create drive media: %w", err)
	}
	if err := writeAtomic(dir, labelFile, append(append([]byte("PSID: "), psid...), '\n')); err != nil {
		f.Close()
		return nil, fmt.Errorf("create drive label: %w", err)
	}
	d := &Drive{dir: dir, st: st, media: fileBacking{f}, psid: psid}
	if err := d.save(); err != nil {
		f.Close()
		return nil, fmt.Errorf("create drive: %w", err)
	}
	if err := d.powerOn(); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// NewMemory makes a factory-fresh drive that persists nothing.
func NewMemory(cfg Config) (*Drive, error) {
	if err := cfg.normalize(); err != nil {
		return nil, fmt.Errorf("new memory drive: %w", err)
	}
	psid := newPSID()
	d := &Drive{st: newState(cfg, psid), media: newMemBacking(), psid: psid}
	if err := d.powerOn(); err != nil {
		return nil, err
	}
	return d, nil
}

// Open loads a drive persisted in dir, as after a power cycle: no sessions,
// LockOnReset applied.
func Open(dir string) (*Drive, error) {
	st, err := loadState(dir)
	if err != nil {
		return nil, fmt.Errorf("open drive %s: %w", dir, err)
	}
	psid, err := readLabel(dir)
	if err != nil {
		return nil, fmt.Errorf("open drive %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, mediaFile), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open drive %s: %w", dir, err)
	}
	d := &Drive{dir: dir, st: st, media: fileBacking{f}, psid: psid}
	if err := d.powerOn(); err != nil {
		f.Close()
		return nil, fmt.Errorf("open drive %s: %w", dir, err)
	}
	return d, nil
}

func newPSID() []byte {
	const alnum = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	raw := randBytes(32)
	p := make([]byte, 32)
	for i, b := range raw {
		p[i] = alnum[int(b)%len(alnum)]
	}
	return p
}

func (st *state) mediaSize() int64 {
	return int64(st.Blocks)*int64(st.BlockSize) + st.MBRSize + st.DSSize
}
func (st *state) mbrOffset() int64 { return int64(st.Blocks) * int64(st.BlockSize) }
func (st *state) dsOffset() int64  { return st.mbrOffset() + st.MBRSize }

// powerOn performs the TCG power-cycle reset on the loaded state and
// installs the keys of the ranges accessible by policy. Caller holds no lock
// or the write lock.
func (d *Drive) powerOn() error {
	st := d.st
	for i := range d.live {
		d.live[i].destroy()
		d.live[i] = nil
	}
	ls := &st.Locking
	if ls.LifeCycle == lifeManufactured {
		for r := range ls.Ranges {
			rr := &ls.Ranges[r]
			if hasReset(rr.LockOnReset, 0) {
				rr.RL, rr.WL = true, true
			}
		}
		if hasReset(ls.MBRDOR, 0) {
			ls.MBRDone = false
		}
	}
	for _, c := range d.allCPIN() {
		if !c.Persistence {
			c.Tries = 0
		}
	}
	for r := range ls.Ranges {
		rr := &ls.Ranges[r]
		if !rr.accessible() {
			continue
		}
		w, ok := rr.Wrapped[slotSystem]
		if !ok {
			return fmt.Errorf("range %d is unlocked by policy but has no policy key copy: state corrupt", r)
		}
		mk, err := unseal(st.SystemKey, w, keyAD(r, slotSystem))
		if err != nil {
			return fmt.Errorf("range %d policy key: %w", r, err)
		}
		k, err := newMediaKey(mk)
		zero(mk)
		if err != nil {
			return err
		}
		d.live[r] = k
	}
	if err := d.loadTableKeys(); err != nil {
		return err
	}
	for _, s := range d.sessions {
		s.wipe()
	}
	d.sessions = map[uint32]*session{}
	d.comids = map[uint16]*comState{baseComID: newComState(false)}
	d.p2 = map[uint16][]byte{}
	if d.nextTSN == 0 {
		d.nextTSN = 4096
	}
	return d.save()
}

func (d *Drive) loadTableKeys() error {
	d.mbrKey.destroy()
	d.dsKey.destroy()
	for _, t := range []struct {
		w  []byte
		ad string
		k  **mediaKey
	}{{d.st.MBRKey, "table:mbr", &d.mbrKey}, {d.st.DSKey, "table:datastore", &d.dsKey}} {
		raw, err := unseal(d.st.SystemKey, t.w, t.ad)
		if err != nil {
			return fmt.Errorf("%s key: %w", t.ad, err)
		}
		k, err := newMediaKey(raw)
		zero(raw)
		if err != nil {
			return err
		}
		*t.k = k
	}
	return nil
}

// allCPIN lists every C_PIN row with a credential.
func (d *Drive) allCPIN() []*cpinRow {
	ls := &d.st.Locking
	out := []*cpinRow{&d.st.SID, &d.st.PSIDPIN}
	for i := range ls.AdminPIN {
		out = append(out, &ls.AdminPIN[i])
	}
	for i := range ls.UserPIN {
		out = append(out, &ls.UserPIN[i])
	}
	return out
}

// PowerCycle simulates a TCG power cycle: sessions drop, ranges with
// LockOnReset=PowerCycle lock, MBRDone resets, Tries reset where
// Persistence is false.
func (d *Drive) PowerCycle() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	return d.powerOn()
}

// PSID returns a copy of the PSID printed on the drive's label.
func (d *Drive) PSID() []byte {
	return append([]byte(nil), d.psid...)
}

// Close releases the drive; its keys are wiped from memory.
func (d *Drive) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	for i := range d.live {
		d.live[i].destroy()
		d.live[i] = nil
	}
	d.mbrKey.destroy()
	d.dsKey.destroy()
	for _, s := range d.sessions {
		s.wipe()
	}
	d.sessions = nil
	if err := d.media.Sync(); err != nil {
		d.media.Close()
		return fmt.Errorf("close drive: %w", err)
	}
	return d.media.Close()
}

// Identity reports the drive's identification strings.
func (d *Drive) Identity() blockdev.Identity {
	var id blockdev.Identity
	id.Serial, id.Model, id.Firmware = d.st.Serial, d.st.Model, d.st.Firmware
	h := keyHash([]byte("eui64:" + d.st.Serial))
	copy(id.EUI64[:], h)
	copy(id.NGUID[:], keyHash([]byte("nguid:"+d.st.Serial)))
	id.EUI64[0] = 0x02 // locally administered
	return id
}

// BlockSize returns the logical block size.
func (d *Drive) BlockSize() int { return d.st.BlockSize }

// NumBlocks returns the capacity in blocks.
func (d *Drive) NumBlocks() uint64 { return d.st.Blocks }
