package sample

import (
	"math"
	"slices"
	"testing"

	"swarmnode/checkpoint"
	"swarmnode/model"
	"swarmnode/stages"
)

var cfg = model.Config{Vocab: 40, DModel: 16, NHead: 2, NLayer: 3, SeqLen: 12}

// exported trains a small GPT a few steps, exports it and returns the chain
// and the export's directory.
func exported(t *testing.T) (*stages.Chain, string) {
	t.Helper()
	ch, err := stages.NewChain(cfg, []int{2, 1}, 3)
	if err != nil {
		t.Fatal(err)
	}
	tok := []int32{1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9}
	tgt := append(slices.Clone(tok[1:]), 0)
	for range 4 {
		if _, err := ch.ForwardBackward(tok, tgt, 1, 12); err != nil {
			t.Fatal(err)
		}
		ch.Step(model.Optim{LR: 0.05, MinLR: 0.05, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8}, 1)
	}
	var parts []checkpoint.Part
	for _, s := range ch.Stages() {
		parts = append(parts, checkpoint.Part{Views: s.Views(), Params: s.Params()})
	}
	dir := t.TempDir()
	if err := checkpoint.Export(dir, cfg, parts, nil); err != nil {
		t.Fatal(err)
	}
	return ch, dir
}

// TestCachedStepsMatchTheFullForward: the logits of each token run through
// the KV cache one at a time equal, position by position, those of the
// training forward pass over the whole sequence.
func TestCachedStepsMatchTheFullForward(t *testing.T) {
	ch, dir := exported(t)
	m, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	seq := []int32{4, 8, 15, 16, 23, 1, 2, 3, 39, 0, 11, 7}
	var x, want []float32
	for _, s := range ch.Stages() {
		in := model.Input{B: 1, T: len(seq), X: x}
		if s.IsFirst() {
			in.Tokens = seq
		}
		if s.IsLast() {
			in.Targets = make([]int32, len(seq))
		}
		p, err := s.Forward(in)
		if err != nil {
			t.Fatal(err)
		}
		x, want = p.Out, p.Logits()
		p.Release()
	}
	c := m.NewCache()
	for i, tok := range seq {
		got, err := m.Next(c, tok)
		if err != nil {
			t.Fatal(err)
		}
		ref := want[i*cfg.Vocab : (i+1)*cfg.Vocab]
		var num, den float64
		for j := range got {
			d := float64(got[j] - ref[j])
			num, den = num+d*d, den+float64(ref[j])*float64(ref[j])
		}
		if rel := math.Sqrt(num / den); rel > 1e-5 {
			t.Fatalf("position %d: cached logits differ from the full forward by %.3g", i, rel)
		}
	}
	if _, err := m.Next(c, 1); err == nil {
		t.Fatal("ran past the model's positions")
	}
}

// TestGenerate: greedy decoding follows the argmax, a seed repeats its draws,
// top-k 1 is greedy, and bad options or tokens are refused.
func TestGenerate(t *testing.T) {
	_, dir := exported(t)
	m, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	prompt := []int32{4, 8, 15}
	greedy, err := m.Generate(prompt, Options{Tokens: 5})
	if err != nil || len(greedy) != 5 {
		t.Fatalf("greedy: %v, %v", greedy, err)
	}
	c := m.NewCache()
	var logits []float32
	for _, tok := range append(slices.Clone(prompt), greedy...) {
		if len(logits) > 0 && c.Len() >= len(prompt) {
			want := greedy[c.Len()-len(prompt)]
			if best := int32(slices.Index(logits, slices.Max(logits))); best != want {
				t.Fatalf("greedy token %d at %d, argmax %d", want, c.Len(), best)
			}
		}
		logits, _ = m.Next(c, tok)
	}
	// 30 tokens run past the model's 12 positions: the context slides.
	a, err := m.Generate(prompt, Options{Tokens: 30, Temperature: 1, Seed: 5})
	b, _ := m.Generate(prompt, Options{Tokens: 30, Temperature: 1, Seed: 5})
	if err != nil || !slices.Equal(a, b) || len(a) != 30 {
		t.Fatalf("the same seed drew %v and %v (want 30 tokens): %v", a, b, err)
	}
	if k1, _ := m.Generate(prompt, Options{Tokens: 5, Temperature: 1, TopK: 1, Seed: 9}); !slices.Equal(k1, greedy) {
		t.Fatalf("top-k 1 drew %v, greedy %v", k1, greedy)
	}
	if _, err := m.Generate([]int32{40}, Options{Tokens: 1}); err == nil {
		t.Fatal("took a token outside the vocabulary")
	}
	if _, err := m.Generate(prompt, Options{Tokens: 1, Temperature: -1}); err == nil {
		t.Fatal("took a negative temperature")
	}
}

// TestPartsChainLikeTheWholeModel: the stages' parts, each over its own
// cache, chained Embed → Forward… → Logits, give the whole model's logits
// bit for bit, as a swarm's holders do when they sample together.
func TestPartsChainLikeTheWholeModel(t *testing.T) {
	ch, dir := exported(t)
	whole, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	hc := checkpoint.HFConfigOf(cfg)
	var parts []*Model
	first := 0
	for k, s := range ch.Stages() {
		tensors, err := checkpoint.PartTensors(checkpoint.Part{Views: s.Views(), Params: s.Params()})
		if err != nil {
			t.Fatal(err)
		}
		n := []int{2, 1}[k]
		p, err := NewPart(hc, tensors, "stage", Span{First: first, Blocks: n, Embed: s.IsFirst(), Final: s.IsLast()})
		if err != nil {
			t.Fatal(err)
		}
		first += n
		parts = append(parts, p)
	}
	if _, err := parts[0].Next(parts[0].NewCache(), 1); err == nil {
		t.Fatal("a part ran a whole model's step")
	}
	wc := whole.NewCache()
	caches := []*Cache{parts[0].NewCache(), parts[1].NewCache()}
	for pos, tok := range []int32{4, 8, 15, 16, 23, 42 % 40} {
		want, err := whole.Next(wc, tok)
		if err != nil {
			t.Fatal(err)
		}
		x, err := parts[0].Embed(tok, pos)
		if err != nil {
			t.Fatal(err)
		}
		for k, p := range parts {
			if err := p.Forward(caches[k], x); err != nil {
				t.Fatal(err)
			}
		}
		if got := parts[1].Logits(x); !slices.Equal(got, want) {
			t.Fatalf("position %d: the parts' logits differ from the whole model's", pos)
		}
	}
	if parts[0].Logits(make([]float32, cfg.DModel)) != nil {
		t.Fatal("the first stage's part gave logits")
	}
}
