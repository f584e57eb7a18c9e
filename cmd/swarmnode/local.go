package main

import (
	"context"
	"encoding/json"
	"errors"
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
	fs := flag.NewFlagSet("local", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "run config file (YAML)")
	steps := fs.Int("steps", -1, "optimizer steps to train (overrides train.steps)")
	summary := fs.String("summary", "", "write a JSON summary {step, loss, val_loss, tokens_per_sec} here at exit")
	device := fs.String("device", "", "where stages compute: cpu, cuda or auto (overrides device)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "swarmnode local: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg, code := loadConfig(*cfgPath, stderr)
	if code != exitOK {
		return code
	}
	if *steps >= 0 {
		cfg.Train.Steps = *steps
	}
	if code := applyDevice(fs, *device, &cfg, "local", stderr); code != exitOK {
		return code
	}
	log := setupLogger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := swarm.RunLocal(ctx, cfg, log)
	if *summary != "" {
		if werr := writeSummary(*summary, sum); werr != nil {
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

// applyDevice applies a --device flag over the config's device (a bad value is a
// usage error) and checks that the device is usable: --device cuda without a
// usable GPU is a runtime error (exit 1) naming what is missing.
func applyDevice(fs *flag.FlagSet, device string, cfg *config.Config, cmd string, stderr io.Writer) int {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "device" })
	if set {
		switch device {
		case "cpu", "cuda", "auto":
			cfg.Device = device
		default:
			fmt.Fprintf(stderr, "swarmnode %s: --device %q: want cpu, cuda or auto\n", cmd, device)
			return exitUsage
		}
	}
	if err := swarm.CheckDevice(cfg.Device); err != nil {
		fmt.Fprintf(stderr, "swarmnode %s: %v\n", cmd, err)
		return exitRuntime
	}
	return exitOK
}

// loadConfig loads and validates a config file; a missing flag, an unreadable
// file or an invalid field is a usage error (exit 2) with a message naming it.
func loadConfig(path string, stderr io.Writer) (config.Config, int) {
	if path == "" {
		fmt.Fprintln(stderr, "swarmnode: --config FILE is required")
		return config.Config{}, exitUsage
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "swarmnode: %v\n", err)
		return config.Config{}, exitUsage
	}
	return cfg, exitOK
}

func writeSummary(path string, s any) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
		return errors.Join(fmt.Errorf("write summary"), err)
	}
	return nil
}
