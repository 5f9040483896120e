package sed

import (
	"fmt"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
	"github.com/open-source-firmware/go-tcg-storage/pkg/locking"
)

// UIDs from the TCG Storage Architecture Core Specification 2.01 and the
// Opal SSC 2.01 preconfiguration that go-tcg-storage v0.8.21 does not
// export.
var (
	uidCPINSID  = table.RowUID{0x00, 0x00, 0x00, 0x0B, 0x00, 0x00, 0x00, 0x01}
	uidCPINMSID = table.Admin_C_PIN_MSIDRow
	uidCPINPSID = table.RowUID{0x00, 0x00, 0x00, 0x0B, 0x00, 0x01, 0xFF, 0x01}

	uidLockingGlobal = locking.GlobalRangeRowUID
	uidMBRControl    = table.MBRControlObj

	uidDataStoreTable = table.TableUID{0x00, 0x00, 0x10, 0x01, 0x00, 0x00, 0x00, 0x00}
	// Row of the Table table describing the DataStore table.
	uidTableDataStore = table.Base_TableRowForTable(uidDataStoreTable)

	uidACEDataStoreGetAll = table.RowUID{0x00, 0x00, 0x00, 0x08, 0x00, 0x03, 0xFC, 0x00}

	// Half-UIDs naming the elements of an ACE's BooleanExpr
	// (Core 2.01, 5.1.3.4 ACE_expression).
	halfUIDAuthorityObjectRef = []byte{0x00, 0x00, 0x0C, 0x05}

	methodIDRevert   = core.MethodID{0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x02, 0x02}
	methodIDActivate = table.MethodIDAdmin_Activate
)

// Column numbers (Core 2.01 / Opal SSC 2.01).
const (
	colCPINPIN      = 3
	colCPINTryLimit = 5
	colCPINTries    = 6

	colSPLifeCycle = 6

	colLockingReadLockEnabled  = 5
	colLockingWriteLockEnabled = 6
	colLockingReadLocked       = 7
	colLockingWriteLocked      = 8
	colLockingLockOnReset      = 9

	colMBRControlDone = 2

	colACEBooleanExpr = 3

	colAuthorityEnabled = 5

	colTableRows                      = 7
	colTableMandatoryWriteGranularity = 13

	lifeCycleManufacturedInactive = 8
	lifeCycleManufactured         = 9
)

// Authority names an authority and, through it, the credential (C_PIN row)
// it authenticates with and the Security Provider it lives in. Authorities
// are comparable.
type Authority struct {
	name string
	sp   core.SPID
	uid  core.AuthorityObjectUID
	cpin table.RowUID
}

// The authorities sedboot presents credentials to.
var (
	// SID is the Admin SP owner; its credential is taken from MSID when
	// the drive is taken ownership of.
	SID = Authority{"SID", core.AdminSP, core.AuthoritySID, uidCPINSID}
	// PSID is the Admin SP authority that can revert the drive with the
	// Physical Secure ID printed on its label.
	PSID = Authority{"PSID", core.AdminSP, core.AuthorityPSID, uidCPINPSID}
	// Admin1 is the first Locking SP administrator.
	Admin1 = Admin(1)
)

// Admin returns Locking SP authority Admin<n> (1-based).
func Admin(n int) Authority {
	return lockingAuthority(fmt.Sprintf("Admin%d", n), 0x01, n)
}

// User returns Locking SP authority User<n> (1-based).
func User(n int) Authority {
	return lockingAuthority(fmt.Sprintf("User%d", n), 0x03, n)
}

func lockingAuthority(name string, class byte, n int) Authority {
	a := Authority{name: name, sp: core.LockingSP}
	a.uid = core.AuthorityObjectUID{0x00, 0x00, 0x00, 0x09, 0x00, class, byte(n >> 8), byte(n)}
	a.cpin = table.RowUID{0x00, 0x00, 0x00, 0x0B, 0x00, class, byte(n >> 8), byte(n)}
	return a
}

// String returns the authority's name, e.g. "Admin1".
func (a Authority) String() string {
	if a.name == "" {
		return "(no authority)"
	}
	return a.name
}

func (a Authority) valid() bool { return a.name != "" }

// rowOfAuthority is the Authority table row of a.
func rowOfAuthority(a Authority) table.RowUID { return table.RowUID(a.uid) }
