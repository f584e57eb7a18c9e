//go:build !cgo

package blas

import "errors"

func loadOpenBLAS() (backend, error) {
	return nil, errors.New("built without cgo: OpenBLAS cannot be loaded")
}
