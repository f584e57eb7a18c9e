package stages

import (
	"swarmnode/model"
	"swarmnode/stages/blas"
)

// subspace is a stage's side of a subspace model (model.Subspace): it turns
// the residual stream into its coordinates at the stage's output and back at
// its input, and the gradients likewise. It works on the stage API's host
// tensors, so the same code serves CPU and GPU stages.
type subspace struct {
	m *model.Subspace
}

func newSubspace(cfg model.Config, seed uint64) *subspace {
	return &subspace{m: model.NewSubspace(cfg, seed)}
}

// embed writes the fixed embedding of tokens into e (B·T rows of D).
func (s *subspace) embed(e []float32, tokens []int32, B, T int) {
	encoderForward(e, tokens, s.m.WTE, s.m.WPE, B, T, s.m.D)
}

// encode writes the coordinates c = (x − e)·U of the residual stream x. e
// has no component in span(U) (model.NewSubspace removed it), so this is x·U:
// the fixed embedding need not be rebuilt on the way out.
func (s *subspace) encode(c, x []float32, B, T int) {
	s.toCoords(c, x, B*T)
}

// decode writes the residual stream x = e + c·Uᵀ of the coordinates c.
func (s *subspace) decode(x, c []float32, tokens []int32, B, T int) {
	N, D, K := B*T, s.m.D, s.m.K
	s.embed(x, tokens, B, T)
	blas.Sgemm(false, true, N, D, K, 1, c, K, s.m.U, K, 1, x, D)
}

// toCoords writes gc = g·U for N rows of g: what of a gradient with respect to
// the residual stream reaches the coordinates.
func (s *subspace) toCoords(gc, g []float32, N int) {
	blas.Sgemm(false, false, N, s.m.K, s.m.D, 1, g, s.m.D, s.m.U, s.m.K, 0, gc, s.m.K)
}

// fromCoords writes g = gc·Uᵀ: a gradient with respect to the coordinates as
// one with respect to the residual stream.
func (s *subspace) fromCoords(g, gc []float32, N int) {
	blas.Sgemm(false, true, N, s.m.D, s.m.K, 1, gc, s.m.K, s.m.U, s.m.K, 0, g, s.m.D)
}
