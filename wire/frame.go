// Package wire holds the frame formats of swarmnode's streams, with their limits,
// errors and traffic counters: the tensor frames of the stage protocol (package
// pipeline), read and written by a Conn, and the typed frames of the averaging
// protocol (package averaging), a length, a type byte and a payload (typed.go).
// Between peers of one host a large payload may lie in a file in /dev/shm
// instead, the stream carrying its name (shm.go).
//
// A tensor frame is a small versioned, checksummed header and a payload holding one
// tensor (token ids, targets, activations or gradients, encoded by package codec
// with int8 in its Interleaved layout) or a typed error. On the wire:
//
//	off size field
//	  0    3 magic "SWF"
//	  3    1 version (1)
//	  4    1 kind (tokens, targets, activations, gradient, result, error)
//	  5    1 flags (1 eval: forward only; 2 shared: the payload is in a shared-memory
//	         file, and the stream carries its 96-byte name instead, see shm.go)
//	  6    1 codec (codec.Kind in the low 7 bits: fp32, bf16, int8 for floats; int32,
//	         uint16, uint8 for ids, the smallest that holds them; 0x80: payload is
//	         zstd-compressed)
//	  7    1 dtype (1 float32, 2 int32)
//	  8    2 stage: the stage that receives a forward frame or sends a backward one
//	 10    2 budget: how long the sender waits for the answer, in 10 ms units (0: unsaid)
//	 12    4 int8 block size
//	 16    8 microbatch id
//	 24   12 shape B, T, D (uint32 each; D is 1 for token ids and targets)
//	 36    4 loss (float32; gradient and result frames carry the microbatch's loss)
//	 40    4 payload length
//	 44    4 CRC-32C of bytes 0..43 and the payload
//
// All integers are little-endian. Readers check everything before they trust it:
// sizes against a cap before allocating, the checksum before decoding, the shape
// against what the stage expects, and every decoded value for range and finiteness.
package wire

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"swarmnode/codec"
)

// HeaderSize is the size of a frame header in bytes.
const HeaderSize = 48

// Version is the frame format version this package reads and writes.
const Version = 1

var magic = [3]byte{'S', 'W', 'F'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Kind says what a frame carries.
type Kind uint8

// The frame kinds. A forward request is a Tokens (stage 0) or Activations frame
// (then, for a subspace model, a Tokens frame) followed by a Targets frame; the
// answer is a Gradient frame (training), a Result frame (eval) or an Error frame.
const (
	Tokens      Kind = 1
	Targets     Kind = 2
	Activations Kind = 3
	Gradient    Kind = 4
	Result      Kind = 5
	Error       Kind = 6
)

var kindNames = [...]string{Tokens: "tokens", Targets: "targets", Activations: "activations", Gradient: "gradient", Result: "result", Error: "error"}

// String names the kind for messages.
func (k Kind) String() string { return name(kindNames[:], int(k), "kind") }

// dtype is the decoded element type a kind carries.
func (k Kind) dtype() DType {
	switch k {
	case Tokens, Targets:
		return Int32
	case Activations, Gradient:
		return Float32
	}
	return None
}

// DType is the element type of a frame's tensor once decoded.
type DType uint8

// The element types.
const (
	None    DType = 0
	Float32 DType = 1
	Int32   DType = 2
)

var dtypeNames = [...]string{None: "no", Float32: "float", Int32: "int"}

// FlagEval marks a forward-only (evaluation) request: no gradient comes back.
const FlagEval uint8 = 1

// zstdBit in the codec byte says the payload is zstd-compressed.
const zstdBit = 0x80

// Header is a decoded frame header.
type Header struct {
	Kind    Kind
	Flags   uint8
	Codec   codec.Kind
	Zstd    bool
	DType   DType
	Stage   int
	Block   int
	ID      uint64
	B, T, D int
	Loss    float32
	// Budget is how long the sender of a request waits for its answer, so that the
	// receiver can give up on its own downstream in time to answer; 0 means unsaid.
	// It travels in 10 ms units, at most MaxBudget.
	Budget time.Duration
	// PayloadLen is the payload's length on the wire (after zstd).
	PayloadLen int
}

// Eval reports whether the frame belongs to a forward-only request.
func (h *Header) Eval() bool { return h.Flags&FlagEval != 0 }

// Shared reports whether the frame's payload came through shared memory.
func (h *Header) Shared() bool { return h.Flags&FlagShared != 0 }

// N is the number of tensor elements.
func (h *Header) N() int { return h.B * h.T * h.D }

// Format is the encoding of the frame's tensor (before zstd).
func (h *Header) Format() codec.Format { return codec.Format{Kind: h.Codec, Block: h.Block} }

// MarshalHeader writes h (with the checksum of header and payload) into b[:HeaderSize].
func MarshalHeader(b []byte, h *Header, payload []byte) {
	_ = b[HeaderSize-1]
	copy(b, magic[:])
	b[3] = Version
	b[4] = byte(h.Kind)
	b[5] = h.Flags
	c := byte(h.Codec)
	if h.Zstd {
		c |= zstdBit
	}
	b[6] = c
	b[7] = byte(h.DType)
	binary.LittleEndian.PutUint16(b[8:], uint16(h.Stage))
	binary.LittleEndian.PutUint16(b[10:], uint16(min(MaxBudget, max(0, h.Budget+BudgetUnit-1))/BudgetUnit))
	binary.LittleEndian.PutUint32(b[12:], uint32(h.Block))
	binary.LittleEndian.PutUint64(b[16:], h.ID)
	binary.LittleEndian.PutUint32(b[24:], uint32(h.B))
	binary.LittleEndian.PutUint32(b[28:], uint32(h.T))
	binary.LittleEndian.PutUint32(b[32:], uint32(h.D))
	binary.LittleEndian.PutUint32(b[36:], math.Float32bits(h.Loss))
	binary.LittleEndian.PutUint32(b[40:], uint32(len(payload)))
	sum := crc32.Update(crc32.Checksum(b[:44], castagnoli), castagnoli, payload)
	binary.LittleEndian.PutUint32(b[44:], sum)
}

// BudgetUnit is the resolution of Header.Budget on the wire.
const BudgetUnit = 10 * time.Millisecond

// MaxBudget is the largest budget a header can carry.
const MaxBudget = math.MaxUint16 * BudgetUnit

// maxDim bounds each shape dimension so that products stay far from overflow.
const maxDim = 1 << 24

// UnmarshalHeader parses and checks a header's self-consistency (not its checksum,
// which needs the payload). maxPayload caps the payload length.
func UnmarshalHeader(b []byte, maxPayload int) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: header of %d bytes", ErrTruncated, len(b))
	}
	if [3]byte(b[:3]) != magic {
		return h, fmt.Errorf("%w: magic %q", ErrMagic, b[:3])
	}
	if b[3] != Version {
		return h, fmt.Errorf("%w: %d (this peer speaks %d)", ErrVersion, b[3], Version)
	}
	h.Kind = Kind(b[4])
	h.Flags = b[5]
	h.Codec = codec.Kind(b[6] &^ zstdBit)
	h.Zstd = b[6]&zstdBit != 0
	h.DType = DType(b[7])
	h.Stage = int(binary.LittleEndian.Uint16(b[8:]))
	h.Budget = time.Duration(binary.LittleEndian.Uint16(b[10:])) * BudgetUnit
	h.Block = int(binary.LittleEndian.Uint32(b[12:]))
	h.ID = binary.LittleEndian.Uint64(b[16:])
	b0, t0, d0 := binary.LittleEndian.Uint32(b[24:]), binary.LittleEndian.Uint32(b[28:]), binary.LittleEndian.Uint32(b[32:])
	h.Loss = math.Float32frombits(binary.LittleEndian.Uint32(b[36:]))
	pl := binary.LittleEndian.Uint32(b[40:])
	if int64(pl) > int64(maxPayload) {
		return h, fmt.Errorf("%w: payload of %d bytes exceeds the cap of %d", ErrOversize, pl, maxPayload)
	}
	h.PayloadLen = int(pl)
	if h.Flags&^(FlagEval|FlagShared) != 0 {
		return h, fmt.Errorf("%w: unknown flags %#x", ErrHeader, h.Flags)
	}
	if b0 > maxDim || t0 > maxDim || d0 > maxDim {
		return h, fmt.Errorf("%w: dimension over %d in %dx%dx%d", ErrShape, maxDim, b0, t0, d0)
	}
	h.B, h.T, h.D = int(b0), int(t0), int(d0)
	if f := math.Float32bits(h.Loss); f&0x7f800000 == 0x7f800000 {
		return h, fmt.Errorf("%w: loss %g", ErrNonFinite, h.Loss)
	}
	switch h.Kind {
	case Tokens, Targets, Activations, Gradient:
		if h.DType != h.Kind.dtype() {
			return h, fmt.Errorf("%w: %v frame with dtype %d", ErrHeader, h.Kind, h.DType)
		}
		if (h.DType == Int32) != h.Codec.Integer() || !(h.Codec.Float() || h.Codec.Integer()) {
			return h, fmt.Errorf("%w: %v frame with codec %v", ErrHeader, h.Kind, h.Codec)
		}
		n := int64(b0) * int64(t0) * int64(d0)
		if n*4 > int64(maxDecoded(maxPayload)) {
			return h, fmt.Errorf("%w: %dx%dx%d tensor exceeds the frame cap", ErrOversize, b0, t0, d0)
		}
		size := h.Format().Len(int(n))
		if size < 0 {
			return h, fmt.Errorf("%w: int8 block size %d", ErrHeader, h.Block)
		}
		if !h.Zstd && h.PayloadLen != size {
			return h, fmt.Errorf("%w: %dx%dx%d %v takes %d bytes, payload has %d", ErrShape, b0, t0, d0, h.Codec, size, h.PayloadLen)
		}
	case Result, Error:
		if h.DType != None || h.Codec != 0 || h.Zstd || b0|t0|d0 != 0 {
			return h, fmt.Errorf("%w: %v frame with a tensor description", ErrHeader, h.Kind)
		}
		if h.Kind == Result && h.PayloadLen != 0 {
			return h, fmt.Errorf("%w: result frame with a payload", ErrHeader)
		}
	default:
		return h, fmt.Errorf("%w: kind %d", ErrHeader, b[4])
	}
	return h, nil
}

// maxDecoded bounds a tensor's decoded size: a frame may inflate through int8
// quantization (4x) and zstd, but never beyond this, which caps what a tiny
// malicious frame can make a peer allocate.
func maxDecoded(maxPayload int) int { return 4 * maxPayload }

// Checksum is the CRC-32C a header of bytes hdr[:44] and payload must carry.
func Checksum(hdr, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(hdr[:44], castagnoli), castagnoli, payload)
}
