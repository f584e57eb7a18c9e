//go:build !(linux && cgo)

package cuda

import (
	"errors"
	"unsafe"
)

// cgoAvailable reports that this build cannot reach the CUDA libraries.
const cgoAvailable = false

// errNoCgo is what every binding returns in a build without cgo; loadLibraries
// reports the reason before any other binding is reached.
var errNoCgo = errors.New("cuda: built without cgo")

func loadLib(which, path string) error { return errNoCgo }

func drvInit() error { return errNoCgo }

func drvVersion() (int, error) { return 0, errNoCgo }

func drvDeviceCount() (int, error) { return 0, errNoCgo }

func drvDeviceGet(ordinal int) (int, error) { return 0, errNoCgo }

func drvDeviceName(dev int) (string, error) { return "", errNoCgo }

func drvDeviceAttr(dev, attr int) (int, error) { return 0, errNoCgo }

func drvTotalMem(dev int) (int64, error) { return 0, errNoCgo }

func drvPrimaryRetain(dev int) (uintptr, error) { return 0, errNoCgo }

func drvPrimaryRelease(dev int) error { return errNoCgo }

func drvCtxSetCurrent(ctx uintptr) error { return errNoCgo }

func drvCtxSynchronize() error { return errNoCgo }

func drvMemAlloc(n int64) (uint64, error) { return 0, errNoCgo }

func drvMemFree(p uint64) error { return errNoCgo }

func drvMemAllocHost(n int64) (unsafe.Pointer, error) { return nil, errNoCgo }

func drvMemFreeHost(p unsafe.Pointer) error { return errNoCgo }

func drvHtoD(dst uint64, src unsafe.Pointer, n int64, s uintptr) error { return errNoCgo }

func drvDtoH(dst unsafe.Pointer, src uint64, n int64, s uintptr) error { return errNoCgo }

func drvDtoD(dst, src uint64, n int64, s uintptr) error { return errNoCgo }

func drvMemsetD32(dst uint64, v uint32, n int64, s uintptr) error { return errNoCgo }

func drvStreamCreate() (uintptr, error) { return 0, errNoCgo }

func drvStreamDestroy(s uintptr) error { return errNoCgo }

func drvStreamSync(s uintptr) error { return errNoCgo }

func drvStreamQuery(s uintptr) error { return errNoCgo }

func drvEventCreate() (uintptr, error) { return 0, errNoCgo }

func drvEventRecord(e, s uintptr) error { return errNoCgo }

func drvEventSync(e uintptr) error { return errNoCgo }

func drvEventElapsed(a, b uintptr) (float32, error) { return 0, errNoCgo }

func drvEventDestroy(e uintptr) error { return errNoCgo }

func drvModuleLoad(image []byte) (uintptr, error) { return 0, errNoCgo }

func drvModuleUnload(m uintptr) error { return errNoCgo }

func drvModuleFunction(m uintptr, name string) (uintptr, error) { return 0, errNoCgo }

func drvFuncGetAttr(f uintptr, attr int) (int, error) { return 0, errNoCgo }

func drvFuncSetAttr(f uintptr, attr, v int) error { return errNoCgo }

func drvLaunch(f uintptr, grid, block [3]uint32, shmem uint32, s uintptr, params unsafe.Pointer, name string) error {
	return errNoCgo
}

func drvCaptureBegin(s uintptr) error { return errNoCgo }

func drvCaptureEnd(s uintptr) (uintptr, error) { return 0, errNoCgo }

func drvGraphInstantiate(g uintptr) (uintptr, error) { return 0, errNoCgo }

func drvGraphLaunch(e, s uintptr) error { return errNoCgo }

func drvGraphExecDestroy(e uintptr) error { return errNoCgo }

func drvGraphDestroy(g uintptr) error { return errNoCgo }

func blasCreate() (uintptr, error) { return 0, errNoCgo }

func blasDestroy(h uintptr) error { return errNoCgo }

func blasSetStream(h, s uintptr) error { return errNoCgo }

func blasSetMathMode(h uintptr, mode int) error { return errNoCgo }

func blasSetWorkspace(h uintptr, ws uint64, n int64) error { return errNoCgo }

func blasVersion(h uintptr) (int, error) { return 0, errNoCgo }

func blasGemmEx(h uintptr, ta, tb bool, m, n, k int, alpha float32, a uint64, atype, lda int, b uint64, btype, ldb int, beta float32, c uint64, ctype, ldc, compute int) error {
	return errNoCgo
}

func rtcVersion() (int, int, error) { return 0, 0, errNoCgo }

func rtcCompile(src, name string, opts []string) (cubin []byte, log string, err error) {
	return nil, "", errNoCgo
}

func cAlloc(n int) unsafe.Pointer { return nil }

func cFree(p unsafe.Pointer) {}
