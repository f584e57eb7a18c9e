// Package codec compresses the float tensors that travel between peers: activations
// and gradients between pipeline stages, and the values averaged among holders of a
// stage. A Format is a quantizer (fp32, bf16 or int8 blockwise absmax) with, for int8,
// its block size and the layout of its scales; zstd can follow it, and a Link switches
// zstd on only when the network, not the CPU, is the bottleneck.
//
// Decoders treat their input as hostile: every length is checked before it is
// trusted, and decoded values must be finite.
package codec

import (
	"errors"
	"fmt"
	"math"
)

// Kind names a quantizer. The numeric values travel on the wire.
type Kind uint8

// The quantizers. Int32, Uint16 and Uint8 are the lossless integer codecs of
// token ids and targets: a writer takes the smallest that holds every value
// (IntKind), so a byte-level vocabulary sends a byte per id.
const (
	FP32   Kind = 1
	BF16   Kind = 2
	Int8   Kind = 3
	Int32  Kind = 4
	Uint16 Kind = 5
	Uint8  Kind = 6
)

// MaxBlock is the largest int8 block size (it mirrors config.Compression's bound).
const MaxBlock = 1 << 16

// Errors a decoder or encoder returns, wrapped with details; test with errors.Is.
var (
	// ErrLength means the encoded length does not match the shape.
	ErrLength = errors.New("codec: encoded length does not match shape")
	// ErrNonFinite means a NaN or Inf value (or int8 scale).
	ErrNonFinite = errors.New("codec: NaN or Inf value")
	// ErrKind means an unknown quantizer, or one that does not fit the data type.
	ErrKind = errors.New("codec: unknown codec")
	// ErrBlock means an int8 block size outside [1, MaxBlock].
	ErrBlock = errors.New("codec: bad block size")
	// ErrZstd means a zstd payload that does not decode to exactly the expected size.
	ErrZstd = errors.New("codec: bad zstd payload")
	// ErrRange means an integer (token id or target) outside the vocabulary.
	ErrRange = errors.New("codec: integer out of range")
)

// Parse reads a codec name as used in config: fp32, bf16 or int8.
func Parse(s string) (Kind, error) {
	for _, k := range []Kind{FP32, BF16, Int8} {
		if s == k.String() {
			return k, nil
		}
	}
	return 0, fmt.Errorf("%w %q (want fp32, bf16 or int8)", ErrKind, s)
}

// String is the codec name as config spells it.
func (k Kind) String() string {
	if k >= FP32 && k <= Uint8 {
		return [...]string{"fp32", "bf16", "int8", "int32", "uint16", "uint8"}[k-FP32]
	}
	return fmt.Sprintf("codec(%d)", uint8(k))
}

// Float reports whether k encodes float32 tensors.
func (k Kind) Float() bool { return k == FP32 || k == BF16 || k == Int8 }

// Integer reports whether k encodes int32 tensors (token ids, targets).
func (k Kind) Integer() bool { return k == Int32 || k == Uint16 || k == Uint8 }

// Layout says where an int8 tensor's block scales lie. The two protocols settled on
// different layouts before they shared this package; both stay as they are on the wire.
type Layout uint8

const (
	// Interleaved puts each block's float32 scale right before its values, which
	// are rounded half away from zero: the stage protocol's layout, which the GPU
	// kernels write and read (cuda/testdata/int8_wire.golden holds examples).
	Interleaved Layout = iota
	// Planar puts every block's scale first, then all values, which are rounded
	// half to even: the averaging protocol's layout.
	Planar
)

// Format is how a tensor is encoded.
type Format struct {
	Kind Kind
	// Block is the number of int8 values sharing one scale; other kinds ignore it.
	Block int
	// Layout places int8 scales; other kinds ignore it.
	Layout Layout
}

// Len is the exact size of n values in f (before zstd), or -1 for an unknown kind
// or bad block size.
func (f Format) Len(n int) int {
	switch f.Kind {
	case FP32, Int32:
		return 4 * n
	case BF16, Uint16:
		return 2 * n
	case Uint8:
		return n
	case Int8:
		if f.Block < 1 || f.Block > MaxBlock {
			return -1
		}
		return 4*blocks(n, f.Block) + n
	}
	return -1
}

// check returns why f cannot encode or decode float32 values, or nil.
func (f Format) check() error {
	switch {
	case !f.Kind.Float():
		return fmt.Errorf("%w: %v for float32 data", ErrKind, f.Kind)
	case f.Len(0) < 0:
		return fmt.Errorf("%w: %d", ErrBlock, f.Block)
	}
	return nil
}

// Append appends src encoded in f to dst. It rejects NaN and Inf: a non-finite value
// is a bug or an attack upstream and must not spread. Tensors of at least
// parallelMin values are encoded by several goroutines; the bytes and the error are
// the same as with one. After an error dst is returned unchanged.
func (f Format) Append(dst []byte, src []float32) ([]byte, error) {
	return f.appendTo(dst, src, false)
}

// AppendRounded is Append, and it also replaces vals by the values a receiver
// decodes, in the same pass, so that the sender can apply exactly what it sends. It
// fails with ErrNonFinite where one of those would not be finite (an int8 block
// whose scale overflows); after an error the contents of vals are unspecified.
func (f Format) AppendRounded(dst []byte, vals []float32) ([]byte, error) {
	return f.appendTo(dst, vals, true)
}

func (f Format) appendTo(dst []byte, src []float32, round bool) ([]byte, error) {
	if err := f.check(); err != nil {
		return dst, err
	}
	off := len(dst)
	dst = grow(dst, f.Len(len(src)))
	if err := f.encode(dst[off:], src, round, parts(len(src))); err != nil {
		return dst[:off], err
	}
	return dst, nil
}

// Decode fills dst (whose length is the number of values) from src encoded in f.
// src must be exactly f.Len long; every decoded value must be finite. Large tensors
// are decoded by several goroutines, with the same result and error as one; after
// an error the contents of dst are unspecified.
func (f Format) Decode(dst []float32, src []byte) error {
	if err := f.checkLen(len(dst), src); err != nil {
		return err
	}
	return f.decode(dst, src, parts(len(dst)))
}

// DecodeSub sets d[i] = v[i] − d[i] for the values v that src holds in f, checked as
// Decode checks them, in one pass: the step from the values a peer was sent to the
// values it answered. After an error d is partly changed.
func (f Format) DecodeSub(d []float32, src []byte) error {
	if err := f.checkLen(len(d), src); err != nil {
		return err
	}
	return f.decodeSub(d, src)
}

// checkLen checks that src holds n values in f.
func (f Format) checkLen(n int, src []byte) error {
	if err := f.check(); err != nil {
		return err
	}
	if want := f.Len(n); len(src) != want {
		return fmt.Errorf("%w: %d values of %v (block %d) take %d bytes, got %d", ErrLength, n, f.Kind, f.Block, want, len(src))
	}
	return nil
}

// encode writes src encoded in f into out (exactly f.Len bytes), split into p
// contiguous chunks run concurrently. p is a parameter rather than derived here so
// that tests can compare any split with the single-threaded p = 1.
func (f Format) encode(out []byte, src []float32, round bool, p int) error {
	switch f.Kind {
	case FP32:
		return forChunks(p, len(src), func(lo, hi int) error {
			return encodeFP32(out[4*lo:4*hi], src[lo:hi], lo)
		})
	case BF16:
		return forChunks(p, len(src), func(lo, hi int) error {
			return encodeBF16(out[2*lo:2*hi], src[lo:hi], lo, round)
		})
	}
	// Chunks are whole int8 blocks.
	return forChunks(p, blocks(len(src), f.Block), func(lo, hi int) error {
		return f.encodeInt8(out, src, lo, hi, round)
	})
}

// decode is encode's inverse, with the same chunking; src is exactly f.Len long.
func (f Format) decode(dst []float32, src []byte, p int) error {
	switch f.Kind {
	case FP32:
		return forChunks(p, len(dst), func(lo, hi int) error {
			return decodeFP32(dst[lo:hi], src[4*lo:4*hi], lo)
		})
	case BF16:
		return forChunks(p, len(dst), func(lo, hi int) error {
			return decodeBF16(dst[lo:hi], src[2*lo:2*hi], lo)
		})
	}
	return forChunks(p, blocks(len(dst), f.Block), func(lo, hi int) error {
		return f.decodeInt8(dst, src, lo, hi, false)
	})
}

// decodeSub is DecodeSub on one goroutine: it serves chunks that are small already.
func (f Format) decodeSub(d []float32, src []byte) error {
	switch f.Kind {
	case FP32:
		return decodeSubFP32(d, src)
	case BF16:
		return decodeSubBF16(d, src)
	}
	return f.decodeInt8(d, src, 0, blocks(len(d), f.Block), true)
}

// blocks is the number of int8 blocks of n values.
func blocks(n, block int) int { return (n + block - 1) / block }

// finite reports whether b, a float32's bits, is neither NaN nor Inf (whose
// exponent bits are all ones).
func finite(b uint32) bool { return b&0x7f800000 != 0x7f800000 }

// nonFiniteAt is the error for a NaN or Inf value at index i.
func nonFiniteAt(i int) error { return fmt.Errorf("%w at index %d", ErrNonFinite, i) }

// overflows reports whether a float32 product is infinite.
func overflows(v float32) bool { return math.IsInf(float64(v), 0) }

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n)
	copy(nb, b)
	return nb
}
