package averaging

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// State is what a holder hands a newcomer to its stage: parameters and optimizer
// state, in the stage's flat layout.
type State struct {
	// Step is the serving holder's optimizer step count.
	Step int64
	// Params are the stage's parameters.
	Params []float32
	// M and V are AdamW's moments, of len(Params) or empty.
	M, V []float32
	// Sum is the sha256 over the sha256 of every shard in order: for a state from
	// one holder it equals that holder's manifest root.
	Sum [32]byte
	// From counts the shards each holder served.
	From map[peer.ID]int
	// Disagreed lists the holders whose copy of some shard the majority of
	// holders did not vouch for (crosscheck.go): poisoned, or far out of step.
	Disagreed []peer.ID
}

func (s *State) segments() [3][]float32 { return [3][]float32{s.Params, s.M, s.V} }

// StateProtocol is the state-transfer protocol id of key in run.
func StateProtocol(run, key string) protocol.ID {
	return protocol.ID(ProtocolPrefix(run, key) + "/state/1.0.0")
}

// DefaultShardFloats is the state-transfer shard size: 4 MiB of fp32.
const DefaultShardFloats = 1 << 20

// stateReq is a fetcher's request: a manifest of a fresh snapshot, or one shard
// of a snapshot whose manifest it holds.
type stateReq struct {
	Op    string `json:"op"` // "manifest" or "shard"
	Snap  string `json:"snap,omitempty"`
	Index int    `json:"index,omitempty"`
	// MinStep asks for a snapshot at least this new (a manifest request): a
	// holder catching up can only replay steps from where its records start.
	MinStep int64 `json:"min_step,omitempty"`
}

// manifest describes one snapshot: the segment lengths (params, m, v), the shard
// size, the sha256 of each shard and the root over them.
type manifest struct {
	Snap        string   `json:"snap"`
	Step        int64    `json:"step"`
	Lens        [3]int   `json:"lens"`
	ShardFloats int      `json:"shard_floats"`
	Sums        []string `json:"sums"` // hex sha256 of each shard's little-endian bytes
	Root        string   `json:"root"` // hex sha256 of the concatenated raw shard sums
}

// shardSpec locates shard i: segment, offset, length. Shards never straddle two
// segments.
type shardSpec struct{ seg, off, n int }

// of returns the shard's values among the segments (params, m, v).
func (sp shardSpec) of(segs [3][]float32) []float32 { return segs[sp.seg][sp.off : sp.off+sp.n] }

// shardSpecs cuts segments of the given lengths into shards of per values.
func shardSpecs(lens [3]int, per int) []shardSpec {
	var out []shardSpec
	for s, l := range lens {
		for off := 0; off < l; off += per {
			out = append(out, shardSpec{s, off, min(per, l-off)})
		}
	}
	return out
}

// check validates a manifest from the network and returns its shards and sums.
func (m *manifest) check(maxFloats int) ([]shardSpec, [][32]byte, error) {
	if m.ShardFloats < 1 || m.ShardFloats > maxChunkFloats {
		return nil, nil, fmt.Errorf("manifest: shard of %d floats", m.ShardFloats)
	}
	total := 0
	for _, l := range m.Lens {
		if l < 0 || l > maxFloats {
			return nil, nil, fmt.Errorf("manifest: segment of %d floats (limit %d)", l, maxFloats)
		}
		total += l
	}
	if total > maxFloats {
		return nil, nil, fmt.Errorf("manifest: %d floats (limit %d)", total, maxFloats)
	}
	if m.Lens[1] != 0 && m.Lens[1] != m.Lens[0] || m.Lens[2] != m.Lens[1] {
		return nil, nil, fmt.Errorf("manifest: moments of %d and %d floats for %d params", m.Lens[1], m.Lens[2], m.Lens[0])
	}
	specs := shardSpecs(m.Lens, m.ShardFloats)
	if len(m.Sums) != len(specs) {
		return nil, nil, fmt.Errorf("manifest: %d sums for %d shards", len(m.Sums), len(specs))
	}
	sums := make([][32]byte, len(specs))
	root := sha256.New()
	for i, s := range m.Sums {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			return nil, nil, fmt.Errorf("manifest: sum %d is not a sha256", i)
		}
		copy(sums[i][:], b)
		root.Write(b)
	}
	if hex.EncodeToString(root.Sum(nil)) != m.Root {
		return nil, nil, errors.New("manifest: root does not match its shard sums")
	}
	return specs, sums, nil
}

// forPieces encodes vals as little-endian float32 in pieces of servePiece bytes
// or less, the unit in which a shard is hashed and sent, and calls fn on each
// piece in buf's storage; it stops at fn's first error.
func forPieces(buf []byte, vals []float32, fn func(piece []byte) error) error {
	for lo := 0; lo < len(vals); lo += servePiece / 4 {
		buf = buf[:0]
		for _, v := range vals[lo:min(lo+servePiece/4, len(vals))] {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
		if err := fn(buf); err != nil {
			return err
		}
	}
	return nil
}
