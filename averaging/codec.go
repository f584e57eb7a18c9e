package averaging

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"unsafe"
)

// nativeLE is true on little-endian machines, where fp32 values go to and from
// the wire as plain memory copies.
var nativeLE = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// f32bytes views vals as bytes in native order.
func f32bytes(vals []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(vals))), 4*len(vals))
}

// Codec is the wire encoding of averaged values.
type Codec uint8

// The wire codecs. Their numbers travel in every chunk frame, so they never change.
const (
	// FP32 sends values unchanged: the average is exact up to float32 rounding.
	FP32 Codec = 1
	// BF16 keeps the top 16 bits of each float32, rounded to nearest even.
	BF16 Codec = 2
	// Int8 sends one signed byte per value plus one float32 absmax scale per
	// block of Int8Block values.
	Int8 Codec = 3
)

// Int8Block is the number of values sharing one int8 scale.
const Int8Block = 64

// ParseCodec maps a config name (fp32, bf16, int8) to its Codec.
func ParseCodec(name string) (Codec, error) {
	switch name {
	case "fp32":
		return FP32, nil
	case "bf16":
		return BF16, nil
	case "int8":
		return Int8, nil
	}
	return 0, fmt.Errorf("averaging: unknown codec %q (want fp32, bf16 or int8)", name)
}

// String returns the config name of c.
func (c Codec) String() string {
	switch c {
	case FP32:
		return "fp32"
	case BF16:
		return "bf16"
	case Int8:
		return "int8"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

func (c Codec) valid() bool { return c == FP32 || c == BF16 || c == Int8 }

// encodedLen is the payload size of n values in codec c.
func (c Codec) encodedLen(n int) int {
	switch c {
	case FP32:
		return 4 * n
	case BF16:
		return 2 * n
	case Int8:
		return n + 4*((n+Int8Block-1)/Int8Block)
	}
	return 0
}

// encode appends the encoding of vals to dst. vals must be finite.
func (c Codec) encode(dst []byte, vals []float32) []byte {
	dst, _ = c.encodeRound(dst, vals, false)
	return dst
}

// encodeRound appends the encoding of vals to dst like encode and, when round is
// set, also replaces vals by the values a peer decodes from it, in the same pass;
// ok is then false if one of them is not finite (a value beyond bf16's range, or
// an int8 block whose scale overflows), which decode would reject.
func (c Codec) encodeRound(dst []byte, vals []float32, round bool) (_ []byte, ok bool) {
	off := len(dst)
	// Every byte of the extension is written below, so grow without clearing.
	dst = slices.Grow(dst, c.encodedLen(len(vals)))[:off+c.encodedLen(len(vals))]
	b := dst[off:]
	ok = true
	switch c {
	case FP32:
		if nativeLE {
			copy(b, f32bytes(vals))
			break
		}
		for i, v := range vals {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
	case BF16:
		ok = encodeBF16(b[:2*len(vals)], vals, round)
	case Int8:
		nb := (len(vals) + Int8Block - 1) / Int8Block
		q := b[4*nb:]
		for k := 0; k < nb; k++ {
			blk := vals[k*Int8Block : min((k+1)*Int8Block, len(vals))]
			// |v| by clearing the sign bit; finite non-negative floats order
			// like their bits.
			var abits uint32
			for _, v := range blk {
				abits = max(abits, math.Float32bits(v)&0x7fffffff)
			}
			scale := math.Float32frombits(abits) / 127
			binary.LittleEndian.PutUint32(b[4*k:], math.Float32bits(scale))
			inv := float32(0)
			if scale > 0 {
				inv = 1 / scale
			}
			qb := q[k*Int8Block : k*Int8Block+len(blk)]
			qb = qb[:len(blk)]
			for i, v := range blk {
				// x is within [-127, 127] up to rounding. Round |x| half up,
				// then give it x's sign: round half away from zero, branch-free.
				xb := math.Float32bits(v * inv)
				r := min(127, int32(math.Float32frombits(xb&0x7fffffff)+0.5))
				sign := int32(xb) >> 31 // 0 or -1
				qb[i] = byte((r ^ sign) - sign)
			}
			if round {
				if math.IsInf(float64(scale*127), 0) {
					ok = false
				}
				for i := range blk {
					blk[i] = float32(int8(qb[i])) * scale
				}
			}
		}
	}
	return dst, ok
}

// encodeBF16 writes vals as bfloat16 to b (2 bytes each, little-endian) and, if
// round is set, replaces them by their bf16 values; it reports whether all of
// those are finite.
func encodeBF16(b []byte, vals []float32, round bool) bool {
	if !nativeLE {
		var acc uint32
		for i, v := range vals {
			h := toBF16(v)
			b[2*i], b[2*i+1] = byte(h), byte(h>>8)
			acc |= uint32(h)&0x7f80 + 0x80
			if round {
				vals[i] = math.Float32frombits(uint32(h) << 16)
			}
		}
		return acc&0x8000 == 0
	}
	u := u16s(b)[:len(vals)]
	if !round {
		for i, v := range vals {
			u[i] = toBF16(v)
		}
		return true
	}
	// A bf16 exponent of all ones (Inf, NaN) carries into bit 15 when 0x80 is added.
	var acc uint32
	for i, v := range vals {
		h := toBF16(v)
		u[i] = h
		acc |= uint32(h)&0x7f80 + 0x80
		vals[i] = math.Float32frombits(uint32(h) << 16)
	}
	return acc&0x8000 == 0
}

// u16s views b (of even length) as native-order uint16s.
func u16s(b []byte) []uint16 {
	if len(b) < 2 {
		return nil
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/2)
}

// decode fills out from payload, which must hold exactly len(out) values in codec
// c. It rejects NaN, Inf and, for int8, negative scales: a peer cannot poison an
// average with them.
func (c Codec) decode(payload []byte, out []float32) error {
	if len(payload) != c.encodedLen(len(out)) {
		return fmt.Errorf("%s payload of %d bytes for %d values, want %d", c, len(payload), len(out), c.encodedLen(len(out)))
	}
	switch c {
	case FP32:
		if nativeLE {
			copy(f32bytes(out), payload)
			break
		}
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(payload[4*i:]))
		}
	case BF16:
		// Checked in the same pass: a bf16 exponent of all ones carries into
		// bit 15 when 0x80 is added.
		var acc uint32
		if nativeLE {
			u := u16s(payload)[:len(out)]
			for i, h := range u {
				acc |= uint32(h)&0x7f80 + 0x80
				out[i] = math.Float32frombits(uint32(h) << 16)
			}
		} else {
			payload = payload[:2*len(out)]
			for i := range out {
				h := uint32(payload[2*i]) | uint32(payload[2*i+1])<<8
				acc |= h&0x7f80 + 0x80
				out[i] = math.Float32frombits(h << 16)
			}
		}
		if acc&0x8000 == 0 {
			return nil
		}
	case Int8:
		nb := (len(out) + Int8Block - 1) / Int8Block
		q := payload[4*nb:]
		for k := 0; k < nb; k++ {
			scale := math.Float32frombits(binary.LittleEndian.Uint32(payload[4*k:]))
			if !(scale >= 0) || math.IsInf(float64(scale), 0) {
				return fmt.Errorf("int8 block %d: bad scale %v", k, scale)
			}
			lo, hi := k*Int8Block, min((k+1)*Int8Block, len(out))
			ob, qb := out[lo:hi], q[lo:hi]
			qb = qb[:len(ob)]
			for i := range ob {
				ob[i] = float32(int8(qb[i])) * scale
			}
			// |q| ≤ 128, so a block is finite when 128·scale is; only a scale
			// near the float32 limit needs its values checked.
			if math.IsInf(float64(scale*128), 0) {
				if err := checkFinite(ob); err != nil {
					return fmt.Errorf("int8 block %d: %w", k, err)
				}
			}
		}
		return nil
	default:
		return fmt.Errorf("unknown codec %d", uint8(c))
	}
	return checkFinite(out)
}

// roundTrip replaces vals by what a peer decodes from their encoding, so that a
// reducer applies the very values it sends.
func (c Codec) roundTrip(vals []float32) {
	switch c {
	case BF16:
		for i, v := range vals {
			vals[i] = math.Float32frombits(uint32(toBF16(v)) << 16)
		}
	case Int8:
		buf := c.encode(nil, vals)
		_ = c.decode(buf, vals) // our own encoding of finite values always decodes
	}
}

// checkFinite rejects NaN and ±Inf, whose exponent bits are all ones. It runs
// on every value received, so the common all-finite case is branch-free: adding
// one to a full exponent carries into the sign bit, and no other exponent does.
// It works on two values per 64-bit word: a carry stops at each value's sign bit.
func checkFinite(vals []float32) error {
	if len(vals) == 0 {
		return nil
	}
	const exp, carry = 0x7f800000_7f800000, 0x00800000_00800000
	words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(vals))), len(vals)/2)
	var b0, b1, b2, b3 uint64
	k := 0
	for ; k+4 <= len(words); k += 4 {
		w := words[k : k+4 : k+4]
		b0 |= w[0]&exp + carry
		b1 |= w[1]&exp + carry
		b2 |= w[2]&exp + carry
		b3 |= w[3]&exp + carry
	}
	for ; k < len(words); k++ {
		b0 |= words[k]&exp + carry
	}
	if len(vals)%2 == 1 {
		b0 |= uint64(math.Float32bits(vals[len(vals)-1])&0x7f800000 + 0x00800000)
	}
	if (b0|b1|b2|b3)&0x80000000_80000000 == 0 {
		return nil
	}
	for i, v := range vals {
		if math.Float32bits(v)&0x7f800000 == 0x7f800000 {
			return fmt.Errorf("value %d is %v", i, v)
		}
	}
	return nil
}

// toBF16 rounds v to bfloat16, nearest even; v is finite so the carry into the
// exponent at most reaches the largest finite bf16 or infinity, which only happens
// for values beyond bf16's range.
func toBF16(v float32) uint16 {
	b := math.Float32bits(v)
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
