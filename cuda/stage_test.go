package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

// refLinear returns inp·W + b for inp [N,IC], W [IC,OC].
func refLinear(inp, W, b []float64, N, IC, OC int) []float64 {
	out := make([]float64, N*OC)
	for i := 0; i < N; i++ {
		copy(out[i*OC:], b)
	}
	refGemm(false, false, N, OC, IC, 1, inp, IC, W, OC, 1, out, OC)
	return out
}

// refLinearBwd returns dinp and adds dW, db.
func refLinearBwd(dout, inp, W, dW, db []float64, N, IC, OC int) []float64 {
	dinp := make([]float64, N*IC)
	refGemm(false, true, N, IC, OC, 1, dout, OC, W, OC, 0, dinp, IC)
	refGemm(true, false, IC, OC, N, 1, inp, IC, dout, OC, 1, dW, OC)
	for i := 0; i < N; i++ {
		for j := 0; j < OC; j++ {
			db[j] += dout[i*OC+j]
		}
	}
	return dinp
}

func addTo(dst, src []float64) {
	for i := range dst {
		dst[i] += src[i]
	}
}

// refStage runs the stage in float64: it returns the output (or the mean loss),
// the input gradient and the parameter gradients, for dout (non-last stages).
func refStage(lay *layout, cfg StageConfig, P []float64, tok []int32, X []float64, targets []int32, dout []float64, B, T int) (out []float64, loss float64, dx, G []float64) {
	m := cfg.Model
	C, NH, N := m.DModel, m.NHead, B*T
	p := func(v View) []float64 { return P[v.Offset : v.Offset+v.Len] }
	G = make([]float64, len(P))
	g := func(v View) []float64 { return G[v.Offset : v.Offset+v.Len] }
	x := X
	if cfg.IsFirst {
		x = make([]float64, N*C)
		for n := 0; n < N; n++ {
			for c := 0; c < C; c++ {
				x[n*C+c] = p(lay.wte)[int(tok[n])*C+c] + p(lay.wpe)[(n%T)*C+c]
			}
		}
	}
	type saved struct{ in, ln1, qkv, atty, res2, ln2, fch, fchg []float64 }
	var sv []saved
	for i := range lay.blocks {
		bv := lay.blocks[i]
		var s saved
		s.in = x
		s.ln1, _, _ = refLayerNorm(x, p(bv.ln1w), p(bv.ln1b), N, C)
		s.qkv = refLinear(s.ln1, p(bv.qkvw), p(bv.qkvb), N, C, 3*C)
		s.atty, _ = refAttention(s.qkv, B, T, C, NH)
		s.res2 = refLinear(s.atty, p(bv.attpw), p(bv.attpb), N, C, C)
		addTo(s.res2, x)
		s.ln2, _, _ = refLayerNorm(s.res2, p(bv.ln2w), p(bv.ln2b), N, C)
		s.fch = refLinear(s.ln2, p(bv.fcw), p(bv.fcb), N, C, 4*C)
		s.fchg = make([]float64, len(s.fch))
		for j, v := range s.fch {
			s.fchg[j] = refGelu(v)
		}
		o := refLinear(s.fchg, p(bv.fcpw), p(bv.fcpb), N, 4*C, C)
		addTo(o, s.res2)
		sv = append(sv, s)
		x = o
	}
	out = x
	d := dout
	if cfg.IsLast {
		V := m.Vocab
		lnf, _, _ := refLayerNorm(x, p(lay.lnfw), p(lay.lnfb), N, C)
		logits := make([]float64, N*V)
		refGemm(false, true, N, V, C, 1, lnf, C, p(lay.head), C, 0, logits, V)
		losses, dlogits := refCrossEntropy(logits, targets, N, V, 1/float64(N))
		for _, l := range losses {
			loss += l / float64(N)
		}
		dlnf := make([]float64, N*C)
		refGemm(false, false, N, C, V, 1, dlogits, V, p(lay.head), C, 0, dlnf, C)
		refGemm(true, false, V, C, N, 1, dlogits, V, lnf, C, 1, g(lay.head), C)
		var dw, db []float64
		d, dw, db = refLayerNormBwd(dlnf, x, p(lay.lnfw), N, C)
		addTo(g(lay.lnfw), dw)
		addTo(g(lay.lnfb), db)
	}
	d = append([]float64(nil), d...)
	for i := len(lay.blocks) - 1; i >= 0; i-- {
		bv, s := lay.blocks[i], sv[i]
		dfch := refLinearBwd(d, s.fchg, p(bv.fcpw), g(bv.fcpw), g(bv.fcpb), N, 4*C, C)
		for j := range dfch {
			dfch[j] *= refGeluGrad(s.fch[j])
		}
		dln2 := refLinearBwd(dfch, s.ln2, p(bv.fcw), g(bv.fcw), g(bv.fcb), N, C, 4*C)
		dr, dw, db := refLayerNormBwd(dln2, s.res2, p(bv.ln2w), N, C)
		addTo(g(bv.ln2w), dw)
		addTo(g(bv.ln2b), db)
		addTo(d, dr)
		datty := refLinearBwd(d, s.atty, p(bv.attpw), g(bv.attpw), g(bv.attpb), N, C, C)
		dqkv := refAttentionBwd(datty, s.qkv, B, T, C, NH)
		dln1 := refLinearBwd(dqkv, s.ln1, p(bv.qkvw), g(bv.qkvw), g(bv.qkvb), N, C, 3*C)
		dr, dw, db = refLayerNormBwd(dln1, s.in, p(bv.ln1w), N, C)
		addTo(g(bv.ln1w), dw)
		addTo(g(bv.ln1b), db)
		addTo(d, dr)
	}
	if cfg.IsFirst {
		for n := 0; n < N; n++ {
			for c := 0; c < C; c++ {
				g(lay.wte)[int(tok[n])*C+c] += d[n*C+c]
				g(lay.wpe)[(n%T)*C+c] += d[n*C+c]
			}
		}
		return out, loss, nil, G
	}
	return out, loss, d, G
}

// randParams draws parameters with non-trivial LayerNorm affines and biases.
func randParams(r *rand.Rand, lay *layout) []float32 {
	P := make([]float32, lay.size)
	for _, v := range lay.views {
		for i := v.Offset; i < v.Offset+v.Len; i++ {
			switch {
			case v.Decay:
				P[i] = float32(r.NormFloat64() * 0.1)
			case len(v.Name) > 6 && v.Name[len(v.Name)-6:] == "weight":
				P[i] = float32(1 + 0.1*r.NormFloat64())
			default:
				P[i] = float32(0.1 * r.NormFloat64())
			}
		}
	}
	return P
}

func TestStageAgainstFloat64(t *testing.T) {
	d := device(t)
	r := newRand(t)
	// Head size 64 takes the fused bf16 path with tensor-core attention; 32 the general one.
	model := ModelConfig{Vocab: 97, DModel: 128, NHead: 2, NLayer: 5, SeqLen: 80}
	small := ModelConfig{Vocab: 97, DModel: 64, NHead: 2, NLayer: 5, SeqLen: 80}
	const B, T = 2, 77
	for _, kind := range []struct {
		name string
		cfg  StageConfig
	}{
		{"first", StageConfig{Model: model, First: 0, Blocks: 2, IsFirst: true}},
		{"middle", StageConfig{Model: model, First: 2, Blocks: 2}},
		{"last", StageConfig{Model: model, First: 4, Blocks: 1, IsLast: true}},
		{"middle hd32", StageConfig{Model: small, First: 1, Blocks: 2}},
	} {
		model := kind.cfg.Model
		N, C := B*T, model.DModel
		for _, prec := range []Precision{FP32, BF16Mixed} {
			cfg := kind.cfg
			cfg.Precision = prec
			lay := newLayout(model, cfg.First, cfg.Blocks, cfg.IsFirst, cfg.IsLast)
			P := randParams(r, lay)
			in := Input{B: B, T: T}
			if cfg.IsFirst {
				in.Tokens = make([]int32, N)
				for i := range in.Tokens {
					in.Tokens[i] = int32(r.Intn(model.Vocab))
				}
			} else {
				in.X = randn(r, N*C, 1)
			}
			if cfg.IsLast {
				in.Targets = make([]int32, N)
				for i := range in.Targets {
					in.Targets[i] = int32(r.Intn(model.Vocab))
				}
			}
			var dout []float32
			if !cfg.IsLast {
				dout = randn(r, N*C, 1)
			}
			rout, rloss, rdx, rG := refStage(lay, cfg, f64(P), in.Tokens, f64(in.X), in.Targets, f64(dout), B, T)

			s, err := NewStage(d, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SetParams(P); err != nil {
				t.Fatal(err)
			}
			pass, err := s.Forward(in)
			if err != nil {
				t.Fatal(err)
			}
			dx, err := s.Backward(pass, dout)
			if err != nil {
				t.Fatal(err)
			}
			G, err := s.Grads()
			if err != nil {
				t.Fatal(err)
			}
			tol := tolF32
			if prec == BF16Mixed {
				tol = tolBF16
			}
			name := fmt.Sprintf("stage %s %v", kind.name, map[Precision]string{FP32: "fp32", BF16Mixed: "bf16"}[prec])
			if cfg.IsLast {
				checkErr(t, name+" loss", []float32{pass.Loss}, []float64{rloss}, tol)
			} else {
				checkErr(t, name+" out", pass.Out, rout, tol)
			}
			if !cfg.IsFirst {
				checkErr(t, name+" dx", dx, rdx, tol)
			} else if dx != nil {
				t.Errorf("%s: first stage returned dx", name)
			}
			checkErr(t, name+" grads", G, rG, tol)
			for _, v := range lay.views {
				if e := relErr(G[v.Offset:v.Offset+v.Len], rG[v.Offset:v.Offset+v.Len]); !(e < 5*tol) {
					t.Errorf("%s grad %s: relative error %.3g, want < %.0e", name, v.Name, e, 5*tol)
				}
			}

			// Step: the gradient is averaged over 2 microbatches, clipped, applied.
			opt := OptimConfig{LR: 1e-3, MinLR: 1e-4, Warmup: 2, Steps: 10, WeightDecay: 0.1, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 0.5}
			norm, err := s.Step(opt, 2)
			if err != nil {
				t.Fatal(err)
			}
			var ss float64
			for _, g := range G {
				ss += float64(g) * float64(g) / 4
			}
			checkErr(t, name+" grad norm", []float32{norm}, []float64{math.Sqrt(ss)}, tolF32)
			sc := 0.5
			if c := float64(opt.Clip) / (math.Sqrt(ss) + 1e-6); c < 1 {
				sc *= c
			}
			lr := float64(opt.LRAt(0))
			want := make([]float64, len(P))
			for _, v := range lay.views {
				for i := v.Offset; i < v.Offset+v.Len; i++ {
					g := float64(G[i]) * sc
					mm, vv := 0.1*g, 0.05*g*g
					upd := (mm / 0.1) / (math.Sqrt(vv/0.05) + 1e-8)
					if v.Decay {
						upd += 0.1 * float64(P[i])
					}
					want[i] = float64(P[i]) - lr*upd
				}
			}
			got, err := s.Params()
			if err != nil {
				t.Fatal(err)
			}
			checkErr(t, name+" params after step", got, want, tolF32)
			if G2, _ := s.Grads(); relErr(G2, make([]float64, len(G2))) != 0 {
				t.Errorf("%s: gradients not zeroed by Step", name)
			}
			if s.Version() != 1 {
				t.Errorf("%s: version %d after one step", name, s.Version())
			}
			s.Close()
		}
	}
}

func TestStageRejectsBadInput(t *testing.T) {
	d := device(t)
	model := ModelConfig{Vocab: 11, DModel: 32, NHead: 2, NLayer: 1, SeqLen: 8}
	s, err := NewStage(d, StageConfig{Model: model, Blocks: 1, IsFirst: true, IsLast: true, Precision: FP32})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, in := range map[string]Input{
		"token out of range": {B: 1, T: 2, Tokens: []int32{1, 11}, Targets: []int32{0, 0}},
		"negative target":    {B: 1, T: 2, Tokens: []int32{1, 1}, Targets: []int32{0, -1}},
		"T too long":         {B: 1, T: 9, Tokens: make([]int32, 9), Targets: make([]int32, 9)},
		"short tokens":       {B: 2, T: 2, Tokens: []int32{1}, Targets: make([]int32, 4)},
	} {
		if _, err := s.Forward(in); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	m2, err := NewStage(d, StageConfig{Model: model, First: 0, Blocks: 1, Precision: FP32})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	x := make([]float32, 2*32)
	x[5] = float32(math.NaN())
	if _, err := m2.Forward(Input{B: 1, T: 2, X: x}); err == nil {
		t.Error("NaN input accepted")
	}
}

// TestStageTrains checks end to end that a one-stage model (embedding, a block,
// head) fits a fixed sequence on the GPU: the loss must fall well below ln(V).
func TestStageTrains(t *testing.T) {
	d := device(t)
	r := newRand(t)
	model := ModelConfig{Vocab: 64, DModel: 64, NHead: 2, NLayer: 2, SeqLen: 32}
	const B, T = 4, 32
	s, err := NewStage(d, StageConfig{Model: model, Blocks: 2, IsFirst: true, IsLast: true, Precision: BF16Mixed})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	P := make([]float32, s.NumParams())
	for _, v := range s.Views() {
		for i := v.Offset; i < v.Offset+v.Len; i++ {
			switch {
			case v.Decay:
				P[i] = float32(0.02 * r.NormFloat64())
			case len(v.Name) > 6 && v.Name[len(v.Name)-6:] == "weight":
				P[i] = 1
			}
		}
	}
	if err := s.SetParams(P); err != nil {
		t.Fatal(err)
	}
	seq := make([]int32, T+1)
	for i := range seq {
		seq[i] = int32(r.Intn(model.Vocab))
	}
	in := Input{B: B, T: T, Tokens: make([]int32, B*T), Targets: make([]int32, B*T)}
	for b := 0; b < B; b++ {
		copy(in.Tokens[b*T:], seq[:T])
		copy(in.Targets[b*T:], seq[1:])
	}
	opt := OptimConfig{LR: 3e-3, MinLR: 3e-4, Warmup: 5, Steps: 60, WeightDecay: 0.0, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 1}
	var first, last float32
	for step := 0; step < 60; step++ {
		p, err := s.Forward(in)
		if err != nil {
			t.Fatal(err)
		}
		if step == 0 {
			first = p.Loss
		}
		last = p.Loss
		if _, err := s.Backward(p, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Step(opt, 1); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("loss %.3f -> %.3f (ln V = %.3f)", first, last, math.Log(float64(model.Vocab)))
	if !(first > 3.5 && last < 1.0) {
		t.Fatalf("loss %.3f -> %.3f: did not learn the sequence", first, last)
	}
}
