// Package codec compresses the float tensors that travel between pipeline stages:
// activations forward and gradients backward. A codec is a quantizer (fp32, bf16 or
// int8 blockwise absmax), optionally followed by zstd entropy coding, which a Link
// can switch on only when the network, not the CPU, is the bottleneck.
//
// Decoders treat their input as hostile: every length is checked before it is
// trusted, and decoded values must be finite.
package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Kind names a quantizer. The numeric values travel on the wire.
type Kind uint8

// The quantizers. Int32 is the lossless integer codec used for token ids and targets.
const (
	FP32  Kind = 1
	BF16  Kind = 2
	Int8  Kind = 3
	Int32 Kind = 4
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
)

// Parse reads a codec name as used in config: fp32, bf16 or int8.
func Parse(s string) (Kind, error) {
	switch s {
	case "fp32":
		return FP32, nil
	case "bf16":
		return BF16, nil
	case "int8":
		return Int8, nil
	}
	return 0, fmt.Errorf("%w %q (want fp32, bf16 or int8)", ErrKind, s)
}

// String is the codec name as config spells it.
func (k Kind) String() string {
	switch k {
	case FP32:
		return "fp32"
	case BF16:
		return "bf16"
	case Int8:
		return "int8"
	case Int32:
		return "int32"
	}
	return fmt.Sprintf("codec(%d)", uint8(k))
}

// Float reports whether k encodes float32 tensors.
func (k Kind) Float() bool { return k == FP32 || k == BF16 || k == Int8 }

// EncodedLen is the exact size of n values encoded with k (before zstd), or -1 for an
// unknown kind or bad block size.
func EncodedLen(k Kind, n, block int) int {
	switch k {
	case FP32, Int32:
		return 4 * n
	case BF16:
		return 2 * n
	case Int8:
		if block < 1 || block > MaxBlock {
			return -1
		}
		blocks := (n + block - 1) / block
		return 4*blocks + n
	}
	return -1
}

// Encode appends src encoded with k to dst. It rejects NaN and Inf: a non-finite
// activation is a bug or an attack upstream and must not spread along the pipeline.
func Encode(dst []byte, k Kind, block int, src []float32) ([]byte, error) {
	size := EncodedLen(k, len(src), block)
	if size < 0 || !k.Float() {
		if k == Int8 {
			return dst, fmt.Errorf("%w: %d", ErrBlock, block)
		}
		return dst, fmt.Errorf("%w: %v for float32 data", ErrKind, k)
	}
	off := len(dst)
	dst = grow(dst, size)
	out := dst[off:]
	switch k {
	case FP32:
		for i, v := range src {
			b := math.Float32bits(v)
			if b&0x7f800000 == 0x7f800000 {
				return dst[:off], fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			binary.LittleEndian.PutUint32(out[4*i:4*i+4], b)
		}
	case BF16:
		for i, v := range src {
			b := math.Float32bits(v)
			if b&0x7f800000 == 0x7f800000 {
				return dst[:off], fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			binary.LittleEndian.PutUint16(out[2*i:2*i+2], bf16Round(b))
		}
	case Int8:
		if err := encodeInt8(out, block, src); err != nil {
			return dst[:off], err
		}
	}
	return dst, nil
}

// bf16Round rounds a finite float32 to bfloat16, to nearest even. A value that rounds
// past the largest bf16 would become Inf, so it saturates instead.
func bf16Round(b uint32) uint16 {
	r := b + 0x7fff + (b>>16)&1
	if r&0x7f800000 == 0x7f800000 {
		return uint16(b>>16) | 0x007f // max finite magnitude, sign kept
	}
	return uint16(r >> 16)
}

func encodeInt8(out []byte, block int, src []float32) error {
	for start := 0; start < len(src); start += block {
		end := min(start+block, len(src))
		var amax uint32 // |v| as bits: for finite floats, bit order is value order
		for _, v := range src[start:end] {
			amax = max(amax, math.Float32bits(v)&0x7fffffff)
		}
		if amax >= 0x7f800000 {
			for i, v := range src[start:end] {
				if math.Float32bits(v)&0x7f800000 == 0x7f800000 {
					return fmt.Errorf("%w at index %d", ErrNonFinite, start+i)
				}
			}
		}
		scale := math.Float32frombits(amax) / 127
		binary.LittleEndian.PutUint32(out, math.Float32bits(scale))
		q := out[4 : 4+end-start]
		if scale == 0 {
			clear(q)
		} else {
			inv := 1 / scale
			s := src[start:end]
			q = q[:len(s)]
			for i, v := range s {
				// Round half away from zero without a branch (random signs would
				// mispredict half the time): add ±0.5 carrying v's sign, truncate.
				x := v * inv
				half := math.Float32frombits(math.Float32bits(x)&0x80000000 | 0x3f000000)
				q[i] = byte(int8(max(-127, min(127, int32(x+half)))))
			}
		}
		out = out[4+end-start:]
	}
	return nil
}

// Decode fills dst (whose length is the number of values) from src encoded with k.
// src must be exactly EncodedLen long; every decoded value must be finite.
func Decode(dst []float32, k Kind, block int, src []byte) error {
	if !k.Float() {
		return fmt.Errorf("%w: %v for float32 data", ErrKind, k)
	}
	want := EncodedLen(k, len(dst), block)
	if want < 0 {
		return fmt.Errorf("%w: %d", ErrBlock, block)
	}
	if len(src) != want {
		return fmt.Errorf("%w: %d values of %v (block %d) take %d bytes, got %d", ErrLength, len(dst), k, block, want, len(src))
	}
	switch k {
	case FP32:
		for i := range dst {
			b := binary.LittleEndian.Uint32(src[4*i : 4*i+4])
			if b&0x7f800000 == 0x7f800000 {
				return fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			dst[i] = math.Float32frombits(b)
		}
	case BF16:
		for i := range dst {
			b := uint32(binary.LittleEndian.Uint16(src[2*i:2*i+2])) << 16
			if b&0x7f800000 == 0x7f800000 {
				return fmt.Errorf("%w at index %d", ErrNonFinite, i)
			}
			dst[i] = math.Float32frombits(b)
		}
	case Int8:
		for start := 0; start < len(dst); start += block {
			end := min(start+block, len(dst))
			sb := binary.LittleEndian.Uint32(src)
			scale := math.Float32frombits(sb)
			// A negative scale would only flip signs, but no honest encoder makes one.
			if sb&0x7f800000 == 0x7f800000 || scale < 0 {
				return fmt.Errorf("%w: int8 scale %g of block at index %d", ErrNonFinite, scale, start)
			}
			q := src[4 : 4+end-start]
			out := dst[start:end]
			for i := range out {
				out[i] = float32(int8(q[i])) * scale
			}
			// 128*scale can overflow to Inf when scale is near MaxFloat32.
			if scale > math.MaxFloat32/128 {
				for i, v := range out {
					if math.IsInf(float64(v), 0) {
						return fmt.Errorf("%w at index %d", ErrNonFinite, start+i)
					}
				}
			}
			src = src[4+end-start:]
		}
	}
	return nil
}

// EncodeInts appends int32 values (token ids, targets) to dst.
func EncodeInts(dst []byte, src []int32) []byte {
	off := len(dst)
	dst = grow(dst, 4*len(src))
	out := dst[off:]
	for i, v := range src {
		binary.LittleEndian.PutUint32(out[4*i:4*i+4], uint32(v))
	}
	return dst
}

// DecodeInts fills dst from src and checks every value lies in [0, limit).
func DecodeInts(dst []int32, src []byte, limit int) error {
	if len(src) != 4*len(dst) {
		return fmt.Errorf("%w: %d int32 values take %d bytes, got %d", ErrLength, len(dst), 4*len(dst), len(src))
	}
	for i := range dst {
		v := int32(binary.LittleEndian.Uint32(src[4*i : 4*i+4]))
		if v < 0 || int(v) >= limit {
			return fmt.Errorf("%w: value %d at index %d not in [0, %d)", ErrRange, v, i, limit)
		}
		dst[i] = v
	}
	return nil
}

// ErrRange means an integer (token id or target) outside the vocabulary.
var ErrRange = errors.New("codec: integer out of range")

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, len(b)+n)
	copy(nb, b)
	return nb
}
