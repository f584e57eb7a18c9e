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
	unsigned u = __float_as_uint(v);
	bf16 r;
	if ((u & 0x7fffffffu) > 0x7f800000u) { // NaN stays NaN
		r.x = (unsigned short)((u >> 16) | 0x40);
		return r;
	}
	u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even
	r.x = (unsigned short)(u >> 16);
	return r;
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
