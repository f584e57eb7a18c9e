package swarm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"swarmnode/config"
	"swarmnode/dht"
)

// shutdownGrace bounds a graceful shutdown: the roles stop and the node leaves
// the run within it (README promises 5 s).
const shutdownGrace = 5 * time.Second

// autoStageTimeout bounds the choice of node.stage auto: the lookups of every
// stage's holders and the re-checks after announcing (see AutoStage).
const autoStageTimeout = 10 * time.Second

// RunOptions are the settings of one `swarmnode run` beyond the run config.
type RunOptions struct {
	// Slowdown stretches every forward and backward pass of the stage server by
	// this factor (values above 1): a deliberately slow peer for tests and demos.
	Slowdown float64
	// Summary, if set, is the file a trainer writes its summary to when it stops.
	Summary string
	// InitFrom, if set, is a model directory in Hugging Face's GPT-2 format
	// that a stage server starts its stage from when neither its checkpoints
	// nor the stage's other holders give it a state.
	InitFrom string
	// Fresh ignores the peer's checkpoints: a stage server starts from its
	// stage's other holders' state, or from the seed's weights, and a trainer
	// from step 0.
	Fresh bool
	// Out receives the lines scripts read once the node is up: "peer id:",
	// "address:" (one per address), "run:", "role:", "stage:" and "status:".
	// nil discards them.
	Out io.Writer
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

func (o RunOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Run plays one peer of the swarm of cfg, a validated config, as `swarmnode
// run` does. It starts the node, picks the stage to serve (node.stage; for
// auto, the stage that needs a holder most: AutoStage), and plays node.role: a stage
// server until ctx ends, and/or a trainer whose last step ends the run. Then it
// stops the roles and leaves the run within 5 s.
//
// A ctx that ends during start-up is a clean stop (nil). Otherwise the error is
// that of start-up, of a role that failed, or of a shutdown that overran.
func Run(ctx context.Context, cfg config.Config, o RunOptions) error {
	log := o.logger()
	opts := OptionsFromConfig(cfg)
	opts.Logger = log
	var err error
	if opts.Admission, err = AdmissionFromConfig(cfg.Admission); err != nil {
		return err
	}
	if opts.NetworkKey, err = NetworkKeyFromConfig(cfg.Admission); err != nil {
		return err
	}
	params, err := stageParams(cfg)
	if err != nil {
		return err
	}
	n, err := New(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped during start-up")
			return nil
		}
		return err
	}
	n.ledger.load(params)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stage, err := n.runStage(ctx, cfg)
	if err != nil {
		n.Close()
		return err
	}
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	n.announce(out, cfg, stage)
	failed := make(chan error, 2)
	var playing sync.WaitGroup
	newRoles(n, cfg, o).play(ctx, cancel, stage, o.Summary, &playing, failed)
	<-ctx.Done()
	return n.leave(&playing, failed)
}

// runStage is the stage this node serves under cfg: -1 for a trainer (it
// serves none), node.stage, or for auto the stage that needs a holder most
// (AutoStage, which announces it at once).
func (n *Node) runStage(ctx context.Context, cfg config.Config) (int, error) {
	if cfg.Node.Role == dht.RoleTrainer {
		return -1, n.SetStage(-1)
	}
	if k := cfg.Node.StageIndex(); k >= 0 {
		return k, nil
	}
	actx, cancel := context.WithTimeout(ctx, autoStageTimeout)
	defer cancel()
	return n.AutoStage(actx), nil
}

// announce prints the lines scripts wait for to out, then logs the join.
func (n *Node) announce(out io.Writer, cfg config.Config, stage int) {
	fmt.Fprintf(out, "peer id: %s\n", n.ID())
	for _, a := range n.Addrs() {
		fmt.Fprintf(out, "address: %s\n", a)
	}
	fmt.Fprintf(out, "run: %s\nrole: %s\nstage: %d\n", cfg.Run, cfg.Node.Role, stage)
	if u := n.StatusURL(); u != "" {
		fmt.Fprintf(out, "status: %s\n", u)
	} else {
		fmt.Fprintln(out, "status: off")
	}
	n.log.Info("joined swarm", "peer", n.ID(), "run", cfg.Run, "stage", stage, "role", cfg.Node.Role)
}

// play starts the roles of node.role on their own goroutines, counted by
// playing: a stage server (with averaging and rebalancing) until ctx ends, and
// a trainer that ends the run (cancel) when its steps are done, after writing
// its summary to the summary file if one is named. A role that fails sends its
// error to failed and ends the run too.
func (r *roles) play(ctx context.Context, cancel context.CancelFunc, stage int, summary string, playing *sync.WaitGroup, failed chan<- error) {
	if r.cfg.Node.Role != dht.RoleTrainer {
		playing.Go(func() {
			if err := r.serve(ctx, stage); err != nil {
				failed <- err
				cancel()
			}
		})
	}
	if r.cfg.Node.Role != dht.RoleServer {
		playing.Go(func() {
			defer cancel()
			sum, err := r.train(ctx)
			if summary != "" {
				if werr := sum.WriteFile(summary); werr != nil && err == nil {
					err = werr
				}
			}
			if err != nil {
				failed <- err
				return
			}
			r.log.Info("training finished", "step", sum.Step, "loss", sum.Loss, "val_loss", sum.ValLoss, "tokens_per_sec", int(sum.TokensPerSec))
		})
	}
}

// leave waits for the roles to stop, then closes the node, all within
// shutdownGrace, and returns the first role's failure.
func (n *Node) leave(playing *sync.WaitGroup, failed <-chan error) error {
	closed := make(chan error, 1)
	go func() {
		playing.Wait()
		closed <- n.Close()
	}()
	select {
	case err := <-closed:
		if err != nil {
			n.log.Warn("shutdown", "err", err)
		}
	case <-time.After(shutdownGrace):
		return fmt.Errorf("shutdown took more than %s", shutdownGrace)
	}
	select {
	case err := <-failed:
		return err
	default:
		n.log.Info("stopped")
		return nil
	}
}
