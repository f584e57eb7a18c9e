package cuda

import (
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"

	"swarmnode/model"
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

// ref runs a stage in float64: P are its parameters, G accumulates its gradients.
type ref struct {
	lay         *model.Layout
	B, T, C, NH int
	P, G        []float64
	saved       []refBlock
}

// refBlock is what a block's backward needs of its forward.
type refBlock struct{ in, ln1, qkv, atty, res2, ln2, fch, fchg []float64 }

func (r *ref) p(v model.View) []float64 { return r.P[v.Offset : v.Offset+v.Len] }
func (r *ref) g(v model.View) []float64 { return r.G[v.Offset : v.Offset+v.Len] }

// refStage runs the stage in float64: it returns the output (or the mean loss),
// the input gradient and the parameter gradients, for dout (non-last stages).
func refStage(lay *model.Layout, cfg StageConfig, P []float64, in model.Input, X, dout []float64) (out []float64, loss float64, dx, G []float64) {
	r := &ref{lay: lay, B: in.B, T: in.T, C: cfg.Model.DModel, NH: cfg.Model.NHead, P: P, G: make([]float64, len(P))}
	x := X
	if cfg.IsFirst() {
		x = r.embed(in.Tokens)
	}
	for i := range lay.Blocks {
		x = r.blockForward(i, x)
	}
	out, d := x, dout
	if cfg.IsLast() {
		loss, d = r.head(x, in.Targets, cfg.Model.Vocab)
	}
	d = append([]float64(nil), d...)
	for i := len(lay.Blocks) - 1; i >= 0; i-- {
		r.blockBackward(i, d)
	}
	if cfg.IsFirst() {
		r.embedBackward(in.Tokens, d)
		return out, loss, nil, r.G
	}
	return out, loss, d, r.G
}

func (r *ref) embed(tok []int32) []float64 {
	N, C := r.B*r.T, r.C
	x := make([]float64, N*C)
	for n := 0; n < N; n++ {
		for c := 0; c < C; c++ {
			x[n*C+c] = r.p(r.lay.WTE)[int(tok[n])*C+c] + r.p(r.lay.WPE)[(n%r.T)*C+c]
		}
	}
	return x
}

func (r *ref) embedBackward(tok []int32, d []float64) {
	N, C := r.B*r.T, r.C
	for n := 0; n < N; n++ {
		for c := 0; c < C; c++ {
			r.g(r.lay.WTE)[int(tok[n])*C+c] += d[n*C+c]
			r.g(r.lay.WPE)[(n%r.T)*C+c] += d[n*C+c]
		}
	}
}

// blockForward runs block i on x, keeping what its backward needs.
func (r *ref) blockForward(i int, x []float64) []float64 {
	N, C, bv := r.B*r.T, r.C, r.lay.Blocks[i]
	s := refBlock{in: x}
	s.ln1, _, _ = refLayerNorm(x, r.p(bv.LN1W), r.p(bv.LN1B), N, C)
	s.qkv = refLinear(s.ln1, r.p(bv.QKVW), r.p(bv.QKVB), N, C, 3*C)
	s.atty, _ = refAttention(s.qkv, r.B, r.T, C, r.NH)
	s.res2 = refLinear(s.atty, r.p(bv.AttnProjW), r.p(bv.AttnProjB), N, C, C)
	addTo(s.res2, x)
	s.ln2, _, _ = refLayerNorm(s.res2, r.p(bv.LN2W), r.p(bv.LN2B), N, C)
	s.fch = refLinear(s.ln2, r.p(bv.FCW), r.p(bv.FCB), N, C, 4*C)
	s.fchg = make([]float64, len(s.fch))
	for j, v := range s.fch {
		s.fchg[j] = refGelu(v)
	}
	out := refLinear(s.fchg, r.p(bv.FCProjW), r.p(bv.FCProjB), N, 4*C, C)
	addTo(out, s.res2)
	r.saved = append(r.saved, s)
	return out
}

// blockBackward turns d, the gradient of block i's output, into that of its input.
func (r *ref) blockBackward(i int, d []float64) {
	N, C, bv, s := r.B*r.T, r.C, r.lay.Blocks[i], r.saved[i]
	dfch := refLinearBwd(d, s.fchg, r.p(bv.FCProjW), r.g(bv.FCProjW), r.g(bv.FCProjB), N, 4*C, C)
	for j := range dfch {
		dfch[j] *= refGeluGrad(s.fch[j])
	}
	dln2 := refLinearBwd(dfch, s.ln2, r.p(bv.FCW), r.g(bv.FCW), r.g(bv.FCB), N, C, 4*C)
	dr, dw, db := refLayerNormBwd(dln2, s.res2, r.p(bv.LN2W), N, C)
	addTo(r.g(bv.LN2W), dw)
	addTo(r.g(bv.LN2B), db)
	addTo(d, dr)
	datty := refLinearBwd(d, s.atty, r.p(bv.AttnProjW), r.g(bv.AttnProjW), r.g(bv.AttnProjB), N, C, C)
	dqkv := refAttentionBwd(datty, s.qkv, r.B, r.T, C, r.NH)
	dln1 := refLinearBwd(dqkv, s.ln1, r.p(bv.QKVW), r.g(bv.QKVW), r.g(bv.QKVB), N, C, 3*C)
	dr, dw, db = refLayerNormBwd(dln1, s.in, r.p(bv.LN1W), N, C)
	addTo(r.g(bv.LN1W), dw)
	addTo(r.g(bv.LN1B), db)
	addTo(d, dr)
}

// head returns the mean loss of the last stage and the gradient of its input.
func (r *ref) head(x []float64, targets []int32, V int) (loss float64, d []float64) {
	N, C := r.B*r.T, r.C
	lnf, _, _ := refLayerNorm(x, r.p(r.lay.LNFW), r.p(r.lay.LNFB), N, C)
	logits := make([]float64, N*V)
	refGemm(false, true, N, V, C, 1, lnf, C, r.p(r.lay.Head), C, 0, logits, V)
	losses, dlogits := refCrossEntropy(logits, targets, N, V, 1/float64(N))
	for _, l := range losses {
		loss += l / float64(N)
	}
	dlnf := make([]float64, N*C)
	refGemm(false, false, N, C, V, 1, dlogits, V, r.p(r.lay.Head), C, 0, dlnf, C)
	refGemm(true, false, V, C, N, 1, dlogits, V, lnf, C, 1, r.g(r.lay.Head), C)
	d, dw, db := refLayerNormBwd(dlnf, x, r.p(r.lay.LNFW), N, C)
	addTo(r.g(r.lay.LNFW), dw)
	addTo(r.g(r.lay.LNFB), db)
	return loss, d
}

// randParams draws parameters with non-trivial LayerNorm affines and biases.
func randParams(r *rand.Rand, lay *model.Layout) []float32 {
	P := make([]float32, lay.Size)
	for _, v := range lay.Views {
		for i := v.Offset; i < v.Offset+v.Len; i++ {
			switch {
			case v.Decay:
				P[i] = float32(r.NormFloat64() * 0.1)
			case strings.HasSuffix(v.Name, "weight"):
				P[i] = float32(1 + 0.1*r.NormFloat64())
			default:
				P[i] = float32(0.1 * r.NormFloat64())
			}
		}
	}
	return P
}

// randInput draws the input a stage of cfg takes for a B×T microbatch, and an
// output gradient unless it is the last stage.
func randInput(r *rand.Rand, cfg StageConfig, B, T int) (in model.Input, dout []float32) {
	N, m := B*T, cfg.Model
	ids := func() []int32 {
		x := make([]int32, N)
		for i := range x {
			x[i] = int32(r.Intn(m.Vocab))
		}
		return x
	}
	in = model.Input{B: B, T: T}
	if cfg.IsFirst() {
		in.Tokens = ids()
	} else {
		in.X = randn(r, N*m.DModel, 1)
	}
	if cfg.IsLast() {
		in.Targets = ids()
	} else {
		dout = randn(r, N*m.DModel, 1)
	}
	return in, dout
}

func TestStageAgainstFloat64(t *testing.T) {
	d := device(t)
	r := newRand(t)
	// Head size 64 takes the fused bf16 path with tensor-core attention; 32 the general one.
	wide := model.Config{Vocab: 97, DModel: 128, NHead: 2, NLayer: 5, SeqLen: 80}
	small := model.Config{Vocab: 97, DModel: 64, NHead: 2, NLayer: 5, SeqLen: 80}
	for _, kind := range []struct {
		name string
		cfg  StageConfig
	}{
		{"first", StageConfig{Model: wide, Part: model.Part{Index: 0, Count: 3, First: 0, Blocks: 2}}},
		{"middle", StageConfig{Model: wide, Part: model.Part{Index: 1, Count: 3, First: 2, Blocks: 2}}},
		{"last", StageConfig{Model: wide, Part: model.Part{Index: 2, Count: 3, First: 4, Blocks: 1}}},
		{"middle hd32", StageConfig{Model: small, Part: model.Part{Index: 1, Count: 3, First: 1, Blocks: 2}}},
	} {
		for _, prec := range []Precision{FP32, BF16Mixed} {
			cfg := kind.cfg
			cfg.Precision = prec
			name := fmt.Sprintf("stage %s %v", kind.name, map[Precision]string{FP32: "fp32", BF16Mixed: "bf16"}[prec])
			checkStage(t, d, r, name, cfg)
		}
	}
}

// checkStage runs one stage's forward, backward and AdamW step on the device and
// checks them against the float64 reference.
func checkStage(t *testing.T, d *Device, r *rand.Rand, name string, cfg StageConfig) {
	const B, T = 2, 77
	lay := model.NewLayout(cfg.Model, cfg.Part)
	P := randParams(r, lay)
	in, dout := randInput(r, cfg, B, T)
	rout, rloss, rdx, rG := refStage(lay, cfg, f64(P), in, f64(in.X), f64(dout))

	s, err := NewStage(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
	tol := tolFor(cfg.Precision == BF16Mixed)
	if cfg.IsLast() {
		checkErr(t, name+" loss", []float32{pass.Loss}, []float64{rloss}, tol)
	} else {
		checkErr(t, name+" out", pass.Out, rout, tol)
	}
	if !cfg.IsFirst() {
		checkErr(t, name+" dx", dx, rdx, tol)
	} else if dx != nil {
		t.Errorf("%s: first stage returned dx", name)
	}
	checkErr(t, name+" grads", G, rG, tol)
	for _, v := range lay.Views {
		if e := relErr(v.Of(G), rG[v.Offset:v.Offset+v.Len]); !(e < 5*tol) {
			t.Errorf("%s grad %s: relative error %.3g, want < %.0e", name, v.Name, e, 5*tol)
		}
	}
	checkStep(t, name, s, lay, P, G)
}

// checkStep checks one AdamW step of s, whose parameters are P and gradients G:
// the gradient is averaged over 2 microbatches, clipped and applied.
func checkStep(t *testing.T, name string, s *Stage, lay *model.Layout, P, G []float32) {
	opt := model.Optim{LR: 1e-3, MinLR: 1e-4, Warmup: 2, Steps: 10, WeightDecay: 0.1, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 0.5}
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
	for _, v := range lay.Views {
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
}

func TestStageRejectsBadInput(t *testing.T) {
	d := device(t)
	cfg := model.Config{Vocab: 11, DModel: 32, NHead: 2, NLayer: 1, SeqLen: 8}
	s, err := NewStage(d, StageConfig{Model: cfg, Part: model.Part{Count: 1, Blocks: 1}, Precision: FP32})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, in := range map[string]model.Input{
		"token out of range": {B: 1, T: 2, Tokens: []int32{1, 11}, Targets: []int32{0, 0}},
		"negative target":    {B: 1, T: 2, Tokens: []int32{1, 1}, Targets: []int32{0, -1}},
		"T too long":         {B: 1, T: 9, Tokens: make([]int32, 9), Targets: make([]int32, 9)},
		"short tokens":       {B: 2, T: 2, Tokens: []int32{1}, Targets: make([]int32, 4)},
	} {
		if _, err := s.Forward(in); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	m2, err := NewStage(d, StageConfig{Model: cfg, Part: model.Part{Index: 1, Count: 3, Blocks: 1}, Precision: FP32})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	x := make([]float32, 2*32)
	x[5] = float32(math.NaN())
	if _, err := m2.Forward(model.Input{B: 1, T: 2, X: x}); err == nil {
		t.Error("NaN input accepted")
	}
}

// TestStageTrains checks end to end that a one-stage model (embedding, a block,
// head) fits a fixed sequence on the GPU: the loss must fall well below ln(V).
func TestStageTrains(t *testing.T) {
	d := device(t)
	r := newRand(t)
	cfg := model.Config{Vocab: 64, DModel: 64, NHead: 2, NLayer: 2, SeqLen: 32}
	const B, T = 4, 32
	s, err := NewStage(d, StageConfig{Model: cfg, Part: model.Part{Count: 1, Blocks: 2}, Precision: BF16Mixed})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	P := make([]float32, s.NumParams())
	s.Layout().Init(P, uint64(r.Int63()))
	if err := s.SetParams(P); err != nil {
		t.Fatal(err)
	}
	seq := make([]int32, T+1)
	for i := range seq {
		seq[i] = int32(r.Intn(cfg.Vocab))
	}
	in := model.Input{B: B, T: T, Tokens: make([]int32, B*T), Targets: make([]int32, B*T)}
	for b := 0; b < B; b++ {
		copy(in.Tokens[b*T:], seq[:T])
		copy(in.Targets[b*T:], seq[1:])
	}
	opt := model.Optim{LR: 3e-3, MinLR: 3e-4, Warmup: 5, Steps: 60, WeightDecay: 0.0, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 1}
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
	t.Logf("loss %.3f -> %.3f (ln V = %.3f)", first, last, math.Log(float64(cfg.Vocab)))
	if !(first > 3.5 && last < 1.0) {
		t.Fatalf("loss %.3f -> %.3f: did not learn the sequence", first, last)
	}
}
