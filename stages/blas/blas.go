// Package blas runs the single-precision matrix products of the model through the
// fastest BLAS available at run time.
//
// OpenBLAS is loaded with dlopen when the binary is built with cgo and a shared
// libopenblas can be found (Debian's libopenblas0-pthread measured about 8x faster
// than gonum here). Otherwise, or when SWARMNODE_BLAS=gonum is set, the pure-Go
// gonum.org/v1/gonum/blas/gonum implementation is used. Both compute the same
// products; results differ only by float32 rounding (summation order).
//
// All matrices are row-major.
package blas

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// EnvVar names the environment variable that forces a backend: "gonum" or "openblas".
// Unset or "auto" picks OpenBLAS when it loads and gonum otherwise.
const EnvVar = "SWARMNODE_BLAS"

// Backend is one implementation of the products this package offers.
type backend interface {
	name() string
	// splits reports whether Sgemm should split large products across goroutines
	// (gonum does so itself).
	splits() bool
	sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int)
}

var (
	initOnce sync.Once
	active   atomic.Pointer[backend]
	initErr  error
)

func current() backend {
	initOnce.Do(func() {
		be, err := choose(os.Getenv(EnvVar))
		if be == nil {
			be = gonumBackend{}
		}
		initErr = err
		active.Store(&be)
	})
	return *active.Load()
}

// Use switches the backend for all later products: "gonum", "openblas" or "auto".
// It exists for tests and benchmarks that compare the two paths; products already
// running finish on the old backend.
func Use(name string) error {
	current()
	be, err := choose(name)
	if err != nil {
		return err
	}
	active.Store(&be)
	return nil
}

func choose(want string) (backend, error) {
	switch want {
	case "", "auto":
		if ob, err := loadOpenBLAS(); err == nil {
			return ob, nil
		}
		return gonumBackend{}, nil
	case "gonum":
		return gonumBackend{}, nil
	case "openblas":
		ob, err := loadOpenBLAS()
		if err != nil {
			return nil, fmt.Errorf("openblas requested: %w", err)
		}
		return ob, nil
	default:
		return nil, fmt.Errorf("BLAS backend %q: want gonum, openblas or auto", want)
	}
}

// Name reports the backend in use: "openblas" or "gonum".
func Name() string { return current().name() }

// Err reports why the backend asked for through SWARMNODE_BLAS could not be used
// and gonum was used instead (nil when the request was honoured or nothing was
// asked for).
func Err() error {
	current()
	return initErr
}

// Sgemm computes C = alpha*op(A)*op(B) + beta*C for row-major matrices, where
// op(X) is X or its transpose, op(A) is m×k, op(B) is k×n and C is m×n.
// lda, ldb and ldc are the row strides of A, B and C as stored.
//
// Large products are split into blocks of rows (or columns) of C computed by
// Threads() goroutines at once, each with a single-threaded library call. OpenBLAS's
// own thread pool is not used: its idle workers spin and yield for a while after
// every product, stealing the cores from the Go code that runs between products.
// The blocks depend on the product's shape only, never on the number of
// goroutines: a library may pick a different kernel for a smaller block (OpenBLAS
// has small-matrix kernels on AVX-512 machines), so blocks that followed the thread
// count would make results depend on it.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	checkDims(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	be := current()
	if !be.splits() || m*n*k < splitFlops || blocks(max(m, n)) < 2 {
		be.sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	split(be, Threads(), transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// SgemmSeq is Sgemm on the calling goroutine only, for callers that already run
// one product per core (attention over batch and heads). With gonum, which
// parallelizes inside, it is the same as Sgemm.
func SgemmSeq(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	checkDims(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	current().sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// splitFlops is the size m·n·k under which a product runs on one goroutine.
const splitFlops = 1 << 21

// splitBlock is the typical block of rows or columns of a split product: large
// enough that the library runs at full speed on each block, small enough that a
// GPT-sized product has a block for every core of a volunteer's machine.
const splitBlock = 256

// blocks is the number of blocks a split product's longer side of size rows (or
// columns) is cut into: a function of the shape alone.
func blocks(size int) int { return min(64, max(1, size/splitBlock)) }

var threads atomic.Int32

// SetThreads sets how many goroutines split one large product (n <= 0 restores
// the default, GOMAXPROCS).
func SetThreads(n int) {
	if n < 0 {
		n = 0
	}
	threads.Store(int32(n))
}

// Threads reports how many goroutines split one large product.
func Threads() int {
	if n := threads.Load(); n > 0 {
		return int(n)
	}
	return runtime.GOMAXPROCS(0)
}

// split computes the product in blocks(size) blocks of C along its longer side,
// w goroutines taking the blocks in turn.
func split(be backend, w int, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	rows := m >= n
	size := n
	if rows {
		size = m
	}
	nb := blocks(size)
	block := func(i int) {
		// Blocks start at multiples of 16 so that the library sees aligned panels.
		lo := (size * i / nb) &^ 15
		hi := (size * (i + 1) / nb) &^ 15
		if i == nb-1 {
			hi = size
		}
		if hi <= lo {
			return
		}
		var pa, pb, pc []float32
		mm, nn := m, n
		if rows {
			mm = hi - lo
			if transA {
				pa = a[lo:]
			} else {
				pa = a[lo*lda:]
			}
			pb, pc = b, c[lo*ldc:]
		} else {
			nn = hi - lo
			if transB {
				pb = b[lo*ldb:]
			} else {
				pb = b[lo:]
			}
			pa, pc = a, c[lo:]
		}
		be.sgemm(transA, transB, mm, nn, k, alpha, pa, lda, pb, ldb, beta, pc, ldc)
	}
	w = max(1, min(w, nb))
	var next atomic.Int32
	work := func() {
		for i := int(next.Add(1)) - 1; i < nb; i = int(next.Add(1)) - 1 {
			block(i)
		}
	}
	var wg sync.WaitGroup
	for range w - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
}

// Gonum runs Sgemm through gonum regardless of the selected backend; it exists so
// that tests and benchmarks can compare the two paths.
func Gonum(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	checkDims(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	gonumBackend{}.sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// checkDims panics on a programming error (buffer too short); the C library would
// otherwise read or write out of bounds.
func checkDims(transA, transB bool, m, n, k, la, lda, lb, ldb, lc, ldc int) {
	ar, ac := stored(transA, m, k)
	br, bc := stored(transB, k, n)
	need := func(rows, cols, ld, have int, what string) {
		if ld < cols || ld < 1 {
			panic(fmt.Sprintf("blas: %s stride %d < %d columns", what, ld, cols))
		}
		if rows > 0 && cols > 0 && have < (rows-1)*ld+cols {
			panic(fmt.Sprintf("blas: %s has %d elements, need %d", what, have, (rows-1)*ld+cols))
		}
	}
	need(ar, ac, lda, la, "A")
	need(br, bc, ldb, lb, "B")
	need(m, n, ldc, lc, "C")
}

// stored returns the shape in memory of an operand used as a rows×cols matrix,
// transposed or not.
func stored(trans bool, rows, cols int) (int, int) {
	if trans {
		return cols, rows
	}
	return rows, cols
}

type gonumBackend struct{}

func (gonumBackend) name() string { return "gonum" }

func (gonumBackend) splits() bool { return false }

var gonumImpl gonum.Implementation

func (gonumBackend) sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	ta, tb := blas.NoTrans, blas.NoTrans
	if transA {
		ta = blas.Trans
	}
	if transB {
		tb = blas.Trans
	}
	gonumImpl.Sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}
