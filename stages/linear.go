package stages

import "swarmnode/stages/blas"

// linearForward computes out = inp·w + bias for N rows: inp [N,IC], w [IC,OC]
// (HF Conv1D orientation), bias [OC] or nil, out [N,OC].
func linearForward(out, inp, w, bias []float32, N, IC, OC int) {
	beta := float32(0)
	if bias != nil {
		parallelFor(N, 32, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				copy(out[i*OC:i*OC+OC], bias)
			}
		})
		beta = 1
	}
	blas.Sgemm(false, false, N, OC, IC, 1, inp, IC, w, OC, beta, out, OC)
}

// linearBackward computes dinp = dout·wᵀ (added to dinp when accum is set,
// skipped when dinp is nil) and adds inpᵀ·dout into dw and column sums of dout
// into dbias (when not nil).
func linearBackward(dinp, dw, dbias, dout, inp, w []float32, N, IC, OC int, accum bool) {
	if dinp != nil {
		beta := float32(0)
		if accum {
			beta = 1
		}
		blas.Sgemm(false, true, N, IC, OC, 1, dout, OC, w, OC, beta, dinp, IC)
	}
	blas.Sgemm(true, false, IC, OC, N, 1, inp, IC, dout, OC, 1, dw, OC)
	if dbias != nil {
		colSumInto(dbias, dout, N, OC)
	}
}

// colSumInto adds the column sums of the [N,C] matrix m into dst, splitting the
// columns across goroutines so that no two write the same element.
func colSumInto(dst, m []float32, N, C int) {
	parallelFor(C, 64, func(lo, hi int) {
		d := dst[lo:hi]
		for i := 0; i < N; i++ {
			row := m[i*C+lo : i*C+hi]
			for c, v := range row {
				d[c] += v
			}
		}
	})
}

// residualLinearForward computes out = resid + inp·w + bias, the projection that
// closes a residual branch, without a separate buffer for the branch.
func residualLinearForward(out, resid, inp, w, bias []float32, N, IC, OC int) {
	parallelFor(N, 32, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			o := out[i*OC : i*OC+OC]
			r := resid[i*OC : i*OC+OC]
			for c := range o {
				o[c] = r[c] + bias[c]
			}
		}
	})
	blas.Sgemm(false, false, N, OC, IC, 1, inp, IC, w, OC, 1, out, OC)
}

// linearForwardT computes out = inp·wᵀ for w stored (out, in) like nn.Linear:
// inp [N,IC], w [OC,IC], out [N,OC]. The LM head uses it.
func linearForwardT(out, inp, w []float32, N, IC, OC int) {
	blas.Sgemm(false, true, N, OC, IC, 1, inp, IC, w, IC, 0, out, OC)
}

// linearBackwardT is linearForwardT's backward: dinp = dout·w, dw += doutᵀ·inp.
func linearBackwardT(dinp, dw, dout, inp, w []float32, N, IC, OC int) {
	blas.Sgemm(false, false, N, IC, OC, 1, dout, OC, w, IC, 0, dinp, IC)
	blas.Sgemm(true, false, OC, IC, N, 1, dout, OC, inp, IC, 1, dw, IC)
}
