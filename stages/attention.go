package stages

import (
	"math"

	"swarmnode/stages/blas"
	"swarmnode/stages/vec"
)

// attnBlock is the row block of the causal products: rows [r0, r0+attnBlock) only
// see keys [0, r0+attnBlock), so blocks above the diagonal are skipped (about 3/8
// of the attention products at T = 4·attnBlock, more for longer sequences).
const attnBlock = 64

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
			q, k, v := headQKV(qkv, b, h, T, C, hs)
			p := att[bh*T*T : (bh+1)*T*T]
			o := out[b*T*C+h*hs:]
			for r0 := 0; r0 < T; r0 += attnBlock {
				r1 := min(r0+attnBlock, T)
				blas.SgemmSeq(false, true, r1-r0, r1, hs, scale, q[r0*C3:], C3, k, C3, 0, p[r0*T:], T)
				for t := r0; t < r1; t++ {
					softmaxCausalRow(p[t*T:t*T+T], t)
				}
				blas.SgemmSeq(false, false, r1-r0, hs, r1, 1, p[r0*T:], T, v, C3, 0, o[r0*C:], C)
			}
		}
	})
}

// headQKV returns where head h of sequence b starts in the q, k and v parts of
// the fused projections qkv [B,T,3C]; rows are 3C apart.
func headQKV(qkv []float32, b, h, T, C, hs int) (q, k, v []float32) {
	base := b*T*3*C + h*hs
	return qkv[base:], qkv[base+C:], qkv[base+2*C:]
}

// softmaxCausalRow replaces row[0..t] by its softmax and zeroes row[t+1:].
func softmaxCausalRow(row []float32, t int) {
	r := row[:t+1]
	mx := r[0]
	for _, v := range r[1:] {
		if v > mx {
			mx = v
		}
	}
	inv := float32(1 / vec.ExpShift(r, mx))
	for j := range r {
		r[j] *= inv
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
			q, k, v := headQKV(qkv, b, h, T, C, hs)
			dq, dk, dv := headQKV(dqkv, b, h, T, C, hs)
			do := dout[b*T*C+h*hs:]
			p := att[bh*T*T : (bh+1)*T*T]
			// Column block [c0, c1) of dV and dK gets contributions from rows i >= c0
			// only; row block [r0, r1) of dP and dQ from columns j < r1 only.
			for c0 := 0; c0 < T; c0 += attnBlock {
				c1 := min(c0+attnBlock, T)
				// dV = Pᵀ·dO.
				blas.SgemmSeq(true, false, c1-c0, hs, T-c0, 1, p[c0*T+c0:], T, do[c0*C:], C, 0, dv[c0*C3:], C3)
				// dP = dO·Vᵀ, rows [c0, c1).
				blas.SgemmSeq(false, true, c1-c0, c1, hs, 1, do[c0*C:], C, v, C3, 0, ds[c0*T:], T)
			}
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
			for c0 := 0; c0 < T; c0 += attnBlock {
				c1 := min(c0+attnBlock, T)
				// dQ = scale·dS·K, rows [c0, c1).
				blas.SgemmSeq(false, false, c1-c0, hs, c1, scale, ds[c0*T:], T, k, C3, 0, dq[c0*C3:], C3)
				// dK = scale·dSᵀ·Q, rows [c0, c1) of dK.
				blas.SgemmSeq(true, false, c1-c0, hs, T-c0, scale, ds[c0*T+c0:], T, q[c0*C3:], C3, 0, dk[c0*C3:], C3)
			}
		}
	})
}

// attnScratchLen is the scratch attentionBackward needs: T·T floats per worker.
func attnScratchLen(B, T, NH int) int {
	return min(workers(), B*NH) * T * T
}
