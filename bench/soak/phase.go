package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Timings of a phase. The churn's are the issue's; the others bound waits.
const (
	churnMin, churnMax   = 10 * time.Second, 20 * time.Second // between two faults
	freezeMin, freezeMax = 2 * time.Second, 8 * time.Second   // SIGSTOP to SIGCONT
	pollEvery            = 250 * time.Millisecond             // the trainer's step: the stall's resolution
	sampleEvery          = 10 * time.Second                   // RSS, goroutines, fds of every process
	progressEvery        = 30 * time.Second                   // a progress line; also the steps/s window
	startTimeout         = 30 * time.Second                   // for a process's start-up lines
	stopGrace            = 10 * time.Second                   // SIGTERM to SIGKILL at the end
	stallAbort           = 5 * time.Minute                    // no step this long: the trainer is stuck
	calibrateSkip        = 10 * time.Second                   // after the first step, not measured
	calibrateFor         = 30 * time.Second                   // measured
)

// phase is one swarm of the soak, from start to the stop of its last process.
type phase struct {
	o     Options
	name  string // calibration, churned, reference
	dir   string
	cfg   string // this phase's config file
	churn bool
	steps int
	// stopAfter, if set, ends the phase this long after the trainer's first
	// step (the calibration) instead of at the trainer's exit.
	stopAfter time.Duration
	rng       *rand.Rand
	csv       *csvLog

	mu            sync.Mutex
	start         time.Time
	slots         []*proc // the current process of each holder slot
	gens          []int   // replacements of each slot so far
	procs         []*proc // every process started, in order
	trainer       *proc
	ending        bool
	holders       []int // per stage, when training ended
	firstStep     time.Time
	stepsAt       []stepAt
	trainerStatus *apiStatus
	events        []event
	terms         []termExit
	failures      []string
	dead          chan int // slots whose process exited on its own
}

// stepAt is when the trainer's status first showed a step.
type stepAt struct {
	at   time.Time
	step int64
}

// event is one fault the soak caused (or saw).
type event struct {
	at   time.Duration // since the trainer's first step
	step int64
	what string
}

// termExit is how a SIGTERMed process exited.
type termExit struct {
	name string
	took time.Duration
	err  error
	// killed: it was still running after stopGrace and got SIGKILL.
	killed bool
}

// summary is the trainer's --summary file.
type summary struct {
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	ValLoss      float64 `json:"val_loss"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	Stepped      []int64 `json:"stepped"`
}

// phaseResult is what a phase measured.
type phaseResult struct {
	name     string
	steps    int // asked for
	start    time.Time
	end      time.Time
	first    time.Time // the trainer's first step
	stepsAt  []stepAt
	trainer  *apiStatus // its last status
	summary  *summary   // nil when it wrote none
	procs    []*proc
	events   []event
	terms    []termExit
	failures []string
	// holders counts, per stage, the holders serving it when training ended;
	// moves the rebalancer's stage moves logged by the phase's processes.
	holders []int
	moves   int
	// warnings counts the WARN and ERROR lines of the phase's logs by message.
	warnings map[string]int
}

var runLine = regexp.MustCompile(`(?m)^run:.*$`)

// warnLine picks the level and message of a WARN or ERROR line of slog's
// text format.
var warnLine = regexp.MustCompile(`(?m)level=(WARN|ERROR) msg=("[^"]*"|\S+)`)

var inFlightLine = regexp.MustCompile(`(?m)^(\s+)in_flight:\s*\d+`)

// writeConfig writes the phase's config: o.Config with its own run id (so
// that no peer of another phase could ever be taken for one of this one's)
// and the in-flight override.
func (ph *phase) writeConfig() error {
	raw, err := os.ReadFile(ph.o.Config)
	if err != nil {
		return err
	}
	if !runLine.Match(raw) {
		return fmt.Errorf("%s has no top-level run: line", ph.o.Config)
	}
	out := runLine.ReplaceAll(raw, []byte("run: soak-"+ph.name+"-"+strconv.FormatInt(ph.o.Seed, 10)))
	if ph.o.InFlight > 0 {
		if !inFlightLine.Match(out) {
			return fmt.Errorf("%s has no pipeline in_flight: line to override", ph.o.Config)
		}
		out = inFlightLine.ReplaceAll(out, []byte("${1}in_flight: "+strconv.Itoa(ph.o.InFlight)))
	}
	ph.cfg = filepath.Join(ph.dir, "run.yaml")
	return os.WriteFile(ph.cfg, out, 0o644)
}

func (ph *phase) logf(format string, args ...any) {
	fmt.Fprintf(ph.o.Log, "[%s %s] %s\n", ph.name, fmtDur(time.Since(ph.start)), fmt.Sprintf(format, args...))
}

// fail records a failure of the soak.
func (ph *phase) fail(format string, args ...any) {
	msg := ph.name + ": " + fmt.Sprintf(format, args...)
	ph.mu.Lock()
	ph.failures = append(ph.failures, msg)
	ph.mu.Unlock()
	fmt.Fprintf(ph.o.Log, "[%s %s] FAILURE: %s\n", ph.name, fmtDur(time.Since(ph.start)), fmt.Sprintf(format, args...))
}

// launch starts one process and a watcher that reports its exit if the soak
// did not cause it.
func (ph *phase) launch(name string, slot, stage int, dir string, args ...string) (*proc, error) {
	p, err := startProc(ph.o.Bin, ph.o.Root, ph.cfg, name, slot, stage, dir, filepath.Join(ph.dir, name+".log"), args...)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ph.mu.Lock()
	ph.procs = append(ph.procs, p)
	ph.mu.Unlock()
	go ph.watchExit(p)
	return p, nil
}

func (ph *phase) watchExit(p *proc) {
	<-p.exited
	ph.mu.Lock()
	ending := ph.ending
	ph.mu.Unlock()
	if p.slot < 0 { // the trainer: its exit ends the phase, judged there
		return
	}
	if ending || p.expectedExit() != "" {
		return
	}
	ph.fail("%s (pid %d, stage %d) exited on its own: %v; log %s:\n%s", p.name, p.pid, p.currentStage(), p.exitErr, p.logPath, tail(p.logPath, 12))
	if ph.churn {
		select {
		case ph.dead <- p.slot:
		default:
		}
	}
}

// holderName names slot i's first process: s<stage>-<i within the stage>.
func (ph *phase) holderName(slot int) string {
	return fmt.Sprintf("s%d-%d", slot/ph.o.Holders, slot%ph.o.Holders)
}

// run starts the swarm and the trainer, churns if asked, and stops every
// process before it returns.
func (ph *phase) run(ctx context.Context, stages int) (res phaseResult, err error) {
	ph.start = time.Now()
	ph.dead = make(chan int, stages*ph.o.Holders)
	if err := os.MkdirAll(ph.dir, 0o755); err != nil {
		return res, err
	}
	if err := ph.writeConfig(); err != nil {
		return res, err
	}
	defer func() {
		ph.stopAll()
		res = ph.result()
	}()

	// The bootstrap is the first holder of stage 0; the other holders join
	// through it, each told its stage.
	n := stages * ph.o.Holders
	ph.slots, ph.gens = make([]*proc, n), make([]int, n)
	boot, err := ph.launch(ph.holderName(0), 0, 0, filepath.Join(ph.dir, ph.holderName(0)), "--role", "server", "--stage", "0")
	if err != nil {
		return res, err
	}
	ph.slots[0] = boot
	if err := boot.waitReady(startTimeout); err != nil {
		return res, err
	}
	// Stage 0's other holders start once the bootstrap sees every stage
	// held: started together with the rest, they saw stages 1… empty for a
	// moment and moved there (the rebalancer's rule for an empty stage),
	// leaving stage 0 one holder (see docs/reliability.md).
	start := func(from, to int) error {
		for i := from; i < to; i++ {
			name, stage := ph.holderName(i), i/ph.o.Holders
			p, err := ph.launch(name, i, stage, filepath.Join(ph.dir, name), "--role", "server", "--stage", strconv.Itoa(stage), "--bootstrap", boot.addr)
			if err != nil {
				return err
			}
			ph.slots[i] = p
		}
		for _, p := range ph.slots[from:to] {
			if err := p.waitReady(startTimeout); err != nil {
				return err
			}
		}
		return nil
	}
	if err := start(ph.o.Holders, n); err != nil {
		return res, err
	}
	if err := waitAllHeld(boot, stages, startTimeout); err != nil {
		return res, err
	}
	if err := start(1, ph.o.Holders); err != nil {
		return res, err
	}
	tr, err := ph.launch("trainer", -1, -1, filepath.Join(ph.dir, "trainer"), "--role", "trainer", "--bootstrap", boot.addr,
		"--steps", strconv.Itoa(ph.steps), "--summary", filepath.Join(ph.dir, "summary.json"))
	if err != nil {
		return res, err
	}
	ph.trainer = tr
	if err := tr.waitReady(startTimeout); err != nil {
		return res, err
	}
	ph.logf("%d holders (%d stages × %d) and a trainer up; training %d steps%s", n, stages, ph.o.Holders, ph.steps,
		map[bool]string{true: " while holders churn", false: ""}[ph.churn])

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	firstStep := make(chan struct{})
	wg.Go(func() { ph.poll(ctx, firstStep) })
	wg.Go(func() { ph.sampleLoop(ctx) })
	wg.Go(func() { ph.progressLoop(ctx) })
	if ph.churn {
		wg.Go(func() {
			select {
			case <-firstStep:
				ph.churnLoop(ctx)
			case <-ctx.Done():
			}
		})
	}
	ph.waitEnd(ctx, firstStep)
	ph.mu.Lock()
	ph.ending = true
	ph.holders = make([]int, stages)
	for _, p := range ph.slots {
		if p.alive() {
			if k := p.currentStage(); k >= 0 && k < stages {
				ph.holders[k]++
			}
		}
	}
	ph.mu.Unlock()
	cancel()
	wg.Wait()
	return res, nil
}

// waitAllHeld waits until p's status lists a holder of each of the stages.
func waitAllHeld(p *proc, stages int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := p.status()
		if err == nil {
			held := 0
			for k := range stages {
				if len(st.Holders[strconv.Itoa(k)]) > 0 {
					held++
				}
			}
			if held == stages {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not see every stage held within %s (last error %v)", p.name, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitEnd returns when the phase is over: the trainer exited, the calibration
// measured enough, the trainer stalled for stallAbort or ctx ended.
func (ph *phase) waitEnd(ctx context.Context, firstStep <-chan struct{}) {
	var stopAt <-chan time.Time
	stallCheck := time.NewTicker(time.Second)
	defer stallCheck.Stop()
	for {
		select {
		case <-ctx.Done():
			ph.fail("stopped before the trainer finished (%v)", context.Cause(ctx))
			return
		case <-ph.trainer.exited:
			if ph.stopAfter > 0 {
				ph.fail("trainer exited during the calibration: %v; log %s:\n%s", ph.trainer.exitErr, ph.trainer.logPath, tail(ph.trainer.logPath, 12))
			} else if ph.trainer.exitErr != nil {
				ph.fail("trainer exited with %v; log %s:\n%s", ph.trainer.exitErr, ph.trainer.logPath, tail(ph.trainer.logPath, 12))
			}
			return
		case <-firstStep:
			firstStep = nil
			if ph.stopAfter > 0 {
				stopAt = time.After(ph.stopAfter)
			}
		case <-stopAt:
			return
		case now := <-stallCheck.C:
			ph.mu.Lock()
			last := ph.start
			if k := len(ph.stepsAt); k > 0 {
				last = ph.stepsAt[k-1].at
			}
			ph.mu.Unlock()
			if now.Sub(last) > stallAbort {
				ph.fail("the trainer made no step for %s: it did not finish", stallAbort)
				return
			}
		}
	}
}

// poll reads the trainer's status every pollEvery and records each new step.
func (ph *phase) poll(ctx context.Context, firstStep chan<- struct{}) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			st, err := ph.trainer.status()
			if err != nil {
				continue
			}
			ph.mu.Lock()
			ph.trainerStatus = st
			last := int64(0)
			if k := len(ph.stepsAt); k > 0 {
				last = ph.stepsAt[k-1].step
			}
			if st.Step > last {
				if len(ph.stepsAt) == 0 {
					ph.firstStep = now
					close(firstStep)
				}
				ph.stepsAt = append(ph.stepsAt, stepAt{now, st.Step})
			}
			ph.mu.Unlock()
		}
	}
}

// sampleLoop samples every live process every sampleEvery.
func (ph *phase) sampleLoop(ctx context.Context) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		now := time.Now()
		ph.mu.Lock()
		procs := append([]*proc(nil), ph.procs...)
		ph.mu.Unlock()
		for _, p := range procs {
			if p.alive() && p.measure(now) {
				ph.csv.write(ph.name, now.Sub(ph.start), p)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// progressLoop prints a line every progressEvery.
func (ph *phase) progressLoop(ctx context.Context) {
	t := time.NewTicker(progressEvery)
	defer t.Stop()
	var prev int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ph.mu.Lock()
		st, steps, events := ph.trainerStatus, append([]stepAt(nil), ph.stepsAt...), len(ph.events)
		live := 0
		for _, p := range ph.slots {
			if p != nil && p.alive() {
				live++
			}
		}
		ph.mu.Unlock()
		if st == nil {
			ph.logf("waiting for the trainer's first step")
			continue
		}
		stall, _ := longestStall(steps)
		ph.logf("step %d/%d (%.2f steps/s over %s); microbatches completed %d retried %d failed %d; %d holders live; faults %d; longest stall %s",
			st.Step, ph.steps, float64(st.Step-prev)/progressEvery.Seconds(), fmtDur(progressEvery),
			st.Microbatches.Completed, st.Microbatches.Retried, st.Microbatches.Failed, live, events, fmtDur(stall))
		prev = st.Step
	}
}

// churnLoop injects a fault every churnMin–churnMax until ctx ends.
func (ph *phase) churnLoop(ctx context.Context) {
	for {
		wait := churnMin + time.Duration(ph.rng.Int64N(int64(churnMax-churnMin)))
		select {
		case <-ctx.Done():
			return
		case slot := <-ph.dead:
			ph.replace(ctx, slot, false, "after it exited on its own")
			continue
		case <-time.After(wait):
		}
		ph.fault(ctx)
	}
}

// victim picks a random live, unfrozen holder of a stage that keeps another
// live, unfrozen holder.
func (ph *phase) victim() (int, *proc) {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	up := map[int]int{}
	var cands []int
	for i, p := range ph.slots {
		if p.alive() && !p.isFrozen() {
			up[p.currentStage()]++
			cands = append(cands, i)
		}
	}
	var ok []int
	for _, i := range cands {
		if up[ph.slots[i].currentStage()] >= 2 {
			ok = append(ok, i)
		}
	}
	if len(ok) == 0 {
		return -1, nil
	}
	i := ok[ph.rng.IntN(len(ok))]
	return i, ph.slots[i]
}

// event records a fault.
func (ph *phase) event(format string, args ...any) {
	what := fmt.Sprintf(format, args...)
	ph.mu.Lock()
	var step int64
	if ph.trainerStatus != nil {
		step = ph.trainerStatus.Step
	}
	ph.events = append(ph.events, event{at: time.Since(ph.firstStep), step: step, what: what})
	ph.mu.Unlock()
	ph.logf("step %d: %s", step, what)
}

// fault kills, freezes or stops one random holder, and replaces it.
func (ph *phase) fault(ctx context.Context) {
	slot, p := ph.victim()
	if p == nil {
		ph.logf("no holder can be taken without emptying a stage: no fault this time")
		return
	}
	stage := p.currentStage()
	same := ph.rng.IntN(2) == 0
	switch ph.rng.IntN(3) {
	case 0:
		ph.event("SIGKILL %s (pid %d, stage %d)", p.name, p.pid, stage)
		p.setFault("SIGKILL")
		p.signal(syscall.SIGKILL)
		<-p.exited
		ph.replace(ctx, slot, same, "")
	case 1:
		d := freezeMin + time.Duration(ph.rng.Int64N(int64(freezeMax-freezeMin)))
		ph.event("SIGSTOP %s (pid %d, stage %d) for %s", p.name, p.pid, stage, fmtDur(d))
		p.signal(syscall.SIGSTOP)
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		p.signal(syscall.SIGCONT)
	case 2:
		ph.event("SIGTERM %s (pid %d, stage %d)", p.name, p.pid, stage)
		start := time.Now()
		p.setFault("SIGTERM")
		p.signal(syscall.SIGTERM)
		waitExit := func() {
			te := termExit{name: p.name}
			select {
			case <-p.exited:
			case <-time.After(stopGrace):
				te.killed = true
				p.cmd.Process.Kill()
				<-p.exited
			}
			te.took, te.err = time.Since(start), p.exitErr
			ph.mu.Lock()
			ph.terms = append(ph.terms, te)
			ph.mu.Unlock()
			if te.killed || te.err != nil {
				ph.logf("%s after SIGTERM: exit %v after %s (killed: %v)", p.name, te.err, fmtDur(te.took), te.killed)
			}
		}
		if same { // its identity is locked until it is gone
			waitExit()
			ph.replace(ctx, slot, true, "")
		} else {
			ph.replace(ctx, slot, false, "")
			waitExit()
		}
	}
}

// replace starts a new holder in slot, of the stage its last process served:
// with that process's data dir and identity (same) or a new one.
func (ph *phase) replace(ctx context.Context, slot int, same bool, why string) {
	if ctx.Err() != nil {
		return
	}
	ph.mu.Lock()
	old := ph.slots[slot]
	ph.gens[slot]++
	name := fmt.Sprintf("%s.%d", ph.holderName(slot), ph.gens[slot])
	var boots []string
	for _, i := range ph.rng.Perm(len(ph.slots)) {
		if p := ph.slots[i]; i != slot && p.alive() && !p.isFrozen() && p.addr != "" && len(boots) < 3 {
			boots = append(boots, p.addr)
		}
	}
	ph.mu.Unlock()
	stage := old.currentStage()
	dir, kind := filepath.Join(ph.dir, name), "new identity"
	if same {
		dir, kind = old.dir, "same identity and data dir"
	}
	args := []string{"--role", "server", "--stage", strconv.Itoa(stage)}
	for _, b := range boots {
		args = append(args, "--bootstrap", b)
	}
	p, err := ph.launch(name, slot, stage, dir, args...)
	if err != nil {
		ph.fail("replacement of %s: %v", old.name, err)
		return
	}
	ph.mu.Lock()
	ph.slots[slot] = p
	ph.mu.Unlock()
	if err := p.waitReady(startTimeout); err != nil {
		ph.fail("replacement of %s: %v", old.name, err)
		return
	}
	ph.event("replaced %s by %s (pid %d, stage %d, %s)%s", old.name, name, p.pid, stage, kind, map[bool]string{true: " " + why, false: ""}[why != ""])
}

// stopAll ends every process: the trainer and the holders, SIGTERM first.
func (ph *phase) stopAll() {
	ph.mu.Lock()
	ph.ending = true
	procs := append([]*proc(nil), ph.procs...)
	ph.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		if p.alive() {
			wg.Go(func() {
				took, killed := p.stop(stopGrace)
				p.mu.Lock()
				p.endTook, p.endKilled = took, killed
				p.mu.Unlock()
				if killed {
					ph.logf("%s (pid %d) still running %s after SIGTERM at the end: killed", p.name, p.pid, fmtDur(took))
				}
			})
		}
	}
	wg.Wait()
}

// result gathers what the phase measured.
func (ph *phase) result() phaseResult {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	r := phaseResult{
		name: ph.name, steps: ph.steps, start: ph.start, end: time.Now(), first: ph.firstStep,
		stepsAt: ph.stepsAt, trainer: ph.trainerStatus, procs: ph.procs, events: ph.events, terms: ph.terms,
		failures: ph.failures, holders: ph.holders,
	}
	r.warnings = map[string]int{}
	for _, p := range ph.procs {
		raw, err := os.ReadFile(p.logPath)
		if err != nil {
			continue
		}
		r.moves += bytes.Count(raw, []byte("msg=rebalancing"))
		for _, m := range warnLine.FindAllSubmatch(raw, -1) {
			r.warnings[string(m[1])+" "+string(m[2])]++
		}
	}
	if raw, err := os.ReadFile(filepath.Join(ph.dir, "summary.json")); err == nil {
		var s summary
		if json.Unmarshal(raw, &s) == nil {
			r.summary = &s
		}
	}
	return r
}

// csvLog is samples.csv: every sample of every process.
type csvLog struct {
	mu sync.Mutex
	f  *os.File
}

func newCSV(path string) (*csvLog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(f, "phase,seconds,process,pid,stage,rss_kb,goroutines,fds")
	return &csvLog{f: f}, nil
}

func (c *csvLog) write(phase string, at time.Duration, p *proc) {
	p.mu.Lock()
	s := p.samples[len(p.samples)-1]
	stage := p.stage
	p.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.f, "%s,%.1f,%s,%d,%d,%d,%d,%d\n", phase, at.Seconds(), p.name, p.pid, stage, s.rssKB, s.goroutines, s.fds)
}

func (c *csvLog) close() { c.f.Close() }
