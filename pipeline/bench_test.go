package pipeline

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/model"
	"swarmnode/stages"
	"swarmnode/wire"
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

// BenchmarkBoundaryBytes reports the wire bytes per token that cross a stage
// boundary, both directions together (activations, token ids and targets
// forward, the gradient back), at GPT-2-small's width (d_model 768), for each
// codec and for subspace models, and their ratio to bf16 measured in the same
// run: a real swarm of 3 stages on loopback trains a few steps and its servers'
// frames are counted (the trainer's own frames are left out).
func BenchmarkBoundaryBytes(b *testing.B) {
	cases := []struct {
		name      string
		act, grad string
		subspace  int
	}{
		{"fp32", "fp32", "fp32", 0},
		{"bf16", "bf16", "bf16", 0},
		{"int8", "int8", "int8", 0},
		{"subspace64-int8", "int8", "int8", 64},
		{"subspace32-int8", "int8", "int8", 32},
		{"subspace16-int8", "int8", "int8", 16},
		{"subspace8-int8", "int8", "int8", 8},
	}
	perToken := map[string]float64{}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			cfg := testConfig()
			cfg.Model = model.Config{Vocab: 256, DModel: 768, NHead: 12, NLayer: 3, SeqLen: 64, Subspace: c.subspace}
			cfg.Train.Steps, cfg.Train.EvalEvery, cfg.Train.EvalBatches = 2*b.N, 2*b.N, 1
			cfg.Compression.Activations, cfg.Compression.Gradients, cfg.Compression.Zstd = c.act, c.grad, "off"
			corpus := loadCorpus(b, cfg)
			sw := newSwarm(b, cfg, []int{1, 1, 1}, nil)
			// Count up to the last trained microbatch: the final evaluation
			// sends activations forward only.
			total := int64(cfg.Train.Steps * cfg.Train.Accumulation())
			var done atomic.Int64
			var sent wire.Traffic
			tr := sw.newTrainer(b, corpus, TrainerOptions{OnMicrobatch: func(o Outcome) {
				if o == Completed && done.Add(1) == total {
					sent = sw.traffic.Sent()
				}
			}})
			runTrainer(b, tr, 5*time.Minute)
			tokens := total * int64(cfg.Train.Microbatch*cfg.Model.SeqLen)
			boundaries := int64(len(cfg.Stages) - 1)
			perToken[c.name] = float64(sent.Bytes) / float64(tokens*boundaries)
			b.ReportMetric(perToken[c.name], "bytes/token")
			if ref := perToken["bf16"]; ref > 0 {
				b.ReportMetric(ref/perToken[c.name], "x-fewer-than-bf16")
			}
		})
	}
}
