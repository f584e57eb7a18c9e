package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"swarmnode/swarm"
)

// localCommand runs `swarmnode local`: the in-process reference trainer.
func localCommand(args []string, stdout, stderr io.Writer) int {
	var summary string
	cfg, code := parseFlags("local", args, stderr, &summary, nil)
	if code != exitOK {
		return code
	}
	if code := checkDevice("local", cfg, stderr); code != exitOK {
		return code
	}
	log := setupLogger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := swarm.RunLocal(ctx, cfg, log)
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
