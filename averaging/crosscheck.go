package averaging

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// A joiner takes no holder's word for the state. Once every shard is
// assembled (each from one holder), each shard must be vouched for by a
// strict majority of the holders whose manifests were valid at the chosen
// step: a holder vouches for a shard when its manifest names the same sha256,
// or when its own copy, fetched, lies within StateTolerance of the assembled
// one (replicas of a stage are not bitwise equal: each applies the group's
// result to its own rounding, and CPU and GPU holders round differently). A
// shard that misses a majority is replaced by a copy that has one; when no
// copy has one the fetch fails, naming the holders that disagree. A single
// holder's state is taken as it is: there is no one to ask.

// StateTolerance is the relative distance ‖a − b‖ / max(‖a‖, ‖b‖) within
// which two holders' copies of a shard count as the same state. Replicas at
// one step differ by rounding, orders of magnitude below it; a poisoned state
// (garbage, scaled, another step's or another run's) lies far outside.
const StateTolerance = 1e-3

// DriftTolerance is how far apart the copies of a shard may lie when no copy
// has a majority, for the assembled one to be taken anyway. Honest replicas
// drift apart when an all-reduce fails in part under churn (each keeps its
// own mean of the shard whose result did not come back), by more than
// StateTolerance after a while; a poisoned state lies far beyond this too.
// Without it, a newcomer to a stage of two drifted holders could not join.
const DriftTolerance = 5e-2

// The optimizer's moments (segments m and v) are taken as assembled when no
// copy has a majority, once the parameters passed: see crossCheck.

// ErrHoldersDisagree is FetchState's error when no copy of a shard is vouched
// for by a majority of the holders asked.
var ErrHoldersDisagree = errors.New("the stage's holders disagree on its state")

// crossCheck has every shard of the assembled state vouched for by a strict
// majority of servers, replacing a shard that is not, and returns the holders
// whose copies disagreed with the majority.
func (f *fetch) crossCheck(ctx context.Context, servers []*server) (liars []peer.ID, err error) {
	if len(servers) < 2 {
		return nil, nil
	}
	need := len(servers)/2 + 1
	segs := f.out.segments()
	against := map[peer.ID]bool{}
	for i, spec := range f.specs {
		got := spec.of(segs)
		copies := []shardCopy{{vals: got, sum: f.used[i], from: f.src[i]}}
		for _, sv := range rand.Perm(len(servers)) {
			s := servers[sv]
			if s.id == f.src[i] {
				continue
			}
			c := shardCopy{sum: s.sums[i], from: s.id}
			if c.sum != f.used[i] { // not the same bytes: fetch it to compare values
				c.vals = make([]float32, spec.n)
				err := f.request(ctx, s.id, stateReq{Op: "shard", Snap: s.m.Snap, Index: i}, func(st network.Stream) error {
					return readShard(st, c.vals, c.sum)
				})
				if err != nil {
					continue // an unreachable holder neither vouches nor denies
				}
			}
			copies = append(copies, c)
			if vouched(copies, 0) >= need {
				break
			}
		}
		best, n := 0, vouched(copies, 0)
		for j := 1; j < len(copies) && n < need; j++ {
			if m := vouched(copies, j); m > n {
				best, n = j, m
			}
		}
		if n < need && withinDrift(copies) {
			continue // replicas drifted apart, none poisoned: take the one assembled
		}
		if n < need && spec.seg > 0 {
			// The optimizer's moments: one step on a holder's own gradients
			// (an all-reduce skipped under churn) moves them by a good part
			// of themselves, so honest copies disagree far beyond any
			// tolerance. The parameters, checked above, carry the model.
			continue
		}
		if n < need {
			// No majority: nothing says which copy is the odd one out.
			return nil, fmt.Errorf("%w: shard %d of %d is vouched for by %d of %d holders (copies up to %.3g apart)",
				ErrHoldersDisagree, i, len(f.specs), n, len(servers), maxDistance(copies))
		}
		for j := range copies {
			if !copies[j].same(copies[best]) {
				against[copies[j].from] = true
			}
		}
		if best != 0 {
			copy(got, copies[best].vals)
			f.used[i] = copies[best].sum
		}
	}
	for p := range against {
		liars = append(liars, p)
	}
	return liars, nil
}

// shardCopy is one holder's copy of a shard: its sha256 and, when fetched,
// its values.
type shardCopy struct {
	vals []float32
	sum  [32]byte
	from peer.ID
}

// same reports whether two copies are the same state: equal sums, or values
// within StateTolerance.
func (c shardCopy) same(o shardCopy) bool {
	if c.sum == o.sum {
		return true
	}
	if c.vals == nil || o.vals == nil {
		return false
	}
	return relDistance(c.vals, o.vals) <= StateTolerance
}

// withinDrift reports whether every copy was compared and lies within
// DriftTolerance of the first (the assembled one).
func withinDrift(copies []shardCopy) bool {
	if len(copies) < 2 {
		return false
	}
	for _, c := range copies[1:] {
		if c.sum == copies[0].sum {
			continue
		}
		if c.vals == nil || copies[0].vals == nil || relDistance(c.vals, copies[0].vals) > DriftTolerance {
			return false
		}
	}
	return true
}

// maxDistance is the largest relative distance of a fetched copy from the
// first (the assembled one); NaN when none was fetched.
func maxDistance(copies []shardCopy) float64 {
	d := math.NaN()
	for _, c := range copies[1:] {
		if c.vals != nil && copies[0].vals != nil {
			if x := relDistance(c.vals, copies[0].vals); !(x <= d) {
				d = x
			}
		}
	}
	return d
}

// vouched counts the copies that are the same as copies[j], it included.
func vouched(copies []shardCopy, j int) int {
	n := 0
	for _, c := range copies {
		if c.same(copies[j]) {
			n++
		}
	}
	return n
}

// disagreeing lists the holders whose copies differ from copies[j].
func disagreeing(copies []shardCopy, j int) []peer.ID {
	var out []peer.ID
	for _, c := range copies {
		if !c.same(copies[j]) {
			out = append(out, c.from)
		}
	}
	return out
}

// relDistance is ‖a − b‖ / max(‖a‖, ‖b‖) (0 for two zero vectors).
func relDistance(a, b []float32) float64 {
	var d, na, nb float64
	for k := range a {
		x, y := float64(a[k]), float64(b[k])
		d += (x - y) * (x - y)
		na += x * x
		nb += y * y
	}
	if na == 0 && nb == 0 {
		return 0
	}
	return math.Sqrt(d) / math.Sqrt(math.Max(na, nb))
}
