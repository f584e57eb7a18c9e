package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"
)

// refEncode and refDecode are the original one-value-per-iteration, single-goroutine
// codec, kept as the specification the unrolled and chunked paths must match byte for
// byte and error for error.
func refEncode(k Kind, block int, src []float32) ([]byte, error) {
	out := make([]byte, EncodedLen(k, len(src), block))
	if err := refEncodeInto(out, k, block, src); err != nil {
		return nil, err
	}
	return out, nil
}

// refEncodeInto is refEncode into a buffer of EncodedLen bytes, so that the benchmark
// measures the loop and not an allocation.
func refEncodeInto(out []byte, k Kind, block int, src []float32) error {
	switch k {
	case FP32:
		for i, v := range src {
			b := math.Float32bits(v)
			if b&0x7f800000 == 0x7f800000 {
				return fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			binary.LittleEndian.PutUint32(out[4*i:4*i+4], b)
		}
	case BF16:
		for i, v := range src {
			b := math.Float32bits(v)
			if b&0x7f800000 == 0x7f800000 {
				return fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			binary.LittleEndian.PutUint16(out[2*i:2*i+2], bf16Round(b))
		}
	case Int8:
		o := out
		for start := 0; start < len(src); start += block {
			end := min(start+block, len(src))
			var amax uint32
			for _, v := range src[start:end] {
				amax = max(amax, math.Float32bits(v)&0x7fffffff)
			}
			if amax >= 0x7f800000 {
				for i, v := range src[start:end] {
					if math.Float32bits(v)&0x7f800000 == 0x7f800000 {
						return fmt.Errorf("%w at index %d", ErrNonFinite, start+i)
					}
				}
			}
			scale := math.Float32frombits(amax) / 127
			binary.LittleEndian.PutUint32(o, math.Float32bits(scale))
			q := o[4 : 4+end-start]
			clear(q)
			if scale != 0 {
				inv := 1 / scale
				for i, v := range src[start:end] {
					x := v * inv
					half := math.Float32frombits(math.Float32bits(x)&0x80000000 | 0x3f000000)
					q[i] = byte(int8(max(-127, min(127, int32(x+half)))))
				}
			}
			o = o[4+end-start:]
		}
	}
	return nil
}

func refDecode(dst []float32, k Kind, block int, src []byte) error {
	switch k {
	case FP32:
		for i := range dst {
			b := binary.LittleEndian.Uint32(src[4*i : 4*i+4])
			if b&0x7f800000 == 0x7f800000 {
				return fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			dst[i] = math.Float32frombits(b)
		}
	case BF16:
		for i := range dst {
			b := uint32(binary.LittleEndian.Uint16(src[2*i:2*i+2])) << 16
			if b&0x7f800000 == 0x7f800000 {
				return fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			dst[i] = math.Float32frombits(b)
		}
	case Int8:
		for start := 0; start < len(dst); start += block {
			end := min(start+block, len(dst))
			sb := binary.LittleEndian.Uint32(src)
			scale := math.Float32frombits(sb)
			if sb&0x7f800000 == 0x7f800000 || scale < 0 {
				return fmt.Errorf("%w: int8 scale %g of block at index %d", ErrNonFinite, scale, start)
			}
			for i, c := range src[4 : 4+end-start] {
				dst[start+i] = float32(int8(c)) * scale
			}
			if scale > math.MaxFloat32/128 {
				for i, v := range dst[start:end] {
					if math.IsInf(float64(v), 0) {
						return fmt.Errorf("%w at index %d", ErrNonFinite, start+i)
					}
				}
			}
			src = src[4+end-start:]
		}
	}
	return nil
}

type setting struct {
	k     Kind
	block int
}

var settings = []setting{{FP32, 0}, {BF16, 0}, {Int8, 1}, {Int8, 7}, {Int8, 64}, {Int8, 4096}}

// splits are the chunk counts tried besides what Encode picks: 1 is the serial path,
// the rest force uneven splits, more chunks than CPUs, and (with block 4096 on the
// small input) more chunks than blocks.
var splits = []int{1, 2, 3, 5, 16}

func sameFloats(a, b []float32) bool {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return len(a) == len(b)
}

func TestParallelMatchesReference(t *testing.T) {
	// Odd sizes, not multiples of any block size; the large one crosses parallelMin so
	// that the public Encode and Decode split it themselves.
	for _, n := range []int{10007, parallelMin + 12345} {
		x := activations(n, 768, 9)
		for _, s := range settings {
			name := fmt.Sprintf("%v/%d/n=%d", s.k, s.block, n)
			want, err := refEncode(s.k, s.block, x)
			if err != nil {
				t.Fatal(name, err)
			}
			wantY := make([]float32, n)
			if err := refDecode(wantY, s.k, s.block, want); err != nil {
				t.Fatal(name, err)
			}
			prefix := []byte("hdr")
			got, err := Encode(prefix, s.k, s.block, x)
			if err != nil || !bytes.Equal(got[:3], prefix) || !bytes.Equal(got[3:], want) {
				t.Fatalf("%s: Encode differs from the reference (err %v)", name, err)
			}
			y := make([]float32, n)
			if err := Decode(y, s.k, s.block, want); err != nil || !sameFloats(y, wantY) {
				t.Fatalf("%s: Decode differs from the reference (err %v)", name, err)
			}
			for _, p := range splits {
				out := make([]byte, len(want))
				if err := encode(out, s.k, s.block, x, p); err != nil || !bytes.Equal(out, want) {
					t.Fatalf("%s: encode with %d chunks differs (err %v)", name, p, err)
				}
				clear(y)
				if err := decode(y, s.k, s.block, want, p); err != nil || !sameFloats(y, wantY) {
					t.Fatalf("%s: decode with %d chunks differs (err %v)", name, p, err)
				}
			}
		}
	}
}

func TestParallelNonFinite(t *testing.T) {
	const n = parallelMin + 1001
	x := activations(n, 768, 10)
	const p = 4
	per := (n + p - 1) / p // chunk length for float codecs; int8 chunks are close
	for _, bad := range [][]int{
		{5},                       // first chunk
		{n - 2},                   // last chunk
		{per + 3, 3*per + 11},     // two chunks: the lower must win
		{3*per + 11, per + 3, 0},  // three, the lowest in chunk 0
		{per - 1, per},            // both sides of a chunk boundary
		{n - 1},                   // very last value, in the scalar tail
		{per + 8, per + 9, n - 9}, // inside one unrolled group, and another chunk
	} {
		y := append([]float32(nil), x...)
		for j, i := range bad {
			y[i] = []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))}[j%3]
		}
		lowest := n
		for _, i := range bad {
			lowest = min(lowest, i)
		}
		for _, s := range settings {
			name := fmt.Sprintf("%v/%d bad %v", s.k, s.block, bad)
			_, want := refEncode(s.k, s.block, y)
			if !errors.Is(want, ErrNonFinite) || want.Error() != fmt.Sprintf("%v at index %d", ErrNonFinite, lowest) {
				t.Fatalf("%s: reference says %v", name, want)
			}
			dst, err := Encode([]byte("x"), s.k, s.block, y)
			if err == nil || err.Error() != want.Error() || !errors.Is(err, ErrNonFinite) || string(dst) != "x" {
				t.Fatalf("%s: Encode: %v, want %v", name, err, want)
			}
			for _, q := range splits {
				out := make([]byte, EncodedLen(s.k, n, s.block))
				if err := encode(out, s.k, s.block, y, q); err == nil || err.Error() != want.Error() {
					t.Fatalf("%s: encode with %d chunks: %v, want %v", name, q, err, want)
				}
			}
		}
	}
}

// TestParallelDecodeRejects corrupts valid encodings at several places at once: the
// chunked decoder must report what the reference reports, i.e. the lowest place.
func TestParallelDecodeRejects(t *testing.T) {
	const n = parallelMin + 1001
	x := activations(n, 768, 11)
	for _, s := range settings {
		enc, err := refEncode(s.k, s.block, x)
		if err != nil {
			t.Fatal(err)
		}
		for _, at := range [][]int{{7}, {n - 1}, {n / 3, n/2 + 5}, {n - 5, n / 4}} {
			bad := append([]byte(nil), enc...)
			for _, i := range at {
				switch s.k {
				case FP32:
					binary.LittleEndian.PutUint32(bad[4*i:], 0x7fc00000) // NaN
				case BF16:
					binary.LittleEndian.PutUint16(bad[2*i:], 0xff80) // -Inf
				case Int8:
					blk := i / s.block
					binary.LittleEndian.PutUint32(bad[blk*(4+s.block):], 0x7f800000) // Inf scale
				}
			}
			name := fmt.Sprintf("%v/%d bad %v", s.k, s.block, at)
			want := refDecode(make([]float32, n), s.k, s.block, bad)
			if !errors.Is(want, ErrNonFinite) {
				t.Fatalf("%s: reference accepted: %v", name, want)
			}
			if err := Decode(make([]float32, n), s.k, s.block, bad); err == nil || err.Error() != want.Error() || !errors.Is(err, ErrNonFinite) {
				t.Fatalf("%s: Decode: %v, want %v", name, err, want)
			}
			for _, q := range splits {
				if err := decode(make([]float32, n), s.k, s.block, bad, q); err == nil || err.Error() != want.Error() {
					t.Fatalf("%s: decode with %d chunks: %v, want %v", name, q, err, want)
				}
			}
		}
	}
}

func TestParts(t *testing.T) {
	if p := parts(parallelMin - 1); p != 1 {
		t.Errorf("parts below the threshold = %d, want 1", p)
	}
	if p := parts(0); p != 1 {
		t.Errorf("parts(0) = %d, want 1", p)
	}
	// Empty and tiny inputs through the chunked path with more chunks than values.
	for _, s := range settings {
		for n := range 4 {
			x := activations(n, 1, 12)
			want, _ := refEncode(s.k, s.block, x)
			out := make([]byte, len(want))
			if err := encode(out, s.k, s.block, x, 16); err != nil || !bytes.Equal(out, want) {
				t.Fatalf("%v/%d n=%d: %v", s.k, s.block, n, err)
			}
		}
	}
}

// BenchmarkLarge is one activation tensor of the size the profiles show on the
// critical path (B 8, T 1024, d 768 = 6.3M float32) encoded and decoded per
// iteration: ref is the original one-value loop, serial the unrolled loop on one
// goroutine, parallel what Encode and Decode do (up to GOMAXPROCS chunks). MB/s counts
// fp32 input bytes, as the codec table does.
func BenchmarkLarge(b *testing.B) {
	const n = 8 * 1024 * 768
	x := activations(n, 768, 13)
	y := make([]float32, n)
	for _, s := range []setting{{FP32, 0}, {BF16, 0}, {Int8, 64}, {Int8, 256}} {
		name := s.k.String()
		if s.k == Int8 {
			name += fmt.Sprintf("/%d", s.block)
		}
		out := make([]byte, EncodedLen(s.k, n, s.block))
		// Fault the buffers in first so that the first variant does not pay for it.
		if err := refEncodeInto(out, s.k, s.block, x); err != nil {
			b.Fatal(err)
		}
		if err := refDecode(y, s.k, s.block, out); err != nil {
			b.Fatal(err)
		}
		run := func(b *testing.B, enc func() error, dec func() error) {
			b.SetBytes(4 * n)
			for b.Loop() {
				if err := enc(); err != nil {
					b.Fatal(err)
				}
				if err := dec(); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.Run(name+"/ref", func(b *testing.B) {
			run(b, func() error { return refEncodeInto(out, s.k, s.block, x) },
				func() error { return refDecode(y, s.k, s.block, out) })
		})
		b.Run(name+"/serial", func(b *testing.B) {
			run(b, func() error { return encode(out, s.k, s.block, x, 1) },
				func() error { return decode(y, s.k, s.block, out, 1) })
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			run(b, func() (err error) { out, err = Encode(out[:0], s.k, s.block, x); return err },
				func() error { return Decode(y, s.k, s.block, out) })
		})
	}
}
