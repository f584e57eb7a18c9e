package pipeline_test

import (
	"context"
	"log/slog"

	"github.com/libp2p/go-libp2p/core/host"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/dht"
	"swarmnode/model"
	"swarmnode/pipeline"
	"swarmnode/stages"
)

// serveAndTrain is how a node composes the pipeline: a stage server for stage k
// that gossips its load and steps its optimizer, and a trainer.
func serveAndTrain(ctx context.Context, cfg config.Config, h host.Host, svc *dht.Service,
	k int, mc model.Config, optim model.Optim, log *slog.Logger) (pipeline.Summary, error) {
	router := pipeline.DHTRouter(svc)

	st, err := stages.New(mc, cfg.Stages, k, cfg.Train.Seed)
	if err != nil {
		return pipeline.Summary{}, err
	}
	w := pipeline.NewWorker(st, pipeline.WorkerOptionsFrom(cfg, optim))
	w.OnStep(func(s pipeline.StepInfo) { log.Debug("step", "version", s.Version) })
	srv, err := pipeline.NewServer(h, w, router, pipeline.ServerOptionsFrom(cfg, log))
	if err != nil {
		return pipeline.Summary{}, err
	}
	defer srv.Close()
	go svc.FollowLoad(ctx, cfg.Node.GossipEvery, srv.Load)

	corpus, err := data.Load(cfg.Data.Path, cfg.Data.ValFraction)
	if err != nil {
		return pipeline.Summary{}, err
	}
	opts := pipeline.TrainerOptionsFrom(cfg, 0, log)
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
