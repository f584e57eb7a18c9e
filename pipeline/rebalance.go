package pipeline

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Rebalancer decides when a stage server should move to another stage. The
// pipeline runs at the speed of its slowest stage, so a stage whose total
// throughput falls below Ratio times the mean pulls a peer over from the stage
// with the largest total.
//
// It avoids flapping three ways: a move must leave the surplus stage faster than
// the weak stage was (so the reverse move can never qualify right after), only
// one designated holder of the surplus stage moves (every peer computes the same
// choice from the same gossip), and after a move, or at start, a peer waits
// Cooldown before it moves again.
//
// A stage with no live holder stalls the whole pipeline, whatever the
// throughputs say, so it comes first: Decide fills it at once (see rescue),
// before any throughput is measured and without waiting for Cooldown.
//
// Moving itself (fetching the target stage's state, announcing it) is the
// caller's business: see Run.
type Rebalancer struct {
	// Router supplies the holders of every stage and their throughput.
	Router Router
	// Stages is the number of pipeline stages.
	Stages int
	// Self is this peer.
	Self peer.ID
	// Ratio is pipeline.rebalance_ratio.
	Ratio float64
	// Cooldown is the least time between two moves of this peer.
	Cooldown time.Duration
	// Settle is how long the holders of every stage must stay the same before a
	// move: while a peer is moving it vanishes from one stage before it shows up
	// in the other (and callers may have it in backoff meanwhile), and a
	// decision taken on that half-updated picture sends a second peer after it.
	// 0 decides on every picture.
	Settle time.Duration
	// Rescue is how long the holders of every stage must stay the same before a
	// peer moves to a stage with no live holder, and the least time between two
	// such moves of this peer; Run checks four times as often. 0 leaves empty stages
	// to the throughput rule.
	Rescue time.Duration
	// Trained, if set, reports whether the run has trained (this peer's
	// stage has stepped). Then a stage left with no live holder is rescued
	// only once it has stayed empty for LostGrace: its holders may be cut
	// off by a network partition rather than gone, and the rescuer starts
	// the stage from initial weights, which would take the place of the
	// trained state when the partition heals (a higher version, a lost
	// lineage). Meanwhile the pipeline waits.
	Trained   func() bool
	LostGrace time.Duration

	emptySince  time.Time // since when some stage has had no holder
	lastMove    time.Time
	view        string
	stableSince time.Time
}

// viewOf names who holds which stage, so that Decide notices any change.
func viewOf(hs [][]Holder) string {
	var b strings.Builder
	for k, stage := range hs {
		ids := make([]string, len(stage))
		for i, h := range stage {
			ids[i] = string(h.ID)
		}
		slices.Sort(ids)
		fmt.Fprintf(&b, "%d:%s;", k, strings.Join(ids, ","))
	}
	return b.String()
}

// stageTotals sums each stage's throughput; a holder whose throughput is not
// known yet counts as the mean of the known ones.
func stageTotals(r Router, stages int) (tot []float64, hs [][]Holder) {
	tot = make([]float64, stages)
	hs = make([][]Holder, stages)
	sum, known := 0.0, 0
	for k := range stages {
		hs[k] = r.Holders(k)
		for _, h := range hs[k] {
			if h.Throughput > 0 {
				sum += h.Throughput
				known++
			}
		}
	}
	mean := 1.0
	if known > 0 {
		mean = sum / float64(known)
	}
	for k := range stages {
		for i, h := range hs[k] {
			if h.Throughput <= 0 {
				hs[k][i].Throughput = mean
			}
			tot[k] += hs[k][i].Throughput
		}
	}
	return tot, hs
}

// Decide returns the stage this peer, now serving current, should move to, or -1
// to stay. A decision to move starts the cooldown.
func (rb *Rebalancer) Decide(now time.Time, current int) int {
	k, empty, tot, hs := rb.decideRescue(now, current)
	if empty || current < 0 || current >= rb.Stages || rb.Stages < 2 {
		return k
	}
	if rb.lastMove.IsZero() {
		rb.lastMove = now // measure before the first move
	}
	if now.Sub(rb.lastMove) < rb.Cooldown || now.Sub(rb.stableSince) < rb.Settle {
		return -1
	}
	if len(hs[current]) < 2 {
		return -1 // never leave a stage without holders
	}
	weak, strong, sum := 0, 0, 0.0
	for k, t := range tot {
		sum += t
		if t < tot[weak] {
			weak = k
		}
		if t > tot[strong] {
			strong = k
		}
	}
	if strong != current || tot[weak] >= rb.Ratio*sum/float64(rb.Stages) {
		return -1
	}
	// The designated mover: the fastest holder of the stage whose departure still
	// leaves the stage faster than the weak stage is now; ties by peer id.
	var mover peer.ID
	best := -1.0
	for _, h := range hs[current] {
		if tot[current]-h.Throughput <= tot[weak] {
			continue
		}
		if h.Throughput > best || h.Throughput == best && h.ID < mover {
			mover, best = h.ID, h.Throughput
		}
	}
	if mover != rb.Self {
		return -1
	}
	rb.lastMove = now
	return weak
}

// decideRescue notes the picture of holders (for Settle and Rescue) and
// decides the rescue of a stage with no holder: empty reports whether there is
// one (and Rescue is on), k where this peer moves, or -1. tot and hs are
// stageTotals' picture.
func (rb *Rebalancer) decideRescue(now time.Time, current int) (k int, empty bool, tot []float64, hs [][]Holder) {
	if current < 0 || current >= rb.Stages || rb.Stages < 2 {
		return -1, false, nil, nil
	}
	tot, hs = stageTotals(rb.Router, rb.Stages)
	if v := viewOf(hs); v != rb.view || rb.stableSince.IsZero() {
		rb.view, rb.stableSince = v, now
	}
	if rb.Rescue <= 0 || !slices.ContainsFunc(hs, func(h []Holder) bool { return len(h) == 0 }) {
		rb.emptySince = time.Time{}
		return -1, false, tot, hs
	}
	if rb.emptySince.IsZero() {
		rb.emptySince = now
	}
	if now.Sub(rb.stableSince) < rb.Rescue || !rb.lastMove.IsZero() && now.Sub(rb.lastMove) < rb.Rescue {
		return -1, true, tot, hs
	}
	if rb.Trained != nil && now.Sub(rb.emptySince) < rb.LostGrace && rb.Trained() {
		return -1, true, tot, hs
	}
	k = rescue(hs, rb.Self)
	if k >= 0 {
		rb.lastMove = now
	}
	return k, true, tot, hs
}

// rescue returns the stage with no holder that self should move to, or -1.
// Every peer computes the same assignment from the same picture, so each
// empty stage gets one peer: the empty stages in order take, one each, a
// holder of the stage with the most holders left (the lowest-numbered among
// equals), its fastest first, ties by peer id. A stage keeps its last holder.
func rescue(hs [][]Holder, self peer.ID) int {
	left := make([][]Holder, len(hs))
	for k, stage := range hs {
		left[k] = slices.Clone(stage)
		slices.SortFunc(left[k], func(a, b Holder) int {
			if a.Throughput != b.Throughput {
				return cmp.Compare(b.Throughput, a.Throughput)
			}
			return strings.Compare(string(a.ID), string(b.ID))
		})
	}
	for to, stage := range hs {
		if len(stage) > 0 {
			continue
		}
		from := 0
		for k := range left {
			if len(left[k]) > len(left[from]) {
				from = k
			}
		}
		if len(left[from]) < 2 {
			return -1
		}
		if left[from][0].ID == self {
			return to
		}
		left[from] = left[from][1:]
	}
	return -1
}

// Run checks every period until ctx ends, and four times per Rescue for a
// stage with no holder (the throughput rule keeps its own pace). current
// reports the stage served now; move performs a move the Rebalancer decided
// on (state transfer, announcing, switching the server) and returns once
// done. A failed move is retried after the cooldown.
func (rb *Rebalancer) Run(ctx context.Context, every time.Duration, current func() int, move func(ctx context.Context, stage int) error) error {
	t := time.NewTicker(every)
	defer t.Stop()
	var rescueTick <-chan time.Time
	if rb.Rescue > 0 {
		rt := time.NewTicker(rb.Rescue / 4)
		defer rt.Stop()
		rescueTick = rt.C
	}
	for {
		k := -1
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			k = rb.Decide(now, current())
		case now := <-rescueTick:
			k, _, _, _ = rb.decideRescue(now, current())
		}
		if k >= 0 {
			if err := move(ctx, k); err != nil && ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
}
