// Package kmipwire frames, checks and codes KMIP messages on a stream for
// sedboot's KMIP client and server.
//
// github.com/ovh/kmip-go v0.8.1's TTLV decoder trusts the lengths inside
// a message: a primitive shorter than its type or a structure holding a
// truncated item makes it index out of range and panic (found by fuzzing
// kmsd). Every message is therefore checked here, item by item, before
// kmip-go decodes it, and decoding and encoding run under recover as a
// second line of defence. The receive buffer is the caller's, so it can
// be zeroed after decoding: it may hold key material.
package kmipwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/ttlv"
)

// DefaultMaxMessage is the largest message accepted by default (1 MiB).
const DefaultMaxMessage = 1 << 20

// maxDepth bounds structure nesting.
const maxDepth = 32

// ErrMalformed reports a message that is not well-formed TTLV.
var ErrMalformed = errors.New("malformed TTLV message")

// TTLV item types.
const (
	typeStructure   = 0x01
	typeInteger     = 0x02
	typeLongInteger = 0x03
	typeBigInteger  = 0x04
	typeEnumeration = 0x05
	typeBoolean     = 0x06
	typeTextString  = 0x07
	typeByteString  = 0x08
	typeDateTime    = 0x09
	typeInterval    = 0x0A
)

func tagOf(b []byte) int { return int(b[0])<<16 | int(b[1])<<8 | int(b[2]) }

func padded(l uint64) uint64 { return (l + 7) &^ 7 }

// ReadMessage reads one message into buf (grown as needed and returned):
// it checks the 8-byte header (tag want, type Structure, length at most
// max) before reading the body. io.EOF means the peer closed cleanly
// between messages.
func ReadMessage(r io.Reader, want int, max int, buf []byte) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	if cap(buf) < 8 {
		buf = make([]byte, 0, 512)
	}
	buf = buf[:8]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return buf[:0], fmt.Errorf("%w: connection closed inside a message header", io.ErrUnexpectedEOF)
		}
		return buf[:0], err
	}
	if tag := tagOf(buf); tag != want {
		return buf[:0], fmt.Errorf("%w: message tag %s, want %s", ErrMalformed, ttlv.TagString(tag), ttlv.TagString(want))
	}
	if buf[3] != typeStructure {
		return buf[:0], fmt.Errorf("%w: message is not a structure", ErrMalformed)
	}
	l := uint64(binary.BigEndian.Uint32(buf[4:8]))
	if l%8 != 0 {
		return buf[:0], fmt.Errorf("%w: message length %d is not a multiple of 8", ErrMalformed, l)
	}
	if l > uint64(max)-8 {
		return buf[:0], fmt.Errorf("%w: message of %d bytes exceeds %d", ErrMalformed, l+8, max)
	}
	n := 8 + int(l)
	if cap(buf) < n {
		nb := make([]byte, n)
		copy(nb, buf[:8])
		clear(buf[:cap(buf)])
		buf = nb
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf[8:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return buf, fmt.Errorf("read message body: %w", err)
	}
	return buf, nil
}

// Validate checks that msg is exactly one well-formed TTLV structure
// tagged want: every item's length fits its type and its container,
// padding is zero, text is UTF-8, nesting is bounded.
func Validate(msg []byte, want int) error {
	if len(msg) < 8 {
		return fmt.Errorf("%w: %d bytes", ErrMalformed, len(msg))
	}
	if tag := tagOf(msg); tag != want {
		return fmt.Errorf("%w: message tag %s, want %s", ErrMalformed, ttlv.TagString(tag), ttlv.TagString(want))
	}
	if msg[3] != typeStructure {
		return fmt.Errorf("%w: message is not a structure", ErrMalformed)
	}
	l := uint64(binary.BigEndian.Uint32(msg[4:8]))
	if l+8 != uint64(len(msg)) {
		return fmt.Errorf("%w: header says %d bytes, message has %d", ErrMalformed, l+8, len(msg))
	}
	return items(msg, 0)
}

// items checks a sequence of TTLV items filling b exactly.
func items(b []byte, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: structures nested deeper than %d", ErrMalformed, maxDepth)
	}
	for len(b) > 0 {
		if len(b) < 8 {
			return fmt.Errorf("%w: %d stray bytes", ErrMalformed, len(b))
		}
		tag, typ := tagOf(b), b[3]
		l := uint64(binary.BigEndian.Uint32(b[4:8]))
		p := padded(l)
		if p > uint64(len(b)-8) {
			return fmt.Errorf("%w: item %s of %d bytes overruns its container", ErrMalformed, ttlv.TagString(tag), l)
		}
		v := b[8 : 8+l]
		var err error
		switch typ {
		case typeStructure:
			if l%8 != 0 {
				err = fmt.Errorf("structure length %d", l)
			} else {
				if e := items(v, depth+1); e != nil {
					return e
				}
			}
		case typeInteger, typeEnumeration, typeInterval:
			if l != 4 {
				err = fmt.Errorf("length %d, want 4", l)
			}
		case typeLongInteger, typeDateTime, typeBoolean:
			if l != 8 {
				err = fmt.Errorf("length %d, want 8", l)
			}
		case typeBigInteger:
			if l == 0 || l%8 != 0 {
				err = fmt.Errorf("big integer length %d", l)
			}
		case typeTextString:
			if !utf8.Valid(v) {
				err = errors.New("text is not UTF-8")
			}
		case typeByteString:
		default:
			err = fmt.Errorf("unknown type %#x", typ)
		}
		if err != nil {
			return fmt.Errorf("%w: item %s: %v", ErrMalformed, ttlv.TagString(tag), err)
		}
		for _, c := range b[8+l : 8+p] {
			if c != 0 {
				return fmt.Errorf("%w: item %s: non-zero padding", ErrMalformed, ttlv.TagString(tag))
			}
		}
		b = b[8+p:]
	}
	return nil
}

// Decode decodes a validated message into v, turning a decoder panic
// into an error.
func Decode(msg []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: decoder failed: %v", ErrMalformed, r)
		}
	}()
	return ttlv.UnmarshalTTLV(msg, v)
}

// Encode encodes v, turning an encoder panic into an error.
func Encode(v any) (b []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("encode KMIP message: %v", r)
		}
	}()
	return ttlv.MarshalTTLV(v), nil
}

// DecodeRequest validates and decodes a request message.
func DecodeRequest(msg []byte) (*kmip.RequestMessage, error) {
	if err := Validate(msg, kmip.TagRequestMessage); err != nil {
		return nil, err
	}
	req := new(kmip.RequestMessage)
	if err := Decode(msg, req); err != nil {
		return nil, err
	}
	return req, nil
}

// DecodeResponse validates and decodes a response message.
func DecodeResponse(msg []byte) (*kmip.ResponseMessage, error) {
	if err := Validate(msg, kmip.TagResponseMessage); err != nil {
		return nil, err
	}
	resp := new(kmip.ResponseMessage)
	if err := Decode(msg, resp); err != nil {
		return nil, err
	}
	return resp, nil
}
