package stages

// addInto adds src into dst element by element (a residual's backward: the
// gradient of a sum flows unchanged into both operands).
func addInto(dst, src []float32) {
	parallelFor(len(dst), 8192, func(lo, hi int) {
		d, s := dst[lo:hi], src[lo:hi]
		for i, v := range s {
			d[i] += v
		}
	})
}

// residualForward writes out = a + b.
func residualForward(out, a, b []float32) {
	parallelFor(len(out), 8192, func(lo, hi int) {
		o, x, y := out[lo:hi], a[lo:hi], b[lo:hi]
		for i := range o {
			o[i] = x[i] + y[i]
		}
	})
}
