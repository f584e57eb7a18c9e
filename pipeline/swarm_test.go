package pipeline

import (
	"context"
	"fmt"
	"io"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"swarmnode/config"
)

// TestSwarmMatchesChain: 3 stages x 2 holders and a trainer, int8 both ways, train
// the example's tiny config for 200 steps; the final val loss is within 5% of the
// in-memory chain's (`swarmnode local` with the same config and seed).
func TestSwarmMatchesChain(t *testing.T) {
	cfg, err := config.Load("../examples/gpt/tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Data.Path = "../" + cfg.Data.Path
	cfg.Train.Steps = 200
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

// TestKillHolders closes the host of one holder of each stage in turn while
// training: no microbatch is lost, completions never pause for more than 5 s, and
// the loss keeps falling.
func TestKillHolders(t *testing.T) {
	cfg := testConfig()
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{2, 2, 2}, nil)
	kills := map[int]int{50: 1, 100: 2, 150: 0} // step -> stage whose holder 0 dies
	var steps []StepReport
	var evals []EvalReport
	var outcomes [3]atomic.Int64
	tr := sw.newTrainer(t, corpus, TrainerOptions{
		OnMicrobatch: func(o Outcome) { outcomes[o].Add(1) },
		OnStep: func(r StepReport) {
			steps = append(steps, r)
			if k, ok := kills[r.Step]; ok {
				// Not on the trainer's goroutine: closing a host waits for its streams.
				go sw.servers[k][0].host.Close()
			}
		},
		OnEval: func(r EvalReport) { evals = append(evals, r) },
	})
	sum := runTrainer(t, tr, 90*time.Second)
	st := tr.Stats()
	if sum.Step != cfg.Train.Steps || st.Completed != int64(cfg.Train.Steps*cfg.Train.Accumulation()) || st.Lost != 0 {
		t.Fatalf("lost microbatches: summary %+v, stats %+v", sum, st)
	}
	if outcomes[Completed].Load() != st.Completed || outcomes[Retried].Load() != st.Retried || outcomes[Failed].Load() != 0 {
		t.Errorf("hooks saw %d completed, %d retried, %d failed; stats say %+v", outcomes[0].Load(), outcomes[1].Load(), outcomes[2].Load(), st)
	}
	var maxGap time.Duration
	for i := 1; i < len(steps); i++ {
		maxGap = max(maxGap, steps[i].Time.Sub(steps[i-1].Time))
	}
	if maxGap > 5*time.Second {
		t.Errorf("training paused for %s", maxGap)
	}
	rerouted := st.Failed
	for _, row := range sw.servers {
		for _, s := range row[1:] {
			rerouted += s.Stats().DownstreamFailures
		}
	}
	if rerouted == 0 {
		t.Errorf("no call failed: the kills did not hit the pipeline")
	}
	// Late in the cosine schedule the val loss moves by hundredths: allow noise.
	for i := 1; i < len(evals); i++ {
		if evals[i].ValLoss > evals[i-1].ValLoss+0.02 {
			t.Errorf("val loss rose from %.4f to %.4f at step %d", evals[i-1].ValLoss, evals[i].ValLoss, evals[i].Step)
		}
	}
	if n := len(evals); n < 2 || evals[n-1].ValLoss >= evals[0].ValLoss-0.3 {
		t.Errorf("val loss did not fall after the kills: %+v", evals)
	}
	for k, row := range sw.servers {
		sw.router.mu.Lock()
		n := sw.router.downs[row[0].host.ID()]
		sw.router.mu.Unlock()
		if n == 0 {
			t.Errorf("killed holder of stage %d never marked down", k)
		}
	}
	t.Logf("max pause %s, trainer retries %d, holder-level reroutes %d, final val loss %.4f", maxGap, st.Retried, rerouted-st.Failed, sum.ValLoss)
}

// TestSlowHolderGetsLessWork: a holder ten times slower than its twin gets a
// correspondingly small share of the stage's microbatches.
func TestSlowHolderGetsLessWork(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps = 100
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 2, 1}, map[[2]int]float64{{1, 1}: 10})
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	runTrainer(t, tr, 90*time.Second)
	fast, slow := sw.servers[1][0].Stats(), sw.servers[1][1].Stats()
	t.Logf("fast holder: %d microbatches at %.0f tokens/s; slow: %d at %.0f tokens/s", fast.Served, fast.Throughput, slow.Served, slow.Throughput)
	if slow.Throughput >= fast.Throughput/3 {
		t.Errorf("slow holder measured at %.0f tokens/s, fast at %.0f", slow.Throughput, fast.Throughput)
	}
	// Expected about 1/9 of the fast holder's share (throughput/(1+queue)).
	if 3*slow.Served > fast.Served {
		t.Errorf("slow holder served %d microbatches, fast %d: want under a third", slow.Served, fast.Served)
	}
}

// TestInt8MatchesFP32: int8 both ways trains as well as fp32 (final val loss within 2%).
func TestInt8MatchesFP32(t *testing.T) {
	loss := map[string]float64{}
	for _, c := range []string{"fp32", "int8"} {
		cfg := testConfig()
		cfg.Train.Steps = 300
		cfg.Train.EvalEvery = 300
		cfg.Compression.Activations, cfg.Compression.Gradients = c, c
		corpus := loadCorpus(t, cfg)
		sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
		loss[c] = runTrainer(t, sw.newTrainer(t, corpus, TrainerOptions{}), 90*time.Second).ValLoss
	}
	t.Logf("val loss fp32 %.4f, int8 %.4f", loss["fp32"], loss["int8"])
	if d := math.Abs(loss["int8"]-loss["fp32"]) / loss["fp32"]; d > 0.02 {
		t.Fatalf("int8 val loss %.4f vs fp32 %.4f: %.1f%% apart", loss["int8"], loss["fp32"], 100*d)
	}
}

// TestBusyHoldersStillTrain: with one microbatch in flight per server, extra
// requests are turned away as busy and go to the other holder or wait their turn;
// nothing is lost.
func TestBusyHoldersStillTrain(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 30, 30
	cfg.Pipeline.MaxInFlight = 1
	cfg.Pipeline.Retries = 1
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{2, 2, 2}, nil)
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	sum := runTrainer(t, tr, 60*time.Second)
	st := tr.Stats()
	busy := int64(0)
	for _, row := range sw.servers {
		for _, s := range row {
			busy += s.Stats().Busy
		}
	}
	t.Logf("busy answers %d, trainer retries %d", busy, st.Retried)
	if sum.Step != cfg.Train.Steps || st.Lost != 0 || st.Completed != int64(cfg.Train.Steps*cfg.Train.Accumulation()) {
		t.Fatalf("summary %+v, stats %+v", sum, st)
	}
	if busy == 0 {
		t.Fatal("four trainer microbatches in flight never met a busy server")
	}
}

// TestHangingHolder: a stage-1 holder that takes requests and never answers (a
// stopped process) costs its callers one hop timeout each, after which it is in
// backoff and the microbatches go to the live holder; nothing is lost.
func TestHangingHolder(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 40, 40
	cfg.Pipeline.HopTimeout = time.Second
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	hang := newHost(t)
	hang.SetStreamHandler(Protocol(cfg.Run), func(s network.Stream) {
		_, _ = io.Copy(io.Discard, s) // until the caller gives up and resets
	})
	// It claims to be fast, so that it draws traffic until it is found out.
	sw.router.mu.Lock()
	sw.router.extra[1] = []Holder{{ID: hang.ID(), Throughput: 1e9, Addrs: hang.Addrs()}}
	sw.router.mu.Unlock()
	var steps []StepReport
	tr := sw.newTrainer(t, corpus, TrainerOptions{OnStep: func(r StepReport) { steps = append(steps, r) }})
	start := time.Now()
	sum := runTrainer(t, tr, 60*time.Second)
	st := tr.Stats()
	if sum.Step != cfg.Train.Steps || st.Lost != 0 || st.Completed != int64(cfg.Train.Steps*cfg.Train.Accumulation()) {
		t.Fatalf("summary %+v, stats %+v", sum, st)
	}
	s0 := sw.servers[0][0].Stats()
	if s0.DownstreamFailures == 0 {
		t.Fatal("the hanging holder was never called")
	}
	sw.router.mu.Lock()
	downs := sw.router.downs[hang.ID()]
	sw.router.mu.Unlock()
	if downs == 0 {
		t.Error("the hanging holder was never marked down")
	}
	var maxGap time.Duration
	prev := start
	for _, r := range steps {
		maxGap = max(maxGap, r.Time.Sub(prev))
		prev = r.Time
	}
	t.Logf("%d calls timed out; longest wait between steps %s", s0.DownstreamFailures, maxGap)
	if maxGap > 5*time.Second {
		t.Errorf("training stalled for %s behind a hanging holder (hop timeout %s)", maxGap, cfg.Pipeline.HopTimeout)
	}
}

// TestTwoTrainers: two trainers with different batch streams feed one swarm at
// once; both finish, and the stages step on the samples of both.
func TestTwoTrainers(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 30, 30
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 2, 1}, nil)
	trs := []*Trainer{sw.newTrainer(t, corpus, TrainerOptions{Stream: 0})}
	second := newHost(t)
	o := TrainerOptions{Run: cfg.Run, Model: cfg.Model, Stages: len(cfg.Stages), Train: cfg.Train, Pipeline: cfg.Pipeline, Stream: 1}
	tr2, err := NewTrainer(second, sw.router, corpus, o)
	if err != nil {
		t.Fatal(err)
	}
	trs = append(trs, tr2)
	errs := make(chan error, 2)
	for _, tr := range trs {
		go func() {
			sum, err := tr.Run(t.Context())
			if err == nil && sum.Step != cfg.Train.Steps {
				err = fmt.Errorf("stopped at step %d", sum.Step)
			}
			errs <- err
		}()
	}
	for range trs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for k, w := range sw.workers {
		if v := w.Stage().Version(); v < uint64(2*cfg.Train.Steps-1) {
			t.Errorf("stage %d took %d steps for two trainers' %d", k, v, 2*cfg.Train.Steps)
		}
	}
}

// TestCloseDoesNotWaitForPeers: closing a server whose microbatch waits on a
// hanging downstream returns at once (a node must shut down or move stage within
// seconds), and the upstream hears of it.
func TestCloseDoesNotWaitForPeers(t *testing.T) {
	cfg := testConfig()
	cfg.Pipeline.HopTimeout = time.Minute
	sw := newSwarm(t, cfg, []int{1, 0, 0}, nil)
	hang := newHost(t)
	called := make(chan struct{}, 1)
	hang.SetStreamHandler(Protocol(cfg.Run), func(s network.Stream) {
		called <- struct{}{}
		_, _ = io.Copy(io.Discard, s)
	})
	sw.router.mu.Lock()
	sw.router.extra[1] = []Holder{{ID: hang.ID(), Addrs: hang.Addrs()}}
	sw.router.mu.Unlock()
	srv := sw.servers[0][0]
	B, T := 2, 8
	errc := make(chan error, 1)
	go func() {
		c := &caller{host: sw.trainer, proto: Protocol(cfg.Run), router: sw.router, bo: newBackoff(time.Second, time.Minute),
			stages: 3, maxFrame: cfg.Pipeline.MaxFrameBytes, hopTimeout: cfg.Pipeline.HopTimeout}
		c.picker = newPicker(sw.router, c.bo, sw.trainer.ID(), 1, nil)
		_, err := c.once(context.Background(), Holder{ID: srv.host.ID(), Addrs: srv.host.Addrs()},
			&request{id: 1, stage: 0, b: B, t: T, tokens: tokens(B*T, 1), targets: tokens(B*T, 2)})
		errc <- err
	}()
	<-called // the microbatch now waits on the hanging peer
	start := time.Now()
	srv.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %s with a microbatch waiting on a hanging peer", d)
	}
	if err := <-errc; err == nil {
		t.Error("the upstream got an answer from a closed server")
	}
}

// TestMovedHolderNotMarkedDown: a router that still lists a holder at a
// stage it left (the rebalancer moved it; the DHT has not caught up) gets
// "wrong stage" answers from it. The callers go elsewhere without marking
// it down: it is alive, and hiding it would hide it at its new stage too.
func TestMovedHolderNotMarkedDown(t *testing.T) {
	cfg := testConfig()
	cfg.Train.Steps, cfg.Train.EvalEvery = 10, 10
	corpus := loadCorpus(t, cfg)
	sw := newSwarm(t, cfg, []int{1, 1, 1}, nil)
	moved := sw.servers[2][0]
	sw.router.mu.Lock()
	sw.router.extra[1] = append(sw.router.extra[1], Holder{ID: moved.host.ID(), Addrs: moved.host.Addrs()})
	sw.router.mu.Unlock()
	tr := sw.newTrainer(t, corpus, TrainerOptions{})
	if sum := runTrainer(t, tr, time.Minute); sum.Step != cfg.Train.Steps {
		t.Fatalf("trained %d steps", sum.Step)
	}
	sw.router.mu.Lock()
	defer sw.router.mu.Unlock()
	if n := sw.router.downs[moved.host.ID()]; n != 0 {
		t.Fatalf("the moved holder was marked down %d times", n)
	}
	if st := sw.servers[0][0].Stats(); st.DownstreamFailures == 0 {
		t.Fatalf("stage 0 never called the moved holder at stage 1 (stats %+v): the wrong-stage path was not exercised", st)
	}
}
