package pipeline

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/model"
	"swarmnode/stages"
)

// benchConfig is big enough that compute dominates: d 256, 6 layers, T 128.
func benchConfig(steps int) config.Config {
	cfg := testConfig()
	cfg.Model = model.Config{Vocab: 256, DModel: 256, NHead: 4, NLayer: 6, SeqLen: 128}
	cfg.Stages = []int{2, 2, 2}
	cfg.Train.Microbatch, cfg.Train.Batch = 8, 16
	cfg.Train.Steps, cfg.Train.Warmup = steps, 2
	cfg.Train.EvalEvery, cfg.Train.EvalBatches = steps, 1
	cfg.Pipeline.HopTimeout = time.Minute
	return cfg
}

// BenchmarkSwarmVsChain measures the tokens/s of an in-process swarm (3 stages x
// 1 holder on loopback hosts, int8 both ways) over the tokens/s of the in-memory
// chain (`swarmnode local`) on the same model, in the same run: the cost of the
// protocol and compression. The machine is shared, so the two alternate in short
// segments of 3 steps and the median of the per-round ratios is reported. b.N is
// the number of rounds (at least 5).
func BenchmarkSwarmVsChain(b *testing.B) {
	rounds, seg := max(b.N, 5), 3
	for _, staleness := range []int{0, 1} {
		b.Run(fmt.Sprintf("staleness=%d", staleness), func(b *testing.B) {
			cfg := benchConfig(seg)
			cfg.Pipeline.Staleness = staleness
			corpus := loadCorpus(b, cfg)
			chain, err := stages.NewChain(cfg.Model, cfg.Stages, cfg.Train.Seed)
			if err != nil {
				b.Fatal(err)
			}
			sw := newSwarm(b, cfg, []int{1, 1, 1}, nil)
			T := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Train))
			rng := data.NewRNG(cfg.Train.Seed, 0)
			runChain := func() time.Duration {
				start := time.Now()
				for range seg {
					for range cfg.Train.Accumulation() {
						tok, tgt := corpus.Batch(data.Train, cfg.Train.Microbatch, T, rng)
						if _, err := chain.ForwardBackward(tok, tgt, cfg.Train.Microbatch, T); err != nil {
							b.Fatal(err)
						}
					}
					chain.Step(cfg.Train.Optim, cfg.Train.Accumulation())
				}
				return time.Since(start)
			}
			runSwarm := func() time.Duration {
				var last time.Time
				tr := sw.newTrainer(b, corpus, TrainerOptions{OnStep: func(r StepReport) { last = r.Time }})
				start := time.Now()
				runTrainer(b, tr, 10*time.Minute)
				return last.Sub(start)
			}
			var ratios []float64
			var chainTime, swarmTime time.Duration
			for r := range rounds {
				var tc, ts time.Duration
				if r%2 == 0 {
					tc, ts = runChain(), runSwarm()
				} else {
					ts, tc = runSwarm(), runChain()
				}
				chainTime, swarmTime = chainTime+tc, swarmTime+ts
				ratios = append(ratios, tc.Seconds()/ts.Seconds())
			}
			slices.Sort(ratios)
			tokens := float64(rounds * seg * cfg.Train.Batch * T)
			b.ReportMetric(tokens/chainTime.Seconds(), "chain-tokens/s")
			b.ReportMetric(tokens/swarmTime.Seconds(), "swarm-tokens/s")
			b.ReportMetric(ratios[len(ratios)/2], "swarm/chain")
		})
	}
}

// BenchmarkSlowHolder compares the tokens/s of a swarm with a second stage-1
// holder ten times slower than the first against the same swarm without it: the
// slow holder should cost little (target: within 20%). b.N is the number of steps
// of the test model (at least 100).
func BenchmarkSlowHolder(b *testing.B) {
	steps := max(b.N, 100)
	for _, staleness := range []int{0, 1} {
		b.Run(fmt.Sprintf("staleness=%d", staleness), func(b *testing.B) {
			cfg := testConfig()
			cfg.Train.Steps, cfg.Train.EvalEvery = steps, steps
			cfg.Pipeline.Staleness = staleness
			corpus := loadCorpus(b, cfg)
			run := func(holders []int, slow map[[2]int]float64) float64 {
				sw := newSwarm(b, cfg, holders, slow)
				var last time.Time
				tr := sw.newTrainer(b, corpus, TrainerOptions{OnStep: func(r StepReport) { last = r.Time }})
				start := time.Now()
				runTrainer(b, tr, 10*time.Minute)
				T := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Train))
				return float64(steps*cfg.Train.Batch*T) / last.Sub(start).Seconds()
			}
			without := run([]int{1, 1, 1}, nil)
			with := run([]int{1, 2, 1}, map[[2]int]float64{{1, 1}: 10})
			without = (without + run([]int{1, 1, 1}, nil)) / 2
			b.ReportMetric(without, "without-tokens/s")
			b.ReportMetric(with, "with-slow-tokens/s")
			b.ReportMetric(with/without, "with/without")
		})
	}
}
