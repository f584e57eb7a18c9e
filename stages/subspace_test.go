package stages

import (
	"math"
	"strings"
	"testing"

	"swarmnode/model"
)

var subCfg = model.Config{Vocab: 13, DModel: 16, NHead: 4, NLayer: 4, SeqLen: 8, Subspace: 4}

// TestSubspaceBoundaryIsAProjection: a subspace model's stages are the plain
// model's blocks (same initial weights) with the residual stream projected
// onto span(U) where it leaves a stage and the receiving stage's input
// embeddings added where it enters the next: stage 0 answers the coordinates
// of the plain stage 0's output, and stage 1 fed with them computes what the
// plain stage 1 computes on g·U·c + ê(tokens): loss, block gradients, the
// input embeddings' gradients (the encoder's backward of its input gradient)
// and the coordinates of that input gradient times the gain g.
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
	sub := newSubspace(subCfg, s1.part, 5).in
	lay1 := s1.lay
	for _, v := range p1.lay.Views {
		w, ok := lay1.Find(v.Name)
		if !ok || relErr(w.Of(s1.Params()), v.Of(p1.Params())) != 0 {
			t.Fatalf("the subspace model's %s starts from other weights", v.Name)
		}
	}
	a, err := s0.Forward(model.Input{B: B, T: T, Tokens: tok})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := p0.Forward(model.Input{B: B, T: T, Tokens: tok})
	if err != nil {
		t.Fatal(err)
	}
	N, D, K := B*T, subCfg.DModel, subCfg.Subspace
	want := make([]float32, N*K)
	toCoords(sub, want, ref.Out, N, 1)
	if e := relErr(a.Out, want); e > 1e-6 {
		t.Fatalf("stage 0's coordinates differ by %.3g", e)
	}
	in := make([]float32, N*D)
	fromCoords(sub, in, a.Out, N, 1)
	again := make([]float32, N*K)
	toCoords(sub, again, in, N, 1)
	if e := relErr(again, a.Out); e > 1e-5 {
		t.Fatalf("coordinates of the rebuilt stream differ by %.3g: not a projection", e)
	}
	for i := range in {
		in[i] *= sub.Gain
	}
	params := s1.Params()
	encoderAdd(in, tok, lay1.InWTE.Of(params), lay1.InWPE.Of(params), B, T, D)
	b, err := s1.Forward(model.Input{B: B, T: T, X: a.Out, Tokens: tok, Targets: tgt})
	if err != nil {
		t.Fatal(err)
	}
	bref, err := p1.Forward(model.Input{B: B, T: T, X: in, Targets: tgt})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(float64(b.Loss-bref.Loss)) > 1e-5 {
		t.Fatalf("stage 1 loss %v, plain stage 1 on the rebuilt stream %v", b.Loss, bref.Loss)
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
	toCoords(sub, wantGC, g, N, sub.Gain)
	if e := relErr(gc, wantGC); e > 1e-5 {
		t.Fatalf("stage 1's input gradient coordinates differ by %.3g", e)
	}
	checkSubspaceGrads(t, s1, p1, g, tok, B, T)
}

// checkSubspaceGrads compares the gradients of a subspace stage s with those
// of the plain stage p run on its rebuilt input: the blocks' equal, the input
// embeddings' the encoder's backward of p's input gradient g.
func checkSubspaceGrads(t *testing.T, s, p *Stage, g []float32, tok []int32, B, T int) {
	t.Helper()
	lay1, D := s.lay, s.cfg.DModel
	grads, plainGrads := s.Grads(), p.Grads()
	for _, v := range p.lay.Views {
		w, _ := lay1.Find(v.Name)
		if e := relErr(w.Of(grads), v.Of(plainGrads)); e > 1e-5 {
			t.Fatalf("stage 1's %s gradient differs by %.3g", v.Name, e)
		}
	}
	wantWTE, wantWPE := make([]float32, lay1.InWTE.Len), make([]float32, lay1.InWPE.Len)
	encoderBackward(wantWTE, wantWPE, g, tok, B, T, D)
	if e := relErr(lay1.InWTE.Of(grads), wantWTE); e > 1e-5 {
		t.Fatalf("stage 1's input token embedding gradient differs by %.3g", e)
	}
	if e := relErr(lay1.InWPE.Of(grads), wantWPE); e > 1e-5 {
		t.Fatalf("stage 1's input position embedding gradient differs by %.3g", e)
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
