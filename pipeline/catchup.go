package pipeline

import (
	"fmt"

	"swarmnode/model"
)

// A holder that finds itself out of step at a commit (it joined, or was left
// out of a commit) reloads the stage's state from the others. The download
// takes seconds to minutes, and the stage keeps stepping meanwhile, so the
// state it brings is some steps old by the time it arrives: loaded as it is,
// the holder would stay behind, out of step at every commit. Instead the worker
// records the mean gradient every commit stepped on from the moment it found
// itself out of step, and after loading the state replays the steps taken
// since the state's version. The members of a commit step on the same mean
// gradient, so the replay lands on their parameters.

// recordedStep is one commit's mean gradient per microbatch, with the schedule
// it stepped on, to be replayed onto a reloaded state.
type recordedStep struct {
	version uint64 // the version this step led to
	opt     model.Optim
	grad    []float32
}

// catchUpBytes caps the gradients a worker records while it reloads its state
// (at least two steps are kept); beyond it the oldest go, and a state older
// than the records left cannot be brought up to date.
const catchUpBytes = 2 << 30

// record keeps this commit's mean gradient while the worker is catching up
// (the caller holds the gate; the gradients hold the sum over div microbatches,
// or their mean when div is 1). It starts recording at the first commit that
// finds the worker behind, when WorkerOptions.CatchUp is set.
func (w *Worker) record(c Round, opt model.Optim, div int, behind bool) {
	if !w.opts.CatchUp || c.Next == 0 || (!behind && w.recorded == nil) {
		return
	}
	g := make([]float32, w.st.NumParams())
	if err := w.st.ReadGrads(0, g); err != nil {
		w.log.Warn("recording a step to catch up with failed", "stage", w.st.Index(), "err", err)
		w.recorded = nil
		w.catching.Store(false)
		return
	}
	if div > 1 {
		scale := 1 / float32(div)
		for i := range g {
			g[i] *= scale
		}
	}
	if w.recorded == nil {
		w.recorded = []recordedStep{}
		w.catching.Store(true)
	}
	w.recorded = append(w.recorded, recordedStep{version: c.Next, opt: opt, grad: g})
	if keep := max(catchUpBytes/(4*max(len(g), 1)), 2); len(w.recorded) > keep {
		w.recorded = append(w.recorded[:0], w.recorded[len(w.recorded)-keep:]...)
	}
}

// CatchUpFrom reports the oldest state version a reload can be brought up to
// date from (the version before the first recorded step), and whether the
// worker is recording steps to catch up with at all.
func (w *Worker) CatchUpFrom() (uint64, bool) {
	w.gate.Lock()
	defer w.gate.Unlock()
	if len(w.recorded) == 0 {
		return 0, w.recorded != nil
	}
	return w.recorded[0].version - 1, true
}

// CatchUp loads a state fetched from the stage's other holders with load,
// which returns its version, and replays the recorded steps after that
// version, so that the worker stands where the stage stands. The gradients of
// microbatches accumulated since the last commit are kept for the next one.
// Commits and backward passes wait meanwhile. It returns the number of steps
// replayed. Whatever the outcome the worker stops catching up (and serves
// again): when the records do not reach back to the loaded version, or a
// replayed step lands on another version than the stage's (two trainers'
// commits crossing), the worker stays behind, and its next commit starts it
// catching up afresh.
func (w *Worker) CatchUp(load func() (uint64, error)) (int, error) {
	w.gate.Lock()
	defer w.gate.Unlock()
	defer func() {
		w.recorded = nil
		w.catching.Store(false)
	}()
	n := w.st.NumParams()
	pending := make([]float32, n)
	if err := w.st.ReadGrads(0, pending); err != nil {
		return 0, err
	}
	v, err := load()
	if err != nil {
		return 0, err
	}
	replayed, err := w.replay(v)
	w.st.ZeroGrad()
	if aerr := w.st.AddGrads(0, pending); err == nil {
		err = aerr
	}
	return replayed, err
}

// replay steps the stage, loaded at version v, on the recorded steps after v
// (under the gate).
func (w *Worker) replay(v uint64) (int, error) {
	var todo []recordedStep
	for _, r := range w.recorded {
		if r.version > v {
			todo = append(todo, r)
		}
	}
	if len(todo) > 0 && todo[0].version != v+1 {
		return 0, fmt.Errorf("stage %d: the state loaded is at version %d, the steps recorded since start at %d", w.st.Index(), v, todo[0].version)
	}
	for i, r := range todo {
		w.st.ZeroGrad()
		if err := w.st.AddGrads(0, r.grad); err != nil {
			return i, err
		}
		w.st.Step(r.opt, 1)
		if got := w.st.Version(); got != r.version {
			return i + 1, fmt.Errorf("stage %d: replaying step %d left the stage at version %d", w.st.Index(), r.version, got)
		}
	}
	return len(todo), nil
}

// AbandonCatchUp drops the recorded steps (no state could be fetched); the next
// commit that finds the worker behind starts recording again.
func (w *Worker) AbandonCatchUp() {
	w.gate.Lock()
	w.recorded = nil
	w.catching.Store(false)
	w.gate.Unlock()
}

// CatchingUp reports whether the worker is behind and catching up: its
// server refuses new microbatches meanwhile, as busy, but takes part in every
// commit, so that it records the steps it must replay.
func (w *Worker) CatchingUp() bool { return w.catching.Load() }
