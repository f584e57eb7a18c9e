package cuda

import (
	"errors"
	"fmt"
)

// Error is a failed CUDA driver, cuBLAS or NVRTC call.
type Error struct {
	// Op names the call (and, for launches, the kernel).
	Op string
	// Code is the library's status code.
	Code int
	// Msg is the library's description of Code.
	Msg string
}

func (e *Error) Error() string { return fmt.Sprintf("cuda: %s: %s", e.Op, e.Msg) }

// ErrClosed is returned by Device.Do after Close.
var ErrClosed = errors.New("cuda: device is closed")

func cublasStatusName(code int) string {
	names := map[int]string{
		1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
		8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
		14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
	}
	if n, ok := names[code]; ok {
		return fmt.Sprintf("%s (%d)", n, code)
	}
	return fmt.Sprintf("cuBLAS status %d", code)
}
