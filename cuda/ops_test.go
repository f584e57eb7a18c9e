package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

const tolF32, tolBF16 = 1e-4, 2e-2

// tolFor is the relative tolerance of a result computed in bfloat16 or float32.
func tolFor(bf16 bool) float64 {
	if bf16 {
		return tolBF16
	}
	return tolF32
}

func TestGEMM(t *testing.T) {
	device(t)
	r := newRand(t)
	const M, N, K = 67, 45, 131
	for _, tc := range []struct {
		name   string
		dt     DType
		mode   Compute
		tol    float64
		tA, tB bool
	}{
		{"fp32 NN", F32, ComputeFP32, tolF32, false, false},
		{"fp32 TN", F32, ComputeFP32, tolF32, true, false},
		{"fp32 NT", F32, ComputeFP32, tolF32, false, true},
		{"fp32 TT", F32, ComputeFP32, tolF32, true, true},
		{"tf32 NN", F32, ComputeTF32, 5e-3, false, false},
		{"bf16 NN", BF16, ComputeFP32, tolBF16, false, false},
		{"bf16 NT", BF16, ComputeFP32, tolBF16, false, true},
		{"bf16 TN", BF16, ComputeFP32, tolBF16, true, false},
	} {
		a, b, c0 := randn(r, M*K, 1), randn(r, K*N, 1), randn(r, M*N, 1)
		lda, ldb := K, N
		if tc.tA {
			lda = M
		}
		if tc.tB {
			ldb = K
		}
		ref := f64(c0)
		refGemm(tc.tA, tc.tB, M, N, K, 0.5, f64(a), lda, f64(b), ldb, 0.25, ref, N)
		var got []float32
		run(t, func(g *gpu) {
			var A, B Buf
			if tc.dt == BF16 {
				A, B = g.upBF16(a), g.upBF16(b)
			} else {
				A, B = g.up(a), g.up(b)
			}
			C := g.up(c0)
			g.check(g.c.Gemm(tc.tA, tc.tB, M, N, K, 0.5, A, lda, B, ldb, 0.25, C, N, tc.mode))
			got = g.down(C)
		})
		checkErr(t, "GEMM "+tc.name, got, ref, tc.tol)
	}
	// A shape that does not fit its buffer is an error, not a fault.
	run(t, func(g *gpu) {
		A, B, C := g.up(randn(r, 10, 1)), g.up(randn(r, 10, 1)), g.up(randn(r, 10, 1))
		if err := g.c.Gemm(false, false, 4, 4, 4, 1, A, 4, B, 4, 0, C, 4, ComputeFP32); err == nil {
			g.check(fmt.Errorf("GEMM on short buffers did not fail"))
		}
	})
}

// BenchmarkGEMM4096 measures 4096³ products in each precision; it reports
// TFLOP/s of device time.
func BenchmarkGEMM4096(b *testing.B) {
	device(b)
	r := newRand(b)
	const n = 4096
	x, y := randn(r, n*n, 1), randn(r, n*n, 1)
	for _, tc := range []struct {
		name string
		dt   DType
		mode Compute
	}{{"fp32", F32, ComputeFP32}, {"tf32", F32, ComputeTF32}, {"bf16", BF16, ComputeFP32}} {
		b.Run(tc.name, func(b *testing.B) {
			var ms float32
			run(b, func(g *gpu) {
				g.c.SetSyncCheck(false)
				A, B := g.up(x), g.up(y)
				if tc.dt == BF16 {
					A, B = g.upBF16(x), g.upBF16(y)
				}
				C := g.alloc(F32, n*n)
				gemm := func() error { return g.c.Gemm(false, false, n, n, n, 1, A, n, B, n, 0, C, n, tc.mode) }
				g.check(gemm()) // warm-up
				if g.err != nil {
					return
				}
				b.ResetTimer()
				var err error
				ms, err = g.c.Time(func() error {
					for i := 0; i < b.N; i++ {
						if err := gemm(); err != nil {
							return err
						}
					}
					return nil
				})
				g.check(err)
			})
			b.ReportMetric(2*n*n*n*float64(b.N)/(float64(ms)/1e3)/1e12, "TFLOP/s")
		})
	}
}

func TestEncoder(t *testing.T) {
	device(t)
	r := newRand(t)
	const B, T, C, V = 3, 17, 40, 23
	wte, wpe, dout := randn(r, V*C, 1), randn(r, T*C, 1), randn(r, B*T*C, 1)
	tok := make([]int32, B*T)
	for i := range tok {
		tok[i] = int32(r.Intn(V))
	}
	dwte0, dwpe0 := randn(r, V*C, 1), randn(r, T*C, 1)
	ref := make([]float64, B*T*C)
	rdwte, rdwpe := f64(dwte0), f64(dwpe0)
	for b := 0; b < B; b++ {
		for s := 0; s < T; s++ {
			n := b*T + s
			for c := 0; c < C; c++ {
				ref[n*C+c] = float64(wte[int(tok[n])*C+c]) + float64(wpe[s*C+c])
				rdwte[int(tok[n])*C+c] += float64(dout[n*C+c])
				rdwpe[s*C+c] += float64(dout[n*C+c])
			}
		}
	}
	var out, dwte, dwpe []float32
	run(t, func(g *gpu) {
		o, tk := g.alloc(F32, B*T*C), g.upI32(tok)
		g.check(g.c.EncoderForward(o, tk, g.up(wte), g.up(wpe), B, T, C))
		out = g.down(o)
		dte, dpe := g.up(dwte0), g.up(dwpe0)
		g.check(g.c.EncoderBackward(dte, dpe, g.up(dout), tk, B, T, C))
		dwte, dwpe = g.down(dte), g.down(dpe)
	})
	checkErr(t, "encoder fwd", out, ref, tolF32)
	checkErr(t, "encoder dwte", dwte, rdwte, tolF32)
	checkErr(t, "encoder dwpe", dwpe, rdwpe, tolF32)
}

func TestLayerNorm(t *testing.T) {
	device(t)
	r := newRand(t)
	testLayerNorm(t, r, 77, 200)  // partial sums in registers
	testLayerNorm(t, r, 40, 1100) // the general kernel
	testLayerNorm(t, r, 9, 2048)  // the general kernel, 1B-model width
}

func testLayerNorm(t *testing.T, r *rand.Rand, N, C int) {
	x, w, b := randn(r, N*C, 2), randn(r, C, 1), randn(r, C, 1)
	for i := range x {
		x[i] += 0.5
	}
	dout := randn(r, N*C, 1)
	dx0, dw0, db0, dc0 := randn(r, N*C, 1), randn(r, C, 1), randn(r, C, 1), randn(r, C, 1)
	ref, rm, rr := refLayerNorm(f64(x), f64(w), f64(b), N, C)
	rdx, rdw, rdb := refLayerNormBwd(f64(dout), f64(x), f64(w), N, C)
	for i := range rdx {
		rdx[i] += float64(dx0[i])
	}
	for i := range rdw {
		rdw[i] += float64(dw0[i])
		rdb[i] += float64(db0[i])
	}
	for _, dt := range []DType{F32, BF16} {
		var out, mean, rstd, dx, dw, db, dop, dcol []float32
		run(t, func(g *gpu) {
			o, m, rs := g.alloc(dt, N*C), g.alloc(F32, N), g.alloc(F32, N)
			X, W := g.up(x), g.up(w)
			g.check(g.c.LayerNormForward(o, m, rs, X, W, g.up(b), N, C))
			out, mean, rstd = g.down(o), g.down(m), g.down(rs)
			DX, DW, DB := g.up(dx0), g.up(dw0), g.up(db0)
			if dt == BF16 {
				DOP, DC := g.alloc(BF16, N*C), g.up(dc0)
				g.check(g.c.LayerNormBackwardOp(DX, DOP, DC, DW, DB, g.up(dout), X, W, m, rs, N, C))
				dop, dcol = g.down(DOP), g.down(DC)
			} else {
				g.check(g.c.LayerNormBackward(DX, DW, DB, g.up(dout), X, W, m, rs, N, C))
			}
			dx, dw, db = g.down(DX), g.down(DW), g.down(DB)
		})
		if dop != nil {
			checkErr(t, "layernorm dx bf16 copy", dop, rdx, tolBF16)
			rdc := f64(dc0)
			for i, v := range rdx {
				rdc[i%C] += v
			}
			checkErr(t, "layernorm dx column sums", dcol, rdc, tolF32)
		}
		tol := tolFor(dt == BF16)
		checkErr(t, "layernorm fwd "+dt.String(), out, ref, tol)
		checkErr(t, "layernorm mean", mean, rm, tolF32)
		checkErr(t, "layernorm rstd", rstd, rr, tolF32)
		checkErr(t, "layernorm dx", dx, rdx, tolF32)
		checkErr(t, "layernorm dw", dw, rdw, tolF32)
		checkErr(t, "layernorm db", db, rdb, tolF32)
	}
}

func TestGELU(t *testing.T) {
	device(t)
	r := newRand(t)
	const n = 10007
	x, dout := randn(r, n, 2), randn(r, n, 1)
	ref, rd := make([]float64, n), make([]float64, n)
	for i := range x {
		ref[i] = refGelu(float64(x[i]))
		rd[i] = refGeluGrad(float64(x[i])) * float64(dout[i])
	}
	for _, dt := range []DType{F32, BF16} {
		var out, din []float32
		run(t, func(g *gpu) {
			X, o, di := g.up(x), g.alloc(dt, n), g.alloc(dt, n)
			g.check(g.c.GeluForward(o, X))
			g.check(g.c.GeluBackward(di, X, g.up(dout)))
			out, din = g.down(o), g.down(di)
		})
		tol := tolFor(dt == BF16)
		checkErr(t, "gelu fwd "+dt.String(), out, ref, tol)
		checkErr(t, "gelu bwd "+dt.String(), din, rd, tol)
	}
}

func TestResidualAndLinear(t *testing.T) {
	device(t)
	r := newRand(t)
	const N, IC, OC = 50, 96, 72
	a, b := randn(r, N*OC, 1), randn(r, N*OC, 1)
	inp, w, bias, resid := randn(r, N*IC, 1), randn(r, IC*OC, 0.1), randn(r, OC, 1), randn(r, N*OC, 1)
	dout := randn(r, N*OC, 1)
	dinp0, dw0, db0 := randn(r, N*IC, 1), randn(r, IC*OC, 1), randn(r, OC, 1)
	refSum := make([]float64, N*OC)
	for i := range refSum {
		refSum[i] = float64(a[i]) + float64(b[i])
	}
	refOut := f64(resid)
	for i := 0; i < N; i++ {
		for j := 0; j < OC; j++ {
			refOut[i*OC+j] += float64(bias[j])
		}
	}
	refGemm(false, false, N, OC, IC, 1, f64(inp), IC, f64(w), OC, 1, refOut, OC)
	rdinp, rdw, rdb := f64(dinp0), f64(dw0), f64(db0)
	refGemm(false, true, N, IC, OC, 1, f64(dout), OC, f64(w), OC, 1, rdinp, IC)
	refGemm(true, false, IC, OC, N, 1, f64(inp), IC, f64(dout), OC, 1, rdw, OC)
	for i := 0; i < N; i++ {
		for j := 0; j < OC; j++ {
			rdb[j] += float64(dout[i*OC+j])
		}
	}
	var acc []float32
	run(t, func(g *gpu) {
		x := g.up(a)
		g.check(g.c.AddInPlace(x, g.up(b)))
		acc = g.down(x)
	})
	checkErr(t, "add in place", acc, refSum, tolF32)
	for _, dt := range []DType{F32, BF16} {
		var out, dinp, dw, db []float32
		run(t, func(g *gpu) {
			var In, W, Dout Buf
			if dt == BF16 {
				In, W, Dout = g.upBF16(inp), g.upBF16(w), g.upBF16(dout)
			} else {
				In, W, Dout = g.up(inp), g.up(w), g.up(dout)
			}
			o := g.alloc(F32, N*OC)
			g.check(g.c.LinearForward(o, In, W, g.up(bias), g.up(resid), N, IC, OC, ComputeFP32))
			out = g.down(o)
			DI, DW, DB := g.up(dinp0), g.up(dw0), g.up(db0)
			g.check(g.c.LinearBackward(DI, DW, DB, Dout, In, W, N, IC, OC, true, ComputeFP32))
			dinp, dw, db = g.down(DI), g.down(DW), g.down(DB)
		})
		tol := tolFor(dt == BF16)
		checkErr(t, "linear fwd "+dt.String(), out, refOut, tol)
		checkErr(t, "linear dinp "+dt.String(), dinp, rdinp, tol)
		checkErr(t, "linear dw "+dt.String(), dw, rdw, tol)
		checkErr(t, "linear dbias "+dt.String(), db, rdb, tol)
	}
}

func TestAttention(t *testing.T) {
	device(t)
	r := newRand(t)
	for _, sh := range []struct{ B, T, NH, HD int }{{2, 67, 3, 64}, {2, 200, 2, 64}, {1, 256, 1, 64}, {1, 333, 2, 64}, {1, 130, 2, 32}, {3, 29, 4, 16}} {
		B, T, NH := sh.B, sh.T, sh.NH
		C := NH * sh.HD
		qkv, dout := randn(r, B*T*3*C, 1), randn(r, B*T*C, 1)
		ref, _ := refAttention(f64(qkv), B, T, C, NH)
		rd := refAttentionBwd(f64(dout), f64(qkv), B, T, C, NH)
		for _, v := range []struct {
			name    string
			in, out DType
		}{{"f32", F32, F32}, {"f32 in, bf16 out", F32, BF16}, {"tensor cores", BF16, BF16}} {
			if v.in == BF16 && sh.HD != 64 {
				continue
			}
			if v.in == BF16 {
				// Both block sizes of the tensor-core kernels.
				for _, w := range []int{4, 8} {
					var out, dqkv []float32
					run(t, func(g *gpu) {
						g.check(g.c.SetAttentionWarps(w))
						defer g.c.SetAttentionWarps(0)
						Q, dO := g.upBF16(qkv), g.upBF16(dout)
						o, lse := g.alloc(BF16, B*T*C), g.alloc(F32, B*NH*T)
						g.check(g.c.AttentionForward(o, lse, Q, B, T, C, NH))
						out = g.down(o)
						dq := g.alloc(BF16, B*T*3*C)
						g.check(g.c.AttentionBackward(dq, g.alloc(F32, B*NH*T), dO, Q, o, lse, B, T, C, NH))
						dqkv = g.down(dq)
					})
					name := fmt.Sprintf("attention B%d T%d NH%d HD%d tensor cores, %d warps", B, T, NH, sh.HD, w)
					checkErr(t, name+" fwd", out, ref, tolBF16)
					checkErr(t, name+" bwd", dqkv, rd, tolBF16)
				}
				continue
			}
			var out, dqkv []float32
			run(t, func(g *gpu) {
				var Q, dO Buf
				if v.in == BF16 {
					Q, dO = g.upBF16(qkv), g.upBF16(dout)
				} else {
					Q, dO = g.up(qkv), g.up(dout)
				}
				o, lse := g.alloc(v.out, B*T*C), g.alloc(F32, B*NH*T)
				g.check(g.c.AttentionForward(o, lse, Q, B, T, C, NH))
				out = g.down(o)
				dq := g.alloc(v.out, B*T*3*C)
				g.check(g.c.AttentionBackward(dq, g.alloc(F32, B*NH*T), dO, Q, o, lse, B, T, C, NH))
				dqkv = g.down(dq)
			})
			tol := tolFor(v.out == BF16)
			name := fmt.Sprintf("attention B%d T%d NH%d HD%d %s", B, T, NH, sh.HD, v.name)
			checkErr(t, name+" fwd", out, ref, tol)
			checkErr(t, name+" bwd", dqkv, rd, tol)
		}
	}
}

func TestCrossEntropy(t *testing.T) {
	device(t)
	r := newRand(t)
	const N, V = 37, 1000
	logits := randn(r, N*V, 3)
	targets := make([]int32, N)
	for i := range targets {
		targets[i] = int32(r.Intn(V))
	}
	dscale := 1.0 / N
	rl, rd := refCrossEntropy(f64(logits), targets, N, V, dscale)
	var mean float64
	for _, l := range rl {
		mean += l / N
	}
	for _, dt := range []DType{F32, BF16} {
		var losses, dl, sum []float32
		run(t, func(g *gpu) {
			L, ls, tg := g.up(logits), g.alloc(F32, N), g.upI32(targets)
			var d Buf
			if dt == BF16 {
				d = g.alloc(BF16, N*V)
			} else {
				d = L // in place
			}
			g.check(g.c.CrossEntropy(ls, d, L, tg, N, V, float32(dscale)))
			losses, dl = g.down(ls), g.down(d)
			s := g.alloc(F32, 1)
			g.check(g.c.Sum(s, g.alloc(F32, 512), ls))
			sum = g.down(s)
		})
		tol := tolFor(dt == BF16)
		checkErr(t, "crossentropy losses", losses, rl, tolF32)
		checkErr(t, "crossentropy mean", []float32{sum[0] / N}, []float64{mean}, tolF32)
		checkErr(t, "crossentropy dlogits "+dt.String(), dl, rd, tol)
	}
}

func TestAdamWAndClip(t *testing.T) {
	device(t)
	r := newRand(t)
	const n = 5003
	p, gr, m, v := randn(r, n, 1), randn(r, n, 1), randn(r, n, 0.1), randn(r, n, 0.1)
	for i := range v {
		v[i] = v[i] * v[i]
	}
	decay := make([]byte, n)
	for i := range decay {
		decay[i] = byte(r.Intn(2))
	}
	a := AdamWArgs{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Step: 3, GradScale: 0.5, Clip: 1.0, ZeroGrad: true}
	var ss float64
	for _, x := range gr {
		ss += float64(x) * float64(x)
	}
	norm := math.Sqrt(ss) * float64(a.GradScale)
	s := float64(a.GradScale)
	if c := float64(a.Clip) / (norm + 1e-6); c < 1 {
		s *= c
	}
	rp, rm, rv := make([]float64, n), make([]float64, n), make([]float64, n)
	bc1, bc2 := 1-math.Pow(0.9, 3), 1-math.Pow(0.95, 3)
	for i := range p {
		g := float64(gr[i]) * s
		rm[i] = 0.9*float64(m[i]) + 0.1*g
		rv[i] = 0.95*float64(v[i]) + 0.05*g*g
		upd := rm[i] / bc1 / (math.Sqrt(rv[i]/bc2) + 1e-8)
		if decay[i] != 0 {
			upd += 0.1 * float64(p[i])
		}
		rp[i] = float64(p[i]) - 1e-3*upd
	}
	var gp, gm, gv, gg, gbf, gsum []float32
	run(t, func(g *gpu) {
		P, G, M, V := g.up(p), g.up(gr), g.up(m), g.up(v)
		D := g.alloc(U8, n)
		g.check(g.c.UploadBytes(D, decay))
		PB := g.alloc(BF16, n)
		sum, part := g.alloc(F32, 1), g.alloc(F32, 1024)
		// The norm over two pieces equals the norm over the whole.
		g.check(g.c.SumSquares(sum, part, G.Slice(0, 1000), G.Slice(1000, n-1000)))
		gsum = g.down(sum)
		a.SumSq = sum
		g.check(g.c.AdamW(P, G, M, V, D, PB, a))
		gp, gm, gv, gg, gbf = g.down(P), g.down(M), g.down(V), g.down(G), g.down(PB)
	})
	checkErr(t, "grad sumsq", gsum, []float64{ss}, tolF32)
	checkErr(t, "adamw params", gp, rp, tolF32)
	checkErr(t, "adamw m", gm, rm, tolF32)
	checkErr(t, "adamw v", gv, rv, tolF32)
	checkErr(t, "adamw bf16 params", gbf, rp, tolBF16)
	for i, x := range gg {
		if x != 0 {
			t.Fatalf("gradient %d not zeroed: %v", i, x)
		}
	}
}

func TestFusedBF16Ops(t *testing.T) {
	device(t)
	r := newRand(t)
	testFusedBF16Ops(t, r, 45, 160) // 8-wide kernels
	testFusedBF16Ops(t, r, 37, 84)  // rows not a multiple of 8: plain kernels
	testFusedBF16Ops(t, r, 9, 1040) // rows too wide for the row-in-registers LayerNorm
}

func testFusedBF16Ops(t *testing.T, r *rand.Rand, N, C int) {
	y, resid, bias := randn(r, N*C, 1), randn(r, N*C, 1), randn(r, C, 1)
	w, b := randn(r, C, 1), randn(r, C, 1)
	h, d := randn(r, N*C, 1), randn(r, N*C, 1)
	hb, db := bf16Round(h), bf16Round(d)
	refRes := make([]float64, N*C)
	refBias := make([]float64, N*C)
	refD := make([]float64, N*C)
	for i := range refRes {
		refRes[i] = float64(y[i]) + float64(resid[i]) + float64(bias[i%C])
		refBias[i] = float64(hb[i]) + float64(bias[i%C])
		refD[i] = refGeluGrad(float64(hb[i])) * float64(db[i])
	}
	refLN, refM, refR := refLayerNorm(refRes, f64(w), f64(b), N, C)
	var res, res2, ln, mean, rstd, ba, gd2, gdb, gg3, gd4, gdb4 []float32
	run(t, func(g *gpu) {
		R := g.up(y)
		g.check(g.c.ResidualBias(R, g.up(resid), g.up(bias), N, C))
		res = g.down(R)
		R2, L, M, S := g.up(y), g.alloc(BF16, N*C), g.alloc(F32, N), g.alloc(F32, N)
		g.check(g.c.ResidualBiasLayerNorm(R2, g.up(resid), g.up(bias), L, M, S, g.up(w), g.up(b), N, C))
		res2, ln, mean, rstd = g.down(R2), g.down(L), g.down(M), g.down(S)
		X := g.upBF16(h)
		g.check(g.c.BiasAdd(X, g.up(bias), N, C))
		ba = g.down(X)
		D2, DB := g.upBF16(d), g.up(bias)
		g.check(g.c.GeluBackwardBiasGrad(D2, g.upBF16(h), Buf{}, DB, N, C))
		gd2, gdb = g.down(D2), g.down(DB)
		G3 := g.alloc(BF16, N*C)
		g.check(g.c.GeluBias(G3, g.upBF16(h), g.up(bias), N, C))
		gg3 = g.down(G3)
		D4, DB4 := g.upBF16(d), g.up(bias)
		g.check(g.c.GeluBackwardBiasGrad(D4, g.upBF16(h), g.up(bias), DB4, N, C))
		gd4, gdb4 = g.down(D4), g.down(DB4)
	})
	refDB := f64(bias)
	for i, v := range refD {
		refDB[i%C] += v
	}
	checkErr(t, "gelu backward + bias grad", gd2, refD, tolBF16)
	checkErr(t, "gelu backward + bias grad: bias", gdb, refDB, tolBF16)
	// With the bias added on the fly: gelu(h + bias) and its backward.
	refG3, refD4, refDB4 := make([]float64, N*C), make([]float64, N*C), f64(bias)
	for i := range refG3 {
		x := float64(hb[i]) + float64(bias[i%C])
		refG3[i] = refGelu(x)
		refD4[i] = refGeluGrad(x) * float64(db[i])
		refDB4[i%C] += refD4[i]
	}
	checkErr(t, "gelu of h + bias", gg3, refG3, tolBF16)
	checkErr(t, "gelu backward of h + bias", gd4, refD4, tolBF16)
	checkErr(t, "gelu backward of h + bias: bias grad", gdb4, refDB4, tolBF16)
	checkErr(t, "residual bias", res, refRes, tolF32)
	checkErr(t, "residual bias layernorm res", res2, refRes, tolF32)
	checkErr(t, "residual bias layernorm out", ln, refLN, tolBF16)
	checkErr(t, "residual bias layernorm mean", mean, refM, tolF32)
	checkErr(t, "residual bias layernorm rstd", rstd, refR, tolF32)
	checkErr(t, "bias add bf16", ba, refBias, tolBF16)
}
