package pipeline_test

import (
	"context"
	"log/slog"

	"github.com/libp2p/go-libp2p/core/host"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/pipeline"
	"swarmnode/stages"
)

// serveAndTrain is how a node composes the pipeline: a stage server for stage k
// and a trainer, both finding the holders of every stage through router. A
// swarm node routes through the run's DHT and gossips each server's Load to
// the run; see package swarm.
func serveAndTrain(ctx context.Context, cfg config.Config, h host.Host, router pipeline.Router,
	k int, log *slog.Logger) (pipeline.Summary, error) {
	st, err := stages.New(cfg.Model, cfg.Stages, k, cfg.Train.Seed)
	if err != nil {
		return pipeline.Summary{}, err
	}
	w := pipeline.NewWorker(st, pipeline.WorkerOptionsFrom(cfg))
	w.OnStep(func(s pipeline.StepInfo) { log.Debug("step", "version", s.Version) })
	srv, err := pipeline.NewServer(h, w, router, pipeline.ServerOptionsFrom(cfg, log))
	if err != nil {
		return pipeline.Summary{}, err
	}
	defer srv.Close()

	corpus, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction, cfg.Model.Vocab)
	if err != nil {
		return pipeline.Summary{}, err
	}
	opts := pipeline.TrainerOptionsFrom(cfg, log)
	opts.OnStep = func(r pipeline.StepReport) { log.Info("step", "step", r.Step, "loss", r.Loss) }
	tr, err := pipeline.NewTrainer(h, router, corpus, opts)
	if err != nil {
		return pipeline.Summary{}, err
	}
	return tr.Run(ctx)
}

// A node serving a stage and training through the swarm (see serveAndTrain).
func Example() {
	_ = serveAndTrain
}
