package codec

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// nativeLE is true on little-endian machines, where fp32 values go to and from the
// wire as plain memory copies and bf16 is done a machine word at a time.
var nativeLE = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// FP32View returns the memory of vals as bytes and whether those bytes are the FP32
// encoding of vals, as they are on a little-endian machine: a sender can then write
// the values, and a receiver read into them, without a copy.
func FP32View(vals []float32) ([]byte, bool) {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(vals))), 4*len(vals)), nativeLE
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

// Non-finite floats have an all-ones exponent. Adding one exponent step to the
// masked exponent carries into the sign bit exactly for those, so the sums of many
// values can be ORed and tested with one branch instead of one per value; a word
// holds two float32 lanes, and no carry crosses a lane.
const (
	expMask2  = 0x7f800000_7f800000
	expStep2  = 0x00800000_00800000
	signBits2 = 0x80000000_80000000
)

// CheckFinite returns an error wrapping ErrNonFinite that names the first NaN or
// Inf in vals, or nil when there is none. The common all-finite case is branch-free.
func CheckFinite(vals []float32) error { return checkFinite(vals, 0) }

// checkFinite is CheckFinite for a slice whose first value has index base.
func checkFinite(vals []float32, base int) error {
	if len(vals) == 0 {
		return nil
	}
	words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(vals))), len(vals)/2)
	var b0, b1, b2, b3 uint64
	k := 0
	for ; k+4 <= len(words); k += 4 {
		w := words[k : k+4 : k+4]
		b0 |= w[0]&expMask2 + expStep2
		b1 |= w[1]&expMask2 + expStep2
		b2 |= w[2]&expMask2 + expStep2
		b3 |= w[3]&expMask2 + expStep2
	}
	for ; k < len(words); k++ {
		b0 |= words[k]&expMask2 + expStep2
	}
	if len(vals)%2 == 1 {
		b0 |= uint64(math.Float32bits(vals[len(vals)-1])&0x7f800000 + 0x00800000)
	}
	if (b0|b1|b2|b3)&signBits2 == 0 {
		return nil
	}
	for i, v := range vals {
		if !finite(math.Float32bits(v)) {
			return nonFiniteAt(base + i)
		}
	}
	return nil
}

// encodeFP32 writes src little-endian into out (4*len(src) bytes); base is the
// index of src[0] in the tensor, for the error.
func encodeFP32(out []byte, src []float32, base int) error {
	if err := checkFinite(src, base); err != nil {
		return err
	}
	if b, ok := FP32View(src); ok {
		copy(out, b)
		return nil
	}
	for i, v := range src {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
	}
	return nil
}

// decodeFP32 is encodeFP32's inverse.
func decodeFP32(dst []float32, src []byte, base int) error {
	if b, ok := FP32View(dst); ok {
		copy(b, src)
	} else {
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	}
	return checkFinite(dst, base)
}

// decodeSubFP32 sets d[i] to the value src holds minus d[i].
func decodeSubFP32(d []float32, src []byte) error {
	src = src[:4*len(d)]
	for i := range d {
		b := binary.LittleEndian.Uint32(src[4*i:])
		if !finite(b) {
			return nonFiniteAt(i)
		}
		d[i] = math.Float32frombits(b) - d[i]
	}
	return nil
}

// bf16Round rounds a finite float32 to bfloat16, to nearest even. A value that rounds
// past the largest bf16 would become Inf, so it saturates instead.
func bf16Round(b uint32) uint16 {
	r := b + 0x7fff + (b>>16)&1
	if !finite(r) {
		return uint16(b>>16) | 0x007f // max finite magnitude, sign kept
	}
	return uint16(r >> 16)
}

// encodeBF16 rounds src to bfloat16 into out (2*len(src) bytes); base is the index
// of src[0] in the tensor, for the error. With round set it also replaces src by
// the rounded values.
func encodeBF16(out []byte, src []float32, base int, round bool) error {
	out = out[:2*len(src)]
	i := 0
	if nativeLE {
		i = encodeBF16Words(out, src, round)
	}
	for ; i < len(src); i++ {
		b := math.Float32bits(src[i])
		if !finite(b) {
			return nonFiniteAt(base + i)
		}
		h := bf16Round(b)
		binary.LittleEndian.PutUint16(out[2*i:], h)
		if round {
			src[i] = math.Float32frombits(uint32(h) << 16)
		}
	}
	return nil
}

// encodeBF16Words is encodeBF16 two values per 64-bit word, on a little-endian
// machine. It returns how many values it did: all of them or, where a value is not
// finite or rounds past bf16's range, none (with round set, those of the words
// before), and the scalar loop goes on to report or saturate that value. Those
// values are the ones whose magnitude bits, plus 0x00808000, carry into the sign
// bit; finite values never carry out of their 32 bits when rounded, so the lanes
// stay apart. Without round the loop tests the values once, after it.
func encodeBF16Words(out []byte, src []float32, round bool) int {
	const lsb, half, top = 0x00000001_00000001, 0x00007fff_00007fff, 0xffff0000_ffff0000
	const mag, big = 0x7fffffff_7fffffff, 0x00808000_00808000
	view, _ := FP32View(src)
	w := u64s(view)
	u := u32s(out)[:len(w)]
	var acc uint64
	for i, x := range w {
		flag := x&mag + big
		r := (x + half + (x>>16)&lsb) & top
		u[i] = uint32(r>>16) | uint32(r>>32)&0xffff0000
		if round {
			if flag&signBits2 != 0 {
				return 2 * i // before the word's values are replaced
			}
			w[i] = r
		}
		acc |= flag
	}
	if acc&signBits2 != 0 {
		return 0
	}
	return 2 * len(w)
}

// bf16 lanes, four to a word: a bf16 exponent of all ones (Inf, NaN) carries into
// bit 15 of its lane when one exponent step is added.
const (
	bf16Exp4   = 0x7f807f80_7f807f80
	bf16Step4  = 0x00800080_00800080
	bf16Signs4 = 0x80008000_80008000
)

// decodeBF16 widens bfloat16 to float32; base is the index of dst[0], for the error.
func decodeBF16(dst []float32, src []byte, base int) error {
	src = src[:2*len(dst)]
	var acc uint64
	i := 0
	if nativeLE {
		view, _ := FP32View(dst)
		w := u64s(src)[:len(dst)/4]
		o := u64s(view)[: 2*len(w) : 2*len(w)]
		for k, x := range w {
			acc |= x&bf16Exp4 + bf16Step4
			o[2*k] = (x&0xffff)<<16 | (x&0xffff0000)<<32
			o[2*k+1] = (x>>32&0xffff)<<16 | (x>>32&0xffff0000)<<32
		}
		i = 4 * len(w)
	}
	for ; i < len(dst); i++ {
		h := uint64(binary.LittleEndian.Uint16(src[2*i:]))
		acc |= h&0x7f80 + 0x80
		dst[i] = math.Float32frombits(uint32(h) << 16)
	}
	if acc&bf16Signs4 != 0 {
		return bf16NonFinite(src, base)
	}
	return nil
}

// decodeSubBF16 sets d[i] to the bf16 value src holds minus d[i].
func decodeSubBF16(d []float32, src []byte) error {
	src = src[:2*len(d)]
	var acc uint64
	i := 0
	if nativeLE {
		w := u64s(src)[:len(d)/4]
		for k, x := range w {
			acc |= x&bf16Exp4 + bf16Step4
			dd := d[4*k : 4*k+4 : 4*k+4]
			lo, hi := uint32(x), uint32(x>>32)
			dd[0] = math.Float32frombits(lo<<16) - dd[0]
			dd[1] = math.Float32frombits(lo&0xffff0000) - dd[1]
			dd[2] = math.Float32frombits(hi<<16) - dd[2]
			dd[3] = math.Float32frombits(hi&0xffff0000) - dd[3]
		}
		i = 4 * len(w)
	}
	for ; i < len(d); i++ {
		h := uint64(binary.LittleEndian.Uint16(src[2*i:]))
		acc |= h&0x7f80 + 0x80
		d[i] = math.Float32frombits(uint32(h)<<16) - d[i]
	}
	if acc&bf16Signs4 != 0 {
		return bf16NonFinite(src, 0)
	}
	return nil
}

// bf16NonFinite names the first NaN or Inf among the bf16 values of src, whose
// first value has index base.
func bf16NonFinite(src []byte, base int) error {
	for i := 0; 2*i+1 < len(src); i++ {
		if !finite(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16) {
			return nonFiniteAt(base + i)
		}
	}
	return nil
}
