//go:build cgo

package blas

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float*, int,
                         const float*, int, float, float*, int);
typedef void (*setthreads_fn)(int);


static void *ob_handle;
static sgemm_fn ob_sgemm;
static setthreads_fn ob_set_threads;


static int ob_open(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) return 0;
	sgemm_fn f = (sgemm_fn)dlsym(h, "cblas_sgemm");
	if (!f) { dlclose(h); return 0; }
	ob_handle = h;
	ob_sgemm = f;
	ob_set_threads = (setthreads_fn)dlsym(h, "openblas_set_num_threads");

	return 1;
}

// CBLAS enum values (cblas.h): RowMajor 101, NoTrans 111, Trans 112.
static void ob_call_sgemm(int ta, int tb, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb,
                          float beta, float *c, int ldc) {
	ob_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static void ob_call_set_threads(int n) { if (ob_set_threads) ob_set_threads(n); }

*/
import "C"

import (
	"errors"
	"unsafe"
)

// openblasPaths are tried in order; Debian installs the pthread build under
// openblas-pthread/ and points libopenblas.so.0 at it through alternatives.
var openblasPaths = []string{
	"libopenblas.so.0",
	"libopenblas.so",
	"/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
	"/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
	"/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
	"/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
	"/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
	"/usr/lib64/libopenblas.so.0",
	"/usr/local/lib/libopenblas.so.0",
	"/usr/local/lib/libopenblas.so",
	"/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
	"/usr/local/opt/openblas/lib/libopenblas.dylib",
}

type openblasBackend struct{}

var openblasLoaded bool

func loadOpenBLAS() (backend, error) {
	if openblasLoaded {
		return openblasBackend{}, nil
	}
	for _, p := range openblasPaths {
		cp := C.CString(p)
		ok := C.ob_open(cp)
		C.free(unsafe.Pointer(cp))
		if ok != 0 {
			openblasLoaded = true
			// Sgemm splits large products across goroutines itself; see Sgemm.
			C.ob_call_set_threads(1)
			return openblasBackend{}, nil
		}
	}
	return nil, errors.New("no libopenblas with cblas_sgemm found")
}

func (openblasBackend) name() string { return "openblas" }

func (openblasBackend) splits() bool { return true }

func (openblasBackend) sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	ta, tb := 0, 0
	if transA {
		ta = 1
	}
	if transB {
		tb = 1
	}
	// k == 0 still scales C by beta; the pointers must then be valid, not nil.
	var pa, pb *float32
	if len(a) > 0 {
		pa = &a[0]
	}
	if len(b) > 0 {
		pb = &b[0]
	}
	C.ob_call_sgemm(C.int(ta), C.int(tb), C.int(m), C.int(n), C.int(k), C.float(alpha),
		(*C.float)(unsafe.Pointer(pa)), C.int(lda), (*C.float)(unsafe.Pointer(pb)), C.int(ldb),
		C.float(beta), (*C.float)(unsafe.Pointer(&c[0])), C.int(ldc))
}
