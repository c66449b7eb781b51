/* pool.c: max pooling (with saved argmax) and global average pooling. */
#include <math.h>

#include "kernels.h"

/* Output size of a pooling window without ceil mode: (in + 2*pad - k) / stride + 1. */
static int pool_out_size(int in, int k, int stride, int pad) {
    return (in + 2 * pad - k) / stride + 1;
}

/* 1 if the plane x (n) holds a NaN (a vectorisable scan, no early exit). */
static int plane_has_nan(const float *x, int n) {
    int any = 0;
    for (int i = 0; i < n; i++) {
        any |= x[i] != x[i];
    }
    return any;
}

/* One (H, W) plane without NaN, an output row at a time: the window elements are
 * visited in row-major order (rows h, then column offsets u), and for each
 * element the whole output row j = 0..Wo-1 is updated.  The inner loop over j
 * has no dependency between iterations, so it runs as vector compares and
 * blends instead of one long compare chain per window; a strict > keeps the
 * first maximum on ties, as PyTorch does. */
static void maxpool_plane(float *restrict y, int32_t *restrict am, const float *restrict x,
                          int H, int W, int Ho, int Wo, int k, int stride, int pad) {
    for (int i = 0; i < Ho; i++) {
        const int h0 = i * stride - pad;
        const int hs = h0 < 0 ? 0 : h0;
        const int he = h0 + k > H ? H : h0 + k;
        float *restrict best = y + (size_t)i * Wo;
        int32_t *restrict besti = am + (size_t)i * Wo;
        for (int j = 0; j < Wo; j++) {
            const int w0 = j * stride - pad;
            best[j] = -INFINITY;
            besti[j] = hs * W + (w0 < 0 ? 0 : w0); /* first in-bounds element */
        }
        for (int h = hs; h < he; h++) {
            const float *row = x + (size_t)h * W;
            for (int u = 0; u < k; u++) {
                /* output columns j whose column w = j*stride - pad + u is inside [0, W) */
                const int off = u - pad;
                int jlo = off >= 0 ? 0 : (-off + stride - 1) / stride;
                int jhi = (W - 1 - off) >= 0 ? (W - 1 - off) / stride + 1 : 0;
                jhi = jhi < Wo ? jhi : Wo;
                const float *src = row + off;
                const int32_t base = h * W + off;
                for (int j = jlo; j < jhi; j++) {
                    const float v = src[j * stride];
                    const float b = best[j];
                    const int32_t bi = besti[j];
                    const int32_t cand = base + j * stride;
                    const int32_t m = -(int32_t)(v > b); /* all ones where v wins */
                    best[j] = v > b ? v : b;
                    besti[j] = (cand & m) | (bi & ~m);
                }
            }
        }
    }
}

/* The same on a plane holding NaN, with PyTorch's rule: an element replaces the
 * running maximum if it is greater or NaN (so the last NaN of a window wins). */
static void maxpool_plane_nan(float *y, int32_t *am, const float *x, int H, int W, int Ho,
                              int Wo, int k, int stride, int pad) {
    for (int i = 0; i < Ho; i++) {
        const int h0 = i * stride - pad;
        const int hs = h0 < 0 ? 0 : h0;
        const int he = h0 + k > H ? H : h0 + k;
        for (int j = 0; j < Wo; j++) {
            const int w0 = j * stride - pad;
            const int ws = w0 < 0 ? 0 : w0;
            const int we = w0 + k > W ? W : w0 + k;
            float best = -INFINITY;
            int32_t besti = hs * W + ws;
            for (int h = hs; h < he; h++) {
                for (int w = ws; w < we; w++) {
                    const float v = x[(size_t)h * W + w];
                    if (v > best || isnan(v)) {
                        best = v;
                        besti = h * W + w;
                    }
                }
            }
            y[i * Wo + j] = best;
            am[i * Wo + j] = besti;
        }
    }
}

/* Max pool forward, overwrites out and argmax.
 * out, argmax (N,C,Ho,Wo); inp (N,C,H,W); Ho = (H + 2 pad - k) / stride + 1.
 * out[n,c,i,j] = max over the window rows i*stride-pad .. +k-1, cols j*stride-pad .. +k-1
 * of inp[n,c] with padding treated as -inf (never chosen); argmax = h*W + w of the
 * chosen element, the first one in row-major order on ties, and a NaN wins (the last
 * NaN of the window; both as PyTorch).  Requires pad <= k/2 (PyTorch's rule), so no window is all padding. */
eenet_status eenet_maxpool2d_forward(float *out, int32_t *argmax, const float *inp, int N,
                                     int C, int H, int W, int k, int stride, int pad) {
    if (N < 1 || C < 1 || H < 1 || W < 1 || k < 1 || stride < 1 || pad < 0 || 2 * pad > k) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "maxpool2d_forward: bad sizes N=%d C=%d H=%d W=%d kernel=%d "
                               "stride=%d padding=%d (need positive sizes, 0 <= padding <= "
                               "kernel/2)",
                               N, C, H, W, k, stride, pad);
    }
    const int Ho = pool_out_size(H, k, stride, pad);
    const int Wo = pool_out_size(W, k, stride, pad);
    if (Ho < 1 || Wo < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "maxpool2d_forward: kernel %d larger than the padded input %dx%d",
                               k, H + 2 * pad, W + 2 * pad);
    }
    const int planes = N * C;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)planes * H * W > 16384)
    for (int p = 0; p < planes; p++) {
        const float *x = inp + (size_t)p * H * W;
        float *y = out + (size_t)p * Ho * Wo;
        int32_t *am = argmax + (size_t)p * Ho * Wo;
        if (plane_has_nan(x, H * W)) {
            maxpool_plane_nan(y, am, x, H, W, Ho, Wo, k, stride, pad);
        } else {
            maxpool_plane(y, am, x, H, W, Ho, Wo, k, stride, pad);
        }
    }
    return EENET_OK;
}

/* Max pool backward, ACCUMULATES: dinp[n,c,argmax[n,c,i,j]] += dout[n,c,i,j].
 * dinp (N,C,H,W); dout, argmax (N,C,Ho,Wo).  Parallel over (n,c) planes, so
 * overlapping windows (stride < k) never race. */
eenet_status eenet_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                                      int N, int C, int H, int W, int Ho, int Wo) {
    if (N < 1 || C < 1 || H < 1 || W < 1 || Ho < 1 || Wo < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "maxpool2d_backward: bad sizes N=%d C=%d H=%d W=%d Ho=%d Wo=%d",
                               N, C, H, W, Ho, Wo);
    }
    const int planes = N * C;
    const int HW = H * W, HWo = Ho * Wo;
    int bad = 0;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)planes * HW > 16384) reduction(|| : bad)
    for (int p = 0; p < planes; p++) {
        float *dx = dinp + (size_t)p * HW;
        const float *dy = dout + (size_t)p * HWo;
        const int32_t *am = argmax + (size_t)p * HWo;
        for (int i = 0; i < HWo; i++) {
            const int32_t a = am[i];
            if (a < 0 || a >= HW) {
                bad = 1;
                continue;
            }
            dx[a] += dy[i];
        }
    }
    if (bad) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "maxpool2d_backward: argmax holds an index outside [0, %d)", HW);
    }
    return EENET_OK;
}

/* sum_i x[i] with LANES float accumulators (vectorisable without reordering
 * licences), combined in double. */
#define LANES 16
static double plane_sum(const float *x, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            acc[l] += x[i + l];
        }
    }
    double s = 0.0;
    for (; i < n; i++) {
        s += x[i];
    }
    for (int l = 0; l < LANES; l++) {
        s += acc[l];
    }
    return s;
}

/* AVX-512 copy of plane_sum, picked at run time: lane l of the accumulator is
 * acc[l] above and the total is formed in the same order (tail first, then lanes
 * 0..15, in double), so it returns the same bits; the portable build runs the
 * 16 lanes as four SSE2 registers. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GAP_HAVE_AVX512 1

static int gap_use_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return cached;
}

__attribute__((target("avx512f"))) static double plane_sum_avx512(const float *x, int n) {
    __m512 a = _mm512_setzero_ps();
    int i = 0;
    for (; i + LANES <= n; i += LANES) {
        a = _mm512_add_ps(a, _mm512_loadu_ps(x + i));
    }
    double s = 0.0;
    for (; i < n; i++) {
        s += x[i];
    }
    float acc[LANES];
    _mm512_storeu_ps(acc, a);
    for (int l = 0; l < LANES; l++) {
        s += acc[l];
    }
    return s;
}
#else
#define GAP_HAVE_AVX512 0
static int gap_use_avx512(void) {
    return 0;
}
#endif

/* Global average pool forward, overwrites: out[n,c] = sum_i inp[n,c,i] / HW.
 * out (N,C); inp (N,C,HW). */
eenet_status eenet_global_avgpool_forward(float *out, const float *inp, int N, int C, int HW) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "global_avgpool_forward: sizes must be positive, got N=%d C=%d "
                               "HW=%d",
                               N, C, HW);
    }
    const int planes = N * C;
    const int wide = gap_use_avx512();
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)planes * HW > 32768)
    for (int p = 0; p < planes; p++) {
#if GAP_HAVE_AVX512
        if (wide) {
            out[p] = (float)(plane_sum_avx512(inp + (size_t)p * HW, HW) / HW);
            continue;
        }
#endif
        out[p] = (float)(plane_sum(inp + (size_t)p * HW, HW) / HW);
    }
    return EENET_OK;
}

/* Global average pool backward, ACCUMULATES: dinp[n,c,i] += dout[n,c] / HW. */
eenet_status eenet_global_avgpool_backward(float *dinp, const float *dout, int N, int C,
                                           int HW) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "global_avgpool_backward: sizes must be positive, got N=%d C=%d "
                               "HW=%d",
                               N, C, HW);
    }
    const int planes = N * C;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)planes * HW > 32768)
    for (int p = 0; p < planes; p++) {
        float *dx = dinp + (size_t)p * HW;
        const float g = dout[p] / (float)HW;
        for (int i = 0; i < HW; i++) {
            dx[i] += g;
        }
    }
    return EENET_OK;
}
