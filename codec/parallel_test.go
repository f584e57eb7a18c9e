package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"
)

// refEncode and refDecode are a one-value-per-iteration, single-goroutine codec,
// kept as the specification the word-at-a-time and chunked paths must match byte
// for byte and error for error.
func refEncode(f Format, src []float32) ([]byte, error) {
	out := make([]byte, f.Len(len(src)))
	if err := refEncodeInto(out, f, src); err != nil {
		return nil, err
	}
	return out, nil
}

// refEncodeInto is refEncode into a buffer of f.Len bytes, so that the benchmark
// measures the loop and not an allocation.
func refEncodeInto(out []byte, f Format, src []float32) error {
	if err := refFinite(src, 0); err != nil {
		return err
	}
	switch f.Kind {
	case FP32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(out[4*i:4*i+4], math.Float32bits(v))
		}
	case BF16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(out[2*i:2*i+2], bf16Round(math.Float32bits(v)))
		}
	case Int8:
		nb := blocks(len(src), f.Block)
		for k := range nb {
			start, end := k*f.Block, min((k+1)*f.Block, len(src))
			var amax float32
			for _, v := range src[start:end] {
				amax = max(amax, float32(math.Abs(float64(v))))
			}
			scale := amax / 127
			so, qo := 4*k+start, 4*k+start+4
			if f.Layout == Planar {
				so, qo = 4*k, 4*nb+start
			}
			binary.LittleEndian.PutUint32(out[so:], math.Float32bits(scale))
			for i, v := range src[start:end] {
				q := 0.0
				if scale != 0 {
					x := float64(v * min(1/scale, math.MaxFloat32))
					if f.Layout == Planar {
						q = math.RoundToEven(x)
					} else {
						q = math.Max(-127, math.Min(127, math.Round(x)))
					}
				}
				out[qo+i] = byte(int8(q))
			}
		}
	}
	return nil
}

func refDecode(dst []float32, f Format, src []byte) error {
	switch f.Kind {
	case FP32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i : 4*i+4]))
		}
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:2*i+2])) << 16)
		}
	case Int8:
		nb := blocks(len(dst), f.Block)
		for k := range nb {
			start, end := k*f.Block, min((k+1)*f.Block, len(dst))
			so, qo := 4*k+start, 4*k+start+4
			if f.Layout == Planar {
				so, qo = 4*k, 4*nb+start
			}
			sb := binary.LittleEndian.Uint32(src[so:])
			scale := math.Float32frombits(sb)
			if sb&0x7f800000 == 0x7f800000 || scale < 0 {
				return fmt.Errorf("%w: int8 scale %g of block at index %d", ErrNonFinite, scale, start)
			}
			for i, c := range src[qo : qo+end-start] {
				dst[start+i] = float32(int8(c)) * scale
			}
			if err := refFinite(dst[start:end], start); err != nil {
				return err
			}
		}
	}
	return refFinite(dst, 0)
}

// refFinite names the first NaN or Inf of vals, whose first value has index base.
func refFinite(vals []float32, base int) error {
	for i, v := range vals {
		if math.IsInf(float64(v), 0) || math.IsNaN(float64(v)) {
			return fmt.Errorf("%w at index %d", ErrNonFinite, base+i)
		}
	}
	return nil
}

var settings = []Format{{Kind: FP32}, {Kind: BF16}, {Kind: Int8, Block: 1}, {Kind: Int8, Block: 7},
	{Kind: Int8, Block: 64}, {Kind: Int8, Block: 4096}, {Kind: Int8, Block: 7, Layout: Planar}, {Kind: Int8, Block: 64, Layout: Planar}}

// splits are the chunk counts tried besides what Append picks: 1 is the serial path,
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
	// that the public Append and Decode split it themselves.
	for _, n := range []int{10007, parallelMin + 12345} {
		x := activations(n, 768, 9)
		for _, s := range settings {
			name := fmt.Sprintf("%+v/n=%d", s, n)
			want, err := refEncode(s, x)
			if err != nil {
				t.Fatal(name, err)
			}
			wantY := make([]float32, n)
			if err := refDecode(wantY, s, want); err != nil {
				t.Fatal(name, err)
			}
			prefix := []byte("hdr")
			got, err := s.Append(prefix, x)
			if err != nil || !bytes.Equal(got[:3], prefix) || !bytes.Equal(got[3:], want) {
				t.Fatalf("%s: Append differs from the reference (err %v)", name, err)
			}
			y := make([]float32, n)
			if err := s.Decode(y, want); err != nil || !sameFloats(y, wantY) {
				t.Fatalf("%s: Decode differs from the reference (err %v)", name, err)
			}
			for _, p := range splits {
				out := make([]byte, len(want))
				if err := s.encode(out, x, false, p); err != nil || !bytes.Equal(out, want) {
					t.Fatalf("%s: encode with %d chunks differs (err %v)", name, p, err)
				}
				clear(y)
				if err := s.decode(y, want, p); err != nil || !sameFloats(y, wantY) {
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
			name := fmt.Sprintf("%+v bad %v", s, bad)
			_, want := refEncode(s, y)
			if !errors.Is(want, ErrNonFinite) || want.Error() != fmt.Sprintf("%v at index %d", ErrNonFinite, lowest) {
				t.Fatalf("%s: reference says %v", name, want)
			}
			dst, err := s.Append([]byte("x"), y)
			if err == nil || err.Error() != want.Error() || !errors.Is(err, ErrNonFinite) || string(dst) != "x" {
				t.Fatalf("%s: Append: %v, want %v", name, err, want)
			}
			for _, q := range splits {
				out := make([]byte, s.Len(n))
				if err := s.encode(out, y, false, q); err == nil || err.Error() != want.Error() {
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
		enc, err := refEncode(s, x)
		if err != nil {
			t.Fatal(err)
		}
		for _, at := range [][]int{{7}, {n - 1}, {n / 3, n/2 + 5}, {n - 5, n / 4}} {
			bad := append([]byte(nil), enc...)
			for _, i := range at {
				switch s.Kind {
				case FP32:
					binary.LittleEndian.PutUint32(bad[4*i:], 0x7fc00000) // NaN
				case BF16:
					binary.LittleEndian.PutUint16(bad[2*i:], 0xff80) // -Inf
				case Int8:
					blk := i / s.Block
					so, _, _, _ := s.int8At(n, blk)
					binary.LittleEndian.PutUint32(bad[so:], 0x7f800000) // Inf scale
				}
			}
			name := fmt.Sprintf("%+v bad %v", s, at)
			want := refDecode(make([]float32, n), s, bad)
			if !errors.Is(want, ErrNonFinite) {
				t.Fatalf("%s: reference accepted: %v", name, want)
			}
			if err := s.Decode(make([]float32, n), bad); err == nil || err.Error() != want.Error() || !errors.Is(err, ErrNonFinite) {
				t.Fatalf("%s: Decode: %v, want %v", name, err, want)
			}
			for _, q := range splits {
				if err := s.decode(make([]float32, n), bad, q); err == nil || err.Error() != want.Error() {
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
			want, _ := refEncode(s, x)
			out := make([]byte, len(want))
			if err := s.encode(out, x, false, 16); err != nil || !bytes.Equal(out, want) {
				t.Fatalf("%+v n=%d: %v", s, n, err)
			}
		}
	}
}

// BenchmarkLarge is one activation tensor of the size the profiles show on the
// critical path (B 8, T 1024, d 768 = 6.3M float32) encoded and decoded per
// iteration: ref is the one-value loop, serial the word-at-a-time loops on one
// goroutine, parallel what Append and Decode do (up to GOMAXPROCS chunks). MB/s counts
// fp32 input bytes, as the codec table does. The settings are the table's without
// zstd, and int8/64 in averaging's planar layout.
func BenchmarkLarge(b *testing.B) {
	const n = 8 * 1024 * 768
	x := activations(n, 768, 13)
	y := make([]float32, n)
	planar := Setting{Format: Format{Kind: Int8, Block: 64, Layout: Planar}}
	for _, st := range append(Table()[:4], planar) {
		s, name := st.Format, st.Name()
		if s.Layout == Planar {
			name += "/planar"
		}
		out := make([]byte, s.Len(n))
		// Fault the buffers in first so that the first variant does not pay for it.
		if err := refEncodeInto(out, s, x); err != nil {
			b.Fatal(err)
		}
		if err := refDecode(y, s, out); err != nil {
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
			run(b, func() error { return refEncodeInto(out, s, x) },
				func() error { return refDecode(y, s, out) })
		})
		b.Run(name+"/serial", func(b *testing.B) {
			run(b, func() error { return s.encode(out, x, false, 1) },
				func() error { return s.decode(y, out, 1) })
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			run(b, func() (err error) { out, err = s.Append(out[:0], x); return err },
				func() error { return s.Decode(y, out) })
		})
	}
}
