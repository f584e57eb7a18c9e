package pipeline

import (
	"math"
	"testing"
	"time"
)

// TestSubspaceSwarmMatchesChain: a subspace model (8 coordinates per token at
// each boundary instead of 32 values) trains through a swarm of 3 stages, with
// the token ids sent to every stage, to the val loss of the same model in
// memory on the same batches.
func TestSubspaceSwarmMatchesChain(t *testing.T) {
	cfg := testConfig()
	cfg.Model.Subspace = 8
	cfg.Train.Steps, cfg.Train.EvalEvery = 100, 50
	cfg.Compression.Activations, cfg.Compression.Gradients = "fp32", "fp32"
	corpus := loadCorpus(t, cfg)
	ref, _ := chainRun(t, cfg, corpus)
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	var evals []EvalReport
	tr := sw.newTrainer(t, corpus, TrainerOptions{Stream: 0, OnEval: func(r EvalReport) { evals = append(evals, r) }})
	sum := runTrainer(t, tr, 90*time.Second)
	t.Logf("chain val loss %.4f, swarm %.4f", ref, sum.ValLoss)
	if len(evals) != 2 || evals[1].ValLoss >= evals[0].ValLoss {
		t.Fatalf("val loss did not fall: %+v", evals)
	}
	if d := math.Abs(sum.ValLoss-ref) / ref; d > 0.01 {
		t.Fatalf("swarm val loss %.4f differs from the chain's %.4f by %.2f%%", sum.ValLoss, ref, 100*d)
	}
	for k, row := range sw.servers {
		for i, s := range row {
			if ss := s.Stats(); ss.Served == 0 || ss.BadFrames != 0 {
				t.Errorf("stage %d holder %d: %+v", k, i, ss)
			}
		}
	}
}
