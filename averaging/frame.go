package averaging

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"swarmnode/codec"
	"swarmnode/wire"
)

// Frame types. Every message on every averaging stream is one typed frame
// (wire.WriteTyped): a little-endian uint32 length n, then n bytes: one type byte
// and the payload.
const (
	frameJoin     byte = 1 // member → leader: joinMsg (JSON)
	frameGroup    byte = 2 // leader → member: groupMsg (JSON)
	frameHeader   byte = 3 // sender → reducer: partHeader (JSON)
	frameChunk    byte = 4 // both ways on a reduce stream: one chunk (binary)
	frameError    byte = 5 // any direction: a UTF-8 reason, then the stream ends
	frameStateReq byte = 6 // fetcher → holder: stateReq (JSON)
	frameManifest byte = 7 // holder → fetcher: manifest (JSON)
	frameShard    byte = 8 // holder → fetcher: raw little-endian float32 of one slice of a shard
	frameAuditReq byte = 9 // auditor → reducer: auditReq (JSON)
	// frameAuditReply is reducer → auditor: auditReply (JSON), then the parts as chunk frames.
	frameAuditReply byte = 10
)

const (
	// maxControl bounds JSON control frames; the largest is a manifest.
	maxControl = 1 << 20
	// maxChunkFloats bounds the values in one chunk frame, whatever a peer claims.
	maxChunkFloats = 1 << 22
	chunkHead      = 13 // codec u8, shard u32, chunk u32, count u32
	// chunkHeads is the size of a chunk frame's frame header and chunk header.
	chunkHeads = wire.TypedHeaderSize + chunkHead
)

// int8Block is the number of values sharing one int8 scale on the averaging wire.
const int8Block = 64

// wireFormat is the encoding of chunks in codec k: int8 in blocks of int8Block
// values with their scales first (the averaging protocol's layout).
func wireFormat(k codec.Kind) codec.Format {
	return codec.Format{Kind: k, Block: int8Block, Layout: codec.Planar}
}

// errRemote is wrapped by errors a peer reported in an error frame.
var errRemote = errors.New("peer reported")

// remoteErr is the error of an error frame's payload.
func remoteErr(payload []byte) error { return fmt.Errorf("%w: %.200q", errRemote, payload) }

// writeErrorf tells the peer why its request is refused, in an error frame. The
// caller then ends the exchange; a failed write needs no handling, as the
// stream ends anyway.
func writeErrorf(w io.Writer, format string, args ...any) {
	_ = wire.WriteTyped(w, frameError, fmt.Appendf(nil, format, args...))
}

// readJSON reads one frame that must be of type want and decodes it into v. An
// error frame becomes an error wrapping errRemote.
func readJSON(r io.Reader, want byte, v any) error {
	typ, payload, _, err := wire.ReadTyped(r, nil, maxControl)
	if err != nil {
		return err
	}
	return decodeJSON(typ, payload, want, v)
}

func decodeJSON(typ byte, payload []byte, want byte, v any) error {
	if typ == frameError {
		return remoteErr(payload)
	}
	if typ != want {
		return fmt.Errorf("frame type %d, want %d", typ, want)
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("frame type %d: %w", typ, err)
	}
	return nil
}

// putChunkHeads writes a chunk frame's frame header and chunk header (chunkHeads
// bytes) to h, for count values in codec k.
func putChunkHeads(h []byte, k codec.Kind, shard, index, count int) {
	h = h[:chunkHeads]
	wire.PutTypedHeader(h, frameChunk, chunkHead+wireFormat(k).Len(count))
	h[5] = byte(k)
	binary.LittleEndian.PutUint32(h[6:], uint32(shard))
	binary.LittleEndian.PutUint32(h[10:], uint32(index))
	binary.LittleEndian.PutUint32(h[14:], uint32(count))
}

// readChunk reads the next frame, which must be the chunk (shard, index) of
// len(out) values in codec k, and decodes it into out. fp32 on a little-endian
// machine is read straight into out.
func readChunk(r io.Reader, buf []byte, k codec.Kind, shard, index int, out []float32) ([]byte, error) {
	return readChunkTo(r, buf, k, shard, index, out, true)
}

// readChunkTo is readChunk; with check unset, fp32 values are not checked for
// NaN and Inf, which the caller then does in its own pass over them.
func readChunkTo(r io.Reader, buf []byte, k codec.Kind, shard, index int, out []float32, check bool) ([]byte, error) {
	if err := readChunkHead(r, k, shard, index, len(out)); err != nil {
		return buf, err
	}
	if view, ok := codec.FP32View(out); ok && k == codec.FP32 {
		if _, err := io.ReadFull(r, view); err != nil {
			return buf, err
		}
		if !check {
			return buf, nil
		}
		if err := codec.CheckFinite(out); err != nil {
			return buf, fmt.Errorf("chunk %d of shard %d: %w", index, shard, err)
		}
		return buf, nil
	}
	f := wireFormat(k)
	buf, err := wire.ReadPayload(r, buf, f.Len(len(out)))
	if err != nil {
		return buf, err
	}
	if err := f.Decode(out, buf); err != nil {
		return buf, fmt.Errorf("chunk %d of shard %d: %w", index, shard, err)
	}
	return buf, nil
}

// readChunkHead reads the frame header and chunk header of the next frame, which
// must be the chunk (shard, index) of count values in codec k; its encoded values
// follow on r. An error frame becomes an error wrapping errRemote.
func readChunkHead(r io.Reader, k codec.Kind, shard, index, count int) error {
	size := chunkHead + wireFormat(k).Len(count)
	typ, n, err := wire.ReadTypedHeader(r, 1+max(size, maxControl))
	switch {
	case err != nil:
		return err
	case typ == frameError && n < maxControl:
		msg, err := wire.ReadPayload(r, nil, n)
		if err != nil {
			return err
		}
		return remoteErr(msg)
	case typ != frameChunk:
		return fmt.Errorf("frame type %d, want chunk", typ)
	case n != size:
		return fmt.Errorf("chunk frame of %d bytes, want %d", 1+n, 1+size)
	}
	var ch [chunkHead]byte
	if _, err := io.ReadFull(r, ch[:]); err != nil {
		return err
	}
	gk := codec.Kind(ch[0])
	gs, gi, gc := binary.LittleEndian.Uint32(ch[1:]), binary.LittleEndian.Uint32(ch[5:]), binary.LittleEndian.Uint32(ch[9:])
	if gk != k || int(gs) != shard || int(gi) != index || int(gc) != count {
		return fmt.Errorf("chunk %s shard %d #%d of %d values, want %s shard %d #%d of %d",
			gk, gs, gi, gc, k, shard, index, count)
	}
	return nil
}
