package stages

import "math"

// lnEps is GPT-2's LayerNorm epsilon.
const lnEps = 1e-5

// layernormForward normalises each of the N rows of inp (width C) and applies the
// affine w, b. It keeps each row's mean and 1/std for the backward pass.
func layernormForward(out, mean, rstd, inp, w, b []float32, N, C int) {
	parallelFor(N, 16, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x := inp[i*C : i*C+C]
			var s float64
			for _, v := range x {
				s += float64(v)
			}
			m := s / float64(C)
			var vs float64
			for _, v := range x {
				d := float64(v) - m
				vs += d * d
			}
			r := 1 / math.Sqrt(vs/float64(C)+lnEps)
			mf, rf := float32(m), float32(r)
			o := out[i*C : i*C+C]
			for c, v := range x {
				o[c] = (v-mf)*rf*w[c] + b[c]
			}
			mean[i], rstd[i] = mf, rf
		}
	})
}

// layernormBackward adds the gradient with respect to inp into dinp and the
// gradients of w and b into dw and db.
func layernormBackward(dinp, dw, db, dout, inp, w, mean, rstd []float32, N, C int) {
	nw := workers()
	if nw > N/16 {
		nw = max(1, N/16)
	}
	part := make([]float32, 2*C*nw)
	parallelWorkers(N, 16, nw, func(wk, lo, hi int) {
		pdw := part[2*C*wk : 2*C*wk+C]
		pdb := part[2*C*wk+C : 2*C*wk+2*C]
		for i := lo; i < hi; i++ {
			x := inp[i*C : i*C+C]
			g := dout[i*C : i*C+C]
			m, r := mean[i], rstd[i]
			var sumD, sumDX float32
			for c := range g {
				xh := (x[c] - m) * r
				dn := g[c] * w[c]
				sumD += dn
				sumDX += dn * xh
				pdw[c] += g[c] * xh
				pdb[c] += g[c]
			}
			sumD /= float32(C)
			sumDX /= float32(C)
			di := dinp[i*C : i*C+C]
			for c := range g {
				xh := (x[c] - m) * r
				di[c] += r * (g[c]*w[c] - sumD - xh*sumDX)
			}
		}
	})
	for wk := 0; wk < nw; wk++ {
		pdw := part[2*C*wk : 2*C*wk+C]
		pdb := part[2*C*wk+C : 2*C*wk+2*C]
		for c := 0; c < C; c++ {
			dw[c] += pdw[c]
			db[c] += pdb[c]
		}
	}
}
