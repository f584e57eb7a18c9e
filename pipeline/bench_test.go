package pipeline

import (
	"fmt"
	"testing"
	"time"

	"swarmnode/config"
	"swarmnode/data"
)

// benchConfig is big enough that compute dominates: d 256, 6 layers, T 128.
func benchConfig(steps int) config.Config {
	cfg := testConfig()
	cfg.Model = config.Model{Vocab: 256, DModel: 256, NHead: 4, NLayer: 6, SeqLen: 128}
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
// protocol and compression. b.N is the number of steps (at least 4); run with
// -benchtime 8x or so.
func BenchmarkSwarmVsChain(b *testing.B) {
	steps := max(b.N, 4)
	for _, staleness := range []int{0, 1} {
		b.Run(fmt.Sprintf("staleness=%d", staleness), func(b *testing.B) {
			cfg := benchConfig(steps)
			cfg.Pipeline.Staleness = staleness
			corpus := loadCorpus(b, cfg)
			chainA := chainTokensPerSec(b, cfg, corpus)
			swarm := swarmTokensPerSec(b, cfg, corpus)
			chainB := chainTokensPerSec(b, cfg, corpus)
			chain := (chainA + chainB) / 2
			b.ReportMetric(chain, "chain-tokens/s")
			b.ReportMetric(swarm, "swarm-tokens/s")
			b.ReportMetric(swarm/chain, "swarm/chain")
		})
	}
}

func chainTokensPerSec(b *testing.B, cfg config.Config, corpus *data.Corpus) float64 {
	_, tps := chainRun(b, cfg, corpus)
	return tps
}

func swarmTokensPerSec(b *testing.B, cfg config.Config, corpus *data.Corpus) float64 {
	sw := newSwarm(b, cfg, []int{1, 1, 1}, nil)
	var last time.Time
	tr := sw.newTrainer(b, corpus, TrainerOptions{OnStep: func(r StepReport) { last = r.Time }})
	start := time.Now()
	runTrainer(b, tr, 10*time.Minute)
	T := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Train))
	return float64(cfg.Train.Steps*cfg.Train.Batch*T) / last.Sub(start).Seconds()
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
