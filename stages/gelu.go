package stages

// geluScale is sqrt(2/pi), the constant of GPT-2's tanh approximation.
const geluScale = 0.7978845608028654

// geluForward computes GPT-2's tanh-GELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
func geluForward(out, inp []float32) {
	parallelFor(len(inp), 4096, func(lo, hi int) {
		o, in := out[lo:hi], inp[lo:hi]
		for i, x := range in {
			u := geluScale * (x + 0.044715*x*x*x)
			o[i] = 0.5 * x * (1 + tanh32(u))
		}
	})
}

// geluBackward writes dinp = gelu'(inp)·dout; dinp may alias dout.
func geluBackward(dinp, inp, dout []float32) {
	parallelFor(len(inp), 4096, func(lo, hi int) {
		di, in, g := dinp[lo:hi], inp[lo:hi], dout[lo:hi]
		for i, x := range in {
			u := geluScale * (x + 0.044715*x*x*x)
			th := tanh32(u)
			sech2 := 1 - th*th
			d := 0.5*(1+th) + 0.5*x*sech2*geluScale*(1+3*0.044715*x*x)
			di[i] = d * g[i]
		}
	})
}
