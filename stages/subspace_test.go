package stages

import (
	"math"
	"strings"
	"testing"

	"swarmnode/model"
)

var subCfg = model.Config{Vocab: 13, DModel: 16, NHead: 4, NLayer: 4, SeqLen: 8, Subspace: 4}

// TestSubspaceBoundaryIsAProjection: a subspace model's stages are the plain
// model's (same initial weights), with the residual stream projected onto
// e + span(U) where it leaves a stage: stage 0 answers the coordinates of the
// projection of the plain stage 0's output, and stage 1 fed with them computes
// what the plain stage 1 computes on the projected stream, loss and gradients.
func TestSubspaceBoundaryIsAProjection(t *testing.T) {
	B, T := 2, 8
	tok, tgt := tinyBatch(subCfg, B, T, 1)
	plainCfg := subCfg
	plainCfg.Subspace = 0
	build := func(cfg model.Config, k int) *Stage {
		s, err := New(cfg, []int{2, 2}, k, 5)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s0, s1, p0, p1 := build(subCfg, 0), build(subCfg, 1), build(plainCfg, 0), build(plainCfg, 1)
	if e := relErr(s1.Params(), p1.Params()); e != 0 {
		t.Fatalf("the subspace model starts from other weights (%.3g)", e)
	}
	sub := s0.sub
	a, err := s0.Forward(model.Input{B: B, T: T, Tokens: tok})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := p0.Forward(model.Input{B: B, T: T, Tokens: tok})
	if err != nil {
		t.Fatal(err)
	}
	// The projection of the plain output, e + U·Uᵀ(x − e), and its coordinates.
	N, D, K := B*T, subCfg.DModel, subCfg.Subspace
	want := make([]float32, N*K)
	sub.encode(want, ref.Out, B, T)
	if e := relErr(a.Out, want); e > 1e-6 {
		t.Fatalf("stage 0's coordinates differ by %.3g", e)
	}
	proj := make([]float32, N*D)
	sub.decode(proj, a.Out, tok, B, T)
	again := make([]float32, N*K)
	sub.encode(again, proj, B, T)
	if e := relErr(again, a.Out); e > 1e-5 {
		t.Fatalf("coordinates of the projected stream differ by %.3g: not a projection", e)
	}
	b, err := s1.Forward(model.Input{B: B, T: T, X: a.Out, Tokens: tok, Targets: tgt})
	if err != nil {
		t.Fatal(err)
	}
	bref, err := p1.Forward(model.Input{B: B, T: T, X: proj, Targets: tgt})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(float64(b.Loss-bref.Loss)) > 1e-5 {
		t.Fatalf("stage 1 loss %v, plain stage 1 on the projected stream %v", b.Loss, bref.Loss)
	}
	gc, err := s1.Backward(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := p1.Backward(bref, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantGC := make([]float32, N*K)
	sub.toCoords(wantGC, g, N)
	if e := relErr(gc, wantGC); e > 1e-5 {
		t.Fatalf("stage 1's input gradient coordinates differ by %.3g", e)
	}
	if e := relErr(s1.Grads(), p1.Grads()); e > 1e-5 {
		t.Fatalf("stage 1's parameter gradients differ by %.3g", e)
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
