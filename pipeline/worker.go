package pipeline

import (
	"sync"
	"sync/atomic"
	"time"

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

// Worker computes one stage for the servers that front it: forward and backward
// passes, one at a time (the math is parallel inside), and an optimizer step each
// time the gradients of StepSamples sequences have accumulated. Several servers
// may share a Worker; normally each has its own.
type Worker struct {
	st          *stages.Stage
	opt         stages.OptimConfig
	stepSamples int
	microbatch  int

	compute sync.Mutex
	// gate keeps a step from landing between a backward pass and the count of its
	// samples: backward passes hold it shared, a step exclusively.
	gate    sync.RWMutex
	samples atomic.Int64

	mu     sync.Mutex
	onStep func(StepInfo)
}

// NewWorker wraps stage st. It steps the optimizer with opt after every
// stepSamples sequences (train.batch), averaging over the microbatches of
// microbatch sequences (train.microbatch) that those make up.
func NewWorker(st *stages.Stage, opt stages.OptimConfig, stepSamples, microbatch int) *Worker {
	return &Worker{st: st, opt: opt, stepSamples: max(1, stepSamples), microbatch: max(1, microbatch)}
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

func (w *Worker) forward(in stages.Input) (*stages.Pass, time.Duration, error) {
	w.compute.Lock()
	defer w.compute.Unlock()
	start := time.Now()
	p, err := w.st.Forward(in)
	return p, time.Since(start), err
}

// backward runs the backward pass of p and counts its sequences; the step it may
// complete runs before backward returns.
func (w *Worker) backward(p *stages.Pass, dout []float32) ([]float32, time.Duration, error) {
	b := p.B
	w.gate.RLock()
	w.compute.Lock()
	start := time.Now()
	dx, err := w.st.Backward(p, dout)
	d := time.Since(start)
	w.compute.Unlock()
	n := int64(0)
	if err == nil {
		n = w.samples.Add(int64(b))
	}
	w.gate.RUnlock()
	if n >= int64(w.stepSamples) {
		w.step()
	}
	return dx, d, err
}

func (w *Worker) step() {
	w.gate.Lock()
	n := int(w.samples.Load())
	if n < w.stepSamples {
		w.gate.Unlock()
		return // another backward got here first
	}
	micro := max(1, (n+w.microbatch/2)/w.microbatch)
	norm := w.st.Step(w.opt, micro)
	w.samples.Store(0)
	w.gate.Unlock()
	w.mu.Lock()
	fn := w.onStep
	w.mu.Unlock()
	if fn != nil {
		fn(StepInfo{Version: w.st.Version(), Samples: n, GradNorm: norm})
	}
}
