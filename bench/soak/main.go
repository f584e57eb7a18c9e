// Command soak is the churn soak of issue 17: it runs a swarm of real
// `swarmnode run` processes on loopback (a bootstrap that is also the first
// holder of stage 0, 3 holders of each of the 4 stages of
// examples/gpt/soak.yaml, and a trainer: 13 processes) for a duration, and
// while the trainer trains it picks a random holder every 10–20 s and kills it
// with SIGKILL, freezes it with SIGSTOP for 2–8 s and then SIGCONT, or stops it
// with SIGTERM, and starts a replacement at once (half the time with the same
// identity and data dir, half the time a new peer).
//
// A run has three phases, each on a swarm of its own:
//
//  1. calibration (skipped with -steps): the unchurned swarm trains for 40 s,
//     which gives the steps per second and so the number of steps that lasts
//     the duration;
//  2. churned: the trainer trains that many steps while the holders churn;
//  3. reference: a fresh swarm trains the same steps on the same batches
//     (train.stream 0) without churn.
//
// It prints progress every 30 s and at the end the figures: steps per second
// per 30 s window, the longest stall (longest time without a trainer step),
// the trainer's microbatches completed / retried / failed, the sequences each
// stage stepped on against those sent, every process's RSS, goroutines and
// open file descriptors (sampled every 10 s), and the val loss of both runs.
// Every sample goes to samples.csv under -out.
//
// It fails (exit 1) when the trainer gives up on a microbatch (failed > 0, or
// a stage stepped on more than a batch more or fewer sequences than the
// trainer sent), when a process of the swarm that was not signalled exits,
// when the trainer does not finish, or when a process's RSS grows past twice
// its value after warm-up (and by more than 64 MB). Timings (stalls, steps
// per second) are figures, not conditions: the machines are shared and noisy.
//
//	go run ./bench/soak -duration 10m        # make soak (SOAK=10m)
//	go run ./bench/soak -duration 2m -steps 600 -out out/soak
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command: it parses args and runs the soak until it ends or a
// signal comes. It returns the exit status: 0 passed, 1 failed, 2 bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := DefaultOptions()
	fs.StringVar(&o.Bin, "bin", o.Bin, "the swarmnode binary")
	fs.StringVar(&o.Config, "config", o.Config, "the run config (its run id and --steps are set per phase)")
	fs.StringVar(&o.Root, "root", o.Root, "directory the processes run in (the config's data path is relative to it)")
	fs.StringVar(&o.Out, "out", "out/soak", "directory for the peers' data dirs, logs and samples.csv (emptied first)")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "how long the churned trainer should train (sets the steps through the calibration)")
	fs.IntVar(&o.Steps, "steps", 0, "steps of both runs; 0 calibrates them from -duration")
	fs.IntVar(&o.Holders, "holders", o.Holders, "holders of each stage (2 or 3)")
	fs.IntVar(&o.InFlight, "in-flight", 0, "the trainer's pipeline.in_flight; 0 keeps the config's")
	fs.Int64Var(&o.Seed, "seed", 0, "seed of the churn's choices; 0 picks one (printed)")
	fs.BoolVar(&o.SkipReference, "no-reference", false, "skip the unchurned reference run")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "soak: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1_000_000
	}
	if err := os.RemoveAll(o.Out); err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return 1
	}
	o.Log = stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := Run(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return 1
	}
	if len(res.Failures) > 0 {
		fmt.Fprintf(stdout, "FAIL: %d problem(s):\n", len(res.Failures))
		for _, f := range res.Failures {
			fmt.Fprintf(stdout, "  - %s\n", f)
		}
		return 1
	}
	fmt.Fprintln(stdout, "PASS")
	return 0
}
