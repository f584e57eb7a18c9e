package swarm

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/stages"
	"swarmnode/stages/blas"
)

// Summary is what a training run reports at exit (`--summary FILE`).
type Summary struct {
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	ValLoss      float64 `json:"val_loss"`
	TokensPerSec float64 `json:"tokens_per_sec"`
}

// ModelConfig converts the config's model section to the stages package's shape.
func ModelConfig(m config.Model) stages.ModelConfig {
	return stages.ModelConfig{Vocab: m.Vocab, DModel: m.DModel, NHead: m.NHead, NLayer: m.NLayer, SeqLen: m.SeqLen}
}

// OptimConfig converts the config's train section to the stages package's optimizer settings.
func OptimConfig(t config.Train) stages.OptimConfig {
	return stages.OptimConfig{
		LR: float32(t.LR), MinLR: float32(t.MinLR), Warmup: t.Warmup, Steps: t.Steps,
		WeightDecay: float32(t.WeightDecay), Beta1: float32(t.Beta1), Beta2: float32(t.Beta2),
		Eps: float32(t.Eps), Clip: float32(t.Clip),
	}
}

// Evaluate returns the mean loss over cfg.Train.EvalBatches val microbatches drawn
// from a fixed stream; lossFn computes one microbatch's mean loss.
func Evaluate(cfg config.Config, corpus *data.Corpus, lossFn func(tokens, targets []int32, B, T int) (float32, error)) (float64, error) {
	rng := data.NewRNG(cfg.Train.Seed, data.ValStream)
	T := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Val))
	sum := 0.0
	for i := 0; i < cfg.Train.EvalBatches; i++ {
		tok, tgt := corpus.Batch(data.Val, cfg.Train.Microbatch, T, rng)
		l, err := lossFn(tok, tgt, cfg.Train.Microbatch, T)
		if err != nil {
			return 0, err
		}
		sum += float64(l)
	}
	return sum / float64(cfg.Train.EvalBatches), nil
}

// RunLocal trains the whole model in this process by chaining the stages in memory:
// the centralized baseline a swarm is measured against. It logs one line per eval
// and stops early, with a valid summary, when ctx is cancelled.
func RunLocal(ctx context.Context, cfg config.Config, log *slog.Logger) (Summary, error) {
	corpus, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction)
	if err != nil {
		return Summary{}, err
	}
	chain, err := stages.NewChain(ModelConfig(cfg.Model), cfg.Stages, cfg.Train.Seed)
	if err != nil {
		return Summary{}, err
	}
	opt := OptimConfig(cfg.Train)
	accum := cfg.Train.Accumulation()
	B := cfg.Train.Microbatch
	T := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Train))
	rng := data.NewRNG(cfg.Train.Seed, 0)
	params := 0
	for _, s := range chain.Stages() {
		params += len(s.Params())
	}
	log.Info("local training", "run", cfg.Run, "params", params, "stages", len(cfg.Stages),
		"steps", cfg.Train.Steps, "batch_tokens", cfg.Train.Batch*T, "blas", blas.Name())

	var sum Summary
	windowStart, windowTokens := time.Now(), 0
	windowLoss, windowSteps := 0.0, 0
	for step := 1; step <= cfg.Train.Steps; step++ {
		if ctx.Err() != nil {
			log.Info("stopping early", "step", sum.Step)
			break
		}
		stepLoss := 0.0
		for m := 0; m < accum; m++ {
			tok, tgt := corpus.Batch(data.Train, B, T, rng)
			l, err := chain.ForwardBackward(tok, tgt, B, T)
			if err != nil {
				return sum, fmt.Errorf("step %d: %w", step, err)
			}
			stepLoss += float64(l)
		}
		chain.Step(opt, accum)
		stepLoss /= float64(accum)
		windowLoss += stepLoss
		windowSteps++
		windowTokens += accum * B * T
		sum.Step, sum.Loss = step, stepLoss
		if step%cfg.Train.EvalEvery == 0 || step == cfg.Train.Steps {
			elapsed := time.Since(windowStart).Seconds()
			sum.TokensPerSec = float64(windowTokens) / elapsed
			sum.ValLoss, err = Evaluate(cfg, corpus, chain.Loss)
			if err != nil {
				return sum, fmt.Errorf("eval at step %d: %w", step, err)
			}
			log.Info("eval", "step", step, "loss", round4(windowLoss/float64(windowSteps)),
				"val_loss", round4(sum.ValLoss), "tokens_per_sec", int(sum.TokensPerSec))
			windowStart, windowTokens, windowLoss, windowSteps = time.Now(), 0, 0, 0
		}
	}
	return sum, nil
}

func round4(x float64) float64 { return float64(int64(x*1e4+0.5)) / 1e4 }
