package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"swarmnode/config"
	"swarmnode/swarm"
)

// runCommand runs `swarmnode run`: swarm.Run joins the swarm, serves a stage
// and/or trains through it and serves the status page until SIGINT/SIGTERM (a
// trainer stops by itself after its steps); a second signal exits at once.
func runCommand(args []string, stdout, stderr io.Writer) int {
	var o swarm.RunOptions
	cfg, code := parseFlags("run", args, stderr, &o.Summary, runFlags(&o))
	if code != exitOK {
		return code
	}
	if o.Slowdown != 0 && o.Slowdown < 1 {
		fmt.Fprintf(stderr, "swarmnode run: --slowdown %g: want a factor of at least 1\n", o.Slowdown)
		return exitUsage
	}
	if code := checkDevice("run", cfg, stderr); code != exitOK {
		return code
	}
	o.Out, o.Logger = stdout, setupLogger(stderr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer onSignals(cancel, o.Logger, stderr)()
	if err := swarm.Run(ctx, cfg, o); err != nil {
		fmt.Fprintf(stderr, "swarmnode run: %v\n", err)
		return exitRuntime
	}
	return exitOK
}

// runFlags declares the flags of `swarmnode run` beyond every command's: the
// node section's overrides, bound to cfg, and --slowdown into o.
func runFlags(o *swarm.RunOptions) func(*flag.FlagSet, *config.Config) {
	return func(fs *flag.FlagSet, cfg *config.Config) {
		n := &cfg.Node
		fs.Var(&listFlag{list: &n.Listen}, "listen", "multiaddr to listen on (repeatable; overrides node.listen)")
		fs.Var(&listFlag{list: &n.Bootstrap}, "bootstrap", "full multiaddr /.../p2p/<id> of a peer to join through (repeatable; overrides node.bootstrap)")
		fs.StringVar(&n.Identity, "identity", n.Identity, "Ed25519 key file (default <data-dir>/identity.key)")
		fs.StringVar(&n.DataDir, "data-dir", n.DataDir, "directory for the identity key (overrides node.data_dir)")
		fs.StringVar(&n.Status, "status", n.Status, `HOST:PORT of the status page, or "off" (overrides node.status)`)
		fs.StringVar(&n.Stage, "stage", n.Stage, `stage to serve: a number, or "auto" (overrides node.stage)`)
		fs.StringVar(&n.Role, "role", n.Role, "server, trainer or both (overrides node.role)")
		fs.BoolVar(&n.DHTClient, "dht-client", n.DHTClient, "run the DHT in client mode (for peers that cannot accept connections)")
		fs.BoolVar(&n.Relay, "relay", n.Relay, "serve as a circuit relay v2 for peers behind NAT")
		fs.Float64Var(&o.Slowdown, "slowdown", 0, "server: stretch every forward and backward pass by this factor (a deliberately slow peer, for tests and demos)")
		fs.StringVar(&o.InitFrom, "init-from", "", "server: start a stage nobody holds from this model directory (Hugging Face GPT-2 format, swarmnode export's) instead of the seed's weights")
		fs.BoolVar(&o.Fresh, "fresh", false, "ignore this peer's checkpoints (a server starts from its stage's other holders, or the seed's weights; a trainer from step 0)")
		fs.StringVar(&cfg.Checkpoint.Dir, "checkpoint-dir", cfg.Checkpoint.Dir, "where this peer's checkpoints and trainer state go (overrides checkpoint.dir)")
		fs.StringVar(&cfg.Admission.Certificate, "certificate", cfg.Admission.Certificate, "this peer's certificate of an admitted run, from `swarmnode admit` (overrides admission.certificate)")
	}
}

// signalEcho is how soon after the first signal another one is taken as the
// same request to stop.
const signalEcho = time.Second

// onSignals makes the first SIGINT or SIGTERM cancel the run, a graceful
// shutdown, and a second one exit at once. Signals within signalEcho of the
// first count as the first: Ctrl-C in a terminal reaches every process of the
// group, and a script that catches it then sends its peers a SIGTERM of its
// own, which must not cut their shutdown (and last checkpoint) short. The
// returned func stops watching.
func onSignals(cancel context.CancelFunc, log *slog.Logger, stderr io.Writer) (stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			log.Info("signal received: shutting down (send again to exit at once)")
			cancel()
		case <-done:
			return
		}
		echo := time.After(signalEcho)
		for {
			select {
			case <-sigs:
				if echo == nil {
					fmt.Fprintln(stderr, "swarmnode run: second signal, exiting at once")
					os.Exit(exitRuntime)
				}
			case <-echo:
				echo = nil
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}
