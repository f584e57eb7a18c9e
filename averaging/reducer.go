package averaging

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/codec"
)

// reduceShard reduces our own shard chunk by chunk, in lockstep over the senders.
// For each chunk it
//
//  1. reads our values of the chunk from the source;
//  2. gathers the senders' parts, waiting at most StallTimeout for them;
//  3. reduces the parts that came, ours included, into the result's frame;
//  4. answers: hands the result to each sender's stream;
//  5. applies the result locally, as a delta from our values.
//
// A sender late at step 2 or 4 is left out from that chunk on; a failed reduction
// leaves the rest of the shard at every member's local values. It returns how
// many senders it left out, plus one for a failed reduction.
func (a *Averager) reduceShard(ctx context.Context, rr *reduceRound, weight float64, progress *atomic.Int64) int {
	r := a.newShardReducer(rr, weight)
	defer r.finish(ctx)
	for ch := range rr.shardChunks(rr.index, a.o.ChunkFloats) {
		mine := r.own[:ch.n]
		a.src.Read(ch.off, mine)
		if !r.gather(ctx, mine) {
			return r.dropped
		}
		p, err := r.reduce(ch)
		if err != nil {
			a.o.Logger.Info("averaging reducer failed", "key", a.o.Key, "round", rr.round, "chunk", ch.index, "err", err)
			return r.dropped + 1
		}
		if !r.answer(ctx, p) {
			return r.dropped
		}
		subFinite(mine, p.vals(ch.n)) // reduce checked the result
		a.src.Add(ch.off, mine)
		p.release(a)
		progress.Store(int64(ch.index + 1))
	}
	return r.dropped
}

// shardReducer is the reducer of our own shard in one round.
type shardReducer struct {
	a       *Averager
	rr      *reduceRound
	weight  float64 // ours
	live    []*slot // the senders not left out, in member order
	dropped int     // senders left out
	stall   *time.Timer
	expired bool // the current chunk's StallTimeout has passed

	// The current chunk: our values, the parts (ours first) and their weights,
	// and the senders' buffers that hold their parts.
	own     []float32
	parts   [][]float32
	weights []float64
	bufs    [][]float32
	outlier []bool

	// judged counts, per sender, the chunks its part was reduced in with a
	// weight; outliers those where the Reducer found it an outlier.
	judged, outliers map[*slot]int
}

func (a *Averager) newShardReducer(rr *reduceRound, weight float64) *shardReducer {
	g := len(rr.members)
	r := &shardReducer{
		a: a, rr: rr, weight: weight, own: a.getBuf(),
		parts: make([][]float32, 0, g), weights: make([]float64, 0, g), bufs: make([][]float32, 0, g),
		outlier: make([]bool, g), judged: make(map[*slot]int), outliers: make(map[*slot]int),
	}
	for i, sl := range rr.slots {
		// An evicted sender's parts are refused: waiting for them would cost
		// every chunk its StallTimeout.
		if sl != nil && !a.isEvicted(rr.members[i]) {
			r.live = append(r.live, sl)
		}
	}
	return r
}

// leave leaves sender sl out of the rest of the shard and resets its stream.
func (r *shardReducer) leave(sl *slot) {
	sl.drop()
	r.dropped++
}

// gather collects the parts of a chunk of len(mine) values: ours, then each live
// sender's in member order. The senders share one StallTimeout per chunk: once it
// has passed, a sender whose part is not queued yet is left out, as is one
// dropped elsewhere (its peer left, or its stream broke). It returns false when
// the round ended.
func (r *shardReducer) gather(ctx context.Context, mine []float32) bool {
	m := len(mine)
	r.parts = append(r.parts[:0], mine)
	r.weights = append(r.weights[:0], r.weight)
	r.bufs = r.bufs[:0]
	r.stall = time.NewTimer(r.a.o.StallTimeout)
	defer r.stall.Stop()
	r.expired = false
	kept := r.live[:0]
	for _, sl := range r.live {
		buf, ok, ended := r.awaitPart(ctx, sl)
		if ended {
			return false
		}
		if !ok || sl.ctx.Err() != nil {
			if ok {
				r.a.putBuf(buf)
			}
			r.leave(sl)
			continue
		}
		kept = append(kept, sl)
		r.bufs = append(r.bufs, buf)
		r.parts = append(r.parts, buf[:m])
		r.weights = append(r.weights, sl.weight)
	}
	r.live = kept
	return true
}

// awaitPart returns sl's next part, waiting for it until the chunk's StallTimeout
// has passed, and after that taking only a part already queued. ok is false when
// none came or sl's stream ended; ended is true when the round ended.
func (r *shardReducer) awaitPart(ctx context.Context, sl *slot) (buf []float32, ok, ended bool) {
	if !r.expired {
		select {
		case buf, ok = <-sl.chunks:
			return buf, ok, false
		case <-sl.ctx.Done(): // dropped elsewhere: its peer left, or its stream broke
			return nil, false, false
		case <-r.stall.C:
			r.expired = true
		case <-ctx.Done():
			return nil, false, true
		}
	}
	select {
	case buf, ok = <-sl.chunks:
	default:
	}
	return buf, ok, false
}

// reduce reduces the gathered parts straight into the result's frame and
// recycles the senders' buffers. The result's values become what the senders
// decode from the frame, so that we apply exactly what they do. The payload
// holds a reference for each live sender and one for us.
func (r *shardReducer) reduce(ch chunk) (*payload, error) {
	a := r.a
	p := a.newPayload(len(r.live) + 1)
	o := p.vals(ch.n)
	if r.rr.log != nil {
		members := make([]int, 1, len(r.parts))
		members[0] = r.rr.index
		for _, sl := range r.live {
			members = append(members, sl.index)
		}
		r.rr.log.keepChunk(ch.index, members, r.weights, r.parts[0])
	}
	if r.rr.attested == nil {
		BoundWeights(r.weights)
	}
	out := r.outlier[:len(r.parts)]
	err := reduceWeighted(a.o.Reducer, r.parts, r.weights, o, out)
	if err == nil {
		err = codec.CheckFinite(o)
	}
	if err == nil && ch.n >= minJudged {
		for i, sl := range r.live {
			if r.weights[i+1] <= 0 { // parts[0] is ours
				continue // left out of the reduction: nothing to judge
			}
			r.judged[sl]++
			if out[i+1] {
				r.outliers[sl]++
			}
		}
	}
	for _, b := range r.bufs {
		a.putBuf(b)
	}
	if err == nil {
		if p.f, err = p.frame(a.o.Codec, r.rr.index, ch.index, ch.n, true); err != nil {
			err = fmt.Errorf("result in %s: %w", a.o.Codec, err)
		}
	}
	if err != nil {
		p.refs.Store(1)
		p.release(a)
		return nil, err
	}
	return p, nil
}

// reduceWeighted runs red over the parts of nonzero weight. A part of zero
// weight (a member that accumulated no microbatch, or trained nothing since
// its last round) carries nothing to average: left in, it would shift the
// median and τ, and be judged an outlier for holding zeros. When every weight
// is zero all parts count, equally.
func reduceWeighted(red Reducer, parts [][]float32, ws []float64, out []float32, outlier []bool) error {
	zero := 0
	for _, w := range ws {
		if w <= 0 {
			zero++
		}
	}
	if zero == 0 || zero == len(parts) { // the usual case: no copies
		return red(parts, ws, out, outlier)
	}
	keep := make([]int, 0, len(parts)-zero)
	for i, w := range ws {
		if w > 0 {
			keep = append(keep, i)
		}
	}
	kp, kw, ko := make([][]float32, len(keep)), make([]float64, len(keep)), make([]bool, len(keep))
	for j, i := range keep {
		kp[j], kw[j] = parts[i], ws[i]
	}
	if err := red(kp, kw, out, ko); err != nil {
		return err
	}
	clear(outlier)
	for j, i := range keep {
		outlier[i] = ko[j]
	}
	return nil
}

// answer hands result p to the writer of each live sender's stream. A writer
// that does not take it within StallTimeout is left out, and the writers after it
// then get no more time than it had. It returns false when the round ended.
func (r *shardReducer) answer(ctx context.Context, p *payload) bool {
	if len(r.live) == 0 {
		return true
	}
	r.stall.Reset(r.a.o.StallTimeout)
	defer r.stall.Stop()
	kept := r.live[:0]
	for _, sl := range r.live {
		select {
		case sl.results <- p:
			kept = append(kept, sl)
		case <-sl.ctx.Done():
			r.dropped++
		case <-r.stall.C:
			r.leave(sl)
			r.stall.Reset(0)
		case <-ctx.Done():
			return false
		}
	}
	r.live = kept
	return true
}

// finish closes every sender's result queue, so that its writer flushes the last
// results and closes its side, and lets the live senders' handlers return before
// the round's end resets their streams.
func (r *shardReducer) finish(ctx context.Context) {
	r.a.putBuf(r.own)
	for sl, judged := range r.judged {
		n := r.outliers[sl]
		r.a.judge(sl.from, n > 0 && 2*n >= judged, fmt.Sprintf("its part was an outlier in %d of %d chunks of round %d", n, judged, r.rr.round))
	}
	for _, sl := range r.rr.slots {
		if sl != nil {
			close(sl.results)
		}
	}
	for _, sl := range r.live {
		r.a.awaitHandler(ctx, sl)
	}
}

// awaitHandler waits until the handler that claimed sl returns, or the round
// ends. After an early stop its reader may still hold parts: it takes them.
func (a *Averager) awaitHandler(ctx context.Context, sl *slot) {
	a.mu.Lock()
	attached := sl.attached
	a.mu.Unlock()
	if !attached {
		return
	}
	for chunks := sl.chunks; ; {
		select {
		case b, ok := <-chunks:
			if ok {
				a.putBuf(b)
			} else {
				chunks = nil // closed: wait for exited only
			}
		case <-sl.exited:
			return
		case <-ctx.Done():
			return
		}
	}
}

// handleReduce serves one sender's part of our shard, the reducer's end of a
// reduce stream:
//
//  1. it reads the part's header, which a sender writes at once;
//  2. it finds the round by group id, waiting for it one matchmaking window (the
//     sender may have heard the leader's confirmation first);
//  3. it checks that the sender is the member it claims to be, and claims that
//     member's slot, once;
//  4. receiveParts feeds the chunks to our reducer and writes the results back.
//
// A refused sender gets an error frame with the reason.
func (a *Averager) handleReduce(s network.Stream) {
	if !a.sem.tryAcquire() {
		s.Reset()
		return
	}
	defer a.sem.release()
	// One that dawdles holds a handler slot for one matchmaking window at most,
	// then waits at most one more for its round.
	_ = s.SetDeadline(time.Now().Add(2 * a.o.Matchmaking))
	var h partHeader
	if err := readJSON(s, frameHeader, &h); err != nil {
		s.Reset()
		return
	}
	rr := awaitEntry(a.ctx, a, a.rounds, h.Group)
	sl, why := a.claimSlot(rr, h, s.Conn().RemotePeer())
	if why != "" {
		writeErrorf(s, "%s", why)
		s.Close()
		return
	}
	a.receiveParts(s, rr, sl)
}

// claimSlot checks a part's header against its round and claims the sender's
// slot; it returns why it refused the part.
func (a *Averager) claimSlot(rr *reduceRound, h partHeader, from peer.ID) (*slot, string) {
	switch {
	case rr == nil:
		return nil, fmt.Sprintf("no round with group %.40q", h.Group)
	case h.From < 0 || h.From >= len(rr.members) || h.From == rr.index || rr.members[h.From] != from:
		return nil, fmt.Sprintf("sender index %d does not match peer %s", h.From, from.ShortString())
	case h.Shard != rr.index || h.Round != rr.round || h.Len != rr.n:
		return nil, fmt.Sprintf("part of shard %d round %d len %d, want shard %d round %d len %d", h.Shard, h.Round, h.Len, rr.index, rr.round, rr.n)
	case !(h.Weight >= 0) || math.IsInf(h.Weight, 0):
		return nil, fmt.Sprintf("bad weight %v", h.Weight)
	case a.isEvicted(from):
		return nil, "evicted from this stage's averaging"
	}
	sl := rr.slots[h.From]
	a.mu.Lock()
	defer a.mu.Unlock()
	if sl.attached {
		return nil, "part sent twice"
	}
	sl.attached = true
	sl.weight = rr.weightOf(h.From, h.Weight)
	sl.from = from
	return sl, ""
}

// receiveParts feeds a claimed sender's chunks to our reducer, in order, while
// writeResults sends the results back on the same stream. It returns when the
// sender is done or left out, or the stream breaks.
func (a *Averager) receiveParts(s network.Stream, rr *reduceRound, sl *slot) {
	defer s.Close()
	defer close(sl.exited)
	_ = s.SetDeadline(rr.deadline)
	stop := context.AfterFunc(sl.ctx, func() { s.Reset() })
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { a.writeResults(s, sl) })
	defer wg.Wait()

	defer close(sl.chunks)
	var rbuf []byte
	for ch := range rr.shardChunks(rr.index, a.o.ChunkFloats) {
		buf := a.getBuf()
		var err error
		if rbuf, err = readChunk(s, rbuf, a.o.Codec, rr.index, ch.index, buf[:ch.n]); err == nil && rr.log != nil {
			rr.log.keepPart(sl.index, ch.index, encoded(a.o.Codec, buf[:ch.n], rbuf))
		}
		if err != nil {
			a.putBuf(buf)
			sl.drop()
			if errors.Is(err, codec.ErrNonFinite) {
				a.evict(sl.from, fmt.Sprintf("it sent non-finite values in round %d: %v", rr.round, err))
			}
			return
		}
		select {
		case sl.chunks <- buf:
		case <-sl.ctx.Done():
			a.putBuf(buf)
			return
		}
	}
}

// writeResults writes each result the reducer hands it and closes our side of
// the stream once the reducer is done. A failed write leaves the sender out.
func (a *Averager) writeResults(s network.Stream, sl *slot) {
	for {
		select {
		case p, ok := <-sl.results:
			if !ok {
				_ = s.CloseWrite()
				return
			}
			_, err := s.Write(p.f)
			p.release(a)
			if err != nil {
				sl.drop()
				return
			}
		case <-sl.ctx.Done():
			return
		}
	}
}
