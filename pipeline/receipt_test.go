package pipeline

import (
	"context"
	"testing"
	"time"

	"swarmnode/receipt"
)

// TestCommitReceipts: at every commit each holder keeps the trainer's signed
// receipt of its stage's step. The receipts verify, name the trainer, and
// their tally credits each stage with exactly the step's microbatches, once
// per step, however many holders kept a copy.
func TestCommitReceipts(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 12, 12
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{2, 2, 2}, nil)
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	sum := runTrainer(t, tr, time.Minute)
	if sum.Step != cfg.Train.Steps {
		t.Fatalf("trained %d steps", sum.Step)
	}
	sw.mu.Lock()
	defer sw.mu.Unlock()
	perStep := cfg.Train.Batch / cfg.Train.Microbatch
	for k, row := range sw.servers {
		tally := receipt.NewTally(nil)
		for _, s := range row {
			kept := sw.receipts[s.host.ID()]
			if len(kept) == 0 {
				t.Errorf("stage %d holder %s kept no receipt", k, shortID(s.host.ID()))
			}
			for _, r := range kept {
				if err := r.Verify(cfg.Run); err != nil || r.Trainer != sw.trainer.ID().String() || r.Stage != k {
					t.Fatalf("stage %d receipt %+v: %v", k, r, err)
				}
				tally.Add(r)
			}
		}
		total := 0
		for _, w := range tally.Peers {
			total += w.Microbatches
		}
		if tally.Receipts != cfg.Train.Steps || total != cfg.Train.Steps*perStep {
			t.Errorf("stage %d: %d receipts crediting %d microbatches, want %d and %d", k, tally.Receipts, total, cfg.Train.Steps, cfg.Train.Steps*perStep)
		}
	}
}

// TestStopMidCommitCountsStep: a trainer told to stop while its commit is on
// the wire lets the commit land and counts the step, so that no holder is a
// step ahead of the trainer's count (a restarted trainer would do that step
// there twice, and the ledger would credit it once).
func TestStopMidCommitCountsStep(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 50, 50
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const stopAt = 5
	for _, row := range sw.servers {
		s := row[0]
		keep := s.opts.OnReceipt
		s.opts.OnReceipt = func(r receipt.Receipt) {
			keep(r)
			if r.Step == stopAt && r.Stage == 0 {
				cancel() // the stop comes while the other stages' commits are under way
			}
		}
	}
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	sum, err := tr.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sw.mu.Lock()
	defer sw.mu.Unlock()
	for k, row := range sw.servers {
		newest := 0
		for _, r := range sw.receipts[row[0].host.ID()] {
			newest = max(newest, r.Step)
		}
		if newest > sum.Step {
			t.Errorf("stage %d stepped step %d, the stopped trainer counts %d", k, newest, sum.Step)
		}
	}
	if sum.Step < stopAt {
		t.Errorf("the trainer counts %d steps, its holders stepped %d", sum.Step, stopAt)
	}
}
