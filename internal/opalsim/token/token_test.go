package token

import (
	"bytes"
	"errors"
	"testing"
)

func TestDecodeEncodings(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want Value
	}{
		{"tiny", []byte{0x05}, Value{Kind: KindUint, U: 5}},
		{"tiny signed", []byte{0x7F}, Value{Kind: KindInt, I: -1}},
		{"short uint", []byte{0x82, 0x01, 0x00}, Value{Kind: KindUint, U: 256}},
		{"short uint non-minimal", []byte{0x84, 0, 0, 0, 5}, Value{Kind: KindUint, U: 5}},
		{"short bytes", []byte{0xA3, 'a', 'b', 'c'}, Value{Kind: KindBytes, B: []byte("abc")}},
		{"medium bytes", append([]byte{0xD0, 0x02}, 'x', 'y'), Value{Kind: KindBytes, B: []byte("xy")}},
		{"medium uint", []byte{0xC0, 0x02, 0x01, 0x02}, Value{Kind: KindUint, U: 0x102}},
		{"long bytes", []byte{0xE2, 0, 0, 1, 'z'}, Value{Kind: KindBytes, B: []byte("z")}},
		{"long uint wide zero-padded", []byte{0xE0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7}, Value{Kind: KindUint, U: 7}},
		{"short signed", []byte{0x91, 0xFE}, Value{Kind: KindInt, I: -2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(tc.in)
			if err != nil || len(got) != 1 {
				t.Fatalf("Decode: %v %+v", err, got)
			}
			g := got[0]
			if g.Kind != tc.want.Kind || g.U != tc.want.U || g.I != tc.want.I || !bytes.Equal(g.B, tc.want.B) {
				t.Fatalf("got %+v want %+v", g, tc.want)
			}
		})
	}
}

func TestDecodeStructures(t *testing.T) {
	in := []byte{Call, 0xA1, 1, 0xA1, 2, StartList, StartName, 0x03, StartList, 1, 2, EndList, EndName, Empty, EndList, EndOfData, StartList, 0, 0, 0, EndList}
	v, err := Decode(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 6 || v[3].Kind != KindList || v[3].L[0].Kind != KindName || len(v[3].L[0].V.L) != 2 {
		t.Fatalf("%+v", v)
	}
	var e Encoder
	for _, x := range v {
		e.Value(x)
	}
	back, err := Decode(e.Bytes())
	if err != nil || len(back) != len(v) {
		t.Fatalf("round trip: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	deep := bytes.Repeat([]byte{StartList}, MaxDepth+2)
	for name, in := range map[string][]byte{
		"truncated short":    {0xA5, 1, 2},
		"truncated medium":   {0xD0},
		"medium past end":    {0xD0, 0x10, 1},
		"long past end":      {0xE2, 0xFF, 0xFF, 0xFF, 1},
		"reserved":           {0xE5},
		"reserved control":   {0xF5},
		"unbalanced end":     {EndList},
		"unclosed list":      {StartList, 1},
		"name without value": {StartName, 1, EndName},
		"name not atom":      {StartName, StartList, EndList, 1, EndName},
		"too deep":           deep,
		"uint too wide":      {0x89, 1, 0, 0, 0, 0, 0, 0, 0, 0},
		"continued bytes":    {0xB1, 1},
	} {
		if _, err := Decode(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("%s: err = %v, want ErrSyntax", name, err)
		}
	}
}

func TestEncoderMinimal(t *testing.T) {
	var e Encoder
	e.Uint(0).Uint(63).Uint(64).Uint(0x10000).ByteString(make([]byte, 15)).ByteString(make([]byte, 16)).ByteString(make([]byte, 2048))
	b := e.Bytes()
	want := []byte{0x00, 0x3F, 0x81, 0x40, 0x83, 1, 0, 0, 0xAF}
	if !bytes.Equal(b[:len(want)], want) {
		t.Fatalf("% X", b[:len(want)])
	}
	v, err := Decode(b)
	if err != nil || len(v) != 7 || len(v[6].B) != 2048 {
		t.Fatalf("%v %d", err, len(v))
	}
}
