package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"swarmnode/codec"
)

// Stream is the part of a libp2p network.Stream a Conn needs.
type Stream interface {
	io.Reader
	io.Writer
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// Conn reads and writes frames on one stream. It is not safe for concurrent use:
// one goroutine owns a hop's stream.
type Conn struct {
	s          Stream
	r          *bufio.Reader
	maxPayload int
	traffic    *Counter

	shm          *Shm // large payloads go through it; nil: on the stream
	acceptShared bool // frames may name a shared-memory payload

	hdr  [HeaderSize]byte
	in   []byte // payload of the last frame read
	raw  []byte // decompressed payload
	out  []byte // frame being written
	zbuf []byte
}

// NewConn wraps s; frames over maxFrame bytes (header included) are refused both
// ways. The frames written are counted in traffic (nil: not counted).
func NewConn(s Stream, maxFrame int, traffic *Counter) *Conn {
	return &Conn{s: s, r: bufio.NewReaderSize(s, 64<<10), maxPayload: max(0, maxFrame-HeaderSize), traffic: traffic}
}

// ShareVia sends the payloads of MinShared bytes or more through m (see Shm)
// instead of the stream; nil sends every payload on the stream. Use it only
// towards a peer on this host that takes shared payloads.
func (c *Conn) ShareVia(m *Shm) { c.shm = m }

// AcceptShared lets the peer send payloads through shared memory; a frame that
// names one is otherwise refused as malformed.
func (c *Conn) AcceptShared() { c.acceptShared = true }

// Frame is a frame read from a Conn. Its payload is valid until the next Read.
type Frame struct {
	Header
	// Transfer is how long the payload took to arrive after the header: for a
	// payload of many packets sent at once, its size over the link's rate.
	Transfer time.Duration
	payload  []byte
	c        *Conn
}

// Read reads the next frame, which must arrive before deadline. An error frame is
// returned as a *RemoteError. A bad frame gives an error wrapping one of the
// package's sentinels; the stream is then out of step and should be closed after
// answering with WriteError. io.EOF means the peer closed cleanly between frames.
func (c *Conn) Read(deadline time.Time) (*Frame, error) {
	if err := c.s.SetReadDeadline(deadline); err != nil {
		return nil, fmt.Errorf("wire: set read deadline: %w", err)
	}
	if _, err := io.ReadFull(c.r, c.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: header: %v", ErrTruncated, err)
		}
		return nil, timeoutErr(err)
	}
	h, err := UnmarshalHeader(c.hdr[:], c.maxPayload)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	switch {
	case h.Shared() && !c.acceptShared:
		return nil, fmt.Errorf("%w: this peer takes no shared-memory payloads", ErrShared)
	case h.Shared():
		if c.in, err = readShared(c.r, c.in, h.PayloadLen); err != nil {
			return nil, err
		}
	default:
		if c.in, err = ReadPayload(c.r, c.in, h.PayloadLen); err != nil {
			return nil, bodyErr(err)
		}
	}
	if got, want := Checksum(c.hdr[:], c.in), uint32(c.hdr[44])|uint32(c.hdr[45])<<8|uint32(c.hdr[46])<<16|uint32(c.hdr[47])<<24; got != want {
		return nil, fmt.Errorf("%w: computed %08x, header says %08x", ErrChecksum, got, want)
	}
	if h.Kind == Error {
		return nil, parseError(&h, c.in)
	}
	return &Frame{Header: h, Transfer: time.Since(start), payload: c.in, c: c}, nil
}

// bodyErr is the error of a frame whose payload could not be read: the stream
// ended inside it, a deadline passed, or the stream failed.
func bodyErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: payload: %v", ErrTruncated, err)
	}
	return timeoutErr(err)
}

// timeoutErr wraps a read or write error that is a passed deadline in ErrTimeout.
func timeoutErr(err error) error {
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return err
}

// Expect checks the frame's kind and shape. Each of b, t, d is the exact size
// wanted, or 0 for any size not above the matching max* bound (0: unbounded).
func (f *Frame) Expect(kind Kind, b, t, d, maxT int) error {
	if f.Kind != kind {
		return fmt.Errorf("%w: got %v, want %v", ErrUnexpect, f.Kind, kind)
	}
	if f.B < 1 || f.T < 1 || f.D < 1 ||
		(b > 0 && f.B != b) || (t > 0 && f.T != t) || (d > 0 && f.D != d) || (maxT > 0 && f.T > maxT) {
		want := fmt.Sprintf("%s x %s x %s", dim(b), dim(t), dim(d))
		if maxT > 0 && t == 0 {
			want += fmt.Sprintf(" (T <= %d)", maxT)
		}
		return fmt.Errorf("%w: %v %dx%dx%d, want %s", ErrShape, f.Kind, f.B, f.T, f.D, want)
	}
	return nil
}

func dim(n int) string {
	if n == 0 {
		return "*"
	}
	return fmt.Sprint(n)
}

func (f *Frame) plain() ([]byte, error) {
	if !f.Zstd {
		return f.payload, nil
	}
	raw, err := codec.Unzstd(f.c.raw, f.payload, f.Format().Len(f.N()))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPayload, err)
	}
	f.c.raw = raw
	return raw, nil
}

// Floats decodes a float tensor into dst (reallocated if short) and returns it.
func (f *Frame) Floats(dst []float32) ([]float32, error) {
	return decodeTensor(f, Float32, dst, f.Format().Decode)
}

// Ints decodes an int32 tensor (token ids, targets) whose values must be in [0, limit).
func (f *Frame) Ints(dst []int32, limit int) ([]int32, error) {
	return decodeTensor(f, Int32, dst, func(dst []int32, p []byte) error { return codec.DecodeIntsAs(dst, p, f.Codec, limit) })
}

// decodeTensor decodes f's tensor, which must be of type dt, into dst (reallocated
// if short) and returns it.
func decodeTensor[T float32 | int32](f *Frame, dt DType, dst []T, decode func([]T, []byte) error) ([]T, error) {
	if f.DType != dt {
		return nil, fmt.Errorf("%w: %v frame holds no %s tensor", ErrUnexpect, f.Kind, dtypeNames[dt])
	}
	p, err := f.plain()
	if err != nil {
		return nil, err
	}
	dst = slices.Grow(dst[:0], f.N())[:f.N()]
	if err := decode(dst, p); err != nil {
		return nil, wrapCodec(err)
	}
	return dst, nil
}

// Int8Wire returns a copy of an int8 float frame's payload (zstd undone): the
// tensor in the int8 wire layout, for a receiver that dequantizes it itself (a
// GPU stage). Only the length is checked here; the receiver checks the scales.
func (f *Frame) Int8Wire() ([]byte, error) {
	if f.DType != Float32 || f.Codec != codec.Int8 {
		return nil, fmt.Errorf("%w: %v frame of codec %v is no int8 tensor", ErrUnexpect, f.Kind, f.Codec)
	}
	p, err := f.plain()
	if err != nil {
		return nil, err
	}
	if want := f.Format().Len(f.N()); len(p) != want {
		return nil, fmt.Errorf("%w: %d int8 values in blocks of %d take %d bytes, got %d", ErrPayload, f.N(), f.Block, want, len(p))
	}
	return append([]byte(nil), p...), nil
}

// wrapCodec wraps a codec error in the frame error that reports it.
func wrapCodec(err error) error {
	switch {
	case errors.Is(err, codec.ErrNonFinite):
		return fmt.Errorf("%w: %v", ErrNonFinite, err)
	case errors.Is(err, codec.ErrRange):
		return fmt.Errorf("%w: %v", ErrRange, err)
	}
	return fmt.Errorf("%w: %v", ErrPayload, err)
}

// Encoding says how WriteFloats encodes a tensor.
type Encoding struct {
	Codec codec.Kind
	Block int
	// Link decides whether to zstd the payload and learns from each send; nil: never.
	Link *codec.Link
}

func (c *Conn) write(h *Header, deadline time.Time) error {
	p := c.out[HeaderSize:]
	if len(p) > c.maxPayload {
		return fmt.Errorf("%w: %v payload of %d bytes exceeds the cap of %d", ErrOversize, h.Kind, len(p), c.maxPayload)
	}
	msg := c.out
	if c.shm != nil && len(p) >= MinShared {
		// A full /dev/shm (Docker's is 64 MiB) or any other failure to write
		// the file sends the payload on the stream instead.
		if name, err := c.shm.put(p); err == nil {
			h.Flags |= FlagShared
			msg = append(make([]byte, HeaderSize, HeaderSize+len(name)), name...)
		}
	}
	MarshalHeader(msg[:HeaderSize], h, p)
	if err := c.s.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("wire: set write deadline: %w", err)
	}
	if _, err := c.s.Write(msg); err != nil {
		return timeoutErr(err)
	}
	raw := int64(len(c.out))
	if h.DType == Float32 || h.DType == Int32 {
		raw = HeaderSize + 4*int64(h.N())
	}
	c.traffic.add(int64(len(c.out)), raw)
	return nil
}

// WriteFloats writes a float tensor frame (Activations or Gradient); h supplies the
// kind, flags, stage, id, shape and loss; the rest is filled in.
func (c *Conn) WriteFloats(h Header, x []float32, enc Encoding, deadline time.Time) error {
	if len(x) != h.N() {
		return fmt.Errorf("%w: %d values for shape %dx%dx%d", ErrShape, len(x), h.B, h.T, h.D)
	}
	h.DType, h.Codec, h.Block, h.Zstd = Float32, enc.Codec, enc.Block, false
	if h.Codec != codec.Int8 {
		h.Block = 0
	}
	var err error
	if c.out, err = h.Format().Append(c.header(), x); err != nil {
		return err
	}
	return c.send(&h, enc, deadline)
}

// send writes the frame whose payload is in c.out, zstd-compressed first when
// enc.Link says the link is the bottleneck.
func (c *Conn) send(h *Header, enc Encoding, deadline time.Time) error {
	if enc.Link != nil && enc.Link.UseZstd() {
		start := time.Now()
		z, err := codec.Zstd(append(c.zbuf[:0], c.out[:HeaderSize]...), c.out[HeaderSize:])
		if err != nil {
			return err
		}
		enc.Link.ObserveZstd(len(c.out)-HeaderSize, len(z)-HeaderSize, time.Since(start))
		// Send compressed only where it is smaller: zstd gains nothing on some data.
		if len(z) < len(c.out) {
			c.out, c.zbuf = z, c.out
			h.Zstd = true
		} else {
			c.zbuf = z
		}
	}
	start := time.Now()
	if err := c.write(h, deadline); err != nil {
		return err
	}
	if enc.Link != nil {
		enc.Link.ObserveSend(len(c.out), time.Since(start))
	}
	return nil
}

// WriteInt8Wire writes a float tensor frame whose payload is already in the
// int8 wire layout with blocks of block values (quantized on a GPU); enc.Link
// may add zstd as in WriteFloats.
func (c *Conn) WriteInt8Wire(h Header, msg []byte, block int, enc Encoding, deadline time.Time) error {
	if want := (codec.Format{Kind: codec.Int8, Block: block}).Len(h.N()); want < 0 || len(msg) != want {
		return fmt.Errorf("%w: %d bytes of int8 (block %d) for shape %dx%dx%d", ErrShape, len(msg), block, h.B, h.T, h.D)
	}
	h.DType, h.Codec, h.Block, h.Zstd = Float32, codec.Int8, block, false
	c.out = append(c.header(), msg...)
	return c.send(&h, enc, deadline)
}

// header resets the output buffer to an empty header, ready for a payload.
func (c *Conn) header() []byte {
	if cap(c.out) < HeaderSize {
		c.out = make([]byte, HeaderSize, 64<<10)
	}
	return c.out[:HeaderSize]
}

// WriteInts writes an int tensor frame (Tokens or Targets).
func (c *Conn) WriteInts(h Header, x []int32, deadline time.Time) error {
	if len(x) != h.N() {
		return fmt.Errorf("%w: %d values for shape %dx%dx%d", ErrShape, len(x), h.B, h.T, h.D)
	}
	h.DType, h.Codec, h.Block, h.Zstd = Int32, codec.IntKind(x), 0, false
	c.out = codec.EncodeIntsAs(c.header(), x, h.Codec)
	return c.write(&h, deadline)
}

// WriteResult answers with the microbatch's loss and no tensor: the answer to an
// eval request, and stage 0's answer in training (it has no input gradient).
func (c *Conn) WriteResult(id uint64, stage int, flags uint8, loss float32, deadline time.Time) error {
	c.out = c.header()
	return c.write(&Header{Kind: Result, Flags: flags, ID: id, Stage: stage, Loss: loss}, deadline)
}

// WriteError answers with an error frame carrying err's code and message.
func (c *Conn) WriteError(id uint64, stage int, err error, deadline time.Time) error {
	c.out = append(c.header(), errorPayload(CodeOf(err), err.Error())...)
	return c.write(&Header{Kind: Error, ID: id, Stage: stage}, deadline)
}
