// Package token implements the TCG Storage Core data stream encoding
// (Core Specification 3.2.2): tiny, short, medium and long atoms, lists,
// names, calls and the control tokens.
//
// Decode accepts every legal encoding, including non-minimal ones (a small
// integer sent as a short or medium atom, a short byte string sent as a
// long atom). Encoder always produces the minimal encoding.
package token

import (
	"errors"
	"fmt"
)

// Control token bytes.
const (
	StartList        byte = 0xF0
	EndList          byte = 0xF1
	StartName        byte = 0xF2
	EndName          byte = 0xF3
	Call             byte = 0xF8
	EndOfData        byte = 0xF9
	EndOfSession     byte = 0xFA
	StartTransaction byte = 0xFB
	EndTransaction   byte = 0xFC
	Empty            byte = 0xFF
)

// Kind says what a decoded Value is.
type Kind uint8

// Value kinds.
const (
	KindUint Kind = iota + 1
	KindInt
	KindBytes
	KindList
	KindName
	KindCall
	KindEndOfData
	KindEndOfSession
	KindStartTransaction
	KindEndTransaction
)

// Value is one decoded item of a token stream.
type Value struct {
	Kind Kind
	U    uint64  // KindUint
	I    int64   // KindInt
	B    []byte  // KindBytes
	L    []Value // KindList items
	N    *Value  // KindName: the name
	V    *Value  // KindName: the value
}

// ErrSyntax reports a token stream that violates the Core encoding rules.
var ErrSyntax = errors.New("token stream syntax error")

// MaxDepth bounds list/name nesting so hostile input cannot exhaust the stack.
const MaxDepth = 32

func syntaxf(off int, format string, args ...any) error {
	return fmt.Errorf("%w at byte %d: %s", ErrSyntax, off, fmt.Sprintf(format, args...))
}

// Decode parses a whole token stream into a flat sequence of top-level
// values (lists and names nested). Empty atoms (0xFF) are skipped.
func Decode(b []byte) ([]Value, error) {
	d := decoder{b: b}
	var out []Value
	for d.off < len(d.b) {
		v, end, err := d.next(0)
		if err != nil {
			return nil, err
		}
		if end != 0 {
			return nil, syntaxf(d.off-1, "unbalanced 0x%02X", end)
		}
		if v == nil {
			continue
		}
		out = append(out, *v)
	}
	return out, nil
}

type decoder struct {
	b   []byte
	off int
}

// next returns the next value; for EndList/EndName it returns (nil, tok, nil).
func (d *decoder) next(depth int) (*Value, byte, error) {
	for {
		if d.off >= len(d.b) {
			return nil, 0, syntaxf(d.off, "unexpected end of stream")
		}
		h := d.b[d.off]
		start := d.off
		switch {
		case h < 0x80: // tiny atom
			d.off++
			if h&0x40 != 0 {
				v := int64(h & 0x3F)
				if v&0x20 != 0 {
					v -= 0x40
				}
				return &Value{Kind: KindInt, I: v}, 0, nil
			}
			return &Value{Kind: KindUint, U: uint64(h)}, 0, nil
		case h < 0xC0: // short atom
			n := int(h & 0x0F)
			return d.atom(start, 1, n, h&0x20 != 0, h&0x10 != 0)
		case h < 0xE0: // medium atom
			if d.off+1 >= len(d.b) {
				return nil, 0, syntaxf(start, "truncated medium atom header")
			}
			n := int(h&0x07)<<8 | int(d.b[d.off+1])
			return d.atom(start, 2, n, h&0x10 != 0, h&0x08 != 0)
		case h < 0xE4: // long atom
			if d.off+3 >= len(d.b) {
				return nil, 0, syntaxf(start, "truncated long atom header")
			}
			n := int(d.b[d.off+1])<<16 | int(d.b[d.off+2])<<8 | int(d.b[d.off+3])
			return d.atom(start, 4, n, h&0x02 != 0, h&0x01 != 0)
		case h < 0xF0:
			return nil, 0, syntaxf(start, "reserved token 0x%02X", h)
		}
		d.off++
		switch h {
		case Empty:
			if depth == 0 {
				return nil, 0, nil
			}
			continue
		case StartList:
			if depth >= MaxDepth {
				return nil, 0, syntaxf(start, "nesting deeper than %d", MaxDepth)
			}
			l := []Value{}
			for {
				v, end, err := d.next(depth + 1)
				if err != nil {
					return nil, 0, err
				}
				if end == EndList {
					return &Value{Kind: KindList, L: l}, 0, nil
				}
				if end != 0 {
					return nil, 0, syntaxf(d.off-1, "0x%02X inside a list", end)
				}
				if v != nil {
					l = append(l, *v)
				}
			}
		case StartName:
			if depth >= MaxDepth {
				return nil, 0, syntaxf(start, "nesting deeper than %d", MaxDepth)
			}
			n, end, err := d.next(depth + 1)
			if err != nil {
				return nil, 0, err
			}
			if end != 0 || n == nil || (n.Kind != KindUint && n.Kind != KindBytes && n.Kind != KindInt) {
				return nil, 0, syntaxf(start, "name is not an atom")
			}
			v, end, err := d.next(depth + 1)
			if err != nil {
				return nil, 0, err
			}
			if end != 0 || v == nil || !isData(v.Kind) {
				return nil, 0, syntaxf(start, "named value missing")
			}
			_, end, err = d.next(depth + 1)
			if err != nil {
				return nil, 0, err
			}
			if end != EndName {
				return nil, 0, syntaxf(start, "name not closed")
			}
			return &Value{Kind: KindName, N: n, V: v}, 0, nil
		case EndList, EndName:
			return nil, h, nil
		case Call:
			return &Value{Kind: KindCall}, 0, nil
		case EndOfData:
			return &Value{Kind: KindEndOfData}, 0, nil
		case EndOfSession:
			return &Value{Kind: KindEndOfSession}, 0, nil
		case StartTransaction:
			return &Value{Kind: KindStartTransaction}, 0, nil
		case EndTransaction:
			return &Value{Kind: KindEndTransaction}, 0, nil
		default:
			return nil, 0, syntaxf(start, "reserved token 0x%02X", h)
		}
	}
}

func isData(k Kind) bool {
	return k == KindUint || k == KindInt || k == KindBytes || k == KindList || k == KindName
}

func (d *decoder) atom(start, hdr, n int, isBytes, signed bool) (*Value, byte, error) {
	if d.off+hdr+n > len(d.b) || d.off+hdr+n < d.off {
		return nil, 0, syntaxf(start, "atom of %d bytes runs past the end", n)
	}
	data := d.b[d.off+hdr : d.off+hdr+n]
	d.off += hdr + n
	if isBytes {
		if signed {
			// Continued byte strings (B=1, S=1) are not supported (ContinuedTokens=false).
			return nil, 0, syntaxf(start, "continued token not supported")
		}
		c := make([]byte, n)
		copy(c, data)
		return &Value{Kind: KindBytes, B: c}, 0, nil
	}
	// integer: strip leading zero (or sign) bytes beyond 8
	if signed {
		if n == 0 {
			return &Value{Kind: KindInt}, 0, nil
		}
		neg := data[0]&0x80 != 0
		for len(data) > 8 && ((neg && data[0] == 0xFF) || (!neg && data[0] == 0)) {
			data = data[1:]
		}
		if len(data) > 8 {
			return nil, 0, syntaxf(start, "signed integer wider than 64 bits")
		}
		var u uint64
		if neg {
			u = ^uint64(0)
		}
		for _, c := range data {
			u = u<<8 | uint64(c)
		}
		return &Value{Kind: KindInt, I: int64(u)}, 0, nil
	}
	for len(data) > 8 && data[0] == 0 {
		data = data[1:]
	}
	if len(data) > 8 {
		return nil, 0, syntaxf(start, "unsigned integer wider than 64 bits")
	}
	var u uint64
	for _, c := range data {
		u = u<<8 | uint64(c)
	}
	return &Value{Kind: KindUint, U: u}, 0, nil
}

// Uint reports v as an unsigned integer; non-negative signed integers count.
func (v Value) Uint() (uint64, bool) {
	switch v.Kind {
	case KindUint:
		return v.U, true
	case KindInt:
		if v.I >= 0 {
			return uint64(v.I), true
		}
	}
	return 0, false
}

// Bytes reports v as a byte string.
func (v Value) Bytes() ([]byte, bool) {
	if v.Kind == KindBytes {
		return v.B, true
	}
	return nil, false
}

// Encoder builds a minimally encoded token stream.
type Encoder struct {
	buf []byte
}

// Bytes returns the encoded stream.
func (e *Encoder) Bytes() []byte { return e.buf }

// Len returns the encoded length so far.
func (e *Encoder) Len() int { return len(e.buf) }

// Token appends a control token.
func (e *Encoder) Token(t byte) *Encoder { e.buf = append(e.buf, t); return e }

// StartList appends 0xF0.
func (e *Encoder) StartList() *Encoder { return e.Token(StartList) }

// EndList appends 0xF1.
func (e *Encoder) EndList() *Encoder { return e.Token(EndList) }

// Uint appends an unsigned integer atom.
func (e *Encoder) Uint(v uint64) *Encoder {
	if v < 64 {
		e.buf = append(e.buf, byte(v))
		return e
	}
	n := 0
	for x := v; x > 0; x >>= 8 {
		n++
	}
	e.buf = append(e.buf, 0x80|byte(n))
	for i := n - 1; i >= 0; i-- {
		e.buf = append(e.buf, byte(v>>(8*i)))
	}
	return e
}

// Bool appends 1 or 0.
func (e *Encoder) Bool(b bool) *Encoder {
	if b {
		return e.Uint(1)
	}
	return e.Uint(0)
}

// ByteString appends a byte-string atom of any length.
func (e *Encoder) ByteString(b []byte) *Encoder {
	n := len(b)
	switch {
	case n < 16:
		e.buf = append(e.buf, 0xA0|byte(n))
	case n < 2048:
		e.buf = append(e.buf, 0xD0|byte(n>>8), byte(n))
	default:
		e.buf = append(e.buf, 0xE2, byte(n>>16), byte(n>>8), byte(n))
	}
	e.buf = append(e.buf, b...)
	return e
}

// NamedUint appends StartName name value EndName with a uinteger name.
func (e *Encoder) NamedUint(name, v uint64) *Encoder {
	e.Token(StartName).Uint(name).Uint(v)
	return e.Token(EndName)
}

// Value appends an arbitrary decoded value (round trip).
func (e *Encoder) Value(v Value) *Encoder {
	switch v.Kind {
	case KindUint:
		e.Uint(v.U)
	case KindInt:
		e.buf = append(e.buf, 0x98)
		for i := 7; i >= 0; i-- {
			e.buf = append(e.buf, byte(uint64(v.I)>>(8*i)))
		}
	case KindBytes:
		e.ByteString(v.B)
	case KindList:
		e.StartList()
		for _, x := range v.L {
			e.Value(x)
		}
		e.EndList()
	case KindName:
		e.Token(StartName)
		e.Value(*v.N)
		e.Value(*v.V)
		e.Token(EndName)
	case KindCall:
		e.Token(Call)
	case KindEndOfData:
		e.Token(EndOfData)
	case KindEndOfSession:
		e.Token(EndOfSession)
	case KindStartTransaction:
		e.Token(StartTransaction)
	case KindEndTransaction:
		e.Token(EndTransaction)
	}
	return e
}
