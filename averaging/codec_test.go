package averaging

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
)

func TestCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	vals := randVec(rng, 1000, 3)
	vals[7], vals[8] = 0, -0
	for _, c := range []Codec{FP32, BF16, Int8} {
		enc := c.encode(nil, vals)
		if len(enc) != c.encodedLen(len(vals)) {
			t.Fatalf("%s: %d bytes, want %d", c, len(enc), c.encodedLen(len(vals)))
		}
		out := make([]float32, len(vals))
		if err := c.decode(enc, out); err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			var tol float64
			switch c {
			case BF16:
				tol = math.Abs(float64(v)) / 256
			case Int8:
				blk := vals[i/Int8Block*Int8Block : min(len(vals), (i/Int8Block+1)*Int8Block)]
				amax := 0.0
				for _, x := range blk {
					amax = math.Max(amax, math.Abs(float64(x)))
				}
				tol = amax / 127 / 2 * 1.0001
			}
			if d := math.Abs(float64(out[i] - v)); d > tol {
				t.Fatalf("%s value %d: %v → %v (error %g > %g)", c, i, v, out[i], d, tol)
			}
		}
		// A lossy roundTrip is what a peer decodes.
		rt := append([]float32(nil), vals...)
		c.roundTrip(rt)
		for i := range rt {
			if rt[i] != out[i] {
				t.Fatalf("%s roundTrip value %d: %v, decode gives %v", c, i, rt[i], out[i])
			}
		}
	}
	if toBF16(1.00390625) != 0x3f80 || toBF16(1.01171875) != 0x3f82 { // ties go to even
		t.Errorf("bf16 rounding: %#x %#x", toBF16(1.00390625), toBF16(1.01171875))
	}
}

func TestDecodeRejectsPoison(t *testing.T) {
	out := make([]float32, 2)
	nan := binary.LittleEndian.AppendUint32(nil, math.Float32bits(float32(math.NaN())))
	if err := FP32.decode(append(nan, 0, 0, 0, 0), out); err == nil {
		t.Error("fp32 NaN accepted")
	}
	if err := BF16.decode([]byte{0x80, 0x7f, 0, 0}, out); err == nil { // +Inf
		t.Error("bf16 Inf accepted")
	}
	neg := binary.LittleEndian.AppendUint32(nil, math.Float32bits(-1))
	if err := Int8.decode(append(neg, 1, 2), out); err == nil {
		t.Error("int8 negative scale accepted")
	}
	if err := FP32.decode([]byte{1, 2, 3}, out); err == nil {
		t.Error("short payload accepted")
	}
	if _, err := ParseCodec("fp8"); err == nil {
		t.Error("unknown codec name accepted")
	}
}

func TestMeanZeroWeights(t *testing.T) {
	out := make([]float32, 1)
	if err := Mean([][]float32{{1}, {3}}, []float64{0, 0}, out); err != nil || out[0] != 2 {
		t.Fatalf("zero weights: %v %v", out, err)
	}
	if err := Mean([][]float32{{1}, {3}}, []float64{3, 1}, out); err != nil || out[0] != 1.5 {
		t.Fatalf("weighted: %v %v", out, err)
	}
	if err := Mean(nil, nil, out); err == nil {
		t.Fatal("no parts accepted")
	}
}

func chunkFrame(c Codec, shard, index int, vals []float32) []byte {
	var b bytes.Buffer
	_ = writeFrame(&b, frameChunk, appendChunk(nil, c, shard, index, vals))
	return b.Bytes()
}

// FuzzReadChunk feeds arbitrary bytes to the reduce stream's chunk reader: it must
// return an error or finite values, never panic or over-allocate.
func FuzzReadChunk(f *testing.F) {
	f.Add(chunkFrame(FP32, 1, 2, []float32{1, 2, 3}), uint8(1), uint16(3))
	f.Add(chunkFrame(BF16, 1, 2, []float32{1, -2, 3.5}), uint8(2), uint16(3))
	f.Add(chunkFrame(Int8, 1, 2, make([]float32, 70)), uint8(3), uint16(70))
	f.Add([]byte{255, 255, 255, 255, 4}, uint8(1), uint16(1))
	f.Add([]byte{3, 0, 0, 0, 5, 'n', 'o'}, uint8(1), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, codec uint8, n uint16) {
		c := Codec(codec%3 + 1)
		out := make([]float32, int(n)%5000+1)
		if _, err := readChunk(bytes.NewReader(data), nil, c, 1, 2, out); err == nil {
			if err := checkFinite(out); err != nil {
				t.Fatalf("accepted a non-finite chunk: %v", err)
			}
		}
		if p, err := parseChunk(data); err == nil {
			if p.codec.encodedLen(p.count) != len(p.data) {
				t.Fatal("parseChunk accepted a chunk of the wrong size")
			}
		}
	})
}

// FuzzControl feeds arbitrary bytes to the JSON control decoders and the
// manifest check.
func FuzzControl(f *testing.F) {
	j, _ := json.Marshal(joinMsg{Round: 3, Len: 10, Codec: "fp32", Chunk: 4})
	g, _ := json.Marshal(groupMsg{Round: 3, ID: "ab", Members: []string{"12D3KooWAaaQXzt3Q7FpBbostwF9GQiAd49XAEsCueDPDiUQWBpb"}})
	h, _ := json.Marshal(partHeader{Group: "ab", Round: 3, From: 1, Shard: 2, Weight: 1.5, Len: 10})
	m, _ := json.Marshal(manifest{Snap: "x", Lens: [3]int{3, 3, 3}, ShardFloats: 2, Sums: []string{"00"}, Root: "11"})
	for _, s := range [][]byte{j, g, h, m, []byte("{"), []byte(`{"lens":[-1,0,0],"shard_floats":0}`)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var jm joinMsg
		_ = decodeJSON(frameJoin, data, frameJoin, &jm)
		var gm groupMsg
		_ = decodeJSON(frameGroup, data, frameGroup, &gm)
		var ph partHeader
		_ = decodeJSON(frameHeader, data, frameHeader, &ph)
		var mm manifest
		if decodeJSON(frameManifest, data, frameManifest, &mm) == nil {
			if specs, sums, err := mm.check(1 << 20); err == nil && len(specs) != len(sums) {
				t.Fatal("manifest check passed with mismatched sums")
			}
		}
	})
}

// FuzzReadShard feeds arbitrary bytes to the state-transfer shard reader.
func FuzzReadShard(f *testing.F) {
	var b bytes.Buffer
	piece := binary.LittleEndian.AppendUint32(nil, math.Float32bits(1.5))
	_ = writeFrame(&b, frameShard, piece)
	f.Add(b.Bytes())
	f.Add([]byte{2, 0, 0, 0, frameShard, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := make([]float32, 4)
		_ = readShard(bytes.NewReader(data), dst, [32]byte{})
	})
}

// TestEncodeRound checks that encoding with rounding leaves the values a peer
// decodes, for every length around the word and block sizes, and that it flags
// results that do not survive the codec.
func TestEncodeRound(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	for _, c := range []Codec{FP32, BF16, Int8} {
		for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 130, 1000} {
			vals := randVec(rng, n, 3)
			want := make([]float32, n)
			if err := c.decode(c.encode(nil, vals), want); err != nil {
				t.Fatal(err)
			}
			got := append([]float32(nil), vals...)
			enc, ok := c.encodeRound([]byte{9}, got, true)
			if !ok || enc[0] != 9 || !bytes.Equal(enc[1:], c.encode(nil, vals)) {
				t.Fatalf("%s n=%d: ok %v, encoding differs", c, n, ok)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s n=%d value %d: %v, decode gives %v", c, n, i, got[i], want[i])
				}
			}
		}
	}
	big := []float32{1, math.MaxFloat32, 2} // beyond bf16's range: rounds to Inf
	if _, ok := BF16.encodeRound(nil, big, true); ok {
		t.Error("bf16 overflow not flagged")
	}
	tiny := []float32{1e-44, -3e-45, 0} // subnormal scale: still finite bytes
	enc := Int8.encode(nil, tiny)
	out := make([]float32, len(tiny))
	if err := Int8.decode(enc, out); err != nil {
		t.Fatal(err)
	}
}

// TestDecodeSub checks the fused decode and delta against decode followed by the
// subtraction, and that it rejects what decode rejects.
func TestDecodeSub(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for _, c := range []Codec{BF16, Int8} {
		for _, n := range []int{1, 3, 4, 5, 8, 63, 64, 65, 130, 1000} {
			enc := c.encode(nil, randVec(rng, n, 3))
			sent := randVec(rng, n, 3)
			want := make([]float32, n)
			if err := c.decode(enc, want); err != nil {
				t.Fatal(err)
			}
			for i := range want {
				want[i] -= sent[i]
			}
			got := append([]float32(nil), sent...)
			if err := c.decodeSub(enc, got); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s n=%d value %d: %v, want %v", c, n, i, got[i], want[i])
				}
			}
			bad := append([]byte(nil), enc...)
			if c == BF16 {
				bad[2*(n-1)], bad[2*(n-1)+1] = 0x80, 0x7f // +Inf
			} else {
				binary.LittleEndian.PutUint32(bad, math.Float32bits(float32(math.NaN())))
			}
			if err := c.decodeSub(bad, got); err == nil {
				t.Fatalf("%s n=%d: poison accepted", c, n)
			}
			if err := c.decodeSub(enc[:len(enc)-1], got); err == nil {
				t.Fatalf("%s n=%d: short payload accepted", c, n)
			}
		}
	}
	big := make([]byte, Int8.encodedLen(2))
	binary.LittleEndian.PutUint32(big, math.Float32bits(math.MaxFloat32/100))
	big[4], big[5] = 127, 0x80 // 127 and −128 times a huge scale overflow
	if err := Int8.decodeSub(big, make([]float32, 2)); err == nil {
		t.Error("int8 overflow accepted")
	}
}

func TestSubFinite(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 17} {
		for bad := -1; bad < n; bad++ {
			avg, d := make([]float32, n), make([]float32, n)
			for i := range avg {
				avg[i], d[i] = float32(i)+0.5, float32(2*i)
			}
			if bad >= 0 {
				avg[bad] = float32(math.Inf(-1))
			}
			if ok := subFinite(d, avg); ok != (bad < 0) {
				t.Fatalf("n=%d bad=%d: finite %v", n, bad, ok)
			}
			for i := range d {
				if i != bad && d[i] != 0.5-float32(i) {
					t.Fatalf("n=%d: delta %d is %v", n, i, d[i])
				}
			}
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
				if err := checkFinite(v); err != nil {
					t.Fatalf("finite values rejected: %v", err)
				}
				v[bad] = x
				if err := checkFinite(v); err == nil {
					t.Fatalf("n=%d: %v at %d accepted", n, x, bad)
				}
			}
		}
	}
}

func TestMeanAnyGroupSize(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for g := 1; g <= 7; g++ {
		parts := make([][]float32, g)
		w := make([]float64, g)
		for i := range parts {
			parts[i] = randVec(rng, 33, 2)
			w[i] = float64(i + 1)
		}
		out := make([]float32, 33)
		if err := Mean(parts, w, out); err != nil {
			t.Fatal(err)
		}
		want := weightedMean(parts, w)
		for k := range out {
			if math.Abs(float64(out[k])-want[k]) > 1e-6 {
				t.Fatalf("g=%d value %d: %v, want %v", g, k, out[k], want[k])
			}
		}
	}
}

// BenchmarkCodec measures encode+decode throughput per codec, in MB of fp32
// values per second, next to a plain copy of the same bytes.
func BenchmarkCodec(b *testing.B) {
	vals := randVec(rand.New(rand.NewPCG(1, 1)), 1<<17, 1)
	out := make([]float32, len(vals))
	for _, c := range []Codec{FP32, BF16, Int8} {
		b.Run(c.String(), func(b *testing.B) {
			var buf []byte
			b.SetBytes(int64(4 * len(vals)))
			for b.Loop() {
				buf = c.encode(buf[:0], vals)
				if err := c.decode(buf, out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
