package main

import (
	"flag"
	"fmt"
	"io"

	"swarmnode/config"
	"swarmnode/swarm"
)

// exportCommand runs `swarmnode export`: the model of the newest step every
// stage has a checkpoint of, as a Hugging Face GPT-2 (model.safetensors and
// config.json).
func exportCommand(args []string, stdout, stderr io.Writer) int {
	var out, summary string
	var dirs []string
	cfg, code := parseFlags("export", args, stderr, &summary, func(fs *flag.FlagSet, _ *config.Config) {
		fs.StringVar(&out, "out", "", "directory to write model.safetensors and config.json into (required)")
		fs.Var(&listFlag{list: &dirs}, "checkpoints", "checkpoint directory holding stage<k>/ (repeatable: e.g. every holder's; default checkpoint.dir)")
	})
	if code != exitOK {
		return code
	}
	if out == "" {
		fmt.Fprintln(stderr, "swarmnode export: --out DIR is required")
		return exitUsage
	}
	if len(dirs) == 0 {
		dirs = []string{cfg.CheckpointDir()}
	}
	step, err := swarm.Export(cfg, dirs, out, setupLogger(stderr))
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode export: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "exported step %d to %s\n", step, out)
	return exitOK
}
