package opalsim

import "fmt"

// authorityInfo locates an authority of sp: its C_PIN row (nil for
// authorities without a password), whether it is enabled, and whether it is
// a class.
func (d *Drive) authorityInfo(sp, a UID) (cp *cpinRow, enabled, class, exists bool) {
	if a == authAnybody {
		return nil, true, false, true
	}
	if sp == spAdmin {
		switch a {
		case authSID:
			return &d.st.SID, true, false, true
		case authPSID:
			return &d.st.PSIDPIN, true, false, true
		case authAdmins, authMakers:
			return nil, true, true, true
		}
		return nil, false, false, false
	}
	ls := &d.st.Locking
	if a == authAdmins || a == authUsers {
		return nil, true, true, true
	}
	if a.hi() != tAuthority {
		return nil, false, false, false
	}
	switch lo := a.lo(); {
	case lo >= 0x00010001 && lo <= 0x00010000+numAdmins:
		n := int(lo - 0x00010000)
		return &ls.AdminPIN[n-1], ls.AdminEn[n-1], false, true
	case lo >= 0x00030001 && lo <= 0x00030000+numUsers:
		n := int(lo - 0x00030000)
		return &ls.UserPIN[n-1], ls.UserEn[n-1], false, true
	}
	return nil, false, false, false
}

// authenticate checks proof for authority a and, on success, records the
// authority and the keys it unlocks in s. A non-success status is a method
// failure (unknown authority, locked out, state not persisted); ok=false
// with stSuccess means the credential was wrong or the authority disabled.
func (d *Drive) authenticate(s *session, a UID, proof []byte) (ok bool, status byte) {
	cp, enabled, class, exists := d.authorityInfo(s.sp, a)
	if !exists || class {
		return false, stInvalidParameter
	}
	if a == authAnybody {
		return true, stSuccess
	}
	if cp == nil || !enabled {
		return false, stSuccess
	}
	if cp.lockedOut() {
		return false, stAuthorityLockedOut
	}
	cred, good := cp.V.check(proof)
	if !good {
		cp.Tries++
		if err := d.save(); err != nil {
			return false, stTPerMalfunction
		}
		return false, stSuccess
	}
	if cp.Tries != 0 {
		cp.Tries = 0
		if err := d.save(); err != nil {
			zero(cred)
			return false, stTPerMalfunction
		}
	}
	s.auths[a] = true
	if old, had := s.creds[a]; had {
		zero(old)
	}
	s.creds[a] = cred
	if s.sp == spLocking && cred != nil {
		d.loadSessionKeys(s, a, cred)
	}
	return true, stSuccess
}

// loadSessionKeys unwraps what authority a's credential opens.
func (d *Drive) loadSessionKeys(s *session, a UID, cred credKey) {
	ls := &d.st.Locking
	kek := cred.kek()
	defer zero(kek)
	lo := a.lo()
	if lo>>16 == 1 { // AdminN
		n := int(lo & 0xFFFF)
		w, ok := ls.LAK[fmt.Sprintf("admin:%d", n)]
		if !ok {
			return
		}
		lak, err := unseal(kek, w, fmt.Sprintf("lak:admin:%d", n))
		if err != nil {
			return
		}
		zero(s.lak)
		s.lak = lak
		for r := range ls.Ranges {
			if w, ok := ls.Ranges[r].Wrapped[slotLAK]; ok {
				if mk, err := unseal(lak, w, keyAD(r, slotLAK)); err == nil {
					s.setMK(r, mk)
				}
			}
		}
		for u := 1; u <= numUsers; u++ {
			if w, ok := ls.UK[fmt.Sprintf("user:%d:lak", u)]; ok {
				if uk, err := unseal(lak, w, fmt.Sprintf("uk:%d:lak", u)); err == nil {
					s.setUK(u, uk)
				}
			}
		}
		return
	}
	if lo>>16 == 3 { // UserN
		n := int(lo & 0xFFFF)
		w, ok := ls.UK[fmt.Sprintf("user:%d:pin", n)]
		if !ok {
			return
		}
		uk, err := unseal(kek, w, fmt.Sprintf("uk:%d:pin", n))
		if err != nil {
			return
		}
		s.setUK(n, uk)
		for r := range ls.Ranges {
			if w, ok := ls.Ranges[r].Wrapped[slotUser(n)]; ok {
				if mk, err := unseal(uk, w, keyAD(r, slotUser(n))); err == nil {
					s.setMK(r, mk)
				}
			}
		}
	}
}

func (s *session) setMK(r int, mk []byte) {
	zero(s.mks[r])
	s.mks[r] = mk
}

func (s *session) setUK(u int, uk []byte) {
	zero(s.uks[u])
	s.uks[u] = uk
}

// currentMK returns range r's media key if the drive or the session holds
// it (not a copy: do not modify).
func (d *Drive) currentMK(r int, s *session) []byte {
	if d.live[r] != nil {
		return d.live[r].raw
	}
	if s != nil {
		if mk, ok := s.mks[r]; ok {
			return mk
		}
	}
	return nil
}

// usersOfRange lists the users named in range r's RdLocked/WrLocked ACEs.
func (d *Drive) usersOfRange(r int) map[int]bool {
	users := map[int]bool{}
	for _, u := range []UID{aceLockingSetRd(r), aceLockingSetWr(r)} {
		def, _ := d.lockingACE(u)
		for _, e := range def.expr {
			if e.Auth == nil {
				continue
			}
			if *e.Auth == authUsers {
				for n := 1; n <= numUsers; n++ {
					users[n] = true
				}
			}
			if lo := e.Auth.lo(); e.Auth.hi() == tAuthority && lo>>16 == 3 && lo&0xFFFF >= 1 && lo&0xFFFF <= numUsers {
				users[int(lo&0xFFFF)] = true
			}
		}
	}
	return users
}

// reconcile brings range r's live key and key slots in line with its
// locking state and ACEs. It changes nothing and returns stFail when a key
// it needs is available neither to the drive nor to the session.
func (d *Drive) reconcile(r int, s *session) byte {
	ls := &d.st.Locking
	rr := &ls.Ranges[r]
	mk := d.currentMK(r, s)
	needLive := rr.accessible()
	needSystem := rr.accessibleAfterReset()
	_, haveSystem := rr.Wrapped[slotSystem]
	users := map[int]bool{}
	if ls.LifeCycle == lifeManufactured {
		users = d.usersOfRange(r)
	}
	// Feasibility first.
	if mk == nil {
		if (needLive && d.live[r] == nil) || (needSystem && !haveSystem) {
			return stFail
		}
		for u := range users {
			if _, ok := rr.Wrapped[slotUser(u)]; !ok {
				return stFail
			}
		}
	}
	for u := range users {
		if _, ok := rr.Wrapped[slotUser(u)]; !ok && s.uks[u] == nil {
			if _, ok := ls.UK[fmt.Sprintf("user:%d:pin", u)]; ok {
				return stFail // a user with a credential we cannot wrap for
			}
		}
	}
	if needLive && d.live[r] == nil {
		k, err := newMediaKey(mk)
		if err != nil {
			return stTPerMalfunction
		}
		d.live[r] = k
	}
	if !needLive && d.live[r] != nil {
		d.live[r].destroy()
		d.live[r] = nil
	}
	if needSystem && !haveSystem {
		rr.Wrapped[slotSystem] = seal(d.st.SystemKey, mk, keyAD(r, slotSystem))
	}
	if !needSystem && haveSystem {
		delete(rr.Wrapped, slotSystem)
	}
	for u := 1; u <= numUsers; u++ {
		slot := slotUser(u)
		_, have := rr.Wrapped[slot]
		switch {
		case users[u] && !have && s.uks[u] != nil && mk != nil:
			rr.Wrapped[slot] = seal(s.uks[u], mk, keyAD(r, slot))
		case !users[u] && have:
			delete(rr.Wrapped, slot)
		}
	}
	return stSuccess
}

// activate moves the Locking SP from Manufactured-Inactive to Manufactured
// (Opal 5.1.1): Admin1's PIN becomes SID's, the admin key (LAK) and the
// user keys are created and every range key is wrapped under the LAK.
func (d *Drive) activate(s *session) byte {
	ls := &d.st.Locking
	if ls.LifeCycle == lifeManufactured {
		return stSuccess
	}
	cred := s.creds[authSID]
	if cred == nil {
		return stNotAuthorized
	}
	lak := randBytes(32)
	defer zero(lak)
	for r := range ls.Ranges {
		mk := d.currentMK(r, s)
		if mk == nil {
			return stTPerMalfunction
		}
		ls.Ranges[r].Wrapped[slotLAK] = seal(lak, mk, keyAD(r, slotLAK))
	}
	kek := cred.kek()
	ls.LAK["admin:1"] = seal(kek, lak, "lak:admin:1")
	zero(kek)
	ls.AdminPIN[0].V = d.st.SID.V
	ls.AdminPIN[0].Tries = 0
	for u := 1; u <= numUsers; u++ {
		uk := randBytes(32)
		ls.UK[fmt.Sprintf("user:%d:lak", u)] = seal(lak, uk, fmt.Sprintf("uk:%d:lak", u))
		zero(uk)
	}
	ls.LifeCycle = lifeManufactured
	return stSuccess
}

// setPIN changes the credential of C_PIN object obj.
func (d *Drive) setPIN(s *session, obj UID, pin []byte) byte {
	if len(pin) == 0 || len(pin) > 255 {
		return stInvalidParameter
	}
	ls := &d.st.Locking
	if s.sp == spAdmin {
		if obj != cpinSID {
			return stNotAuthorized
		}
		v, k := newVerifier(pin)
		d.st.SID.V, d.st.SID.Tries = v, 0
		// The session now holds SID's new credential: Activate later in
		// this session must seal Admin1's keys under it (Opal copies the
		// current C_PIN_SID value to Admin1).
		if old, had := s.creds[authSID]; had {
			zero(old)
			s.creds[authSID] = k
		} else {
			zero(k)
		}
		return stSuccess
	}
	lo := obj.lo()
	n := int(lo & 0xFFFF)
	switch lo >> 16 {
	case 1:
		if n < 1 || n > numAdmins {
			return stInvalidParameter
		}
		if s.lak == nil {
			return stFail
		}
		v, k := newVerifier(pin)
		kek := k.kek()
		ls.LAK[fmt.Sprintf("admin:%d", n)] = seal(kek, s.lak, fmt.Sprintf("lak:admin:%d", n))
		zero(kek)
		zero(k)
		ls.AdminPIN[n-1].V, ls.AdminPIN[n-1].Tries = v, 0
	case 3:
		if n < 1 || n > numUsers {
			return stInvalidParameter
		}
		uk := s.uks[n]
		if uk == nil {
			return stFail
		}
		v, k := newVerifier(pin)
		kek := k.kek()
		ls.UK[fmt.Sprintf("user:%d:pin", n)] = seal(kek, uk, fmt.Sprintf("uk:%d:pin", n))
		zero(kek)
		zero(k)
		ls.UserPIN[n-1].V, ls.UserPIN[n-1].Tries = v, 0
		// A user who is already named in range ACEs gets the range keys now.
		for r := range ls.Ranges {
			if d.usersOfRange(r)[n] {
				if _, ok := ls.Ranges[r].Wrapped[slotUser(n)]; !ok {
					if mk := d.currentMK(r, s); mk != nil {
						ls.Ranges[r].Wrapped[slotUser(n)] = seal(uk, mk, keyAD(r, slotUser(n)))
					}
				}
			}
		}
	default:
		return stInvalidParameter
	}
	return stSuccess
}

// genKey replaces range r's media key: its data is cryptographically erased.
func (d *Drive) genKey(s *session, r int) byte {
	ls := &d.st.Locking
	rr := &ls.Ranges[r]
	if s.lak == nil {
		return stFail
	}
	users := d.usersOfRange(r)
	for u := range users {
		if s.uks[u] == nil {
			return stFail
		}
	}
	mk := randBytes(64)
	rr.Wrapped = map[string][]byte{slotLAK: seal(s.lak, mk, keyAD(r, slotLAK))}
	for u := range users {
		rr.Wrapped[slotUser(u)] = seal(s.uks[u], mk, keyAD(r, slotUser(u)))
	}
	if rr.accessibleAfterReset() {
		rr.Wrapped[slotSystem] = seal(d.st.SystemKey, mk, keyAD(r, slotSystem))
	}
	if d.live[r] != nil {
		d.live[r].destroy()
		k, err := newMediaKey(mk)
		if err != nil {
			zero(mk)
			return stTPerMalfunction
		}
		d.live[r] = k
	}
	for _, other := range d.sessions {
		if other != s {
			zero(other.mks[r])
			delete(other.mks, r)
		}
	}
	s.setMK(r, mk)
	return stSuccess
}

// revertLocking returns the Locking SP to its original factory state;
// keepGlobal keeps the global range's media key (RevertSP KeepGlobalRangeKey).
func (d *Drive) revertLocking(s *session, keepGlobal bool) byte {
	var gk []byte
	if keepGlobal {
		mk := d.currentMK(0, s)
		if mk == nil {
			return stFail
		}
		gk = append([]byte(nil), mk...)
		defer zero(gk)
	}
	d.st.lockingFactory()
	if gk != nil {
		d.st.Locking.Ranges[0].Wrapped[slotSystem] = seal(d.st.SystemKey, gk, keyAD(0, slotSystem))
	}
	d.st.MBRKey = seal(d.st.SystemKey, randBytes(64), "table:mbr")
	d.st.DSKey = seal(d.st.SystemKey, randBytes(64), "table:datastore")
	clear(d.st.MBRMap)
	clear(d.st.DSMap)
	return d.reloadKeys()
}

// reloadKeys reinstalls live keys from policy copies after a revert.
func (d *Drive) reloadKeys() byte {
	for r := range d.live {
		d.live[r].destroy()
		d.live[r] = nil
		w, ok := d.st.Locking.Ranges[r].Wrapped[slotSystem]
		if !ok {
			continue
		}
		mk, err := unseal(d.st.SystemKey, w, keyAD(r, slotSystem))
		if err != nil {
			return stTPerMalfunction
		}
		k, err := newMediaKey(mk)
		zero(mk)
		if err != nil {
			return stTPerMalfunction
		}
		d.live[r] = k
	}
	if err := d.loadTableKeys(); err != nil {
		return stTPerMalfunction
	}
	return stSuccess
}
