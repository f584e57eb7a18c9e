// Definitions shared by the swarmnode CUDA kernels, compiled at run time by NVRTC
// (no headers): it is prepended to each .cu file of this package.

typedef unsigned long long u64;

// NVRTC compiles without system headers, so there is no INFINITY macro.
#define SN_INF __int_as_float(0x7f800000)

struct bf16 {
	unsigned short x;
};

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) {
	bf16 r;
	asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.x) : "f"(v)); // round to nearest even; NaN stays NaN
	return r;
}

// pack2 rounds two floats to bf16 in one instruction, lo in the low half.
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
	unsigned r;
	asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
	return r;
}

// fast_exp2 is the hardware 2^x (relative error about 2^-22; -inf gives 0).
__device__ __forceinline__ float fast_exp2(float x) {
	float y;
	asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
	return y;
}

__device__ __forceinline__ float warp_sum(float v) {
	for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}
__device__ __forceinline__ float warp_max(float v) {
	for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

// block_sum reduces over a block of up to 1024 threads; every thread gets the sum.
__device__ float block_sum(float v) {
	__shared__ float sh[32];
	__shared__ float total;
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
	v = warp_sum(v);
	__syncthreads();
	if (lane == 0) sh[wid] = v;
	__syncthreads();
	if (wid == 0) {
		float s = lane < (int)((blockDim.x + 31) >> 5) ? sh[lane] : 0.f;
		s = warp_sum(s);
		if (lane == 0) total = s;
	}
	__syncthreads();
	return total;
}

__device__ float block_max(float v) {
	__shared__ float sh[32];
	__shared__ float total;
	int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
	v = warp_max(v);
	__syncthreads();
	if (lane == 0) sh[wid] = v;
	__syncthreads();
	if (wid == 0) {
		float s = lane < (int)((blockDim.x + 31) >> 5) ? sh[lane] : -SN_INF;
		s = warp_max(s);
		if (lane == 0) total = s;
	}
	__syncthreads();
	return total;
}

#define GRID_STRIDE(i, n) for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)


#define LOG2E 1.4426950408889634f
