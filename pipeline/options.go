package pipeline

import (
	"log/slog"

	"swarmnode/config"
)

// WorkerOptionsFrom takes a worker's settings from a run config.
func WorkerOptionsFrom(cfg config.Config) WorkerOptions {
	return WorkerOptions{Optim: cfg.Train.Optim}
}

// ServerOptionsFrom takes a stage server's settings from a run config.
func ServerOptionsFrom(cfg config.Config, log *slog.Logger) ServerOptions {
	return ServerOptions{
		Run: cfg.Run, Pipeline: cfg.Pipeline, Compression: cfg.Compression,
		MaxBatch: cfg.Train.Microbatch, Logger: log,
	}
}

// TrainerOptionsFrom takes a trainer's settings from a run config.
func TrainerOptionsFrom(cfg config.Config, log *slog.Logger) TrainerOptions {
	return TrainerOptions{
		Run: cfg.Run, Model: cfg.Model, Stages: len(cfg.Stages), Train: cfg.Train,
		Pipeline: cfg.Pipeline, Logger: log,
	}
}
