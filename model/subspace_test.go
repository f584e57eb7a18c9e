package model

import (
	"math"
	"slices"
	"testing"
)

// TestSubspaceBasis: the basis has orthonormal columns and is a function of
// the seed and the boundary alone.
func TestSubspaceBasis(t *testing.T) {
	cfg := Config{Vocab: 32, DModel: 48, NHead: 4, NLayer: 2, SeqLen: 16, Subspace: 12}
	s := NewSubspace(cfg, 9, 1)
	D, K := s.D, s.K
	for a := 0; a < K; a++ {
		for b := 0; b < K; b++ {
			var dot float64
			for i := 0; i < D; i++ {
				dot += float64(s.U[i*K+a]) * float64(s.U[i*K+b])
			}
			want := 0.0
			if a == b {
				want = 1
			}
			if math.Abs(dot-want) > 1e-6 {
				t.Fatalf("columns %d·%d = %g, want %g", a, b, dot, want)
			}
		}
	}
	again := NewSubspace(cfg, 9, 1)
	if !slices.Equal(again.U, s.U) {
		t.Fatal("the same seed gave another subspace")
	}
	if other := NewSubspace(cfg, 10, 1); slices.Equal(other.U, s.U) {
		t.Fatal("another seed gave the same basis")
	}
	if other := NewSubspace(cfg, 9, 2); slices.Equal(other.U, s.U) {
		t.Fatal("another boundary gave the same basis")
	}
}
