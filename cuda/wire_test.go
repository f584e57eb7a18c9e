package cuda

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"testing"
)

// The pipeline's int8 wire layout, as the GPU writes and reads it: per block of
// bs values a little-endian float32 scale (absmax/127), then the values rounded
// half away from zero to int8. refEncodeWire and refDecodeWire are the host
// reference; TestRefWireMatchesGolden ties them to the messages the pipeline's
// codec makes (cuda/testdata/int8_wire.golden, checked by codec's tests),
// so this package needs no import of the pipeline to agree with it.

func refEncodeWire(x []float32, bs int) []byte {
	out := make([]byte, 0, WireLen(len(x), bs))
	for lo := 0; lo < len(x); lo += bs {
		blk := x[lo:min(lo+bs, len(x))]
		var am float32
		for _, v := range blk {
			am = max(am, float32(math.Abs(float64(v))))
		}
		scale := am / 127
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(scale))
		for _, v := range blk {
			q := 0.0
			if scale > 0 {
				q = math.Max(-127, math.Min(127, math.Round(float64(v*(1/scale)))))
			}
			out = append(out, byte(int8(q)))
		}
	}
	return out
}

func refDecodeWire(msg []byte, n, bs int) []float32 {
	x := make([]float32, n)
	for lo := 0; lo < n; lo += bs {
		scale := math.Float32frombits(binary.LittleEndian.Uint32(msg))
		hi := min(lo+bs, n)
		for i := lo; i < hi; i++ {
			x[i] = float32(int8(msg[4+i-lo])) * scale
		}
		msg = msg[4+hi-lo:]
	}
	return x
}

// goldenInput mirrors codec's golden_test.go.
func goldenInput() []float32 {
	x := make([]float32, 300)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.37)) * 3
	}
	for i := 64; i < 128; i++ {
		x[i] = 0
	}
	return x
}

// goldenWire holds the pipeline codec's messages for goldenInput, one line per
// block size; embedded, so that the test binary runs from any directory (on a
// GPU machine without Go, say).
//
//go:embed testdata/int8_wire.golden
var goldenWire string

// golden parses goldenWire: the messages by block size.
func golden(t testing.TB) map[int][]byte {
	out := map[int][]byte{}
	for _, line := range strings.Split(strings.TrimSpace(goldenWire), "\n") {
		f := strings.Fields(line)
		bs, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if out[bs], err = hex.DecodeString(f[1]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestRefWireMatchesGolden runs without a GPU: the host reference of the layout
// makes exactly the pipeline codec's messages.
func TestRefWireMatchesGolden(t *testing.T) {
	g := golden(t)
	if len(g) == 0 {
		t.Fatal("no golden messages")
	}
	for bs, want := range g {
		if got := refEncodeWire(goldenInput(), bs); !bytes.Equal(got, want) {
			t.Fatalf("block %d: the reference encoder differs from the pipeline codec", bs)
		}
		if err := CheckInt8Wire(want, len(goldenInput()), bs); err != nil {
			t.Fatalf("block %d: the codec's message is refused: %v", bs, err)
		}
	}
}

// TestInt8WireMatchesCodec checks the device's int8 wire messages against the
// pipeline codec's (through the golden messages and the host reference): the
// GPU writes the same scales and values to within one rounding step, and reads
// the codec's messages back exactly as the reference decodes them.
func TestInt8WireMatchesCodec(t *testing.T) {
	device(t)
	r := newRand(t)
	type tc struct {
		bs int
		x  []float32
	}
	var cases []tc
	for bs := range golden(t) {
		cases = append(cases, tc{bs, goldenInput()})
	}
	big := randn(r, 5000+13, 3)
	for i := 64; i < 128; i++ {
		big[i] = 0
	}
	cases = append(cases, tc{64, big})
	for _, c := range cases {
		bs, x := c.bs, c.x
		n := len(x)
		ref := refEncodeWire(x, bs)
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
			t.Fatalf("bs %d: %d bytes, the layout takes %d", bs, len(msg), len(ref))
		}
		for b, off := 0, 0; b*bs < n; b++ {
			if gs, ws := binary.LittleEndian.Uint32(msg[off:]), binary.LittleEndian.Uint32(ref[off:]); gs != ws {
				t.Fatalf("bs %d block %d: scale %x, reference %x", bs, b, gs, ws)
			}
			for i := 0; i < min(bs, n-b*bs); i++ {
				if d := int(int8(msg[off+4+i])) - int(int8(ref[off+4+i])); d < -1 || d > 1 {
					t.Fatalf("bs %d: value %d quantized to %d, reference %d", bs, b*bs+i, int8(msg[off+4+i]), int8(ref[off+4+i]))
				}
			}
			off += 4 + min(bs, n-b*bs)
		}
		want := refDecodeWire(ref, n, bs)
		for i := range want {
			if back[i] != want[i] {
				t.Fatalf("bs %d: dequantized %d = %v, reference %v", bs, i, back[i], want[i])
			}
		}
	}
}

// TestCheckInt8Wire runs without a GPU: messages of the layout pass; a wrong
// length and NaN, negative or overflowing scales are refused.
func TestCheckInt8Wire(t *testing.T) {
	x := make([]float32, 100)
	for i := range x {
		x[i] = float32(i) - 50
	}
	msg := refEncodeWire(x, 16)
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
// decodes to finite values only, so a GPU stage never dequantizes a NaN or Inf
// it was sent.
func FuzzCheckInt8Wire(f *testing.F) {
	for bs, msg := range golden(f) {
		f.Add(msg, len(goldenInput()), bs)
	}
	f.Fuzz(func(t *testing.T, msg []byte, n, bs int) {
		if n < 0 || n > 1<<16 || bs < 1 || bs > 1<<16 {
			return
		}
		if CheckInt8Wire(msg, n, bs) != nil {
			return
		}
		for i, v := range refDecodeWire(msg, n, bs) {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("value %d decodes to %v", i, v)
			}
		}
	})
}
