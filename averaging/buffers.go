package averaging

import (
	"math"
	"slices"
	"sync/atomic"

	"swarmnode/codec"
)

// A round's chunk buffers go back to the Averager's pools, so that rounds reuse
// them rather than allocate per chunk: a sender's chunks (chunkBuf), a reducer's
// results (payload), and the parts it decoded and our own values ([]float32).

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
