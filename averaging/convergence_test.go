package averaging_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"swarmnode/averaging"
	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/model"
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
	cfg, err := config.Load("../examples/gpt/tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	corpus, err := data.Load("../"+cfg.Data.Path, cfg.Data.ValFraction)
	if err != nil {
		t.Fatal(err)
	}
	const steps, every = 200, 5
	mc := cfg.Model
	tr := cfg.Train
	opt := tr.Optim
	opt.Steps = steps
	B, T := tr.Microbatch, cfg.Model.SeqLen
	micro := tr.Batch / tr.Microbatch // microbatches per step of the whole batch

	train := func(c *stages.Chain, rngStream uint64, perStep int) func() {
		rng := data.NewRNG(tr.Seed, rngStream)
		return func() {
			for range perStep {
				tok, tgt := corpus.Batch(data.Train, B, T, rng)
				if _, err := c.ForwardBackward(tok, tgt, B, T); err != nil {
					t.Fatal(err)
				}
			}
			c.Step(opt, perStep)
		}
	}
	val := func(c *stages.Chain) float64 {
		rng := data.NewRNG(tr.Seed, 1<<40)
		var sum float64
		for range 16 {
			tok, tgt := corpus.Batch(data.Val, B, T, rng)
			l, err := c.Loss(tok, tgt, B, T)
			if err != nil {
				t.Fatal(err)
			}
			sum += float64(l)
		}
		return sum / 16
	}

	single, err := stages.NewChain(mc, cfg.Stages, tr.Seed)
	if err != nil {
		t.Fatal(err)
	}
	step := train(single, 10, micro)
	for range steps {
		step()
	}
	base := val(single)

	// Two holders per stage; each trains half the batch on its own stream.
	hs := []host.Host{averaging.NewTestHost(t, nil), averaging.NewTestHost(t, nil)}
	averaging.ConnectAllForT(t, hs)
	holders := averaging.PeerList{hs[0].ID(), hs[1].ID()}
	chains := make([]*stages.Chain, 2)
	steppers := make([]func(), 2)
	avgs := make([][]*averaging.Averager, 2) // [holder][stage]
	srcs := make([][]*averaging.Slices, 2)
	for i := range chains {
		if chains[i], err = stages.NewChain(mc, cfg.Stages, tr.Seed); err != nil {
			t.Fatal(err)
		}
		steppers[i] = train(chains[i], uint64(20+i), micro/2)
		for k, st := range chains[i].Stages() {
			src := &averaging.Slices{With: func(fn func([][]float32)) {
				st.WithState(func(s *model.State) {
					if cfg.Averaging.Optimizer {
						fn([][]float32{s.Params, s.M, s.V})
					} else {
						fn([][]float32{s.Params})
					}
				})
			}}
			a, err := averaging.New(hs[i], holders, src, averaging.Options{
				Run: cfg.Run, Key: fmt.Sprintf("stage-%d", k), Matchmaking: 2 * time.Second, Deadline: 10 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			avgs[i] = append(avgs[i], a)
			srcs[i] = append(srcs[i], src)
		}
	}
	for s := 1; s <= steps; s++ {
		for i := range chains {
			steppers[i]()
			for _, src := range srcs[i] {
				src.AddSamples(float64(tr.Batch / 2))
			}
		}
		if s%every != 0 {
			continue
		}
		var wg sync.WaitGroup
		errs := make([]error, 2*len(cfg.Stages))
		for i := range chains {
			for k, a := range avgs[i] {
				wg.Go(func() { _, errs[i*len(cfg.Stages)+k] = a.Round(context.Background(), uint64(s)) })
			}
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("step %d: %v", s, err)
			}
		}
	}
	got := []float64{val(chains[0]), val(chains[1])}
	// Right after a round the copies agree to float32 rounding.
	for k := range cfg.Stages {
		p0, p1 := chains[0].Stages()[k].Params(), chains[1].Stages()[k].Params()
		var d float64
		for j := range p0 {
			d = math.Max(d, math.Abs(float64(p0[j]-p1[j])))
		}
		if d > 1e-5 {
			t.Errorf("stage %d: copies differ by %g after the last round", k, d)
		}
	}
	t.Logf("val loss after %d samples: one holder per stage %.4f, two holders averaged %.4f / %.4f", steps*tr.Batch, base, got[0], got[1])
	if got[0] > 1.05*base {
		t.Errorf("averaged val loss %.4f is more than 5%% above %.4f", got[0], base)
	}
}
