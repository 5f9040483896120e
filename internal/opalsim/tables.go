package opalsim

import (
	"github.com/sedboot/sedboot/internal/opalsim/token"
)

// cell is one column value of an object row.
type cell struct {
	col uint
	enc func(e *token.Encoder)
}

func cU(col uint, v uint64) cell { return cell{col, func(e *token.Encoder) { e.Uint(v) }} }
func cB(col uint, b []byte) cell {
	c := append([]byte(nil), b...)
	return cell{col, func(e *token.Encoder) { e.ByteString(c) }}
}
func cS(col uint, s string) cell { return cB(col, []byte(s)) }
func cBool(col uint, b bool) cell {
	return cell{col, func(e *token.Encoder) { e.Bool(b) }}
}
func cUID(col uint, u UID) cell { return cB(col, u[:]) }
func cList(col uint, l []uint) cell {
	c := append([]uint(nil), l...)
	return cell{col, func(e *token.Encoder) {
		e.StartList()
		for _, x := range c {
			e.Uint(uint64(x))
		}
		e.EndList()
	}}
}

type tableInfo struct {
	hi   uint32
	name string
	byte bool
}

func (d *Drive) tablesOf(sp UID) []tableInfo {
	common := []tableInfo{{tTable, "Table", false}, {tSPInfo, "SPInfo", false}, {tSPTemplates, "SPTemplates", false},
		{tMethodID, "MethodID", false}, {tAccessCtrl, "AccessControl", false}, {tACE, "ACE", false},
		{tAuthority, "Authority", false}, {tCPIN, "C_PIN", false}}
	if sp == spAdmin {
		return append(common, tableInfo{tTPerInfo, "TPerInfo", false}, tableInfo{tTemplate, "Template", false}, tableInfo{tSP, "SP", false})
	}
	return append(common, tableInfo{tLockingInfo, "LockingInfo", false}, tableInfo{tLocking, "Locking", false},
		tableInfo{tMBRControl, "MBRControl", false}, tableInfo{tMBR, "MBR", true}, tableInfo{tKAES256, "K_AES_256", false},
		tableInfo{tDataStore, "DataStore", true})
}

func (d *Drive) byteTableOf(sp, obj UID) (byteTable, bool) {
	if sp != spLocking || obj.lo() != 0 {
		return 0, false
	}
	switch obj.hi() {
	case tMBR:
		return tableMBR, true
	case tDataStore:
		return tableDataStore, true
	}
	return 0, false
}

var methodNames = []struct {
	u    UID
	name string
}{{mNext, "Next"}, {mGetACL, "GetACL"}, {mGenKey, "GenKey"}, {mRevertSP, "RevertSP"}, {mGet, "Get"},
	{mSet, "Set"}, {mAuthenticate, "Authenticate"}, {mRevert, "Revert"}, {mActivate, "Activate"},
	{mRandom, "Random"}, {mErase, "Erase"}}

// knownACEs lists the ACE objects of sp.
func (d *Drive) knownACEs(sp UID) []UID {
	if sp == spAdmin {
		return []UID{aceAnybody, aceAdmin, aceCPINSIDGetNoPIN, aceCPINSIDSetPIN, aceCPINMSIDGetPIN, aceSPSID, aceCPINGetPSIDNoPIN, aceSPPSID}
	}
	l := []UID{aceAnybody, aceAdmin, aceAnybodyGetCommon, aceAdminsSetCommon, aceACEGetAll, aceACESetBooleanExpr,
		aceAuthorityGetAll, aceAuthoritySetEnabled, aceCPINAdminsGetNoPIN, aceCPINAdminsSetPIN}
	for u := 1; u <= numUsers; u++ {
		l = append(l, aceCPINUserSetPIN(u))
	}
	for r := 0; r <= numRanges; r++ {
		l = append(l, aceKAES256GenKey(r))
	}
	l = append(l, aceKAESMode)
	for r := 0; r <= numRanges; r++ {
		l = append(l, aceLockingGetRange(r))
	}
	for r := 0; r <= numRanges; r++ {
		l = append(l, aceLockingSetRd(r))
	}
	for r := 0; r <= numRanges; r++ {
		l = append(l, aceLockingSetWr(r))
	}
	return append(l, aceLockingGlblAdminSet, aceLockingAdminsSOR, aceMBRControlAdminsSet, aceMBRControlSetDone,
		aceDataStoreGetAll, aceDataStoreSetAll)
}

// rowsOf lists the objects of an object table in sp.
func (d *Drive) rowsOf(sp UID, table uint32) []UID {
	var l []UID
	switch table {
	case tTable:
		for _, t := range d.tablesOf(sp) {
			l = append(l, mkUID(tTable, t.hi))
		}
	case tSPInfo:
		l = []UID{mkUID(tSPInfo, 1)}
	case tSPTemplates:
		l = []UID{mkUID(tSPTemplates, 1), mkUID(tSPTemplates, 2)}
	case tMethodID:
		for _, m := range methodNames {
			l = append(l, m.u)
		}
	case tACE:
		l = d.knownACEs(sp)
	case tAuthority:
		if sp == spAdmin {
			l = []UID{authAnybody, authAdmins, authMakers, authSID, authPSID}
		} else {
			l = []UID{authAnybody, authAdmins}
			for n := 1; n <= numAdmins; n++ {
				l = append(l, authAdminN(n))
			}
			l = append(l, authUsers)
			for n := 1; n <= numUsers; n++ {
				l = append(l, authUserN(n))
			}
		}
	case tCPIN:
		if sp == spAdmin {
			l = []UID{cpinSID, cpinMSID, cpinPSID}
		} else {
			for n := 1; n <= numAdmins; n++ {
				l = append(l, cpinAdminN(n))
			}
			for n := 1; n <= numUsers; n++ {
				l = append(l, cpinUserN(n))
			}
		}
	case tTPerInfo:
		l = []UID{objTPerInfo}
	case tTemplate:
		l = []UID{mkUID(tTemplate, 1), mkUID(tTemplate, 2), mkUID(tTemplate, 6)}
	case tSP:
		l = []UID{spAdmin, spLocking}
	case tLockingInfo:
		l = []UID{objLockingInfo}
	case tLocking:
		for r := 0; r <= numRanges; r++ {
			l = append(l, lockingRangeUID(r))
		}
	case tMBRControl:
		l = []UID{objMBRControl}
	case tKAES256:
		for r := 0; r <= numRanges; r++ {
			l = append(l, keyUID(r))
		}
	}
	return l
}

// hasTable reports whether sp has table hi.
func (d *Drive) hasTable(sp UID, hi uint32) (tableInfo, bool) {
	for _, t := range d.tablesOf(sp) {
		if t.hi == hi {
			return t, true
		}
	}
	return tableInfo{}, false
}

// getRow returns every column of object obj in sp.
func (d *Drive) getRow(sp, obj UID) ([]cell, bool) {
	t, ok := d.hasTable(sp, obj.hi())
	if !ok || t.byte || obj.lo() == 0 {
		return nil, false
	}
	found := false
	for _, r := range d.rowsOf(sp, obj.hi()) {
		if r == obj {
			found = true
			break
		}
	}
	if !found {
		return nil, false
	}
	st := d.st
	ls := &st.Locking
	cells := []cell{cUID(0, obj)}
	switch obj.hi() {
	case tTable:
		ti, _ := d.hasTable(sp, obj.lo())
		kind := uint64(1)
		rows := uint64(len(d.rowsOf(sp, ti.hi)))
		gran := uint64(0)
		if ti.byte {
			kind, gran = 2, 1
			if ti.hi == tMBR {
				rows = uint64(st.MBRSize)
			} else {
				rows = uint64(st.DSSize)
			}
		}
		cells = append(cells, cS(1, ti.name), cU(4, kind), cU(7, rows), cU(13, gran), cU(14, gran))
	case tSPInfo:
		name := "Admin"
		if sp == spLocking {
			name = "Locking"
		}
		cells = append(cells, cUID(1, sp), cS(2, name), cBool(6, true))
	case tSPTemplates, tTemplate:
		names := map[uint32]string{1: "Base", 2: "Admin", 6: "Locking"}
		if obj.hi() == tSPTemplates && sp == spLocking && obj.lo() == 2 {
			names[2] = "Locking"
		}
		cells = append(cells, cS(1, names[obj.lo()]))
	case tMethodID:
		for _, m := range methodNames {
			if m.u == obj {
				cells = append(cells, cS(1, m.name))
			}
		}
	case tACE:
		def, _ := d.aceFor(sp, obj)
		cells = append(cells, cell{3, func(e *token.Encoder) { encodeExpr(e, def.expr) }})
		if def.cols != nil {
			cells = append(cells, cList(4, def.cols))
		}
	case tAuthority:
		cp, enabled, class, _ := d.authorityInfo(sp, obj)
		cells = append(cells, cS(1, authorityName(obj)), cBool(3, class), cBool(5, enabled))
		if cp != nil {
			cells = append(cells, cU(9, 1), cUID(10, mkUID(tCPIN, obj.lo())))
		}
		if sp == spLocking && !class {
			cells = append(cells, cS(2, d.commonName(obj)))
		}
	case tCPIN:
		var cp *cpinRow
		switch {
		case obj == cpinMSID:
			cells = append(cells, cS(1, "C_PIN_MSID"), cB(3, st.MSID), cU(5, 0), cU(6, 0), cBool(7, false))
			return cells, true
		case obj == cpinSID:
			cp = &st.SID
		case obj == cpinPSID:
			cp = &st.PSIDPIN
		case obj.lo()>>16 == 1:
			cp = &ls.AdminPIN[obj.lo()&0xFFFF-1]
		default:
			cp = &ls.UserPIN[obj.lo()&0xFFFF-1]
		}
		cells = append(cells, cS(1, cp.Name), cU(5, uint64(cp.TryLimit)), cU(6, uint64(cp.Tries)), cBool(7, cp.Persistence))
	case tTPerInfo:
		cells = append(cells, cU(1, 0), cB(2, keyHash([]byte("gudid:" + st.Serial))[:12]), cU(3, 1), cU(4, 1),
			cU(5, 1), cU(6, 0), cS(7, "Opal"), cBool(8, false))
	case tSP:
		life, name := uint64(lifeManufactured), "Admin"
		if obj == spLocking {
			life, name = uint64(ls.LifeCycle), "Locking"
		}
		cells = append(cells, cS(1, name), cU(6, life), cBool(7, false))
	case tLockingInfo:
		cells = append(cells, cS(1, "Locking"), cU(2, 1), cU(3, 1), cU(4, numRanges), cU(5, 0), cU(6, 0),
			cBool(7, false), cU(8, uint64(st.BlockSize)), cU(9, 1), cU(10, 0))
	case tLocking:
		r, _ := rangeOfLocking(obj, numRanges)
		rr := &ls.Ranges[r]
		cells = append(cells, cS(1, rr.Name), cS(2, rr.CommonName), cU(3, rr.Start), cU(4, rr.Length),
			cBool(5, rr.RLE), cBool(6, rr.WLE), cBool(7, rr.RL), cBool(8, rr.WL), cList(9, rr.LockOnReset),
			cUID(10, keyUID(r)))
	case tMBRControl:
		cells = append(cells, cBool(1, ls.MBREnable), cBool(2, ls.MBRDone), cList(3, ls.MBRDOR))
	case tKAES256:
		r, _ := rangeOfKey(obj, numRanges)
		name := "K_AES_256_GlobalRange_Key"
		if r > 0 {
			name = "K_AES_256_Range" + itoa(r) + "_Key"
		}
		cells = append(cells, cS(1, name), cU(4, 7))
	}
	return cells, true
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func authorityName(a UID) string {
	switch a {
	case authAnybody:
		return "Anybody"
	case authAdmins:
		return "Admins"
	case authMakers:
		return "Makers"
	case authSID:
		return "SID"
	case authPSID:
		return "PSID"
	case authUsers:
		return "Users"
	}
	switch a.lo() >> 16 {
	case 1:
		return "Admin" + itoa(int(a.lo()&0xFFFF))
	case 3:
		return "User" + itoa(int(a.lo()&0xFFFF))
	}
	return ""
}

func (d *Drive) commonName(a UID) string {
	n := int(a.lo() & 0xFFFF)
	switch a.lo() >> 16 {
	case 1:
		return d.st.Locking.AdminCommon[n-1]
	case 3:
		return d.st.Locking.UserCommon[n-1]
	}
	return ""
}

// encodeExpr writes a BooleanExpr as Core's list of named half-UID items.
func encodeExpr(e *token.Encoder, expr []exprElem) {
	auth := []byte{0, 0, 0x0C, 0x05}
	op := []byte{0, 0, 0x04, 0x0E}
	e.StartList()
	for _, x := range expr {
		e.Token(token.StartName)
		if x.IsOp {
			e.ByteString(op).Uint(uint64(x.Op))
		} else if x.Auth != nil {
			e.ByteString(auth).ByteString(x.Auth[:])
		}
		e.Token(token.EndName)
	}
	e.EndList()
}

// decodeExpr parses a BooleanExpr value; authorities must exist in the
// Locking SP and the postfix expression must reduce to one value.
func (d *Drive) decodeExpr(v token.Value) ([]exprElem, bool) {
	if v.Kind != token.KindList || len(v.L) == 0 || len(v.L) > 32 {
		return nil, false
	}
	var out []exprElem
	depth := 0
	for _, it := range v.L {
		if it.Kind != token.KindName {
			return nil, false
		}
		nb, ok := it.N.Bytes()
		if !ok || (len(nb) != 4 && len(nb) != 8) {
			return nil, false
		}
		half := uint32(nb[0])<<24 | uint32(nb[1])<<16 | uint32(nb[2])<<8 | uint32(nb[3])
		switch half {
		case halfAuthRef:
			b, ok := it.V.Bytes()
			if !ok || len(b) != 8 {
				return nil, false
			}
			var a UID
			copy(a[:], b)
			if _, _, _, exists := d.authorityInfo(spLocking, a); !exists {
				return nil, false
			}
			out = append(out, authRef(a))
			depth++
		case halfBooleanOp:
			o, ok := it.V.Uint()
			if !ok || o > 1 || depth < 2 {
				return nil, false
			}
			out = append(out, exprElem{IsOp: true, Op: uint(o)})
			depth--
		default:
			return nil, false
		}
	}
	return out, depth == 1
}
