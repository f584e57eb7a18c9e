package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"

	"swarmnode/config"
	"swarmnode/data"
	"swarmnode/model"
	"swarmnode/wire"
)

// TrainerOptions configure a trainer.
type TrainerOptions struct {
	// Run is the run id; it names the stage protocol.
	Run string
	// Model is the model shape (sequence length and vocabulary bound the batches).
	Model model.Config
	// Stages is the number of pipeline stages.
	Stages int
	// Train holds the batch sizes, steps, seed and evaluation settings.
	Train config.Train
	// Pipeline holds in_flight, timeouts, retries and the frame cap.
	Pipeline config.Pipeline
	// Stream picks this trainer's batch stream (data.NewRNG): trainers of one run
	// use different streams; stream 0 draws the batches `swarmnode local` draws.
	Stream uint64
	// StartStep and DataPosition resume a stopped run: the steps it had
	// committed (the run trains Train.Steps − StartStep more) and the training
	// microbatches it had drawn from Stream (skipped).
	StartStep    int
	DataPosition int64
	// OnStep, if set, is called after every step; OnEval after every evaluation.
	// They run on the trainer's goroutine and must not block for long.
	OnStep func(StepReport)
	OnEval func(EvalReport)
	// OnMicrobatch, if set, is told of every training microbatch completed, every
	// failed attempt (Retried: the microbatch goes on elsewhere or starts over) and
	// every microbatch given up on when stopped (Failed). It runs on several
	// goroutines and must be cheap.
	OnMicrobatch func(Outcome)
	// Logger gets one line per evaluation; nil discards.
	Logger *slog.Logger
	// Traffic, if set, counts the frames the trainer writes: the node's counter,
	// shown on its status page.
	Traffic *wire.Counter
}

// StepReport describes one completed step: Train.Batch sequences trained.
type StepReport struct {
	Step int
	// Loss is the mean training loss of the step's microbatches.
	Loss float64
	// TokensPerSec is the training speed over the last few steps.
	TokensPerSec float64
	Time         time.Time
}

// EvalReport describes one evaluation through the swarm.
type EvalReport struct {
	Step    int
	ValLoss float64
	// Loss is the mean training loss since the previous evaluation.
	Loss float64
	// TokensPerSec is the training speed since the previous evaluation.
	TokensPerSec float64
}

// Log writes the evaluation's line, the one `swarmnode run` and `swarmnode
// local` both print: losses to four decimals, whole tokens per second.
func (r EvalReport) Log(log *slog.Logger) {
	log.Info("eval", "step", r.Step, "loss", round4(r.Loss), "val_loss", round4(r.ValLoss), "tokens_per_sec", int(r.TokensPerSec))
}

// Summary is what a training run reports at exit, through the swarm or in one
// process (`swarmnode local`): the file `--summary FILE` writes.
type Summary struct {
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	ValLoss      float64 `json:"val_loss"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	// Stepped counts, per stage, the sequences the stage stepped on (through
	// the swarm; absent from `swarmnode local`): Step × train.batch when every
	// microbatch counted exactly once.
	Stepped []int64 `json:"stepped,omitempty"`
}

// WriteFile writes the summary to path as indented JSON.
func (s Summary) WriteFile(path string) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

// Point is one step of the loss history.
type Point struct {
	Step         int       `json:"step"`
	Loss         float64   `json:"loss"`
	ValLoss      float64   `json:"val_loss,omitempty"`
	TokensPerSec float64   `json:"tokens_per_sec"`
	Time         time.Time `json:"time"`
}

// TrainerStats are a trainer's progress and microbatch counters.
type TrainerStats struct {
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	ValLoss      float64 `json:"val_loss"`
	TokensPerSec float64 `json:"tokens_per_sec"`
	// Completed counts microbatches trained (evaluation excluded).
	Completed int64 `json:"completed"`
	// Retried counts microbatch attempts repeated after a failure or a hedge.
	Retried int64 `json:"retried"`
	// Hedged counts attempts at stage 0 that took far longer than usual and were
	// moved to another holder after the slow one gave up.
	Hedged int64 `json:"hedged"`
	// Failed counts failed attempts at stage 0 (each is retried).
	Failed int64 `json:"failed"`
	// Lost counts microbatches given up on: zero unless the run was stopped.
	Lost int64 `json:"lost"`
	// Stepped counts, per stage, the sequences the stage's holders stepped on
	// at this trainer's commits: Train.Batch per step when every microbatch
	// counted exactly once.
	Stepped []int64 `json:"stepped"`
	// Replayed counts microbatches sent again because a stage had lost their
	// gradients (a holder gone with them); TakenBack counts extra copies that
	// holders took back (a microbatch counted twice at a stage).
	Replayed  int64 `json:"replayed"`
	TakenBack int64 `json:"taken_back"`
	// InFlight is how many microbatches the trainer keeps in the pipeline:
	// pipeline.in_flight, or the limit it chose last when that is 0 (auto).
	InFlight int `json:"in_flight"`
	// History holds the most recent steps, oldest first.
	History []Point `json:"history"`
}

// maxHistory bounds the history kept for the status page.
const maxHistory = 4096

// Trainer feeds microbatches into the pipeline and follows training progress.
type Trainer struct {
	opts   TrainerOptions
	corpus *data.Corpus
	call   *caller
	log    *slog.Logger
	idBase uint64

	completed, lost     atomic.Int64
	replayed, takenBack atomic.Int64

	mu    sync.Mutex
	stats TrainerStats
	// autoLimit is the in-flight limit last chosen in auto mode, at autoAt
	// (inflight.go; autoAt is Run's loop's alone).
	autoLimit atomic.Int64
	autoAt    time.Time
}

// NewTrainer returns a trainer that sends microbatches of corpus from h to the
// holders of stage 0 that r knows.
func NewTrainer(h host.Host, r Router, corpus *data.Corpus, o TrainerOptions) (*Trainer, error) {
	switch {
	case o.Stages < 1:
		return nil, fmt.Errorf("pipeline: trainer needs the number of stages, got %d", o.Stages)
	case o.Train.Microbatch < 1 || o.Train.Batch < o.Train.Microbatch || o.Train.EvalEvery < 1 || o.Train.EvalBatches < 1:
		return nil, fmt.Errorf("pipeline: invalid train settings %+v", o.Train)
	case o.Pipeline.InFlight < 0 || o.Pipeline.HopTimeout <= 0:
		return nil, fmt.Errorf("pipeline: invalid pipeline limits %+v", o.Pipeline)
	case o.StartStep < 0 || o.StartStep > o.Train.Steps || o.DataPosition < 0:
		return nil, fmt.Errorf("pipeline: resuming at step %d of %d, data position %d", o.StartStep, o.Train.Steps, o.DataPosition)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bo := newBackoff(100*time.Millisecond, 30*time.Second)
	t := &Trainer{
		opts: o, corpus: corpus, log: log, idBase: rand.Uint64() &^ 0xffffffff,
		call: &caller{
			host: h, proto: Protocol(o.Run), router: r, bo: bo, picker: newPicker(r, bo, h.ID(), rand.Uint64(), log),
			stages: o.Stages, maxFrame: o.Pipeline.MaxFrameBytes, hopTimeout: o.Pipeline.HopTimeout,
			retries: o.Pipeline.Retries, traffic: o.Traffic, log: log,
		},
	}
	if o.OnMicrobatch != nil {
		t.call.onRetry = func() { o.OnMicrobatch(Retried) }
	}
	return t, nil
}

func (t *Trainer) report(o Outcome, n int) {
	if t.opts.OnMicrobatch != nil {
		for range n {
			t.opts.OnMicrobatch(o)
		}
	}
}

// Stats returns the trainer's progress and counters.
func (t *Trainer) Stats() TrainerStats {
	t.mu.Lock()
	s := t.stats
	s.History = append([]Point(nil), t.stats.History...)
	s.Stepped = append([]int64(nil), t.stats.Stepped...)
	t.mu.Unlock()
	// Every failed attempt is followed by another, at another holder or after a pause.
	s.Completed, s.Failed, s.Lost = t.completed.Load(), t.call.failures.Load(), t.lost.Load()
	s.Hedged = t.call.hedges.Load()
	s.Retried = s.Failed + s.Hedged
	s.Replayed, s.TakenBack = t.replayed.Load(), t.takenBack.Load()
	s.InFlight = t.opts.Pipeline.InFlight
	if s.InFlight == 0 {
		s.InFlight = int(t.autoLimit.Load())
	}
	return s
}

// tag is the trainer's part of its microbatch ids (their high 32 bits).
func (t *Trainer) tag() uint32 { return uint32(t.idBase >> 32) }

type job struct {
	req  request
	eval bool
	done bool // its answer is back
}

type result struct {
	job  *job
	loss float32
	err  error
}

// Run trains Train.Steps steps and evaluates every EvalEvery steps and at the end.
// When ctx ends it stops early and returns the summary so far with a nil error.
//
// A step's commit runs beside the loop: while its round trips to the holders
// are on the wire, the workers go on with the microbatches that
// pipeline.staleness lets go ahead, so that over slow links the commit does
// not stall the pipeline.
func (t *Trainer) Run(ctx context.Context) (Summary, error) {
	ctx, cancel := context.WithCancel(ctx)
	r := t.newRun(ctx)
	defer r.waitCommit(cancel)
	jobs := make(chan *job)
	results := make(chan result, t.inFlightWorkers())
	defer t.startWorkers(ctx, jobs, results)()
	for r.running() {
		var next *job
		if r.inflight < t.inFlightLimit(r.B*r.T) {
			next = r.pending()
		}
		var send chan<- *job // nil, and so never ready, when no job waits
		if next != nil {
			send = jobs
		}
		var err error
		select {
		case send <- next:
			r.next = nil
			r.inflight++
		case res := <-results:
			r.inflight--
			if res.err != nil {
				t.lost.Add(1)
				t.report(Failed, 1)
				return r.sum, res.err
			}
			r.collect(res)
		case c := <-r.commits:
			err = r.committed(c)
		case <-ctx.Done():
			t.lost.Add(int64(r.inflight))
			t.report(Failed, r.inflight)
			r.finishCommit()
			t.log.Info("stopping early", "step", r.step)
			return r.sum, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				r.finishCommit()
				t.log.Info("stopping early", "step", r.step)
				return r.sum, nil
			}
			return r.sum, err
		}
	}
	return r.sum, nil
}

// startWorkers starts the trainer's workers (Pipeline.InFlight, or as many as
// auto mode may use) that take jobs and put their results; the function it
// returns stops them and waits for them.
func (t *Trainer) startWorkers(ctx context.Context, jobs <-chan *job, results chan<- result) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range t.inFlightWorkers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.worker(ctx, jobs, results)
		}()
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// runState is the state of one Trainer.Run: the training microbatches issued and
// done, the step they accumulate into, the evaluation in progress and the
// window of steps since the previous evaluation.
type runState struct {
	ctx   context.Context
	tr    *Trainer
	o     TrainerOptions
	accum int // microbatches per step
	B, T  int // microbatch shape
	total int // training microbatches of the run
	rng   *rand.Rand
	sum   Summary

	next         *job   // waiting for a worker
	stepJobs     []*job // the training microbatches of the step in progress
	owed         []*job // microbatches a stage lost in the last commit: they go with the next
	evalQueue    []*job // evaluation microbatches not yet handed out
	nid          int    // microbatch ids handed out
	issued, done int    // training microbatches
	inflight     int    // microbatches handed to workers and not back
	step         int
	stepLoss     float64     // sum of the step's microbatch losses so far
	recent       []time.Time // completion times of the last steps, for the speed

	evalLeft int // evaluation microbatches not back
	evalSum  float64
	evalStep int

	winStart            time.Time
	winLoss             float64 // sum of the window's step losses
	winSteps, winTokens int

	committing bool               // a step's commit is under way
	commits    chan commitOutcome // where it lands
}

// commitOutcome is what a step's commit, run beside the trainer's loop, gives back.
type commitOutcome struct {
	owed []*job
	err  error
}

func (t *Trainer) newRun(ctx context.Context) *runState {
	o := t.opts
	r := &runState{
		ctx: ctx, tr: t, o: o, accum: o.Train.Accumulation(),
		B: o.Train.Microbatch, T: min(o.Model.SeqLen, t.corpus.MaxSeqLen(data.Train)),
		total: o.Train.Steps * o.Train.Accumulation(), rng: data.NewRNG(o.Train.Seed, o.Stream),
		winStart: time.Now(), commits: make(chan commitOutcome, 1),
	}
	r.step, r.sum.Step = o.StartStep, o.StartStep
	r.issued, r.done = o.StartStep*r.accum, o.StartStep*r.accum
	for range o.DataPosition {
		t.corpus.Batch(data.Train, r.B, r.T, r.rng)
	}
	return r
}

// running reports whether training microbatches, a step to commit or an
// evaluation are left.
func (r *runState) running() bool { return r.step < r.o.Train.Steps || r.evalLeft > 0 }

// pending returns the job waiting for a worker, taking the next one when none
// waits: evaluation microbatches first, then training microbatches of steps no
// more than pipeline.staleness after the one in progress (the holders step
// together once a step's microbatches are all back: a microbatch of a later
// step that a holder has accumulated by then goes into that step, a step
// early). Training goes on during an evaluation: the evaluation runs on the
// parameters of the step just committed, and the next commit waits for it.
// Nil when there is nothing to hand out now.
func (r *runState) pending() *job {
	if r.next == nil {
		if len(r.evalQueue) > 0 {
			r.next, r.evalQueue = r.evalQueue[0], r.evalQueue[1:]
		} else if r.issued < r.total && r.issued < (r.step+1+r.o.Pipeline.Staleness)*r.accum {
			r.next = r.newJob(data.Train, r.rng, r.T, false)
			r.stepJobs = append(r.stepJobs, r.next)
			r.issued++
		}
	}
	return r.next
}

func (r *runState) newJob(split data.Split, rng *rand.Rand, T int, eval bool) *job {
	tok, tgt := r.tr.corpus.Batch(split, r.B, T, rng)
	r.nid++
	id := r.tr.idBase + uint64(r.nid)
	return &job{eval: eval, req: request{id: id, stage: 0, eval: eval, b: r.B, t: T, tokens: tok, targets: tgt}}
}

// collect takes one microbatch's loss; the last of a step starts its commit.
func (r *runState) collect(res result) {
	if res.job.eval {
		r.evalSum += float64(res.loss)
		if r.evalLeft--; r.evalLeft == 0 {
			r.evaluated()
		}
		r.commitReady()
		return
	}
	r.tr.completed.Add(1)
	r.tr.report(Completed, 1)
	r.done++
	res.job.done = true
	r.stepLoss += float64(res.loss)
	r.winTokens += r.B * r.T
	r.commitReady()
}

// commitReady starts the commit of the oldest step once its answers are all
// back (with pipeline.staleness above 0 a later step may finish first), one
// commit at a time and none while an evaluation runs. The commit runs in its
// own goroutine and lands on r.commits.
func (r *runState) commitReady() {
	if r.committing || r.evalLeft > 0 || len(r.stepJobs) < r.accum || slices.ContainsFunc(r.stepJobs[:r.accum], func(j *job) bool { return !j.done }) {
		return
	}
	jobs := append(slices.Clone(r.stepJobs[:r.accum]), r.owed...)
	later := slices.Clone(r.stepJobs[r.accum:])
	step := r.step + 1
	r.committing = true
	go func() {
		owed, err := r.tr.commitStep(r.ctx, step, jobs, later)
		r.commits <- commitOutcome{owed: owed, err: err}
	}()
}

// committed takes a landed commit: the step is done, and the next one may be
// ready to commit already.
func (r *runState) committed(c commitOutcome) error {
	r.committing = false
	if c.err != nil {
		return c.err
	}
	r.owed = c.owed
	if len(r.owed) > 0 && r.step+1 == r.o.Train.Steps {
		r.tr.log.Warn("the last step lost microbatches with a holder that went down during its commit", "microbatches", len(r.owed))
	}
	r.stepJobs = append(r.stepJobs[:0], r.stepJobs[r.accum:]...)
	r.tr.mu.Lock()
	r.sum.Stepped = append(r.sum.Stepped[:0], r.tr.stats.Stepped...)
	r.tr.mu.Unlock()
	r.stepDone()
	r.commitReady()
	return nil
}

// finishCommit waits, when the run stops, for a commit under way. Its
// holders may have stepped already, so one that lands counts: the step is
// reported and summed, and a restarted trainer goes on after it rather than
// doing it again.
func (r *runState) finishCommit() {
	for r.committing {
		if r.committed(<-r.commits) != nil {
			return
		}
	}
}

// waitCommit ends the run's context and waits for a commit still under way,
// so that none outlives Run.
func (r *runState) waitCommit(cancel context.CancelFunc) {
	cancel()
	if r.committing {
		<-r.commits
	}
}

// stepDone reports the step whose microbatches are all back and committed, and
// starts an evaluation every EvalEvery steps and after the last.
func (r *runState) stepDone() {
	r.step++
	now := time.Now()
	r.recent = append(r.recent, now)
	if len(r.recent) > 11 {
		r.recent = r.recent[1:]
	}
	rep := StepReport{Step: r.step, Loss: r.stepLoss / float64(r.accum), Time: now}
	if n := len(r.recent); n > 1 {
		rep.TokensPerSec = float64((n-1)*r.o.Train.Batch*r.T) / r.recent[n-1].Sub(r.recent[0]).Seconds()
	} else {
		rep.TokensPerSec = float64(r.winTokens) / now.Sub(r.winStart).Seconds()
	}
	r.stepLoss = 0
	r.winLoss += rep.Loss
	r.winSteps++
	r.sum.Step, r.sum.Loss = r.step, rep.Loss
	r.tr.recordStep(rep)
	if r.o.OnStep != nil {
		r.o.OnStep(rep)
	}
	if r.step%r.o.Train.EvalEvery == 0 || r.step == r.o.Train.Steps {
		r.startEval()
	}
}

// startEval queues the evaluation microbatches: the same validation batches at
// every evaluation.
func (r *runState) startEval() {
	vrng := data.NewRNG(r.o.Train.Seed, data.ValStream)
	vT := min(r.o.Model.SeqLen, r.tr.corpus.MaxSeqLen(data.Val))
	for range r.o.Train.EvalBatches {
		r.evalQueue = append(r.evalQueue, r.newJob(data.Val, vrng, vT, true))
	}
	r.evalLeft, r.evalSum, r.evalStep = r.o.Train.EvalBatches, 0, r.step
}

// evaluated reports the evaluation whose microbatches are all back and starts
// a new window.
func (r *runState) evaluated() {
	r.sum.ValLoss = r.evalSum / float64(r.o.Train.EvalBatches)
	rep := EvalReport{Step: r.evalStep, ValLoss: r.sum.ValLoss, TokensPerSec: float64(r.winTokens) / time.Since(r.winStart).Seconds()}
	if r.winSteps > 0 {
		rep.Loss = r.winLoss / float64(r.winSteps)
	}
	r.sum.TokensPerSec = rep.TokensPerSec
	r.tr.recordEval(rep)
	rep.Log(r.tr.log)
	if r.o.OnEval != nil {
		r.o.OnEval(rep)
	}
	r.winStart, r.winTokens, r.winLoss, r.winSteps = time.Now(), 0, 0, 0
}

// recordStep adds a step to the stats and the history.
func (t *Trainer) recordStep(rep StepReport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stats.Step, t.stats.Loss, t.stats.TokensPerSec = rep.Step, rep.Loss, rep.TokensPerSec
	if len(t.stats.History) >= maxHistory {
		t.stats.History = append(t.stats.History[:0], t.stats.History[1:]...)
	}
	t.stats.History = append(t.stats.History, Point{Step: rep.Step, Loss: rep.Loss, TokensPerSec: rep.TokensPerSec, Time: rep.Time})
}

// recordEval adds an evaluation to the stats and to its step in the history.
func (t *Trainer) recordEval(rep EvalReport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stats.ValLoss = rep.ValLoss
	if n := len(t.stats.History); n > 0 && t.stats.History[n-1].Step == rep.Step {
		t.stats.History[n-1].ValLoss = rep.ValLoss
	}
}

// worker runs microbatches until ctx ends; it restarts every failed microbatch,
// so none is lost.
func (t *Trainer) worker(ctx context.Context, jobs <-chan *job, results chan<- result) {
	for {
		var j *job
		select {
		case <-ctx.Done():
			return
		case j = <-jobs:
		}
		loss, err := t.runMicro(ctx, j)
		select {
		case results <- result{job: j, loss: loss, err: err}:
		case <-ctx.Done():
			return
		}
	}
}

func (t *Trainer) runMicro(ctx context.Context, j *job) (float32, error) {
	for attempt := 0; ; attempt++ {
		ans, err := t.call.send(ctx, &j.req, nil)
		if err == nil {
			return ans.loss, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if errors.Is(err, errLocal) {
			return 0, err
		}
		t.log.Debug("microbatch failed, restarting", "id", j.req.id, "attempt", attempt, "err", err)
		pause := time.NewTimer(min(time.Second, time.Duration(attempt+1)*50*time.Millisecond))
		select {
		case <-ctx.Done():
			pause.Stop()
			return 0, ctx.Err()
		case <-pause.C:
		}
	}
}

// round4 rounds x to four decimals, for log lines.
func round4(x float64) float64 { return float64(int64(x*1e4+0.5)) / 1e4 }
