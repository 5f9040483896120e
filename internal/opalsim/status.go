package opalsim

// LifeCycle is an SP life cycle state (Opal SSC 5.2.2).
type LifeCycle uint8

// Life cycle states of a manufactured SP.
const (
	ManufacturedInactive LifeCycle = lifeManufacturedInactive
	Manufactured         LifeCycle = lifeManufactured
)

func (l LifeCycle) String() string {
	switch l {
	case ManufacturedInactive:
		return "Manufactured-Inactive"
	case Manufactured:
		return "Manufactured"
	}
	return "unknown"
}

// RangeStatus is one locking range as the drive sees it.
type RangeStatus struct {
	Index            int    // 0 = global range
	Start, Length    uint64 // in blocks; the global range reports the whole drive
	ReadLockEnabled  bool
	WriteLockEnabled bool
	ReadLocked       bool // the ReadLocked column
	WriteLocked      bool // the WriteLocked column
	LockOnReset      bool // LockOnReset contains PowerCycle
}

// Status is a snapshot of the drive's security state for tools and tests.
type Status struct {
	LockingSP      LifeCycle
	LockingEnabled bool
	Ranges         []RangeStatus
	MBREnabled     bool
	MBRDone        bool
	OpenSessions   int
}

// Status returns a snapshot of the drive's security state.
func (d *Drive) Status() Status {
	d.mu.RLock()
	defer d.mu.RUnlock()
	ls := &d.st.Locking
	s := Status{
		LockingSP:      LifeCycle(ls.LifeCycle),
		LockingEnabled: ls.LifeCycle == lifeManufactured,
		MBREnabled:     ls.MBREnable,
		MBRDone:        ls.MBRDone,
		OpenSessions:   len(d.sessions),
	}
	for r := range ls.Ranges {
		rr := &ls.Ranges[r]
		rs := RangeStatus{Index: r, Start: rr.Start, Length: rr.Length, ReadLockEnabled: rr.RLE,
			WriteLockEnabled: rr.WLE, ReadLocked: rr.RL, WriteLocked: rr.WL, LockOnReset: hasReset(rr.LockOnReset, 0)}
		if r == 0 {
			rs.Start, rs.Length = 0, d.st.Blocks
		}
		s.Ranges = append(s.Ranges, rs)
	}
	return s
}

// SIDIsMSID reports whether C_PIN_SID still holds the manufactured MSID
// value (the drive has not been taken ownership of, or was reverted). It
// checks the stored SID verifier against MSID inside the simulator, so it
// spends no authentication try; a real drive reports this only through
// the Block SID feature.
func (d *Drive) SIDIsMSID() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	k, ok := d.st.SID.V.check(d.st.MSID)
	zero(k)
	return ok
}
