//go:build cgo

package vec

/*
#cgo CFLAGS: -O3
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VEC_X86 1
#endif

#define GELU_S 0.7978845608028654f
#define GELU_A 0.044715f

static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// Cephes expf, as Exp32 in vec_go.go.
static inline float exp_s(float x) {
	if (x < -87.33654f) return 0.0f;
	if (x > 88.0f) x = 88.0f;
	float fx = x * 1.442695040888963f + 0.5f;
	int32_t n = (int32_t)fx;
	if ((float)n > fx) n--;
	float fn = (float)n;
	x = x - fn * 0.693359375f - fn * -2.12194440e-4f;
	float z = x * x;
	float y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x + 1.6666665459e-1f) * x + 5.0000001201e-1f;
	y = y * z + x + 1.0f;
	return y * u2f((uint32_t)(n + 127) << 23);
}

// Eigen's rational tanh for float, as Tanh32 in vec_go.go.
static inline float tanh_s(float x) {
	const float c = 7.90531110763549805f;
	if (x >= c) return 1.0f;
	if (x <= -c) return -1.0f;
	float x2 = x * x;
	float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
	p = p * x2 + -8.60467152213735e-11f;
	p = p * x2 + 5.12229709037114e-08f;
	p = p * x2 + 1.48572235717979e-05f;
	p = p * x2 + 6.37261928875436e-04f;
	p = p * x2 + 4.89352455891786e-03f;
	p *= x;
	float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
	q = q * x2 + 2.26843463243900e-03f;
	q = q * x2 + 4.89352518554385e-03f;
	return p / q;
}

static double exp_shift_c(float *v, int64_t n, float shift) {
	double s = 0;
	for (int64_t i = 0; i < n; i++) { v[i] = exp_s(v[i] - shift); s += v[i]; }
	return s;
}

static void gelu_fwd_c(float *out, float *th, const float *in, int64_t n) {
	for (int64_t i = 0; i < n; i++) {
		float x = in[i];
		float t = tanh_s(GELU_S * (x + GELU_A * x * x * x));
		th[i] = t;
		out[i] = 0.5f * x * (1.0f + t);
	}
}

static void gelu_bwd_c(float *dinp, const float *th, const float *in, const float *dout, int64_t n) {
	for (int64_t i = 0; i < n; i++) {
		float x = in[i], t = th[i];
		float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_S * (1.0f + 3.0f * GELU_A * x * x);
		dinp[i] = d * dout[i];
	}
}

#ifdef VEC_X86
// tail_mask selects the first rem (< 8) lanes: the last partial vector goes
// through the same vector code as the others, so that an element's result does
// not depend on where a caller's chunk boundaries fall.
__attribute__((target("avx2,fma")))
static inline __m256i tail_mask(int64_t rem) {
	return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

__attribute__((target("avx2,fma")))
static inline __m256 exp8(__m256 x) {
	__m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
	x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.0f));
	__m256 fl = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.442695040888963f), _mm256_set1_ps(0.5f)));
	x = _mm256_fnmadd_ps(fl, _mm256_set1_ps(0.693359375f), x);
	x = _mm256_fnmadd_ps(fl, _mm256_set1_ps(-2.12194440e-4f), x);
	__m256 z = _mm256_mul_ps(x, x);
	__m256 y = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), x, _mm256_set1_ps(1.3981999507e-3f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
	y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.0f));
	__m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fl), _mm256_set1_epi32(127)), 23);
	y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
	return _mm256_andnot_ps(under, y);
}

__attribute__((target("avx2,fma")))
static inline __m256 tanh8(__m256 x) {
	const __m256 c = _mm256_set1_ps(7.90531110763549805f);
	const __m256 signbit = _mm256_set1_ps(-0.0f);
	__m256 sat = _mm256_cmp_ps(_mm256_andnot_ps(signbit, x), c, _CMP_GE_OQ);
	__m256 one = _mm256_or_ps(_mm256_and_ps(x, signbit), _mm256_set1_ps(1.0f));
	__m256 x2 = _mm256_mul_ps(x, x);
	__m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(-2.76076847742355e-16f), _mm256_set1_ps(2.00018790482477e-13f));
	p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-8.60467152213735e-11f));
	p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(5.12229709037114e-08f));
	p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(1.48572235717979e-05f));
	p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(6.37261928875436e-04f));
	p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(4.89352455891786e-03f));
	p = _mm256_mul_ps(p, x);
	__m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(1.19825839466702e-06f), _mm256_set1_ps(1.18534705686654e-04f));
	q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(2.26843463243900e-03f));
	q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(4.89352518554385e-03f));
	return _mm256_blendv_ps(_mm256_div_ps(p, q), one, sat);
}

__attribute__((target("avx2,fma")))
static double exp_shift_avx2(float *v, int64_t n, float shift) {
	__m256 s = _mm256_set1_ps(shift);
	__m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256 y = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i), s));
		_mm256_storeu_ps(v + i, y);
		a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(y)));
		a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)));
	}
	if (i < n) {
		__m256i m = tail_mask(n - i);
		__m256 y = exp8(_mm256_sub_ps(_mm256_maskload_ps(v + i, m), s));
		y = _mm256_and_ps(y, _mm256_castsi256_ps(m));
		_mm256_maskstore_ps(v + i, m, y);
		a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(y)));
		a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)));
	}
	double t[4];
	_mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
	return (t[0] + t[1]) + (t[2] + t[3]);
}

__attribute__((target("avx2,fma")))
static void gelu_fwd_avx2(float *out, float *th, const float *in, int64_t n) {
	const __m256 s = _mm256_set1_ps(GELU_S), a = _mm256_set1_ps(GELU_A);
	const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
	for (int64_t i = 0; i < n; i += 8) {
		int tail = n - i < 8;
		__m256i m = tail ? tail_mask(n - i) : _mm256_set1_epi32(-1);
		__m256 x = tail ? _mm256_maskload_ps(in + i, m) : _mm256_loadu_ps(in + i);
		__m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
		__m256 t = tanh8(_mm256_mul_ps(s, _mm256_fmadd_ps(a, x3, x)));
		__m256 o = _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t));
		if (tail) {
			_mm256_maskstore_ps(th + i, m, t);
			_mm256_maskstore_ps(out + i, m, o);
		} else {
			_mm256_storeu_ps(th + i, t);
			_mm256_storeu_ps(out + i, o);
		}
	}
}

__attribute__((target("avx2,fma")))
static void gelu_bwd_avx2(float *dinp, const float *th, const float *in, const float *dout, int64_t n) {
	const __m256 s = _mm256_set1_ps(GELU_S), a3 = _mm256_set1_ps(3.0f * GELU_A);
	const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
	for (int64_t i = 0; i < n; i += 8) {
		int tail = n - i < 8;
		__m256i m = tail ? tail_mask(n - i) : _mm256_set1_epi32(-1);
		__m256 x, t, g;
		if (tail) {
			x = _mm256_maskload_ps(in + i, m);
			t = _mm256_maskload_ps(th + i, m);
			g = _mm256_maskload_ps(dout + i, m);
		} else {
			x = _mm256_loadu_ps(in + i);
			t = _mm256_loadu_ps(th + i);
			g = _mm256_loadu_ps(dout + i);
		}
		__m256 sech2 = _mm256_fnmadd_ps(t, t, one);
		__m256 inner = _mm256_mul_ps(s, _mm256_fmadd_ps(_mm256_mul_ps(a3, x), x, one));
		__m256 d = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(half, x), sech2), inner, _mm256_mul_ps(half, _mm256_add_ps(one, t)));
		d = _mm256_mul_ps(d, g);
		if (tail) {
			_mm256_maskstore_ps(dinp + i, m, d);
		} else {
			_mm256_storeu_ps(dinp + i, d);
		}
	}
}

// vec_avx2 runs on every CPU, so it must not carry the avx2 target attribute.
static int vec_avx2(void) {
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int vec_avx2(void) { return 0; }
static double exp_shift_avx2(float *v, int64_t n, float shift) { return exp_shift_c(v, n, shift); }
static void gelu_fwd_avx2(float *out, float *th, const float *in, int64_t n) { gelu_fwd_c(out, th, in, n); }
static void gelu_bwd_avx2(float *dinp, const float *th, const float *in, const float *dout, int64_t n) { gelu_bwd_c(dinp, th, in, dout, n); }
#endif
*/
import "C"

import "unsafe"

const haveC = true

var avx2 = C.vec_avx2() != 0

func cImpl() string {
	if avx2 {
		return "avx2"
	}
	return "c"
}

func fp(s []float32) *C.float { return (*C.float)(unsafe.Pointer(&s[0])) }

func expShiftC(v []float32, shift float32) float64 {
	if avx2 {
		return float64(C.exp_shift_avx2(fp(v), C.int64_t(len(v)), C.float(shift)))
	}
	return float64(C.exp_shift_c(fp(v), C.int64_t(len(v)), C.float(shift)))
}

func geluForwardC(out, th, inp []float32) {
	if avx2 {
		C.gelu_fwd_avx2(fp(out), fp(th), fp(inp), C.int64_t(len(inp)))
		return
	}
	C.gelu_fwd_c(fp(out), fp(th), fp(inp), C.int64_t(len(inp)))
}

func geluBackwardC(dinp, th, inp, dout []float32) {
	if avx2 {
		C.gelu_bwd_avx2(fp(dinp), fp(th), fp(inp), fp(dout), C.int64_t(len(inp)))
		return
	}
	C.gelu_bwd_c(fp(dinp), fp(th), fp(inp), fp(dout), C.int64_t(len(inp)))
}
