package model

import (
	"fmt"
	"math"
)

// A model with Config.Subspace = k > 0 sends, at every stage boundary, only
// the projection of the residual stream x onto span(U), U a fixed d_model×k
// orthonormal basis: the boundary carries the k coordinates c = Uᵀx per token
// forward and the k coordinates Uᵀg of the gradient backward (the gradient of
// a projection is projected). The next stage rebuilds its input as
//
//	x' = g·U·c + ê(tokens)
//
// where g = sqrt(d_model/k) is the boundary's gain and ê is the stage's own
// trained token and position embedding (Layout's
// InWTE and InWPE): what of the residual stream is a function of the token and
// its position needs no traffic, since every stage receives the token ids.
// Inside a stage the residual stream keeps its full width; only what crosses a
// boundary is squeezed through the subspace. The gain keeps the projection of a
// stream that is not aligned with U as strong, on average, as the stream
// itself: a random direction keeps k/d_model of its energy in span(U), so
// without it the earlier stage's writes reach the next one √(d_model/k) times
// weaker than in the full-width model (and its gradient likewise), which
// delayed training on the GPT-2-small config.
//
// Each boundary has its own U, drawn from the seed and the boundary's place,
// and it never changes: every peer, on any device, derives the same one, and
// nothing about it travels or needs keeping orthonormal. Distinct bases keep
// the gain from compounding: what one boundary let through lies in its span
// and would, under a shared U, be multiplied by the gain again at every later
// boundary; under an independent U it is a random direction again, which the
// gain restores on average.

// Subspace is what defines a subspace model's boundaries: the basis.
type Subspace struct {
	// D is d_model, K the rank.
	D, K int
	// U is the D×K basis, row-major, with orthonormal columns.
	U []float32
	// Gain is sqrt(D/K), the factor of the coordinates where a stage rebuilds
	// its input from them (and of the gradient's coordinates it sends back).
	Gain float32
}

// NewSubspace derives from seed the subspace of cfg (cfg.Subspace > 0) at the
// boundary before block `boundary` (the first block of the stage that
// receives through it).
func NewSubspace(cfg Config, seed uint64, boundary int) *Subspace {
	D, K := cfg.DModel, cfg.Subspace
	U := orthonormalBasis(D, K, newRNG(seed, fmt.Sprintf("subspace.basis.%d", boundary)))
	return &Subspace{D: D, K: K, U: U, Gain: float32(math.Sqrt(float64(D) / float64(K)))}
}

// orthonormalBasis draws a D×K Gaussian matrix from r and orthonormalises its
// columns (modified Gram-Schmidt in float64).
func orthonormalBasis(D, K int, r *rng) []float32 {
	cols := make([][]float64, K)
	for j := range cols {
		cols[j] = make([]float64, D)
		for i := range cols[j] {
			cols[j][i] = r.normal()
		}
	}
	for j, c := range cols {
		for _, prev := range cols[:j] {
			var dot float64
			for i := range c {
				dot += c[i] * prev[i]
			}
			for i := range c {
				c[i] -= dot * prev[i]
			}
		}
		var norm float64
		for _, x := range c {
			norm += x * x
		}
		norm = math.Sqrt(norm)
		for i := range c {
			c[i] /= norm
		}
	}
	u := make([]float32, D*K)
	for i := 0; i < D; i++ {
		for j := 0; j < K; j++ {
			u[i*K+j] = float32(cols[j][i])
		}
	}
	return u
}
