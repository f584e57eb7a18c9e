package stages

import "swarmnode/stages/vec"

// geluForward computes GPT-2's tanh-GELU of inp into out and keeps the tanh in th:
// the backward pass needs it and it is the costly part.
func geluForward(out, th, inp []float32) {
	parallelFor(len(inp), 4096, func(lo, hi int) {
		vec.GeluForward(out[lo:hi], th[lo:hi], inp[lo:hi])
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
		vec.GeluBackward(dinp[lo:hi], th[lo:hi], inp[lo:hi], dout[lo:hi])
	})
}
