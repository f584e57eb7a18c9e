package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"
)

// formats are the encodings of both protocols, as AppendRounded and DecodeSub
// serve them.
var formats = []Format{{Kind: FP32}, {Kind: BF16}, {Kind: Int8, Block: 64}, {Kind: Int8, Block: 64, Layout: Planar}}

// lengths sit around the word (2 and 4 values) and block (64) sizes.
var lengths = []int{1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 130, 1000}

// TestAppendRounded: rounding while encoding leaves the values a peer decodes and
// the bytes Append writes, and refuses values that would not survive the codec.
func TestAppendRounded(t *testing.T) {
	for _, f := range formats {
		for _, n := range lengths {
			vals := activations(n, 16, uint64(n))
			enc, err := f.Append(nil, vals)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]float32, n)
			if err := f.Decode(want, enc); err != nil {
				t.Fatal(err)
			}
			got := append([]float32(nil), vals...)
			renc, err := f.AppendRounded([]byte{9}, got)
			if err != nil || renc[0] != 9 || !bytes.Equal(renc[1:], enc) {
				t.Fatalf("%+v n=%d: %v, or the encoding differs", f, n, err)
			}
			if !sameFloats(got, want) {
				t.Fatalf("%+v n=%d: rounded values differ from the decoded ones", f, n)
			}
		}
	}
	big := []float32{1, math.MaxFloat32, 2} // its int8 scale times 127 overflows
	for _, f := range formats[2:] {
		if _, err := f.AppendRounded(nil, big); !errors.Is(err, ErrNonFinite) {
			t.Errorf("%+v: overflow: %v", f, err)
		}
	}
	// bf16 saturates rather than round past its range, and rounds ties to even.
	bf := []float32{math.MaxFloat32, 1.00390625, 1.01171875}
	enc, err := Format{Kind: BF16}.AppendRounded(nil, bf)
	if err != nil || binary.LittleEndian.Uint16(enc[2:]) != 0x3f80 || binary.LittleEndian.Uint16(enc[4:]) != 0x3f82 || overflows(bf[0]) {
		t.Errorf("bf16 rounding: %x %v %v", enc, bf, err)
	}
	tiny := []float32{1e-44, -3e-45, 0} // a subnormal scale: still finite
	for _, f := range formats[2:] {
		if _, err := f.AppendRounded(nil, tiny); err != nil {
			t.Errorf("%+v: tiny values: %v", f, err)
		}
	}
}

// TestDecodeSub checks the fused decode and delta against Decode followed by the
// subtraction, and that it rejects what Decode rejects.
func TestDecodeSub(t *testing.T) {
	for _, f := range formats {
		for _, n := range lengths {
			enc, _ := f.Append(nil, activations(n, 16, uint64(n)))
			sent := activations(n, 16, uint64(n)+100)
			want := make([]float32, n)
			if err := f.Decode(want, enc); err != nil {
				t.Fatal(err)
			}
			for i := range want {
				want[i] = float32(want[i] - sent[i])
			}
			got := append([]float32(nil), sent...)
			if err := f.DecodeSub(got, enc); err != nil || !sameFloats(got, want) {
				t.Fatalf("%+v n=%d: %v, or the deltas differ", f, n, err)
			}
			bad := append([]byte(nil), enc...)
			switch f.Kind {
			case FP32:
				binary.LittleEndian.PutUint32(bad[4*(n-1):], 0x7fc00000) // NaN
			case BF16:
				binary.LittleEndian.PutUint16(bad[2*(n-1):], 0x7f80) // +Inf
			case Int8:
				so, _, _, _ := f.int8At(n, 0)
				binary.LittleEndian.PutUint32(bad[so:], 0x7fc00000) // NaN scale
			}
			if err := f.DecodeSub(got, bad); !errors.Is(err, ErrNonFinite) {
				t.Fatalf("%+v n=%d: poison: %v", f, n, err)
			}
		}
	}
	for _, f := range formats[2:] {
		big := make([]byte, f.Len(2))
		so, qo, _, _ := f.int8At(2, 0)
		binary.LittleEndian.PutUint32(big[so:], math.Float32bits(math.MaxFloat32/100))
		big[qo], big[qo+1] = 127, 0x80 // 127 and −128 times a huge scale overflow
		if err := f.DecodeSub(make([]float32, 2), big); !errors.Is(err, ErrNonFinite) {
			t.Errorf("%+v: int8 overflow: %v", f, err)
		}
	}
}

func TestCheckFinite(t *testing.T) {
	for _, n := range []int{1, 3, 4, 5, 17} {
		for bad := 0; bad < n; bad++ {
			for _, x := range []float32{float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())} {
				v := make([]float32, n)
				for i := range v {
					v[i] = float32(i) - 2.5
				}
				v[0] = math.MaxFloat32
				if err := CheckFinite(v); err != nil {
					t.Fatalf("finite values rejected: %v", err)
				}
				v[bad] = x
				if err := CheckFinite(v); !errors.Is(err, ErrNonFinite) {
					t.Fatalf("n=%d: %v at %d: %v", n, x, bad, err)
				}
			}
		}
	}
}
