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
			scale := math.Float32frombits(absMax(blk)) / 127
			binary.LittleEndian.PutUint32(b[4*k:], math.Float32bits(scale))
			inv := float32(0)
			if scale > 0 {
				// A subnormal scale has no finite inverse; the largest float
				// keeps every x small and finite.
				inv = min(1/scale, math.MaxFloat32)
			}
			qb := q[k*Int8Block : k*Int8Block+len(blk)]
			quantize(qb, blk, inv)
			if round {
				if math.IsInf(float64(scale*127), 0) {
					ok = false
				}
				dequantize(blk, qb, scale)
			}
		}
	}
	return dst, ok
}

// absMax returns the bits of the largest |v| in vals: finite non-negative floats
// order like their bits, and clearing the sign bit gives |v|.
func absMax(vals []float32) uint32 {
	var a0, a1, a2, a3 uint32
	i := 0
	for ; i+4 <= len(vals); i += 4 {
		v := vals[i : i+4 : i+4]
		a0 = max(a0, math.Float32bits(v[0])&0x7fffffff)
		a1 = max(a1, math.Float32bits(v[1])&0x7fffffff)
		a2 = max(a2, math.Float32bits(v[2])&0x7fffffff)
		a3 = max(a3, math.Float32bits(v[3])&0x7fffffff)
	}
	for ; i < len(vals); i++ {
		a0 = max(a0, math.Float32bits(vals[i])&0x7fffffff)
	}
	return max(a0, a1, a2, a3)
}

// quantize writes v·inv rounded to the nearest integer (ties to even) of each
// value as a signed byte. |v·inv| ≤ 127 up to rounding, where adding 1.5·2²³
// leaves the rounded integer in the low mantissa bits, in two's complement: no
// float-to-int conversion, no branch, no clamp.
func quantize(q []byte, vals []float32, inv float32) {
	const magic = 0x1.8p23
	q = q[:len(vals)]
	for i, v := range vals {
		x := float32(v * inv) // rounded here: the conversion forbids fusing
		q[i] = byte(math.Float32bits(x + magic))
	}
}

// dequantize sets out[i] = q[i]·scale, q[i] a signed byte.
func dequantize(out []float32, q []byte, scale float32) {
	q = q[:len(out)]
	for i, x := range q {
		out[i] = float32(int8(x)) * scale
	}
}

// encodeBF16 writes vals as bfloat16 to b (2 bytes each, little-endian) and, if
// round is set, replaces them by their bf16 values; it reports whether all of
// those are finite.
func encodeBF16(b []byte, vals []float32, round bool) bool {
	// Done two values per 64-bit word where the machine allows: rounding a finite
	// value never carries out of its 32 bits.
	const lsb, half = 0x00000001_00000001, 0x00007fff_00007fff
	const exp, carry, top = 0x7f800000_7f800000, 0x00800000_00800000, 0xffff0000_ffff0000
	var acc uint64
	k := 0
	if nativeLE {
		w := u64s(f32bytes(vals))
		u := u32s(b)[:len(w)]
		for i, x := range w {
			x += half + (x>>16)&lsb
			x &= top
			u[i] = uint32(x>>16) | uint32(x>>32)&0xffff0000
			if round {
				acc |= x&exp + carry
				w[i] = x
			}
		}
		k = 2 * len(w)
	}
	for i := k; i < len(vals); i++ {
		h := toBF16(vals[i])
		b[2*i], b[2*i+1] = byte(h), byte(h>>8)
		if round {
			acc |= uint64(h)&0x7f80 + 0x80
			vals[i] = math.Float32frombits(uint32(h) << 16)
		}
	}
	return acc&(0x80000000_80000000|0x8000) == 0
}

// decodeBF16 fills out from the bf16 values in b and reports whether all are
// finite.
func decodeBF16(b []byte, out []float32) bool {
	// Four values per 64-bit word where the machine allows. A bf16 exponent of
	// all ones (Inf, NaN) carries into bit 15 of its lane when 0x80 is added.
	const exp, carry, sign = 0x7f807f80_7f807f80, 0x00800080_00800080, 0x80008000_80008000
	var acc uint64
	k := 0
	if nativeLE {
		w := u64s(b)[:len(out)/4]
		o := u64s(f32bytes(out))[: 2*len(w) : 2*len(w)]
		for i, x := range w {
			acc |= x&exp + carry
			o[2*i] = (x&0xffff)<<16 | (x&0xffff0000)<<32
			o[2*i+1] = (x>>32&0xffff)<<16 | (x>>32&0xffff0000)<<32
		}
		k = 4 * len(w)
	}
	for i := k; i < len(out); i++ {
		h := uint64(b[2*i]) | uint64(b[2*i+1])<<8
		acc |= h&0x7f80 + 0x80
		out[i] = math.Float32frombits(uint32(h) << 16)
	}
	return acc&sign == 0
}

// u64s views b as native-order uint64s, ignoring a tail of fewer than 8 bytes.
func u64s(b []byte) []uint64 {
	if len(b) < 8 {
		return nil
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
}

// u32s views b as native-order uint32s, ignoring a tail of fewer than 4 bytes.
func u32s(b []byte) []uint32 {
	if len(b) < 4 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
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
		if decodeBF16(payload, out) {
			return nil
		}
	case Int8:
		nb := (len(out) + Int8Block - 1) / Int8Block
		q := payload[4*nb:]
		for k := 0; k < nb; k++ {
			scale, err := int8Scale(payload, k)
			if err != nil {
				return err
			}
			lo, hi := k*Int8Block, min((k+1)*Int8Block, len(out))
			ob := out[lo:hi]
			dequantize(ob, q[lo:hi], scale)
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

// int8Scale reads block k's scale from an int8 payload (the scales come first)
// and refuses a negative, NaN or infinite one.
func int8Scale(payload []byte, k int) (float32, error) {
	scale := math.Float32frombits(binary.LittleEndian.Uint32(payload[4*k:]))
	if !(scale >= 0) || math.IsInf(float64(scale), 0) {
		return 0, fmt.Errorf("int8 block %d: bad scale %v", k, scale)
	}
	return scale, nil
}

// decodeSub sets d[k] = v[k] − d[k] for the values v that payload holds in codec
// c (not fp32), checked like decode, in one pass: the delta from the values sent
// to their average. On error d is left partly changed.
func (c Codec) decodeSub(payload []byte, d []float32) error {
	if len(payload) != c.encodedLen(len(d)) {
		return fmt.Errorf("%s payload of %d bytes for %d values, want %d", c, len(payload), len(d), c.encodedLen(len(d)))
	}
	switch c {
	case BF16:
		const exp, carry, sign = 0x7f807f80_7f807f80, 0x00800080_00800080, 0x80008000_80008000
		var acc uint64
		k := 0
		if nativeLE {
			w := u64s(payload)[:len(d)/4]
			for i, x := range w {
				acc |= x&exp + carry
				dd := d[4*i : 4*i+4 : 4*i+4]
				lo, hi := uint32(x), uint32(x>>32)
				dd[0] = math.Float32frombits(lo<<16) - dd[0]
				dd[1] = math.Float32frombits(lo&0xffff0000) - dd[1]
				dd[2] = math.Float32frombits(hi<<16) - dd[2]
				dd[3] = math.Float32frombits(hi&0xffff0000) - dd[3]
			}
			k = 4 * len(w)
		}
		for i := k; i < len(d); i++ {
			h := uint64(payload[2*i]) | uint64(payload[2*i+1])<<8
			acc |= h&0x7f80 + 0x80
			d[i] = math.Float32frombits(uint32(h)<<16) - d[i]
		}
		if acc&sign != 0 {
			out := make([]float32, len(d))
			return c.decode(payload, out) // names the bad value
		}
		return nil
	case Int8:
		nb := (len(d) + Int8Block - 1) / Int8Block
		q := payload[4*nb:]
		for k := 0; k < nb; k++ {
			scale, err := int8Scale(payload, k)
			if err != nil {
				return err
			}
			lo, hi := k*Int8Block, min((k+1)*Int8Block, len(d))
			db, qb := d[lo:hi], q[lo:hi]
			if math.IsInf(float64(scale*128), 0) {
				// Rare: a scale near the float32 limit; check every value.
				var v [Int8Block]float32
				dequantize(v[:len(db)], qb, scale)
				if err := checkFinite(v[:len(db)]); err != nil {
					return fmt.Errorf("int8 block %d: %w", k, err)
				}
			}
			qb = qb[:len(db)]
			for i, x := range qb {
				db[i] = float32(float32(int8(x))*scale) - db[i] // as decode rounds: no fusing
			}
		}
		return nil
	}
	return fmt.Errorf("decodeSub: codec %s", c)
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
