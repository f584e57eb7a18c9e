package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"swarmnode/config"
	"swarmnode/swarm"
)

// parseFlags parses a command's flags over its config file and validates the
// result; a bad flag, a missing or bad config, or a bad value is a usage error
// (exit 2) with a message naming it. Every command takes --config, --steps,
// --device and --summary (into summary); declare, if set, declares the
// command's other flags.
//
// Flags that override config fields are bound to those fields, so a flag given
// replaces the file's value and a flag left out keeps it. That needs the file
// loaded before the flags are parsed, and the file's path is itself a flag: args
// are parsed twice, first over the defaults (to find --config and to report bad
// flags and -h), then over the loaded file.
func parseFlags(name string, args []string, stderr io.Writer, summary *string, declare func(*flag.FlagSet, *config.Config)) (config.Config, int) {
	var path string
	flags := func(cfg *config.Config, out io.Writer) *flag.FlagSet {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		fs.SetOutput(out)
		fs.StringVar(&path, "config", "", "run config file (YAML)")
		fs.IntVar(&cfg.Train.Steps, "steps", cfg.Train.Steps, "optimizer steps to train; a trainer exits after them (overrides train.steps)")
		fs.StringVar(summary, "summary", "", "write a JSON summary {step, loss, val_loss, tokens_per_sec} here at exit")
		fs.StringVar(&cfg.Device, "device", cfg.Device, "where stages compute: cpu, cuda or auto (overrides device)")
		if declare != nil {
			declare(fs, cfg)
		}
		return fs
	}
	defaults := config.Default()
	fs := flags(&defaults, stderr)
	if err := fs.Parse(args); err != nil {
		return config.Config{}, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "swarmnode %s: unexpected argument %q\n", name, fs.Arg(0))
		return config.Config{}, exitUsage
	}
	cfg, code := loadConfig(path, stderr)
	if code != exitOK {
		return cfg, code
	}
	if err := flags(&cfg, io.Discard).Parse(args); err != nil { // the first pass took these args
		return config.Config{}, exitUsage
	}
	if err := cfg.Validate(); err != nil {
		var fe *config.FieldError
		if errors.As(err, &fe) && fe.Field == "device" { // the file's device passed Load: --device is wrong
			fmt.Fprintf(stderr, "swarmnode %s: --device %q: want cpu, cuda or auto\n", name, cfg.Device)
		} else {
			fmt.Fprintf(stderr, "swarmnode %s: %v\n", name, err)
		}
		return config.Config{}, exitUsage
	}
	return cfg, exitOK
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

// checkDevice reports a config device cuda without a usable GPU as a runtime
// error (exit 1) naming what is missing.
func checkDevice(name string, cfg config.Config, stderr io.Writer) int {
	if err := swarm.CheckDevice(cfg.Device); err != nil {
		fmt.Fprintf(stderr, "swarmnode %s: %v\n", name, err)
		return exitRuntime
	}
	return exitOK
}

// listFlag is a repeatable flag bound to a list field of the config: the
// first use replaces the config's list, later ones add to it.
type listFlag struct {
	list *[]string
	set  bool
}

func (l *listFlag) String() string {
	if l.list == nil { // the zero value, which package flag asks about
		return ""
	}
	return strings.Join(*l.list, ",")
}

func (l *listFlag) Set(s string) error {
	if !l.set {
		*l.list, l.set = nil, true
	}
	*l.list = append(*l.list, s)
	return nil
}
