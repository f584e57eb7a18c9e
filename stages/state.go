package stages

import "fmt"

// StateLen is the length of the state vector ReadState and AddState address:
// Params, M and V laid end to end (3 × NumParams). Averaging the parameters alone
// uses its first NumParams values.
func (s *Stage) StateLen() int { return 3 * s.lay.size }

// checkRange validates [off, off+n) against the state vector.
func (s *Stage) checkRange(off, n int) error {
	if off < 0 || n < 0 || off > s.StateLen()-n {
		return fmt.Errorf("stage %d: state range [%d, %d) outside [0, %d)", s.index, off, off+n, s.StateLen())
	}
	return nil
}

// stateSpan calls fn for each part of [off, off+n) that falls in one of parts
// (Params, M, V end to end): the part's slice of it and where it starts in the
// range.
func stateSpan(parts [3][]float32, off, n int, fn func(p []float32, at int)) {
	base := 0
	for _, p := range parts {
		lo, hi := max(off, base), min(off+n, base+len(p))
		if lo < hi {
			fn(p[lo-base:hi-base], lo-off)
		}
		base += len(p)
	}
}

// ReadState copies the values at [off, off+len(dst)) of Params|M|V laid end to
// end into dst, under the read lock: the averager reads the state chunk by chunk
// while training goes on. On a GPU stage it downloads the state.
func (s *Stage) ReadState(off int, dst []float32) error {
	if err := s.checkRange(off, len(dst)); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.gpu != nil {
		if err := s.gpu.cs.ReadState(off, dst); err != nil {
			return fmt.Errorf("stage %d: reading the GPU state: %w", s.index, s.gpu.fail(err))
		}
		return nil
	}
	stateSpan([3][]float32{s.params, s.m, s.v}, off, len(dst), func(p []float32, at int) { copy(dst[at:], p) })
	return nil
}

// AddState adds delta to the values at [off, off+len(delta)) of Params|M|V laid
// end to end, under the write lock (an averaging round's correction). On a GPU
// stage it updates the device state.
func (s *Stage) AddState(off int, delta []float32) error {
	if err := s.checkRange(off, len(delta)); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gpu != nil {
		if err := s.gpu.cs.AddState(off, delta); err != nil {
			return fmt.Errorf("stage %d: updating the GPU state: %w", s.index, s.gpu.fail(err))
		}
		return nil
	}
	stateSpan([3][]float32{s.params, s.m, s.v}, off, len(delta), func(p []float32, at int) {
		d := delta[at : at+len(p)]
		for i := range p {
			p[i] += d[i]
		}
	})
	return nil
}
