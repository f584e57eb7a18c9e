package blas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

// naive computes the product in float64 as the reference.
func naive(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) []float64 {
	elem := func(x []float32, ld int, trans bool, i, j int) float64 {
		if trans {
			i, j = j, i
		}
		return float64(x[i*ld+j])
	}
	out := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for l := 0; l < k; l++ {
				s += elem(a, lda, transA, i, l) * elem(b, ldb, transB, l, j)
			}
			out[i*n+j] = float64(alpha)*s + float64(beta)*float64(c[i*ldc+j])
		}
	}
	return out
}

// product is a random problem C = α·op(A)·op(B) + β·C of shape m×n×k, each
// matrix stored with a row stride wider than it.
type product struct {
	ta, tb        bool
	m, n, k       int
	a, b, c       []float32
	lda, ldb, ldc int
}

// randProduct draws a product whose row strides exceed the stored widths of A,
// B and C by pad.
func randProduct(r *rand.Rand, ta, tb bool, m, n, k int, pad [3]int) product {
	ar, ac := stored(ta, m, k)
	br, bc := stored(tb, k, n)
	p := product{ta: ta, tb: tb, m: m, n: n, k: k, lda: ac + pad[0], ldb: bc + pad[1], ldc: n + pad[2]}
	p.a, p.b = randSlice(r, (ar-1)*p.lda+ac), randSlice(r, (br-1)*p.ldb+bc)
	p.c = randSlice(r, (m-1)*p.ldc+n)
	return p
}

// run computes the product with sgemm into a copy of C and checks it against
// the float64 product and that the padding between C's rows is untouched.
func (p product) run(t *testing.T, what string, alpha, beta float32, sgemm func(bool, bool, int, int, int, float32, []float32, int, []float32, int, float32, []float32, int)) {
	t.Helper()
	want := naive(p.ta, p.tb, p.m, p.n, p.k, alpha, p.a, p.lda, p.b, p.ldb, beta, p.c, p.ldc)
	c := append([]float32(nil), p.c...)
	sgemm(p.ta, p.tb, p.m, p.n, p.k, alpha, p.a, p.lda, p.b, p.ldb, beta, c, p.ldc)
	for i := 0; i < p.m; i++ {
		for j := 0; j < p.ldc && i*p.ldc+j < len(c); j++ {
			got := float64(c[i*p.ldc+j])
			if j >= p.n {
				if c[i*p.ldc+j] != p.c[i*p.ldc+j] {
					t.Fatalf("%s wrote padding at row %d col %d", what, i, j)
				}
				continue
			}
			if w := want[i*p.n+j]; math.Abs(got-w) > 1e-5*math.Sqrt(float64(p.k))*(1+math.Abs(w)) {
				t.Fatalf("%s %dx%dx%d ta=%v tb=%v: C[%d,%d] = %g, want %g", what, p.m, p.n, p.k, p.ta, p.tb, i, j, got, w)
			}
		}
	}
}

var transposes = [][2]bool{{false, false}, {false, true}, {true, false}, {true, true}}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// TestBackendsAgree checks both backends against a float64 product for every
// transpose combination, with row strides wider than the matrices.
func TestBackendsAgree(t *testing.T) {
	backends := []backend{gonumBackend{}}
	if ob, err := loadOpenBLAS(); err != nil {
		t.Logf("OpenBLAS not available (%v): checking gonum only", err)
	} else {
		backends = append(backends, ob)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, sh := range [][3]int{{1, 1, 1}, {7, 5, 3}, {33, 65, 17}, {128, 96, 200}} {
		for _, tr := range transposes {
			p := randProduct(r, tr[0], tr[1], sh[0], sh[1], sh[2], [3]int{3, 1, 2})
			for _, be := range backends {
				p.run(t, be.name(), 0.7, 0.3, be.sgemm)
			}
		}
	}
}

func TestChoose(t *testing.T) {
	if be, err := choose("gonum"); err != nil || be.name() != "gonum" {
		t.Errorf("choose(gonum) = %v, %v", be, err)
	}
	if _, err := choose("mkl"); err == nil {
		t.Error("choose(mkl) succeeded")
	}
	be, err := choose("")
	if err != nil {
		t.Fatal(err)
	}
	if _, oerr := loadOpenBLAS(); oerr == nil && be.name() != "openblas" {
		t.Errorf("auto picked %s although OpenBLAS loads", be.name())
	}
	if os.Getenv(EnvVar) == "" && Name() != be.name() {
		t.Errorf("Name() = %s, auto choice %s", Name(), be.name())
	}
}

func TestShortBufferPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for a short C")
		}
	}()
	Sgemm(false, false, 2, 2, 2, 1, make([]float32, 4), 2, make([]float32, 4), 2, 0, make([]float32, 3), 2)
}

func benchSgemm(b *testing.B, f func(bool, bool, int, int, int, float32, []float32, int, []float32, int, float32, []float32, int)) {
	const n = 1024
	r := rand.New(rand.NewPCG(3, 4))
	x, y, z := randSlice(r, n*n), randSlice(r, n*n), make([]float32, n*n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f(false, false, n, n, n, 1, x, n, y, n, 0, z, n)
	}
	b.ReportMetric(2*n*n*n*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkSgemm1024 measures the selected backend (see Name) on a 1024³ product.
func BenchmarkSgemm1024(b *testing.B) {
	b.Logf("backend %s", Name())
	benchSgemm(b, Sgemm)
}

// BenchmarkSgemm1024Gonum measures gonum on the same product, for reference.
func BenchmarkSgemm1024Gonum(b *testing.B) { benchSgemm(b, Gonum) }

// TestSplitProducts checks Sgemm's split of large products into blocks of rows or
// columns across goroutines, for every transpose combination and both split
// directions, against the float64 product.
func TestSplitProducts(t *testing.T) {
	useOpenBLAS(t)
	r := rand.New(rand.NewPCG(7, 8))
	for _, w := range []int{2, 3, 5} {
		SetThreads(w)
		for _, sh := range [][3]int{{611, 150, 97}, {150, 611, 97}, {64, 700, 80}} {
			m, n, k := sh[0], sh[1], sh[2]
			if m*n*k < splitFlops || blocks(max(m, n)) < 2 {
				t.Fatalf("shape %v too small to split", sh)
			}
			for _, tr := range transposes {
				p := randProduct(r, tr[0], tr[1], m, n, k, [3]int{1, 2, 3})
				p.run(t, fmt.Sprintf("threads %d", w), 1.5, 0.5, Sgemm)
			}
		}
	}
}

// TestSplitIndependentOfThreads: a split product is bit-identical whatever the
// number of goroutines, one included (the blocks follow the shape only).
func TestSplitIndependentOfThreads(t *testing.T) {
	useOpenBLAS(t)
	r := rand.New(rand.NewPCG(9, 10))
	const m, n, k = 700, 96, 130
	a, b := randSlice(r, m*k), randSlice(r, k*n)
	var ref []float32
	for _, w := range []int{1, 2, 3, 4, 7} {
		SetThreads(w)
		c := make([]float32, m*n)
		Sgemm(false, false, m, n, k, 1, a, k, b, n, 0, c, n)
		if ref == nil {
			ref = c
			continue
		}
		for i := range c {
			if c[i] != ref[i] {
				t.Fatalf("%d goroutines: C[%d] = %v, with 1: %v", w, i, c[i], ref[i])
			}
		}
	}
}

// useOpenBLAS selects OpenBLAS (the backend that splits products) for the test,
// or skips it where the library is missing; the defaults come back at the end.
func useOpenBLAS(t *testing.T) {
	t.Helper()
	if _, err := loadOpenBLAS(); err != nil {
		t.Skip("gonum does not go through the split: ", err)
	}
	if err := Use("openblas"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		SetThreads(0)
		Use("auto")
	})
}
