//go:build cgo

package vec

import "testing"

// TestPortableC runs the kernel tests on the portable C loops, which machines
// without AVX2 use.
func TestPortableC(t *testing.T) {
	saved := avx2
	avx2 = false
	defer func() { avx2 = saved }()
	t.Run("expshift", TestExpShift)
	t.Run("gelu", TestGelu)
}
