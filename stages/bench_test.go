package stages

import (
	"testing"

	"swarmnode/model"
	"swarmnode/stages/blas"
	"swarmnode/stages/vec"
)

// gpt2SmallBlock is one GPT-2-small transformer block alone: the middle stage of
// a [0, 1, 0] split (the first and last stages would hold only embeddings and head).
var gpt2SmallBlock = model.Config{Vocab: 256, DModel: 768, NHead: 12, NLayer: 1, SeqLen: 1024}

// BenchmarkBlockGPT2Small measures forward+backward of one GPT-2-small block on
// B=4, T=256 and reports tokens/s; bench/cpu.sh sets it beside PyTorch.
func BenchmarkBlockGPT2Small(b *testing.B) {
	const B, T = 4, 256
	s, err := New(gpt2SmallBlock, []int{0, 1, 0}, 1, 1)
	if err != nil {
		b.Fatal(err)
	}
	N, C := B*T, gpt2SmallBlock.DModel
	x := randVec("x", N*C, 1)
	dout := randVec("dout", N*C, 1)
	run := func() {
		p, err := s.Forward(model.Input{B: B, T: T, X: x})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Backward(p, dout); err != nil {
			b.Fatal(err)
		}
	}
	run() // warm the pools
	b.Logf("BLAS %s, element-wise kernels %s", blas.Name(), vec.Impl())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		run()
	}
	b.ReportMetric(float64(N)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkTinyChain measures training throughput of the example model
// (examples/gpt/tiny.yaml: vocab 256, d 64, 4 heads, 4 layers, T 64, B 8, 3 stages),
// where per-op overheads rather than matrix products dominate.
func BenchmarkTinyChain(b *testing.B) {
	cfg := model.Config{Vocab: 256, DModel: 64, NHead: 4, NLayer: 4, SeqLen: 64}
	const B, T = 8, 64
	c, err := NewChain(cfg, []int{1, 2, 1}, 1)
	if err != nil {
		b.Fatal(err)
	}
	tok, tgt := tinyBatch(cfg, B, T, 0)
	opt := model.Optim{LR: 1e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Clip: 1}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.ForwardBackward(tok, tgt, B, T); err != nil {
			b.Fatal(err)
		}
		if i%2 == 1 {
			c.Step(opt, 2)
		}
	}
	b.ReportMetric(float64(B*T)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
}
