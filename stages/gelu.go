package stages

// geluScale is sqrt(2/pi), the constant of GPT-2's tanh approximation.
const geluScale = 0.7978845608028654

// geluForward computes GPT-2's tanh-GELU, out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))),
// and keeps the tanh in th: the backward pass needs it and it is the only costly
// part (one exponential per element).
func geluForward(out, th, inp []float32) {
	parallelFor(len(inp), 4096, func(lo, hi int) {
		o, tv, in := out[lo:hi], th[lo:hi], inp[lo:hi]
		for i, x := range in {
			t := tanh32(geluScale * (x + 0.044715*x*x*x))
			tv[i] = t
			o[i] = 0.5 * x * (1 + t)
		}
	})
}

// geluRecompute rebuilds the forward output from inp and the kept tanh, so that a
// pass need not cache both.
func geluRecompute(out, th, inp []float32) {
	parallelFor(len(inp), 8192, func(lo, hi int) {
		o, tv, in := out[lo:hi], th[lo:hi], inp[lo:hi]
		for i, x := range in {
			o[i] = 0.5 * x * (1 + tv[i])
		}
	})
}

// geluBackward writes dinp = gelu'(inp)·dout from the kept tanh; dinp may alias dout.
func geluBackward(dinp, th, inp, dout []float32) {
	parallelFor(len(inp), 4096, func(lo, hi int) {
		di, tv, in, g := dinp[lo:hi], th[lo:hi], inp[lo:hi], dout[lo:hi]
		for i, x := range in {
			t := tv[i]
			d := 0.5*(1+t) + 0.5*x*(1-t*t)*geluScale*(1+3*0.044715*x*x)
			di[i] = d * g[i]
		}
	})
}
