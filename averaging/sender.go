package averaging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"swarmnode/codec"
	"swarmnode/wire"
)

// sendShard sends shard j of our vector to its reducer, member j, and applies
// the results that come back, on one stream:
//
//  1. the part's header: the group, our index, the shard, our weight;
//  2. the shard's chunks, each read from the source just before it is sent
//     (writeParts, in its own goroutine);
//  3. meanwhile each chunk's result, in order: the delta from the values sent to
//     their average goes to the source (applyResults).
//
// At most sendDepth chunks are in flight, each in its own buffer until its
// result is back.
func (a *Averager) sendShard(ctx context.Context, rr *reduceRound, j int, weight float64, tk *auditTicket, progress *atomic.Int64) error {
	s, err := a.h.NewStream(ctx, rr.members[j], a.reduceProto)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(rr.deadline)
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	hdr := partHeader{Group: rr.id, Round: rr.round, From: rr.index, Shard: j, Weight: weight, Len: rr.n}
	if err := wire.WriteJSON(s, frameHeader, hdr); err != nil {
		s.Reset()
		return err
	}

	snd := a.newShardSender(rr, s, j)
	snd.ticket = tk
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { snd.writeParts(wctx) })
	defer func() {
		wcancel()
		wg.Wait()
		snd.recycle()
	}()
	return snd.applyResults(progress)
}

// declineShard tells reducer j that we send it nothing this round: the
// part's header, then the end of the stream, which leaves us out of its shard
// at once (receiveParts reads the end as a sender gone).
func (a *Averager) declineShard(ctx context.Context, rr *reduceRound, j int) {
	s, err := a.h.NewStream(ctx, rr.members[j], a.reduceProto)
	if err != nil {
		return
	}
	_ = s.SetDeadline(rr.deadline)
	hdr := partHeader{Group: rr.id, Round: rr.round, From: rr.index, Shard: j, Len: rr.n}
	if err := wire.WriteJSON(s, frameHeader, hdr); err != nil {
		s.Reset()
		return
	}
	_ = s.Close()
}

// shardSender is our end of the reduce stream of one shard.
type shardSender struct {
	a        *Averager
	s        network.Stream
	deadline time.Time // the round's
	shard    int
	chunks   iter.Seq[chunk]
	// free holds the buffers ready for a chunk; sent, in order, the chunks whose
	// part was written and whose result is awaited. Together they hold the
	// sendDepth buffers, so neither send blocks.
	free, sent chan *chunkBuf

	res  []float32 // a result read in fp32
	rbuf []byte    // a result's encoded values in another codec
	raw  bool      // results are read straight into res

	ticket *auditTicket // the chunk we audit, nil if none
}

func (a *Averager) newShardSender(rr *reduceRound, s network.Stream, j int) *shardSender {
	depth := a.sendDepth()
	snd := &shardSender{
		a: a, s: s, deadline: rr.deadline, shard: j, chunks: rr.shardChunks(j, a.o.ChunkFloats),
		free: make(chan *chunkBuf, depth), sent: make(chan *chunkBuf, depth),
	}
	for range depth {
		snd.free <- a.getChunk()
	}
	return snd
}

// writeParts reads each chunk from the source into a free buffer and writes its
// frame, then closes our side of the stream. It stops early when ctx ends or a
// write fails; the stream is then reset, which ends applyResults too.
func (snd *shardSender) writeParts(ctx context.Context) {
	defer close(snd.sent)
	for ch := range snd.chunks {
		var b *chunkBuf
		select {
		case b = <-snd.free:
		case <-ctx.Done():
			return
		}
		snd.a.src.Read(ch.off, b.vals(ch.n))
		// One Write per frame: a muxed stream turns each Write into its own
		// frame.
		f, err := b.frame(snd.a.o.Codec, snd.shard, ch.index, ch.n, false)
		if err == nil && snd.ticket != nil && snd.ticket.chunk == ch.index {
			snd.ticket.part = bytes.Clone(f[chunkHeads:])
		}
		if err == nil {
			_, err = snd.s.Write(f)
		}
		if err != nil {
			snd.free <- b
			snd.s.Reset()
			return
		}
		snd.sent <- b
	}
	_ = snd.s.CloseWrite()
}

// recycle returns every buffer to the pool once writeParts has returned.
func (snd *shardSender) recycle() {
	for b := range snd.sent {
		snd.a.chunks.Put(b)
	}
	for len(snd.free) > 0 {
		snd.a.chunks.Put(<-snd.free)
	}
}

// applyResults applies each chunk's result as it comes back. The first that
// fails (lost, late, malformed or not finite) resets the stream, and the rest of
// the shard keeps our local values.
func (snd *shardSender) applyResults(progress *atomic.Int64) error {
	a := snd.a
	snd.res = a.getBuf()
	defer a.putBuf(snd.res)
	_, native := codec.FP32View(snd.res)
	snd.raw = native && a.o.Codec == codec.FP32
	for ch := range snd.chunks {
		if err := snd.applyResult(ch); err != nil {
			snd.s.Reset()
			return fmt.Errorf("result chunk %d: %w", ch.index, err)
		}
		progress.Store(int64(ch.index + 1))
	}
	return nil
}

// applyResult reads the result of chunk ch and adds average − values sent to the
// source. Results are checked for NaN and Inf while the delta is taken: fp32 is
// read straight into res, other codecs are decoded straight into the delta.
func (snd *shardSender) applyResult(ch chunk) error {
	a, kind := snd.a, snd.a.o.Codec
	// A reducer may wait StallTimeout for the slowest part before it answers;
	// one that takes twice that is hanging, and its shard stays local.
	if t := time.Now().Add(2 * a.o.StallTimeout); t.Before(snd.deadline) {
		_ = snd.s.SetReadDeadline(t)
	}
	out := snd.res[:ch.n]
	var err error
	if snd.raw {
		snd.rbuf, err = readChunkTo(snd.s, snd.rbuf, kind, snd.shard, ch.index, out, false)
	} else if err = readChunkHead(snd.s, kind, snd.shard, ch.index, ch.n); err == nil {
		snd.rbuf, err = wire.ReadPayload(snd.s, snd.rbuf, wireFormat(kind).Len(ch.n))
	}
	if err != nil {
		return err
	}
	// A result that overtakes its part waits for the part to be written.
	b, ok := <-snd.sent
	if !ok {
		return errors.New("its part was not sent")
	}
	d := b.vals(ch.n)
	if snd.raw {
		if !subFinite(d, out) {
			err = codec.CheckFinite(out)
		}
	} else {
		err = wireFormat(kind).DecodeSub(d, snd.rbuf)
	}
	if err != nil {
		a.chunks.Put(b)
		return err
	}
	if snd.ticket != nil && snd.ticket.chunk == ch.index {
		if snd.raw {
			enc, _ := codec.FP32View(out)
			snd.ticket.result = bytes.Clone(enc)
		} else {
			snd.ticket.result = bytes.Clone(snd.rbuf)
		}
	}
	a.src.Add(ch.off, d)
	snd.free <- b
	return nil
}
