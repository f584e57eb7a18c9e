package pipeline

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"swarmnode/model"
	"swarmnode/stages"
)

// StepInfo describes one optimizer step of a Worker.
type StepInfo struct {
	// Version is the stage's parameter version after the step.
	Version uint64
	// Samples is the number of sequences whose gradients this holder
	// contributed to the step; Micro the number of microbatches.
	Samples, Micro int
	// Averaged reports whether the step applied the mean gradient of the
	// stage's holders (an all-reduce that succeeded) rather than this holder's
	// own.
	Averaged bool
	// GradNorm is the gradient norm before clipping.
	GradNorm float32
	// Group lists the members whose gradients went into the step's mean (this
	// one included), Complete that every part of theirs arrived.
	Group    []peer.ID
	Complete bool
	// Evicted lists the holders this one evicted from its stage's all-reduce
	// (liars): the trainer stops routing to a holder most of its stage evicted.
	Evicted []peer.ID
	// OutOfStep reports that the stage was not at the version the round's
	// other members were at before the step (it missed a commit, or another
	// trainer's commit came in between): its parameters should be brought
	// back from theirs. Behind reports the first case for certain: the stage
	// was at an older version than theirs.
	OutOfStep, Behind bool
}

// Round is one synchronized step of a stage's holders, as Reduce sees it.
type Round struct {
	// ID names the all-reduce round; every member is given the same.
	ID uint64
	// Members are the holders of the stage that step together, this one among
	// them.
	Members []peer.ID
	// Micro is the number of microbatches this holder accumulated: its weight.
	Micro int
	// Weights, when the trainer attests them, are the microbatches it counts
	// at each member (Weights[i] for Members[i]), this holder's Micro among
	// them; the all-reduce weighs the members by them rather than by claims.
	Weights []float64
	// Next is the version the members step to (the version most of them were
	// at, plus one); 0 when unknown.
	Next uint64
	// Steps is the learning-rate schedule's horizon the trainer runs to (its
	// train.steps); 0 keeps WorkerOptions.Optim.Steps.
	Steps int
}

// Reduced is what the all-reduce of a commit did.
type Reduced struct {
	// Averaged reports that the gradients hold the group's mean.
	Averaged bool
	// Group lists the members whose gradients went into the mean, this one
	// included; Complete reports that every part of every one of them arrived.
	Group    []peer.ID
	Complete bool
	// Evicted lists the members this holder has evicted from the stage's
	// all-reduce (at most maxCommitMembers).
	Evicted []peer.ID
}

// WorkerOptions set a Worker's optimizer schedule.
type WorkerOptions struct {
	// Optim is the optimizer and learning-rate schedule.
	Optim model.Optim
	// Reduce, if set, all-reduces the accumulated gradients with the other
	// members of a round before the worker steps: afterwards the gradients
	// hold the members' mean gradient per microbatch, weighted by Round.Micro,
	// and Reduce reports Averaged. When no other member took part the worker
	// steps on its own gradients. It runs with backward passes held off.
	Reduce func(ctx context.Context, r Round) (Reduced, error)
	// Logger receives failures of Reduce; nil discards them.
	Logger *slog.Logger
	// CatchUp makes a worker that finds itself behind at a commit record the
	// steps it takes from then on, and its servers refuse passes as busy,
	// until Worker.CatchUp brings a reloaded state up to date (or
	// AbandonCatchUp gives up). Set it only where something calls them.
	CatchUp bool
}

// Worker computes one stage for the servers that front it: forward and backward
// passes, one at a time (the math is parallel inside), and an optimizer step each
// time a trainer commits a step (Commit). Several servers may share a Worker;
// normally each has its own.
//
// The worker keeps a ledger of the microbatches whose gradients it accumulated
// since its last step, with what it needs to compute each again, so that a
// commit can take back a copy that was counted twice (an answer lost after
// the backward pass, and the microbatch retried elsewhere): every microbatch
// counts exactly once in the step.
//
// Which parameters a forward pass runs on is the trainers' business: a trainer
// sends a step's microbatches only once the step pipeline.staleness before it
// is committed.
type Worker struct {
	st   *stages.Stage
	opts WorkerOptions
	log  *slog.Logger

	compute sync.Mutex
	// gate keeps a step from landing between a backward pass and its ledger
	// entry: backward passes hold it shared, a commit exclusively.
	gate   sync.RWMutex
	ledger []entry    // accumulated since the last step (under gate)
	lmu    sync.Mutex // guards ledger against concurrent backward passes
	// ledgerBytes is what the ledger's tensors hold (under lmu), bounded by
	// maxLedgerBytes (discardIfStale).
	ledgerBytes int64
	// discarded counts the microbatches dropped uncommitted.
	discarded atomic.Int64
	done      map[uint64]struct{} // ids stepped recently
	doneQ     []uint64            // the same ids, oldest first, to bound done
	// recorded holds the steps taken while the worker catches up (under
	// gate; nil: not catching up). See catchup.go.
	recorded []recordedStep
	catching atomic.Bool // recorded != nil, readable without the gate
	// refreshed counts the forward passes run again because a step landed
	// between a microbatch's forward and backward pass.
	refreshed atomic.Int64

	mu     sync.Mutex
	onStep func(StepInfo)
}

// entry is one microbatch whose gradient the worker accumulated: enough to
// compute that gradient again at the same parameters and take it back out.
type entry struct {
	id      uint64
	in      model.Input // shape, tokens (first stage) and targets (last stage)
	x, dout stages.Tensor
	wire    stages.Wire // the format the passes asked for
}

// maxLedgerBytes and maxLedgerEntries bound the work a worker holds
// uncommitted. A trainer commits every step, so a worker past them is one no
// trainer commits any more (one the trainer left out of its view while others
// still route to it): its ledger would grow without end. It drops that work
// instead, gradients included; the trainers count it lost and send it again.
var (
	maxLedgerBytes   int64 = 2 << 30
	maxLedgerEntries       = 4096
)

// size is the bytes e's tensors hold.
func (e entry) size() int64 {
	return int64(4*(len(e.x.F)+len(e.dout.F)) + len(e.x.Int8) + len(e.dout.Int8))
}

// discardIfStale drops the uncommitted work when the ledger is past its bounds.
func (w *Worker) discardIfStale() {
	w.lmu.Lock()
	over := len(w.ledger) >= maxLedgerEntries || w.ledgerBytes >= maxLedgerBytes
	w.lmu.Unlock()
	if !over {
		return
	}
	w.gate.Lock() // no backward pass or step meanwhile
	defer w.gate.Unlock()
	w.compute.Lock()
	defer w.compute.Unlock()
	w.lmu.Lock()
	defer w.lmu.Unlock()
	if len(w.ledger) < maxLedgerEntries && w.ledgerBytes < maxLedgerBytes {
		return // a commit came first
	}
	w.log.Warn("no commit for too long: dropping the uncommitted microbatches", "stage", w.st.Index(),
		"microbatches", len(w.ledger), "bytes", w.ledgerBytes)
	w.discarded.Add(int64(len(w.ledger)))
	w.st.ZeroGrad()
	w.ledger, w.ledgerBytes = nil, 0
}

// keepDone is how many stepped microbatch ids a worker remembers, so that a
// trainer asking after a microbatch another trainer's commit already stepped
// hears that it counted.
const keepDone = 1 << 14

// NewWorker wraps stage st.
func NewWorker(st *stages.Stage, o WorkerOptions) *Worker {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Worker{st: st, opts: o, log: log, done: make(map[uint64]struct{})}
}

// Stage returns the stage the worker computes.
func (w *Worker) Stage() *stages.Stage { return w.st }

// OnStep sets a function called after every optimizer step (for logging, status
// and triggering averaging); it must not block for long.
func (w *Worker) OnStep(fn func(StepInfo)) {
	w.mu.Lock()
	w.onStep = fn
	w.mu.Unlock()
}

// Pending returns the number of sequences accumulated since the last step.
func (w *Worker) Pending() int {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	n := 0
	for _, e := range w.ledger {
		n += e.in.B
	}
	return n
}

// forward runs the stage forward on in with the input activations x, asking for
// the output in out (see stages.Stage.ForwardTensor), and times it.
func (w *Worker) forward(in model.Input, x stages.Tensor, out stages.Wire) (*stages.Pass, time.Duration, error) {
	w.compute.Lock()
	defer w.compute.Unlock()
	start := time.Now()
	p, err := w.st.ForwardTensor(in, x, out)
	return p, time.Since(start), err
}

// current returns p, or, when a step landed since p's forward pass (with
// pipeline.staleness above 0 a microbatch's forward and backward may straddle a
// commit), a fresh forward pass of e at the parameters the backward will use:
// differentiating the old activations with the new weights mixes two models
// and, over slow links where most passes straddle a commit, made the loss jump.
// The caller holds the gate shared and the compute lock.
func (w *Worker) current(p *stages.Pass, e entry, out stages.Wire) (*stages.Pass, error) {
	if p.Version == w.st.Version() {
		return p, nil
	}
	p.Release()
	w.refreshed.Add(1)
	return w.st.ForwardTensor(e.in, e.x, out)
}

// backward runs the backward pass of p with the gradient of its output, asking
// for the input gradient in dx (see stages.Stage.BackwardTensor), times it and
// enters e, the microbatch it belongs to, in the ledger.
func (w *Worker) backward(p *stages.Pass, dout stages.Tensor, dx stages.Wire, e entry) (stages.Tensor, time.Duration, error) {
	w.discardIfStale()
	w.gate.RLock()
	defer w.gate.RUnlock()
	w.compute.Lock()
	start := time.Now()
	var grad stages.Tensor
	p, err := w.current(p, e, dx)
	if err == nil {
		grad, err = w.st.BackwardTensor(p, dout, dx)
	}
	d := time.Since(start)
	w.compute.Unlock()
	if err == nil {
		e.dout, e.wire = dout, dx
		w.lmu.Lock()
		w.ledger = append(w.ledger, e)
		w.ledgerBytes += e.size()
		w.lmu.Unlock()
	}
	return grad, d, err
}
