//go:build linux && cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdio.h>

typedef int CUresult;
typedef int CUdevice;
typedef void* CUcontext;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUstream;
typedef void* CUevent;
typedef void* CUgraph;
typedef void* CUgraphExec;
typedef unsigned long long CUdeviceptr;
typedef void* cublasHandle;
typedef void* nvrtcProgram;

#define DECL(ret, name, args) typedef ret (*name##_t) args; static name##_t p_##name;
DECL(CUresult, cuInit, (unsigned int))
DECL(CUresult, cuDriverGetVersion, (int*))
DECL(CUresult, cuDeviceGetCount, (int*))
DECL(CUresult, cuDeviceGet, (CUdevice*, int))
DECL(CUresult, cuDeviceGetName, (char*, int, CUdevice))
DECL(CUresult, cuDeviceGetAttribute, (int*, int, CUdevice))
DECL(CUresult, cuDeviceTotalMem, (size_t*, CUdevice))
DECL(CUresult, cuDevicePrimaryCtxRetain, (CUcontext*, CUdevice))
DECL(CUresult, cuDevicePrimaryCtxRelease, (CUdevice))
DECL(CUresult, cuCtxSetCurrent, (CUcontext))
DECL(CUresult, cuCtxSynchronize, (void))
DECL(CUresult, cuMemAlloc, (CUdeviceptr*, size_t))
DECL(CUresult, cuMemFree, (CUdeviceptr))
DECL(CUresult, cuMemAllocHost, (void**, size_t))
DECL(CUresult, cuMemFreeHost, (void*))
DECL(CUresult, cuMemcpyHtoDAsync, (CUdeviceptr, const void*, size_t, CUstream))
DECL(CUresult, cuMemcpyDtoHAsync, (void*, CUdeviceptr, size_t, CUstream))
DECL(CUresult, cuMemcpyDtoDAsync, (CUdeviceptr, CUdeviceptr, size_t, CUstream))
DECL(CUresult, cuMemsetD32Async, (CUdeviceptr, unsigned int, size_t, CUstream))
DECL(CUresult, cuStreamCreate, (CUstream*, unsigned int))
DECL(CUresult, cuStreamDestroy, (CUstream))
DECL(CUresult, cuStreamSynchronize, (CUstream))
DECL(CUresult, cuStreamQuery, (CUstream))
DECL(CUresult, cuEventCreate, (CUevent*, unsigned int))
DECL(CUresult, cuEventRecord, (CUevent, CUstream))
DECL(CUresult, cuEventSynchronize, (CUevent))
DECL(CUresult, cuEventElapsedTime, (float*, CUevent, CUevent))
DECL(CUresult, cuEventDestroy, (CUevent))
DECL(CUresult, cuModuleLoadData, (CUmodule*, const void*))
DECL(CUresult, cuModuleUnload, (CUmodule))
DECL(CUresult, cuModuleGetFunction, (CUfunction*, CUmodule, const char*))
DECL(CUresult, cuFuncSetAttribute, (CUfunction, int, int))
DECL(CUresult, cuFuncGetAttribute, (int*, int, CUfunction))
DECL(CUresult, cuLaunchKernel, (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void**, void**))
DECL(CUresult, cuGetErrorName, (CUresult, const char**))
DECL(CUresult, cuGetErrorString, (CUresult, const char**))
DECL(CUresult, cuStreamBeginCapture, (CUstream, int))
DECL(CUresult, cuStreamEndCapture, (CUstream, CUgraph*))
DECL(CUresult, cuGraphInstantiateWithFlags, (CUgraphExec*, CUgraph, unsigned long long))
DECL(CUresult, cuGraphLaunch, (CUgraphExec, CUstream))
DECL(CUresult, cuGraphExecDestroy, (CUgraphExec))
DECL(CUresult, cuGraphDestroy, (CUgraph))

DECL(int, cublasCreate, (cublasHandle*))
DECL(int, cublasDestroy, (cublasHandle))
DECL(int, cublasSetStream, (cublasHandle, CUstream))
DECL(int, cublasSetMathMode, (cublasHandle, int))
DECL(int, cublasSetWorkspace, (cublasHandle, void*, size_t))
DECL(int, cublasGetVersion, (cublasHandle, int*))
DECL(int, cublasGemmEx, (cublasHandle, int, int, int, int, int, const void*, const void*, int, int,
                          const void*, int, int, const void*, void*, int, int, int, int))

DECL(int, nvrtcVersion, (int*, int*))
DECL(int, nvrtcCreateProgram, (nvrtcProgram*, const char*, const char*, int, const char* const*, const char* const*))
DECL(int, nvrtcCompileProgram, (nvrtcProgram, int, const char* const*))
DECL(int, nvrtcGetProgramLogSize, (nvrtcProgram, size_t*))
DECL(int, nvrtcGetProgramLog, (nvrtcProgram, char*))
DECL(int, nvrtcGetCUBINSize, (nvrtcProgram, size_t*))
DECL(int, nvrtcGetCUBIN, (nvrtcProgram, char*))
DECL(int, nvrtcDestroyProgram, (nvrtcProgram*))
DECL(const char*, nvrtcGetErrorString, (int))

static char sn_err[1024];

// sn_sym resolves the first of up to two names; it reports the missing name in sn_err.
static void* sn_sym(void* h, const char* a, const char* b) {
	void* p = dlsym(h, a);
	if (!p && b) p = dlsym(h, b);
	if (!p) snprintf(sn_err, sizeof sn_err, "symbol %s not found", a);
	return p;
}

#define LOAD(h, name, sym, alt) p_##name = (name##_t)sn_sym(h, sym, alt); if (!p_##name) return sn_err;

static void* sn_open(const char* path) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { const char* e = dlerror(); snprintf(sn_err, sizeof sn_err, "%s", e ? e : path); }
	return h;
}

static const char* sn_load_cuda(const char* path) {
	void* h = sn_open(path);
	if (!h) return sn_err;
	LOAD(h, cuInit, "cuInit", 0)
	LOAD(h, cuDriverGetVersion, "cuDriverGetVersion", 0)
	LOAD(h, cuDeviceGetCount, "cuDeviceGetCount", 0)
	LOAD(h, cuDeviceGet, "cuDeviceGet", 0)
	LOAD(h, cuDeviceGetName, "cuDeviceGetName", 0)
	LOAD(h, cuDeviceGetAttribute, "cuDeviceGetAttribute", 0)
	LOAD(h, cuDeviceTotalMem, "cuDeviceTotalMem_v2", 0)
	LOAD(h, cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 0)
	LOAD(h, cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease")
	LOAD(h, cuCtxSetCurrent, "cuCtxSetCurrent", 0)
	LOAD(h, cuCtxSynchronize, "cuCtxSynchronize", 0)
	LOAD(h, cuMemAlloc, "cuMemAlloc_v2", 0)
	LOAD(h, cuMemFree, "cuMemFree_v2", 0)
	LOAD(h, cuMemAllocHost, "cuMemAllocHost_v2", 0)
	LOAD(h, cuMemFreeHost, "cuMemFreeHost", 0)
	LOAD(h, cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", 0)
	LOAD(h, cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", 0)
	LOAD(h, cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2", 0)
	LOAD(h, cuMemsetD32Async, "cuMemsetD32Async", 0)
	LOAD(h, cuStreamCreate, "cuStreamCreate", 0)
	LOAD(h, cuStreamDestroy, "cuStreamDestroy_v2", 0)
	LOAD(h, cuStreamSynchronize, "cuStreamSynchronize", 0)
	LOAD(h, cuStreamQuery, "cuStreamQuery", 0)
	LOAD(h, cuEventCreate, "cuEventCreate", 0)
	LOAD(h, cuEventRecord, "cuEventRecord", 0)
	LOAD(h, cuEventSynchronize, "cuEventSynchronize", 0)
	LOAD(h, cuEventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime")
	LOAD(h, cuEventDestroy, "cuEventDestroy_v2", 0)
	LOAD(h, cuModuleLoadData, "cuModuleLoadData", 0)
	LOAD(h, cuModuleUnload, "cuModuleUnload", 0)
	LOAD(h, cuModuleGetFunction, "cuModuleGetFunction", 0)
	LOAD(h, cuFuncSetAttribute, "cuFuncSetAttribute", 0)
	LOAD(h, cuFuncGetAttribute, "cuFuncGetAttribute", 0)
	LOAD(h, cuLaunchKernel, "cuLaunchKernel", 0)
	LOAD(h, cuGetErrorName, "cuGetErrorName", 0)
	LOAD(h, cuGetErrorString, "cuGetErrorString", 0)
	LOAD(h, cuStreamBeginCapture, "cuStreamBeginCapture_v2", 0)
	LOAD(h, cuStreamEndCapture, "cuStreamEndCapture", 0)
	LOAD(h, cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags", 0)
	LOAD(h, cuGraphLaunch, "cuGraphLaunch", 0)
	LOAD(h, cuGraphExecDestroy, "cuGraphExecDestroy", 0)
	LOAD(h, cuGraphDestroy, "cuGraphDestroy", 0)
	return 0;
}

static const char* sn_load_cublas(const char* path) {
	void* h = sn_open(path);
	if (!h) return sn_err;
	LOAD(h, cublasCreate, "cublasCreate_v2", 0)
	LOAD(h, cublasDestroy, "cublasDestroy_v2", 0)
	LOAD(h, cublasSetStream, "cublasSetStream_v2", 0)
	LOAD(h, cublasSetMathMode, "cublasSetMathMode", 0)
	LOAD(h, cublasSetWorkspace, "cublasSetWorkspace_v2", 0)
	LOAD(h, cublasGetVersion, "cublasGetVersion_v2", 0)
	LOAD(h, cublasGemmEx, "cublasGemmEx", 0)
	return 0;
}

static const char* sn_load_nvrtc(const char* path) {
	void* h = sn_open(path);
	if (!h) return sn_err;
	LOAD(h, nvrtcVersion, "nvrtcVersion", 0)
	LOAD(h, nvrtcCreateProgram, "nvrtcCreateProgram", 0)
	LOAD(h, nvrtcCompileProgram, "nvrtcCompileProgram", 0)
	LOAD(h, nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize", 0)
	LOAD(h, nvrtcGetProgramLog, "nvrtcGetProgramLog", 0)
	LOAD(h, nvrtcGetCUBINSize, "nvrtcGetCUBINSize", 0)
	LOAD(h, nvrtcGetCUBIN, "nvrtcGetCUBIN", 0)
	LOAD(h, nvrtcDestroyProgram, "nvrtcDestroyProgram", 0)
	LOAD(h, nvrtcGetErrorString, "nvrtcGetErrorString", 0)
	return 0;
}

static CUresult sn_cuInit(void) { return p_cuInit(0); }
static CUresult sn_cuDriverGetVersion(int* v) { return p_cuDriverGetVersion(v); }
static CUresult sn_cuDeviceGetCount(int* n) { return p_cuDeviceGetCount(n); }
static CUresult sn_cuDeviceGet(CUdevice* d, int i) { return p_cuDeviceGet(d, i); }
static CUresult sn_cuDeviceGetName(char* s, int n, CUdevice d) { return p_cuDeviceGetName(s, n, d); }
static CUresult sn_cuDeviceGetAttribute(int* v, int a, CUdevice d) { return p_cuDeviceGetAttribute(v, a, d); }
static CUresult sn_cuDeviceTotalMem(size_t* b, CUdevice d) { return p_cuDeviceTotalMem(b, d); }
static CUresult sn_cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { return p_cuDevicePrimaryCtxRetain(c, d); }
static CUresult sn_cuDevicePrimaryCtxRelease(CUdevice d) { return p_cuDevicePrimaryCtxRelease(d); }
static CUresult sn_cuCtxSetCurrent(CUcontext c) { return p_cuCtxSetCurrent(c); }
static CUresult sn_cuCtxSynchronize(void) { return p_cuCtxSynchronize(); }
static CUresult sn_cuMemAlloc(CUdeviceptr* p, size_t n) { return p_cuMemAlloc(p, n); }
static CUresult sn_cuMemFree(CUdeviceptr p) { return p_cuMemFree(p); }
static CUresult sn_cuMemAllocHost(void** p, size_t n) { return p_cuMemAllocHost(p, n); }
static CUresult sn_cuMemFreeHost(void* p) { return p_cuMemFreeHost(p); }
static CUresult sn_cuMemcpyHtoDAsync(CUdeviceptr d, const void* h, size_t n, CUstream s) { return p_cuMemcpyHtoDAsync(d, h, n, s); }
static CUresult sn_cuMemcpyDtoHAsync(void* h, CUdeviceptr d, size_t n, CUstream s) { return p_cuMemcpyDtoHAsync(h, d, n, s); }
static CUresult sn_cuMemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr s0, size_t n, CUstream s) { return p_cuMemcpyDtoDAsync(d, s0, n, s); }
static CUresult sn_cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { return p_cuMemsetD32Async(d, v, n, s); }
static CUresult sn_cuStreamCreate(CUstream* s) { return p_cuStreamCreate(s, 1); }
static CUresult sn_cuStreamDestroy(CUstream s) { return p_cuStreamDestroy(s); }
static CUresult sn_cuStreamSynchronize(CUstream s) { return p_cuStreamSynchronize(s); }
static CUresult sn_cuStreamQuery(CUstream s) { return p_cuStreamQuery(s); }
static CUresult sn_cuEventCreate(CUevent* e) { return p_cuEventCreate(e, 0); }
static CUresult sn_cuEventRecord(CUevent e, CUstream s) { return p_cuEventRecord(e, s); }
static CUresult sn_cuEventSynchronize(CUevent e) { return p_cuEventSynchronize(e); }
static CUresult sn_cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return p_cuEventElapsedTime(ms, a, b); }
static CUresult sn_cuEventDestroy(CUevent e) { return p_cuEventDestroy(e); }
static CUresult sn_cuModuleLoadData(CUmodule* m, const void* img) { return p_cuModuleLoadData(m, img); }
static CUresult sn_cuModuleUnload(CUmodule m) { return p_cuModuleUnload(m); }
static CUresult sn_cuModuleGetFunction(CUfunction* f, CUmodule m, const char* n) { return p_cuModuleGetFunction(f, m, n); }
static CUresult sn_cuFuncSetAttribute(CUfunction f, int a, int v) { return p_cuFuncSetAttribute(f, a, v); }
static CUresult sn_cuFuncGetAttribute(int* v, int a, CUfunction f) { return p_cuFuncGetAttribute(v, a, f); }
static CUresult sn_cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                  unsigned shmem, CUstream s, void** params) {
	return p_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params, 0);
}
static const char* sn_cuErrorText(CUresult r) {
	const char* name = 0; const char* desc = 0;
	if (p_cuGetErrorName) p_cuGetErrorName(r, &name);
	if (p_cuGetErrorString) p_cuGetErrorString(r, &desc);
	snprintf(sn_err, sizeof sn_err, "%s (%d): %s", name ? name : "CUDA_ERROR", r, desc ? desc : "unknown error");
	return sn_err;
}
static CUresult sn_cuStreamBeginCapture(CUstream s) { return p_cuStreamBeginCapture(s, 2); } // relaxed: cuBLAS may query the stream
static CUresult sn_cuStreamEndCapture(CUstream s, CUgraph* g) { return p_cuStreamEndCapture(s, g); }
static CUresult sn_cuGraphInstantiate(CUgraphExec* e, CUgraph g) { return p_cuGraphInstantiateWithFlags(e, g, 0); }
static CUresult sn_cuGraphLaunch(CUgraphExec e, CUstream s) { return p_cuGraphLaunch(e, s); }
static CUresult sn_cuGraphExecDestroy(CUgraphExec e) { return p_cuGraphExecDestroy(e); }
static CUresult sn_cuGraphDestroy(CUgraph g) { return p_cuGraphDestroy(g); }

static int sn_cublasCreate(cublasHandle* h) { return p_cublasCreate(h); }
static int sn_cublasDestroy(cublasHandle h) { return p_cublasDestroy(h); }
static int sn_cublasSetStream(cublasHandle h, CUstream s) { return p_cublasSetStream(h, s); }
static int sn_cublasSetMathMode(cublasHandle h, int m) { return p_cublasSetMathMode(h, m); }
static int sn_cublasSetWorkspace(cublasHandle h, CUdeviceptr w, size_t n) { return p_cublasSetWorkspace(h, (void*)w, n); }
static int sn_cublasGetVersion(cublasHandle h, int* v) { return p_cublasGetVersion(h, v); }
static int sn_cublasGemmEx(cublasHandle h, int ta, int tb, int m, int n, int k, float alpha,
                           CUdeviceptr A, int atype, int lda, CUdeviceptr B, int btype, int ldb, float beta,
                           CUdeviceptr C, int ctype, int ldc, int compute) {
	return p_cublasGemmEx(h, ta, tb, m, n, k, &alpha, (const void*)A, atype, lda, (const void*)B, btype, ldb,
	                      &beta, (void*)C, ctype, ldc, compute, -1);
}

static int sn_nvrtcVersion(int* major, int* minor) { return p_nvrtcVersion(major, minor); }
static const char* sn_nvrtcErrorString(int r) { return p_nvrtcGetErrorString(r); }

// sn_nvrtc_compile compiles src to a cubin. On return *cubin and *log are malloc'ed
// (either may be NULL); the caller frees them.
static int sn_nvrtc_compile(const char* src, const char* name, int nopt, const char** opts,
                            char** cubin, size_t* cubinSize, char** log, int* stage) {
	nvrtcProgram prog = 0;
	*cubin = 0; *cubinSize = 0; *log = 0; *stage = 0;
	int r = p_nvrtcCreateProgram(&prog, src, name, 0, 0, 0);
	if (r) return r;
	*stage = 1;
	int cr = p_nvrtcCompileProgram(prog, nopt, (const char* const*)opts);
	size_t ls = 0;
	if (p_nvrtcGetProgramLogSize(prog, &ls) == 0 && ls > 1) {
		*log = (char*)malloc(ls);
		if (*log && p_nvrtcGetProgramLog(prog, *log) != 0) { free(*log); *log = 0; }
	}
	if (cr) { p_nvrtcDestroyProgram(&prog); return cr; }
	*stage = 2;
	r = p_nvrtcGetCUBINSize(prog, cubinSize);
	if (r == 0) {
		*cubin = (char*)malloc(*cubinSize);
		r = p_nvrtcGetCUBIN(prog, *cubin);
	}
	p_nvrtcDestroyProgram(&prog);
	return r;
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// cgoAvailable reports that this build can reach the CUDA libraries.
const cgoAvailable = true

func loadLib(which, path string) error {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	var e *C.char
	switch which {
	case "cuda":
		e = C.sn_load_cuda(cp)
	case "cublas":
		e = C.sn_load_cublas(cp)
	case "nvrtc":
		e = C.sn_load_nvrtc(cp)
	default:
		return fmt.Errorf("unknown library %q", which)
	}
	if e != nil {
		return fmt.Errorf("%s", C.GoString(e))
	}
	return nil
}

func cuCheck(r C.CUresult, what string) error {
	if r == 0 {
		return nil
	}
	return &Error{Op: what, Code: int(r), Msg: C.GoString(C.sn_cuErrorText(r))}
}

func cublasCheck(r C.int, what string) error {
	if r == 0 {
		return nil
	}
	return &Error{Op: what, Code: int(r), Msg: cublasStatusName(int(r))}
}

func drvInit() error { return cuCheck(C.sn_cuInit(), "cuInit") }

func drvVersion() (int, error) {
	var v C.int
	return int(v), cuCheck(C.sn_cuDriverGetVersion(&v), "cuDriverGetVersion")
}

func drvDeviceCount() (int, error) {
	var n C.int
	return int(n), cuCheck(C.sn_cuDeviceGetCount(&n), "cuDeviceGetCount")
}

func drvDeviceGet(ordinal int) (int, error) {
	var d C.CUdevice
	return int(d), cuCheck(C.sn_cuDeviceGet(&d, C.int(ordinal)), "cuDeviceGet")
}

func drvDeviceName(dev int) (string, error) {
	buf := (*C.char)(C.malloc(256))
	defer C.free(unsafe.Pointer(buf))
	if err := cuCheck(C.sn_cuDeviceGetName(buf, 256, C.CUdevice(dev)), "cuDeviceGetName"); err != nil {
		return "", err
	}
	return C.GoString(buf), nil
}

func drvDeviceAttr(dev, attr int) (int, error) {
	var v C.int
	return int(v), cuCheck(C.sn_cuDeviceGetAttribute(&v, C.int(attr), C.CUdevice(dev)), "cuDeviceGetAttribute")
}

func drvTotalMem(dev int) (int64, error) {
	var b C.size_t
	return int64(b), cuCheck(C.sn_cuDeviceTotalMem(&b, C.CUdevice(dev)), "cuDeviceTotalMem")
}

func drvPrimaryRetain(dev int) (uintptr, error) {
	var c C.CUcontext
	err := cuCheck(C.sn_cuDevicePrimaryCtxRetain(&c, C.CUdevice(dev)), "cuDevicePrimaryCtxRetain")
	return uintptr(c), err
}

func drvPrimaryRelease(dev int) error {
	return cuCheck(C.sn_cuDevicePrimaryCtxRelease(C.CUdevice(dev)), "cuDevicePrimaryCtxRelease")
}

func drvCtxSetCurrent(ctx uintptr) error {
	return cuCheck(C.sn_cuCtxSetCurrent(*(*C.CUcontext)(unsafe.Pointer(&ctx))), "cuCtxSetCurrent")
}

func drvCtxSynchronize() error { return cuCheck(C.sn_cuCtxSynchronize(), "cuCtxSynchronize") }

func drvMemAlloc(n int64) (uint64, error) {
	var p C.CUdeviceptr
	err := cuCheck(C.sn_cuMemAlloc(&p, C.size_t(n)), fmt.Sprintf("cuMemAlloc(%d bytes)", n))
	return uint64(p), err
}

func drvMemFree(p uint64) error { return cuCheck(C.sn_cuMemFree(C.CUdeviceptr(p)), "cuMemFree") }

func drvMemAllocHost(n int64) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	err := cuCheck(C.sn_cuMemAllocHost(&p, C.size_t(n)), fmt.Sprintf("cuMemAllocHost(%d bytes)", n))
	return p, err
}

func drvMemFreeHost(p unsafe.Pointer) error { return cuCheck(C.sn_cuMemFreeHost(p), "cuMemFreeHost") }

func drvHtoD(dst uint64, src unsafe.Pointer, n int64, s uintptr) error {
	return cuCheck(C.sn_cuMemcpyHtoDAsync(C.CUdeviceptr(dst), src, C.size_t(n), *(*C.CUstream)(unsafe.Pointer(&s))), "cuMemcpyHtoDAsync")
}

func drvDtoH(dst unsafe.Pointer, src uint64, n int64, s uintptr) error {
	return cuCheck(C.sn_cuMemcpyDtoHAsync(dst, C.CUdeviceptr(src), C.size_t(n), *(*C.CUstream)(unsafe.Pointer(&s))), "cuMemcpyDtoHAsync")
}

func drvDtoD(dst, src uint64, n int64, s uintptr) error {
	return cuCheck(C.sn_cuMemcpyDtoDAsync(C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n), *(*C.CUstream)(unsafe.Pointer(&s))), "cuMemcpyDtoDAsync")
}

func drvMemsetD32(dst uint64, v uint32, n int64, s uintptr) error {
	return cuCheck(C.sn_cuMemsetD32Async(C.CUdeviceptr(dst), C.uint(v), C.size_t(n), *(*C.CUstream)(unsafe.Pointer(&s))), "cuMemsetD32Async")
}

func drvStreamCreate() (uintptr, error) {
	var s C.CUstream
	err := cuCheck(C.sn_cuStreamCreate(&s), "cuStreamCreate")
	return uintptr(s), err
}

func drvStreamDestroy(s uintptr) error {
	return cuCheck(C.sn_cuStreamDestroy(*(*C.CUstream)(unsafe.Pointer(&s))), "cuStreamDestroy")
}

func drvStreamSync(s uintptr) error {
	return cuCheck(C.sn_cuStreamSynchronize(*(*C.CUstream)(unsafe.Pointer(&s))), "cuStreamSynchronize")
}

// drvStreamQuery reports an error left by earlier asynchronous work; "not ready"
// (600) only means work is still queued.
func drvStreamQuery(s uintptr) error {
	r := C.sn_cuStreamQuery(*(*C.CUstream)(unsafe.Pointer(&s)))
	if r == 600 {
		return nil
	}
	return cuCheck(r, "cuStreamQuery")
}

func drvEventCreate() (uintptr, error) {
	var e C.CUevent
	err := cuCheck(C.sn_cuEventCreate(&e), "cuEventCreate")
	return uintptr(e), err
}

func drvEventRecord(e, s uintptr) error {
	return cuCheck(C.sn_cuEventRecord(*(*C.CUevent)(unsafe.Pointer(&e)), *(*C.CUstream)(unsafe.Pointer(&s))), "cuEventRecord")
}

func drvEventSync(e uintptr) error {
	return cuCheck(C.sn_cuEventSynchronize(*(*C.CUevent)(unsafe.Pointer(&e))), "cuEventSynchronize")
}

func drvEventElapsed(a, b uintptr) (float32, error) {
	var ms C.float
	err := cuCheck(C.sn_cuEventElapsedTime(&ms, *(*C.CUevent)(unsafe.Pointer(&a)), *(*C.CUevent)(unsafe.Pointer(&b))), "cuEventElapsedTime")
	return float32(ms), err
}

func drvEventDestroy(e uintptr) error {
	return cuCheck(C.sn_cuEventDestroy(*(*C.CUevent)(unsafe.Pointer(&e))), "cuEventDestroy")
}

func drvModuleLoad(image []byte) (uintptr, error) {
	// The driver reads the image during the call only, but it must not move: copy it to C memory.
	cimg := C.CBytes(image)
	defer C.free(cimg)
	var m C.CUmodule
	err := cuCheck(C.sn_cuModuleLoadData(&m, cimg), "cuModuleLoadData")
	return uintptr(m), err
}

func drvModuleUnload(m uintptr) error {
	return cuCheck(C.sn_cuModuleUnload(*(*C.CUmodule)(unsafe.Pointer(&m))), "cuModuleUnload")
}

func drvModuleFunction(m uintptr, name string) (uintptr, error) {
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var f C.CUfunction
	err := cuCheck(C.sn_cuModuleGetFunction(&f, *(*C.CUmodule)(unsafe.Pointer(&m)), cn), "cuModuleGetFunction("+name+")")
	return uintptr(f), err
}

func drvFuncSetAttr(f uintptr, attr, v int) error {
	return cuCheck(C.sn_cuFuncSetAttribute(*(*C.CUfunction)(unsafe.Pointer(&f)), C.int(attr), C.int(v)), "cuFuncSetAttribute")
}

func drvFuncGetAttr(f uintptr, attr int) (int, error) {
	var v C.int
	err := cuCheck(C.sn_cuFuncGetAttribute(&v, C.int(attr), *(*C.CUfunction)(unsafe.Pointer(&f))), "cuFuncGetAttribute")
	return int(v), err
}

// drvLaunch launches f; params points to C memory holding the argument pointer array.
func drvLaunch(f uintptr, grid, block [3]uint32, shmem uint32, s uintptr, params unsafe.Pointer, name string) error {
	r := C.sn_cuLaunchKernel(*(*C.CUfunction)(unsafe.Pointer(&f)), C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block[0]), C.uint(block[1]), C.uint(block[2]), C.uint(shmem), *(*C.CUstream)(unsafe.Pointer(&s)), (*unsafe.Pointer)(params))
	if r != 0 {
		return cuCheck(r, "launch "+name)
	}
	return nil
}

func drvCaptureBegin(s uintptr) error {
	return cuCheck(C.sn_cuStreamBeginCapture(*(*C.CUstream)(unsafe.Pointer(&s))), "cuStreamBeginCapture")
}

func drvCaptureEnd(s uintptr) (uintptr, error) {
	var g C.CUgraph
	err := cuCheck(C.sn_cuStreamEndCapture(*(*C.CUstream)(unsafe.Pointer(&s)), &g), "cuStreamEndCapture")
	return uintptr(g), err
}

func drvGraphInstantiate(g uintptr) (uintptr, error) {
	var e C.CUgraphExec
	err := cuCheck(C.sn_cuGraphInstantiate(&e, *(*C.CUgraph)(unsafe.Pointer(&g))), "cuGraphInstantiateWithFlags")
	return uintptr(e), err
}

func drvGraphLaunch(e, s uintptr) error {
	return cuCheck(C.sn_cuGraphLaunch(*(*C.CUgraphExec)(unsafe.Pointer(&e)), *(*C.CUstream)(unsafe.Pointer(&s))), "cuGraphLaunch")
}

func drvGraphExecDestroy(e uintptr) error {
	return cuCheck(C.sn_cuGraphExecDestroy(*(*C.CUgraphExec)(unsafe.Pointer(&e))), "cuGraphExecDestroy")
}

func drvGraphDestroy(g uintptr) error {
	return cuCheck(C.sn_cuGraphDestroy(*(*C.CUgraph)(unsafe.Pointer(&g))), "cuGraphDestroy")
}

func blasCreate() (uintptr, error) {
	var h C.cublasHandle
	err := cublasCheck(C.sn_cublasCreate(&h), "cublasCreate")
	return uintptr(h), err
}

func blasDestroy(h uintptr) error {
	return cublasCheck(C.sn_cublasDestroy(*(*C.cublasHandle)(unsafe.Pointer(&h))), "cublasDestroy")
}

func blasSetStream(h, s uintptr) error {
	return cublasCheck(C.sn_cublasSetStream(*(*C.cublasHandle)(unsafe.Pointer(&h)), *(*C.CUstream)(unsafe.Pointer(&s))), "cublasSetStream")
}

func blasSetMathMode(h uintptr, mode int) error {
	return cublasCheck(C.sn_cublasSetMathMode(*(*C.cublasHandle)(unsafe.Pointer(&h)), C.int(mode)), "cublasSetMathMode")
}

func blasSetWorkspace(h uintptr, ws uint64, n int64) error {
	return cublasCheck(C.sn_cublasSetWorkspace(*(*C.cublasHandle)(unsafe.Pointer(&h)), C.CUdeviceptr(ws), C.size_t(n)), "cublasSetWorkspace")
}

func blasVersion(h uintptr) (int, error) {
	var v C.int
	return int(v), cublasCheck(C.sn_cublasGetVersion(*(*C.cublasHandle)(unsafe.Pointer(&h)), &v), "cublasGetVersion")
}

// blasGemmEx is cublasGemmEx in cuBLAS's own column-major terms.
func blasGemmEx(h uintptr, ta, tb bool, m, n, k int, alpha float32, a uint64, atype, lda int,
	b uint64, btype, ldb int, beta float32, c uint64, ctype, ldc, compute int) error {
	op := func(t bool) C.int {
		if t {
			return 1
		}
		return 0
	}
	r := C.sn_cublasGemmEx(*(*C.cublasHandle)(unsafe.Pointer(&h)), op(ta), op(tb), C.int(m), C.int(n), C.int(k), C.float(alpha),
		C.CUdeviceptr(a), C.int(atype), C.int(lda), C.CUdeviceptr(b), C.int(btype), C.int(ldb), C.float(beta),
		C.CUdeviceptr(c), C.int(ctype), C.int(ldc), C.int(compute))
	if r != 0 {
		return cublasCheck(r, fmt.Sprintf("cublasGemmEx(m=%d n=%d k=%d)", m, n, k))
	}
	return nil
}

func rtcVersion() (int, int, error) {
	var a, b C.int
	if r := C.sn_nvrtcVersion(&a, &b); r != 0 {
		return 0, 0, fmt.Errorf("nvrtcVersion: %s", C.GoString(C.sn_nvrtcErrorString(r)))
	}
	return int(a), int(b), nil
}

// rtcCompile compiles CUDA C source to a cubin with NVRTC; log is the compiler's output.
func rtcCompile(src, name string, opts []string) (cubin []byte, log string, err error) {
	csrc := C.CString(src)
	defer C.free(unsafe.Pointer(csrc))
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	copts := (*[1 << 10]*C.char)(C.malloc(C.size_t(len(opts)+1) * C.size_t(unsafe.Sizeof(uintptr(0)))))
	defer C.free(unsafe.Pointer(copts))
	for i, o := range opts {
		copts[i] = C.CString(o)
		defer C.free(unsafe.Pointer(copts[i]))
	}
	var out, clog *C.char
	var outSize C.size_t
	var stage C.int
	r := C.sn_nvrtc_compile(csrc, cname, C.int(len(opts)), (**C.char)(unsafe.Pointer(copts)), &out, &outSize, &clog, &stage)
	if clog != nil {
		log = C.GoString(clog)
		C.free(unsafe.Pointer(clog))
	}
	if out != nil {
		cubin = C.GoBytes(unsafe.Pointer(out), C.int(outSize))
		C.free(unsafe.Pointer(out))
	}
	if r != 0 {
		steps := [...]string{"nvrtcCreateProgram", "nvrtcCompileProgram", "nvrtcGetCUBIN"}
		return nil, log, fmt.Errorf("%s: %s", steps[stage], C.GoString(C.sn_nvrtcErrorString(r)))
	}
	return cubin, log, nil
}

// cAlloc returns n bytes of zeroed C memory (for launch arguments the driver reads).
func cAlloc(n int) unsafe.Pointer { return C.calloc(C.size_t(n), 1) }

func cFree(p unsafe.Pointer) { C.free(p) }
