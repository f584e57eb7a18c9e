package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"swarmnode/config"
	"swarmnode/swarm"
)

// localCommand runs `swarmnode local`: the in-process reference trainer.
func localCommand(args []string, stdout, stderr io.Writer) int {
	var summary string
	var opts swarm.LocalOptions
	cfg, code := parseFlags("local", args, stderr, &summary, func(fs *flag.FlagSet, cfg *config.Config) {
		fs.StringVar(&opts.InitFrom, "init-from", "", "start from this model directory (Hugging Face GPT-2 format, swarmnode export's) instead of the seed's weights, unless resuming")
		fs.BoolVar(&opts.Resume, "resume", false, "continue from the newest complete checkpoint in checkpoint.dir (default: start from the seed's weights)")
		fs.StringVar(&cfg.Checkpoint.Dir, "checkpoint-dir", cfg.Checkpoint.Dir, "where checkpoints are written and resumed from (overrides checkpoint.dir)")
	})
	if code != exitOK {
		return code
	}
	if code := checkDevice("local", cfg, stderr); code != exitOK {
		return code
	}
	log := setupLogger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := swarm.RunLocal(ctx, cfg, opts, log)
	if summary != "" {
		if werr := sum.WriteFile(summary); werr != nil {
			fmt.Fprintf(stderr, "swarmnode local: %v\n", werr)
			return exitRuntime
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode local: %v\n", err)
		return exitRuntime
	}
	return exitOK
}
