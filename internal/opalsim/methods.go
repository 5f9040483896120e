package opalsim

import (
	"slices"

	"github.com/sedboot/sedboot/internal/opalsim/token"
)

// invoke runs one method in session s. The returned func, when not nil,
// runs after the response is built (the session ends after Revert/RevertSP).
func (d *Drive) invoke(s *session, iid, mid UID, args []token.Value) ([]byte, func()) {
	p, ok := splitParams(args)
	if !ok {
		return methodReply(stInvalidParameter, nil), nil
	}
	switch mid {
	case mGet:
		return d.mGet(s, iid, p), nil
	case mSet:
		return d.mSet(s, iid, p), nil
	case mNext:
		return d.mNext(s, iid, p), nil
	case mAuthenticate:
		return d.mAuthenticate(s, iid, p), nil
	case mRandom:
		return d.mRandom(s, iid, p), nil
	case mActivate:
		return d.mActivate(s, iid, p), nil
	case mRevert:
		return d.mRevert(s, iid, p)
	case mRevertSP:
		return d.mRevertSP(s, iid, p)
	case mGenKey:
		return d.mGenKey(s, iid, p), nil
	case mErase:
		return d.mErase(s, iid, p), nil
	}
	return methodReply(stInvalidParameter, nil), nil
}

// check gates a method: the invoking object exists, the ACL grants it and
// (for modifying methods) the session is read-write.
func (d *Drive) check(s *session, obj, m UID, modifies bool) byte {
	if ok, _, _ := d.grant(s, obj, m); !ok {
		return stNotAuthorized
	}
	if modifies && !s.write {
		return stNotAuthorized
	}
	return stSuccess
}

// commit persists the state after a successful modification.
func (d *Drive) commit(st byte) byte {
	if st != stSuccess {
		return st
	}
	if err := d.save(); err != nil {
		return stTPerMalfunction
	}
	return stSuccess
}

// cellblock parses Get's Cellblock parameter.
type cellblock struct {
	startRow, endRow, startCol, endCol *uint64
}

func parseCellblock(p params) (cellblock, bool) {
	var cb cellblock
	if len(p.pos) != 1 || len(p.named) != 0 || p.pos[0].Kind != token.KindList {
		return cb, false
	}
	seen := map[uint64]bool{}
	for _, it := range p.pos[0].L {
		if it.Kind != token.KindName {
			return cb, false
		}
		n, ok := it.N.Uint()
		if !ok || seen[n] {
			return cb, false
		}
		seen[n] = true
		v, ok := it.V.Uint()
		if !ok {
			return cb, false
		}
		switch n {
		case 1:
			cb.startRow = &v
		case 2:
			cb.endRow = &v
		case 3:
			cb.startCol = &v
		case 4:
			cb.endCol = &v
		default:
			return cb, false
		}
	}
	return cb, true
}

func (d *Drive) mGet(s *session, obj UID, p params) []byte {
	cb, ok := parseCellblock(p)
	if !ok {
		return methodReply(stInvalidParameter, nil)
	}
	if bt, isByte := d.byteTableOf(s.sp, obj); isByte {
		if cb.startCol != nil || cb.endCol != nil {
			return methodReply(stInvalidParameter, nil)
		}
		if st := d.check(s, obj, mGet, false); st != stSuccess {
			return methodReply(st, nil)
		}
		_, size, _, _ := d.tableGeom(bt)
		start, end := uint64(0), uint64(size)-1
		if cb.startRow != nil {
			start = *cb.startRow
		}
		if cb.endRow != nil {
			end = *cb.endRow
		}
		if size == 0 || start > end || end >= uint64(size) {
			return methodReply(stInvalidParameter, nil)
		}
		if end-start+1 > maxComPacket {
			return methodReply(stResponseOverflow, nil)
		}
		buf := make([]byte, end-start+1)
		if err := d.readTable(bt, int64(start), buf); err != nil {
			return methodReply(stTPerMalfunction, nil)
		}
		return methodReply(stSuccess, func(e *token.Encoder) { e.ByteString(buf) })
	}
	cells, exists := d.getRow(s.sp, obj)
	if !exists {
		return methodReply(stInvalidParameter, nil)
	}
	if cb.startRow != nil || cb.endRow != nil {
		return methodReply(stInvalidParameter, nil)
	}
	ok, all, cols := d.grant(s, obj, mGet)
	if !ok {
		return methodReply(stNotAuthorized, nil)
	}
	lo, hi := uint64(0), ^uint64(0)
	if cb.startCol != nil {
		lo = *cb.startCol
	}
	if cb.endCol != nil {
		hi = *cb.endCol
	}
	if lo > hi {
		return methodReply(stInvalidParameter, nil)
	}
	return methodReply(stSuccess, func(e *token.Encoder) {
		e.StartList()
		for _, c := range cells {
			if uint64(c.col) < lo || uint64(c.col) > hi || !(all || cols[c.col]) {
				continue
			}
			e.Token(token.StartName).Uint(uint64(c.col))
			c.enc(e)
			e.Token(token.EndName)
		}
		e.EndList()
	})
}

func (d *Drive) mSet(s *session, obj UID, p params) []byte {
	if len(p.pos) != 0 {
		return methodReply(stInvalidParameter, nil)
	}
	for n := range p.named {
		if n > 1 {
			return methodReply(stInvalidParameter, nil)
		}
	}
	where, hasWhere := p.named[0]
	values, hasValues := p.named[1]
	if bt, isByte := d.byteTableOf(s.sp, obj); isByte {
		off := uint64(0)
		if hasWhere {
			w, ok := where.Uint()
			if !ok {
				return methodReply(stInvalidParameter, nil)
			}
			off = w
		}
		data, ok := values.Bytes()
		if !hasValues || !ok {
			return methodReply(stInvalidParameter, nil)
		}
		if st := d.check(s, obj, mSet, true); st != stSuccess {
			return methodReply(st, nil)
		}
		_, size, _, _ := d.tableGeom(bt)
		if off > uint64(size) || uint64(len(data)) > uint64(size)-off {
			return methodReply(stInvalidParameter, nil)
		}
		if err := d.writeTable(bt, int64(off), data); err != nil {
			return methodReply(stTPerMalfunction, nil)
		}
		return methodReply(d.commit(stSuccess), nil)
	}
	if _, exists := d.getRow(s.sp, obj); !exists {
		return methodReply(stInvalidParameter, nil)
	}
	if hasWhere || !hasValues || values.Kind != token.KindList {
		return methodReply(stInvalidParameter, nil)
	}
	vals := map[uint]token.Value{}
	var order []uint
	for _, it := range values.L {
		if it.Kind != token.KindName {
			return methodReply(stInvalidParameter, nil)
		}
		c, ok := it.N.Uint()
		if !ok || c > 64 {
			return methodReply(stInvalidParameter, nil)
		}
		if _, dup := vals[uint(c)]; dup {
			return methodReply(stInvalidParameter, nil)
		}
		vals[uint(c)] = *it.V
		order = append(order, uint(c))
	}
	ok, all, cols := d.grant(s, obj, mSet)
	if !ok {
		return methodReply(stNotAuthorized, nil)
	}
	for c := range vals {
		if !all && !cols[c] {
			return methodReply(stNotAuthorized, nil)
		}
	}
	if !s.write {
		return methodReply(stNotAuthorized, nil)
	}
	slices.Sort(order)
	return methodReply(d.commit(d.setRow(s, obj, vals)), nil)
}

func asBool(v token.Value) (bool, bool) {
	u, ok := v.Uint()
	if !ok || u > 1 {
		return false, false
	}
	return u == 1, true
}

func asResetList(v token.Value) ([]uint, bool) {
	if v.Kind != token.KindList || len(v.L) > 4 {
		return nil, false
	}
	out := []uint{}
	for _, x := range v.L {
		u, ok := x.Uint()
		if !ok || u > 3 || slices.Contains(out, uint(u)) {
			return nil, false
		}
		out = append(out, uint(u))
	}
	return out, true
}

// setRow applies column values (already authorized) to an object.
func (d *Drive) setRow(s *session, obj UID, vals map[uint]token.Value) byte {
	ls := &d.st.Locking
	switch obj.hi() {
	case tCPIN:
		pin, ok := vals[3].Bytes()
		if len(vals) != 1 || !ok {
			return stInvalidParameter
		}
		return d.setPIN(s, obj, pin)
	case tAuthority:
		n := int(obj.lo() & 0xFFFF)
		var en *bool
		var cn *string
		switch obj.lo() >> 16 {
		case 1:
			en, cn = &ls.AdminEn[n-1], &ls.AdminCommon[n-1]
		case 3:
			en, cn = &ls.UserEn[n-1], &ls.UserCommon[n-1]
		default:
			return stInvalidParameter
		}
		newEn, newCN := *en, *cn
		for c, v := range vals {
			switch c {
			case 5:
				b, ok := asBool(v)
				if !ok {
					return stInvalidParameter
				}
				newEn = b
			case 2:
				b, ok := v.Bytes()
				if !ok || len(b) > 32 {
					return stInvalidParameter
				}
				newCN = string(b)
			default:
				return stInvalidParameter
			}
		}
		*en, *cn = newEn, newCN
		return stSuccess
	case tACE:
		v, ok := vals[3]
		if len(vals) != 1 || !ok {
			return stInvalidParameter
		}
		expr, ok := d.decodeExpr(v)
		if !ok {
			return stInvalidParameter
		}
		old, had := ls.ACE[obj]
		ls.ACE[obj] = expr
		lo := obj.lo()
		if (lo >= 0x0003E000 && lo <= 0x0003E000+numRanges) || (lo >= 0x0003E800 && lo <= 0x0003E800+numRanges) {
			r := int(lo & 0xFF)
			if st := d.reconcile(r, s); st != stSuccess {
				if had {
					ls.ACE[obj] = old
				} else {
					delete(ls.ACE, obj)
				}
				return st
			}
		}
		return stSuccess
	case tLocking:
		r, _ := rangeOfLocking(obj, numRanges)
		return d.setLocking(s, r, vals)
	case tMBRControl:
		en, done, dor := ls.MBREnable, ls.MBRDone, ls.MBRDOR
		for c, v := range vals {
			var ok bool
			switch c {
			case 1:
				en, ok = asBool(v)
			case 2:
				done, ok = asBool(v)
			case 3:
				dor, ok = asResetList(v)
			}
			if !ok {
				return stInvalidParameter
			}
		}
		ls.MBREnable, ls.MBRDone, ls.MBRDOR = en, done, dor
		return stSuccess
	}
	return stInvalidParameter
}

func (d *Drive) setLocking(s *session, r int, vals map[uint]token.Value) byte {
	ls := &d.st.Locking
	rr := &ls.Ranges[r]
	nr := *rr
	nr.LockOnReset = append([]uint(nil), rr.LockOnReset...)
	for c, v := range vals {
		var ok bool
		switch c {
		case 2:
			var b []byte
			b, ok = v.Bytes()
			ok = ok && len(b) <= 32
			nr.CommonName = string(b)
		case 3, 4:
			if r == 0 {
				return stInvalidParameter
			}
			var u uint64
			u, ok = v.Uint()
			if c == 3 {
				nr.Start = u
			} else {
				nr.Length = u
			}
		case 5:
			nr.RLE, ok = asBool(v)
		case 6:
			nr.WLE, ok = asBool(v)
		case 7:
			nr.RL, ok = asBool(v)
		case 8:
			nr.WL, ok = asBool(v)
		case 9:
			nr.LockOnReset, ok = asResetList(v)
		}
		if !ok {
			return stInvalidParameter
		}
	}
	if r > 0 && nr.Length > 0 {
		if nr.Start > d.st.Blocks || nr.Length > d.st.Blocks-nr.Start {
			return stInvalidParameter
		}
		for o := 1; o <= numRanges; o++ {
			or := &ls.Ranges[o]
			if o == r || or.Length == 0 {
				continue
			}
			if nr.Start < or.Start+or.Length && or.Start < nr.Start+nr.Length {
				return stInvalidParameter
			}
		}
	}
	saved := *rr
	saved.Wrapped = map[string][]byte{}
	for k, v := range rr.Wrapped {
		saved.Wrapped[k] = v
	}
	nr.Wrapped = rr.Wrapped
	*rr = nr
	if st := d.reconcile(r, s); st != stSuccess {
		*rr = saved
		return st
	}
	return stSuccess
}

func (d *Drive) mNext(s *session, obj UID, p params) []byte {
	t, ok := d.hasTable(s.sp, obj.hi())
	if !ok || obj.lo() != 0 || t.byte || len(p.pos) != 0 {
		return methodReply(stInvalidParameter, nil)
	}
	var where *UID
	count := uint64(^uint64(0))
	for n, v := range p.named {
		switch n {
		case 0:
			b, ok := v.Bytes()
			if !ok || len(b) != 8 {
				return methodReply(stInvalidParameter, nil)
			}
			var u UID
			copy(u[:], b)
			where = &u
		case 1:
			c, ok := v.Uint()
			if !ok {
				return methodReply(stInvalidParameter, nil)
			}
			count = c
		default:
			return methodReply(stInvalidParameter, nil)
		}
	}
	if st := d.check(s, obj, mNext, false); st != stSuccess {
		return methodReply(st, nil)
	}
	rows := d.rowsOf(s.sp, obj.hi())
	if where != nil {
		i := slices.Index(rows, *where)
		if i < 0 {
			return methodReply(stInvalidParameter, nil)
		}
		rows = rows[i+1:]
	}
	if uint64(len(rows)) > count {
		rows = rows[:count]
	}
	return methodReply(stSuccess, func(e *token.Encoder) {
		e.StartList()
		for _, r := range rows {
			e.ByteString(r[:])
		}
		e.EndList()
	})
}

func (d *Drive) mAuthenticate(s *session, obj UID, p params) []byte {
	if obj != uidThisSP || len(p.pos) != 1 {
		return methodReply(stInvalidParameter, nil)
	}
	ab, ok := p.pos[0].Bytes()
	if !ok || len(ab) != 8 {
		return methodReply(stInvalidParameter, nil)
	}
	var proof []byte
	for n, v := range p.named {
		if n != 0 {
			return methodReply(stInvalidParameter, nil)
		}
		b, ok := v.Bytes()
		if !ok {
			return methodReply(stInvalidParameter, nil)
		}
		proof = b
	}
	if st := d.check(s, obj, mAuthenticate, false); st != stSuccess {
		return methodReply(st, nil)
	}
	var a UID
	copy(a[:], ab)
	good, st := d.authenticate(s, a, proof)
	if st != stSuccess {
		return methodReply(st, nil)
	}
	return methodReply(stSuccess, func(e *token.Encoder) { e.Bool(good) })
}

func (d *Drive) mRandom(s *session, obj UID, p params) []byte {
	if obj != uidThisSP || len(p.pos) != 1 || len(p.named) != 0 {
		return methodReply(stInvalidParameter, nil)
	}
	n, ok := p.pos[0].Uint()
	if !ok || n > 256 {
		return methodReply(stInvalidParameter, nil)
	}
	if st := d.check(s, obj, mRandom, false); st != stSuccess {
		return methodReply(st, nil)
	}
	b := randBytes(int(n))
	return methodReply(stSuccess, func(e *token.Encoder) { e.ByteString(b) })
}

func (d *Drive) mActivate(s *session, obj UID, p params) []byte {
	if s.sp != spAdmin || obj != spLocking || len(p.pos) != 0 || len(p.named) != 0 {
		return methodReply(stInvalidParameter, nil)
	}
	if st := d.check(s, obj, mActivate, true); st != stSuccess {
		return methodReply(st, nil)
	}
	return methodReply(d.commit(d.activate(s)), nil)
}

func (d *Drive) mRevert(s *session, obj UID, p params) ([]byte, func()) {
	if s.sp != spAdmin || (obj != spAdmin && obj != spLocking) || len(p.pos) != 0 || len(p.named) != 0 {
		return methodReply(stInvalidParameter, nil), nil
	}
	if st := d.check(s, obj, mRevert, true); st != stSuccess {
		return methodReply(st, nil), nil
	}
	var st byte
	if obj == spAdmin {
		d.st.factoryReset()
		st = d.reloadKeys()
	} else {
		st = d.revertLocking(s, false)
	}
	st = d.commit(st)
	if st != stSuccess {
		return methodReply(st, nil), nil
	}
	return methodReply(stSuccess, nil), func() {
		for _, o := range d.sessions {
			if obj == spAdmin || o.sp == spLocking {
				d.endSession(o)
			}
		}
	}
}

func (d *Drive) mRevertSP(s *session, obj UID, p params) ([]byte, func()) {
	if s.sp != spLocking || obj != uidThisSP || len(p.pos) != 0 {
		return methodReply(stInvalidParameter, nil), nil
	}
	keep := false
	for n, v := range p.named {
		if n != 0x060000 {
			return methodReply(stInvalidParameter, nil), nil
		}
		b, ok := asBool(v)
		if !ok {
			return methodReply(stInvalidParameter, nil), nil
		}
		keep = b
	}
	if st := d.check(s, obj, mRevertSP, true); st != stSuccess {
		return methodReply(st, nil), nil
	}
	if keep {
		g := &d.st.Locking.Ranges[0]
		if g.readLocked() || g.writeLocked() {
			return methodReply(stFail, nil), nil
		}
	}
	st := d.commit(d.revertLocking(s, keep))
	if st != stSuccess {
		return methodReply(st, nil), nil
	}
	return methodReply(stSuccess, nil), func() {
		for _, o := range d.sessions {
			if o.sp == spLocking {
				d.endSession(o)
			}
		}
	}
}

func (d *Drive) mGenKey(s *session, obj UID, p params) []byte {
	r, ok := rangeOfKey(obj, numRanges)
	if s.sp != spLocking || !ok || len(p.pos) != 0 || len(p.named) != 0 {
		return methodReply(stInvalidParameter, nil)
	}
	if st := d.check(s, obj, mGenKey, true); st != stSuccess {
		return methodReply(st, nil)
	}
	return methodReply(d.commit(d.genKey(s, r)), nil)
}

// mErase cryptographically erases a range and clears its locking columns
// (ReadLockEnabled, WriteLockEnabled, ReadLocked, WriteLocked).
func (d *Drive) mErase(s *session, obj UID, p params) []byte {
	r, ok := rangeOfLocking(obj, numRanges)
	if s.sp != spLocking || !ok || len(p.pos) != 0 || len(p.named) != 0 {
		return methodReply(stInvalidParameter, nil)
	}
	if st := d.check(s, obj, mErase, true); st != stSuccess {
		return methodReply(st, nil)
	}
	rr := &d.st.Locking.Ranges[r]
	saved := *rr
	rr.RLE, rr.WLE, rr.RL, rr.WL = false, false, false, false
	st := d.genKey(s, r)
	if st == stSuccess {
		st = d.reconcile(r, s)
	}
	if st != stSuccess {
		rr.RLE, rr.WLE, rr.RL, rr.WL = saved.RLE, saved.WLE, saved.RL, saved.WL
		return methodReply(st, nil)
	}
	return methodReply(d.commit(st), nil)
}
