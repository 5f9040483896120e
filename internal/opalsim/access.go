package opalsim

// Access control: the ACE and AccessControl preconfiguration of the Opal
// SSC 2.01 Admin SP and Locking SP (with the PSID feature set). ACE
// BooleanExprs that Opal makes personalizable live in state; the rest are
// fixed.

// aceDef is an ACE: a BooleanExpr (postfix) and the columns it grants
// (nil = all columns).
type aceDef struct {
	expr []exprElem
	cols []uint
}

func authRef(u UID) exprElem { uu := u; return exprElem{Auth: &uu} }

var opOR = exprElem{IsOp: true, Op: 1}

func exprOf(auths ...UID) []exprElem {
	var e []exprElem
	for i, a := range auths {
		e = append(e, authRef(a))
		if i > 0 {
			e = append(e, opOR)
		}
	}
	return e
}

var (
	colsCPINNoPIN   = []uint{0, 4, 5, 6, 7}
	colsPIN         = []uint{3}
	colsRangeGet    = []uint{3, 4, 5, 6, 7, 8, 9, 10}
	colsGlblAdmin   = []uint{5, 6, 7, 8, 9}
	colsRangeAdmin  = []uint{3, 4, 5, 6, 7, 8, 9}
	colsMBRCtlAdmin = []uint{1, 2, 3}
	colsMBRCtlDone  = []uint{2, 3}
)

// adminACE returns the fixed Admin SP ACEs.
func adminACE(u UID) (aceDef, bool) {
	switch u {
	case aceAnybody:
		return aceDef{expr: exprOf(authAnybody)}, true
	case aceAdmin:
		return aceDef{expr: exprOf(authAdmins)}, true
	case aceCPINSIDGetNoPIN:
		return aceDef{expr: exprOf(authAdmins, authSID), cols: colsCPINNoPIN}, true
	case aceCPINSIDSetPIN:
		return aceDef{expr: exprOf(authSID), cols: colsPIN}, true
	case aceCPINMSIDGetPIN:
		return aceDef{expr: exprOf(authAnybody), cols: []uint{0, 3}}, true
	case aceSPSID:
		return aceDef{expr: exprOf(authSID)}, true
	case aceCPINGetPSIDNoPIN:
		return aceDef{expr: exprOf(authAnybody), cols: colsCPINNoPIN}, true
	case aceSPPSID:
		return aceDef{expr: exprOf(authPSID)}, true
	}
	return aceDef{}, false
}

// personalizable reports whether the Locking SP ACE's BooleanExpr may be Set
// (AccessControl row "Set: ACE_ACE_Set_BooleanExpression").
func personalizable(u UID) bool {
	if u.hi() != tACE {
		return false
	}
	lo := u.lo()
	switch {
	case lo >= 0x0003A801 && lo <= 0x0003A800+numUsers, // C_PIN_UserN_Set_PIN
		lo >= 0x0003B800 && lo <= 0x0003B800+numRanges, // K_AES_256_RangeN_GenKey
		lo >= 0x0003D000 && lo <= 0x0003D000+numRanges, // Locking_RangeN_Get_RangeStartToActiveKey
		lo >= 0x0003E000 && lo <= 0x0003E000+numRanges, // Locking_RangeN_Set_RdLocked
		lo >= 0x0003E800 && lo <= 0x0003E800+numRanges: // Locking_RangeN_Set_WrLocked
		return true
	}
	return u == aceMBRControlSetDone || u == aceDataStoreGetAll || u == aceDataStoreSetAll
}

// lockingACEDefault returns the Locking SP ACE preconfiguration.
func lockingACEDefault(u UID) (aceDef, bool) {
	admins := exprOf(authAdmins)
	switch u {
	case aceAnybody:
		return aceDef{expr: exprOf(authAnybody)}, true
	case aceAdmin:
		return aceDef{expr: admins}, true
	case aceAnybodyGetCommon:
		return aceDef{expr: exprOf(authAnybody), cols: []uint{0, 2}}, true
	case aceAdminsSetCommon:
		return aceDef{expr: admins, cols: []uint{2}}, true
	case aceACEGetAll:
		return aceDef{expr: admins}, true
	case aceACESetBooleanExpr:
		return aceDef{expr: admins, cols: []uint{3}}, true
	case aceAuthorityGetAll:
		return aceDef{expr: admins}, true
	case aceAuthoritySetEnabled:
		return aceDef{expr: admins, cols: []uint{5}}, true
	case aceCPINAdminsGetNoPIN:
		return aceDef{expr: admins, cols: colsCPINNoPIN}, true
	case aceCPINAdminsSetPIN:
		return aceDef{expr: admins, cols: colsPIN}, true
	case aceKAESMode:
		return aceDef{expr: exprOf(authAnybody), cols: []uint{4}}, true
	case aceLockingGlblAdminSet:
		return aceDef{expr: admins, cols: colsGlblAdmin}, true
	case aceLockingAdminsSOR:
		return aceDef{expr: admins, cols: colsRangeAdmin}, true
	case aceMBRControlAdminsSet:
		return aceDef{expr: admins, cols: colsMBRCtlAdmin}, true
	case aceMBRControlSetDone:
		return aceDef{expr: admins, cols: colsMBRCtlDone}, true
	case aceDataStoreGetAll, aceDataStoreSetAll:
		return aceDef{expr: admins}, true
	}
	if u.hi() != tACE {
		return aceDef{}, false
	}
	lo := u.lo()
	switch {
	case lo >= 0x0003A801 && lo <= 0x0003A800+numUsers:
		return aceDef{expr: exprOf(authAdmins, authUserN(int(lo-0x0003A800))), cols: colsPIN}, true
	case lo >= 0x0003B800 && lo <= 0x0003B800+numRanges:
		return aceDef{expr: admins}, true
	case lo >= 0x0003D000 && lo <= 0x0003D000+numRanges:
		return aceDef{expr: admins, cols: colsRangeGet}, true
	case lo >= 0x0003E000 && lo <= 0x0003E000+numRanges:
		return aceDef{expr: admins, cols: []uint{7}}, true
	case lo >= 0x0003E800 && lo <= 0x0003E800+numRanges:
		return aceDef{expr: admins, cols: []uint{8}}, true
	}
	return aceDef{}, false
}

// lockingACE returns the live Locking SP ACE (personalized expr if any).
func (d *Drive) lockingACE(u UID) (aceDef, bool) {
	a, ok := lockingACEDefault(u)
	if !ok {
		return a, false
	}
	if e, ok := d.st.Locking.ACE[u]; ok {
		a.expr = e
	}
	return a, true
}

func (d *Drive) aceFor(sp, u UID) (aceDef, bool) {
	if sp == spAdmin {
		return adminACE(u)
	}
	return d.lockingACE(u)
}

// acl returns the ACEs that govern method m on object obj in sp (nil when
// the AccessControl table has no such row).
func (d *Drive) acl(sp, obj, m UID) []UID {
	any := []UID{aceAnybody}
	if m == mNext && obj.lo() == 0 {
		return any
	}
	if obj == uidThisSP {
		switch m {
		case mAuthenticate, mRandom:
			return any
		case mRevertSP:
			if sp == spLocking {
				return []UID{aceAdmin}
			}
		}
		return nil
	}
	switch obj.hi() {
	case tTable, tSPInfo, tSPTemplates, tMethodID, tTPerInfo, tTemplate, tLockingInfo, tSecretProt:
		if m == mGet {
			return any
		}
		return nil
	}
	if sp == spAdmin {
		switch {
		case obj == cpinSID && m == mGet:
			return []UID{aceCPINSIDGetNoPIN}
		case obj == cpinSID && m == mSet:
			return []UID{aceCPINSIDSetPIN}
		case obj == cpinMSID && m == mGet:
			return []UID{aceCPINMSIDGetPIN}
		case obj == cpinPSID && m == mGet:
			return []UID{aceCPINGetPSIDNoPIN}
		case obj.hi() == tSP && m == mGet:
			return any
		case obj == spAdmin && m == mRevert:
			return []UID{aceSPSID, aceSPPSID}
		case obj == spLocking && (m == mActivate || m == mRevert):
			return []UID{aceSPSID}
		case obj.hi() == tAuthority && m == mGet:
			return any
		case obj.hi() == tACE && m == mGet:
			return []UID{aceAnybody}
		}
		return nil
	}
	switch obj.hi() {
	case tACE:
		switch m {
		case mGet:
			return []UID{aceACEGetAll}
		case mSet:
			if personalizable(obj) {
				return []UID{aceACESetBooleanExpr}
			}
		}
	case tAuthority:
		switch m {
		case mGet:
			return []UID{aceAuthorityGetAll, aceAnybodyGetCommon}
		case mSet:
			if obj != authAnybody && obj != authAdmins && obj != authUsers {
				return []UID{aceAuthoritySetEnabled, aceAdminsSetCommon}
			}
		}
	case tCPIN:
		switch {
		case m == mGet:
			return []UID{aceCPINAdminsGetNoPIN}
		case m == mSet && obj.lo()>>16 == 1:
			return []UID{aceCPINAdminsSetPIN}
		case m == mSet && obj.lo()>>16 == 3:
			return []UID{aceCPINUserSetPIN(int(obj.lo() & 0xFFFF))}
		}
	case tKAES256:
		if r, ok := rangeOfKey(obj, numRanges); ok {
			switch m {
			case mGet:
				return []UID{aceKAESMode}
			case mGenKey:
				return []UID{aceKAES256GenKey(r)}
			}
		}
	case tLocking:
		if r, ok := rangeOfLocking(obj, numRanges); ok {
			switch m {
			case mGet:
				return []UID{aceLockingGetRange(r), aceAnybodyGetCommon}
			case mSet:
				admin := aceLockingAdminsSOR
				if r == 0 {
					admin = aceLockingGlblAdminSet
				}
				return []UID{aceLockingSetRd(r), aceLockingSetWr(r), admin, aceAdminsSetCommon}
			case mErase:
				return []UID{aceAdmin}
			}
		}
	case tMBRControl:
		switch m {
		case mGet:
			return any
		case mSet:
			return []UID{aceMBRControlAdminsSet, aceMBRControlSetDone}
		}
	case tMBR:
		switch m {
		case mGet:
			return any
		case mSet:
			return []UID{aceAdmin}
		}
	case tDataStore:
		switch m {
		case mGet:
			return []UID{aceDataStoreGetAll}
		case mSet:
			return []UID{aceDataStoreSetAll}
		}
	}
	return nil
}

// authenticated reports whether authority a is satisfied in s (class
// authorities by any authenticated member).
func (d *Drive) authenticated(s *session, a UID) bool {
	if a == authAnybody || s.auths[a] {
		return true
	}
	if s.sp == spLocking {
		switch a {
		case authAdmins:
			for n := 1; n <= numAdmins; n++ {
				if s.auths[authAdminN(n)] {
					return true
				}
			}
		case authUsers:
			for n := 1; n <= numUsers; n++ {
				if s.auths[authUserN(n)] {
					return true
				}
			}
		}
	}
	return false
}

// evalExpr evaluates a postfix BooleanExpr.
func (d *Drive) evalExpr(s *session, e []exprElem) bool {
	var st []bool
	for _, x := range e {
		if x.IsOp {
			if len(st) < 2 {
				return false
			}
			a, b := st[len(st)-2], st[len(st)-1]
			st = st[:len(st)-2]
			if x.Op == 1 {
				st = append(st, a || b)
			} else {
				st = append(st, a && b)
			}
			continue
		}
		if x.Auth == nil {
			return false
		}
		st = append(st, d.authenticated(s, *x.Auth))
	}
	return len(st) == 1 && st[0]
}

// grant evaluates the ACL for (obj, m) in s: whether any ACE is satisfied,
// and the set of columns granted (all == true for every column).
func (d *Drive) grant(s *session, obj, m UID) (ok, all bool, cols map[uint]bool) {
	cols = map[uint]bool{}
	for _, a := range d.acl(s.sp, obj, m) {
		def, found := d.aceFor(s.sp, a)
		if !found || !d.evalExpr(s, def.expr) {
			continue
		}
		ok = true
		if def.cols == nil {
			all = true
		}
		for _, c := range def.cols {
			cols[c] = true
		}
	}
	return ok, all, cols
}
