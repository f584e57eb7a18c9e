package stages

import (
	"swarmnode/model"
	"swarmnode/stages/blas"
)

// subspace is a CPU stage's side of a subspace model (model.Subspace): its
// two boundaries, the one it receives through (in, nil on the first stage) and
// the one it sends through (out, nil on the last). The stage turns its output
// into coordinates in out's basis and rebuilds its input from coordinates in
// in's (adding its input embeddings), and the gradients likewise. A GPU stage
// does the same on the device (package cuda).
type subspace struct {
	in, out *model.Subspace
}

// newSubspace returns the boundaries of part p of the model cfg, or nil for a
// plain model.
func newSubspace(cfg model.Config, p model.Part, seed uint64) *subspace {
	if cfg.Subspace == 0 {
		return nil
	}
	s := &subspace{}
	if !p.IsFirst() {
		s.in = model.NewSubspace(cfg, seed, p.First)
	}
	if !p.IsLast() {
		s.out = model.NewSubspace(cfg, seed, p.First+p.Blocks)
	}
	return s
}

// toCoords writes c = gain·x·U for N rows of x: the coordinates of the
// residual stream's projection (gain 1), or of an input gradient's (the
// boundary's gain, model.Subspace.Gain).
func toCoords(b *model.Subspace, c, x []float32, N int, gain float32) {
	blas.Sgemm(false, false, N, b.K, b.D, gain, x, b.D, b.U, b.K, 0, c, b.K)
}

// fromCoords writes x = gain·c·Uᵀ for N rows of c: coordinates back in the
// full width, an input stream's with the boundary's gain, an output gradient's
// with gain 1.
func fromCoords(b *model.Subspace, x, c []float32, N int, gain float32) {
	blas.Sgemm(false, true, N, b.D, b.K, gain, c, b.K, b.U, b.K, 0, x, b.D)
}
