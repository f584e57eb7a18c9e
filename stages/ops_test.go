package stages

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"testing"

	"swarmnode/stages/vec"
)

// randVec returns n normal deviates scaled by std, from a generator seeded by name.
func randVec(name string, n int, std float64) []float32 {
	h := fnv.New64a()
	h.Write([]byte(name))
	r := rand.New(rand.NewPCG(5, h.Sum64()))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(std * r.NormFloat64())
	}
	return v
}

// dot64 is Σ a·b in float64: the scalar L = Σ out·R whose gradient with respect to
// out is R, which turns every op's backward into a gradient of a scalar.
func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// checkFD compares analytic, the claimed gradient of loss() with respect to x,
// with central differences at every element of x.
func checkFD(t *testing.T, what string, x, analytic []float32, loss func() float64) {
	t.Helper()
	checkFDEvery(t, what, x, analytic, loss, 1)
}

// grad pairs an input of an op with the claimed gradient of the loss with
// respect to it.
type grad struct {
	what  string
	x, dx []float32
}

// checkFDs is checkFD for several inputs of one loss.
func checkFDs(t *testing.T, loss func() float64, grads ...grad) {
	t.Helper()
	for _, g := range grads {
		checkFD(t, g.what, g.x, g.dx, loss)
	}
}

// checkFDEvery is checkFD at every step-th element (for larger inputs).
func checkFDEvery(t *testing.T, what string, x, analytic []float32, loss func() float64, step int) {
	t.Helper()
	const h = 1e-2
	bad := 0
	for i := 0; i < len(x); i += step {
		old := x[i]
		x[i] = old + h
		lp := loss()
		x[i] = old - h
		lm := loss()
		x[i] = old
		fd := (lp - lm) / (2 * h)
		if d := math.Abs(fd - float64(analytic[i])); d > 1e-3+1e-2*math.Abs(fd) {
			if bad++; bad <= 5 {
				t.Errorf("%s[%d]: analytic %.6g, finite difference %.6g", what, i, analytic[i], fd)
			}
		}
	}
}

func TestLayerNormGrad(t *testing.T) {
	N, C := 3, 8
	inp, w, b := randVec("x", N*C, 1), randVec("w", C, 1), randVec("b", C, 1)
	R := randVec("r", N*C, 1)
	out, mean, rstd := make([]float32, N*C), make([]float32, N), make([]float32, N)
	loss := func() float64 { layernormForward(out, mean, rstd, inp, w, b, N, C); return dot64(out, R) }
	loss()
	dinp, dw, db := make([]float32, N*C), make([]float32, C), make([]float32, C)
	layernormBackward(dinp, dw, db, R, inp, w, mean, rstd, N, C)
	checkFDs(t, loss, grad{"dinp", inp, dinp}, grad{"dw", w, dw}, grad{"db", b, db})
}

func TestLinearGrad(t *testing.T) {
	N, IC, OC := 4, 5, 6
	inp, w, b := randVec("x", N*IC, 1), randVec("w", IC*OC, 0.5), randVec("b", OC, 1)
	R := randVec("r", N*OC, 1)
	out := make([]float32, N*OC)
	loss := func() float64 { linearForward(out, inp, w, b, N, IC, OC); return dot64(out, R) }
	loss()
	dinp, dw, db := make([]float32, N*IC), make([]float32, IC*OC), make([]float32, OC)
	linearBackward(dinp, dw, db, R, inp, w, N, IC, OC, false)
	checkFDs(t, loss, grad{"dinp", inp, dinp}, grad{"dw", w, dw}, grad{"db", b, db})
}

func TestLinearTGrad(t *testing.T) {
	N, IC, OC := 4, 5, 7
	inp, w := randVec("x", N*IC, 1), randVec("w", OC*IC, 0.5)
	R := randVec("r", N*OC, 1)
	out := make([]float32, N*OC)
	loss := func() float64 { linearForwardT(out, inp, w, N, IC, OC); return dot64(out, R) }
	loss()
	dinp, dw := make([]float32, N*IC), make([]float32, OC*IC)
	linearBackwardT(dinp, dw, R, inp, w, N, IC, OC)
	checkFDs(t, loss, grad{"dinp", inp, dinp}, grad{"dw", w, dw})
}

// TestResidualGrad checks the residual projection out = resid + inp·w + b: the
// gradient reaches resid unchanged and the branch through linearBackward.
func TestResidualGrad(t *testing.T) {
	N, IC, OC := 3, 4, 5
	res, inp, w, b := randVec("res", N*OC, 1), randVec("x", N*IC, 1), randVec("w", IC*OC, 0.5), randVec("b", OC, 1)
	R := randVec("r", N*OC, 1)
	out := make([]float32, N*OC)
	loss := func() float64 { residualLinearForward(out, res, inp, w, b, N, IC, OC); return dot64(out, R) }
	loss()
	dres := make([]float32, N*OC)
	addInto(dres, R)
	dinp, dw, db := make([]float32, N*IC), make([]float32, IC*OC), make([]float32, OC)
	linearBackward(dinp, dw, db, R, inp, w, N, IC, OC, false)
	checkFDs(t, loss, grad{"dresid", res, dres}, grad{"dinp", inp, dinp}, grad{"dw", w, dw}, grad{"db", b, db})

	a, c := randVec("a", 10, 1), randVec("c", 10, 1)
	sum := make([]float32, 10)
	residualForward(sum, a, c)
	for i := range sum {
		if sum[i] != a[i]+c[i] {
			t.Fatalf("residualForward[%d] = %v, want %v", i, sum[i], a[i]+c[i])
		}
	}
}

func TestGeluGrad(t *testing.T) {
	x := randVec("x", 64, 2)
	R := randVec("r", 64, 1)
	out, th := make([]float32, 64), make([]float32, 64)
	loss := func() float64 { geluForward(out, th, x); return dot64(out, R) }
	loss()
	for i, v := range x {
		u := float64(v)
		want := 0.5 * u * (1 + math.Tanh(vec.GeluScale*(u+0.044715*u*u*u)))
		if math.Abs(float64(out[i])-want) > 1e-6*(1+math.Abs(want)) {
			t.Fatalf("gelu(%v) = %v, want %v", v, out[i], want)
		}
	}
	re := make([]float32, 64)
	geluRecompute(re, th, x)
	if relErr(re, out) != 0 {
		t.Error("geluRecompute differs from geluForward")
	}
	dx := make([]float32, 64)
	geluBackward(dx, th, x, R)
	checkFD(t, "dx", x, dx, loss)
}

func TestAttentionGrad(t *testing.T) {
	// T = 150 spans three causal row blocks (attnBlock 64), the last one partial.
	for _, T := range []int{5, attnBlock, 150} {
		B := 2
		if T > attnBlock {
			B = 1
		}
		testAttentionGrad(t, B, T)
	}
}

func testAttentionGrad(t *testing.T, B, T int) {
	C, NH := 8, 2
	qkv := randVec("qkv", B*T*3*C, 1)
	R := randVec("r", B*T*C, 1)
	out, att := make([]float32, B*T*C), make([]float32, B*NH*T*T)
	loss := func() float64 { attentionForward(out, att, qkv, B, T, C, NH); return dot64(out, R) }
	loss()
	// Causality: probabilities above the diagonal are zero and rows sum to one.
	for bh := 0; bh < B*NH; bh++ {
		for i := 0; i < T; i++ {
			var s float64
			for j := 0; j < T; j++ {
				p := att[bh*T*T+i*T+j]
				if j > i && p != 0 {
					t.Fatalf("att[%d,%d,%d] = %v above the diagonal", bh, i, j, p)
				}
				s += float64(p)
			}
			if math.Abs(s-1) > 1e-5 {
				t.Fatalf("attention row sums to %v", s)
			}
		}
	}
	dqkv := make([]float32, len(qkv))
	attentionBackward(dqkv, R, qkv, att, make([]float32, attnScratchLen(B, T, NH)), B, T, C, NH)
	// Larger T: a small stride still reaches q, k and v columns in every row.
	checkFDEvery(t, "dqkv", qkv, dqkv, loss, 1+B*T*C/500)
}

func TestEncoderGrad(t *testing.T) {
	B, T, C, V := 2, 3, 4, 5
	tokens := []int32{1, 4, 1, 0, 1, 3}
	wte, wpe := randVec("wte", V*C, 1), randVec("wpe", T*C, 1)
	R := randVec("r", B*T*C, 1)
	out := make([]float32, B*T*C)
	loss := func() float64 { encoderForward(out, tokens, wte, wpe, B, T, C); return dot64(out, R) }
	loss()
	dwte, dwpe := make([]float32, V*C), make([]float32, T*C)
	encoderBackward(dwte, dwpe, R, tokens, B, T, C)
	checkFDs(t, loss, grad{"dwte", wte, dwte}, grad{"dwpe", wpe, dwpe})
}

func TestCrossEntropyGrad(t *testing.T) {
	N, V := 4, 7
	logits := randVec("l", N*V, 2)
	targets := []int32{0, 6, 3, 3}
	loss := func() float64 { return float64(crossEntropyForward(logits, targets, N, V)) }
	var want float64
	for i := 0; i < N; i++ {
		var s float64
		for j := 0; j < V; j++ {
			s += math.Exp(float64(logits[i*V+j]))
		}
		want += math.Log(s) - float64(logits[i*V+int(targets[i])])
	}
	if got := loss(); math.Abs(got-want/float64(N)) > 1e-6 {
		t.Fatalf("loss %v, want %v", got, want/float64(N))
	}
	d := make([]float32, N*V)
	crossEntropyBackward(d, logits, targets, N, V)
	checkFD(t, "dlogits", logits, d, loss)
}
