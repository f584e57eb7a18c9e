package pipeline

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"swarmnode/config"
)

// exactConfig is a short run whose activations and gradients travel in fp32,
// so that two runs over the same microbatches differ only by the order of
// float sums.
func exactConfig() config.Config {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 12, 12
	cfg.Compression.Activations, cfg.Compression.Gradients = "fp32", "fp32"
	return cfg
}

// checkStepped fails unless every stage stepped on exactly a batch per step.
func checkStepped(t *testing.T, cfg config.Config, st TrainerStats) {
	t.Helper()
	want := int64(cfg.Train.Steps * cfg.Train.Batch)
	if len(st.Stepped) != len(cfg.Stages) {
		t.Fatalf("stepped %v for %d stages", st.Stepped, len(cfg.Stages))
	}
	for k, n := range st.Stepped {
		if n != want {
			t.Errorf("stage %d stepped on %d sequences, the trainer sent %d", k, n, want)
		}
	}
}

// sameParams fails unless every replica of every stage of sw holds the
// parameters of ref's first replica of that stage, within float reordering.
func sameParams(t *testing.T, sw, ref *testSwarm, skip map[[2]int]bool) {
	t.Helper()
	for k, ws := range sw.replicas {
		want := ref.replicas[k][0].Stage().Params()
		for i, w := range ws {
			if skip[[2]int{k, i}] {
				continue
			}
			got := w.Stage().Params()
			var diff, norm float64
			for j := range want {
				d := float64(got[j] - want[j])
				diff += d * d
				norm += float64(want[j]) * float64(want[j])
			}
			rel := math.Sqrt(diff / norm)
			t.Logf("stage %d holder %d: relative L2 distance to the fault-free run %.2e", k, i, rel)
			if rel > 1e-5 {
				t.Errorf("stage %d holder %d: parameters %.2e away from the fault-free run's", k, i, rel)
			}
		}
	}
}

// faultFree trains cfg on a swarm with holders, without faults.
func faultFree(t *testing.T, cfg config.Config, holders []int) *testSwarm {
	t.Helper()
	ref := newSwarm(t, cfg, holders, nil)
	tr := ref.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	runTrainer(t, tr, 60*time.Second)
	checkStepped(t, cfg, tr.Stats())
	return ref
}

// TestAnswerLostAfterBackward: a relay in front of a stage-1 holder drops the
// holder's answers after it ran its backward pass, so stage 0 resends those
// microbatches and stages 1 and 2 compute them twice. Every stage still steps
// on exactly the samples the trainer sent, and the parameters end where a
// fault-free run's do.
func TestAnswerLostAfterBackward(t *testing.T) {
	cfg := exactConfig()
	sw := newSwarm(t, cfg, []int{1, 2, 1}, nil)
	relay := newHost(t)
	behind := sw.servers[1][0]
	var dropped atomic.Int32
	relay.SetStreamHandler(Protocol(cfg.Run), func(up network.Stream) {
		defer up.Reset()
		down, err := relay.NewStream(context.Background(), behind.host.ID(), Protocol(cfg.Run))
		if err != nil {
			return
		}
		defer down.Close()
		go func() { _, _ = io.Copy(down, up) }()
		var answer bytes.Buffer
		if _, err := io.Copy(&answer, down); err != nil {
			return
		}
		if dropped.Load() < 6 {
			dropped.Add(1) // lost on the way back: the holder counted it
			return
		}
		_, _ = up.Write(answer.Bytes())
		_ = up.Close()
	})
	relay.Peerstore().AddAddrs(behind.host.ID(), behind.host.Addrs(), time.Hour)
	sw.router.mu.Lock()
	sw.router.extra[1] = []Holder{{ID: relay.ID(), Addrs: relay.Addrs()}}
	sw.router.mu.Unlock()

	tr := sw.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	runTrainer(t, tr, 60*time.Second)
	st := tr.Stats()
	t.Logf("answers dropped %d, copies taken back %d, microbatches replayed %d", dropped.Load(), st.TakenBack, st.Replayed)
	if dropped.Load() == 0 || st.TakenBack == 0 {
		t.Fatalf("no answer was lost after a backward pass (dropped %d, taken back %d)", dropped.Load(), st.TakenBack)
	}
	checkStepped(t, cfg, st)
	sameParams(t, sw, faultFree(t, cfg, []int{1, 2, 1}), nil)
}

// TestHolderKilledMidStep: one of two stage-1 holders dies (its host closes,
// as under kill -9) after it accumulated gradients of a step and before the
// step is committed. The trainer sends what it lost through the pipeline
// again: every stage steps on exactly the samples sent, and the survivors end
// where a fault-free run's parameters do.
func TestHolderKilledMidStep(t *testing.T) {
	cfg := exactConfig()
	// A slow stage 0 keeps the step's answers on their way for a while after
	// stage 1's backward passes: the kill lands before the trainer's prepare.
	sw := newSwarm(t, cfg, []int{1, 2, 1}, map[[2]int]float64{{0, 0}: 4})
	victim, w := sw.servers[1][1], sw.replicas[1][1]
	tr := sw.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		served := int64(-1)
		for {
			v := w.Stage().Version()
			if v >= 4 && w.Pending() == 0 {
				served = victim.Stats().Served
			}
			// Gradients of step v+1 here, an answer of them delivered
			// upstream (else stage 0 would simply resend it elsewhere), and
			// none of the step's answers back at the trainer yet.
			if served >= 0 && w.Pending() > 0 && victim.Stats().Served > served &&
				tr.Stats().Completed == int64(v)*int64(cfg.Train.Accumulation()) {
				break
			}
			time.Sleep(50 * time.Microsecond)
		}
		_ = victim.host.Close()
	}()
	runTrainer(t, tr, 60*time.Second)
	<-killed
	st := tr.Stats()
	t.Logf("killed at version %d; microbatches replayed %d, copies taken back %d", w.Stage().Version(), st.Replayed, st.TakenBack)
	// Its gradients are lost with it: the trainer sends them again. (When
	// the kill also cut its answer off on the way, stage 0 resends the
	// microbatch at once instead, and stage 2 takes its copy back.)
	if st.Replayed == 0 && st.TakenBack == 0 {
		t.Fatal("the kill of a holder with gradients of the step needed no repair")
	}
	checkStepped(t, cfg, st)
	sameParams(t, sw, faultFree(t, cfg, []int{1, 2, 1}), map[[2]int]bool{{1, 1}: true})
}

// TestStalenessCountsOnce: with pipeline.staleness 1 the trainer sends the next
// step's microbatches before the step in progress is committed; what a holder
// accumulated of them goes into that commit, and every microbatch still counts
// exactly once at every stage.
func TestStalenessCountsOnce(t *testing.T) {
	cfg := exactConfig()
	cfg.Pipeline.Staleness = 1
	sw := newSwarm(t, cfg, []int{1, 2, 1}, nil)
	tr := sw.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	runTrainer(t, tr, 60*time.Second)
	st := tr.Stats()
	checkStepped(t, cfg, st)
	if st.TakenBack != 0 || st.Replayed != 0 {
		t.Errorf("a fault-free run took back %d copies and replayed %d microbatches", st.TakenBack, st.Replayed)
	}
	for k, ws := range sw.replicas {
		for i, w := range ws {
			if v := w.Stage().Version(); v != uint64(cfg.Train.Steps) || w.Pending() != 0 {
				t.Errorf("stage %d holder %d at version %d with %d pending", k, i, v, w.Pending())
			}
		}
	}
}

// TestHolderKilledDuringCommit: a stage-1 holder answers the trainer's prepare
// with gradients of the step and dies at the commit, before its gradients
// reach the all-reduce. The other holder's all-reduce goes on without it; the
// trainer sees that the lost gradients went into no step and sends those
// microbatches again with the next step: every stage still steps on exactly the
// sequences sent.
func TestHolderKilledDuringCommit(t *testing.T) {
	cfg := exactConfig()
	sw := newSwarm(t, cfg, []int{1, 2, 1}, nil)
	victim, w := sw.servers[1][1], sw.replicas[1][1]
	reduce := w.opts.Reduce
	var killed atomic.Bool
	w.opts.Reduce = func(ctx context.Context, r Round) (Reduced, error) {
		if r.Micro > 0 && w.Stage().Version() >= 3 && killed.CompareAndSwap(false, true) {
			_ = victim.host.Close()
			return Reduced{}, errors.New("killed")
		}
		return reduce(ctx, r)
	}
	tr := sw.newTrainer(t, loadCorpus(t, cfg), TrainerOptions{})
	runTrainer(t, tr, 60*time.Second)
	st := tr.Stats()
	t.Logf("microbatches replayed %d, copies taken back %d", st.Replayed, st.TakenBack)
	if !killed.Load() || st.Replayed == 0 {
		t.Fatalf("killed %v, replayed %d: the lost share was not sent again", killed.Load(), st.Replayed)
	}
	checkStepped(t, cfg, st)
}
