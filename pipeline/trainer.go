package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
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

// Summary is what a training run reports at exit, through the swarm or in one
// process (`swarmnode local`): the file `--summary FILE` writes.
type Summary struct {
	Step         int     `json:"step"`
	Loss         float64 `json:"loss"`
	ValLoss      float64 `json:"val_loss"`
	TokensPerSec float64 `json:"tokens_per_sec"`
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

	completed, lost atomic.Int64

	mu    sync.Mutex
	stats TrainerStats
}

// NewTrainer returns a trainer that sends microbatches of corpus from h to the
// holders of stage 0 that r knows.
func NewTrainer(h host.Host, r Router, corpus *data.Corpus, o TrainerOptions) (*Trainer, error) {
	switch {
	case o.Stages < 1:
		return nil, fmt.Errorf("pipeline: trainer needs the number of stages, got %d", o.Stages)
	case o.Train.Microbatch < 1 || o.Train.Batch < o.Train.Microbatch || o.Train.EvalEvery < 1 || o.Train.EvalBatches < 1:
		return nil, fmt.Errorf("pipeline: invalid train settings %+v", o.Train)
	case o.Pipeline.InFlight < 1 || o.Pipeline.HopTimeout <= 0:
		return nil, fmt.Errorf("pipeline: invalid pipeline limits %+v", o.Pipeline)
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
	t.mu.Unlock()
	// Every failed attempt is followed by another, at another holder or after a pause.
	s.Completed, s.Failed, s.Lost = t.completed.Load(), t.call.failures.Load(), t.lost.Load()
	s.Hedged = t.call.hedges.Load()
	s.Retried = s.Failed + s.Hedged
	return s
}

type job struct {
	req  request
	eval bool
}

type result struct {
	job  *job
	loss float32
	err  error
}

// Run trains Train.Steps steps and evaluates every EvalEvery steps and at the end.
// When ctx ends it stops early and returns the summary so far with a nil error.
func (t *Trainer) Run(ctx context.Context) (Summary, error) {
	o := t.opts
	accum := o.Train.Accumulation()
	B := o.Train.Microbatch
	T := min(o.Model.SeqLen, t.corpus.MaxSeqLen(data.Train))
	total := o.Train.Steps * accum
	rng := data.NewRNG(o.Train.Seed, o.Stream)

	wctx, cancel := context.WithCancel(ctx)
	jobs := make(chan *job)
	results := make(chan result, o.Pipeline.InFlight)
	var wg sync.WaitGroup
	for range o.Pipeline.InFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.worker(wctx, jobs, results)
		}()
	}
	defer func() {
		cancel()
		wg.Wait()
	}()

	var (
		sum                     Summary
		next                    *job
		evalQueue               []*job
		issued, done, step, nid int
		evalLeft                int
		evalSum, stepLoss       float64
		winLoss                 float64
		winSteps, winTokens     int
		winStart                = time.Now()
		recent                  []time.Time // completion times of the last steps
		evalStep                int
		inflight                int
	)
	newJob := func(split data.Split, rng *rand.Rand, T int, eval bool) *job {
		tok, tgt := t.corpus.Batch(split, B, T, rng)
		nid++
		return &job{eval: eval, req: request{id: t.idBase + uint64(nid), stage: 0, eval: eval, b: B, t: T, tokens: tok, targets: tgt}}
	}
	startEval := func() {
		vrng := data.NewRNG(o.Train.Seed, data.ValStream)
		vT := min(o.Model.SeqLen, t.corpus.MaxSeqLen(data.Val))
		for range o.Train.EvalBatches {
			evalQueue = append(evalQueue, newJob(data.Val, vrng, vT, true))
		}
		evalLeft, evalSum, evalStep = o.Train.EvalBatches, 0, step
	}
	for done < total || evalLeft > 0 {
		if next == nil {
			if len(evalQueue) > 0 {
				next, evalQueue = evalQueue[0], evalQueue[1:]
			} else if evalLeft == 0 && issued < total {
				next = newJob(data.Train, rng, T, false)
				issued++
			}
		}
		var send chan<- *job
		if next != nil {
			send = jobs
		}
		select {
		case send <- next:
			next = nil
			inflight++
		case r := <-results:
			inflight--
			if r.err != nil {
				t.lost.Add(1)
				t.report(Failed, 1)
				return sum, r.err
			}
			if r.job.eval {
				evalSum += float64(r.loss)
				if evalLeft--; evalLeft == 0 {
					sum.ValLoss = evalSum / float64(o.Train.EvalBatches)
					el := time.Since(winStart).Seconds()
					rep := EvalReport{Step: evalStep, ValLoss: sum.ValLoss, TokensPerSec: float64(winTokens) / el}
					if winSteps > 0 {
						rep.Loss = winLoss / float64(winSteps)
					}
					sum.TokensPerSec = rep.TokensPerSec
					t.mu.Lock()
					t.stats.ValLoss = sum.ValLoss
					if n := len(t.stats.History); n > 0 && t.stats.History[n-1].Step == evalStep {
						t.stats.History[n-1].ValLoss = sum.ValLoss
					}
					t.mu.Unlock()
					t.log.Info("eval", "step", evalStep, "loss", round4(rep.Loss), "val_loss", round4(rep.ValLoss),
						"tokens_per_sec", int(rep.TokensPerSec))
					if o.OnEval != nil {
						o.OnEval(rep)
					}
					winStart, winTokens, winLoss, winSteps = time.Now(), 0, 0, 0
				}
				continue
			}
			t.completed.Add(1)
			t.report(Completed, 1)
			done++
			stepLoss += float64(r.loss)
			winTokens += B * T
			if done%accum != 0 {
				continue
			}
			step++
			now := time.Now()
			recent = append(recent, now)
			if len(recent) > 11 {
				recent = recent[1:]
			}
			rep := StepReport{Step: step, Loss: stepLoss / float64(accum), Time: now}
			if n := len(recent); n > 1 {
				rep.TokensPerSec = float64((n-1)*o.Train.Batch*T) / recent[n-1].Sub(recent[0]).Seconds()
			} else {
				rep.TokensPerSec = float64(winTokens) / now.Sub(winStart).Seconds()
			}
			stepLoss = 0
			winLoss += rep.Loss
			winSteps++
			sum.Step, sum.Loss = step, rep.Loss
			t.mu.Lock()
			t.stats.Step, t.stats.Loss, t.stats.TokensPerSec = step, rep.Loss, rep.TokensPerSec
			if len(t.stats.History) >= maxHistory {
				t.stats.History = append(t.stats.History[:0], t.stats.History[1:]...)
			}
			t.stats.History = append(t.stats.History, Point{Step: step, Loss: rep.Loss, TokensPerSec: rep.TokensPerSec, Time: now})
			t.mu.Unlock()
			if o.OnStep != nil {
				o.OnStep(rep)
			}
			if step%o.Train.EvalEvery == 0 || step == o.Train.Steps {
				startEval()
			}
		case <-ctx.Done():
			t.lost.Add(int64(inflight))
			t.report(Failed, inflight)
			t.log.Info("stopping early", "step", step)
			return sum, nil
		}
	}
	return sum, nil
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

func round4(x float64) float64 { return float64(int64(x*1e4+0.5)) / 1e4 }
