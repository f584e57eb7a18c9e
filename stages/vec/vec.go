// Package vec holds the element-wise kernels of the model that are not matrix
// products: softmax exponentials and GELU. With cgo they run as C loops over
// eight floats at a time (AVX2+FMA, chosen at run time; a portable C loop
// otherwise); without cgo, or after UseGo(true), as the Go loops of this package.
// Both compute the same functions to within a few float32 ulp; they are not
// bit-identical to each other. Each is element-wise deterministic: an element's
// result does not depend on its position in the slice, so splitting work into
// chunks differently (another core count) gives the same bits.
package vec

import "sync/atomic"

var forceGo atomic.Bool

// UseGo makes every kernel run its pure-Go version (true) or the fastest
// available one (false). Tests and benchmarks use it to compare the two.
func UseGo(on bool) { forceGo.Store(on) }

// Impl names the kernels in use: "avx2", "c" or "go".
func Impl() string {
	if forceGo.Load() {
		return "go"
	}
	return cImpl()
}

// ExpShift replaces each x of v by e^(x−shift) and returns their sum. The
// arguments must be <= 0 after the shift (shift is the maximum of v in a softmax).
func ExpShift(v []float32, shift float32) float64 {
	if len(v) == 0 {
		return 0
	}
	if forceGo.Load() || !haveC {
		return ExpShiftGo(v, shift)
	}
	return expShiftC(v, shift)
}

// GeluForward computes GPT-2's tanh-GELU, out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))),
// and keeps the tanh in th for the backward pass.
func GeluForward(out, th, inp []float32) {
	if len(inp) == 0 {
		return
	}
	_, _ = out[len(inp)-1], th[len(inp)-1]
	if forceGo.Load() || !haveC {
		GeluForwardGo(out, th, inp)
		return
	}
	geluForwardC(out, th, inp)
}

// GeluBackward writes dinp = gelu'(inp)·dout from the tanh kept by GeluForward;
// dinp may alias dout.
func GeluBackward(dinp, th, inp, dout []float32) {
	if len(inp) == 0 {
		return
	}
	_, _, _ = dinp[len(inp)-1], th[len(inp)-1], dout[len(inp)-1]
	if forceGo.Load() || !haveC {
		GeluBackwardGo(dinp, th, inp, dout)
		return
	}
	geluBackwardC(dinp, th, inp, dout)
}
