package stages

import (
	"swarmnode/model"
	"swarmnode/stages/blas"
)

// subspace is a stage's side of a subspace-constrained model (model.Subspace):
// it turns the residual stream into its coordinates at the stage's output and
// back at its input, and keeps the constrained tensors in the subspace across
// optimizer steps. It works through the stage API and the engines' state
// ranges, so the same code serves CPU and GPU stages; the conversions run on
// the host.
type subspace struct {
	m    *model.Subspace
	cons []model.Constraint
}

func newSubspace(cfg model.Config, lay *model.Layout, seed uint64) *subspace {
	m := model.NewSubspace(cfg, seed)
	return &subspace{m: m, cons: m.Constraints(lay)}
}

// embed writes the fixed embedding of tokens into e (B·T rows of D).
func (s *subspace) embed(e []float32, tokens []int32, B, T int) {
	encoderForward(e, tokens, s.m.WTE, s.m.WPE, B, T, s.m.D)
}

// encode writes the coordinates c = (x − e)·U of the residual stream x.
func (s *subspace) encode(c, x []float32, tokens []int32, B, T int) {
	N, D, K := B*T, s.m.D, s.m.K
	d := make([]float32, N*D)
	s.embed(d, tokens, B, T)
	for i := range d {
		d[i] = x[i] - d[i]
	}
	blas.Sgemm(false, false, N, K, D, 1, d, D, s.m.U, K, 0, c, K)
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

// project replaces rows (R×D) by anchor + rows·U·Uᵀ (anchor nil: zero), the
// closest rows of the constrained form: the anchors lie outside span(U).
func (s *subspace) project(rows, anchor []float32) {
	D, K := s.m.D, s.m.K
	R := len(rows) / D
	c := make([]float32, R*K)
	blas.Sgemm(false, false, R, K, D, 1, rows, D, s.m.U, K, 0, c, K)
	beta := float32(0)
	if anchor != nil {
		copy(rows, anchor)
		beta = 1
	}
	blas.Sgemm(false, true, R, D, K, 1, c, K, s.m.U, K, beta, rows, D)
}

// projectState projects the constrained tensors of the vector at offset base
// of the engine's state (0: the parameters, with their anchors; after
// Params|M|V: the gradients, without), through the engine's state ranges.
func (s *subspace) projectState(eng engine, base int, anchors bool) error {
	for _, c := range s.cons {
		v := c.View
		rows := make([]float32, v.Len)
		if err := eng.readState(base+v.Offset, rows); err != nil {
			return err
		}
		old := append([]float32(nil), rows...)
		a := c.Anchor
		if !anchors {
			a = nil
		}
		s.project(rows, a)
		for i := range rows {
			rows[i] -= old[i]
		}
		if err := eng.addState(base+v.Offset, rows); err != nil {
			return err
		}
	}
	return nil
}
