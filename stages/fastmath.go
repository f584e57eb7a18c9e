package stages

import (
	"math"
)

// exp32 is e^x in float32 to about 1 ulp (Cephes expf): x = n·ln2 + r with
// |r| <= ln2/2, a degree-6 polynomial for e^r, and 2^n put into the exponent bits.
// It is several times faster than converting through math.Exp, and softmax and
// GELU call it for every element.
func exp32(x float32) float32 {
	if x > 88.72283 {
		return float32(math.Inf(1))
	}
	if x < -87.33654 {
		return 0
	}
	fx := x*1.442695040888963 + 0.5
	n := int32(fx)
	if float32(n) > fx {
		n--
	}
	fn := float32(n)
	x = x - fn*0.693359375 - fn*-2.12194440e-4
	z := x * x
	y := ((((1.9875691500e-4*x+1.3981999507e-3)*x+8.3334519073e-3)*x+4.1665795894e-2)*x+1.6666665459e-1)*x + 5.0000001201e-1
	y = y*z + x + 1
	if n > 127 { // 2^128 has no float32 exponent; e^x still fits below 88.72.
		y *= 2
		n--
	}
	return y * math.Float32frombits(uint32(n+127)<<23)
}

// tanh32 is tanh in float32 through one exp32. Its absolute error is about 1e-7
// everywhere (relative error grows near 0, where GELU adds it to 1 anyway).
func tanh32(u float32) float32 {
	if u > 9 {
		return 1
	}
	if u < -9 {
		return -1
	}
	return 1 - 2/(exp32(2*u)+1)
}
