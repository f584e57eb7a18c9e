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

// exportCommand runs `swarmnode export`: the model of the newest step every
// stage has a checkpoint of, as a Hugging Face GPT-2 (model.safetensors and
// config.json).
func exportCommand(args []string, stdout, stderr io.Writer) int {
	var out, summary string
	var dirs, boot []string
	cfg, code := parseFlags("export", args, stderr, &summary, func(fs *flag.FlagSet, _ *config.Config) {
		fs.StringVar(&out, "out", "", "directory to write model.safetensors and config.json into (required)")
		fs.Var(&listFlag{list: &dirs}, "checkpoints", "checkpoint directory holding stage<k>/ (repeatable: e.g. every holder's; default checkpoint.dir)")
		fs.Var(&listFlag{list: &boot}, "bootstrap", "export from a live swarm instead, joined through this peer (repeatable; full multiaddr with /p2p/<id>)")
	})
	if code != exitOK {
		return code
	}
	if out == "" {
		fmt.Fprintln(stderr, "swarmnode export: --out DIR is required")
		return exitUsage
	}
	log := setupLogger(stderr)
	if len(boot) > 0 {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		steps, err := swarm.ExportLive(ctx, cfg, boot, out, log)
		if err != nil {
			fmt.Fprintf(stderr, "swarmnode export: %v\n", err)
			return exitRuntime
		}
		fmt.Fprintf(stdout, "exported the live swarm's stages at steps %v to %s\n", steps, out)
		return exitOK
	}
	if len(dirs) == 0 {
		dirs = []string{cfg.CheckpointDir()}
	}
	step, err := swarm.Export(cfg, dirs, out, log)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode export: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "exported step %d to %s\n", step, out)
	return exitOK
}
