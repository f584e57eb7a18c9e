package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"swarmnode/config"
)

// Options are the settings of a soak.
type Options struct {
	// Bin is the swarmnode binary; Root the directory its processes run in
	// (Config's data path is relative to it); Config the run config.
	Bin, Root, Config string
	// Out receives the phases' data dirs and logs, and samples.csv.
	Out string
	// Duration is how long the churned trainer is to train: the steps of
	// both runs are what the calibration swarm trains in it.
	Duration time.Duration
	// Steps, when not 0, are the steps of both runs (no calibration).
	Steps int
	// Holders is the number of holders of each stage (2 or 3).
	Holders int
	// InFlight, when not 0, replaces the config's pipeline.in_flight (a
	// lighter load for CI).
	InFlight int
	// Seed seeds the churn's choices (victim, signal, identity, timing).
	Seed int64
	// SkipReference skips the unchurned reference run.
	SkipReference bool
	// Log receives progress and the figures.
	Log io.Writer
}

// DefaultOptions are the soak of `make soak`, run from the repository root.
func DefaultOptions() Options {
	return Options{
		Bin: "bin/swarmnode", Root: ".", Config: "examples/gpt/soak.yaml",
		Duration: 10 * time.Minute, Holders: 3, Log: io.Discard,
	}
}

// Result is what a soak found.
type Result struct {
	// Steps is the steps both runs trained (asked for).
	Steps int
	// Churned and Reference are the runs' trainer summaries (nil when the
	// trainer wrote none or the run was skipped).
	Churned, Reference *summary
	// Faults counts the faults injected; Goroutines the goroutine samples
	// taken from status pages; LongestStall is the churned run's.
	Faults, Goroutines int
	LongestStall       time.Duration
	// Failures lists what failed the soak; empty means it passed.
	Failures []string
}

// Run runs the soak: calibration (unless o.Steps), the churned run, then the
// unchurned reference, each on a swarm of its own that is stopped before the
// next starts. Every process it starts is stopped before it returns. An error
// means the soak could not run (bad options, a swarm that did not start); a
// soak that ran and found problems lists them in Result.Failures.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	if o.Holders < 2 || o.Holders > 3 {
		return res, fmt.Errorf("holders per stage must be 2 or 3, got %d", o.Holders)
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	raw, err := os.ReadFile(o.Config)
	if err != nil {
		return res, err
	}
	cfg, err := config.Parse(raw)
	if err != nil {
		return res, fmt.Errorf("%s: %w", o.Config, err)
	}
	stages := len(cfg.Stages)
	if stages < 3 {
		return res, fmt.Errorf("%s has %d stages; the soak needs at least 3", o.Config, stages)
	}
	if abs, err := filepath.Abs(o.Config); err == nil {
		o.Config = abs
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return res, err
	}
	csv, err := newCSV(filepath.Join(o.Out, "samples.csv"))
	if err != nil {
		return res, err
	}
	defer csv.close()
	rng := rand.New(rand.NewPCG(uint64(o.Seed), 0x50a4))
	warm := min(60*time.Second, max(20*time.Second, o.Duration/4))
	fmt.Fprintf(o.Log, "soak: %d processes per swarm (%d stages × %d holders, the first the bootstrap, and a trainer), %s of churn, seed %d, out %s\n",
		stages*o.Holders+1, stages, o.Holders, o.Duration, o.Seed, o.Out)

	newPhase := func(name string, churn bool, steps int) *phase {
		return &phase{o: o, name: name, dir: filepath.Join(o.Out, name), churn: churn, steps: steps, rng: rng, csv: csv}
	}
	res.Steps = o.Steps
	if res.Steps == 0 {
		cal := newPhase("calibration", false, 1_000_000)
		cal.stopAfter = calibrateSkip + calibrateFor
		r, err := cal.run(ctx, stages)
		if err != nil {
			return res, fmt.Errorf("calibration: %w", err)
		}
		res.Failures = append(res.Failures, r.failures...)
		rate := calibrated(r.stepsAt, r.first)
		if rate <= 0 || len(r.failures) > 0 {
			return res, fmt.Errorf("calibration: the unchurned swarm made %d steps", len(r.stepsAt))
		}
		res.Steps = max(cfg.Train.Warmup+cfg.Train.EvalEvery, int(math.Round(rate*o.Duration.Seconds())))
		fmt.Fprintf(o.Log, "calibration: %.2f steps/s unchurned (over %s after %s), so %d steps for %s\n",
			rate, calibrateFor, calibrateSkip, res.Steps, o.Duration)
	}

	churned := newPhase("churned", true, res.Steps)
	cr, err := churned.run(ctx, stages)
	if err != nil {
		return res, fmt.Errorf("churned run: %w", err)
	}
	res.Churned, res.Faults = cr.summary, len(cr.events)
	res.LongestStall, _ = longestStall(cr.stepsAt)
	res.Failures = append(res.Failures, judge(cr, res.Steps, cfg.Train.Batch, warm)...)
	for _, p := range cr.procs {
		for _, s := range p.samples {
			if s.goroutines >= 0 {
				res.Goroutines++
			}
		}
	}
	printPhase(o.Log, cr, cfg.Train.Batch, warm)

	if !o.SkipReference && ctx.Err() == nil {
		ref := newPhase("reference", false, res.Steps)
		rr, err := ref.run(ctx, stages)
		if err != nil {
			return res, fmt.Errorf("reference run: %w", err)
		}
		res.Reference = rr.summary
		res.Failures = append(res.Failures, judge(rr, res.Steps, cfg.Train.Batch, warm)...)
		printPhase(o.Log, rr, cfg.Train.Batch, warm)
		if step, c, u := lastCommonEval(cr, rr); step > 0 {
			fmt.Fprintf(o.Log, "\nval loss at step %d of %d (the last evaluation both runs reached): churned %.4f, unchurned %.4f (%+.2f%%)\n",
				step, res.Steps, c, u, 100*(c-u)/u)
			stallRef, _ := longestStall(rr.stepsAt)
			fmt.Fprintf(o.Log, "longest stall: churned %s, unchurned %s; mean steps/s churned %.2f, unchurned %.2f\n",
				fmtDur(res.LongestStall), fmtDur(stallRef), meanRate(cr.stepsAt), meanRate(rr.stepsAt))
		}
	}
	return res, nil
}

// judge lists a finished run's failures: its own (unexpected exits, a
// trainer that did not finish), a trainer that gave up on microbatches (failed
// > 0, or a stage that stepped on other sequences than the trainer sent: a
// microbatch a stage lost and the commit gave up on, or one counted twice),
// and RSS growing past rssBound. A stage may be off by one batch: the case
// TestSwarmSurvivesKilledAndStoppedHolders leaves open (a holder stopped in
// the middle of a commit's all-reduce).
func judge(r phaseResult, steps, batch int, warm time.Duration) []string {
	out := append([]string(nil), r.failures...)
	switch {
	case r.summary == nil:
		out = append(out, r.name+": the trainer wrote no summary: it did not finish")
	case r.summary.Step != steps:
		out = append(out, fmt.Sprintf("%s: the trainer stopped at step %d of %d", r.name, r.summary.Step, steps))
	}
	if r.trainer != nil && r.trainer.Microbatches.Failed > 0 {
		out = append(out, fmt.Sprintf("%s: the trainer gave up on %d microbatches", r.name, r.trainer.Microbatches.Failed))
	}
	if s := r.summary; s != nil {
		sent := int64(s.Step) * int64(batch)
		for k, n := range s.Stepped {
			if n > sent+int64(batch) || n < sent-int64(batch) {
				out = append(out, fmt.Sprintf("%s: stage %d stepped on %d sequences, the trainer sent %d (%+d): microbatches lost or counted twice",
					r.name, k, n, sent, n-sent))
			}
		}
	}
	for _, f := range checkRSS(r.procs, warm) {
		out = append(out, r.name+": "+f)
	}
	return out
}

// lastCommonEval returns the last step both runs evaluated, and their val
// losses there: the final step when both finished.
func lastCommonEval(a, b phaseResult) (step int64, va, vb float64) {
	if a.summary != nil && b.summary != nil && a.summary.Step == a.steps && b.summary.Step == b.steps {
		return int64(a.steps), a.summary.ValLoss, b.summary.ValLoss
	}
	if a.trainer == nil || b.trainer == nil {
		return 0, 0, 0
	}
	at := map[int64]float64{}
	for _, h := range a.trainer.History {
		if h.ValLoss > 0 {
			at[h.Step] = h.ValLoss
		}
	}
	for _, h := range b.trainer.History {
		if v, ok := at[h.Step]; ok && h.ValLoss > 0 && h.Step > step {
			step, va, vb = h.Step, v, h.ValLoss
		}
	}
	return step, va, vb
}

// calibrated is the steps per second from calibrateSkip to calibrateSkip +
// calibrateFor after the first step.
func calibrated(steps []stepAt, first time.Time) float64 {
	var in []stepAt
	for _, s := range steps {
		if d := s.at.Sub(first); d >= calibrateSkip && d <= calibrateSkip+calibrateFor {
			in = append(in, s)
		}
	}
	return meanRate(in)
}
