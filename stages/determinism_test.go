package stages

import (
	"runtime"
	"testing"

	"swarmnode/model"
	"swarmnode/stages/blas"
)

// TestForwardIndependentOfThreads checks that a forward pass gives bit-identical
// outputs whatever the number of goroutines: verification compares two holders'
// outputs for the same (parameter version, input), and they may run on machines
// with different core counts.
func TestForwardIndependentOfThreads(t *testing.T) {
	defer blas.Use("auto")
	for _, be := range []string{"gonum", "openblas"} {
		t.Run(be, func(t *testing.T) {
			if err := blas.Use(be); err != nil {
				t.Skip(err)
			}
			forwardIndependentOfThreads(t)
		})
	}
}

func forwardIndependentOfThreads(t *testing.T) {
	cfg := model.Config{Vocab: 50, DModel: 64, NHead: 4, NLayer: 2, SeqLen: 128}
	B, T := 3, 100
	s, err := New(cfg, []int{2, 0}, 0, 5)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := tinyBatch(cfg, B, T, 1)
	var ref []float32
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, procs := range []int{1, 2, 3, 4} {
		runtime.GOMAXPROCS(procs)
		p, err := s.Forward(model.Input{B: B, T: T, Tokens: tok})
		if err != nil {
			t.Fatal(err)
		}
		p.Release()
		if ref == nil {
			ref = p.Out
			continue
		}
		for i := range ref {
			if p.Out[i] != ref[i] {
				t.Fatalf("GOMAXPROCS %d: output %d = %v, with 1 thread %v", procs, i, p.Out[i], ref[i])
			}
		}
	}
}
