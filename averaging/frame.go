package averaging

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Frame types. Every message on every averaging stream is one frame:
// a little-endian uint32 length n, then n bytes: one type byte and the payload.
const (
	frameJoin     byte = 1 // member → leader: joinMsg (JSON)
	frameGroup    byte = 2 // leader → member: groupMsg (JSON)
	frameHeader   byte = 3 // sender → reducer: partHeader (JSON)
	frameChunk    byte = 4 // both ways on a reduce stream: one chunk (binary)
	frameError    byte = 5 // any direction: a UTF-8 reason, then the stream ends
	frameStateReq byte = 6 // fetcher → holder: stateReq (JSON)
	frameManifest byte = 7 // holder → fetcher: manifest (JSON)
	frameShard    byte = 8 // holder → fetcher: raw little-endian float32 of one slice of a shard
)

const (
	// maxControl bounds JSON control frames; the largest is a manifest.
	maxControl = 1 << 20
	// maxChunkFloats bounds the values in one chunk frame, whatever a peer claims.
	maxChunkFloats = 1 << 22
	chunkHead      = 13 // codec u8, shard u32, chunk u32, count u32
)

// errRemote is wrapped by errors a peer reported in an error frame.
var errRemote = errors.New("peer reported")

// writeFrame writes one frame. Callers set deadlines on the stream.
func writeFrame(w io.Writer, typ byte, payload []byte) error {
	var h [5]byte
	binary.LittleEndian.PutUint32(h[:], uint32(1+len(payload)))
	h[4] = typ
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// writeJSON writes v as a JSON frame of type typ.
func writeJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFrame(w, typ, b)
}

// readFrame reads one frame of at most limit bytes into buf (grown as needed) and
// returns its type and payload, which aliases buf.
func readFrame(r io.Reader, buf []byte, limit int) (byte, []byte, []byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, buf, err
	}
	n := int(binary.LittleEndian.Uint32(h[:]))
	if n < 1 || n > limit {
		return 0, nil, buf, fmt.Errorf("frame of %d bytes (limit %d)", n, limit)
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, buf, fmt.Errorf("frame body: %w", err)
	}
	return buf[0], buf[1:], buf, nil
}

// readJSON reads one frame that must be of type want and decodes it into v. An
// error frame becomes an error wrapping errRemote.
func readJSON(r io.Reader, want byte, v any) error {
	typ, payload, _, err := readFrame(r, nil, maxControl)
	if err != nil {
		return err
	}
	return decodeJSON(typ, payload, want, v)
}

func decodeJSON(typ byte, payload []byte, want byte, v any) error {
	if typ == frameError {
		return fmt.Errorf("%w: %.200q", errRemote, payload)
	}
	if typ != want {
		return fmt.Errorf("frame type %d, want %d", typ, want)
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("frame type %d: %w", typ, err)
	}
	return nil
}

// chunk is the decoded header of a chunk frame.
type chunk struct {
	codec Codec
	shard int
	index int
	count int
	data  []byte // encoded values, aliases the frame
}

// appendChunk appends a chunk frame's payload (without the frame header).
func appendChunk(dst []byte, c Codec, shard, index int, vals []float32) []byte {
	var h [chunkHead]byte
	h[0] = byte(c)
	binary.LittleEndian.PutUint32(h[1:], uint32(shard))
	binary.LittleEndian.PutUint32(h[5:], uint32(index))
	binary.LittleEndian.PutUint32(h[9:], uint32(len(vals)))
	dst = append(dst, h[:]...)
	return c.encode(dst, vals)
}

// parseChunk checks a chunk payload's header and size; values are decoded later
// into the receiver's buffer.
func parseChunk(payload []byte) (chunk, error) {
	if len(payload) < chunkHead {
		return chunk{}, fmt.Errorf("chunk frame of %d bytes", len(payload))
	}
	c := chunk{
		codec: Codec(payload[0]),
		shard: int(binary.LittleEndian.Uint32(payload[1:])),
		index: int(binary.LittleEndian.Uint32(payload[5:])),
		count: int(binary.LittleEndian.Uint32(payload[9:])),
		data:  payload[chunkHead:],
	}
	if !c.codec.valid() {
		return chunk{}, fmt.Errorf("chunk: unknown codec %d", payload[0])
	}
	if c.count < 1 || c.count > maxChunkFloats {
		return chunk{}, fmt.Errorf("chunk: %d values", c.count)
	}
	if want := c.codec.encodedLen(c.count); len(c.data) != want {
		return chunk{}, fmt.Errorf("chunk: %d bytes for %d %s values, want %d", len(c.data), c.count, c.codec, want)
	}
	return c, nil
}

// putChunkHeads writes a chunk frame's header and chunk header (5+chunkHead bytes)
// to h, for count values in codec c.
func putChunkHeads(h []byte, c Codec, shard, index, count int) {
	h = h[:5+chunkHead]
	binary.LittleEndian.PutUint32(h, uint32(1+chunkHead+c.encodedLen(count)))
	h[4] = frameChunk
	h[5] = byte(c)
	binary.LittleEndian.PutUint32(h[6:], uint32(shard))
	binary.LittleEndian.PutUint32(h[10:], uint32(index))
	binary.LittleEndian.PutUint32(h[14:], uint32(count))
}

// writeChunk writes one chunk frame of vals, encoded in buf.
func writeChunk(w io.Writer, buf []byte, c Codec, shard, index int, vals []float32) ([]byte, error) {
	// One Write per frame: a muxed stream turns each Write into its own frame
	// and waits for it to be sent.
	buf = binary.LittleEndian.AppendUint32(buf[:0], uint32(1+chunkHead+c.encodedLen(len(vals))))
	buf = append(buf, frameChunk)
	buf = appendChunk(buf, c, shard, index, vals)
	_, err := w.Write(buf)
	return buf, err
}

// readChunk reads the next frame, which must be the chunk (shard, index) of
// len(out) values in codec, and decodes it into out. fp32 on a little-endian
// machine is read straight into out.
func readChunk(r io.Reader, buf []byte, codec Codec, shard, index int, out []float32) ([]byte, error) {
	return readChunkTo(r, buf, codec, shard, index, out, true)
}

// readChunkTo is readChunk; with check unset, fp32 values are not checked for
// NaN and Inf, which the caller then does in its own pass over them.
func readChunkTo(r io.Reader, buf []byte, codec Codec, shard, index int, out []float32, check bool) ([]byte, error) {
	if err := readChunkHead(r, codec, shard, index, len(out)); err != nil {
		return buf, err
	}
	if codec == FP32 && nativeLE {
		if _, err := io.ReadFull(r, f32bytes(out)); err != nil {
			return buf, err
		}
		if !check {
			return buf, nil
		}
		if err := checkFinite(out); err != nil {
			return buf, fmt.Errorf("chunk %d of shard %d: %w", index, shard, err)
		}
		return buf, nil
	}
	buf, err := readPayload(r, buf, codec.encodedLen(len(out)))
	if err != nil {
		return buf, err
	}
	if err := codec.decode(buf, out); err != nil {
		return buf, fmt.Errorf("chunk %d of shard %d: %w", index, shard, err)
	}
	return buf, nil
}

// readPayload reads the m encoded bytes of a chunk whose header was read into buf,
// grown as needed.
func readPayload(r io.Reader, buf []byte, m int) ([]byte, error) {
	if cap(buf) < m {
		buf = make([]byte, m)
	}
	buf = buf[:m]
	_, err := io.ReadFull(r, buf)
	return buf, err
}

// readChunkHead reads the frame header and chunk header of the next frame, which
// must be the chunk (shard, index) of count values in codec; its encoded values
// follow on r. An error frame becomes an error wrapping errRemote.
func readChunkHead(r io.Reader, codec Codec, shard, index, count int) error {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return err
	}
	n := int(binary.LittleEndian.Uint32(h[:]))
	want := 1 + chunkHead + codec.encodedLen(count)
	switch {
	case h[4] == frameError && n >= 1 && n <= maxControl:
		msg := make([]byte, n-1)
		if _, err := io.ReadFull(r, msg); err != nil {
			return err
		}
		return fmt.Errorf("%w: %.200q", errRemote, msg)
	case h[4] != frameChunk:
		return fmt.Errorf("frame type %d, want chunk", h[4])
	case n != want:
		return fmt.Errorf("chunk frame of %d bytes, want %d", n, want)
	}
	var ch [chunkHead]byte
	if _, err := io.ReadFull(r, ch[:]); err != nil {
		return err
	}
	c := chunk{
		codec: Codec(ch[0]),
		shard: int(binary.LittleEndian.Uint32(ch[1:])),
		index: int(binary.LittleEndian.Uint32(ch[5:])),
		count: int(binary.LittleEndian.Uint32(ch[9:])),
	}
	if c.codec != codec || c.shard != shard || c.index != index || c.count != count {
		return fmt.Errorf("chunk %s shard %d #%d of %d values, want %s shard %d #%d of %d",
			c.codec, c.shard, c.index, c.count, codec, shard, index, count)
	}
	return nil
}
