package cuda

import (
	"encoding/binary"
	"math"
	"testing"

	"swarmnode/pipeline/codec"
)

// TestInt8WireMatchesCodec checks the device's int8 wire messages against the
// pipeline's own codec: what the GPU quantizes decodes with codec.Decode to
// within half a step of the input, with the codec's scales; and what the codec
// encodes, the GPU dequantizes to exactly codec.Decode's values.
func TestInt8WireMatchesCodec(t *testing.T) {
	device(t)
	r := newRand(t)
	for _, bs := range []int{64, 7} {
		const n = 5000 + 13
		x := randn(r, n, 3)
		for i := 64; i < 128; i++ {
			x[i] = 0
		}
		ref, err := codec.Encode(nil, codec.Int8, bs, x)
		if err != nil {
			t.Fatal(err)
		}
		var msg []byte
		var back []float32
		run(t, func(g *gpu) {
			X, W := g.up(x), g.alloc(U8, WireLen(n, bs))
			g.check(g.c.QuantizeInt8Wire(W, X, bs))
			msg = make([]byte, WireLen(n, bs))
			if g.err == nil {
				g.check(g.c.DownloadBytes(msg, W))
			}
			R := g.alloc(U8, len(ref))
			if g.err == nil {
				g.check(g.c.UploadBytes(R, ref))
			}
			Y := g.alloc(F32, n)
			g.check(g.c.DequantizeInt8Wire(Y, R, bs))
			back = g.down(Y)
		})
		if len(msg) != len(ref) {
			t.Fatalf("bs %d: %d bytes, codec makes %d", bs, len(msg), len(ref))
		}
		got := make([]float32, n)
		if err := codec.Decode(got, codec.Int8, bs, msg); err != nil {
			t.Fatalf("bs %d: codec rejects the GPU's message: %v", bs, err)
		}
		want := make([]float32, n)
		if err := codec.Decode(want, codec.Int8, bs, ref); err != nil {
			t.Fatal(err)
		}
		for b, off := 0, 0; b*bs < n; b++ {
			if gs, ws := binary.LittleEndian.Uint32(msg[off:]), binary.LittleEndian.Uint32(ref[off:]); gs != ws {
				t.Fatalf("bs %d block %d: scale %x, codec %x", bs, b, gs, ws)
			}
			scale := float64(math.Float32frombits(binary.LittleEndian.Uint32(ref[off:])))
			for i := b * bs; i < min(n, (b+1)*bs); i++ {
				if d := math.Abs(float64(got[i]) - float64(x[i])); d > scale/2*1.001+1e-7 {
					t.Fatalf("bs %d: value %d off by %v (scale %v)", bs, i, d, scale)
				}
			}
			off += 4 + min(bs, n-b*bs)
		}
		for i := range want {
			if back[i] != want[i] {
				t.Fatalf("bs %d: dequantized %d = %v, codec %v", bs, i, back[i], want[i])
			}
		}
	}
}

// TestCheckInt8Wire runs without a GPU: messages the codec makes pass; a wrong
// length and NaN, negative or overflowing scales are refused.
func TestCheckInt8Wire(t *testing.T) {
	x := make([]float32, 100)
	for i := range x {
		x[i] = float32(i) - 50
	}
	msg, err := codec.Encode(nil, codec.Int8, 16, x)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckInt8Wire(msg, 100, 16); err != nil {
		t.Fatalf("valid message refused: %v", err)
	}
	if err := CheckInt8Wire(msg[:len(msg)-1], 100, 16); err == nil {
		t.Fatal("short message accepted")
	}
	if err := CheckInt8Wire(msg, 100, 0); err == nil {
		t.Fatal("block size 0 accepted")
	}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), -1, math.MaxFloat32 / 100} {
		m := append([]byte(nil), msg...)
		binary.LittleEndian.PutUint32(m[4+16+4+16:], math.Float32bits(bad)) // the third block's scale
		if err := CheckInt8Wire(m, 100, 16); err == nil {
			t.Fatalf("scale %v accepted", bad)
		}
	}
}

// FuzzCheckInt8Wire: whatever bytes arrive, a message CheckInt8Wire accepts
// decodes (with the pipeline's own decoder) to finite values only, so a GPU
// stage never dequantizes a NaN or Inf it was sent.
func FuzzCheckInt8Wire(f *testing.F) {
	x := []float32{1, -2, 3.5, 0, 1e30, -1e-30, 7, 8, 9}
	for _, bs := range []int{1, 4, 64} {
		msg, err := codec.Encode(nil, codec.Int8, bs, x)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(msg, len(x), bs)
	}
	f.Fuzz(func(t *testing.T, msg []byte, n, bs int) {
		if n < 0 || n > 1<<16 || bs < 1 || bs > codec.MaxBlock {
			return
		}
		if CheckInt8Wire(msg, n, bs) != nil {
			return
		}
		out := make([]float32, n)
		if err := codec.Decode(out, codec.Int8, bs, msg); err != nil {
			t.Fatalf("accepted here, refused by the codec: %v", err)
		}
		for i, v := range out {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("value %d decodes to %v", i, v)
			}
		}
	})
}
