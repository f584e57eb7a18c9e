package swarm

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/pipeline"
	"swarmnode/stages"
	"swarmnode/stages/blas"
)

// The GPU seams, replaceable in tests: whether a GPU is usable, and the
// process's GPU, opened once (see stages.SharedGPU).
var (
	gpuAvailable = stages.GPUAvailable
	gpuOpen      = stages.SharedGPU
)

// CheckDevice reports, for config device cpu, cuda or auto, whether stages can
// run there: an error naming what is missing (driver, library, GPU) when device
// is cuda and no GPU is usable; nil for cpu and auto (auto falls back to the CPU).
func CheckDevice(device string) error {
	switch device {
	case "", "cpu", "auto":
		return nil
	case "cuda":
		if err := gpuAvailable(); err != nil {
			return fmt.Errorf("device cuda: no usable GPU: %w (use --device cpu, or auto to fall back to the CPU)", err)
		}
		return nil
	}
	return fmt.Errorf("device %q: want cpu, cuda or auto", device)
}

// resolveDevice opens the GPU the config asks for: nil for the CPU. cuda without
// a usable GPU is an error; auto falls back to the CPU and logs why.
func resolveDevice(device string, log *slog.Logger) (*stages.GPU, error) {
	if err := CheckDevice(device); err != nil {
		return nil, err
	}
	if device != "cuda" && device != "auto" {
		return nil, nil
	}
	if err := gpuAvailable(); err != nil {
		log.Info("device auto: no usable GPU, computing on the CPU", "reason", err.Error())
		return nil, nil
	}
	d, err := gpuOpen()
	if err != nil {
		if device == "cuda" {
			return nil, fmt.Errorf("device cuda: opening GPU 0: %w", err)
		}
		log.Warn("device auto: GPU 0 did not open, computing on the CPU", "err", err.Error())
		return nil, nil
	}
	return d, nil
}

// newStage builds stage k of the config on dev (nil: the CPU). In auto mode a
// stage the GPU cannot hold (an unsupported head size, say) falls back to the CPU.
func newStage(cfg config.Config, k int, dev *stages.GPU, log *slog.Logger) (*stages.Stage, error) {
	if dev == nil {
		return stages.New(cfg.Model, cfg.Stages, k, cfg.Train.Seed)
	}
	st, err := stages.NewOnGPU(cfg.Model, cfg.Stages, k, cfg.Train.Seed, dev)
	if err != nil && cfg.Device == "auto" {
		log.Warn("device auto: stage does not run on the GPU, computing on the CPU", "stage", k, "err", err.Error())
		return stages.New(cfg.Model, cfg.Stages, k, cfg.Train.Seed)
	}
	return st, err
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

// LocalOptions are RunLocal's choices beyond the config.
type LocalOptions struct {
	// Resume continues from the newest step that every stage has a valid
	// checkpoint of (checkpoint.dir), instead of from the seed's weights.
	Resume bool
	// InitFrom, if set, is a model directory in Hugging Face's GPT-2 format
	// (swarmnode export's) whose weights a run that does not resume starts
	// from: fine-tuning.
	InitFrom string
}

// RunLocal trains the whole model in this process by chaining the stages in memory:
// the centralized baseline a swarm is measured against. It logs one line per eval,
// writes checkpoints on the config's schedule and at the end, and stops early,
// with a valid summary and a checkpoint, when ctx is cancelled.
func RunLocal(ctx context.Context, cfg config.Config, opts LocalOptions, log *slog.Logger) (pipeline.Summary, error) {
	corpus, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction, cfg.Model.Vocab)
	if err != nil {
		return pipeline.Summary{}, err
	}
	defer corpus.Close()
	chain, err := newLocalChain(cfg, log)
	if err != nil {
		return pipeline.Summary{}, err
	}
	defer chain.Close()
	opt := cfg.Train.Optim
	accum := cfg.Train.Accumulation()
	B := cfg.Train.Microbatch
	T := min(cfg.Model.SeqLen, corpus.MaxSeqLen(data.Train))
	rng := data.NewRNG(cfg.Train.Seed, 0)
	logLocalStart(cfg, chain, T, log)

	var sum pipeline.Summary
	ck := newCheckpointer(cfg, log)
	first, drawn, err := resumeLocal(ck, chain, opts, corpus, rng, B, T, log)
	if err != nil {
		return sum, err
	}
	sum.Step, sum.Loss = first-1, ck.resumedLoss
	defer func() {
		if ck.enabled() && sum.Step > ck.saved {
			if err := ck.save(chain.Stages(), drawn, sum.Loss); err != nil {
				log.Error("final checkpoint", "err", err.Error())
			}
		}
	}()
	windowStart, windowTokens := time.Now(), 0
	windowLoss, windowSteps := 0.0, 0
	for step := first; step <= cfg.Train.Steps; step++ {
		if ctx.Err() != nil {
			log.Info("stopping early", "step", sum.Step)
			break
		}
		stepLoss := 0.0
		for m := 0; m < accum; m++ {
			tok, tgt := corpus.Batch(data.Train, B, T, rng)
			drawn++
			l, err := chain.ForwardBackward(tok, tgt, B, T)
			if err != nil {
				return sum, fmt.Errorf("step %d: %w", step, err)
			}
			stepLoss += float64(l)
		}
		chain.Step(opt, accum)
		for _, s := range chain.Stages() {
			if err := s.DeviceErr(); err != nil {
				return sum, fmt.Errorf("step %d: %w", step, err)
			}
		}
		stepLoss /= float64(accum)
		windowLoss += stepLoss
		windowSteps++
		windowTokens += accum * B * T
		sum.Step, sum.Loss = step, stepLoss
		if ck.due(step) {
			if err := ck.save(chain.Stages(), drawn, stepLoss); err != nil {
				return sum, fmt.Errorf("checkpoint at step %d: %w", step, err)
			}
		}
		if step%cfg.Train.EvalEvery == 0 || step == cfg.Train.Steps {
			elapsed := time.Since(windowStart).Seconds()
			sum.TokensPerSec = float64(windowTokens) / elapsed
			sum.ValLoss, err = Evaluate(cfg, corpus, chain.Loss)
			if err != nil {
				return sum, fmt.Errorf("eval at step %d: %w", step, err)
			}
			pipeline.EvalReport{Step: step, Loss: windowLoss / float64(windowSteps), ValLoss: sum.ValLoss,
				TokensPerSec: sum.TokensPerSec}.Log(log)
			logSample(cfg, chain, step, log)
			windowStart, windowTokens, windowLoss, windowSteps = time.Now(), 0, 0, 0
		}
	}
	return sum, nil
}

// resumeLocal restores the chain from its newest complete checkpoint when
// opts.Resume is set, and draws from rng the microbatches the run had drawn
// by then; a run that does not resume starts from opts.InitFrom's model, if
// set. It returns the first step to train and the microbatches drawn.
func resumeLocal(ck *checkpointer, chain *stages.Chain, opts LocalOptions, corpus *data.Corpus, rng *rand.Rand, B, T int, log *slog.Logger) (int, int64, error) {
	start := func() (int, int64, error) { // from --init-from, or the seed's weights
		for _, s := range chain.Stages() {
			if opts.InitFrom == "" {
				break
			}
			if err := initFrom(s, ck.cfg, opts.InitFrom, log); err != nil {
				return 0, 0, err
			}
		}
		return 1, 0, nil
	}
	if !opts.Resume {
		return start()
	}
	meta, err := ck.resume(chain.Stages())
	if isNone(err) {
		log.Warn("no checkpoint to resume from: starting over", "dir", ck.cfg.CheckpointDir())
		return start()
	}
	if err != nil {
		return 0, 0, err
	}
	for range meta.DataPosition {
		corpus.Batch(data.Train, B, T, rng)
	}
	log.Info("resumed", "step", meta.Step, "loss", meta.Loss, "data_position", meta.DataPosition, "dir", ck.cfg.CheckpointDir())
	return meta.Step + 1, meta.DataPosition, nil
}

// newLocalChain builds every stage of cfg in this process, on the device the
// config asks for (auto falls back to the CPU).
func newLocalChain(cfg config.Config, log *slog.Logger) (*stages.Chain, error) {
	dev, err := resolveDevice(cfg.Device, log)
	if err != nil {
		return nil, err
	}
	if dev != nil {
		chain, err := stages.NewChainOnGPU(cfg.Model, cfg.Stages, cfg.Train.Seed, dev)
		if err == nil || cfg.Device != "auto" {
			return chain, err
		}
		log.Warn("device auto: model does not run on the GPU, computing on the CPU", "err", err.Error())
	}
	return stages.NewChain(cfg.Model, cfg.Stages, cfg.Train.Seed)
}

// logLocalStart logs what a local run trains, where.
func logLocalStart(cfg config.Config, chain *stages.Chain, T int, log *slog.Logger) {
	params := 0
	for _, s := range chain.Stages() {
		params += s.NumParams()
	}
	log.Info("local training", "run", cfg.Run, "params", params, "stages", len(cfg.Stages),
		"steps", cfg.Train.Steps, "batch_tokens", cfg.Train.Batch*T, "device", chain.Stages()[0].Device(), "blas", blas.Name())
}
