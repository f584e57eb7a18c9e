package pipeline

import (
	"log/slog"

	"swarmnode/config"
	"swarmnode/model"
)

// WorkerOptionsFrom takes a worker's settings from a run config; optim is the
// config's train section as the stages package wants it.
func WorkerOptionsFrom(cfg config.Config, optim model.Optim) WorkerOptions {
	return WorkerOptions{
		Optim: optim, StepSamples: cfg.Train.Batch, Microbatch: cfg.Train.Microbatch,
		Staleness: cfg.Pipeline.Staleness,
	}
}

// ServerOptionsFrom takes a stage server's settings from a run config.
func ServerOptionsFrom(cfg config.Config, log *slog.Logger) ServerOptions {
	return ServerOptions{
		Run: cfg.Run, Pipeline: cfg.Pipeline, Compression: cfg.Compression,
		MaxBatch: cfg.Train.Microbatch, Logger: log,
	}
}

// TrainerOptionsFrom takes a trainer's settings from a run config; steps, when
// positive, overrides train.steps (the --steps flag).
func TrainerOptionsFrom(cfg config.Config, steps int, log *slog.Logger) TrainerOptions {
	t := cfg.Train
	if steps > 0 {
		t.Steps = steps
	}
	return TrainerOptions{
		Run: cfg.Run, Model: cfg.Model, Stages: len(cfg.Stages), Train: t,
		Pipeline: cfg.Pipeline, Logger: log,
	}
}
