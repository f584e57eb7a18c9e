package averaging

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/codec"
	"swarmnode/wire"
)

// chunkFrame is the chunk frame (shard, index) of vals in codec k as a sender
// writes it.
func chunkFrame(tb testing.TB, k codec.Kind, shard, index int, vals []float32) []byte {
	b := &chunkBuf{back: make([]float32, headFloats+len(vals))}
	copy(b.vals(len(vals)), vals)
	f, err := b.frame(k, shard, index, len(vals), false)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// TestChunkRoundTrip: a chunk frame reads back as the values its codec keeps,
// and a chunk of another place in the shard is refused.
func TestChunkRoundTrip(t *testing.T) {
	vals := randVec(rand.New(rand.NewPCG(5, 5)), 1000, 3)
	for _, k := range []codec.Kind{codec.FP32, codec.BF16, codec.Int8} {
		f := chunkFrame(t, k, 1, 2, vals)
		want := make([]float32, len(vals))
		if err := wireFormat(k).Decode(want, f[chunkHeads:]); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, len(vals))
		if _, err := readChunk(bytes.NewReader(f), nil, k, 1, 2, got); err != nil {
			t.Fatalf("%v: %v", k, err)
		}
		for i := range got {
			if got[i] != want[i] || math.Abs(float64(got[i]-vals[i])) > 0.05 {
				t.Fatalf("%v value %d: %v, sent %v, codec keeps %v", k, i, got[i], vals[i], want[i])
			}
		}
		if _, err := readChunk(bytes.NewReader(f), nil, k, 1, 3, got); err == nil {
			t.Fatalf("%v: chunk 2 accepted as chunk 3", k)
		}
	}
}

// FuzzReadChunk feeds arbitrary bytes to the reduce stream's chunk reader: it must
// return an error or finite values, never panic or over-allocate.
func FuzzReadChunk(f *testing.F) {
	f.Add(chunkFrame(f, codec.FP32, 1, 2, []float32{1, 2, 3}), uint8(1), uint16(3))
	f.Add(chunkFrame(f, codec.BF16, 1, 2, []float32{1, -2, 3.5}), uint8(2), uint16(3))
	f.Add(chunkFrame(f, codec.Int8, 1, 2, make([]float32, 70)), uint8(3), uint16(70))
	f.Add([]byte{255, 255, 255, 255, 4}, uint8(1), uint16(1))
	f.Add([]byte{3, 0, 0, 0, 5, 'n', 'o'}, uint8(1), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, kind uint8, n uint16) {
		k := codec.Kind(kind%3 + 1)
		out := make([]float32, int(n)%5000+1)
		if _, err := readChunk(bytes.NewReader(data), nil, k, 1, 2, out); err == nil {
			if err := codec.CheckFinite(out); err != nil {
				t.Fatalf("accepted a non-finite chunk: %v", err)
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
	ar, _ := json.Marshal(auditReply{Members: []int{2, 0, 3}, Weights: []float64{1, 1, 0.5}})
	for _, s := range [][]byte{j, g, h, m, ar, []byte("{"), []byte(`{"lens":[-1,0,0],"shard_floats":0}`), []byte(`{"members":[2,-1],"weights":[1]}`)} {
		f.Add(s)
	}
	rr := &reduceRound{members: make([]peer.ID, 4), index: 0, n: 100}
	f.Fuzz(func(t *testing.T, data []byte) {
		var aq auditReq
		_ = decodeJSON(frameAuditReq, data, frameAuditReq, &aq)
		var ap auditReply
		if decodeJSON(frameAuditReply, data, frameAuditReply, &ap) == nil {
			if mine, err := checkMembers(ap, rr, 2); err == nil && (ap.Members[mine] != 0 || ap.Members[0] != 2) {
				t.Fatalf("checkMembers passed %+v", ap)
			}
		}
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
	_ = wire.WriteTyped(&b, frameShard, piece)
	f.Add(b.Bytes())
	f.Add([]byte{2, 0, 0, 0, frameShard, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		dst := make([]float32, 4)
		_ = readShard(bytes.NewReader(data), dst, [32]byte{})
	})
}
