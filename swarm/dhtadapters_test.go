package swarm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"swarmnode/internal/wait"
)

// TestTrainingRoutesThroughTheDHT trains through holders found in the run's
// DHT, with their load gossiped, and survives a holder's death: two holders
// of each stage, one of stage 1 stopped mid-run.
func TestTrainingRoutesThroughTheDHT(t *testing.T) {
	cfg := rolesTestConfig(t)
	cfg.Train.Steps, cfg.Train.EvalEvery = 40, 40
	cfg.Pipeline.RebalanceEvery = 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	first := startRoleNode(t, ctx, cfg, nil)
	boot := []string{first.Addrs()[0].String()}
	holders := [][]*Node{{first, startRoleNode(t, ctx, cfg, boot)}, {startRoleNode(t, ctx, cfg, boot), startRoleNode(t, ctx, cfg, boot)}}
	victimCtx, stopVictim := context.WithCancel(ctx)
	for k, row := range holders {
		for i, n := range row {
			sctx := ctx
			if k == 1 && i == 0 {
				sctx = victimCtx
			}
			serveRole(sctx, t, &wg, newRoles(n, cfg, RunOptions{}), k)
		}
	}
	trainer := startRoleNode(t, ctx, cfg, boot)
	if err := trainer.SetStage(-1); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 20*time.Second, func() error {
		for k := range holders {
			if len(trainer.DHT().Holders(k)) < 2 {
				return errors.New("the trainer does not see every holder yet")
			}
		}
		return nil
	})

	trained := make(chan error, 1)
	go func() {
		sum, err := newRoles(trainer, cfg, RunOptions{}).train(ctx)
		if err == nil && sum.Step != cfg.Train.Steps {
			err = errors.New("training stopped early")
		}
		trained <- err
	}()
	wait.For(t, 60*time.Second, func() error {
		if trainer.Status().Snapshot().Training.Step < 15 {
			return errors.New("training has not reached step 15")
		}
		return nil
	})
	holders[1][0].Close() // its host dies under the running server
	stopVictim()
	select {
	case err := <-trained:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("training did not finish in 60s")
	}
	mb := trainer.Status().Snapshot().Microbatches
	if mb.Failed != 0 || mb.Completed != uint64(cfg.Train.Steps*cfg.Train.Accumulation()) {
		t.Fatalf("microbatches %+v, want %d completed and none lost", mb, cfg.Train.Steps*cfg.Train.Accumulation())
	}
	// Gossip runs on its own period: give it a few rounds.
	wait.For(t, 5*time.Second, func() error {
		for _, h := range trainer.DHT().Holders(1) {
			if h.Throughput > 0 {
				return nil
			}
		}
		return errors.New("no stage 1 throughput reached the trainer through gossip")
	})
}
