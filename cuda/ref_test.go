package cuda

import "math"

// Float64 CPU references of every op, written for clarity rather than speed.

func refGemm(transA, transB bool, M, N, K int, alpha float64, A []float64, lda int, B []float64, ldb int, beta float64, C []float64, ldc int) {
	at := func(x []float64, ld int, trans bool, i, j int) float64 {
		if trans {
			return x[j*ld+i]
		}
		return x[i*ld+j]
	}
	for i := 0; i < M; i++ {
		for j := 0; j < N; j++ {
			var s float64
			for k := 0; k < K; k++ {
				s += at(A, lda, transA, i, k) * at(B, ldb, transB, k, j)
			}
			C[i*ldc+j] = alpha*s + beta*C[i*ldc+j]
		}
	}
}

func refLayerNorm(x, w, b []float64, N, C int) (out, mean, rstd []float64) {
	out, mean, rstd = make([]float64, N*C), make([]float64, N), make([]float64, N)
	for i := 0; i < N; i++ {
		row := x[i*C : i*C+C]
		var m float64
		for _, v := range row {
			m += v
		}
		m /= float64(C)
		var vs float64
		for _, v := range row {
			vs += (v - m) * (v - m)
		}
		r := 1 / math.Sqrt(vs/float64(C)+1e-5)
		for c, v := range row {
			out[i*C+c] = (v-m)*r*w[c] + b[c]
		}
		mean[i], rstd[i] = m, r
	}
	return
}

func refLayerNormBwd(dout, x, w []float64, N, C int) (dx, dw, db []float64) {
	dx, dw, db = make([]float64, N*C), make([]float64, C), make([]float64, C)
	_, mean, rstd := refLayerNorm(x, w, make([]float64, C), N, C)
	for i := 0; i < N; i++ {
		var sd, sdx float64
		for c := 0; c < C; c++ {
			xh := (x[i*C+c] - mean[i]) * rstd[i]
			dn := dout[i*C+c] * w[c]
			sd += dn
			sdx += dn * xh
			dw[c] += dout[i*C+c] * xh
			db[c] += dout[i*C+c]
		}
		sd /= float64(C)
		sdx /= float64(C)
		for c := 0; c < C; c++ {
			xh := (x[i*C+c] - mean[i]) * rstd[i]
			dx[i*C+c] = rstd[i] * (dout[i*C+c]*w[c] - sd - xh*sdx)
		}
	}
	return
}

const geluK = 0.7978845608028654

func refGelu(x float64) float64 { return 0.5 * x * (1 + math.Tanh(geluK*(x+0.044715*x*x*x))) }

func refGeluGrad(x float64) float64 {
	th := math.Tanh(geluK * (x + 0.044715*x*x*x))
	return 0.5*(1+th) + 0.5*x*(1-th*th)*geluK*(1+3*0.044715*x*x)
}

// refAttention returns the head outputs [B,T,C] and the probabilities [B,NH,T,T].
func refAttention(qkv []float64, B, T, C, NH int) (out, att []float64) {
	hd := C / NH
	scale := 1 / math.Sqrt(float64(hd))
	out, att = make([]float64, B*T*C), make([]float64, B*NH*T*T)
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			P := att[(b*NH+h)*T*T:]
			for i := 0; i < T; i++ {
				q := qkv[(b*T+i)*3*C+h*hd:]
				mx := math.Inf(-1)
				for j := 0; j <= i; j++ {
					k := qkv[(b*T+j)*3*C+C+h*hd:]
					var s float64
					for d := 0; d < hd; d++ {
						s += q[d] * k[d]
					}
					P[i*T+j] = s * scale
					mx = math.Max(mx, s*scale)
				}
				var sum float64
				for j := 0; j <= i; j++ {
					P[i*T+j] = math.Exp(P[i*T+j] - mx)
					sum += P[i*T+j]
				}
				for j := 0; j <= i; j++ {
					P[i*T+j] /= sum
					v := qkv[(b*T+j)*3*C+2*C+h*hd:]
					for d := 0; d < hd; d++ {
						out[(b*T+i)*C+h*hd+d] += P[i*T+j] * v[d]
					}
				}
			}
		}
	}
	return
}

func refAttentionBwd(dout, qkv []float64, B, T, C, NH int) []float64 {
	hd := C / NH
	scale := 1 / math.Sqrt(float64(hd))
	_, att := refAttention(qkv, B, T, C, NH)
	dqkv := make([]float64, B*T*3*C)
	dP := make([]float64, T)
	for b := 0; b < B; b++ {
		for h := 0; h < NH; h++ {
			P := att[(b*NH+h)*T*T:]
			for i := 0; i < T; i++ {
				do := dout[(b*T+i)*C+h*hd:]
				var dot float64
				for j := 0; j <= i; j++ {
					v := qkv[(b*T+j)*3*C+2*C+h*hd:]
					dv := dqkv[(b*T+j)*3*C+2*C+h*hd:]
					var s float64
					for d := 0; d < hd; d++ {
						s += do[d] * v[d]
						dv[d] += P[i*T+j] * do[d]
					}
					dP[j] = s
					dot += s * P[i*T+j]
				}
				q := qkv[(b*T+i)*3*C+h*hd:]
				dq := dqkv[(b*T+i)*3*C+h*hd:]
				for j := 0; j <= i; j++ {
					ds := P[i*T+j] * (dP[j] - dot) * scale
					k := qkv[(b*T+j)*3*C+C+h*hd:]
					dk := dqkv[(b*T+j)*3*C+C+h*hd:]
					for d := 0; d < hd; d++ {
						dq[d] += ds * k[d]
						dk[d] += ds * q[d]
					}
				}
			}
		}
	}
	return dqkv
}

func refCrossEntropy(logits []float64, targets []int32, N, V int, dscale float64) (losses, dlogits []float64) {
	losses, dlogits = make([]float64, N), make([]float64, N*V)
	for n := 0; n < N; n++ {
		row := logits[n*V : n*V+V]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = math.Max(mx, v)
		}
		var s float64
		for _, v := range row {
			s += math.Exp(v - mx)
		}
		lse := math.Log(s) + mx
		losses[n] = lse - row[targets[n]]
		for v := range row {
			p := math.Exp(row[v] - lse)
			if v == int(targets[n]) {
				p--
			}
			dlogits[n*V+v] = p * dscale
		}
	}
	return
}
