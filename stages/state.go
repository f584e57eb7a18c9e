package stages

import (
	"fmt"
	"math"
	"sync/atomic"

	"swarmnode/model"
)

// WithState calls fn with the stage's parameters and AdamW state under the write
// lock, for averaging and state transfer. fn may change the slices' contents (not
// their lengths) and Step; Version follows Step. The slices must not be kept
// after fn returns. On a GPU stage fn works on a host copy that is uploaded
// afterwards; on a device error it sees empty slices (so length checks fail) and
// DeviceErr reports the cause.
func (s *Stage) WithState(fn func(st *model.State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &model.State{Step: int(s.version)}
	if err := s.eng.withState(st, fn); err != nil {
		s.fail(err)
		return
	}
	atomic.StoreUint64(&s.version, uint64(max(st.Step, 0)))
}

// ZeroGrad clears the accumulated gradients.
func (s *Stage) ZeroGrad() {
	s.gradMu.Lock()
	defer s.gradMu.Unlock()
	s.fail(s.eng.zeroGrad())
}

// Step averages the accumulated gradients over micro microbatches (grads *= 1/micro),
// clips them to a global norm of opt.Clip (per stage; PyTorch's clip_grad_norm_
// rule), applies AdamW at opt.LRAt(Version()) with decoupled weight decay on the
// views with Decay set, zeroes the gradients and bumps Version. It returns the
// gradient norm before clipping. When that norm is NaN or infinite (a diverged
// microbatch) the step is skipped: gradients are zeroed, parameters, moments and
// Version stay as they were, and the non-finite norm is returned for the caller
// to report. A device error returns NaN (see DeviceErr).
func (s *Stage) Step(opt model.Optim, micro int) float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gradMu.Lock()
	defer s.gradMu.Unlock()
	norm, err := s.eng.step(opt, max(micro, 1), int(s.version))
	if err != nil {
		s.fail(err)
		return float32(math.NaN())
	}
	if n := float64(norm); !math.IsNaN(n) && !math.IsInf(n, 0) {
		atomic.AddUint64(&s.version, 1)
	}
	return norm
}

// StateLen is the length of the state vector ReadState and AddState address:
// Params, M and V laid end to end (3 × NumParams). Averaging the parameters alone
// uses its first NumParams values.
func (s *Stage) StateLen() int { return 3 * s.lay.Size }

// ReadState copies the values at [off, off+len(dst)) of Params|M|V laid end to
// end into dst, under the read lock: the averager reads the state chunk by chunk
// while training goes on. A GPU stage downloads only that range.
func (s *Stage) ReadState(off int, dst []float32) error {
	return s.stateRange(off, len(dst), false, "reading", func() error { return s.eng.readState(off, dst) })
}

// AddState adds delta to the values at [off, off+len(delta)) of Params|M|V laid
// end to end, under the write lock (an averaging round's correction). A GPU
// stage updates the range on the device.
func (s *Stage) AddState(off int, delta []float32) error {
	return s.stateRange(off, len(delta), true, "updating", func() error { return s.eng.addState(off, delta) })
}

// stateRange checks [off, off+n) against the state vector and runs op under the
// write lock (write) or the read lock.
func (s *Stage) stateRange(off, n int, write bool, what string, op func() error) error {
	if off < 0 || n < 0 || off > s.StateLen()-n {
		return fmt.Errorf("stage %d: state range [%d, %d) outside [0, %d)", s.part.Index, off, off+n, s.StateLen())
	}
	if write {
		s.mu.Lock()
		defer s.mu.Unlock()
	} else {
		s.mu.RLock()
		defer s.mu.RUnlock()
	}
	if err := op(); err != nil {
		return fmt.Errorf("stage %d: %s the state: %w", s.part.Index, what, s.fail(err))
	}
	return nil
}

// ReadGrads copies the accumulated gradients at [off, off+len(dst)) into dst,
// under the gradients' lock: holders of a stage read their gradients chunk by
// chunk to all-reduce them before they step together. A GPU stage downloads
// only that range.
func (s *Stage) ReadGrads(off int, dst []float32) error {
	return s.gradRange(off, len(dst), "reading", func() error { return s.eng.readState(s.StateLen()+off, dst) })
}

// AddGrads adds delta to the accumulated gradients at [off, off+len(delta)),
// under the gradients' lock (an all-reduce's result, or taking a microbatch's
// gradient back out).
func (s *Stage) AddGrads(off int, delta []float32) error {
	return s.gradRange(off, len(delta), "updating", func() error { return s.eng.addState(s.StateLen()+off, delta) })
}

// gradRange checks [off, off+n) against the gradients and runs op under the
// gradients' lock. The engines address the gradients after Params|M|V.
func (s *Stage) gradRange(off, n int, what string, op func() error) error {
	if off < 0 || n < 0 || off > s.lay.Size-n {
		return fmt.Errorf("stage %d: gradient range [%d, %d) outside [0, %d)", s.part.Index, off, off+n, s.lay.Size)
	}
	s.gradMu.Lock()
	defer s.gradMu.Unlock()
	if err := op(); err != nil {
		return fmt.Errorf("stage %d: %s the gradients: %w", s.part.Index, what, s.fail(err))
	}
	return nil
}

// Snapshot returns a copy of the stage's state, parameters, moments and
// version, taken at one instant (under the read lock): what a checkpoint
// writes while training goes on.
func (s *Stage) Snapshot() (model.State, error) {
	n := s.lay.Size
	buf := make([]float32, 3*n)
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := model.State{Step: int(s.Version()), Params: buf[:n:n], M: buf[n : 2*n : 2*n], V: buf[2*n:]}
	if err := s.eng.readState(0, buf); err != nil {
		return model.State{}, fmt.Errorf("stage %d: reading the state: %w", s.part.Index, s.fail(err))
	}
	return st, nil
}

// Restore replaces the stage's parameters, moments and version with st's
// (laid out like Params; a checkpoint's), and zeroes the gradients.
func (s *Stage) Restore(st model.State) error {
	n := s.lay.Size
	if len(st.Params) != n || len(st.M) != n || len(st.V) != n || st.Step < 0 {
		return fmt.Errorf("stage %d: a state of %d/%d/%d values at step %d, want %d each", s.part.Index, len(st.Params), len(st.M), len(st.V), st.Step, n)
	}
	s.WithState(func(cur *model.State) {
		copy(cur.Params, st.Params)
		copy(cur.M, st.M)
		copy(cur.V, st.V)
		cur.Step = st.Step
	})
	s.ZeroGrad()
	return s.DeviceErr()
}
