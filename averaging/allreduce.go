package averaging

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/codec"
	"swarmnode/wire"
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
	ctx      context.Context
	deadline time.Time
	members  []peer.ID
	index    int
	n        int
	slots    []*slot // by sender index; nil at our own index
}

// slot is one sender's part of our shard.
type slot struct {
	from     int
	weight   float64
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

// shardRange is shard j of a vector of n values among g members.
func shardRange(n, g, j int) (lo, hi int) { return j * n / g, (j + 1) * n / g }

func (a *Averager) getBuf() []float32 {
	if p, ok := a.pool.Get().(*[]float32); ok {
		return *p
	}
	return make([]float32, a.o.ChunkFloats)
}

func (a *Averager) putBuf(b []float32) { a.pool.Put(&b) }

// sendDepth is how many chunks a sender has in flight on one stream: read from
// the source and sent, their results not yet back. Each waits for its result in
// its own buffer, so the values sent are still in cache when the delta is taken,
// and memory stays bounded whatever the vector size. It keeps about sendWindow
// bytes on the wire, so more of the smaller chunks of a compressed codec: with
// few in flight, a round would wait on round trips rather than on the machine.
func (a *Averager) sendDepth() int {
	return max(slotDepth, min(4*slotDepth, sendWindow/max(1, wireFormat(a.o.Codec).Len(a.o.ChunkFloats))))
}

// sendWindow is the encoded bytes a sender keeps in flight per stream.
const sendWindow = 4 << 20

// headFloats is the room before a chunk's values in a chunkBuf: 20 bytes, of
// which the last 18 take the frame header (length, type) and the chunk header,
// so that an fp32 chunk is one contiguous frame over its values, and the values
// stay 4-byte aligned.
const headFloats = 5

// chunkBuf holds one chunk's values after room for its frame's header.
type chunkBuf struct {
	back []float32 // headFloats of header room, then ChunkFloats values
	enc  []byte    // the frame of a codec other than fp32
}

func (a *Averager) getChunk() *chunkBuf {
	if b, ok := a.chunks.Get().(*chunkBuf); ok {
		return b
	}
	return &chunkBuf{back: make([]float32, headFloats+a.o.ChunkFloats)}
}

// vals is the room for m values.
func (b *chunkBuf) vals(m int) []float32 { return b.back[headFloats : headFloats+m] }

// frame returns the complete chunk frame (shard, index) of the first m values;
// in fp32 it aliases the values. With round set, values are replaced by what a
// peer decodes from the frame. It fails where the values, or with round set the
// decoded ones, are not all finite; fp32 values are not checked.
func (b *chunkBuf) frame(k codec.Kind, shard, index, m int, round bool) ([]byte, error) {
	if view, ok := codec.FP32View(b.back[:headFloats+m]); ok && k == codec.FP32 {
		f := view[4*headFloats-chunkHeads:]
		putChunkHeads(f, k, shard, index, m)
		return f, nil
	}
	f := wireFormat(k)
	b.enc = slices.Grow(b.enc[:0], chunkHeads+f.Len(m))[:chunkHeads]
	putChunkHeads(b.enc, k, shard, index, m)
	var err error
	if round {
		b.enc, err = f.AppendRounded(b.enc, b.vals(m))
	} else {
		b.enc, err = f.Append(b.enc, b.vals(m))
	}
	return b.enc, err
}

// allReduce runs the butterfly all-reduce of one confirmed group and applies the
// result. Member i sends shard j of its snapshot to member j and receives shard
// j's reduction back; it reduces shard i itself.
func (a *Averager) allReduce(ctx context.Context, r uint64, rk [32]byte, members []peer.ID, n int) (res Result, err error) {
	res = Result{Round: r, Members: members, Index: -1}
	for i, m := range members {
		if m == a.h.ID() {
			res.Index = i
		}
	}
	g := len(members)
	dl, _ := ctx.Deadline()
	rr := &reduceRound{
		id: groupID(rk, members), round: r, ctx: ctx, deadline: dl,
		members: members, index: res.Index, n: n, slots: make([]*slot, g),
	}
	for i := range members {
		if i == res.Index {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		rr.slots[i] = &slot{
			from: i, chunks: make(chan []float32, slotDepth), results: make(chan *payload, slotDepth),
			exited: make(chan struct{}), ctx: sctx, drop: cancel,
		}
	}
	a.mu.Lock()
	a.rounds[rr.id] = rr
	a.broadcastLocked()
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.rounds, rr.id)
		a.mu.Unlock()
		for _, sl := range rr.slots {
			if sl != nil {
				sl.drop()
			}
		}
	}()

	if a.o.OnGroup != nil {
		a.o.OnGroup(r, members)
	}
	t0 := time.Now()
	weight := a.src.Samples()
	if !(weight >= 0) || math.IsInf(weight, 0) {
		weight = 0
	}
	a.mu.Lock()
	weight += a.pending
	a.mu.Unlock()
	// A non-finite local value needs no check here: peers reject the chunk that
	// carries it, and our own reduction of it fails its own check.

	// progress[j] counts the chunks of shard j whose average reached the source.
	progress := make([]atomic.Int64, g)
	var wg sync.WaitGroup
	var dropped atomic.Int64
	for j := range members {
		if j == res.Index {
			continue
		}
		wg.Go(func() {
			if err := a.sendShard(ctx, rr, j, weight, &progress[j]); err != nil {
				a.o.Logger.Debug("averaging shard failed", "key", a.o.Key, "round", r, "reducer", members[j].ShortString(), "err", err)
			}
		})
	}
	dropped.Add(int64(a.reduceShard(ctx, rr, weight, &progress[res.Index])))
	wg.Wait()
	res.Phases.Exchange = time.Since(t0)

	// Every chunk's result is a complete average of the parts that reached its
	// reducer, so a partial shard is still a valid update.
	applied := 0
	for j := range members {
		lo, hi := shardRange(n, g, j)
		end := min(hi, lo+int(progress[j].Load())*a.o.ChunkFloats)
		if end < hi {
			dropped.Add(1)
		}
		applied += end - lo
	}
	a.mu.Lock()
	if applied == 0 {
		a.pending = weight // nothing averaged: this round's samples count next time
	} else {
		a.pending = 0
	}
	a.mu.Unlock()
	res.Averaged = float64(applied) / float64(n)
	res.Dropped = int(dropped.Load())
	if applied == 0 {
		return res, errors.New("averaging: no shard averaged")
	}
	return res, nil
}

// sendShard reads shard j from the source chunk by chunk and sends it to its
// reducer; each result that comes back goes to the source as a delta against the
// values sent. At most sendDepth chunks are in flight, each in its own buffer.
func (a *Averager) sendShard(ctx context.Context, rr *reduceRound, j int, weight float64, progress *atomic.Int64) error {
	s, err := a.h.NewStream(ctx, rr.members[j], a.reduceProto)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(rr.deadline)
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	lo, hi := shardRange(rr.n, len(rr.members), j)
	hdr := partHeader{Group: rr.id, Round: rr.round, From: rr.index, Shard: j, Weight: weight, Len: rr.n}
	if err := wire.WriteJSON(s, frameHeader, hdr); err != nil {
		s.Reset()
		return err
	}
	cf := a.o.ChunkFloats
	kind := a.o.Codec
	// free holds the buffers ready for a chunk; sent, in order, the chunks whose
	// part was written and whose result is awaited. Together they hold the
	// depth buffers, so neither send blocks.
	depth := a.sendDepth()
	free := make(chan *chunkBuf, depth)
	sent := make(chan *chunkBuf, depth)
	for range depth {
		free <- a.getChunk()
	}
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(sent)
		for c, clo := 0, lo; clo < hi; c, clo = c+1, clo+cf {
			var b *chunkBuf
			select {
			case b = <-free:
			case <-wctx.Done():
				return
			}
			m := min(cf, hi-clo)
			a.src.Read(clo, b.vals(m))
			// One Write per frame: a muxed stream turns each Write into its own
			// frame.
			f, err := b.frame(kind, j, c, m, false)
			if err == nil {
				_, err = s.Write(f)
			}
			if err != nil {
				free <- b
				s.Reset()
				return
			}
			sent <- b
		}
		_ = s.CloseWrite()
	})
	defer func() {
		wcancel()
		wg.Wait()
		for b := range sent {
			a.chunks.Put(b)
		}
		for len(free) > 0 {
			a.chunks.Put(<-free)
		}
	}()

	tmp := a.getBuf()
	defer a.putBuf(tmp)
	var rbuf []byte
	_, native := codec.FP32View(tmp)
	raw := native && kind == codec.FP32
	for c, clo := 0, lo; clo < hi; c, clo = c+1, clo+cf {
		m := min(cf, hi-clo)
		out := tmp[:m]
		// A reducer may wait StallTimeout for the slowest part before it answers;
		// one that takes twice that is hanging, and its shard stays local.
		if t := time.Now().Add(2 * a.o.StallTimeout); t.Before(rr.deadline) {
			_ = s.SetReadDeadline(t)
		}
		// Results are checked for NaN and Inf while the delta is taken: fp32
		// is read straight into out, other codecs decoded straight into the delta.
		if raw {
			rbuf, err = readChunkTo(s, rbuf, kind, j, c, out, false)
		} else if err = readChunkHead(s, kind, j, c, m); err == nil {
			rbuf, err = wire.ReadPayload(s, rbuf, wireFormat(kind).Len(m))
		}
		if err != nil {
			s.Reset()
			return fmt.Errorf("result chunk %d: %w", c, err)
		}
		// A result that overtakes its part waits for the part to be written.
		b, ok := <-sent
		if !ok {
			s.Reset()
			return fmt.Errorf("result chunk %d: its part was not sent", c)
		}
		d := b.vals(m)
		if raw {
			if !subFinite(d, out) {
				err = codec.CheckFinite(out)
			}
		} else {
			err = wireFormat(kind).DecodeSub(d, rbuf)
		}
		if err != nil {
			a.chunks.Put(b)
			s.Reset()
			return fmt.Errorf("result chunk %d: %w", c, err)
		}
		a.src.Add(clo, d)
		free <- b
		progress.Store(int64(c + 1))
	}
	return nil
}

// reduceShard reduces our own shard chunk by chunk, in lockstep over the senders:
// chunk c waits at most StallTimeout for each sender's part, then is reduced over
// the parts that came, sent back to their senders and applied locally as a delta.
// It returns how many senders it left out.
func (a *Averager) reduceShard(ctx context.Context, rr *reduceRound, weight float64, progress *atomic.Int64) int {
	var live []*slot
	for _, sl := range rr.slots {
		if sl != nil {
			live = append(live, sl)
		}
	}
	dropped := 0
	leave := func(sl *slot) {
		sl.drop()
		dropped++
	}
	defer func() {
		for _, sl := range rr.slots {
			if sl != nil {
				close(sl.results)
			}
		}
		// Let handlers flush the last results before the round's end resets them.
		// After an early stop their readers may still hold parts: take them.
		for _, sl := range live {
			a.mu.Lock()
			attached := sl.attached
			a.mu.Unlock()
			chunks := sl.chunks
			for attached {
				select {
				case b, ok := <-chunks:
					if ok {
						a.putBuf(b)
					} else {
						chunks = nil // closed: wait for exited only
					}
				case <-sl.exited:
					attached = false
				case <-ctx.Done():
					attached = false
				}
			}
		}
	}()

	lo, hi := shardRange(rr.n, len(rr.members), rr.index)
	cf := a.o.ChunkFloats
	own := a.getBuf()
	defer a.putBuf(own)
	parts := make([][]float32, 0, len(rr.members))
	weights := make([]float64, 0, len(rr.members))
	bufs := make([][]float32, 0, len(rr.members))
	for c, clo := 0, lo; clo < hi; c, clo = c+1, clo+cf {
		chi := min(clo+cf, hi)
		m := chi - clo
		mine := own[:m]
		a.src.Read(clo, mine)
		parts = append(parts[:0], mine)
		weights = append(weights[:0], weight)
		bufs = bufs[:0]
		stall := time.NewTimer(a.o.StallTimeout)
		expired := false
		kept := live[:0]
		for _, sl := range live {
			var buf []float32
			ok := false
			if expired {
				select {
				case buf, ok = <-sl.chunks:
				default:
				}
			} else {
				select {
				case buf, ok = <-sl.chunks:
				case <-sl.ctx.Done(): // dropped elsewhere: its peer left, or its stream broke
				case <-stall.C:
					expired = true
					select {
					case buf, ok = <-sl.chunks:
					default:
					}
				case <-ctx.Done():
					stall.Stop()
					return dropped
				}
			}
			if !ok || sl.ctx.Err() != nil {
				if ok {
					a.putBuf(buf)
				}
				leave(sl)
				continue
			}
			kept = append(kept, sl)
			bufs = append(bufs, buf)
			parts = append(parts, buf[:m])
			weights = append(weights, sl.weight)
		}
		live = kept
		stall.Stop()

		// The reduction goes straight into the result's frame; we hold one
		// reference to it until its delta is applied here.
		p := a.newPayload(len(live) + 1)
		o := p.vals(m)
		err := a.o.Reducer(parts, weights, o)
		if err == nil {
			err = codec.CheckFinite(o)
		}
		for _, b := range bufs {
			a.putBuf(b)
		}
		if err == nil {
			// Apply exactly what the senders will decode.
			if p.f, err = p.frame(a.o.Codec, rr.index, c, m, true); err != nil {
				err = fmt.Errorf("result in %s: %w", a.o.Codec, err)
			}
		}
		if err != nil {
			p.refs.Store(1)
			p.release(a)
			a.o.Logger.Info("averaging reducer failed", "key", a.o.Key, "round", rr.round, "chunk", c, "err", err)
			return dropped + 1
		}
		if len(live) > 0 {
			stall.Reset(a.o.StallTimeout)
			kept = live[:0]
			for _, sl := range live {
				select {
				case sl.results <- p:
					kept = append(kept, sl)
				case <-sl.ctx.Done():
					dropped++
				case <-stall.C:
					leave(sl)
					stall.Reset(0) // the others get no more time than this one had
				case <-ctx.Done():
					stall.Stop()
					return dropped
				}
			}
			live = kept
			stall.Stop()
		}
		subFinite(mine, o) // o was checked above
		a.src.Add(clo, mine)
		p.release(a)
		progress.Store(int64(c + 1))
	}
	return dropped
}

// handleReduce receives one sender's part of our shard: it finds the round by
// group id (the sender may have heard the leader's confirmation first), checks
// that the sender is who it says, then feeds the part to the reducer and returns
// the results.
func (a *Averager) handleReduce(s network.Stream) {
	select {
	case a.sem <- struct{}{}:
		defer func() { <-a.sem }()
	default:
		s.Reset()
		return
	}
	// A sender writes its header at once; one that dawdles holds a handler slot
	// for one matchmaking window at most, then waits at most one more for its round.
	_ = s.SetDeadline(time.Now().Add(2 * a.o.Matchmaking))
	var h partHeader
	if err := readJSON(s, frameHeader, &h); err != nil {
		s.Reset()
		return
	}
	wctx, wcancel := context.WithDeadline(a.ctx, time.Now().Add(a.o.Matchmaking))
	var rr *reduceRound
	a.waitFor(wctx, func() bool { rr = a.rounds[h.Group]; return rr != nil })
	wcancel()
	reject := func(format string, args ...any) {
		_ = wire.WriteTyped(s, frameError, fmt.Appendf(nil, format, args...))
		s.Close()
	}
	if rr == nil {
		reject("no round with group %.40q", h.Group)
		return
	}
	from := s.Conn().RemotePeer()
	switch {
	case h.From < 0 || h.From >= len(rr.members) || h.From == rr.index || rr.members[h.From] != from:
		reject("sender index %d does not match peer %s", h.From, from.ShortString())
		return
	case h.Shard != rr.index || h.Round != rr.round || h.Len != rr.n:
		reject("part of shard %d round %d len %d, want shard %d round %d len %d", h.Shard, h.Round, h.Len, rr.index, rr.round, rr.n)
		return
	case !(h.Weight >= 0) || math.IsInf(h.Weight, 0):
		reject("bad weight %v", h.Weight)
		return
	}
	sl := rr.slots[h.From]
	a.mu.Lock()
	taken := sl.attached
	sl.attached = true
	sl.weight = h.Weight
	a.mu.Unlock()
	if taken {
		reject("part sent twice")
		return
	}
	defer s.Close()
	defer close(sl.exited)
	_ = s.SetDeadline(rr.deadline)
	stop := context.AfterFunc(sl.ctx, func() { s.Reset() })
	defer stop()

	var wg sync.WaitGroup
	wg.Go(func() {
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
	})
	defer wg.Wait()

	lo, hi := shardRange(rr.n, len(rr.members), rr.index)
	cf := a.o.ChunkFloats
	var rbuf []byte
	defer close(sl.chunks)
	for c, clo := 0, lo; clo < hi; c, clo = c+1, clo+cf {
		buf := a.getBuf()
		var err error
		if rbuf, err = readChunk(s, rbuf, a.o.Codec, rr.index, c, buf[:min(cf, hi-clo)]); err != nil {
			a.putBuf(buf)
			sl.drop()
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

// subFinite sets d[k] = avg[k] − d[k], the delta that takes the values sent to
// their average, and reports whether every avg[k] is finite.
func subFinite(d, avg []float32) bool {
	avg = avg[:len(d)]
	var a0, a1 uint32
	k := 0
	for ; k+2 <= len(d); k += 2 {
		v, w := avg[k:k+2:k+2], d[k:k+2:k+2]
		a0 |= math.Float32bits(v[0])&0x7f800000 + 0x00800000
		a1 |= math.Float32bits(v[1])&0x7f800000 + 0x00800000
		w[0] = v[0] - w[0]
		w[1] = v[1] - w[1]
	}
	if k < len(d) {
		a0 |= math.Float32bits(avg[k])&0x7f800000 + 0x00800000
		d[k] = avg[k] - d[k]
	}
	return (a0|a1)&0x80000000 == 0
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

// payload is one result chunk, reduced in place after its frame's header room and
// shared by the writers of every sender's stream; it is recycled once the last
// of them wrote it.
type payload struct {
	chunkBuf
	f    []byte // the frame to write
	refs atomic.Int32
}

func (a *Averager) newPayload(refs int) *payload {
	p, _ := a.payloads.Get().(*payload)
	if p == nil {
		p = &payload{chunkBuf: chunkBuf{back: make([]float32, headFloats+a.o.ChunkFloats)}}
	}
	p.refs.Store(int32(max(refs, 1)))
	return p
}

// release drops one reference; the last one recycles p. A payload still queued
// for a dropped sender is never released and goes to the garbage collector.
func (p *payload) release(a *Averager) {
	if p.refs.Add(-1) == 0 {
		a.payloads.Put(p)
	}
}
