package pipeline

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"swarmnode/model"
	"swarmnode/stages"
)

// StepInfo describes one optimizer step of a Worker.
type StepInfo struct {
	// Version is the stage's parameter version after the step.
	Version uint64
	// Samples is the number of sequences whose gradients the step applied.
	Samples int
	// GradNorm is the gradient norm before clipping.
	GradNorm float32
}

// WorkerOptions set a Worker's optimizer schedule.
type WorkerOptions struct {
	// Optim is the optimizer and learning-rate schedule.
	Optim model.Optim
	// StepSamples is the number of sequences per optimizer step (train.batch).
	StepSamples int
	// Microbatch is the number of sequences per microbatch (train.microbatch); a
	// step averages the gradients over StepSamples/Microbatch microbatches.
	Microbatch int
	// Staleness is pipeline.staleness: how many steps ahead forward passes may run.
	Staleness int
	// Replicas, if set, returns how many peers hold this stage (this one
	// included). Each then steps after its share, StepSamples/Replicas sequences
	// (at least one microbatch), so that with averaging keeping the replicas
	// together the stage as a whole steps once per StepSamples sequences, as in
	// `swarmnode local`, instead of once per StepSamples sequences per replica.
	// Nil: every replica steps after StepSamples of its own sequences.
	Replicas func() int
}

// Worker computes one stage for the servers that front it: forward and backward
// passes, one at a time (the math is parallel inside), and an optimizer step each
// time the gradients of StepSamples sequences have accumulated. Several servers
// may share a Worker; normally each has its own.
//
// Training forward passes are admitted against a quota of (Staleness+1) steps'
// worth of sequences not yet stepped; a forward beyond it waits for the next step.
// With Staleness 0 every step's gradients come from forward and backward passes on
// the same parameter version.
type Worker struct {
	st   *stages.Stage
	opts WorkerOptions

	compute sync.Mutex
	// gate keeps a step from landing between a backward pass and the count of its
	// samples: backward passes hold it shared, a step exclusively.
	gate    sync.RWMutex
	samples atomic.Int64

	qmu      sync.Mutex
	admitted int           // training sequences forwarded and not yet stepped
	stepped  chan struct{} // closed and replaced when admitted shrinks

	mu     sync.Mutex
	onStep func(StepInfo)
}

// NewWorker wraps stage st.
func NewWorker(st *stages.Stage, o WorkerOptions) *Worker {
	o.StepSamples, o.Microbatch, o.Staleness = max(1, o.StepSamples), max(1, o.Microbatch), max(0, o.Staleness)
	return &Worker{st: st, opts: o, stepped: make(chan struct{})}
}

// stepSamples is the number of sequences after which this replica steps.
func (w *Worker) stepSamples() int {
	n := w.opts.StepSamples
	if w.opts.Replicas != nil {
		if r := w.opts.Replicas(); r > 1 {
			n = max(w.opts.Microbatch, n/r)
		}
	}
	return n
}

// admit waits until a training forward of b sequences fits the quota.
func (w *Worker) admit(ctx context.Context, b int) error {
	quota := (w.opts.Staleness + 1) * w.stepSamples()
	for {
		w.qmu.Lock()
		if w.admitted == 0 || w.admitted+b <= quota {
			w.admitted += b
			w.qmu.Unlock()
			return nil
		}
		ch := w.stepped
		w.qmu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// unadmit returns b sequences to the quota (a pass dropped, or stepped).
func (w *Worker) unadmit(b int) {
	w.qmu.Lock()
	w.admitted = max(0, w.admitted-b)
	close(w.stepped)
	w.stepped = make(chan struct{})
	w.qmu.Unlock()
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
func (w *Worker) Pending() int { return int(w.samples.Load()) }

// forward runs the stage forward on in with the input activations x, asking for
// the output in out (see stages.Stage.ForwardTensor), and times it.
func (w *Worker) forward(in model.Input, x stages.Tensor, out stages.Wire) (*stages.Pass, time.Duration, error) {
	w.compute.Lock()
	defer w.compute.Unlock()
	start := time.Now()
	p, err := w.st.ForwardTensor(in, x, out)
	return p, time.Since(start), err
}

// backward runs the backward pass of p with the gradient of its output, asking
// for the input gradient in dx (see stages.Stage.BackwardTensor), times it and
// counts its sequences; the step it may complete runs before backward returns.
func (w *Worker) backward(p *stages.Pass, dout stages.Tensor, dx stages.Wire) (stages.Tensor, time.Duration, error) {
	b := p.B
	w.gate.RLock()
	w.compute.Lock()
	start := time.Now()
	grad, err := w.st.BackwardTensor(p, dout, dx)
	d := time.Since(start)
	w.compute.Unlock()
	n := int64(0)
	if err == nil {
		n = w.samples.Add(int64(b))
	}
	w.gate.RUnlock()
	if n >= int64(w.stepSamples()) {
		w.step()
	}
	return grad, d, err
}

func (w *Worker) step() {
	w.gate.Lock()
	n := int(w.samples.Load())
	if n < w.stepSamples() {
		w.gate.Unlock()
		return // another backward got here first
	}
	micro := max(1, (n+w.opts.Microbatch/2)/w.opts.Microbatch)
	norm := w.st.Step(w.opts.Optim, micro)
	w.samples.Store(0)
	w.gate.Unlock()
	w.unadmit(n)
	w.mu.Lock()
	fn := w.onStep
	w.mu.Unlock()
	if fn != nil {
		fn(StepInfo{Version: w.st.Version(), Samples: n, GradNorm: norm})
	}
}
