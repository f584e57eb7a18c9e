package stages

import (
	"math"

	"swarmnode/stages/blas"
)

// attentionForward runs causal multi-head self-attention on the fused projections
// qkv [B,T,3C] (columns q | k | v, head h at columns h·hs..(h+1)·hs of each part).
// It writes the head outputs, side by side, to out [B,T,C] and keeps the
// attention probabilities in att [B,NH,T,T] (zero above the diagonal).
func attentionForward(out, att, qkv []float32, B, T, C, NH int) {
	hs := C / NH
	scale := float32(1 / math.Sqrt(float64(hs)))
	C3 := 3 * C
	parallelFor(B*NH, 1, func(lo, hi int) {
		for bh := lo; bh < hi; bh++ {
			b, h := bh/NH, bh%NH
			base := b * T * C3
			q := qkv[base+h*hs:]
			k := qkv[base+C+h*hs:]
			v := qkv[base+2*C+h*hs:]
			p := att[bh*T*T : (bh+1)*T*T]
			blas.SgemmSeq(false, true, T, T, hs, scale, q, C3, k, C3, 0, p, T)
			for t := 0; t < T; t++ {
				softmaxCausalRow(p[t*T:t*T+T], t)
			}
			blas.SgemmSeq(false, false, T, hs, T, 1, p, T, v, C3, 0, out[b*T*C+h*hs:], C)
		}
	})
}

// softmaxCausalRow replaces row[0..t] by its softmax and zeroes row[t+1:].
func softmaxCausalRow(row []float32, t int) {
	mx := row[0]
	for _, v := range row[1 : t+1] {
		if v > mx {
			mx = v
		}
	}
	var sum float32
	for j := 0; j <= t; j++ {
		e := exp32(row[j] - mx)
		row[j] = e
		sum += e
	}
	inv := 1 / sum
	for j := 0; j <= t; j++ {
		row[j] *= inv
	}
	clear(row[t+1:])
}

// attentionBackward writes the gradient of qkv into dqkv [B,T,3C] given the
// gradient dout [B,T,C] of the head outputs. scratch holds T·T floats per worker
// (attnScratch).
func attentionBackward(dqkv, dout, qkv, att, scratch []float32, B, T, C, NH int) {
	hs := C / NH
	scale := float32(1 / math.Sqrt(float64(hs)))
	C3 := 3 * C
	parallelWorkers(B*NH, 1, len(scratch)/(T*T), func(w, lo, hi int) {
		ds := scratch[w*T*T : (w+1)*T*T]
		for bh := lo; bh < hi; bh++ {
			b, h := bh/NH, bh%NH
			base := b * T * C3
			q := qkv[base+h*hs:]
			k := qkv[base+C+h*hs:]
			v := qkv[base+2*C+h*hs:]
			dq := dqkv[base+h*hs:]
			dk := dqkv[base+C+h*hs:]
			dv := dqkv[base+2*C+h*hs:]
			do := dout[b*T*C+h*hs:]
			p := att[bh*T*T : (bh+1)*T*T]
			// dV = Pᵀ·dO; dP = dO·Vᵀ.
			blas.SgemmSeq(true, false, T, hs, T, 1, p, T, do, C, 0, dv, C3)
			blas.SgemmSeq(false, true, T, T, hs, 1, do, C, v, C3, 0, ds, T)
			// dS = P ⊙ (dP − rowsum(dP ⊙ P)), only on and below the diagonal.
			for t := 0; t < T; t++ {
				pr := p[t*T : t*T+t+1]
				dr := ds[t*T : t*T+T]
				var dot float32
				for j, pv := range pr {
					dot += pv * dr[j]
				}
				for j, pv := range pr {
					dr[j] = pv * (dr[j] - dot)
				}
				clear(dr[t+1:])
			}
			// dQ = scale·dS·K; dK = scale·dSᵀ·Q.
			blas.SgemmSeq(false, false, T, hs, T, scale, ds, T, k, C3, 0, dq, C3)
			blas.SgemmSeq(true, false, T, hs, T, scale, ds, T, q, C3, 0, dk, C3)
		}
	})
}

// attnScratchLen is the scratch attentionBackward needs: T·T floats per worker.
func attnScratchLen(B, T, NH int) int {
	return min(workers(), B*NH) * T * T
}
