package codec

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// activations mimics residual-stream activations: roughly Gaussian per channel with
// channel scales spread over two orders of magnitude and a few outlier channels.
func activations(n, d int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 7))
	scale := make([]float32, d)
	for j := range scale {
		scale[j] = float32(math.Exp(rng.NormFloat64()))
		if rng.IntN(32) == 0 {
			scale[j] *= 20
		}
	}
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64()) * scale[i%d]
	}
	return x
}

func TestRoundTripError(t *testing.T) {
	x := activations(64*200+13, 64, 1)
	for _, tc := range []struct {
		k      Kind
		block  int
		layout Layout
		rel    float64 // max error relative to the block's absmax
	}{
		{FP32, 0, 0, 0},
		{BF16, 0, 0, 1.0 / 256},
		{Int8, 64, Interleaved, 0.5/127 + 1e-6},
		{Int8, 1, Interleaved, 1e-6},
		{Int8, 4096, Interleaved, 0.5/127 + 1e-6},
		{Int8, 64, Planar, 0.5/127 + 1e-6},
		{Int8, 7, Planar, 0.5/127 + 1e-6},
	} {
		f := Format{Kind: tc.k, Block: tc.block, Layout: tc.layout}
		enc, err := f.Append(nil, x)
		if err != nil {
			t.Fatalf("%v: %v", tc.k, err)
		}
		if len(enc) != f.Len(len(x)) {
			t.Fatalf("%v: len %d, want %d", tc.k, len(enc), f.Len(len(x)))
		}
		y := make([]float32, len(x))
		if err := f.Decode(y, enc); err != nil {
			t.Fatalf("%v: %v", tc.k, err)
		}
		block := tc.block
		if block == 0 {
			block = 1
		}
		for i := range x {
			ref := math.Abs(float64(x[i]))
			if tc.k == Int8 {
				start := i / block * block
				ref = 0
				for _, v := range x[start:min(start+block, len(x))] {
					ref = max(ref, math.Abs(float64(v)))
				}
			}
			if d := math.Abs(float64(x[i] - y[i])); d > tc.rel*ref {
				t.Fatalf("%v block %d: value %d: %g -> %g (error %g > %g)", tc.k, tc.block, i, x[i], y[i], d, tc.rel*ref)
			}
		}
	}
}

func TestBF16Saturates(t *testing.T) {
	enc, err := Format{Kind: BF16}.Append(nil, []float32{math.MaxFloat32, -math.MaxFloat32})
	if err != nil {
		t.Fatal(err)
	}
	y := make([]float32, 2)
	if err := (Format{Kind: BF16}).Decode(y, enc); err != nil {
		t.Fatalf("max float must stay finite in bf16: %v", err)
	}
	if y[0] <= 0 || y[1] >= 0 {
		t.Fatalf("signs lost: %v", y)
	}
}

func TestInt8ZeroBlock(t *testing.T) {
	x := make([]float32, 100)
	x[99] = 3
	for _, l := range []Layout{Interleaved, Planar} {
		f := Format{Kind: Int8, Block: 64, Layout: l}
		enc, err := f.Append(nil, x)
		if err != nil {
			t.Fatal(err)
		}
		y := make([]float32, 100)
		if err := f.Decode(y, enc); err != nil {
			t.Fatal(err)
		}
		for i, v := range y[:99] {
			if v != 0 {
				t.Fatalf("layout %d: y[%d] = %g, want 0", l, i, v)
			}
		}
		if y[99] != 3 {
			t.Fatalf("layout %d: y[99] = %g, want 3", l, y[99])
		}
	}
}

func TestEncodeRejectsNonFinite(t *testing.T) {
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		for _, k := range []Kind{FP32, BF16, Int8} {
			x := []float32{1, 2, bad, 4}
			if _, err := (Format{Kind: k, Block: 2}).Append(nil, x); !errors.Is(err, ErrNonFinite) {
				t.Errorf("%v %g: err %v, want ErrNonFinite", k, bad, err)
			}
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	i8 := Format{Kind: Int8, Block: 4}
	good, _ := i8.Append(nil, []float32{1, -2, 3, 4, 5})
	y := make([]float32, 5)
	// Each decoder in both directions: Decode and DecodeSub check alike.
	rejects := func(f Format, y []float32, src []byte, want error, what string) {
		t.Helper()
		if err := f.Decode(y, src); !errors.Is(err, want) {
			t.Errorf("%s: %v", what, err)
		}
		if err := f.DecodeSub(y, src); !errors.Is(err, want) {
			t.Errorf("%s (DecodeSub): %v", what, err)
		}
	}
	rejects(i8, y, good[:len(good)-1], ErrLength, "truncated int8")
	rejects(i8, y[:4], good, ErrLength, "wrong count")
	rejects(Format{Kind: Int8}, y, good, ErrBlock, "block 0")
	rejects(Format{Kind: Int32, Block: 4}, y, good, ErrKind, "int32 as float")
	nanScale := append([]byte(nil), good...)
	copy(nanScale, []byte{0, 0, 0xc0, 0x7f})
	rejects(i8, y, nanScale, ErrNonFinite, "NaN scale")
	negScale := append([]byte(nil), good...)
	negScale[3] |= 0x80
	rejects(i8, y, negScale, ErrNonFinite, "negative scale")
	hugeScale := append([]byte(nil), good...)
	copy(hugeScale, []byte{0xff, 0xff, 0x7f, 0x7f}) // MaxFloat32
	hugeScale[4] = 0x80                             // -128 * MaxFloat32 = -Inf
	rejects(i8, y, hugeScale, ErrNonFinite, "overflowing scale")
	inf := []byte{0, 0, 0x80, 0x7f}
	rejects(Format{Kind: FP32}, y[:1], inf, ErrNonFinite, "fp32 Inf")
	rejects(Format{Kind: BF16}, y[:1], inf[2:], ErrNonFinite, "bf16 Inf")
	ints := EncodeInts(nil, []int32{1, 255, 256})
	if err := DecodeInts(make([]int32, 3), ints, 256); !errors.Is(err, ErrRange) {
		t.Errorf("token 256: %v", err)
	}
	if err := DecodeInts(make([]int32, 3), EncodeInts(nil, []int32{-1, 0, 0}), 256); !errors.Is(err, ErrRange) {
		t.Errorf("token -1: %v", err)
	}
	if err := DecodeInts(make([]int32, 2), ints, 256); !errors.Is(err, ErrLength) {
		t.Errorf("int length: %v", err)
	}
}

func TestZstd(t *testing.T) {
	x := activations(64*256, 64, 2)
	raw, _ := Format{Kind: BF16}.Append(nil, x)
	z, err := Zstd(nil, raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(z) >= len(raw) {
		t.Fatalf("zstd did not compress bf16 activations: %d -> %d", len(raw), len(z))
	}
	back, err := Unzstd(nil, z, len(raw))
	if err != nil {
		t.Fatal(err)
	}
	if string(back) != string(raw) {
		t.Fatal("zstd round trip differs")
	}
	if _, err := Unzstd(nil, z, len(raw)-1); !errors.Is(err, ErrZstd) {
		t.Errorf("wrong size: %v", err)
	}
	if _, err := Unzstd(nil, z[:len(z)/2], len(raw)); !errors.Is(err, ErrZstd) {
		t.Errorf("truncated: %v", err)
	}
	if _, err := Unzstd(nil, []byte("not zstd at all"), 10); !errors.Is(err, ErrZstd) {
		t.Errorf("garbage: %v", err)
	}
	// A bomb: 16 MiB of zeros compresses to a few hundred bytes; the decoder must
	// stop at the announced size instead of inflating it.
	bomb, _ := Zstd(nil, make([]byte, 16<<20))
	if _, err := Unzstd(nil, bomb, 1024); !errors.Is(err, ErrZstd) {
		t.Errorf("bomb: %v", err)
	}
}

func TestLinkDecides(t *testing.T) {
	if !NewLink(ZstdOn).UseZstd() || NewLink(ZstdOff).UseZstd() {
		t.Fatal("on/off modes ignored")
	}
	// Fast link (loopback, 5 GB/s) vs zstd at 500 MB/s saving 20%: never worth it,
	// apart from the periodic probe.
	fast := NewLink(ZstdAuto)
	if !fast.UseZstd() {
		t.Fatal("auto must measure zstd before it knows better")
	}
	fast.ObserveZstd(1<<20, 800<<10, 2*time.Millisecond)
	fast.ObserveSend(1<<20, 200*time.Microsecond)
	used := 0
	for range 10 * probeEvery {
		if fast.UseZstd() {
			used++
		}
	}
	if used != 10 {
		t.Fatalf("fast link used zstd %d times in %d frames, want only the %d probes", used, 10*probeEvery, 10)
	}
	// Slow link (10 MB/s): compressing is always worth it.
	slow := NewLink(ZstdAuto)
	slow.ObserveZstd(1<<20, 800<<10, 2*time.Millisecond)
	slow.ObserveSend(1<<20, 100*time.Millisecond)
	for i := range 100 {
		if !slow.UseZstd() {
			t.Fatalf("slow link skipped zstd at frame %d", i)
		}
	}
}

func TestParse(t *testing.T) {
	for _, s := range []string{"fp32", "bf16", "int8"} {
		k, err := Parse(s)
		if err != nil || k.String() != s {
			t.Errorf("Parse(%q) = %v, %v", s, k, err)
		}
	}
	if _, err := Parse("int4"); !errors.Is(err, ErrKind) {
		t.Errorf("int4: %v", err)
	}
	for _, s := range []string{"on", "off", "auto"} {
		m, err := ParseZstd(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseZstd(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseZstd("yes"); err == nil {
		t.Error("zstd mode yes accepted")
	}
}

// FuzzDecode feeds arbitrary bytes to every decoder: no panic, and a nil error only
// with finite values.
func FuzzDecode(f *testing.F) {
	x := activations(300, 16, 3)
	for _, k := range []Kind{FP32, BF16, Int8} {
		enc, _ := Format{Kind: k, Block: 16}.Append(nil, x)
		f.Add(uint8(k), uint16(16), uint16(300), enc)
	}
	planar, _ := Format{Kind: Int8, Block: 16, Layout: Planar}.Append(nil, x)
	f.Add(uint8(Int8)|0x80, uint16(16), uint16(300), planar)
	f.Add(uint8(Int8), uint16(7), uint16(10), []byte{0, 0, 0x80, 0x7f, 1, 2, 3})
	f.Add(uint8(Int32), uint16(1), uint16(2), EncodeInts(nil, []int32{3, 9}))
	f.Add(uint8(Uint8), uint16(1), uint16(2), []byte{3, 9})
	f.Add(uint8(Uint16), uint16(1), uint16(2), []byte{3, 0, 9, 1})
	f.Fuzz(func(t *testing.T, kind uint8, block, n uint16, src []byte) {
		k := Kind(kind &^ 0x80)
		if k.Integer() {
			dst := make([]int32, n)
			if err := DecodeIntsAs(dst, src, k, 256); err == nil {
				for _, v := range dst {
					if v < 0 || v >= 256 {
						t.Fatalf("accepted %d", v)
					}
				}
			}
			return
		}
		fm := Format{Kind: k, Block: int(block), Layout: Layout(kind >> 7)}
		dst := make([]float32, n)
		if err := fm.Decode(dst, src); err != nil {
			if fm.DecodeSub(dst, src) == nil {
				t.Fatalf("DecodeSub accepted what Decode rejects: %v", err)
			}
			return
		}
		if err := CheckFinite(dst); err != nil {
			t.Fatalf("accepted %v", err)
		}
		if err := fm.DecodeSub(dst, src); err != nil {
			t.Fatalf("DecodeSub rejected what Decode accepts: %v", err)
		}
	})
}

// FuzzUnzstd: arbitrary bytes never panic and never decode to another size.
func FuzzUnzstd(f *testing.F) {
	raw, _ := Format{Kind: BF16}.Append(nil, activations(512, 16, 4))
	z, _ := Zstd(nil, raw)
	f.Add(z, uint16(len(raw)))
	f.Add(z[:len(z)/2], uint16(len(raw)))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0}, uint16(10))
	f.Fuzz(func(t *testing.T, src []byte, want uint16) {
		out, err := Unzstd(nil, src, int(want))
		if err == nil && len(out) != int(want) {
			t.Fatalf("decoded %d bytes, want %d", len(out), want)
		}
	})
}

// TestCompactInts: ids travel in the smallest integer codec that holds them,
// back exactly, and a reader still refuses values out of range or a payload of
// the wrong length.
func TestCompactInts(t *testing.T) {
	for _, c := range []struct {
		ids  []int32
		kind Kind
		size int
	}{
		{[]int32{0, 7, 255}, Uint8, 3},
		{[]int32{0, 256, 50256}, Uint16, 6},
		{[]int32{1, 70000}, Int32, 8},
		{[]int32{3, -1}, Int32, 8},
	} {
		k := IntKind(c.ids)
		enc := EncodeIntsAs(nil, c.ids, k)
		if k != c.kind || len(enc) != c.size {
			t.Fatalf("%v: codec %v, %d bytes; want %v, %d", c.ids, k, len(enc), c.kind, c.size)
		}
		got := make([]int32, len(c.ids))
		err := DecodeIntsAs(got, enc, k, 1<<20)
		if c.ids[len(c.ids)-1] < 0 {
			if !errors.Is(err, ErrRange) {
				t.Fatalf("%v: a negative id decoded: %v", c.ids, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.ids) {
			t.Fatalf("%v: decoded %v, %v", c.ids, got, err)
		}
		if err := DecodeIntsAs(got, enc, k, int(c.ids[len(c.ids)-1])); !errors.Is(err, ErrRange) {
			t.Fatalf("%v: the largest id decoded under a limit it reaches: %v", c.ids, err)
		}
		if err := DecodeIntsAs(got[:1], enc, k, 1<<20); !errors.Is(err, ErrLength) {
			t.Fatalf("%v: a payload of the wrong length decoded: %v", c.ids, err)
		}
	}
	if err := DecodeIntsAs(make([]int32, 1), []byte{1, 0, 0, 0}, FP32, 10); !errors.Is(err, ErrKind) {
		t.Fatalf("ints decoded as fp32: %v", err)
	}
}
