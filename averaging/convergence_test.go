package averaging_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"swarmnode/averaging"
	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/stages"
)

// TestConvergenceTwoHoldersPerStage trains the example's tiny GPT two ways on the
// same number of samples: one holder per stage with the whole batch, and two
// holders per stage that each train on half of every batch (their own data
// stream) and average every stage through real libp2p hosts every few steps. The
// averaged run must reach a val loss within 5% of the single one.
func TestConvergenceTwoHoldersPerStage(t *testing.T) {
	if raceBuild {
		// Training runs one goroutine at a time here; -race would only slow the
		// model math tenfold. The other tests cover averaging's concurrency.
		t.Skip("model training under -race is too slow and checks nothing more")
	}
	const steps, every = 200, 5
	run := loadTiny(t, steps)

	single := run.newChain()
	step := run.trainer(single, 10, run.micro)
	for range steps {
		step()
	}
	base := run.val(single)

	chains := run.trainAveraged(steps, every)
	got := []float64{run.val(chains[0]), run.val(chains[1])}
	// Right after a round the copies agree to float32 rounding.
	for k := range run.cfg.Stages {
		p0, p1 := chains[0].Stages()[k].Params(), chains[1].Stages()[k].Params()
		var d float64
		for j := range p0 {
			d = math.Max(d, math.Abs(float64(p0[j]-p1[j])))
		}
		if d > 1e-5 {
			t.Errorf("stage %d: copies differ by %g after the last round", k, d)
		}
	}
	t.Logf("val loss after %d samples: one holder per stage %.4f, two holders averaged %.4f / %.4f", steps*run.cfg.Train.Batch, base, got[0], got[1])
	if got[0] > 1.05*base {
		t.Errorf("averaged val loss %.4f is more than 5%% above %.4f", got[0], base)
	}
}

// tinyRun is the example's tiny GPT and its corpus, trained for a fixed number
// of optimizer steps.
type tinyRun struct {
	t      *testing.T
	cfg    config.Config
	corpus *data.Corpus
	B, T   int
	micro  int // microbatches per step of the whole batch
}

func loadTiny(t *testing.T, steps int) *tinyRun {
	cfg, err := config.Load("../examples/gpt/tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	corpus, err := data.Load("../"+cfg.Data.Path, cfg.Data.ValFraction, cfg.Model.Vocab)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Train.Optim.Steps = steps
	tr := cfg.Train
	return &tinyRun{t: t, cfg: cfg, corpus: corpus, B: tr.Microbatch, T: cfg.Model.SeqLen, micro: tr.Batch / tr.Microbatch}
}

func (r *tinyRun) newChain() *stages.Chain {
	c, err := stages.NewChain(r.cfg.Model, r.cfg.Stages, r.cfg.Train.Seed)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// trainer returns one optimizer step of c over perStep microbatches of its own
// data stream.
func (r *tinyRun) trainer(c *stages.Chain, stream uint64, perStep int) func() {
	rng := data.NewRNG(r.cfg.Train.Seed, stream)
	return func() {
		for range perStep {
			tok, tgt := r.corpus.Batch(data.Train, r.B, r.T, rng)
			if _, err := c.ForwardBackward(tok, tgt, r.B, r.T); err != nil {
				r.t.Fatal(err)
			}
		}
		c.Step(r.cfg.Train.Optim, perStep)
	}
}

// val is c's mean loss over 16 validation microbatches, the same for every chain.
func (r *tinyRun) val(c *stages.Chain) float64 {
	rng := data.NewRNG(r.cfg.Train.Seed, 1<<40)
	var sum float64
	for range 16 {
		tok, tgt := r.corpus.Batch(data.Val, r.B, r.T, rng)
		l, err := c.Loss(tok, tgt, r.B, r.T)
		if err != nil {
			r.t.Fatal(err)
		}
		sum += float64(l)
	}
	return sum / 16
}

// trainAveraged trains two holders of every stage, each on half of every batch
// from its own data stream, and runs an averaging round of every stage after
// every every-th step. It returns the two holders' chains.
func (r *tinyRun) trainAveraged(steps, every int) []*stages.Chain {
	hs := []host.Host{averaging.NewTestHost(r.t, nil), averaging.NewTestHost(r.t, nil)}
	averaging.ConnectAllForT(r.t, hs)
	chains := make([]*stages.Chain, 2)
	steppers := make([]func(), 2)
	var avgs []*averaging.Averager
	var srcs []*stageSource
	for i, h := range hs {
		chains[i] = r.newChain()
		steppers[i] = r.trainer(chains[i], uint64(20+i), r.micro/2)
		for k, st := range chains[i].Stages() {
			src := &stageSource{t: r.t, st: st, n: st.NumParams()}
			if r.cfg.Averaging.Optimizer {
				src.n = st.StateLen()
			}
			a, err := averaging.New(h, averaging.PeerList{hs[0].ID(), hs[1].ID()}, src, averaging.Options{
				Run: r.cfg.Run, Key: fmt.Sprintf("stage-%d", k), Matchmaking: 2 * time.Second, Deadline: 10 * time.Second,
			})
			if err != nil {
				r.t.Fatal(err)
			}
			r.t.Cleanup(func() { a.Close() })
			avgs, srcs = append(avgs, a), append(srcs, src)
		}
	}
	for s := 1; s <= steps; s++ {
		for _, step := range steppers {
			step()
		}
		for _, src := range srcs {
			src.samples.Add(int64(r.cfg.Train.Batch / 2))
		}
		if s%every == 0 {
			averageAll(r.t, avgs, uint64(s))
		}
	}
	return chains
}

// averageAll runs round r of every averager at once and fails the test if any
// round fails.
func averageAll(t *testing.T, avgs []*averaging.Averager, r uint64) {
	errs := make([]error, len(avgs))
	var wg sync.WaitGroup
	for i, a := range avgs {
		wg.Go(func() { _, errs[i] = a.Round(context.Background(), r) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
	}
}

// stageSource is the Source of a stage's parameters (or, with the optimizer
// averaged, Params|M|V), read and corrected through the stage's ranged accessors
// as the swarm's own source does.
type stageSource struct {
	t       testing.TB
	st      *stages.Stage
	n       int
	samples atomic.Int64
}

func (s *stageSource) Len() int         { return s.n }
func (s *stageSource) Samples() float64 { return float64(s.samples.Swap(0)) }

func (s *stageSource) Read(off int, dst []float32) {
	if err := s.st.ReadState(off, dst); err != nil {
		s.t.Error(err)
	}
}

func (s *stageSource) Add(off int, delta []float32) {
	if err := s.st.AddState(off, delta); err != nil {
		s.t.Error(err)
	}
}
