package averaging

import "sync"

// Slices adapts state kept as several float32 slices to Source: a stage's
// parameters alone, or its parameters and AdamW moments when the optimizer state
// is averaged too (config averaging.optimizer). The averaged vector is the slices
// end to end. The swarm wires a stage as
//
//	&Slices{With: func(fn func([][]float32)) {
//		stage.WithState(func(st *model.State) { fn([][]float32{st.Params, st.M, st.V}) })
//	}}
//
// and calls AddSamples after each optimizer step. Each Read and Add holds the
// stage's lock for one chunk only.
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

// Samples returns the samples recorded since the previous call.
func (s *Slices) Samples() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.samples
	s.samples = 0
	return w
}

// Read copies the values at [off, off+len(dst)) of the slices end to end.
func (s *Slices) Read(off int, dst []float32) {
	s.With(func(parts [][]float32) {
		span(parts, off, len(dst), func(p []float32, at int) { copy(dst[at:], p) })
	})
}

// Add adds delta to the values at [off, off+len(delta)) of the slices end to end.
func (s *Slices) Add(off int, delta []float32) {
	s.With(func(parts [][]float32) {
		span(parts, off, len(delta), func(p []float32, at int) {
			d := delta[at : at+len(p)]
			for k := range p {
				p[k] += d[k]
			}
		})
	})
}

// span calls fn for each piece of [off, off+n) of the parts laid end to end,
// with the piece and its position within the range.
func span(parts [][]float32, off, n int, fn func(p []float32, at int)) {
	at := 0
	for _, p := range parts {
		if n == 0 {
			return
		}
		if off >= len(p) {
			off -= len(p)
			continue
		}
		k := min(n, len(p)-off)
		fn(p[off:off+k], at)
		at += k
		n -= k
		off = 0
	}
}
