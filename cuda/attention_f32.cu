// Float32 causal attention kernels (common.cuh is prepended), compiled only when a
// stage runs attention outside the tensor-core path (float32 modes, head size 16 or 32).

// ---------------------------------------------------------------- causal attention
//
// Flash-attention-style: scores are computed a tile of keys at a time and never
// stored, so memory is linear in T. qkv is [B,T,3C] (q | k | v, head h at columns
// h·HD.. of each part). The forward keeps lse = log2-sum-exp2 of each query row's
// scaled scores; the backward recomputes probabilities from it.
// One thread owns one query row (forward, dQ) or one key row (dK, dV).


template <int HD> struct AttnTile { enum { BK = HD >= 128 ? 32 : 64 }; };

template <int HD, typename OutT>
__device__ void attn_fwd(OutT* out, float* lse, const float* qkv, int B, int T, int NH, float scale) {
	const int BK = AttnTile<HD>::BK;
	const int BQ = 64;
	__shared__ float Ks[BK][HD];
	__shared__ float Vs[BK][HD];
	int C = NH * HD, C3 = 3 * C;
	int bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int q0 = blockIdx.x * BQ;
	int i = q0 + threadIdx.x;
	const float* base = qkv + (long)b * T * C3 + h * HD;
	float q[HD], acc[HD];
	float sc = scale * LOG2E;
	if (i < T) {
#pragma unroll
		for (int d = 0; d < HD; d++) q[d] = base[(long)i * C3 + d] * sc;
	}
#pragma unroll
	for (int d = 0; d < HD; d++) acc[d] = 0.f;
	float m = -SN_INF, l = 0.f;
	int qlast = min(q0 + BQ, T) - 1;
	for (int k0 = 0; k0 <= qlast; k0 += BK) {
		__syncthreads();
		for (int e = threadIdx.x; e < BK * HD; e += blockDim.x) {
			int r = e / HD, d = e % HD, j = k0 + r;
			Ks[r][d] = j < T ? base[(long)j * C3 + C + d] : 0.f;
			Vs[r][d] = j < T ? base[(long)j * C3 + 2 * C + d] : 0.f;
		}
		__syncthreads();
		if (i >= T) continue;
		int jn = min(BK, i - k0 + 1); // keys k0..i are visible
		for (int c0 = 0; c0 < jn; c0 += 16) {
			float s[16];
			float cm = -SN_INF;
#pragma unroll
			for (int u = 0; u < 16; u++) {
				float v = -SN_INF;
				if (c0 + u < jn) {
					v = 0.f;
#pragma unroll
					for (int d = 0; d < HD; d++) v += q[d] * Ks[c0 + u][d];
				}
				s[u] = v;
				cm = fmaxf(cm, v);
			}
			float mn = fmaxf(m, cm);
			float corr = exp2f(m - mn);
			l *= corr;
#pragma unroll
			for (int d = 0; d < HD; d++) acc[d] *= corr;
#pragma unroll
			for (int u = 0; u < 16; u++) {
				if (c0 + u < jn) {
					float p = exp2f(s[u] - mn);
					l += p;
#pragma unroll
					for (int d = 0; d < HD; d++) acc[d] += p * Vs[c0 + u][d];
				}
			}
			m = mn;
		}
	}
	if (i < T) {
		float inv = 1.f / l;
		OutT* o = out + ((long)b * T + i) * C + h * HD;
#pragma unroll
		for (int d = 0; d < HD; d++) o[d] = from_f<OutT>(acc[d] * inv);
		lse[(long)bh * T + i] = m + log2f(l);
	}
}

// attn_bwd_pre: D[b,h,t] = sum_d dout·out over the head's columns.
template <typename InT>
__device__ void attn_bwd_pre(float* D, const float* dout, const InT* out, int B, int T, int NH, int HD) {
	GRID_STRIDE(r, (long)B * NH * T) {
		int t = r % T;
		long bh = r / T;
		int b = bh / NH, h = bh % NH;
		long off = ((long)b * T + t) * NH * HD + h * HD;
		float s = 0.f;
		for (int d = 0; d < HD; d++) s += dout[off + d] * to_f(out[off + d]);
		D[r] = s;
	}
}
extern "C" __global__ void attn_bwd_pre_f32(float* D, const float* dout, const float* out, int B, int T, int NH, int HD) {
	attn_bwd_pre<float>(D, dout, out, B, T, NH, HD);
}
extern "C" __global__ void attn_bwd_pre_bf16(float* D, const float* dout, const bf16* out, int B, int T, int NH, int HD) {
	attn_bwd_pre<bf16>(D, dout, out, B, T, NH, HD);
}

// attn_bwd_dkdv: thread j accumulates dK[j], dV[j] over the queries i >= j.
template <int HD, typename OutT>
__device__ void attn_bwd_dkdv(OutT* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	// One warp per block: the padded key/value rows and the query tile must fit the
	// 48 KB of static shared memory at HD = 64.
	const int BQ = 32;
	const int BKV = 32;
	__shared__ float Qs[BQ][HD];
	__shared__ float dOs[BQ][HD];
	__shared__ float Ls[BQ], Ds[BQ];
	__shared__ float Kown[BKV][HD + 1];
	__shared__ float Vown[BKV][HD + 1];
	int C = NH * HD, C3 = 3 * C;
	int bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int k0 = blockIdx.x * BKV;
	int j = k0 + threadIdx.x;
	const float* base = qkv + (long)b * T * C3 + h * HD;
	const float* dob = dout + (long)b * T * C + h * HD;
	float sc = scale * LOG2E;
	for (int e = threadIdx.x; e < BKV * HD; e += blockDim.x) {
		int r = e / HD, d = e % HD, jj = k0 + r;
		Kown[r][d] = jj < T ? base[(long)jj * C3 + C + d] : 0.f;
		Vown[r][d] = jj < T ? base[(long)jj * C3 + 2 * C + d] : 0.f;
	}
	float dk[HD], dv[HD];
#pragma unroll
	for (int d = 0; d < HD; d++) { dk[d] = 0.f; dv[d] = 0.f; }
	for (int i0 = k0; i0 < T; i0 += BQ) {
		__syncthreads();
		for (int e = threadIdx.x; e < BQ * HD; e += blockDim.x) {
			int r = e / HD, d = e % HD, i = i0 + r;
			Qs[r][d] = i < T ? base[(long)i * C3 + d] : 0.f;
			dOs[r][d] = i < T ? dob[(long)i * C + d] : 0.f;
		}
		for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
			int i = i0 + r;
			Ls[r] = i < T ? lse[(long)bh * T + i] : 0.f;
			Ds[r] = i < T ? D[(long)bh * T + i] : 0.f;
		}
		__syncthreads();
		if (j >= T) continue;
		int rfirst = max(0, j - i0);
		int rlast = min(BQ, T - i0);
		for (int r = rfirst; r < rlast; r++) {
			float s = 0.f, dp = 0.f;
#pragma unroll
			for (int d = 0; d < HD; d++) {
				s += Qs[r][d] * Kown[threadIdx.x][d];
				dp += dOs[r][d] * Vown[threadIdx.x][d];
			}
			float p = exp2f(s * sc - Ls[r]);
			float ds = p * (dp - Ds[r]);
#pragma unroll
			for (int d = 0; d < HD; d++) {
				dv[d] += p * dOs[r][d];
				dk[d] += ds * Qs[r][d];
			}
		}
	}
	if (j < T) {
		OutT* o = dqkv + ((long)b * T + j) * C3 + h * HD;
#pragma unroll
		for (int d = 0; d < HD; d++) {
			o[C + d] = from_f<OutT>(dk[d] * scale);
			o[2 * C + d] = from_f<OutT>(dv[d]);
		}
	}
}

// attn_bwd_dq: thread i accumulates dQ[i] over the keys j <= i.
template <int HD, typename OutT>
__device__ void attn_bwd_dq(OutT* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	const int BK = AttnTile<HD>::BK;
	const int BQ = 64;
	__shared__ float Ks[BK][HD];
	__shared__ float Vs[BK][HD];
	int C = NH * HD, C3 = 3 * C;
	int bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int q0 = blockIdx.x * BQ;
	int i = q0 + threadIdx.x;
	const float* base = qkv + (long)b * T * C3 + h * HD;
	float sc = scale * LOG2E;
	float q[HD], go[HD], dq[HD];
	float Li = 0.f, Di = 0.f;
	if (i < T) {
#pragma unroll
		for (int d = 0; d < HD; d++) {
			q[d] = base[(long)i * C3 + d];
			go[d] = dout[((long)b * T + i) * C + h * HD + d];
		}
		Li = lse[(long)bh * T + i];
		Di = D[(long)bh * T + i];
	}
#pragma unroll
	for (int d = 0; d < HD; d++) dq[d] = 0.f;
	int qlast = min(q0 + BQ, T) - 1;
	for (int k0 = 0; k0 <= qlast; k0 += BK) {
		__syncthreads();
		for (int e = threadIdx.x; e < BK * HD; e += blockDim.x) {
			int r = e / HD, d = e % HD, jj = k0 + r;
			Ks[r][d] = jj < T ? base[(long)jj * C3 + C + d] : 0.f;
			Vs[r][d] = jj < T ? base[(long)jj * C3 + 2 * C + d] : 0.f;
		}
		__syncthreads();
		if (i >= T) continue;
		int jn = min(BK, i - k0 + 1);
		for (int r = 0; r < jn; r++) {
			float s = 0.f, dp = 0.f;
#pragma unroll
			for (int d = 0; d < HD; d++) {
				s += q[d] * Ks[r][d];
				dp += go[d] * Vs[r][d];
			}
			float p = exp2f(s * sc - Li);
			float ds = p * (dp - Di);
#pragma unroll
			for (int d = 0; d < HD; d++) dq[d] += ds * Ks[r][d];
		}
	}
	if (i < T) {
		OutT* o = dqkv + ((long)b * T + i) * C3 + h * HD;
#pragma unroll
		for (int d = 0; d < HD; d++) o[d] = from_f<OutT>(dq[d] * scale);
	}
}

#define ATTN_KERNELS(HD)                                                                                                       \
	extern "C" __global__ void __launch_bounds__(64) attn_fwd_##HD##_f32(float* out, float* lse, const float* qkv, int B, int T, int NH, float scale) { \
		attn_fwd<HD, float>(out, lse, qkv, B, T, NH, scale);                                                                   \
	}                                                                                                                          \
	extern "C" __global__ void __launch_bounds__(64) attn_fwd_##HD##_bf16(bf16* out, float* lse, const float* qkv, int B, int T, int NH, float scale) { \
		attn_fwd<HD, bf16>(out, lse, qkv, B, T, NH, scale);                                                                    \
	}                                                                                                                          \
	extern "C" __global__ void __launch_bounds__(64) attn_bwd_dkdv_##HD##_f32(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) { \
		attn_bwd_dkdv<HD, float>(dqkv, dout, qkv, lse, D, B, T, NH, scale);                                                    \
	}                                                                                                                          \
	extern "C" __global__ void __launch_bounds__(64) attn_bwd_dkdv_##HD##_bf16(bf16* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) { \
		attn_bwd_dkdv<HD, bf16>(dqkv, dout, qkv, lse, D, B, T, NH, scale);                                                     \
	}                                                                                                                          \
	extern "C" __global__ void __launch_bounds__(64) attn_bwd_dq_##HD##_f32(float* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) { \
		attn_bwd_dq<HD, float>(dqkv, dout, qkv, lse, D, B, T, NH, scale);                                                      \
	}                                                                                                                          \
	extern "C" __global__ void __launch_bounds__(64) attn_bwd_dq_##HD##_bf16(bf16* dqkv, const float* dout, const float* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) { \
		attn_bwd_dq<HD, bf16>(dqkv, dout, qkv, lse, D, B, T, NH, scale);                                                       \
	}

ATTN_KERNELS(16)
ATTN_KERNELS(32)
ATTN_KERNELS(64)

