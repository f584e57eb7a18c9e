//go:build !cgo

package blas

import "errors"

func loadOpenBLAS() (backend, error) {
	return nil, errors.New("built without cgo: OpenBLAS cannot be loaded")
}

// SetThreads has no effect without cgo: gonum sizes its own worker pool.
func SetThreads(n int) {}

// Threads reports 0 without cgo (no OpenBLAS).
func Threads() int { return 0 }
