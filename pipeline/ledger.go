package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
)

// accounting is what a holder tells a trainer about the microbatches of that
// trainer it has seen since its last step.
type accounting struct {
	// Pending lists the microbatch ids whose gradients are accumulated and not
	// stepped yet, once per copy.
	Pending []uint64 `json:"pending"`
	// Done lists ids already stepped (by an earlier commit, possibly another
	// trainer's): they counted and must not be sent again.
	Done []uint64 `json:"done"`
	// Version is the stage's parameter version.
	Version uint64 `json:"version"`
}

// commitMsg asks a holder to step: take back the listed copies, all-reduce with
// the other members and apply the optimizer step.
type commitMsg struct {
	// Round names the all-reduce round (the same for every member).
	Round uint64 `json:"round"`
	// Members are the peer ids of the stage's holders stepping together.
	Members []string `json:"members"`
	// Weights are the microbatches the trainer counts at each member after
	// the copies taken back (Weights[i] for Members[i]): the all-reduce's
	// weights, attested by the trainer rather than claimed by each member.
	// Absent (an older trainer): each member's claim, bounded.
	Weights []int `json:"weights,omitempty"`
	// Undo lists microbatch ids to take one accumulated copy of back out
	// (repeated for more copies).
	Undo []uint64 `json:"undo"`
	// Next is the version the stage steps to: the version most members were
	// at, plus one.
	Next uint64 `json:"next"`
	// Steps is the length of the trainer's run, the horizon of the learning-rate
	// schedule; 0 leaves the holder's own train.steps. The trainer owns it
	// because `--steps` is a trainer's flag: servers started from the config
	// alone would otherwise decay their rate to another horizon.
	Steps int `json:"steps"`
	// Receipt is the trainer's signed receipt of this step at this stage
	// (package receipt): the members and the microbatches it counts at
	// each, which the holders keep as evidence of their work. Absent from
	// a trainer without a key.
	Receipt json.RawMessage `json:"receipt,omitempty"`
}

// account lists the worker's ledger entries of the microbatches whose ids carry
// tag (a trainer's: id>>32), and which of ids it stepped recently.
func (w *Worker) account(tag uint32, ids []uint64) accounting {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	a := accounting{Version: w.st.Version(), Pending: []uint64{}, Done: []uint64{}}
	for _, e := range w.ledger {
		if uint32(e.id>>32) == tag {
			a.Pending = append(a.Pending, e.id)
		}
	}
	for _, id := range ids {
		if _, ok := w.done[id]; ok {
			a.Done = append(a.Done, id)
		}
	}
	return a
}

// Commit takes back the copies undo names, all-reduces the gradients with the
// round's members (through WorkerOptions.Reduce) and steps. It holds backward
// passes off meanwhile, so the step applies exactly the ledger. It steps even
// when a copy could not be taken back, and returns that error with the step.
func (w *Worker) Commit(ctx context.Context, c Round, undo []uint64) (StepInfo, error) {
	w.gate.Lock()
	defer w.gate.Unlock()
	var undoErr error
	for _, id := range undo {
		// A copy that is not there (or cannot be recomputed) is reported,
		// and the step goes on: holding every other gradient back helps no one.
		if err := w.takeBack(id); err != nil && undoErr == nil {
			undoErr = err
		}
	}
	w.lmu.Lock()
	entries := w.ledger
	w.ledger, w.ledgerBytes = nil, 0
	w.lmu.Unlock()
	info := StepInfo{Micro: len(entries), OutOfStep: c.Next != 0 && w.st.Version()+1 != c.Next, Behind: w.st.Version()+1 < c.Next}
	for _, e := range entries {
		info.Samples += e.in.B
	}
	c.Micro = info.Micro
	if w.opts.Reduce != nil && len(c.Members) > 1 {
		red, err := w.opts.Reduce(ctx, c)
		if err != nil {
			w.log.Info("gradient all-reduce failed, stepping on this holder's gradients", "stage", w.st.Index(), "round", c.ID, "err", err)
		}
		info.Averaged, info.Group, info.Complete, info.Evicted = red.Averaged, red.Group, red.Complete, red.Evicted
	}
	div := info.Micro
	if info.Averaged {
		div = 1
	}
	opt := w.opts.Optim
	if c.Steps > 0 {
		opt.Steps = c.Steps
	}
	w.record(c, opt, max(div, 1), info.Behind)
	info.GradNorm = w.st.Step(opt, max(div, 1))
	info.Version = w.st.Version()
	w.remember(entries)
	w.mu.Lock()
	fn := w.onStep
	w.mu.Unlock()
	if fn != nil {
		fn(info)
	}
	return info, undoErr
}

// remember records the ids a step applied, forgetting the oldest beyond keepDone.
func (w *Worker) remember(entries []entry) {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	for _, e := range entries {
		if _, ok := w.done[e.id]; !ok {
			w.doneQ = append(w.doneQ, e.id)
		}
		w.done[e.id] = struct{}{}
	}
	if over := len(w.doneQ) - keepDone; over > 0 {
		for _, id := range w.doneQ[:over] {
			delete(w.done, id)
		}
		w.doneQ = append(w.doneQ[:0], w.doneQ[over:]...)
	}
}

// takeBack removes one ledger entry of microbatch id and its gradient: it runs
// the microbatch again on the same parameters, alone, and subtracts what that
// adds. The caller holds the gate exclusively.
func (w *Worker) takeBack(id uint64) error {
	w.lmu.Lock()
	i := -1
	for j, e := range w.ledger {
		if e.id == id {
			i = j
			break
		}
	}
	if i < 0 {
		w.lmu.Unlock()
		return fmt.Errorf("stage %d: no accumulated copy of microbatch %x to take back", w.st.Index(), id)
	}
	e := w.ledger[i]
	w.ledger = append(w.ledger[:i:i], w.ledger[i+1:]...)
	w.ledgerBytes -= e.size()
	w.lmu.Unlock()

	n := w.st.NumParams()
	before := make([]float32, n)
	if err := w.st.ReadGrads(0, before); err != nil {
		return err
	}
	w.compute.Lock()
	defer w.compute.Unlock()
	w.st.ZeroGrad()
	p, err := w.st.ForwardTensor(e.in, e.x, e.wire)
	if err == nil {
		_, err = w.st.BackwardTensor(p, e.dout, e.wire)
	}
	// The gradients now hold the microbatch's alone, g (or nothing, on an
	// error): make them before − g, chunk by chunk.
	const chunk = 1 << 16
	buf := make([]float32, min(n, chunk))
	for off := 0; off < n; off += chunk {
		g := buf[:min(chunk, n-off)]
		if rerr := w.st.ReadGrads(off, g); rerr != nil {
			return rerr
		}
		for j := range g {
			if err != nil {
				g[j] = before[off+j] - g[j]
			} else {
				g[j] = before[off+j] - 2*g[j]
			}
		}
		if aerr := w.st.AddGrads(off, g); aerr != nil {
			return aerr
		}
	}
	if err != nil {
		return fmt.Errorf("stage %d: take back microbatch %x: %w", w.st.Index(), id, err)
	}
	return nil
}
