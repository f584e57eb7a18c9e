package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"swarmnode/config"
	"swarmnode/dht"
	"swarmnode/swarm"
)

// shutdownGrace bounds a graceful shutdown; the issue promises 5 s.
const shutdownGrace = 5 * time.Second

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// runCommand runs `swarmnode run`: join the swarm, serve a stage and/or train
// through the swarm, serve the status page until SIGINT/SIGTERM (a trainer
// stops by itself after its steps).
func runCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "run config file (YAML)")
	var listen, bootstrap listFlag
	fs.Var(&listen, "listen", "multiaddr to listen on (repeatable; overrides node.listen)")
	fs.Var(&bootstrap, "bootstrap", "full multiaddr /.../p2p/<id> of a peer to join through (repeatable; overrides node.bootstrap)")
	identity := fs.String("identity", "", "Ed25519 key file (default <data-dir>/identity.key)")
	dataDir := fs.String("data-dir", "", "directory for the identity key (overrides node.data_dir)")
	status := fs.String("status", "", `HOST:PORT of the status page, or "off" (overrides node.status, default 127.0.0.1:7070)`)
	stage := fs.String("stage", "", `stage to serve: a number, or "auto" (overrides node.stage)`)
	role := fs.String("role", "", "server, trainer or both (overrides node.role)")
	dhtClient := fs.Bool("dht-client", false, "run the DHT in client mode (for peers that cannot accept connections)")
	relay := fs.Bool("relay", false, "serve as a circuit relay v2 for peers behind NAT")
	steps := fs.Int("steps", -1, "optimizer steps a trainer runs before exiting (overrides train.steps)")
	summary := fs.String("summary", "", "trainer: write a JSON summary {step, loss, val_loss, tokens_per_sec} here at exit")
	device := fs.String("device", "", "where served stages compute: cpu, cuda or auto (overrides device)")
	slowdown := fs.Float64("slowdown", 0, "server: stretch every forward and backward pass by this factor (a deliberately slow peer, for tests and demos)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "swarmnode run: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg, code := loadConfig(*cfgPath, stderr)
	if code != exitOK {
		return code
	}
	// Flags override the config only where given.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "listen":
			cfg.Node.Listen = listen
		case "bootstrap":
			cfg.Node.Bootstrap = bootstrap
		case "identity":
			cfg.Node.Identity = *identity
		case "data-dir":
			cfg.Node.DataDir = *dataDir
		case "status":
			cfg.Node.Status = *status
		case "stage":
			cfg.Node.Stage = *stage
		case "role":
			cfg.Node.Role = *role
		case "dht-client":
			cfg.Node.DHTClient = *dhtClient
		case "relay":
			cfg.Node.Relay = *relay
		}
	})
	if *steps >= 0 {
		cfg.Train.Steps = *steps
	}
	if *slowdown != 0 && *slowdown < 1 {
		fmt.Fprintf(stderr, "swarmnode run: --slowdown %g: want a factor of at least 1\n", *slowdown)
		return exitUsage
	}
	stageNum, err := checkRunFlags(&cfg)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode run: %v\n", err)
		return exitUsage
	}
	if code := applyDevice(fs, *device, &cfg, "run", stderr); code != exitOK {
		return code
	}

	log := setupLogger(stderr)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-sigs:
			log.Info("signal received: shutting down (send again to exit at once)")
			cancel()
		case <-ctx.Done():
			return
		}
		select {
		case <-sigs:
			fmt.Fprintln(stderr, "swarmnode run: second signal, exiting at once")
			os.Exit(exitRuntime)
		case <-time.After(2 * shutdownGrace):
		}
	}()

	opts := swarm.OptionsFromConfig(cfg)
	opts.Logger = log
	node, err := swarm.New(ctx, opts)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped during start-up")
			return exitOK // a signal asked for it: a clean stop
		}
		fmt.Fprintf(stderr, "swarmnode run: %v\n", err)
		return exitRuntime
	}
	if cfg.Node.Role == dht.RoleTrainer {
		stageNum = -1 // a trainer feeds data; it serves no stage
	} else if stageNum < 0 {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		stageNum = node.AutoStage(actx)
		acancel()
	}
	if cfg.Node.Role == dht.RoleTrainer {
		if err := node.SetStage(-1); err != nil {
			node.Close()
			fmt.Fprintf(stderr, "swarmnode run: %v\n", err)
			return exitRuntime
		}
	}

	fmt.Fprintf(stdout, "peer id: %s\n", node.ID())
	for _, a := range node.Addrs() {
		fmt.Fprintf(stdout, "address: %s\n", a)
	}
	fmt.Fprintf(stdout, "run: %s\nrole: %s\nstage: %d\n", cfg.Run, cfg.Node.Role, stageNum)
	if u := node.StatusURL(); u != "" {
		fmt.Fprintf(stdout, "status: %s\n", u)
	} else {
		fmt.Fprintln(stdout, "status: off")
	}
	log.Info("joined swarm", "peer", node.ID(), "run", cfg.Run, "stage", stageNum, "role", cfg.Node.Role)

	// The roles: a stage server (with averaging and rebalancing) until the node
	// stops, and a trainer that stops the node when its steps are done.
	ro := swarm.RoleOptions{Config: cfg, Slowdown: *slowdown, Logger: log}
	failed := make(chan error, 2)
	var serving sync.WaitGroup
	if cfg.Node.Role != dht.RoleTrainer {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := node.Serve(ctx, ro, stageNum); err != nil {
				failed <- err
				cancel()
			}
		}()
	}
	if cfg.Node.Role != dht.RoleServer {
		serving.Add(1)
		go func() {
			defer serving.Done()
			sum, err := node.Train(ctx, ro)
			if *summary != "" {
				if werr := writeSummary(*summary, sum); werr != nil && err == nil {
					err = werr
				}
			}
			if err != nil {
				failed <- err
			} else {
				log.Info("training finished", "step", sum.Step, "loss", sum.Loss, "val_loss", sum.ValLoss, "tokens_per_sec", int(sum.TokensPerSec))
			}
			cancel()
		}()
	}

	<-ctx.Done()
	done := make(chan error, 1)
	go func() {
		serving.Wait()
		done <- node.Close()
	}()
	select {
	case err := <-done:
		if err != nil {
			log.Warn("shutdown", "err", err)
		}
		select {
		case err := <-failed:
			fmt.Fprintf(stderr, "swarmnode run: %v\n", err)
			return exitRuntime
		default:
		}
		log.Info("stopped")
		return exitOK
	case <-time.After(shutdownGrace):
		fmt.Fprintf(stderr, "swarmnode run: shutdown took more than %s\n", shutdownGrace)
		return exitRuntime
	}
}

// checkRunFlags validates what config.Validate does not know about the node
// section's values: the stage against the run's stages, multiaddrs, the status
// address. It returns the stage number, -1 for auto.
func checkRunFlags(cfg *config.Config) (int, error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	stage := -1
	if cfg.Node.Stage != "auto" {
		k, err := strconv.Atoi(cfg.Node.Stage)
		if err != nil || k < 0 || k >= len(cfg.Stages) {
			return 0, &config.FieldError{Field: "node.stage", Msg: fmt.Sprintf("%q: want auto or a stage number in [0, %d)", cfg.Node.Stage, len(cfg.Stages))}
		}
		stage = k
	}
	for i, s := range cfg.Node.Listen {
		if _, err := ma.NewMultiaddr(s); err != nil {
			return 0, &config.FieldError{Field: fmt.Sprintf("node.listen[%d]", i), Msg: fmt.Sprintf("%q: %v", s, err)}
		}
	}
	if len(cfg.Node.Listen) == 0 {
		return 0, &config.FieldError{Field: "node.listen", Msg: "needs at least one address"}
	}
	for i, s := range cfg.Node.Bootstrap {
		a, err := ma.NewMultiaddr(s)
		if err == nil {
			if _, perr := a.ValueForProtocol(ma.P_P2P); perr != nil {
				err = fmt.Errorf("no /p2p/<peer-id> part")
			}
		}
		if err != nil {
			return 0, &config.FieldError{Field: fmt.Sprintf("node.bootstrap[%d]", i), Msg: fmt.Sprintf("%q: %v", s, err)}
		}
	}
	if cfg.Node.Status != "off" {
		if _, _, err := net.SplitHostPort(cfg.Node.Status); err != nil {
			return 0, &config.FieldError{Field: "node.status", Msg: fmt.Sprintf("%q: want HOST:PORT or off", cfg.Node.Status)}
		}
	}
	return stage, nil
}
