package model

import "math"

// A model with Config.Subspace = k > 0 sends, at every stage boundary, only
// the part of the residual stream x that lies in e(tokens) + span(U): e is a
// fixed embedding any stage recomputes from the token ids, U a fixed
// d_model×k orthonormal basis. The stage's output becomes e + U·Uᵀ(x − e), a
// projection that is part of the model (the stages and `swarmnode local`
// apply it at the same places), and the boundary carries its k coordinates
// c = Uᵀ(x − e) per token forward and the k coordinates Uᵀg of the gradient
// backward (the gradient of a projection is projected). Inside a stage the
// residual stream keeps its full width; only what crosses a boundary is
// squeezed through the subspace.
//
// e is made of GPT-2's initial token and position embeddings with their
// components in span(U) removed (any e differing only inside span(U) gives the
// same projection). U is drawn from the seed and never changes: every peer,
// on any device, derives the same one, and nothing about it travels or needs
// keeping orthonormal.

// Subspace is what defines a subspace model's boundaries: the basis and the
// fixed embeddings.
type Subspace struct {
	// D is d_model, K the rank.
	D, K int
	// U is the D×K basis, row-major, with orthonormal columns.
	U []float32
	// WTE and WPE are the fixed embeddings (Vocab×D and SeqLen×D): the initial
	// token and position embeddings with their components in span(U) removed.
	WTE, WPE []float32
}

// NewSubspace derives the subspace of cfg (cfg.Subspace > 0) from seed.
func NewSubspace(cfg Config, seed uint64) *Subspace {
	D, K := cfg.DModel, cfg.Subspace
	s := &Subspace{D: D, K: K, U: orthonormalBasis(D, K, seed)}
	s.WTE = s.fixedPart(cfg, View{Name: "wte", Len: cfg.Vocab * D, Shape: []int{cfg.Vocab, D}, Decay: true}, seed)
	s.WPE = s.fixedPart(cfg, View{Name: "wpe", Len: cfg.SeqLen * D, Shape: []int{cfg.SeqLen, D}, Decay: true}, seed)
	return s
}

// fixedPart returns tensor v's initial rows with their span(U) components
// removed.
func (s *Subspace) fixedPart(cfg Config, v View, seed uint64) []float32 {
	w := make([]float32, v.Len)
	initTensor(cfg, v, w, seed)
	c := make([]float64, s.K)
	for r := 0; r < v.Len/s.D; r++ {
		row := w[r*s.D : (r+1)*s.D]
		clear(c)
		for i, x := range row {
			for j := range c {
				c[j] += float64(x) * float64(s.U[i*s.K+j])
			}
		}
		for i := range row {
			var p float64
			for j, cj := range c {
				p += cj * float64(s.U[i*s.K+j])
			}
			row[i] = float32(float64(row[i]) - p)
		}
	}
	return w
}

// orthonormalBasis draws a D×K Gaussian matrix from seed and orthonormalises
// its columns (modified Gram-Schmidt in float64).
func orthonormalBasis(D, K int, seed uint64) []float32 {
	r := newRNG(seed, "subspace.basis")
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
