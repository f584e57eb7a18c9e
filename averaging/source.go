package averaging

import "sync"

// Slices adapts state kept as several float32 slices to Source: a stage's
// parameters alone, or its parameters and AdamW moments when the optimizer state
// is averaged too (config averaging.optimizer). The averaged vector is the slices
// end to end. The swarm wires a stage as
//
//	&Slices{With: func(fn func([][]float32)) {
//		stage.WithState(func(st *stages.State) { fn([][]float32{st.Params, st.M, st.V}) })
//	}}
//
// and calls AddSamples after each optimizer step.
type Slices struct {
	// With runs fn on the live slices under the lock that guards them. The slices'
	// lengths must not change.
	With func(fn func(parts [][]float32))

	mu      sync.Mutex
	samples float64
}

// AddSamples records samples trained on since the last snapshot: the weight of
// the next contribution.
func (s *Slices) AddSamples(n float64) {
	s.mu.Lock()
	s.samples += n
	s.mu.Unlock()
}

// Len is the total length of the slices.
func (s *Slices) Len() int {
	n := 0
	s.With(func(parts [][]float32) {
		for _, p := range parts {
			n += len(p)
		}
	})
	return n
}

// Snapshot copies the slices end to end into dst and returns the samples since
// the previous Snapshot.
func (s *Slices) Snapshot(dst []float32) float64 {
	s.With(func(parts [][]float32) {
		off := 0
		for _, p := range parts {
			off += copy(dst[off:], p)
		}
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.samples
	s.samples = 0
	return w
}

// Apply runs fn on a flat copy of the slices and writes the result back, all
// under the owner's lock. The copy costs one vector of memory for the moment of
// the update; it keeps Source's contract of one flat vector.
func (s *Slices) Apply(fn func(vec []float32)) {
	s.With(func(parts [][]float32) {
		if len(parts) == 1 {
			fn(parts[0])
			return
		}
		n := 0
		for _, p := range parts {
			n += len(p)
		}
		flat := make([]float32, 0, n)
		for _, p := range parts {
			flat = append(flat, p...)
		}
		fn(flat)
		off := 0
		for _, p := range parts {
			off += copy(p, flat[off:])
		}
	})
}
