package sed

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/open-source-firmware/go-tcg-storage/pkg/core"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/stream"
	"github.com/open-source-firmware/go-tcg-storage/pkg/core/table"
	"github.com/open-source-firmware/go-tcg-storage/pkg/drive"
)

// level0Len is the allocation length of the Level 0 discovery IF-RECV.
const level0Len = 2048

// conn is one operation's view of the drive: its Level 0 discovery and a
// control session on the SSC's base ComID with properties exchanged.
type conn struct {
	d   *Drive
	ctx context.Context
	sum *Summary
	cs  *core.ControlSession

	// The key verifier, loaded once per operation (see verifier).
	override *Verifier
	// wantGen, when not 0, is the only generation checkKey admits.
	wantGen uint64
	vLoaded bool
	v       *Verifier
	vSrc    VerifierSource
}

// readLevel0 performs Level 0 discovery and returns the raw response and
// its summary.
func (d *Drive) readLevel0() ([]byte, *Summary, error) {
	raw := make([]byte, level0Len)
	err := safe(func() error {
		return d.intf.IFRecv(drive.SecurityProtocolTCGManagement, uint16(core.ComIDDiscoveryL0), &raw)
	})
	if err != nil {
		if errors.Is(err, drive.ErrNotSupported) {
			return nil, nil, fmt.Errorf("%w: level 0 discovery not supported: %w", ErrNotOpal, err)
		}
		return nil, nil, fmt.Errorf("level 0 discovery: %w", err)
	}
	sum, err := parseLevel0(raw)
	if err != nil {
		return nil, nil, err
	}
	return raw, sum, nil
}

// cachedLevel0 answers core.Discovery0 with a response already read.
type cachedLevel0 []byte

func (c cachedLevel0) IFRecv(_ drive.SecurityProtocol, _ uint16, data *[]byte) error {
	copy(*data, c)
	return nil
}

func (c cachedLevel0) IFSend(drive.SecurityProtocol, uint16, []byte) error {
	return errors.New("cached level 0 discovery is read-only")
}

// connect discovers the drive and opens a control session. requireOpal
// refuses drives outside the Opal family.
func (d *Drive) connect(ctx context.Context, requireOpal bool) (*conn, error) {
	raw, sum, err := d.readLevel0()
	if err != nil {
		return nil, err
	}
	if requireOpal && !sum.Opal() {
		what := string(sum.SSC)
		if what == "" {
			what = "no SSC"
		}
		return nil, fmt.Errorf("%w (level 0 reports %s)", ErrNotOpal, what)
	}
	if !sum.SyncSupported {
		return nil, errors.New("TPer does not support synchronous communication")
	}
	if sum.BaseComID == 0 {
		return nil, fmt.Errorf("%w: no base ComID in level 0 discovery", ErrNotOpal)
	}
	var cs *core.ControlSession
	err = safe(func() error {
		l0, err := core.Discovery0(cachedLevel0(raw))
		if err != nil {
			return err
		}
		if l0.TPer == nil {
			return errors.New("level 0 discovery has no TPer feature")
		}
		cs, err = core.NewControlSession(d.com, l0, core.WithComID(core.ComID(sum.BaseComID)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("control session on ComID 0x%04x: %w", sum.BaseComID, err)
	}
	return &conn{d: d, ctx: ctx, sum: sum, cs: cs}, nil
}

// session is an open session with an SP.
type session struct {
	c      *conn
	s      *core.Session
	sp     core.SPID
	authed []Authority
	closed bool
}

// randomHSN returns a host session number from crypto/rand, in 1..2^31-1.
func randomHSN() int {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("sed: no randomness for a host session number: " + err.Error())
	}
	return int(binary.BigEndian.Uint32(b[:])&0x7fffffff) | 1
}

// open starts a session with sp as Anybody.
func (c *conn) open(sp core.SPID, write bool) (*session, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, err
	}
	opts := []core.SessionOpt{core.WithHSN(randomHSN())}
	if !write {
		opts = append(opts, core.WithReadOnly())
	}
	var s *core.Session
	err := safe(func() error {
		var err error
		s, err = c.cs.NewSession(sp, opts...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start session with %s: %w", spName(sp), mapStatus(err))
	}
	return &session{c: c, s: s, sp: sp}, nil
}

func spName(sp core.SPID) string {
	switch sp {
	case core.AdminSP:
		return "Admin SP"
	case core.LockingSP:
		return "Locking SP"
	}
	return fmt.Sprintf("SP % x", sp[:])
}

// close ends the session (EndOfSession). Safe to call twice.
func (s *session) close() error {
	if s == nil || s.closed {
		return nil
	}
	s.closed = true
	return safe(s.s.Close)
}

// closeAfter closes the session at the end of an operation, keeping the
// operation's error when there is one and logging a failed close then.
func (s *session) closeAfter(err *error) {
	if s == nil {
		return
	}
	cerr := s.close()
	if cerr == nil {
		return
	}
	if *err == nil {
		*err = fmt.Errorf("close session with %s: %w", spName(s.sp), cerr)
		return
	}
	s.c.d.log.Debug("close session after an error", "sp", spName(s.sp), "err", cerr)
}

// mapStatus turns method status errors into this package's sentinels.
func mapStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, core.ErrMethodStatusNotAuthorized):
		return fmt.Errorf("%w: %w", ErrNotAuthorized, err)
	case errors.Is(err, core.ErrMethodStatusAuthorityLockedOut):
		return fmt.Errorf("%w: %w", ErrLockedOut, err)
	}
	return err
}

// exec runs a method call in the session.
func (s *session) exec(mc *core.MethodCall) (stream.List, error) {
	if err := s.c.ctx.Err(); err != nil {
		return nil, err
	}
	var res stream.List
	err := safe(func() error {
		var err error
		res, err = s.s.ExecuteMethod(mc)
		return err
	})
	return res, mapStatus(err)
}

// call builds a method call on this session.
func (s *session) call(iid core.InvokingID, mid core.MethodID) *core.MethodCall {
	return s.s.NewMethodCall(iid, mid)
}

// getCells reads columns first..last of an object row.
func (s *session) getCells(row table.RowUID, first, last uint) (map[uint]any, error) {
	mc := s.call(core.InvokingID(row), table.MethodIDGet)
	mc.StartList()
	mc.StartOptionalParameter(table.CellBlock_StartColumn, "startColumn")
	mc.UInt(first)
	mc.EndOptionalParameter()
	mc.StartOptionalParameter(table.CellBlock_EndColumn, "endColumn")
	mc.UInt(last)
	mc.EndOptionalParameter()
	mc.EndList()
	res, err := s.exec(mc)
	if err != nil {
		return nil, err
	}
	return parseRowValues(res)
}

// parseRowValues decodes a Get result: [ [ {col value} ... ] ].
func parseRowValues(res stream.List) (map[uint]any, error) {
	if len(res) < 1 {
		return nil, fmt.Errorf("%w: empty Get result", ErrMalformedResponse)
	}
	outer, ok := res[0].(stream.List)
	if !ok {
		return nil, fmt.Errorf("%w: Get result is not a list", ErrMalformedResponse)
	}
	out := map[uint]any{}
	if len(outer) == 0 {
		return out, nil
	}
	inner, ok := outer[0].(stream.List)
	if !ok {
		return nil, fmt.Errorf("%w: Get row values are not a list", ErrMalformedResponse)
	}
	for i := 0; i < len(inner); i++ {
		if !stream.EqualToken(inner[i], stream.StartName) {
			continue
		}
		if i+3 >= len(inner) || !stream.EqualToken(inner[i+3], stream.EndName) {
			return nil, fmt.Errorf("%w: unterminated named value in Get result", ErrMalformedResponse)
		}
		col, ok := inner[i+1].(uint)
		if !ok {
			return nil, fmt.Errorf("%w: column name is not an integer", ErrMalformedResponse)
		}
		out[col] = inner[i+2]
		i += 3
	}
	return out, nil
}

// getUint reads one integer column.
func (s *session) getUint(row table.RowUID, col uint) (uint, error) {
	vals, err := s.getCells(row, col, col)
	if err != nil {
		return 0, err
	}
	v, ok := vals[col].(uint)
	if !ok {
		return 0, fmt.Errorf("%w: column %d is missing or not an integer", ErrMalformedResponse, col)
	}
	return v, nil
}

// getBytes reads one byte-string column.
func (s *session) getBytes(row table.RowUID, col uint) ([]byte, error) {
	vals, err := s.getCells(row, col, col)
	if err != nil {
		return nil, err
	}
	v, ok := vals[col].([]byte)
	if !ok {
		return nil, fmt.Errorf("%w: column %d is missing or not a byte string", ErrMalformedResponse, col)
	}
	return v, nil
}

// set runs Set on an object row; values adds named column values.
func (s *session) set(row table.RowUID, values func(mc *core.MethodCall)) error {
	mc := table.NewSetCall(s.s, row)
	values(mc)
	table.FinishSetCall(s.s, mc)
	_, err := s.exec(mc)
	return err
}

func namedBool(mc *core.MethodCall, col uint, v bool) {
	mc.StartOptionalParameter(col, "")
	mc.Bool(v)
	mc.EndOptionalParameter()
}

func namedBytes(mc *core.MethodCall, col uint, v []byte) {
	mc.StartOptionalParameter(col, "")
	mc.Bytes(v)
	mc.EndOptionalParameter()
}

// present authenticates the session as a with cred, under the Drive's
// guard: refused after an earlier failure or when the tries left are too
// few for a credential the drive has not accepted before. On success it
// reads a's try counters (when the session may) and returns them.
func (s *session) present(a Authority, cred []byte) (TriesInfo, error) {
	d := s.c.d
	if err := d.guard.check(a, cred); err != nil {
		return TriesInfo{Authority: a}, err
	}
	if err := s.c.ctx.Err(); err != nil {
		return TriesInfo{Authority: a}, err
	}
	err := safe(func() error { return table.ThisSP_Authenticate(s.s, a.uid, cred) })
	switch {
	case err == nil:
	case errors.Is(err, table.ErrAuthenticationFailed), errors.Is(err, core.ErrMethodStatusNotAuthorized):
		d.guard.failure(a)
		n := d.guard.failures(a)
		d.log.Info("credential rejected", "authority", a.String(), "failures", n)
		detail := fmt.Sprintf("%d failed this boot", n)
		if left, limit, ok := d.guard.estimate(a); ok {
			detail += fmt.Sprintf(", %d of %d tries left", left, limit)
		}
		return TriesInfo{Authority: a}, fmt.Errorf("authenticate as %s (%s): %w", a, detail, ErrWrongCredential)
	case errors.Is(err, core.ErrMethodStatusAuthorityLockedOut):
		return TriesInfo{Authority: a}, fmt.Errorf("authenticate as %s: %w", a, ErrLockedOut)
	default:
		return TriesInfo{Authority: a}, fmt.Errorf("authenticate as %s: %w", a, mapStatus(err))
	}
	d.guard.success(a, cred)
	s.authed = append(s.authed, a)
	t := s.readTries(a)
	return t, nil
}

// readTries reads a's Tries and TryLimit; a session not allowed to read
// them yields Known == false. What is read is recorded in the guard.
func (s *session) readTries(a Authority) TriesInfo {
	t := TriesInfo{Authority: a}
	vals, err := s.getCells(a.cpin, colCPINTryLimit, colCPINTries)
	if err != nil {
		s.c.d.log.Debug("tries not readable", "authority", a.String(), "err", err)
		return t
	}
	limit, ok1 := vals[colCPINTryLimit].(uint)
	tries, ok2 := vals[colCPINTries].(uint)
	if !ok1 || !ok2 {
		return t
	}
	t.Known, t.Tries, t.TryLimit = true, int(tries), int(limit)
	s.c.d.guard.observed(t)
	return t
}

// setPIN sets a's credential (C_PIN PIN column).
func (s *session) setPIN(a Authority, pin []byte) error {
	if err := s.set(a.cpin, func(mc *core.MethodCall) { namedBytes(mc, colCPINPIN, pin) }); err != nil {
		return fmt.Errorf("set %s credential: %w", a, err)
	}
	return nil
}

// rawCall encodes a method call whose arguments need tokens
// core.MethodCall cannot emit. args appends the argument tokens.
func rawCall(iid core.InvokingID, mid core.MethodID, args func(t *tokens)) []byte {
	t := &tokens{}
	t.tok(stream.Call)
	t.bytes(iid[:])
	t.bytes(mid[:])
	t.tok(stream.StartList)
	args(t)
	t.tok(stream.EndList)
	t.tok(stream.EndOfData)
	t.tok(stream.StartList)
	t.uint(0)
	t.uint(0)
	t.uint(0)
	t.tok(stream.EndList)
	return t.b
}

// tokens assembles a token stream with go-tcg-storage's encoders.
type tokens struct{ b []byte }

func (t *tokens) tok(x stream.TokenType) { t.b = append(t.b, stream.Token(x)...) }
func (t *tokens) bytes(x []byte)         { t.b = append(t.b, stream.Bytes(x)...) }
func (t *tokens) uint(x uint)            { t.b = append(t.b, stream.UInt(x)...) }

// execRaw sends an encoded method call in the session through the
// library's packetisation (core.NewPlainCommunication) and checks the
// response's status list as core.MethodCall.Execute does.
func (s *session) execRaw(payload []byte) (stream.List, error) {
	cs := s.c.cs
	com := core.NewPlainCommunication(s.c.d.com, cs.HostProperties, cs.TPerProperties)
	proto := drive.SecurityProtocolTCGManagement
	var resp []byte
	err := safe(func() error {
		pending, err := com.Receive(proto, s.s)
		if err != nil {
			return err
		}
		if len(pending) > 0 {
			return core.ErrReceivedUnexpectedResponse
		}
		if err := com.Send(proto, s.s, payload); err != nil {
			return err
		}
		// A TPer still working answers with an empty ComPacket; poll a
		// bounded number of times.
		for i := 0; i < 100; i++ {
			if resp, err = com.Receive(proto, s.s); err != nil || len(resp) > 0 {
				return err
			}
			if err := s.c.ctx.Err(); err != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
		return core.ErrMethodTimeout
	})
	if err != nil {
		return nil, err
	}
	var reply stream.List
	if err := safe(func() error {
		var err error
		reply, err = stream.Decode(resp)
		return err
	}); err != nil {
		return nil, err
	}
	if len(reply) < 2 {
		return nil, core.ErrEmptyMethodResponse
	}
	tok, ok1 := reply[len(reply)-2].(stream.TokenType)
	status, ok2 := reply[len(reply)-1].(stream.List)
	if !ok1 || !ok2 || tok != stream.EndOfData || len(status) == 0 {
		return nil, core.ErrMalformedMethodResponse
	}
	sc, ok := status[0].(uint)
	if !ok {
		return nil, core.ErrMalformedMethodResponse
	}
	if sc != core.MethodStatusSuccess {
		if e, ok := core.MethodStatusCodeMap[sc]; ok {
			return nil, mapStatus(e)
		}
		return nil, fmt.Errorf("method returned unknown status code 0x%02x", sc)
	}
	return reply[:len(reply)-2], nil
}
