package stages

import (
	"sync"
	"testing"

	"swarmnode/model"
)

// TestConcurrentPasses runs forwards and backwards of several microbatches at once
// on shared stages (as a stage server does) and checks that the accumulated
// gradients equal those of running them one after another.
func TestConcurrentPasses(t *testing.T) {
	cfg := model.Config{Vocab: 17, DModel: 16, NHead: 2, NLayer: 2, SeqLen: 8}
	B, T := 2, 8
	const micro = 6
	seq, err := NewChain(cfg, []int{1, 1}, 9)
	if err != nil {
		t.Fatal(err)
	}
	par, _ := NewChain(cfg, []int{1, 1}, 9)
	losses := make([]float32, micro)
	for i := 0; i < micro; i++ {
		tok, tgt := tinyBatch(cfg, B, T, int32(i))
		if losses[i], err = seq.ForwardBackward(tok, tgt, B, T); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, micro)
	got := make([]float32, micro)
	for i := 0; i < micro; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, tgt := tinyBatch(cfg, B, T, int32(i))
			got[i], errs[i] = par.ForwardBackward(tok, tgt, B, T)
		}()
	}
	wg.Wait()
	for i := range errs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i] != losses[i] {
			t.Errorf("microbatch %d: concurrent loss %v, sequential %v", i, got[i], losses[i])
		}
	}
	for k, s := range par.Stages() {
		// Summation order of the microbatches differs: allow float32 rounding.
		if e := relErr(s.Grads(), seq.Stages()[k].Grads()); e > 1e-6 {
			t.Errorf("stage %d: concurrent grads differ by %.3g", k, e)
		}
	}
}

// TestPassRelease checks that released passes recycle their buffers without
// corrupting the Out slices callers still hold.
func TestPassRelease(t *testing.T) {
	s, _ := New(tinyCfg, []int{1, 1}, 0, 1)
	tok, _ := tinyBatch(tinyCfg, 2, 4, 0)
	p1, err := s.Forward(model.Input{B: 2, T: 4, Tokens: tok})
	if err != nil {
		t.Fatal(err)
	}
	out := append([]float32(nil), p1.Out...)
	if p1.Bytes() <= int64(4*len(out)) {
		t.Errorf("Bytes() = %d, too small for the cached activations", p1.Bytes())
	}
	p1.Release()
	p1.Release()
	tok2, _ := tinyBatch(tinyCfg, 2, 4, 5)
	p2, _ := s.Forward(model.Input{B: 2, T: 4, Tokens: tok2})
	if relErr(p1.Out, out) != 0 {
		t.Error("a later forward overwrote the Out of a released pass")
	}
	if _, err := s.Backward(p1, make([]float32, len(out))); err == nil {
		t.Error("Backward accepted a released pass")
	}
	if _, err := s.Backward(p2, make([]float32, len(out))); err != nil {
		t.Fatal(err)
	}
}
