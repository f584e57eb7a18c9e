// Kernels of the swarmnode CUDA backend (common.cuh is prepended). Activations and
// parameters are float32 unless a kernel's name ends in _bf16, in which case its
// output (the operand of the next GEMM) is bfloat16.

// ---------------------------------------------------------------- casts, fills, sums

extern "C" __global__ void cast_f32_bf16(bf16* out, const float* in, long n) {
	GRID_STRIDE(i, n) out[i] = from_f<bf16>(in[i]);
}
extern "C" __global__ void cast_bf16_f32(float* out, const bf16* in, long n) {
	GRID_STRIDE(i, n) out[i] = to_f(in[i]);
}
// add_inplace: dst += src (the backward of a residual connection adds the branch's gradient).
extern "C" __global__ void add_inplace(float* dst, const float* src, long n) {
	GRID_STRIDE(i, n) dst[i] += src[i];
}
// bias_rows: out[r,c] = (resid ? resid[r,c] : 0) + (bias ? bias[c] : 0); it seeds the
// output of a GEMM that then accumulates with beta = 1.
extern "C" __global__ void bias_rows(float* out, const float* resid, const float* bias, int N, int C) {
	GRID_STRIDE(i, (long)N * C) {
		float v = resid ? resid[i] : 0.f;
		if (bias) v += bias[i % C];
		out[i] = v;
	}
}
// bias_grad: dbias[c] += sum_r dout[r,c]. Block (32, 8) covers 32 columns; blockIdx.y splits rows.
template <typename InT> __device__ void bias_grad(float* dbias, const InT* dout, int N, int C) {
	__shared__ float sh[8][33];
	int c = blockIdx.x * 32 + threadIdx.x;
	float s = 0.f;
	if (c < C)
		for (int r = blockIdx.y * 8 + threadIdx.y; r < N; r += gridDim.y * 8) s += to_f(dout[(long)r * C + c]);
	sh[threadIdx.y][threadIdx.x] = s;
	__syncthreads();
	if (threadIdx.y == 0 && c < C) {
		float t = 0.f;
		for (int k = 0; k < 8; k++) t += sh[k][threadIdx.x];
		atomicAdd(&dbias[c], t);
	}
}
extern "C" __global__ void bias_grad_f32(float* dbias, const float* dout, int N, int C) { bias_grad<float>(dbias, dout, N, C); }
extern "C" __global__ void bias_grad_bf16(float* dbias, const bf16* dout, int N, int C) { bias_grad<bf16>(dbias, dout, N, C); }
// sumsq_partial: partial[blockIdx.x] = sum of x^2 over this block's grid-stride share.
extern "C" __global__ void sumsq_partial(float* partial, const float* x, long n) {
	float s = 0.f;
	GRID_STRIDE(i, n) { float v = x[i]; s += v * v; }
	s = block_sum(s);
	if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
// sum_partial: partial[blockIdx.x] = sum of x over this block's grid-stride share.
extern "C" __global__ void sum_partial(float* partial, const float* x, long n) {
	float s = 0.f;
	GRID_STRIDE(i, n) s += x[i];
	s = block_sum(s);
	if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
// sum_final: out[0] = sum of in[0..n) (one block; a fixed order, so deterministic).
extern "C" __global__ void sum_final(float* out, const float* in, int n) {
	double s = 0;
	for (int i = threadIdx.x; i < n; i += blockDim.x) s += in[i];
	float f = block_sum((float)s);
	if (threadIdx.x == 0) out[0] = f;
}

// ---------------------------------------------------------------- embedding

// encoder_fwd: out[b,t,:] = wte[tok[b,t],:] + wpe[t,:].
extern "C" __global__ void encoder_fwd(float* out, const int* tok, const float* wte, const float* wpe, int B, int T, int C) {
	GRID_STRIDE(i, (long)B * T * C) {
		int c = i % C;
		long bt = i / C;
		int t = bt % T;
		out[i] = wte[(long)tok[bt] * C + c] + wpe[(long)t * C + c];
	}
}
// encoder_bwd_wte: dwte[tok[n],:] += dout[n,:] (atomics: several positions share a token).
extern "C" __global__ void encoder_bwd_wte(float* dwte, const int* tok, const float* dout, int N, int C) {
	GRID_STRIDE(i, (long)N * C) {
		long n = i / C;
		atomicAdd(&dwte[(long)tok[n] * C + i % C], dout[i]);
	}
}
// encoder_bwd_wpe: dwpe[t,:] += sum_b dout[b,t,:].
extern "C" __global__ void encoder_bwd_wpe(float* dwpe, const float* dout, int B, int T, int C) {
	GRID_STRIDE(i, (long)T * C) {
		float s = 0.f;
		for (int b = 0; b < B; b++) s += dout[(long)b * T * C + i];
		dwpe[i] += s;
	}
}

// ---------------------------------------------------------------- LayerNorm

// layernorm_fwd: one warp per row; keeps mean and 1/std for the backward pass.
template <typename OutT>
__device__ void layernorm_fwd(OutT* out, float* mean, float* rstd, const float* inp, const float* w, const float* b, int N, int C) {
	int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int lane = threadIdx.x & 31;
	if (row >= N) return;
	const float* x = inp + (long)row * C;
	float s = 0.f;
	for (int c = lane; c < C; c += 32) s += x[c];
	float m = warp_sum(s) / C;
	float v = 0.f;
	for (int c = lane; c < C; c += 32) { float d = x[c] - m; v += d * d; }
	float r = rsqrtf(warp_sum(v) / C + 1e-5f);
	OutT* o = out + (long)row * C;
	for (int c = lane; c < C; c += 32) o[c] = from_f<OutT>((x[c] - m) * r * w[c] + b[c]);
	if (lane == 0) { mean[row] = m; rstd[row] = r; }
}
extern "C" __global__ void layernorm_fwd_f32(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b, int N, int C) {
	layernorm_fwd<float>(out, mean, rstd, inp, w, b, N, C);
}
extern "C" __global__ void layernorm_fwd_bf16(bf16* out, float* mean, float* rstd, const float* inp, const float* w, const float* b, int N, int C) {
	layernorm_fwd<bf16>(out, mean, rstd, inp, w, b, N, C);
}

// layernorm_bwd: dinp += ..., dw += ..., db += ... . One warp per row, rowsPerBlock
// rows per block; dw and db gather in shared memory (2·C floats) before one atomic
// add per block. For rows too wide for layernorm_bwd_j's registers; dop and dcol
// (either may be null) are as there: a bf16 copy of the new dinp, and its column
// sums added to dcol (3·C floats of shared memory then).
extern "C" __global__ void layernorm_bwd(float* dinp, bf16* dop, float* dcol, float* dw, float* db, const float* dout, const float* inp,
                                         const float* w, const float* mean, const float* rstd, int N, int C, int rowsPerBlock) {
	extern __shared__ float sh[];
	float* sdw = sh;
	float* sdb = sh + C;
	float* sdc = sh + 2 * C;
	for (int c = threadIdx.x; c < (dcol ? 3 : 2) * C; c += blockDim.x) sh[c] = 0.f;
	__syncthreads();
	int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x & 31;
	int first = blockIdx.x * rowsPerBlock;
	int last = min(first + rowsPerBlock, N);
	for (int row = first + wid; row < last; row += warps) {
		const float* x = inp + (long)row * C;
		const float* g = dout + (long)row * C;
		float m = mean[row], r = rstd[row];
		float sumD = 0.f, sumDX = 0.f;
		for (int c = lane; c < C; c += 32) {
			float xh = (x[c] - m) * r;
			float dn = g[c] * w[c];
			sumD += dn;
			sumDX += dn * xh;
		}
		sumD = warp_sum(sumD) / C;
		sumDX = warp_sum(sumDX) / C;
		float* di = dinp + (long)row * C;
		for (int c = lane; c < C; c += 32) {
			float xh = (x[c] - m) * r;
			float v = di[c] + r * (g[c] * w[c] - sumD - xh * sumDX);
			di[c] = v;
			if (dop) dop[(long)row * C + c] = from_f<bf16>(v);
			if (dcol) atomicAdd(&sdc[c], v);
			atomicAdd(&sdw[c], g[c] * xh);
			atomicAdd(&sdb[c], g[c]);
		}
	}
	__syncthreads();
	for (int c = threadIdx.x; c < C; c += blockDim.x) {
		atomicAdd(&dw[c], sdw[c]);
		atomicAdd(&db[c], sdb[c]);
		if (dcol) atomicAdd(&dcol[c], sdc[c]);
	}
}

// ---------------------------------------------------------------- GELU (tanh form, as GPT-2)

#define GELU_K 0.7978845608028654f

template <typename OutT> __device__ void gelu_fwd(OutT* out, const float* inp, long n) {
	GRID_STRIDE(i, n) {
		float x = inp[i];
		float u = GELU_K * (x + 0.044715f * x * x * x);
		out[i] = from_f<OutT>(0.5f * x * (1.f + tanhf(u)));
	}
}
extern "C" __global__ void gelu_fwd_f32(float* out, const float* inp, long n) { gelu_fwd<float>(out, inp, n); }
extern "C" __global__ void gelu_fwd_bf16(bf16* out, const float* inp, long n) { gelu_fwd<bf16>(out, inp, n); }

// gelu_bwd: dinp = gelu'(inp)·dout (dinp may alias dout in the float32 form).
template <typename OutT> __device__ void gelu_bwd(OutT* dinp, const float* inp, const float* dout, long n) {
	GRID_STRIDE(i, n) {
		float x = inp[i];
		float u = GELU_K * (x + 0.044715f * x * x * x);
		float th = tanhf(u);
		float d = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * GELU_K * (1.f + 3.f * 0.044715f * x * x);
		dinp[i] = from_f<OutT>(d * dout[i]);
	}
}
extern "C" __global__ void gelu_bwd_f32(float* dinp, const float* inp, const float* dout, long n) { gelu_bwd<float>(dinp, inp, dout, n); }
extern "C" __global__ void gelu_bwd_bf16(bf16* dinp, const float* inp, const float* dout, long n) { gelu_bwd<bf16>(dinp, inp, dout, n); }

// ---------------------------------------------------------------- cross-entropy

// crossentropy: one block per row of logits [N,V]: losses[n] = lse(row) - row[target];
// when dlogits is not null, dlogits[n,:] = (softmax(row) - onehot(target))·dscale
// (dlogits may alias logits in the float32 form).
template <typename OutT>
__device__ void crossentropy(float* losses, OutT* dlogits, const float* logits, const int* targets, int N, int V, float dscale) {
	int n = blockIdx.x;
	const float* row = logits + (long)n * V;
	float mx = -SN_INF;
	for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, row[v]);
	mx = block_max(mx);
	float s = 0.f;
	for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(row[v] - mx);
	s = block_sum(s);
	int t = targets[n];
	float lse = logf(s) + mx;
	float lt = row[t];
	__syncthreads(); // every thread has read row[t] before dlogits may overwrite it
	if (threadIdx.x == 0) losses[n] = lse - lt;
	if (dlogits) {
		OutT* d = dlogits + (long)n * V;
		float inv = 1.f / s;
		for (int v = threadIdx.x; v < V; v += blockDim.x) {
			float p = expf(row[v] - mx) * inv;
			d[v] = from_f<OutT>((p - (v == t ? 1.f : 0.f)) * dscale);
		}
	}
}
extern "C" __global__ void crossentropy_f32(float* losses, float* dlogits, const float* logits, const int* targets, int N, int V, float dscale) {
	crossentropy<float>(losses, dlogits, logits, targets, N, V, dscale);
}
extern "C" __global__ void crossentropy_bf16(float* losses, bf16* dlogits, const float* logits, const int* targets, int N, int V, float dscale) {
	crossentropy<bf16>(losses, dlogits, logits, targets, N, V, dscale);
}

// ---------------------------------------------------------------- AdamW

// adamw: one AdamW step on n parameters. The gradient is scaled by gscale and, when
// clip > 0 and sumsq is set, clipped so that its global norm (sqrt(*sumsq)·gscale)
// is at most clip. Decoupled weight decay applies where decay[i] != 0. When pbf is
// set it receives the new parameters in bfloat16; when zero_grad is set the
// gradient is cleared.
extern "C" __global__ void adamw(float* p, float* g, float* m, float* v, const unsigned char* decay, bf16* pbf, long n,
                                 float lr, float b1, float b2, float eps, float wd, float bc1, float bc2,
                                 float gscale, const float* sumsq, float clip, int zero_grad) {
	float s = gscale;
	if (clip > 0.f && sumsq) {
		float c = clip / (sqrtf(*sumsq) * gscale + 1e-6f); // as the CPU stage clips
		if (c < 1.f) s *= c;
	}
	GRID_STRIDE(i, n) {
		float gi = g[i] * s;
		float mi = b1 * m[i] + (1.f - b1) * gi;
		float vi = b2 * v[i] + (1.f - b2) * gi * gi;
		m[i] = mi;
		v[i] = vi;
		float pi = p[i];
		float upd = (mi / bc1) / (sqrtf(vi / bc2) + eps);
		if (decay && decay[i]) upd += wd * pi;
		pi -= lr * upd;
		p[i] = pi;
		if (pbf) pbf[i] = from_f<bf16>(pi);
		if (zero_grad) g[i] = 0.f;
	}
}

// ---------------------------------------------------------------- int8 blockwise quantization

// quantize_int8_wire / dequantize_int8_wire: int8 blockwise absmax quantization
// (one warp per block of bs values: scale = absmax/127, q = round(x/scale), halves
// away from zero, scale 0 for an all-zero block) in the pipeline wire's layout
// (package pipeline/codec): block b of bs values occupies
// bytes [b·(4+bs), (b+1)·(4+bs)) of the message, a little-endian float32 scale
// followed by the block's int8 values (only the last block may be shorter). The
// bytes copied to the host are then the frame's payload as they go on the wire.
extern "C" __global__ void quantize_int8_wire(unsigned char* out, const float* x, long n, int bs) {
	long blk = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int lane = threadIdx.x & 31;
	long first = blk * bs;
	if (first >= n) return;
	long last = min(first + bs, n);
	float am = 0.f;
	for (long i = first + lane; i < last; i += 32) am = fmaxf(am, fabsf(x[i]));
	am = warp_max(am);
	float inv = am > 0.f ? 127.f / am : 0.f;
	unsigned char* o = out + blk * (4 + (long)bs);
	for (long i = first + lane; i < last; i += 32) {
		float r = fminf(fmaxf(roundf(x[i] * inv), -127.f), 127.f);
		o[4 + (i - first)] = (unsigned char)(signed char)r;
	}
	if (lane == 0) {
		unsigned u = __float_as_uint(am / 127.f);
		o[0] = u & 0xff;
		o[1] = (u >> 8) & 0xff;
		o[2] = (u >> 16) & 0xff;
		o[3] = u >> 24;
	}
}

extern "C" __global__ void dequantize_int8_wire(float* x, const unsigned char* in, long n, int bs) {
	GRID_STRIDE(i, n) {
		long blk = i / bs;
		const unsigned char* p = in + blk * (4 + (long)bs);
		float scale = __uint_as_float((unsigned)p[0] | (unsigned)p[1] << 8 | (unsigned)p[2] << 16 | (unsigned)p[3] << 24);
		x[i] = (float)(signed char)p[4 + (i - blk * bs)] * scale;
	}
}

// ---------------------------------------------------------------- tensor-core causal attention (head size 64)
//
// The same algorithm as above on the bf16 tensor cores (mma.sync m16n8k16, float32
// accumulation), reading bf16 q, k, v and output gradients. Each warp owns 16 rows,
// a block 64; tiles of 64 keys (or queries) sit in shared memory, rows padded to
// 72 elements so that fragment loads hit distinct banks. Scores and probabilities
// stay in registers: the accumulator fragment of S = Q·Kᵀ is, element for element,
// the A fragment of P·V; ldmatrix.trans reads the B fragments of row-major tiles
// that the product needs transposed.

struct bf16x8 {
	uint4 u;
};

__device__ __forceinline__ void unpack8(uint4 u, float* f) {
	unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
	for (int i = 0; i < 4; i++) {
		f[2 * i] = __uint_as_float(w[i] << 16);
		f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
	}
}

__device__ __forceinline__ uint4 pack8(const float* f) {
	uint4 u;
	u.x = pack2(f[0], f[1]);
	u.y = pack2(f[2], f[3]);
	u.z = pack2(f[4], f[5]);
	u.w = pack2(f[6], f[7]);
	return u;
}

#define TC_HD 64
#define TC_TILE 64
#define TC_PAD 72

__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
	             : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
	             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const unsigned short* p) {
	unsigned a = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
	             : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
	             : "r"(a));
}

__device__ __forceinline__ unsigned ld32(const unsigned short* p) { return *(const unsigned*)p; }

// load_tile copies rows [r0, r0+64) (64 bf16 columns from src) into the padded tile, zero past T.
__device__ __forceinline__ void load_tile(unsigned short* dst, const bf16* src, long ld, int r0, int T) {
	for (int e = threadIdx.x; e < TC_TILE * 8; e += blockDim.x) {
		int r = e >> 3, c = (e & 7) * 8;
		uint4 v = make_uint4(0, 0, 0, 0);
		if (r0 + r < T) v = *(const uint4*)(src + (long)(r0 + r) * ld + c);
		*(uint4*)(dst + r * TC_PAD + c) = v;
	}
}

// load_afrag loads the A fragments (16 rows × 64 columns, 4 k-steps) of rows r0.. of a bf16 matrix.
__device__ __forceinline__ void load_afrag(unsigned (*a)[4], const bf16* src, long ld, int r0, int T) {
	int g = (threadIdx.x & 31) >> 2, tg = threadIdx.x & 3;
#pragma unroll
	for (int kk = 0; kk < 4; kk++)
#pragma unroll
		for (int h = 0; h < 2; h++)
#pragma unroll
			for (int rr = 0; rr < 2; rr++) {
				int row = r0 + g + rr * 8, col = kk * 16 + tg * 2 + h * 8;
				a[kk][h * 2 + rr] = row < T ? *(const unsigned*)(src + (long)row * ld + col) : 0u;
			}
}

// mma_rows_x_tile: acc (16 × 64) += A · tileᵀ, the tile's rows being the output columns.
__device__ __forceinline__ void mma_rows_x_tile(float (*acc)[4], const unsigned (*a)[4], const unsigned short* tile) {
	int g = (threadIdx.x & 31) >> 2, tg = threadIdx.x & 3;
#pragma unroll
	for (int kk = 0; kk < 4; kk++)
#pragma unroll
		for (int nt = 0; nt < 8; nt++) {
			const unsigned short* p = tile + (nt * 8 + g) * TC_PAD + kk * 16 + tg * 2;
			mma_bf16(acc[nt], a[kk], ld32(p), ld32(p + 8));
		}
}

// mma_acc_x_tile: acc (16 × 64) += P · tile, P (16 × 64) given as accumulator fragments
// (rounded to bf16 here), the tile row-major with its rows as the k dimension.
__device__ __forceinline__ void mma_acc_x_tile(float (*acc)[4], const float (*p)[4], const unsigned short* tile) {
	int l = threadIdx.x & 31;
#pragma unroll
	for (int kk = 0; kk < 4; kk++) {
		unsigned a[4] = {pack2(p[2 * kk][0], p[2 * kk][1]), pack2(p[2 * kk][2], p[2 * kk][3]),
		                 pack2(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
		for (int np = 0; np < 4; np++) {
			unsigned b[4];
			ldmatrix_x4_trans(b, tile + (kk * 16 + (l & 15)) * TC_PAD + np * 16 + (l >> 4) * 8);
			mma_bf16(acc[2 * np], a, b[0], b[1]);
			mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
		}
	}
}

__device__ __forceinline__ void zero_acc(float (*x)[4]) {
#pragma unroll
	for (int nt = 0; nt < 8; nt++)
#pragma unroll
		for (int e = 0; e < 4; e++) x[nt][e] = 0.f;
}

// Blocks of WARPS warps (16 rows each) share each 64-row tile of the other operand; tiles
// stream through two shared-memory buffers with cp.async, the next one loading while
// the current one is used. A warp skips tiles its causal mask hides entirely.

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
	unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
	int n = valid ? 16 : 0; // 0: fill with zeros, read nothing
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all_but_one() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// load_tile_async queues the copy of rows [r0, r0+64) (64 bf16 columns) into a padded tile.
__device__ __forceinline__ void load_tile_async(unsigned short* dst, const bf16* src, long ld, int r0, int T) {
	for (int e = threadIdx.x; e < TC_TILE * 8; e += blockDim.x) {
		int r = e >> 3, c = (e & 7) * 8;
		bool ok = r0 + r < T;
		cp_async16(dst + r * TC_PAD + c, ok ? (const void*)(src + (long)(r0 + r) * ld + c) : (const void*)src, ok);
	}
}

#define TC_BUF (TC_TILE * TC_PAD)

template <int WARPS>
__device__ __forceinline__ void attn_fwd_tc(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, float scale) {
	const int TC_ROWS = WARPS * 16;
	__shared__ __align__(16) unsigned short Ks[2 * TC_BUF];
	__shared__ __align__(16) unsigned short Vs[2 * TC_BUF];
	int C = NH * TC_HD, C3 = 3 * C;
	int bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int qb = gridDim.x - 1 - blockIdx.x; // longest rows first
	int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, tg = threadIdx.x & 3;
	int r0 = qb * TC_ROWS + warp * 16;
	const bf16* base = qkv + (long)b * T * C3 + h * TC_HD;
	float sc = scale * LOG2E;
	unsigned qa[4][4];
	load_afrag(qa, base, C3, r0, T);
	float o[8][4], m[2] = {-SN_INF, -SN_INF}, l[2] = {0.f, 0.f};
	zero_acc(o);
	int last = min(qb * TC_ROWS + TC_ROWS - 1, T - 1);
	int ntiles = last / TC_TILE + 1;
	load_tile_async(Ks, base + C, C3, 0, T);
	load_tile_async(Vs, base + 2 * C, C3, 0, T);
	cp_async_commit();
	for (int kt = 0; kt < ntiles; kt++) {
		int cur = (kt & 1) * TC_BUF;
		if (kt + 1 < ntiles) {
			int nxt = ((kt + 1) & 1) * TC_BUF;
			load_tile_async(Ks + nxt, base + C, C3, (kt + 1) * TC_TILE, T);
			load_tile_async(Vs + nxt, base + 2 * C, C3, (kt + 1) * TC_TILE, T);
			cp_async_commit();
			cp_async_wait_all_but_one();
		} else {
			cp_async_wait_all();
		}
		__syncthreads();
		if (kt * TC_TILE <= r0 + 15 && r0 < T) { // some key of the tile is visible to the warp
			float s[8][4];
			zero_acc(s);
			mma_rows_x_tile(s, qa, Ks + cur);
			bool mask = kt * TC_TILE + TC_TILE - 1 > r0;
#pragma unroll
			for (int r = 0; r < 2; r++) {
				int row = r0 + g + r * 8;
				float mx = -SN_INF;
#pragma unroll
				for (int nt = 0; nt < 8; nt++)
#pragma unroll
					for (int e = 0; e < 2; e++) {
						int key = kt * TC_TILE + nt * 8 + tg * 2 + e;
						float v = s[nt][2 * r + e] * sc;
						if (mask && (key > row || key >= T)) v = -SN_INF;
						s[nt][2 * r + e] = v;
						mx = fmaxf(mx, v);
					}
				mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
				mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
				float mn = fmaxf(m[r], mx);
				float base_m = mn == -SN_INF ? 0.f : mn; // a row with nothing visible yet
				float corr = fast_exp2(m[r] - base_m);
				l[r] *= corr;
#pragma unroll
				for (int nt = 0; nt < 8; nt++) {
					o[nt][2 * r] *= corr;
					o[nt][2 * r + 1] *= corr;
#pragma unroll
					for (int e = 0; e < 2; e++) {
						float p = fast_exp2(s[nt][2 * r + e] - base_m);
						s[nt][2 * r + e] = p;
						l[r] += p;
					}
				}
				m[r] = mn;
			}
			mma_acc_x_tile(o, s, Vs + cur);
		}
		__syncthreads(); // the buffer is refilled next iteration
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
		int row = r0 + g + r * 8;
		if (row >= T) continue;
		float inv = 1.f / l[r];
		bf16* dst = out + ((long)b * T + row) * C + h * TC_HD;
#pragma unroll
		for (int nt = 0; nt < 8; nt++)
			*(unsigned*)(dst + nt * 8 + tg * 2) = pack2(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
		if (tg == 0) lse[(long)bh * T + row] = m[r] + log2f(l[r]);
	}
}

// attn_bwd_pre_tc: D from a bf16 output gradient (the tensor-core path, head size
// 64): eight lanes per row, each reading 16 bytes of dout and of out.
extern "C" __global__ void attn_bwd_pre_tc(float* D, const bf16* dout, const bf16* out, int B, int T, int NH, int HD) {
	long tid = (long)blockIdx.x * blockDim.x + threadIdx.x;
	long r = tid >> 3;
	int part = tid & 7;
	bool ok = r < (long)B * NH * T;
	float s = 0.f;
	if (ok) {
		int t = r % T;
		long bh = r / T;
		int b = bh / NH, h = bh % NH;
		long off = ((long)b * T + t) * NH * TC_HD + h * TC_HD + part * 8;
		float x[8], y[8];
		unpack8(*(const uint4*)(dout + off), x);
		unpack8(*(const uint4*)(out + off), y);
#pragma unroll
		for (int i = 0; i < 8; i++) s += x[i] * y[i];
	}
	s += __shfl_xor_sync(0xffffffffu, s, 1);
	s += __shfl_xor_sync(0xffffffffu, s, 2);
	s += __shfl_xor_sync(0xffffffffu, s, 4);
	if (ok && part == 0) D[r] = s;
}

// attn_bwd_dq_tc: dQ for 128 queries per block, over the key tiles up to the diagonal.
template <int WARPS>
__device__ __forceinline__ void attn_bwd_dq_tc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	const int TC_ROWS = WARPS * 16;
	__shared__ __align__(16) unsigned short Ks[2 * TC_BUF];
	__shared__ __align__(16) unsigned short Vs[2 * TC_BUF];
	int C = NH * TC_HD, C3 = 3 * C;
	int bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int qb = gridDim.x - 1 - blockIdx.x;
	int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, tg = threadIdx.x & 3;
	int r0 = qb * TC_ROWS + warp * 16;
	const bf16* base = qkv + (long)b * T * C3 + h * TC_HD;
	float sc = scale * LOG2E;
	unsigned qa[4][4], da[4][4];
	load_afrag(qa, base, C3, r0, T);
	load_afrag(da, dout + (long)b * T * C + h * TC_HD, C, r0, T);
	float Lr[2], Dr[2];
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int row = r0 + g + r * 8;
		Lr[r] = row < T ? lse[(long)bh * T + row] : 0.f;
		Dr[r] = row < T ? D[(long)bh * T + row] : 0.f;
	}
	float dq[8][4];
	zero_acc(dq);
	int last = min(qb * TC_ROWS + TC_ROWS - 1, T - 1);
	int ntiles = last / TC_TILE + 1;
	load_tile_async(Ks, base + C, C3, 0, T);
	load_tile_async(Vs, base + 2 * C, C3, 0, T);
	cp_async_commit();
	for (int kt = 0; kt < ntiles; kt++) {
		int cur = (kt & 1) * TC_BUF;
		if (kt + 1 < ntiles) {
			int nxt = ((kt + 1) & 1) * TC_BUF;
			load_tile_async(Ks + nxt, base + C, C3, (kt + 1) * TC_TILE, T);
			load_tile_async(Vs + nxt, base + 2 * C, C3, (kt + 1) * TC_TILE, T);
			cp_async_commit();
			cp_async_wait_all_but_one();
		} else {
			cp_async_wait_all();
		}
		__syncthreads();
		if (kt * TC_TILE <= r0 + 15 && r0 < T) {
			float s[8][4], dp[8][4];
			zero_acc(s);
			zero_acc(dp);
			mma_rows_x_tile(s, qa, Ks + cur);
			mma_rows_x_tile(dp, da, Vs + cur);
			// Index arithmetic only where the causal mask or the end of the sequence cuts the tile.
			bool edge = kt * TC_TILE + TC_TILE - 1 > r0 || r0 + 16 > T;
#pragma unroll
			for (int nt = 0; nt < 8; nt++)
#pragma unroll
				for (int e = 0; e < 4; e++) {
					int r = e >> 1;
					float p = fast_exp2(s[nt][e] * sc - Lr[r]);
					if (edge) {
						int row = r0 + g + r * 8, key = kt * TC_TILE + nt * 8 + tg * 2 + (e & 1);
						if (row >= T || key > row) p = 0.f;
					}
					s[nt][e] = p * (dp[nt][e] - Dr[r]);
				}
			mma_acc_x_tile(dq, s, Ks + cur);
		}
		__syncthreads();
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int row = r0 + g + r * 8;
		if (row >= T) continue;
		bf16* dst = dqkv + ((long)b * T + row) * C3 + h * TC_HD;
#pragma unroll
		for (int nt = 0; nt < 8; nt++)
			*(unsigned*)(dst + nt * 8 + tg * 2) = pack2(dq[nt][2 * r] * scale, dq[nt][2 * r + 1] * scale);
	}
}

// attn_bwd_dkdv_tc: dK and dV for 128 keys per block, over the query tiles from the
// diagonal on. Each warp works in the transposed frame: rows are its 16 keys,
// columns the tile's queries.
template <int WARPS>
__device__ __forceinline__ void attn_bwd_dkdv_tc(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	const int TC_ROWS = WARPS * 16;
	__shared__ __align__(16) unsigned short Qs[2 * TC_BUF];
	__shared__ __align__(16) unsigned short dOs[2 * TC_BUF];
	__shared__ __align__(16) float Ls[2][TC_TILE];
	__shared__ __align__(16) float Ds[2][TC_TILE];
	int C = NH * TC_HD, C3 = 3 * C;
	int bh = blockIdx.y, b = bh / NH, h = bh % NH;
	int kb = blockIdx.x; // low key blocks see the most queries and are scheduled first
	int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, tg = threadIdx.x & 3;
	int k0 = kb * TC_ROWS + warp * 16;
	const bf16* base = qkv + (long)b * T * C3 + h * TC_HD;
	const bf16* dob = dout + (long)b * T * C + h * TC_HD;
	float sc = scale * LOG2E;
	unsigned ka[4][4], va[4][4];
	load_afrag(ka, base + C, C3, k0, T);
	load_afrag(va, base + 2 * C, C3, k0, T);
	float dk[8][4], dv[8][4];
	zero_acc(dk);
	zero_acc(dv);
	int nq = (T + TC_TILE - 1) / TC_TILE;
	int q0 = (kb * TC_ROWS) / TC_TILE; // first tile with a query >= the block's first key
	bool vecLD = (T & 3) == 0; // lse and D rows 16-byte aligned: copy them asynchronously too
	auto issue = [&](int qt, int buf) {
		load_tile_async(Qs + buf * TC_BUF, base, C3, qt * TC_TILE, T);
		load_tile_async(dOs + buf * TC_BUF, dob, C, qt * TC_TILE, T);
		if (vecLD) {
			if (threadIdx.x < 32) {
				int part = threadIdx.x & 15, q = qt * TC_TILE + part * 4;
				const float* src = (threadIdx.x < 16 ? lse : D) + (long)bh * T;
				float* dst = (threadIdx.x < 16 ? Ls[buf] : Ds[buf]) + part * 4;
				bool ok = q < T;
				cp_async16(dst, ok ? (const void*)(src + q) : (const void*)src, ok);
			}
		} else {
			for (int r = threadIdx.x; r < TC_TILE; r += blockDim.x) {
				int q = qt * TC_TILE + r;
				Ls[buf][r] = q < T ? lse[(long)bh * T + q] : 0.f;
				Ds[buf][r] = q < T ? D[(long)bh * T + q] : 0.f;
			}
		}
		cp_async_commit();
	};
	if (q0 < nq) issue(q0, 0);
	for (int qt = q0; qt < nq; qt++) {
		int cb = (qt - q0) & 1;
		if (qt + 1 < nq) {
			issue(qt + 1, cb ^ 1);
			cp_async_wait_all_but_one();
		} else {
			cp_async_wait_all();
		}
		__syncthreads();
		if (qt * TC_TILE + TC_TILE - 1 >= k0 && k0 < T) { // some query of the tile sees the warp's keys
			const unsigned short* Qc = Qs + cb * TC_BUF;
			const unsigned short* dOc = dOs + cb * TC_BUF;
			float s[8][4], dp[8][4];
			zero_acc(s);
			zero_acc(dp);
			mma_rows_x_tile(s, ka, Qc);
			mma_rows_x_tile(dp, va, dOc);
			// Index arithmetic only where the causal mask or the end of the sequence cuts the tile.
			bool edge = qt * TC_TILE < k0 + 16 || qt * TC_TILE + TC_TILE > T || k0 + 16 > T;
#pragma unroll
			for (int nt = 0; nt < 8; nt++)
#pragma unroll
				for (int e = 0; e < 4; e++) {
					int ql = nt * 8 + tg * 2 + (e & 1);
					float p = fast_exp2(s[nt][e] * sc - Ls[cb][ql]);
					if (edge) {
						int key = k0 + g + (e >> 1) * 8, q = qt * TC_TILE + ql;
						if (q >= T || key >= T || q < key) p = 0.f;
					}
					s[nt][e] = p;
					dp[nt][e] = p * (dp[nt][e] - Ds[cb][ql]);
				}
			mma_acc_x_tile(dv, s, dOc);
			mma_acc_x_tile(dk, dp, Qc);
		}
		__syncthreads();
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int key = k0 + g + r * 8;
		if (key >= T) continue;
		bf16* dst = dqkv + ((long)b * T + key) * C3 + h * TC_HD;
#pragma unroll
		for (int nt = 0; nt < 8; nt++) {
			*(unsigned*)(dst + C + nt * 8 + tg * 2) = pack2(dk[nt][2 * r] * scale, dk[nt][2 * r + 1] * scale);
			*(unsigned*)(dst + 2 * C + nt * 8 + tg * 2) = pack2(dv[nt][2 * r], dv[nt][2 * r + 1]);
		}
	}
}

// Instances: 8 warps (128 rows) and 4 warps (64 rows) per block.
extern "C" __global__ void __launch_bounds__(256, 2) attn_fwd_tc_w8(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, float scale) {
	attn_fwd_tc<8>(out, lse, qkv, B, T, NH, scale);
}
extern "C" __global__ void __launch_bounds__(128, 3) attn_fwd_tc_w4(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, float scale) {
	attn_fwd_tc<4>(out, lse, qkv, B, T, NH, scale);
}
extern "C" __global__ void __launch_bounds__(256, 2) attn_bwd_dq_tc_w8(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	attn_bwd_dq_tc<8>(dqkv, dout, qkv, lse, D, B, T, NH, scale);
}
extern "C" __global__ void __launch_bounds__(128, 3) attn_bwd_dq_tc_w4(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	attn_bwd_dq_tc<4>(dqkv, dout, qkv, lse, D, B, T, NH, scale);
}
extern "C" __global__ void __launch_bounds__(256) attn_bwd_dkdv_tc_w8(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	attn_bwd_dkdv_tc<8>(dqkv, dout, qkv, lse, D, B, T, NH, scale);
}
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkdv_tc_w4(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* D, int B, int T, int NH, float scale) {
	attn_bwd_dkdv_tc<4>(dqkv, dout, qkv, lse, D, B, T, NH, scale);
}

// ---------------------------------------------------------------- fused kernels of the bf16 stage
//
// In bf16 mode the GEMMs write their products without bias (beta = 0, bf16 or
// float32 output) and these kernels add the bias while doing the next step's work,
// so no pass seeds an output buffer and nothing is read twice.

// bias_add_bf16: x[r,c] += bias[c] (in place, bf16).
extern "C" __global__ void bias_add_bf16(bf16* x, const float* bias, int N, int C) {
	GRID_STRIDE(i, (long)N * C) x[i] = from_f<bf16>(to_f(x[i]) + bias[i % C]);
}

// residual_bias: out[r,c] += resid[r,c] + bias[c] (out holds a GEMM product).
extern "C" __global__ void residual_bias(float* out, const float* resid, const float* bias, int N, int C) {
	GRID_STRIDE(i, (long)N * C) out[i] += resid[i] + bias[i % C];
}

// residual_bias_ln: res = res + resid + bias (res holds a GEMM product), then
// ln = LayerNorm(res)·w + b in bf16, keeping mean and 1/std. One warp per row.
extern "C" __global__ void residual_bias_ln(float* res, const float* resid, const float* bias, bf16* ln, float* mean, float* rstd,
                                            const float* w, const float* b, int N, int C) {
	int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int lane = threadIdx.x & 31;
	if (row >= N) return;
	float* x = res + (long)row * C;
	const float* rr = resid + (long)row * C;
	float s = 0.f;
	for (int c = lane; c < C; c += 32) {
		float v = x[c] + rr[c] + bias[c];
		x[c] = v;
		s += v;
	}
	float m = warp_sum(s) / C;
	float v2 = 0.f;
	for (int c = lane; c < C; c += 32) { float d = x[c] - m; v2 += d * d; }
	float r = rsqrtf(warp_sum(v2) / C + 1e-5f);
	bf16* o = ln + (long)row * C;
	for (int c = lane; c < C; c += 32) o[c] = from_f<bf16>((x[c] - m) * r * w[c] + b[c]);
	if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

// ---------------------------------------------------------------- vectorised element-wise kernels
//
// Eight bf16 (or four/eight float32) values per thread with 16-byte loads and
// stores; rows of C % 8 == 0 elements and fewer than 2^31 elements in all, so the
// column is a 32-bit remainder. The Go side falls back to the plain kernels otherwise.

#define VEC_STRIDE(v, nv) for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < (nv); v += gridDim.x * blockDim.x)

__device__ __forceinline__ void load8f(const float* p, float* f) {
	float4 a = *(const float4*)p, b = *(const float4*)(p + 4);
	f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

__device__ __forceinline__ void store8f(float* p, const float* f) {
	*(float4*)p = make_float4(f[0], f[1], f[2], f[3]);
	*(float4*)(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}

extern "C" __global__ void cast_f32_bf16_v8(uint4* out, const float* in, int nv) {
	VEC_STRIDE(v, nv) {
		float f[8];
		load8f(in + (long)v * 8, f);
		out[v] = pack8(f);
	}
}

extern "C" __global__ void bias_add_bf16_v8(uint4* x, const float* bias, int N, int C) {
	VEC_STRIDE(v, N * (C / 8)) {
		int c = (v * 8) % C;
		float f[8], bb[8];
		unpack8(x[v], f);
		load8f(bias + c, bb);
#pragma unroll
		for (int i = 0; i < 8; i++) f[i] += bb[i];
		x[v] = pack8(f);
	}
}

extern "C" __global__ void residual_bias_v8(float* out, const float* resid, const float* bias, int N, int C) {
	VEC_STRIDE(v, N * (C / 8)) {
		long o = (long)v * 8;
		int c = (v * 8) % C;
		float f[8], r[8], bb[8];
		load8f(out + o, f);
		load8f(resid + o, r);
		load8f(bias + c, bb);
#pragma unroll
		for (int i = 0; i < 8; i++) f[i] += r[i] + bb[i];
		store8f(out + o, f);
	}
}

// bias_grad_bf16_v8: dbias[c] += sum_r dout[r,c] for bf16 dout; block (32, 8) covers
// 256 columns (8 per thread), blockIdx.y splits rows.
extern "C" __global__ void bias_grad_bf16_v8(float* dbias, const uint4* dout, int N, int C) {
	__shared__ float sh[8][257];
	int cv = blockIdx.x * 32 + threadIdx.x; // vector column
	float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	if (cv * 8 < C)
		for (int r = blockIdx.y * 8 + threadIdx.y; r < N; r += gridDim.y * 8) {
			float f[8];
			unpack8(dout[(long)r * (C / 8) + cv], f);
#pragma unroll
			for (int i = 0; i < 8; i++) s[i] += f[i];
		}
#pragma unroll
	for (int i = 0; i < 8; i++) sh[threadIdx.y][threadIdx.x * 8 + i] = s[i];
	__syncthreads();
	int t = threadIdx.y * 32 + threadIdx.x; // 256 threads, one column each
	int c = blockIdx.x * 256 + t;
	if (c < C) {
		float tot = 0.f;
		for (int k = 0; k < 8; k++) tot += sh[k][t];
		atomicAdd(&dbias[c], tot);
	}
}

// layernorm_bwd_j: layernorm_bwd for rows of C <= 32·J elements, each lane keeping
// its share of a row in registers so that all of a row's loads are in flight at
// once (the plain kernel waits on them one loop iteration at a time). When dop is
// set it also receives the updated dinp in bf16 (the next GEMM's operand); when
// dcol is set, the column sums of the updated dinp are added to it (the bias
// gradient of the residual branch that dinp flows into next).
template <int J>
__device__ void layernorm_bwd_j(float* dinp, bf16* dop, float* dcol, float* dw, float* db, const float* dout, const float* inp, const float* w,
                                const float* mean, const float* rstd, int N, int C, int rowsPerBlock) {
	extern __shared__ float sh[];
	float* sdw = sh;
	float* sdb = sh + C;
	float* sdc = sh + 2 * C; // column sums of the new dinp, when dcol is set
	for (int c = threadIdx.x; c < (dcol ? 3 : 2) * C; c += blockDim.x) sh[c] = 0.f;
	__syncthreads();
	int warps = blockDim.x / 32, wid = threadIdx.x / 32, lane = threadIdx.x & 31;
	int first = blockIdx.x * rowsPerBlock;
	int last = min(first + rowsPerBlock, N);
	for (int row = first + wid; row < last; row += warps) {
		const float* x = inp + (long)row * C;
		const float* g = dout + (long)row * C;
		float* di = dinp + (long)row * C;
		float m = mean[row], r = rstd[row];
		float xh[J], gv[J], wv[J], dv[J];
#pragma unroll
		for (int j = 0; j < J; j++) {
			int c = j * 32 + lane;
			bool ok = c < C;
			xh[j] = ok ? x[c] : 0.f;
			gv[j] = ok ? g[c] : 0.f;
			wv[j] = ok ? w[c] : 0.f;
			dv[j] = ok ? di[c] : 0.f;
		}
		float sumD = 0.f, sumDX = 0.f;
#pragma unroll
		for (int j = 0; j < J; j++) {
			xh[j] = (xh[j] - m) * r;
			float dn = gv[j] * wv[j];
			sumD += dn;
			sumDX += dn * xh[j];
		}
		sumD = warp_sum(sumD) / C;
		sumDX = warp_sum(sumDX) / C;
#pragma unroll
		for (int j = 0; j < J; j++) {
			int c = j * 32 + lane;
			if (c < C) {
				float v = dv[j] + r * (gv[j] * wv[j] - sumD - xh[j] * sumDX);
				di[c] = v;
				if (dop) dop[(long)row * C + c] = from_f<bf16>(v);
				if (dcol) atomicAdd(&sdc[c], v);
				atomicAdd(&sdw[c], gv[j] * xh[j]);
				atomicAdd(&sdb[c], gv[j]);
			}
		}
	}
	__syncthreads();
	for (int c = threadIdx.x; c < C; c += blockDim.x) {
		atomicAdd(&dw[c], sdw[c]);
		atomicAdd(&db[c], sdb[c]);
		if (dcol) atomicAdd(&dcol[c], sdc[c]);
	}
}

#define LNB(J)                                                                                                                  \
	extern "C" __global__ void layernorm_bwd_##J(float* dinp, bf16* dop, float* dcol, float* dw, float* db, const float* dout,      \
	                                             const float* inp, const float* w, const float* mean, const float* rstd, int N, int C, \
	                                             int rows) {                                                                        \
		layernorm_bwd_j<J>(dinp, dop, dcol, dw, db, dout, inp, w, mean, rstd, N, C, rows);                                      \
	}
LNB(8)
LNB(16)
LNB(24)
LNB(32)

// gelu_bwd_bias_grad_bf16_v8: d = gelu'(h + hbias)·d in place (bf16, rows of
// C % 8 == 0; hbias may be null) and dbias[c] += sum_r d[r,c] of the stored
// (rounded) values, in one pass. Block
// (32, 8) covers 256 columns; blockIdx.y splits the rows.
extern "C" __global__ void gelu_bwd_bias_grad_bf16_v8(uint4* d, const uint4* h, const float* hbias, float* dbias, int N, int C) {
	__shared__ float sh[8][257];
	int cv = blockIdx.x * 32 + threadIdx.x;
	float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	float hb[8] = {0, 0, 0, 0, 0, 0, 0, 0};
	if (hbias && cv * 8 < C) load8f(hbias + cv * 8, hb);
	if (cv * 8 < C)
		for (int r = blockIdx.y * 8 + threadIdx.y; r < N; r += gridDim.y * 8) {
			long v = (long)r * (C / 8) + cv;
			float x8[8], d8[8];
			unpack8(h[v], x8);
			unpack8(d[v], d8);
#pragma unroll
			for (int i = 0; i < 8; i++) x8[i] += hb[i];
#pragma unroll
			for (int i = 0; i < 8; i++) {
				float x = x8[i];
				float u = GELU_K * (x + 0.044715f * x * x * x);
				float th = tanhf(u);
				float gd = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * GELU_K * (1.f + 3.f * 0.044715f * x * x);
				d8[i] *= gd;
			}
			uint4 o = pack8(d8);
			d[v] = o;
			unpack8(o, d8);
#pragma unroll
			for (int i = 0; i < 8; i++) s[i] += d8[i];
		}
#pragma unroll
	for (int i = 0; i < 8; i++) sh[threadIdx.y][threadIdx.x * 8 + i] = s[i];
	__syncthreads();
	int t = threadIdx.y * 32 + threadIdx.x;
	int c = blockIdx.x * 256 + t;
	if (c < C) {
		float tot = 0.f;
		for (int k = 0; k < 8; k++) tot += sh[k][t];
		atomicAdd(&dbias[c], tot);
	}
}

// residual_bias_ln_j: residual_bias_ln for rows of C <= 32·J elements with the
// row in registers, so that its loads are all in flight at once.
template <int J>
__device__ void residual_bias_ln_j(float* res, const float* resid, const float* bias, bf16* ln, float* mean, float* rstd,
                                   const float* w, const float* b, int N, int C) {
	int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int lane = threadIdx.x & 31;
	if (row >= N) return;
	float* x = res + (long)row * C;
	const float* rr = resid + (long)row * C;
	float v[J];
	float s = 0.f;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int c = j * 32 + lane;
		v[j] = c < C ? x[c] + rr[c] + bias[c] : 0.f;
		s += v[j];
	}
	float m = warp_sum(s) / C;
	float v2 = 0.f;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int c = j * 32 + lane;
		float dd = c < C ? v[j] - m : 0.f;
		v2 += dd * dd;
	}
	float r = rsqrtf(warp_sum(v2) / C + 1e-5f);
	bf16* o = ln + (long)row * C;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int c = j * 32 + lane;
		if (c < C) {
			x[c] = v[j];
			o[c] = from_f<bf16>((v[j] - m) * r * w[c] + b[c]);
		}
	}
	if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

// layernorm_fwd_bf16_j: layernorm_fwd (bf16 output) with the row in registers.
template <int J>
__device__ void layernorm_fwd_bf16_j(bf16* out, float* mean, float* rstd, const float* inp, const float* w, const float* b, int N, int C) {
	int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int lane = threadIdx.x & 31;
	if (row >= N) return;
	const float* x = inp + (long)row * C;
	float v[J];
	float s = 0.f;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int c = j * 32 + lane;
		v[j] = c < C ? x[c] : 0.f;
		s += v[j];
	}
	float m = warp_sum(s) / C;
	float v2 = 0.f;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int c = j * 32 + lane;
		float dd = c < C ? v[j] - m : 0.f;
		v2 += dd * dd;
	}
	float r = rsqrtf(warp_sum(v2) / C + 1e-5f);
	bf16* o = out + (long)row * C;
#pragma unroll
	for (int j = 0; j < J; j++) {
		int c = j * 32 + lane;
		if (c < C) o[c] = from_f<bf16>((v[j] - m) * r * w[c] + b[c]);
	}
	if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

#define LNF(J)                                                                                                                   \
	extern "C" __global__ void residual_bias_ln_##J(float* res, const float* resid, const float* bias, bf16* ln, float* mean,   \
	                                                float* rstd, const float* w, const float* b, int N, int C) {                \
		residual_bias_ln_j<J>(res, resid, bias, ln, mean, rstd, w, b, N, C);                                                    \
	}                                                                                                                            \
	extern "C" __global__ void layernorm_fwd_bf16_##J(bf16* out, float* mean, float* rstd, const float* inp, const float* w,     \
	                                                  const float* b, int N, int C) {                                           \
		layernorm_fwd_bf16_j<J>(out, mean, rstd, inp, w, b, N, C);                                                              \
	}
LNF(8)
LNF(16)
LNF(24)
LNF(32)

// gelu_bias_bf16_v8: g = gelu(h + bias) with h (the bare GEMM product) left as it
// is: the backward adds the bias again, which saves writing h back.
extern "C" __global__ void gelu_bias_bf16_v8(uint4* g, const uint4* h, const float* bias, int N, int C) {
	VEC_STRIDE(v, N * (C / 8)) {
		int c = (v * 8) % C;
		float f[8], bb[8], y[8];
		unpack8(h[v], f);
		load8f(bias + c, bb);
#pragma unroll
		for (int i = 0; i < 8; i++) {
			float x = f[i] + bb[i];
			float u = GELU_K * (x + 0.044715f * x * x * x);
			y[i] = 0.5f * x * (1.f + tanhf(u));
		}
		g[v] = pack8(y);
	}
}

// gelu_bias_bf16 and gelu_bwd_bias_bf16: the plain forms of the two kernels above
// (the backward without the bias gradient, which BiasGrad then adds).
extern "C" __global__ void gelu_bias_bf16(bf16* g, const bf16* h, const float* bias, int N, int C) {
	GRID_STRIDE(i, (long)N * C) {
		float x = to_f(h[i]) + bias[i % C];
		float u = GELU_K * (x + 0.044715f * x * x * x);
		g[i] = from_f<bf16>(0.5f * x * (1.f + tanhf(u)));
	}
}
extern "C" __global__ void gelu_bwd_bias_bf16(bf16* d, const bf16* h, const float* hbias, int N, int C) {
	GRID_STRIDE(i, (long)N * C) {
		float x = to_f(h[i]) + (hbias ? hbias[i % C] : 0.f);
		float u = GELU_K * (x + 0.044715f * x * x * x);
		float th = tanhf(u);
		float gd = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * GELU_K * (1.f + 3.f * 0.044715f * x * x);
		d[i] = from_f<bf16>(gd * to_f(d[i]));
	}
}

// decode_attention: causal attention of one new position's query q [C] over the
// n positions of a KV cache kc, vc [n,C] (the new one last), for sampling one
// token at a time. One block per head; the scores live in dynamic shared memory
// (n floats).
extern "C" __global__ void decode_attention(float* out, const float* q, const float* kc, const float* vc, int n, int C, int NH) {
	extern __shared__ float score[];
	int h = blockIdx.x, hs = C / NH;
	const float* qh = q + h * hs;
	float scale = rsqrtf((float)hs);
	float m = -SN_INF;
	for (int t = threadIdx.x; t < n; t += blockDim.x) {
		const float* k = kc + (long)t * C + h * hs;
		float s = 0.f;
		for (int d = 0; d < hs; d++) s += qh[d] * k[d];
		score[t] = s * scale;
		m = fmaxf(m, score[t]);
	}
	m = block_max(m);
	float sum = 0.f;
	for (int t = threadIdx.x; t < n; t += blockDim.x) {
		score[t] = __expf(score[t] - m);
		sum += score[t];
	}
	sum = block_sum(sum); // its barrier also makes every score visible
	for (int d = threadIdx.x; d < hs; d += blockDim.x) {
		float acc = 0.f;
		for (int t = 0; t < n; t++) acc += score[t] * vc[(long)t * C + h * hs + d];
		out[h * hs + d] = acc / sum;
	}
}
