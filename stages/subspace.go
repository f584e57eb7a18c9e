package stages

import (
	"swarmnode/model"
	"swarmnode/stages/blas"
)

// subspace is a CPU stage's side of a subspace model (model.Subspace): it
// turns the residual stream into its coordinates at the stage's output and
// the coordinates back into a stream at its input (to which the engine adds
// the stage's input embeddings), and the gradients likewise. A GPU stage does
// the same on the device (package cuda).
type subspace struct {
	m *model.Subspace
}

// gain is the boundary's gain, or 1 in a plain model.
func (s *subspace) gain() float32 {
	if s == nil {
		return 1
	}
	return s.m.Gain
}

// newSubspace returns the subspace of cfg, or nil for a plain model.
func newSubspace(cfg model.Config, seed uint64) *subspace {
	if cfg.Subspace == 0 {
		return nil
	}
	return &subspace{m: model.NewSubspace(cfg, seed)}
}

// toCoords writes c = gain·x·U for N rows of x: the coordinates of the
// residual stream's projection (gain 1), or of an input gradient's (the
// boundary's gain, model.Subspace.Gain).
func (s *subspace) toCoords(c, x []float32, N int, gain float32) {
	blas.Sgemm(false, false, N, s.m.K, s.m.D, gain, x, s.m.D, s.m.U, s.m.K, 0, c, s.m.K)
}

// fromCoords writes x = gain·c·Uᵀ for N rows of c: coordinates back in the
// full width, an input stream's with the boundary's gain, an output gradient's
// with gain 1.
func (s *subspace) fromCoords(x, c []float32, N int, gain float32) {
	blas.Sgemm(false, true, N, s.m.D, s.m.K, gain, c, s.m.K, s.m.U, s.m.K, 0, x, s.m.D)
}
