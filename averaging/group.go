package averaging

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// roundKey names round r of the averaging of key in run. Every holder computes it
// alone, so it is the rendezvous: no coordinator hands rounds out.
func roundKey(run, key string, round uint64) [32]byte {
	h := sha256.New()
	h.Write([]byte("swarmnode/avg/round\x00"))
	h.Write([]byte(run))
	h.Write([]byte{0})
	h.Write([]byte(key))
	var r [8]byte
	binary.BigEndian.PutUint64(r[:], round)
	h.Write(r[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// assign returns the group that self belongs to in a round, leader first, as self
// sees the holders. Holders are ordered by sha256(round key, peer id), which
// reshuffles every round so that information mixes across the whole stage, and cut
// into ceil(n/g) groups of near-equal size. Two holders that see the same holders
// compute the same groups; holders whose views differ slightly mostly still agree,
// and the leader's confirmation settles the rest.
func assign(rk [32]byte, holders []peer.ID, self peer.ID, g int) []peer.ID {
	all := slices.Clone(holders)
	all = append(all, self)
	slices.Sort(all)
	all = slices.Compact(all)
	type scored struct {
		id    peer.ID
		score [32]byte
	}
	s := make([]scored, len(all))
	for i, id := range all {
		s[i] = scored{id, scoreOf(rk, id)}
	}
	slices.SortFunc(s, func(a, b scored) int { return bytes.Compare(a.score[:], b.score[:]) })
	n := len(s)
	groups := (n + g - 1) / g
	for k := 0; k < groups; k++ {
		lo, hi := k*n/groups, (k+1)*n/groups
		for i := lo; i < hi; i++ {
			if s[i].id == self {
				out := make([]peer.ID, 0, hi-lo)
				for _, m := range s[lo:hi] {
					out = append(out, m.id)
				}
				return out
			}
		}
	}
	return nil // unreachable: self is in all
}

func scoreOf(rk [32]byte, id peer.ID) [32]byte {
	h := sha256.New()
	h.Write(rk[:])
	h.Write([]byte(id))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// sortByScore orders members the way assign does, so that every member of a
// confirmed group agrees on each member's index (and so on who reduces which shard).
func sortByScore(rk [32]byte, members []peer.ID) {
	slices.SortFunc(members, func(a, b peer.ID) int {
		sa, sb := scoreOf(rk, a), scoreOf(rk, b)
		return bytes.Compare(sa[:], sb[:])
	})
}

// groupID names one confirmed group of one round.
func groupID(rk [32]byte, members []peer.ID) string {
	h := sha256.New()
	h.Write(rk[:])
	for _, m := range members {
		h.Write([]byte(m))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
