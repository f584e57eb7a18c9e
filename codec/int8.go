package codec

import (
	"encoding/binary"
	"fmt"
	"math"
)

// int8At returns where block k of an int8 tensor of n values lies in its encoding:
// the offsets of its scale and of its values, and how much farther on the next
// block's scale and values lie.
func (f Format) int8At(n, k int) (so, qo, sstep, qstep int) {
	if f.Layout == Planar {
		return 4 * k, 4*blocks(n, f.Block) + k*f.Block, 4, f.Block
	}
	o := k * (4 + f.Block)
	return o, o + 4, 4 + f.Block, 4 + f.Block
}

// encodeInt8 quantizes blocks [k0, k1) of src into out, which is the whole encoded
// tensor. With round set it also replaces their values by the decoded ones.
func (f Format) encodeInt8(out []byte, src []float32, k0, k1 int, round bool) error {
	so, qo, sstep, qstep := f.int8At(len(src), k0)
	for k := k0; k < k1; k, so, qo = k+1, so+sstep, qo+qstep {
		lo := k * f.Block
		blk := src[lo:min(lo+f.Block, len(src))]
		amax := absMax(blk)
		if !finite(amax) {
			return checkFinite(blk, lo)
		}
		scale := math.Float32frombits(amax) / 127
		binary.LittleEndian.PutUint32(out[so:], math.Float32bits(scale))
		q := out[qo : qo+len(blk)]
		// A subnormal scale has no finite inverse; the largest float keeps every
		// product small and finite.
		switch inv := min(1/scale, math.MaxFloat32); {
		case scale == 0:
			clear(q)
		case f.Layout == Planar:
			roundEven(q, blk, inv)
		default:
			roundAway(q, blk, inv)
		}
		if round {
			if overflows(scale * 127) {
				return fmt.Errorf("%w: int8 block at index %d decodes beyond float32", ErrNonFinite, lo)
			}
			dequantize(blk, q, scale)
		}
	}
	return nil
}

// absMax returns the bits of the largest |v| in vals, or of a NaN or Inf among them:
// non-negative floats order like their bits, and clearing the sign bit gives |v|.
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

// roundAway writes v·inv rounded half away from zero, clamped to ±127, without a
// branch (random signs would mispredict half the time): it adds ±0.5 carrying the
// product's sign and truncates.
func roundAway(q []byte, vals []float32, inv float32) {
	q = q[:len(vals)]
	for i, v := range vals {
		x := float32(v * inv) // rounded here: the conversion forbids fusing
		half := math.Float32frombits(math.Float32bits(x)&0x80000000 | 0x3f000000)
		q[i] = byte(int8(max(-127, min(127, int32(x+half)))))
	}
}

// roundEven writes v·inv rounded half to even. |v·inv| ≤ 127 up to rounding, where
// adding 1.5·2²³ leaves the rounded integer in the low mantissa bits, in two's
// complement: no float-to-int conversion, no branch, no clamp.
func roundEven(q []byte, vals []float32, inv float32) {
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

// int8Scale reads the scale at the start of b, of the block whose first value has
// index lo, and refuses a negative, NaN or infinite one: a negative scale would
// only flip signs, but no honest encoder makes one.
func int8Scale(b []byte, lo int) (float32, error) {
	sb := binary.LittleEndian.Uint32(b)
	scale := math.Float32frombits(sb)
	if !finite(sb) || scale < 0 {
		return 0, fmt.Errorf("%w: int8 scale %g of block at index %d", ErrNonFinite, scale, lo)
	}
	return scale, nil
}

// hugeScale reports whether a block of this scale may decode to Inf: |q| ≤ 128,
// so only a scale near the float32 limit needs its values checked.
func hugeScale(scale float32) bool { return scale > math.MaxFloat32/128 }

// decodeInt8 dequantizes blocks [k0, k1) of the int8 tensor src into dst, which
// holds the whole tensor's values; with sub set it stores each value minus the
// one in dst instead (see DecodeSub).
func (f Format) decodeInt8(dst []float32, src []byte, k0, k1 int, sub bool) error {
	so, qo, sstep, qstep := f.int8At(len(dst), k0)
	for k := k0; k < k1; k, so, qo = k+1, so+sstep, qo+qstep {
		lo := k * f.Block
		out := dst[lo:min(lo+f.Block, len(dst))]
		scale, err := int8Scale(src[so:], lo)
		if err != nil {
			return err
		}
		q := src[qo : qo+len(out)]
		if hugeScale(scale) {
			for i, x := range q {
				if overflows(float32(int8(x)) * scale) {
					return nonFiniteAt(lo + i)
				}
			}
		}
		if sub {
			for i, x := range q {
				out[i] = float32(float32(int8(x))*scale) - out[i] // rounded as Decode rounds: no fusing
			}
		} else {
			dequantize(out, q, scale)
		}
	}
	return nil
}
