package opalsim

import (
	"github.com/sedboot/sedboot/internal/opalsim/token"
)

// Method status codes (Core 5.1.5).
const (
	stSuccess            = 0x00
	stNotAuthorized      = 0x01
	stSPBusy             = 0x03
	stSPFailed           = 0x04
	stSPDisabled         = 0x05
	stSPFrozen           = 0x06
	stNoSessions         = 0x07
	stUniquenessConflict = 0x08
	stInsufficientSpace  = 0x09
	stInsufficientRows   = 0x0A
	stInvalidParameter   = 0x0C
	stTPerMalfunction    = 0x0F
	stTransactionFailure = 0x10
	stResponseOverflow   = 0x11
	stAuthorityLockedOut = 0x12
	stFail               = 0x3F
)

// session is an open session with an SP.
type session struct {
	comID    uint16
	hsn, tsn uint32
	sp       UID
	write    bool
	auths    map[UID]bool
	creds    map[UID]credKey
	lak      []byte         // Locking SP admin key (admins only)
	uks      map[int][]byte // user keys
	mks      map[int][]byte // range media keys available to this session
}

func newSession(comID uint16, hsn, tsn uint32, sp UID, write bool) *session {
	return &session{comID: comID, hsn: hsn, tsn: tsn, sp: sp, write: write,
		auths: map[UID]bool{authAnybody: true}, creds: map[UID]credKey{},
		uks: map[int][]byte{}, mks: map[int][]byte{}}
}

// wipe zeroes every secret the session holds.
func (s *session) wipe() {
	for _, k := range s.creds {
		zero(k)
	}
	zero(s.lak)
	for _, k := range s.uks {
		zero(k)
	}
	for _, k := range s.mks {
		zero(k)
	}
	s.creds, s.lak, s.uks, s.mks = nil, nil, nil, nil
}

func newReply() *token.Encoder { return &token.Encoder{} }

func finishStatus(e *token.Encoder, status byte) []byte {
	e.Token(token.EndOfData).StartList().Uint(uint64(status)).Uint(0).Uint(0).EndList()
	return e.Bytes()
}

// methodReply builds "[ results ] EOD [ status 0 0 ]".
func methodReply(status byte, results func(e *token.Encoder)) []byte {
	e := newReply()
	e.StartList()
	if status == stSuccess && results != nil {
		results(e)
	}
	e.EndList()
	return finishStatus(e, status)
}

func smReply(method UID, status byte, params func(e *token.Encoder)) []byte {
	e := newReply()
	e.Token(token.Call).ByteString(uidSMU[:]).ByteString(method[:]).StartList()
	if params != nil {
		params(e)
	}
	e.EndList()
	return finishStatus(e, status)
}

// params splits a method's parameter list into required (positional) and
// optional (named, uinteger names) parameters.
type params struct {
	pos   []token.Value
	named map[uint64]token.Value
}

func splitParams(l []token.Value) (params, bool) {
	p := params{named: map[uint64]token.Value{}}
	for _, v := range l {
		if v.Kind == token.KindName {
			n, ok := v.N.Uint()
			if !ok {
				return p, false
			}
			if _, dup := p.named[n]; dup {
				return p, false
			}
			p.named[n] = *v.V
			continue
		}
		if len(p.named) > 0 {
			return p, false // required after optional
		}
		p.pos = append(p.pos, v)
	}
	return p, true
}

// parseCall checks "Call iid mid [params] EOD [status...]" and returns its parts.
func parseCall(toks []token.Value) (iid, mid UID, args []token.Value, hostStatus uint64, ok bool) {
	if len(toks) != 6 || toks[0].Kind != token.KindCall || toks[3].Kind != token.KindList ||
		toks[4].Kind != token.KindEndOfData || toks[5].Kind != token.KindList {
		return
	}
	ib, ok1 := toks[1].Bytes()
	mb, ok2 := toks[2].Bytes()
	if !ok1 || !ok2 || len(ib) != 8 || len(mb) != 8 {
		return
	}
	copy(iid[:], ib)
	copy(mid[:], mb)
	st := toks[5].L
	if len(st) < 1 {
		return
	}
	for _, x := range st {
		if _, isU := x.Uint(); !isU {
			return
		}
	}
	hostStatus, _ = st[0].Uint()
	return iid, mid, toks[3].L, hostStatus, true
}

// sessionManager handles a payload sent with TSN=HSN=0.
func (d *Drive) sessionManager(comID uint16, cs *comState, payload []byte) []byte {
	toks, err := token.Decode(payload)
	if err != nil {
		return nil
	}
	iid, mid, args, hostStatus, ok := parseCall(toks)
	if !ok || iid != uidSMU {
		return nil
	}
	p, ok := splitParams(args)
	if !ok {
		return smReply(mid, stInvalidParameter, nil)
	}
	if hostStatus != 0 {
		return smReply(mid, stFail, nil)
	}
	switch mid {
	case mProperties:
		return d.properties(cs, p)
	case mStartSession:
		return d.startSession(comID, p)
	case mCloseSession:
		return d.closeSessionCall(p)
	default:
		return smReply(mid, stInvalidParameter, nil)
	}
}

// tperProperties lists what this TPer reports (Core 5.2.2.1).
func (d *Drive) tperProperties() []struct {
	name string
	v    uint64
} {
	return []struct {
		name string
		v    uint64
	}{
		{"MaxComPacketSize", maxComPacket}, {"MaxResponseComPacketSize", maxComPacket},
		{"MaxPacketSize", maxPacket}, {"MaxIndTokenSize", maxIndToken}, {"MaxAggTokenSize", maxIndToken},
		{"MaxPackets", 1}, {"MaxSubpackets", 1}, {"MaxMethods", 1},
		{"MaxSessions", uint64(d.st.MaxSess)}, {"MaxReadSessions", 0}, {"MaxAuthentications", 2},
		{"MaxTransactionLimit", 0}, {"DefSessionTimeout", 0},
		{"ContinuedTokens", 0}, {"SequenceNumbers", 0}, {"AckNak", 0}, {"Asynchronous", 0},
	}
}

func (d *Drive) properties(cs *comState, p params) []byte {
	if len(p.pos) != 0 {
		return smReply(mProperties, stInvalidParameter, nil)
	}
	for n := range p.named {
		if n != 0 {
			return smReply(mProperties, stInvalidParameter, nil)
		}
	}
	// The reply lists the host properties the TPer will use. Host buffer
	// sizes beyond anything this TPer ever sends (its own maximum
	// response) are reported at that maximum: a host that sizes its receive
	// buffers by the reply, as go-tcg-storage does, then allocates 64 KiB
	// per IF-RECV instead of the 1 MiB it asked for.
	type hp struct {
		name     string
		v        uint64
		min, max uint64 // max 0: no bound
	}
	host := []hp{
		{"MaxMethods", 1, 1, 0}, {"MaxSubpackets", 1, 1, 0}, {"MaxPacketSize", 2028, 2028, maxPacket},
		{"MaxPackets", 1, 1, 0}, {"MaxComPacketSize", initialHostComPk, initialHostComPk, maxComPacket},
		{"MaxIndTokenSize", 1992, 1992, maxIndToken}, {"MaxAggTokenSize", 1992, 1992, maxIndToken},
		{"ContinuedTokens", 0, 0, 0}, {"SequenceNumbers", 0, 0, 0}, {"AckNak", 0, 0, 0}, {"Asynchronous", 0, 0, 0},
	}
	if hv, ok := p.named[0]; ok {
		if hv.Kind != token.KindList {
			return smReply(mProperties, stInvalidParameter, nil)
		}
		for _, item := range hv.L {
			if item.Kind != token.KindName {
				return smReply(mProperties, stInvalidParameter, nil)
			}
			name, ok1 := item.N.Bytes()
			val, ok2 := item.V.Uint()
			if !ok1 || !ok2 {
				return smReply(mProperties, stInvalidParameter, nil)
			}
			for i := range host {
				if host[i].name != string(name) {
					continue
				}
				switch {
				case host[i].min == 0: // boolean capabilities we do not support
					host[i].v = 0
				case val < host[i].min:
					host[i].v = host[i].min
				case host[i].max != 0 && val > host[i].max:
					host[i].v = host[i].max
				default:
					host[i].v = val
				}
			}
		}
		for _, h := range host {
			if h.name == "MaxComPacketSize" {
				cs.hostMaxComP = int(h.v)
			}
		}
	}
	return smReply(mProperties, stSuccess, func(e *token.Encoder) {
		e.StartList()
		for _, t := range d.tperProperties() {
			e.Token(token.StartName).ByteString([]byte(t.name)).Uint(t.v).Token(token.EndName)
		}
		e.EndList()
		e.Token(token.StartName).Uint(0).StartList()
		for _, h := range host {
			e.Token(token.StartName).ByteString([]byte(h.name)).Uint(h.v).Token(token.EndName)
		}
		e.EndList().Token(token.EndName)
	})
}

func (d *Drive) startSession(comID uint16, p params) []byte {
	fail := func(st byte) []byte { return smReply(mSyncSession, st, nil) }
	if len(p.pos) != 3 {
		return fail(stInvalidParameter)
	}
	hsn, ok1 := p.pos[0].Uint()
	spb, ok2 := p.pos[1].Bytes()
	w, ok3 := p.pos[2].Uint()
	if !ok1 || !ok2 || !ok3 || hsn > 0xFFFFFFFF || len(spb) != 8 || w > 1 {
		return fail(stInvalidParameter)
	}
	var sp UID
	copy(sp[:], spb)
	var challenge []byte
	hasChallenge := false
	signer := authAnybody
	for n, v := range p.named {
		switch n {
		case 0:
			b, ok := v.Bytes()
			if !ok {
				return fail(stInvalidParameter)
			}
			challenge, hasChallenge = b, true
		case 3:
			b, ok := v.Bytes()
			if !ok || len(b) != 8 {
				return fail(stInvalidParameter)
			}
			copy(signer[:], b)
		case 5: // SessionTimeout: accepted, sessions do not time out here
			if _, ok := v.Uint(); !ok {
				return fail(stInvalidParameter)
			}
		default:
			return fail(stInvalidParameter)
		}
	}
	switch sp {
	case spAdmin:
	case spLocking:
		if d.st.Locking.LifeCycle != lifeManufactured {
			return fail(stInvalidParameter)
		}
	default:
		return fail(stInvalidParameter)
	}
	if len(d.sessions) >= d.st.MaxSess {
		return fail(stSPBusy)
	}
	if hasChallenge && signer == authAnybody {
		return fail(stInvalidParameter)
	}
	s := newSession(comID, uint32(hsn), 0, sp, w == 1)
	if signer != authAnybody {
		ok, st := d.authenticate(s, signer, challenge)
		if st != stSuccess {
			s.wipe()
			return fail(st)
		}
		if !ok {
			s.wipe()
			return fail(stNotAuthorized)
		}
	}
	for {
		d.nextTSN++
		if d.nextTSN < 4096 {
			d.nextTSN = 4096
		}
		if _, used := d.sessions[d.nextTSN]; !used {
			break
		}
	}
	s.tsn = d.nextTSN
	d.sessions[s.tsn] = s
	return smReply(mSyncSession, stSuccess, func(e *token.Encoder) {
		e.Uint(hsn).Uint(uint64(s.tsn))
	})
}

func (d *Drive) closeSessionCall(p params) []byte {
	if len(p.pos) != 2 || len(p.named) != 0 {
		return smReply(mCloseSession, stInvalidParameter, nil)
	}
	hsn, ok1 := p.pos[0].Uint()
	tsn, ok2 := p.pos[1].Uint()
	s, found := d.sessions[uint32(tsn)]
	if !ok1 || !ok2 || tsn > 0xFFFFFFFF || !found || uint64(s.hsn) != hsn {
		return smReply(mCloseSession, stInvalidParameter, nil)
	}
	d.endSession(s)
	return smReply(mCloseSession, stSuccess, func(e *token.Encoder) { e.Uint(hsn).Uint(tsn) })
}

func (d *Drive) endSession(s *session) {
	s.wipe()
	delete(d.sessions, s.tsn)
}

// abortSession ends s after a streaming protocol violation and prepares the
// CloseSession the host may retrieve (Opal 3.3.4.1.3).
func (d *Drive) abortSession(s *session) ([]byte, uint32, uint32) {
	hsn, tsn := s.hsn, s.tsn
	d.endSession(s)
	return smReply(mCloseSession, stSuccess, func(e *token.Encoder) {
		e.Uint(uint64(hsn)).Uint(uint64(tsn))
	}), 0, 0
}

// sessionPayload handles a payload addressed to an open session.
func (d *Drive) sessionPayload(s *session, payload []byte) ([]byte, uint32, uint32) {
	if len(payload) > 0 && payload[0] == token.EndOfSession {
		// End of session; anything after the token is ignored (the Linux
		// kernel appends an end-of-data and status list).
		tsn, hsn := s.tsn, s.hsn
		d.endSession(s)
		return []byte{token.EndOfSession}, tsn, hsn
	}
	toks, err := token.Decode(payload)
	if err != nil {
		return d.abortSession(s)
	}
	iid, mid, args, hostStatus, ok := parseCall(toks)
	if !ok {
		return d.abortSession(s)
	}
	if iid == uidSMU {
		return d.abortSession(s)
	}
	var resp []byte
	if hostStatus != 0 {
		resp = methodReply(stFail, nil)
	} else {
		var after func()
		resp, after = d.invoke(s, iid, mid, args)
		if after != nil {
			tsn, hsn := s.tsn, s.hsn
			after()
			return resp, tsn, hsn
		}
	}
	return resp, s.tsn, s.hsn
}
