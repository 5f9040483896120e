package sed

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// SSC is a TCG Security Subsystem Class a drive reports in Level 0
// discovery.
type SSC string

// The SSCs sedboot recognises, best first.
const (
	SSCOpal2      SSC = "Opal 2"
	SSCOpal1      SSC = "Opal 1"
	SSCRuby       SSC = "Ruby"
	SSCOpalite    SSC = "Opalite"
	SSCPyrite2    SSC = "Pyrite 2"
	SSCPyrite1    SSC = "Pyrite 1"
	SSCEnterprise SSC = "Enterprise"
)

// SIDState says whether C_PIN_SID still holds the MSID value.
type SIDState int

// SIDState values. Unknown means the drive does not say (only the Block
// SID feature reports it; finding out otherwise costs a SID try when the
// answer is "no").
const (
	SIDUnknown SIDState = iota
	SIDIsMSID
	SIDNotMSID
)

func (s SIDState) String() string {
	return [...]string{"unknown", "MSID", "not MSID"}[s]
}

// Summary is a drive's Level 0 discovery, reduced to what provisioning
// and unlocking need.
type Summary struct {
	// SSCs lists every SSC feature descriptor present, best first; SSC
	// is the first of them ("" when the drive reports none).
	SSCs []SSC
	SSC  SSC
	// BaseComID and NumComIDs come from the SSC descriptor.
	BaseComID uint16
	NumComIDs uint16

	// TPer feature.
	SyncSupported       bool
	BufferMgmtSupported bool

	// Locking feature. LockingEnabled means the Locking SP is active
	// (not Manufactured-Inactive); Locked means some range is locked.
	LockingPresent   bool
	LockingSupported bool
	LockingEnabled   bool
	Locked           bool
	MediaEncryption  bool
	MBREnabled       bool
	MBRDone          bool

	// Opal 2 / Ruby counts of Locking SP admins and users.
	NumAdmins uint16
	NumUsers  uint16
	// InitialSIDIsMSID and RevertSIDToMSID report the SSC's "Initial
	// C_PIN_SID PIN Indicator" and "Behavior of C_PIN_SID PIN upon TPer
	// Revert" (true: the value is MSID).
	InitialSIDIsMSID bool
	RevertSIDToMSID  bool

	// SID says whether C_PIN_SID is still MSID (Block SID feature).
	SID SIDState
	// SIDBlocked reports that SID authentication is blocked until the
	// next power cycle (Block SID feature).
	SIDBlocked bool

	// DataStore feature (zero when absent).
	DataStoreTables    uint16
	DataStoreMaxSize   uint32
	DataStoreAlignment uint32

	// LogicalBlockSize from the Geometry feature (0 when absent).
	LogicalBlockSize uint32
}

// Opal reports whether the drive speaks an SSC of the Opal family with a
// Locking SP that encrypts: Opal 1 or 2, Ruby or Opalite.
func (s *Summary) Opal() bool {
	switch s.SSC {
	case SSCOpal2, SSCOpal1, SSCRuby, SSCOpalite:
		return s.LockingPresent
	}
	return false
}

// String renders the summary on one line for console output.
func (s *Summary) String() string {
	ssc := string(s.SSC)
	if ssc == "" {
		ssc = "no SSC"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s, ComID 0x%04x", ssc, s.BaseComID)
	flag := func(name string, v bool) {
		if v {
			fmt.Fprintf(&b, ", %s", name)
		} else {
			fmt.Fprintf(&b, ", not %s", name)
		}
	}
	flag("locking supported", s.LockingSupported)
	flag("locking enabled", s.LockingEnabled)
	flag("locked", s.Locked)
	if s.MBREnabled {
		flag("MBR done", s.MBRDone)
	}
	fmt.Fprintf(&b, ", SID %s", s.SID)
	return b.String()
}

// Level 0 feature codes.
const (
	featTPer       = 0x0001
	featLocking    = 0x0002
	featGeometry   = 0x0003
	featEnterprise = 0x0100
	featOpal1      = 0x0200
	featDataStore  = 0x0202
	featOpal2      = 0x0203
	featOpalite    = 0x0301
	featPyrite1    = 0x0302
	featPyrite2    = 0x0303
	featRuby       = 0x0304
	featBlockSID   = 0x0402
)

// sscRank orders SSC descriptors when a drive reports several.
var sscRank = map[SSC]int{SSCOpal2: 0, SSCRuby: 1, SSCOpal1: 2, SSCOpalite: 3, SSCPyrite2: 4, SSCPyrite1: 5, SSCEnterprise: 6}

// parseLevel0 decodes a Level 0 discovery response (Core 2.01, 3.3.6).
func parseLevel0(p []byte) (*Summary, error) {
	if len(p) < 48 {
		return nil, fmt.Errorf("level 0 discovery: %d bytes, need a 48-byte header", len(p))
	}
	total := int(binary.BigEndian.Uint32(p[0:4])) + 4
	if total < 48 {
		return nil, fmt.Errorf("level 0 discovery: length field %d is shorter than the header", total-4)
	}
	if total > len(p) {
		total = len(p)
	}
	s := &Summary{}
	sscComIDs := map[SSC][2]uint16{}
	for off := 48; off+4 <= total; {
		code := binary.BigEndian.Uint16(p[off:])
		n := int(p[off+3])
		if off+4+n > total {
			return nil, fmt.Errorf("level 0 discovery: feature 0x%04x at offset %d runs past the %d-byte response", code, off, total)
		}
		d := p[off+4 : off+4+n]
		at := func(i int) byte {
			if i < len(d) {
				return d[i]
			}
			return 0
		}
		u16 := func(i int) uint16 { return uint16(at(i))<<8 | uint16(at(i+1)) }
		u32 := func(i int) uint32 { return uint32(u16(i))<<16 | uint32(u16(i+2)) }
		ssc := func(name SSC) {
			s.SSCs = append(s.SSCs, name)
			sscComIDs[name] = [2]uint16{u16(0), u16(2)}
		}
		switch code {
		case featTPer:
			s.SyncSupported = at(0)&0x01 != 0
			s.BufferMgmtSupported = at(0)&0x08 != 0
		case featLocking:
			f := at(0)
			s.LockingPresent = true
			s.LockingSupported = f&0x01 != 0
			s.LockingEnabled = f&0x02 != 0
			s.Locked = f&0x04 != 0
			s.MediaEncryption = f&0x08 != 0
			s.MBREnabled = f&0x10 != 0
			s.MBRDone = f&0x20 != 0
		case featGeometry:
			s.LogicalBlockSize = u32(8)
		case featEnterprise:
			ssc(SSCEnterprise)
		case featOpal1:
			ssc(SSCOpal1)
		case featOpal2, featRuby:
			name := SSCOpal2
			if code == featRuby {
				name = SSCRuby
			}
			ssc(name)
			if s.NumAdmins == 0 {
				s.NumAdmins, s.NumUsers = u16(5), u16(7)
				s.InitialSIDIsMSID = at(9) == 0
				s.RevertSIDToMSID = at(10) == 0
			}
		case featOpalite, featPyrite1, featPyrite2:
			name := map[uint16]SSC{featOpalite: SSCOpalite, featPyrite1: SSCPyrite1, featPyrite2: SSCPyrite2}[code]
			ssc(name)
			if s.NumAdmins == 0 {
				s.InitialSIDIsMSID = at(9) == 0
				s.RevertSIDToMSID = at(10) == 0
			}
		case featDataStore:
			s.DataStoreTables = u16(2)
			s.DataStoreMaxSize = u32(4)
			s.DataStoreAlignment = u32(8)
		case featBlockSID:
			s.SID = SIDIsMSID
			if at(0)&0x01 != 0 {
				s.SID = SIDNotMSID
			}
			s.SIDBlocked = at(0)&0x02 != 0
		}
		off += 4 + n
	}
	if len(s.SSCs) > 0 {
		slices.SortStableFunc(s.SSCs, func(a, b SSC) int { return sscRank[a] - sscRank[b] })
		s.SSC = s.SSCs[0]
		ids := sscComIDs[s.SSC]
		s.BaseComID, s.NumComIDs = ids[0], ids[1]
	}
	return s, nil
}
