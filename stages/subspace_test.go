package stages

import (
	"math"
	"strings"
	"testing"

	"swarmnode/model"
)

var (
	subCfg   = model.Config{Vocab: 13, DModel: 16, NHead: 4, NLayer: 4, SeqLen: 8, Subspace: 4}
	subOptim = model.Optim{LR: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1} // no clipping: it is per stage
)

// TestSubspaceSplitsAgree: a subspace model split into stages, whose
// boundaries carry 4 coordinates per token instead of 16 values, gives the
// loss and gradients of the same model in one stage, before and after steps:
// the boundaries lose nothing. (A constrained tensor's gradient is compared
// projected, as the step takes it: a boundary drops only the part of the
// gradient that the constraint drops anyway.)
func TestSubspaceSplitsAgree(t *testing.T) {
	cfg := subCfg
	B, T := 3, 8
	run := func(split []int) (loss float32, grads map[string][]float32, params map[string][]float32) {
		c, err := NewChain(cfg, split, 42)
		if err != nil {
			t.Fatal(err)
		}
		for step := range 3 {
			tok, tgt := tinyBatch(cfg, B, T, int32(step))
			if loss, err = c.ForwardBackward(tok, tgt, B, T); err != nil {
				t.Fatal(err)
			}
			if step < 2 {
				c.Step(subOptim, 1)
			}
		}
		grads, params = map[string][]float32{}, map[string][]float32{}
		for _, s := range c.Stages() {
			for _, v := range s.Views() {
				grads[v.Name] = s.GradView(v.Name)
				params[v.Name] = append([]float32(nil), s.View(v.Name)...)
			}
			for _, con := range s.sub.cons {
				s.sub.project(grads[con.View.Name], nil)
			}
		}
		return loss, grads, params
	}
	refLoss, refGrads, refParams := run([]int{4})
	for _, split := range [][]int{{2, 2}, {1, 1, 1, 1}, {0, 3, 1}} {
		loss, grads, params := run(split)
		if d := math.Abs(float64(loss - refLoss)); d > 1e-5*math.Abs(float64(refLoss)) {
			t.Errorf("split %v: loss %v, unsplit %v", split, loss, refLoss)
		}
		for name, g := range refGrads {
			if e := relErr(grads[name], g); e > 1e-4 {
				t.Errorf("split %v: grad %s differs by %.3g", split, name, e)
			}
			// 2e-4: the key bias's gradient is float noise around zero
			// (softmax ignores it), which AdamW scales up to a full step.
			if e := relErr(params[name], refParams[name]); e > 2e-4 {
				t.Errorf("split %v: %s after two steps differs by %.3g", split, name, e)
			}
		}
	}
}

// TestSubspaceGradFiniteDifference checks the gradients of a split subspace
// model, through its boundaries, against central differences of the loss:
// along each coordinate of an unconstrained tensor, and along the projection of
// a coordinate of a constrained one (the directions the model may move in).
func TestSubspaceGradFiniteDifference(t *testing.T) {
	cfg := model.Config{Vocab: 11, DModel: 8, NHead: 2, NLayer: 2, SeqLen: 6, Subspace: 3}
	c, err := NewChain(cfg, []int{1, 1}, 7)
	if err != nil {
		t.Fatal(err)
	}
	constrained := map[string]bool{}
	for _, s := range c.Stages() {
		for i, d := range randVec("perturb", s.NumParams(), 0.1) {
			s.Params()[i] += d
		}
		for _, con := range s.sub.cons {
			s.sub.project(con.View.Of(s.Params()), con.Anchor)
			constrained[con.View.Name] = true
		}
	}
	B, T := 2, 5
	tok, tgt := tinyBatch(cfg, B, T, 0)
	if _, err := c.ForwardBackward(tok, tgt, B, T); err != nil {
		t.Fatal(err)
	}
	const h = 1e-2
	for _, s := range c.Stages() {
		for _, v := range s.Views() {
			p, g := v.Of(s.Params()), v.Of(s.Grads())
			for _, i := range []int{0, v.Len / 2, v.Len - 1} {
				dir := make([]float32, v.Len)
				dir[i] = 1
				if constrained[v.Name] {
					s.sub.project(dir, nil)
				}
				var want float64
				for j, u := range dir {
					want += float64(u) * float64(g[j])
				}
				fd := centralDifference(t, c, p, dir, h, tok, tgt, B, T)
				if d := math.Abs(fd - want); d > 2e-3+2e-2*math.Abs(fd) {
					t.Errorf("%s[%d]: gradient %g, finite difference %g", v.Name, i, want, fd)
				}
			}
		}
	}
}

// centralDifference is (L(p + h·dir) − L(p − h·dir)) / 2h.
func centralDifference(t *testing.T, c *Chain, p, dir []float32, h float32, tok, tgt []int32, B, T int) float64 {
	old := append([]float32(nil), p...)
	loss := func(sign float32) float64 {
		for j := range p {
			p[j] = old[j] + sign*h*dir[j]
		}
		l, err := c.Loss(tok, tgt, B, T)
		if err != nil {
			t.Fatal(err)
		}
		return float64(l)
	}
	lp, lm := loss(1), loss(-1)
	copy(p, old)
	return (lp - lm) / (2 * float64(h))
}

// TestSubspaceStaysConstrained: after steps, the output projections' rows lie
// in the subspace and the embeddings are their fixed part plus rows in it.
func TestSubspaceStaysConstrained(t *testing.T) {
	cfg := subCfg
	c, err := NewChain(cfg, []int{2, 2}, 3)
	if err != nil {
		t.Fatal(err)
	}
	for step := range 5 {
		tok, tgt := tinyBatch(cfg, 2, 8, int32(step))
		if _, err := c.ForwardBackward(tok, tgt, 2, 8); err != nil {
			t.Fatal(err)
		}
		c.Step(subOptim, 1)
	}
	for _, s := range c.Stages() {
		for _, con := range s.sub.cons {
			w := con.View.Of(s.Params())
			p := append([]float32(nil), w...)
			s.sub.project(p, con.Anchor)
			if e := relErr(w, p); e > 1e-5 {
				t.Errorf("%s is %.3g off its constrained form", con.View.Name, e)
			}
			if con.Anchor != nil && relErr(w, con.Anchor) < 1e-3 {
				t.Errorf("%s did not train", con.View.Name)
			}
		}
	}
}

// TestSubspaceBoundaryShapes: a subspace stage answers B·T·k coordinates and
// takes them back, with the tokens, and refuses the full width or no tokens.
func TestSubspaceBoundaryShapes(t *testing.T) {
	cfg := subCfg
	s0, err := New(cfg, []int{2, 2}, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := New(cfg, []int{2, 2}, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	B, T := 2, 5
	tok, tgt := tinyBatch(cfg, B, T, 1)
	p0, err := s0.Forward(model.Input{B: B, T: T, Tokens: tok})
	if err != nil {
		t.Fatal(err)
	}
	if len(p0.Out) != B*T*cfg.Subspace {
		t.Fatalf("stage 0 answered %d values, want B·T·k = %d", len(p0.Out), B*T*cfg.Subspace)
	}
	for _, c := range []struct {
		in   model.Input
		want string
	}{
		{model.Input{B: B, T: T, X: make([]float32, B*T*cfg.DModel), Tokens: tok, Targets: tgt}, "activations"},
		{model.Input{B: B, T: T, X: p0.Out, Targets: tgt}, "token"},
	} {
		if _, err := s1.Forward(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("stage 1 took %d activations and %d tokens: %v", len(c.in.X), len(c.in.Tokens), err)
		}
	}
	p1, err := s1.Forward(model.Input{B: B, T: T, X: p0.Out, Tokens: tok, Targets: tgt})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s1.Backward(p1, nil)
	if err != nil || len(d) != B*T*cfg.Subspace {
		t.Fatalf("stage 1's input gradient: %d values, %v", len(d), err)
	}
	if _, err := s0.Backward(p0, make([]float32, B*T*cfg.DModel)); err == nil {
		t.Error("stage 0 took a full-width output gradient")
	}
}
