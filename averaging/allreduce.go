package averaging

import (
	"context"
	"errors"
	"iter"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// partHeader opens a reduce stream: sender From sends its part of shard Shard to
// the shard's reducer.
type partHeader struct {
	Group  string  `json:"group"`
	Round  uint64  `json:"round"`
	From   int     `json:"from"`
	Shard  int     `json:"shard"`
	Weight float64 `json:"weight"`
	Len    int     `json:"len"`
}

// reduceRound is the local state of one round's all-reduce, found by incoming
// reduce streams through its group id.
type reduceRound struct {
	id       string
	round    uint64
	deadline time.Time
	members  []peer.ID
	index    int
	n        int
	slots    []*slot // by sender index; nil at our own index
	// attested are the members' weights as whoever asked them to average
	// gave every one of them (by member index), nil when each member's
	// claim is taken, bounded (BoundWeights).
	attested []float64
	// log keeps what we reduce, for audits; nil when audits are off.
	log *auditLog
}

// weightOf is member i's weight given its claim: at most what was attested.
// A member may claim less (it presents the mean of what it holds), never
// more.
func (rr *reduceRound) weightOf(i int, claim float64) float64 {
	if rr.attested != nil {
		return min(rr.attested[i], claim)
	}
	return claim
}

// slot is one sender's part of our shard.
type slot struct {
	weight   float64
	index    int            // the sender's member index
	from     peer.ID        // the sender, once attached
	attached bool           // a stream claimed the slot (a.mu)
	chunks   chan []float32 // decoded chunks in order; closed by the stream's reader when it stops
	results  chan *payload  // encoded result chunks; closed by the reducer when it is done
	exited   chan struct{}  // closed when the stream's handler returns
	ctx      context.Context
	drop     context.CancelFunc // leaves the sender out: resets its stream
}

// slotDepth is how many chunks may wait between a sender's stream and the
// reducer, each way: enough to absorb the jitter between senders that the
// lockstep would otherwise turn into stalls, few enough to bound memory.
const slotDepth = 8

func newSlot(ctx context.Context) *slot {
	sctx, cancel := context.WithCancel(ctx)
	return &slot{
		chunks: make(chan []float32, slotDepth), results: make(chan *payload, slotDepth),
		exited: make(chan struct{}), ctx: sctx, drop: cancel,
	}
}

// shardRange is shard j of a vector of n values among g members.
func shardRange(n, g, j int) (lo, hi int) { return j * n / g, (j + 1) * n / g }

// chunk is one chunk of a shard: its index within the shard, and its offset and
// length within the vector.
type chunk struct{ index, off, n int }

// shardChunks yields the chunks of shard j, cf values each but the last, in the
// order in which both ends of a reduce stream send them.
func (rr *reduceRound) shardChunks(j, cf int) iter.Seq[chunk] {
	lo, hi := shardRange(rr.n, len(rr.members), j)
	return func(yield func(chunk) bool) {
		for c, off := 0, lo; off < hi; c, off = c+1, off+cf {
			if !yield(chunk{index: c, off: off, n: min(cf, hi-off)}) {
				return
			}
		}
	}
}

// allReduce runs the butterfly all-reduce of one confirmed group and applies the
// result. Member i sends shard j of its snapshot to member j and receives shard
// j's reduction back; it reduces shard i itself. Step by step:
//
//  1. openRound registers the round, so that the other members' parts find it;
//  2. contribution fixes our weight: the samples trained on since our last round;
//  3. exchange sends every other shard to its reducer (sendShard) while it
//     reduces our own (reduceShard); each result goes to the source as it comes;
//  4. settle counts what was averaged; a round that averaged nothing carries our
//     weight over to the next.
func (a *Averager) allReduce(ctx context.Context, r uint64, rk [32]byte, members []peer.ID, n int, attested map[peer.ID]float64) (Result, error) {
	res := Result{Round: r, Members: members, Index: slices.Index(members, a.h.ID())}
	var byIndex []float64
	if attested != nil {
		byIndex = make([]float64, len(members))
		for i, m := range members {
			byIndex[i] = attested[m]
		}
	}
	rr := a.openRound(ctx, r, rk, members, res.Index, n, byIndex)
	defer a.closeRound(rr)
	if a.o.OnGroup != nil {
		a.o.OnGroup(r, members)
	}
	t0 := time.Now()
	weight := a.contribution()
	ours := rr.weightOf(res.Index, weight)
	tickets := a.pickAudits(rr, ours)
	progress, dropped := a.exchange(ctx, rr, ours, tickets)
	res.Phases.Exchange = time.Since(t0)
	for j, tk := range tickets {
		if tk != nil && progress[j].Load() > int64(tk.chunk) {
			a.audits.Go(func() {
				actx, cancel := context.WithTimeout(a.ctx, a.o.Deadline)
				defer cancel()
				a.audit(actx, rr, j, tk)
			})
		}
	}
	applied, short := rr.applied(progress, a.o.ChunkFloats)
	a.settle(weight, applied)
	res.Averaged = float64(applied) / float64(n)
	res.Dropped = dropped + short
	if applied == 0 {
		return res, errors.New("averaging: no shard averaged")
	}
	return res, nil
}

// openRound registers round r's all-reduce among members, with one slot per
// other member for its part of our shard, and wakes the handlers waiting for it.
// attested (by member index, or nil) is complete before any handler can see
// the round: a part claimed meanwhile would take a weight half filled in.
func (a *Averager) openRound(ctx context.Context, r uint64, rk [32]byte, members []peer.ID, index, n int, attested []float64) *reduceRound {
	dl, _ := ctx.Deadline()
	rr := &reduceRound{
		id: groupID(rk, members), round: r, deadline: dl,
		members: members, index: index, n: n, slots: make([]*slot, len(members)), attested: attested,
	}
	for i := range members {
		if i != index {
			rr.slots[i] = newSlot(ctx)
			rr.slots[i].index = i
		}
	}
	if a.o.AuditRate > 0 {
		lo, hi := shardRange(n, len(members), index)
		rr.log = newAuditLog(rr, (hi-lo+a.o.ChunkFloats-1)/a.o.ChunkFloats)
	}
	a.mu.Lock()
	a.rounds[rr.id] = rr
	a.broadcastLocked()
	a.mu.Unlock()
	return rr
}

// closeRound forgets the round and resets the streams of its senders.
func (a *Averager) closeRound(rr *reduceRound) {
	a.mu.Lock()
	delete(a.rounds, rr.id)
	a.mu.Unlock()
	for _, sl := range rr.slots {
		if sl != nil {
			sl.drop()
		}
	}
	if rr.log != nil {
		a.keepAuditLog(rr.log)
	}
}

// contribution is our weight in this round: the samples trained on since our last
// round, plus those of rounds that averaged nothing. A non-finite local value
// needs no check here: peers reject the chunk that carries it, and our own
// reduction of it fails its own check.
func (a *Averager) contribution() float64 {
	w := a.src.Samples()
	if !(w >= 0) || math.IsInf(w, 0) {
		w = 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return w + a.pending
}

// exchange runs every stream of the round at once: a sender for each other
// member's shard and the reducer of ours. progress[j] counts the chunks of shard
// j whose average reached the source; dropped, the senders our reducer left out.
func (a *Averager) exchange(ctx context.Context, rr *reduceRound, weight float64, tickets []*auditTicket) (progress []atomic.Int64, dropped int) {
	progress = make([]atomic.Int64, len(rr.members))
	var wg sync.WaitGroup
	for j := range rr.members {
		if j == rr.index {
			continue
		}
		if a.isEvicted(rr.members[j]) {
			// An evicted reducer's shard stays at our values; we tell it
			// we are out at once rather than let it wait for our parts.
			wg.Go(func() { a.declineShard(ctx, rr, j) })
			continue
		}
		wg.Go(func() {
			var tk *auditTicket
			if tickets != nil {
				tk = tickets[j]
			}
			if err := a.sendShard(ctx, rr, j, weight, tk, &progress[j]); err != nil {
				a.o.Logger.Debug("averaging shard failed", "key", a.o.Key, "round", rr.round, "reducer", rr.members[j].ShortString(), "err", err)
			}
		})
	}
	dropped = a.reduceShard(ctx, rr, weight, &progress[rr.index])
	wg.Wait()
	return progress, dropped
}

// applied counts the values that received an average, and the shards that did
// not get it all the way. Every chunk's result is a complete average of the parts
// that reached its reducer, so a partial shard is still a valid update.
func (rr *reduceRound) applied(progress []atomic.Int64, cf int) (applied, short int) {
	for j := range rr.members {
		lo, hi := shardRange(rr.n, len(rr.members), j)
		end := min(hi, lo+int(progress[j].Load())*cf)
		if end < hi {
			short++
		}
		applied += end - lo
	}
	return applied, short
}

// settle keeps the weight of a round that averaged nothing for the next one:
// its samples are still in the vector, unaveraged.
func (a *Averager) settle(weight float64, applied int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if applied == 0 {
		a.pending = weight
	} else {
		a.pending = 0
	}
}

// peerGone leaves a disconnected peer out of every running round at once, rather
// than after StallTimeout: a killed member costs its shard, not the round's time.
func (a *Averager) peerGone(p peer.ID) {
	if a.h.Network().Connectedness(p) == network.Connected {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, rr := range a.rounds {
		for i, m := range rr.members {
			if m == p && rr.slots[i] != nil {
				rr.slots[i].drop()
			}
		}
	}
}
