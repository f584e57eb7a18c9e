package vec

import "math"

// GeluScale is sqrt(2/pi), the constant of GPT-2's tanh approximation.
const GeluScale = 0.7978845608028654

// Exp32 is e^x in float32 to about 1 ulp (Cephes expf): x = n·ln2 + r with
// |r| <= ln2/2, a degree-6 polynomial for e^r, and 2^n put into the exponent bits.
func Exp32(x float32) float32 {
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

// Tanh32 is tanh in float32 by a rational minimax approximation (the one Eigen
// uses for float), with absolute error about 3e-7, no exponential, and exactly ±1 where it saturates.
func Tanh32(x float32) float32 {
	// Beyond this the approximation is within float32 rounding of ±1; returning
	// ±1 exactly keeps 1−tanh² (GELU's derivative) from turning that rounding
	// into noise.
	const clampAt = 7.90531110763549805
	if x >= clampAt {
		return 1
	} else if x <= -clampAt {
		return -1
	}
	x2 := x * x
	p := x2*-2.76076847742355e-16 + 2.00018790482477e-13
	p = p*x2 + -8.60467152213735e-11
	p = p*x2 + 5.12229709037114e-08
	p = p*x2 + 1.48572235717979e-05
	p = p*x2 + 6.37261928875436e-04
	p = p*x2 + 4.89352455891786e-03
	p *= x
	q := x2*1.19825839466702e-06 + 1.18534705686654e-04
	q = q*x2 + 2.26843463243900e-03
	q = q*x2 + 4.89352518554385e-03
	return p / q
}

// ExpShiftGo is ExpShift in Go, with Exp32 written into the loop (a call would
// cost as much as the work).
func ExpShiftGo(v []float32, shift float32) float64 {
	var sum float64
	for i, x := range v {
		x -= shift
		if x < -87.33654 {
			v[i] = 0
			continue
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
		y = (y*z + x + 1) * math.Float32frombits(uint32(n+127)<<23)
		v[i] = y
		sum += float64(y)
	}
	return sum
}

// GeluForwardGo is GeluForward in Go.
func GeluForwardGo(out, th, inp []float32) {
	out, th = out[:len(inp)], th[:len(inp)]
	for i, x := range inp {
		t := Tanh32(GeluScale * (x + 0.044715*x*x*x))
		th[i] = t
		out[i] = 0.5 * x * (1 + t)
	}
}

// GeluBackwardGo is GeluBackward in Go.
func GeluBackwardGo(dinp, th, inp, dout []float32) {
	dinp, th, dout = dinp[:len(inp)], th[:len(inp)], dout[:len(inp)]
	for i, x := range inp {
		t := th[i]
		d := 0.5*(1+t) + 0.5*x*(1-t*t)*GeluScale*(1+3*0.044715*x*x)
		dinp[i] = d * dout[i]
	}
}
