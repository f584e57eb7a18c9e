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
	"runtime"
	"sync"
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
// Tensors of at least parallelMin values are encoded by several goroutines; the
// bytes and the error are the same as with one.
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
	if err := encode(dst[off:], k, block, src, parts(len(src))); err != nil {
		return dst[:off], err
	}
	return dst, nil
}

// Decode fills dst (whose length is the number of values) from src encoded with k.
// src must be exactly EncodedLen long; every decoded value must be finite. Large
// tensors are decoded by several goroutines, with the same result and error as one;
// after an error the contents of dst are unspecified.
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
	return decode(dst, k, block, src, parts(len(dst)))
}

// parallelMin is the smallest tensor, in values, that Encode and Decode split across
// goroutines. Below it the work (well under a millisecond) is too short to pay for
// waking idle Ps, and small payloads are rarely on a critical path anyway.
const parallelMin = 256 << 10

// chunkMin is the least work, in values, worth handing to one goroutine: a goroutine
// costs about a microsecond to start and wake, a 64K-value chunk tens of microseconds.
const chunkMin = 64 << 10

// parts is how many goroutines Encode and Decode use for n values.
func parts(n int) int {
	if n < parallelMin {
		return 1
	}
	return max(1, min(runtime.GOMAXPROCS(0), n/chunkMin))
}

// encode writes src encoded with k into out (exactly EncodedLen bytes), split into p
// contiguous chunks run concurrently. p is a parameter rather than derived here so
// that tests can compare any split with the single-threaded p = 1.
func encode(out []byte, k Kind, block int, src []float32, p int) error {
	switch k {
	case FP32:
		return forChunks(p, len(src), func(lo, hi int) error {
			return encodeFP32(out[4*lo:4*hi], src[lo:hi], lo)
		})
	case BF16:
		return forChunks(p, len(src), func(lo, hi int) error {
			return encodeBF16(out[2*lo:2*hi], src[lo:hi], lo)
		})
	case Int8:
		// Chunks are whole blocks, so every chunk but the last holds only full blocks
		// of 4+block bytes and its offset in out follows from its first block.
		blocks := (len(src) + block - 1) / block
		return forChunks(p, blocks, func(lo, hi int) error {
			v0, v1 := lo*block, min(hi*block, len(src))
			o0 := lo * (4 + block)
			return encodeInt8(out[o0:o0+4*(hi-lo)+v1-v0], block, src[v0:v1], v0)
		})
	}
	return fmt.Errorf("%w: %v for float32 data", ErrKind, k)
}

// decode is encode's inverse, with the same chunking; src is exactly EncodedLen long.
func decode(dst []float32, k Kind, block int, src []byte, p int) error {
	switch k {
	case FP32:
		return forChunks(p, len(dst), func(lo, hi int) error {
			return decodeFP32(dst[lo:hi], src[4*lo:4*hi], lo)
		})
	case BF16:
		return forChunks(p, len(dst), func(lo, hi int) error {
			return decodeBF16(dst[lo:hi], src[2*lo:2*hi], lo)
		})
	case Int8:
		blocks := (len(dst) + block - 1) / block
		return forChunks(p, blocks, func(lo, hi int) error {
			v0, v1 := lo*block, min(hi*block, len(dst))
			o0 := lo * (4 + block)
			return decodeInt8(dst[v0:v1], block, src[o0:o0+4*(hi-lo)+v1-v0], v0)
		})
	}
	return fmt.Errorf("%w: %v for float32 data", ErrKind, k)
}

// forChunks splits [0, units) into at most p contiguous ranges and calls f on each,
// the first on the calling goroutine and the rest on their own. Each f stops at its
// first bad value, and ranges are in index order, so the error of the lowest failing
// range is the one a single pass would have met first: results do not depend on p
// or on scheduling.
func forChunks(p, units int, f func(lo, hi int) error) error {
	if p > units {
		p = units
	}
	if p <= 1 {
		return f(0, units)
	}
	per := (units + p - 1) / p
	p = (units + per - 1) / per // rounding up per can leave the last ranges empty
	errs := make([]error, p)
	var wg sync.WaitGroup
	for i := 1; i < p; i++ {
		lo := i * per
		hi := min(lo+per, units)
		wg.Go(func() { errs[i] = f(lo, hi) })
	}
	errs[0] = f(0, per)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Non-finite floats have an all-ones exponent. Adding one exponent step to the masked
// exponent carries into bit 31 exactly for those, so the sums of several values can be
// ORed and tested with one branch instead of one per value.
const (
	expMask = 0x7f800000
	expStep = 0x00800000
	carry   = 0x80000000
)

func nonFinite(b uint32) bool { return b&expMask == expMask }

// ex is b's exponent plus one step: bit 31 is set exactly when b is non-finite.
func ex(b uint32) uint32 { return b&expMask + expStep }

// encodeFP32 writes src little-endian into out (4*len(src) bytes). The loop takes 8
// values at a time through fixed-size array views, which removes the bounds checks,
// and tests all 8 for finiteness with one branch; on a hit it leaves the group to the
// scalar loop, which reports the exact index. On one core this measured about 10%
// faster than one value per iteration (best of 6 runs, 6.3M values, BenchmarkLarge).
func encodeFP32(out []byte, src []float32, base int) error {
	out = out[:4*len(src)]
	i := 0
	for ; len(src)-i >= 8; i += 8 {
		s := (*[8]float32)(src[i:])
		o := (*[32]byte)(out[4*i:])
		b0, b1, b2, b3 := math.Float32bits(s[0]), math.Float32bits(s[1]), math.Float32bits(s[2]), math.Float32bits(s[3])
		b4, b5, b6, b7 := math.Float32bits(s[4]), math.Float32bits(s[5]), math.Float32bits(s[6]), math.Float32bits(s[7])
		if (ex(b0)|ex(b1)|ex(b2)|ex(b3)|
			ex(b4)|ex(b5)|ex(b6)|ex(b7))&carry != 0 {
			break // the scalar loop below finds and reports the value
		}
		binary.LittleEndian.PutUint32(o[0:], b0)
		binary.LittleEndian.PutUint32(o[4:], b1)
		binary.LittleEndian.PutUint32(o[8:], b2)
		binary.LittleEndian.PutUint32(o[12:], b3)
		binary.LittleEndian.PutUint32(o[16:], b4)
		binary.LittleEndian.PutUint32(o[20:], b5)
		binary.LittleEndian.PutUint32(o[24:], b6)
		binary.LittleEndian.PutUint32(o[28:], b7)
	}
	for ; i < len(src); i++ {
		b := math.Float32bits(src[i])
		if nonFinite(b) {
			return fmt.Errorf("%w at index %d", ErrNonFinite, base+i)
		}
		binary.LittleEndian.PutUint32(out[4*i:], b)
	}
	return nil
}

// decodeFP32 is encodeFP32's inverse, 8 values a time for the same reasons.
func decodeFP32(dst []float32, src []byte, base int) error {
	src = src[:4*len(dst)]
	i := 0
	for ; len(dst)-i >= 8; i += 8 {
		s := (*[32]byte)(src[4*i:])
		d := (*[8]float32)(dst[i:])
		b0, b1, b2, b3 := binary.LittleEndian.Uint32(s[0:]), binary.LittleEndian.Uint32(s[4:]), binary.LittleEndian.Uint32(s[8:]), binary.LittleEndian.Uint32(s[12:])
		b4, b5, b6, b7 := binary.LittleEndian.Uint32(s[16:]), binary.LittleEndian.Uint32(s[20:]), binary.LittleEndian.Uint32(s[24:]), binary.LittleEndian.Uint32(s[28:])
		if (ex(b0)|ex(b1)|ex(b2)|ex(b3)|
			ex(b4)|ex(b5)|ex(b6)|ex(b7))&carry != 0 {
			break // the scalar loop below finds and reports the value
		}
		d[0], d[1], d[2], d[3] = math.Float32frombits(b0), math.Float32frombits(b1), math.Float32frombits(b2), math.Float32frombits(b3)
		d[4], d[5], d[6], d[7] = math.Float32frombits(b4), math.Float32frombits(b5), math.Float32frombits(b6), math.Float32frombits(b7)
	}
	for ; i < len(dst); i++ {
		b := binary.LittleEndian.Uint32(src[4*i:])
		if nonFinite(b) {
			return fmt.Errorf("%w at index %d", ErrNonFinite, base+i)
		}
		dst[i] = math.Float32frombits(b)
	}
	return nil
}

// encodeBF16 rounds src to bfloat16 into out (2*len(src) bytes). Unlike fp32 it
// stays one value per iteration: an 8-wide version like encodeFP32's measured no
// faster (the rounding, not the loop, dominates).
func encodeBF16(out []byte, src []float32, base int) error {
	out = out[:2*len(src)]
	for i, v := range src {
		b := math.Float32bits(v)
		if nonFinite(b) {
			return fmt.Errorf("%w at index %d", ErrNonFinite, base+i)
		}
		binary.LittleEndian.PutUint16(out[2*i:], bf16Round(b))
	}
	return nil
}

// decodeBF16 widens bfloat16 to float32; base is the index of dst[0], for the error.
func decodeBF16(dst []float32, src []byte, base int) error {
	src = src[:2*len(dst)]
	for i := range dst {
		b := uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16
		if nonFinite(b) {
			return fmt.Errorf("%w at index %d", ErrNonFinite, base+i)
		}
		dst[i] = math.Float32frombits(b)
	}
	return nil
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

// encodeInt8 quantizes src block by block into out (EncodedLen bytes); base is the
// index of src[0] in the whole tensor, for the error.
func encodeInt8(out []byte, block int, src []float32, base int) error {
	for start := 0; start < len(src); start += block {
		end := min(start+block, len(src))
		var amax uint32 // |v| as bits: for finite floats, bit order is value order
		for _, v := range src[start:end] {
			amax = max(amax, math.Float32bits(v)&0x7fffffff)
		}
		if amax >= 0x7f800000 {
			for i, v := range src[start:end] {
				if nonFinite(math.Float32bits(v)) {
					return fmt.Errorf("%w at index %d", ErrNonFinite, base+start+i)
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

// decodeInt8 is encodeInt8's inverse; base is the index of dst[0] in the whole tensor.
func decodeInt8(dst []float32, block int, src []byte, base int) error {
	for start := 0; start < len(dst); start += block {
		end := min(start+block, len(dst))
		sb := binary.LittleEndian.Uint32(src)
		scale := math.Float32frombits(sb)
		// A negative scale would only flip signs, but no honest encoder makes one.
		if sb&0x7f800000 == 0x7f800000 || scale < 0 {
			return fmt.Errorf("%w: int8 scale %g of block at index %d", ErrNonFinite, scale, base+start)
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
					return fmt.Errorf("%w at index %d", ErrNonFinite, base+start+i)
				}
			}
		}
		src = src[4+end-start:]
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
