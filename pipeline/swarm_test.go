package pipeline

import (
	"math"
	"testing"
	"time"
)

// TestSwarmMatchesChain: 3 stages x 2 holders and a trainer, int8 both ways, train
// the test model; the final val loss is within 5% of the in-memory chain's.
func TestSwarmMatchesChain(t *testing.T) {
	cfg := testConfig()
	corpus := loadCorpus(t, cfg)
	ref, _ := chainRun(t, cfg, corpus)

	sw := newSwarm(t, cfg, []int{2, 2, 2}, nil)
	var evals []EvalReport
	tr := sw.newTrainer(t, corpus, TrainerOptions{OnEval: func(r EvalReport) { evals = append(evals, r) }})
	sum := runTrainer(t, tr, 90*time.Second)
	st := tr.Stats()
	t.Logf("chain val loss %.4f, swarm %.4f; %+v", ref, sum.ValLoss, struct{ Completed, Retried, Lost int64 }{st.Completed, st.Retried, st.Lost})
	if sum.Step != cfg.Train.Steps || st.Completed != int64(cfg.Train.Steps*cfg.Train.Accumulation()) || st.Lost != 0 {
		t.Fatalf("summary %+v, stats %+v", sum, st)
	}
	if d := math.Abs(sum.ValLoss-ref) / ref; d > 0.05 {
		t.Fatalf("swarm val loss %.4f differs from the chain's %.4f by %.1f%%", sum.ValLoss, ref, 100*d)
	}
	if len(evals) != cfg.Train.Steps/cfg.Train.EvalEvery || evals[len(evals)-1].ValLoss >= evals[0].ValLoss {
		t.Fatalf("evals %+v", evals)
	}
	for k, row := range sw.servers {
		for i, s := range row {
			ss := s.Stats()
			if ss.Served == 0 || ss.BadFrames != 0 {
				t.Errorf("stage %d holder %d: %+v", k, i, ss)
			}
		}
		if v := sw.workers[k].Stage().Version(); int(v) < cfg.Train.Steps-1 || int(v) > cfg.Train.Steps+1 {
			t.Errorf("stage %d stepped %d times, want about %d", k, v, cfg.Train.Steps)
		}
	}
}
