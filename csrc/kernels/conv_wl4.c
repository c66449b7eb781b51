/* conv_wl4.c: Winograd F(4x4,3x3), 3x3 stride-1 pad-1, 16 -> 16 channels on
 * small planes (4 < H, W <= 8: 2x2 tiles of 4x4 outputs; EENet-8 f=4's
 * 16->16 7x7), forward, backward-data and weight gradient, AVX-512, one
 * sample at a time with the CHANNELS in the 16 lanes of a zmm (conv.c
 * chooses it, see wl4_pick).
 *
 * Transforms and interpolation points {0, 1, -1, 1/2, -2, inf} as
 * conv_wino4.c (its header gives B^T, G, A^T): for the tile (ty, tx) the
 * input tile d (6x6) is read at rows 4ty-1..4ty+4, columns 4tx-1..4tx+4
 * (zero outside the plane), V = B^T d B, U = G g G^T (6x6, in double, rounded
 * once), Y = A^T (sum_c U_c (.) V_c) A (4x4; outputs outside the plane are
 * dropped).  A 7x7 plane takes 4 tiles: 4 x 36 = 144 products per channel
 * pair (F(2x2): 16 tiles x 16 = 256).
 *
 * Layout per sample (lanes: input channels c for the input side, output
 * channels k for the products and the output side):
 *   xp (10, 10, 16): the sample's zero-padded input, pixel-major (one
 *       16x16 register transpose per 16 pixels), interior at (1, 1);
 *   v (4, 36, 16) = V_e of tile t, lane c (transforms: vertical adds/FMAs
 *       of whole vectors, the same for every lane);
 *   m (4, 36, 16) = M_e[k] of tile t, lane k: the FMA chain
 *       sum_{c = 0..15, in order} U_e[c][k] * V_e[c] (U_e[c] a vector over k
 *       from u (36, 16, 16), V_e[c] broadcast from memory);
 *   yb (H*W, 16) = Y, lane k, transposed back to (16, H, W) with the bias
 *       or the old output added (out = y + bias, bias 0 without one; or
 *       out = y + old when accumulating, as eenet_conv_lanes_out).
 * Every sample goes through the same operations whatever its batch, thread
 * count or position, so a sample's bits do not depend on them.
 *
 * Weight gradient (eenet_wl4_dw): dU_e[k][c] = sum over samples and tiles of
 * D_e[k] V_e[c] with D = A dY A^T (6x6 from the 4x4 dout tile, zero outside
 * the plane; A = (A^T)^T), V as above; dw[k][c] += G^T dU[k][c] G.  Per
 * sample V (lane c) and D (lane k) are formed as above, then for each e a
 * block of 4 samples x 4 tiles is summed in 16 registers (lane c, one per k,
 * from zero) and added to the thread's partial dU (36, 16 k, 16 c); the
 * partials are added in thread order and G^T dU G is formed in double
 * (rounded once into dw).  dbias is the sum of the transposed dout vectors.
 *
 * Threads: samples split evenly (omp for, static); the only serial work is
 * the weight transform (~1% of a batch-128 call).  Measured 16->16 7x7 at
 * batch 128 (wall clock, min of 300x5 calls, C harness with buffers
 * allocated once): forward 138 -> 73 us and backward-data 138-146 -> 73 us
 * from 1 to 2 threads (1.9-2.0x); through eenet._core (min of 400x5 calls)
 * forward 153-158 -> 75-85 us, backward-data 162-166 -> 82-92 us: the
 * backward-data's extra ~7 us is the caller's zero-filled dinp (np.zeros:
 * a serial memset, then read by both cores).  Lower 2-thread figures
 * (217-232 GFLOP/s in kernels.py) came with load from other processes, or
 * with fresh zero pages for dinp (see touch_pages_for_write).
 */
#include "conv_winograd.h"

#include <string.h>

#include "eenet.h"

#define WL4_PW 10 /* padded plane width/height: 2 tiles of 4, +1 each side */

int eenet_wl4_ok(int C, int K, int H, int W) {
    return C == 16 && K == 16 && H > 4 && H <= 8 && W > 4 && W <= 8;
}

/* Slot: xp (10*10*16), v (4*36*16), m (4*36*16), yb (64*16) floats. */
#define WL4_XP 0
#define WL4_V (WL4_XP + WL4_PW * WL4_PW * 16)
#define WL4_M (WL4_V + 4 * 36 * 16)
#define WL4_Y (WL4_M + 4 * 36 * 16)
#define WL4_SLOT (WL4_Y + 64 * 16)

/* Weight-gradient slot: dU partial (36, 16 k, 16 c), xp, yp (8, 8, 16) the
 * sample's dout pixel-major (zero outside the plane), then V and D of a block
 * of WL4_NB samples ((WL4_NB, 4, 36, 16) each). */
#define WL4_NB 4
#define WD_DU 0
#define WD_XP (WD_DU + 36 * 256)
#define WD_YP (WD_XP + WL4_PW * WL4_PW * 16)
#define WD_V (WD_YP + 64 * 16)
#define WD_D (WD_V + WL4_NB * 4 * 36 * 16)
#define WD_DB (WD_D + WL4_NB * 4 * 36 * 16) /* dbias partial (16 k) */
#define WD_SLOT (WD_DB + 16)

void eenet_wl4_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot) {
    (void)H, (void)W;
    *shared = eenet_round16(36 * (size_t)C * K);
    *slot = eenet_round16(WL4_SLOT > WD_SLOT ? WL4_SLOT : WD_SLOT);
}

/* G (6x3) of the points 0, 1, -1, 1/2, -2, inf (conv_wino4.c). */
static const double wl4_G[6][3] = {{1, 0, 0},
                                   {1.0 / 3, 1.0 / 3, 1.0 / 3},
                                   {-1.0 / 3, 1.0 / 3, -1.0 / 3},
                                   {-16.0 / 15, -8.0 / 15, -4.0 / 15},
                                   {1.0 / 15, -2.0 / 15, 4.0 / 15},
                                   {0, 0, 1}};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define WL4_AVX512 __attribute__((target("avx512f")))
#define WL4_INLINE static WL4_AVX512 inline __attribute__((always_inline))

/* In-register transpose of a 16x16 block: r[i] lane j -> r[j] lane i. */
WL4_INLINE void tr16(__m512 r[16]) {
    __m512 t[16], q[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* q[4i+m], 128-bit lane L: rows 4i..4i+3 of column 4L+m */
        q[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        q[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        q[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        q[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int m = 0; m < 4; m++) {
        __m512 a = _mm512_shuffle_f32x4(q[m], q[4 + m], 0x88);
        __m512 b = _mm512_shuffle_f32x4(q[m], q[4 + m], 0xDD);
        __m512 c = _mm512_shuffle_f32x4(q[8 + m], q[12 + m], 0x88);
        __m512 d = _mm512_shuffle_f32x4(q[8 + m], q[12 + m], 0xDD);
        r[m] = _mm512_shuffle_f32x4(a, c, 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(a, c, 0xDD);
        r[4 + m] = _mm512_shuffle_f32x4(b, d, 0x88);
        r[12 + m] = _mm512_shuffle_f32x4(b, d, 0xDD);
    }
}

/* x G^T for the 3 entries x0..x2 of one row of G (rows 0 and 5 of G are unit
 * vectors: plain copies), in double. */
WL4_INLINE __m512d grow(int i, __m512d x0, __m512d x1, __m512d x2) {
    if (i == 0) {
        return x0;
    }
    if (i == 5) {
        return x2;
    }
    return _mm512_fmadd_pd(_mm512_set1_pd(wl4_G[i][2]), x2,
                           _mm512_fmadd_pd(_mm512_set1_pd(wl4_G[i][1]), x1,
                                           _mm512_mul_pd(_mm512_set1_pd(wl4_G[i][0]), x0)));
}

/* u (36, 16, 16): u[(e*16 + ci)*16 + co] = (G g G^T)[e/6][e%6] with
 * g = w[co][ci] (flip = 0; w (16, 16, 3, 3)) or g[a][b] = w[ci][co][2-a][2-b]
 * (flip = 1: backward-data); 16 -> 16 only (eenet_wl4_ok).  Per input
 * channel ci the 16 filters' 9 taps are loaded as 16 rows and transposed in
 * registers (g[ab] a vector over co), then G g G^T in double (two vectors
 * of 8), rounded once. */
static WL4_AVX512 void wl4_weights_range(float *u, const float *w, int flip, int ci0,
                                         int ci1) {
    for (int ci = ci0; ci < ci1; ci++) {
        __m512 r[16];
        for (int l = 0; l < 16; l++) {
            const float *src = flip ? w + ((size_t)ci * 16 + l) * 9 : w + ((size_t)l * 16 + ci) * 9;
            r[l] = _mm512_maskz_loadu_ps((__mmask16)0x1FF, src);
        }
        tr16(r);
        __m512d g[2][9], t[2][6][3];
        for (int ab = 0; ab < 9; ab++) {
            __m512 x = r[flip ? 8 - ab : ab];
            g[0][ab] = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
            g[1][ab] = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_shuffle_f32x4(x, x, 0xEE)));
        }
        for (int h = 0; h < 2; h++) {
            for (int i = 0; i < 6; i++) { /* t = G g (6x3) */
                for (int b = 0; b < 3; b++) {
                    t[h][i][b] = grow(i, g[h][b], g[h][3 + b], g[h][6 + b]);
                }
            }
        }
        for (int i = 0; i < 6; i++) { /* U = t G^T (6x6) */
            for (int j = 0; j < 6; j++) {
                __m256 lo = _mm512_cvtpd_ps(grow(j, t[0][i][0], t[0][i][1], t[0][i][2]));
                __m256 hi = _mm512_cvtpd_ps(grow(j, t[1][i][0], t[1][i][1], t[1][i][2]));
                __m512d both = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                                                  _mm256_castps_pd(hi), 1);
                _mm512_storeu_ps(u + ((size_t)(6 * i + j) * 16 + ci) * 16, _mm512_castpd_ps(both));
            }
        }
    }
}

WL4_AVX512 void eenet_wl4_weights(float *u, const float *w, int cout, int cin, int flip) {
    (void)cout, (void)cin;
    wl4_weights_range(u, w, flip, 0, 16);
}

/* bt6 (x B) and at6 (A^T x), shared with conv_wino4.c */
#include "wino4_tf.h"

/* m[t][e][k] = sum_{c in order} u[e][c][k] * v[t][e][c] for elements e0, e0+1
 * and the 4 tiles (8 independent FMA chains). */
WL4_INLINE void prod2(float *mm, const float *v, const float *u, int e0) {
    __m512 acc[8];
    for (int a = 0; a < 8; a++) {
        acc[a] = _mm512_setzero_ps();
    }
    const float *ua = u + (size_t)e0 * 256, *ub = ua + 256;
    for (int c = 0; c < 16; c++) {
        __m512 xa = _mm512_loadu_ps(ua + 16 * c), xb = _mm512_loadu_ps(ub + 16 * c);
        for (int t = 0; t < 4; t++) {
            const float *vt = v + (size_t)(t * 36 + e0) * 16 + c;
            acc[t] = _mm512_fmadd_ps(xa, _mm512_set1_ps(vt[0]), acc[t]);
            acc[4 + t] = _mm512_fmadd_ps(xb, _mm512_set1_ps(vt[16]), acc[4 + t]);
        }
    }
    for (int t = 0; t < 4; t++) {
        _mm512_storeu_ps(mm + (size_t)(t * 36 + e0) * 16, acc[t]);
        _mm512_storeu_ps(mm + (size_t)(t * 36 + e0 + 1) * 16, acc[4 + t]);
    }
}

/* v (4, 36, 16) = V_e of the 4 tiles of one sample x (16, H, W), lane c,
 * through xp (10, 10, 16) (borders zero, interior overwritten). */
WL4_INLINE void wl4_in(float *v, float *xp, const float *x, int H, int W) {
    const int hw = H * W;
    /* xp interior = x transposed to pixel-major (borders stay zero) */
    for (int p0 = 0; p0 < hw; p0 += 16) {
        int np = hw - p0 < 16 ? hw - p0 : 16;
        __mmask16 mk = (__mmask16)(np == 16 ? 0xFFFF : (1u << np) - 1u);
        __m512 r[16];
        for (int c = 0; c < 16; c++) {
            r[c] = _mm512_maskz_loadu_ps(mk, x + (size_t)c * hw + p0);
        }
        tr16(r);
        for (int j = 0; j < np; j++) {
            int p = p0 + j, y = p / W, xx = p % W;
            _mm512_storeu_ps(xp + ((size_t)(y + 1) * WL4_PW + xx + 1) * 16, r[j]);
        }
    }
    /* V of the 4 tiles: rows d B, then B^T (.) */
    for (int t = 0; t < 4; t++) {
        const float *b = xp + (size_t)(4 * (t >> 1) * WL4_PW + 4 * (t & 1)) * 16;
        __m512 r[6][6];
        for (int i = 0; i < 6; i++) {
            const float *ri = b + (size_t)i * WL4_PW * 16;
            bt6(r[i], _mm512_loadu_ps(ri), _mm512_loadu_ps(ri + 16), _mm512_loadu_ps(ri + 32),
                _mm512_loadu_ps(ri + 48), _mm512_loadu_ps(ri + 64), _mm512_loadu_ps(ri + 80));
        }
        float *vt = v + (size_t)t * 36 * 16;
        for (int j = 0; j < 6; j++) {
            __m512 o[6];
            bt6(o, r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j]);
            for (int i = 0; i < 6; i++) {
                _mm512_storeu_ps(vt + (size_t)(6 * i + j) * 16, o[i]);
            }
        }
    }
}

/* One sample: out (16, H, W) = conv + bias (or += conv) of x (16, H, W). */
static WL4_AVX512 void wl4_sample(float *out, int accumulate, const float *x, const float *u,
                                  const float *bias, float *slot, int H, int W) {
    float *xp = slot + WL4_XP, *v = slot + WL4_V, *mm = slot + WL4_M, *yb = slot + WL4_Y;
    const int hw = H * W;
    wl4_in(v, xp, x, H, W);
    for (int e0 = 0; e0 < 36; e0 += 2) {
        prod2(mm, v, u, e0);
    }
    /* Y = A^T M A into yb (H*W, 16) */
    for (int t = 0; t < 4; t++) {
        const int oy0 = 4 * (t >> 1), ox0 = 4 * (t & 1);
        const float *mt = mm + (size_t)t * 36 * 16;
        __m512 s[4][6];
        for (int j = 0; j < 6; j++) {
            __m512 o[4];
            at6(o, _mm512_loadu_ps(mt + (size_t)j * 16), _mm512_loadu_ps(mt + (size_t)(6 + j) * 16),
                _mm512_loadu_ps(mt + (size_t)(12 + j) * 16),
                _mm512_loadu_ps(mt + (size_t)(18 + j) * 16),
                _mm512_loadu_ps(mt + (size_t)(24 + j) * 16),
                _mm512_loadu_ps(mt + (size_t)(30 + j) * 16));
            for (int a = 0; a < 4; a++) {
                s[a][j] = o[a];
            }
        }
        for (int a = 0; a < 4 && oy0 + a < H; a++) {
            __m512 y[4];
            at6(y, s[a][0], s[a][1], s[a][2], s[a][3], s[a][4], s[a][5]);
            for (int bb = 0; bb < 4 && ox0 + bb < W; bb++) {
                _mm512_storeu_ps(yb + (size_t)((oy0 + a) * W + ox0 + bb) * 16, y[bb]);
            }
        }
    }
    /* out (16, H*W) = yb transposed + bias (or + old) */
    for (int p0 = 0; p0 < hw; p0 += 16) {
        int np = hw - p0 < 16 ? hw - p0 : 16;
        __mmask16 mk = (__mmask16)(np == 16 ? 0xFFFF : (1u << np) - 1u);
        __m512 r[16];
        for (int j = 0; j < 16; j++) {
            r[j] = j < np ? _mm512_loadu_ps(yb + (size_t)(p0 + j) * 16) : _mm512_setzero_ps();
        }
        tr16(r);
        for (int k = 0; k < 16; k++) {
            float *ok = out + (size_t)k * hw + p0;
            __m512 add = accumulate ? _mm512_maskz_loadu_ps(mk, ok)
                                    : _mm512_set1_ps(bias ? bias[k] : 0.0f);
            _mm512_mask_storeu_ps(ok, mk, _mm512_add_ps(r[k], add));
        }
    }
}

/* Before out (len floats) is first read when accumulating: one locked
 * read-modify-write of an unchanged word (lock or 0) in each 4 KB page it
 * spans, its own words only.  A page the caller freshly zero-allocated
 * (calloc/np.zeros of fresh mmap pages) then takes one write fault; read
 * first, it would map the shared zero page and fault again on the store
 * (copy-on-write, with a TLB shootdown to the other thread's core).
 * Measured (16->16 7x7 backward-data, batch 128, eenet._core.conv2d_backward
 * under MALLOC_MMAP_THRESHOLD_=131072, i.e. fresh pages every call, min of
 * 400x5 calls): 2 threads 1534 -> 262-309 us, 1 thread 691 -> 364-369 us (the
 * forward: 289-296 us); no change when the memory is reused (heap). */
WL4_INLINE void touch_pages_for_write(float *out, size_t len) {
    char *q = (char *)out, *end = (char *)(out + len);
    while (q < end) {
        __asm__ volatile("lock orl $0, (%0)" : : "r"(q) : "memory");
        q = (char *)(((size_t)q + 4096) & ~(size_t)4095);
    }
}

WL4_AVX512 void eenet_wl4_conv(float *out, int accumulate, const float *inp, const float *u,
                               float *u_make, const float *w, int flip, const float *bias,
                               float *slots, size_t slot_stride, int N, int H, int W, int nt) {
    nt = eenet_threads_for(nt, N);
    const size_t img = (size_t)16 * H * W;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *slot = slots + (size_t)tid * slot_stride;
        if (!u) {
            /* U made by the team, an equal share of the input channels each
             * (made before the region, it took 4.2 us on one thread while
             * the other waited) */
            int nth = eenet_team_size();
            wl4_weights_range(u_make, w, flip, 16 * tid / nth, 16 * (tid + 1) / nth);
#ifdef _OPENMP
#pragma omp barrier
#endif
        }
        const float *uu = u ? u : u_make;
        memset(slot + WL4_XP, 0, sizeof(float) * WL4_PW * WL4_PW * 16);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int n = 0; n < N; n++) {
            if (accumulate) {
                touch_pages_for_write(out + (size_t)n * img, img);
            }
            wl4_sample(out + (size_t)n * img, accumulate, inp + (size_t)n * img, uu, bias, slot,
                       H, W);
        }
    }
}

/* o = A y (6 from 4; A = (A^T)^T of conv_wino4.c):
 *   o0 = y0, o1 = (y0 + y1) + (y2 + y3), o2 = (y0 + y2) - (y1 + y3),
 *   o3 = y0 + 1/2 y1 + 1/4 y2 + 1/8 y3, o4 = y0 - 2 y1 + 4 y2 - 8 y3, o5 = y3 */
WL4_INLINE void a6(__m512 o[6], __m512 y0, __m512 y1, __m512 y2, __m512 y3) {
    o[0] = y0;
    o[1] = _mm512_add_ps(_mm512_add_ps(y0, y1), _mm512_add_ps(y2, y3));
    o[2] = _mm512_sub_ps(_mm512_add_ps(y0, y2), _mm512_add_ps(y1, y3));
    o[3] = _mm512_fmadd_ps(_mm512_set1_ps(0.125f), y3,
                           _mm512_fmadd_ps(_mm512_set1_ps(0.25f), y2,
                                           _mm512_fmadd_ps(_mm512_set1_ps(0.5f), y1, y0)));
    o[4] = _mm512_fnmadd_ps(_mm512_set1_ps(8.0f), y3,
                            _mm512_fmadd_ps(_mm512_set1_ps(4.0f), y2,
                                            _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), y1, y0)));
    o[5] = y3;
}

/* d (4, 36, 16) = D_e = (A dY A^T)[e/6][e%6] of the 4 tiles of one sample's
 * dout dy (16, H, W), lane k, through yp (8, 8, 16) (zero outside the
 * plane: written inside only).  Returns the sum of dy over the plane (lane k:
 * pixels in order from zero). */
WL4_INLINE __m512 wl4_dy(float *d, float *yp, const float *dy, int H, int W) {
    const int hw = H * W;
    __m512 bsum = _mm512_setzero_ps();
    for (int p0 = 0; p0 < hw; p0 += 16) {
        int np = hw - p0 < 16 ? hw - p0 : 16;
        __mmask16 mk = (__mmask16)(np == 16 ? 0xFFFF : (1u << np) - 1u);
        __m512 r[16];
        for (int k = 0; k < 16; k++) {
            r[k] = _mm512_maskz_loadu_ps(mk, dy + (size_t)k * hw + p0);
        }
        tr16(r);
        for (int j = 0; j < np; j++) {
            int p = p0 + j;
            _mm512_storeu_ps(yp + (size_t)((p / W) * 8 + p % W) * 16, r[j]);
            bsum = _mm512_add_ps(bsum, r[j]);
        }
    }
    for (int t = 0; t < 4; t++) {
        const float *b = yp + (size_t)(4 * (t >> 1) * 8 + 4 * (t & 1)) * 16;
        __m512 s[4][6];
        for (int a = 0; a < 4; a++) { /* rows: dY A^T */
            const float *ra = b + (size_t)a * 8 * 16;
            a6(s[a], _mm512_loadu_ps(ra), _mm512_loadu_ps(ra + 16), _mm512_loadu_ps(ra + 32),
               _mm512_loadu_ps(ra + 48));
        }
        float *dt = d + (size_t)t * 36 * 16;
        for (int j = 0; j < 6; j++) { /* columns: A (.) */
            __m512 o[6];
            a6(o, s[0][j], s[1][j], s[2][j], s[3][j]);
            for (int i = 0; i < 6; i++) {
                _mm512_storeu_ps(dt + (size_t)(6 * i + j) * 16, o[i]);
            }
        }
    }
    return bsum;
}

/* du (36, 16 k, 16 c) += sum over the nb samples and 4 tiles of v (nb, 4, 36,
 * 16 c) times d (nb, 4, 36, 16 k): the block's sum formed from zero in
 * registers (16 chains, one per k), then added to du. */
static WL4_AVX512 void wl4_dw_block(float *du, const float *v, const float *d, int nb) {
    for (int e = 0; e < 36; e++) {
        __m512 acc[16];
        for (int k = 0; k < 16; k++) {
            acc[k] = _mm512_setzero_ps();
        }
        for (int q = 0; q < 4 * nb; q++) { /* q = 4n + t */
            const size_t at = ((size_t)q * 36 + e) * 16;
            __m512 x = _mm512_loadu_ps(v + at);
            const float *dk = d + at;
            for (int k = 0; k < 16; k++) {
                acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(dk[k]), x, acc[k]);
            }
        }
        float *de = du + (size_t)e * 256;
        for (int k = 0; k < 16; k++) {
            _mm512_storeu_ps(de + 16 * k, _mm512_add_ps(_mm512_loadu_ps(de + 16 * k), acc[k]));
        }
    }
}

WL4_AVX512 void eenet_wl4_dw(float *dw, float *dbias, const float *dout, const float *inp,
                             float *slots, size_t slot_stride, int N, int H, int W, int nt) {
    const int nblk = (N + WL4_NB - 1) / WL4_NB;
    nt = eenet_threads_for(nt, nblk);
    const size_t img = (size_t)16 * H * W;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *slot = slots + (size_t)tid * slot_stride;
        memset(slot + WD_DU, 0, sizeof(float) * 36 * 256);
        memset(slot + WD_XP, 0, sizeof(float) * WL4_PW * WL4_PW * 16);
        memset(slot + WD_YP, 0, sizeof(float) * 64 * 16);
        memset(slot + WD_DB, 0, sizeof(float) * 16);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int bi = 0; bi < nblk; bi++) {
            int n0 = bi * WL4_NB, nb = N - n0 < WL4_NB ? N - n0 : WL4_NB;
            __m512 bs = _mm512_setzero_ps();
            for (int i = 0; i < nb; i++) {
                wl4_in(slot + WD_V + (size_t)i * 4 * 36 * 16, slot + WD_XP,
                       inp + (size_t)(n0 + i) * img, H, W);
                bs = _mm512_add_ps(bs, wl4_dy(slot + WD_D + (size_t)i * 4 * 36 * 16,
                                              slot + WD_YP, dout + (size_t)(n0 + i) * img, H, W));
            }
            _mm512_storeu_ps(slot + WD_DB, _mm512_add_ps(_mm512_loadu_ps(slot + WD_DB), bs));
            wl4_dw_block(slot + WD_DU, slot + WD_V, slot + WD_D, nb);
        }
    }
    /* threads' partials summed in thread order into slot 0, then
     * dw[k][c] += G^T dU[k][c] G (3x3 from 6x6) in double, rounded once */
    float *du = slots + WD_DU;
    for (int th = 1; th < nt; th++) {
        const float *o = slots + (size_t)th * slot_stride + WD_DU;
        for (int i = 0; i < 36 * 256; i += 16) {
            __m512 sum = _mm512_add_ps(_mm512_loadu_ps(du + i), _mm512_loadu_ps(o + i));
            _mm512_storeu_ps(du + i, sum);
        }
        const float *ob = slots + (size_t)th * slot_stride + WD_DB;
        _mm512_storeu_ps(slots + WD_DB,
                         _mm512_add_ps(_mm512_loadu_ps(slots + WD_DB), _mm512_loadu_ps(ob)));
    }
    if (dbias) {
        for (int k = 0; k < 16; k++) {
            dbias[k] += slots[WD_DB + k];
        }
    }
    /* per output channel k, the 16 input channels c in two vectors of 8
     * doubles: t = G^T dU (3x6), then G^T dU G = t G (3x3) */
    for (int k = 0; k < 16; k++) {
        float tmp[9][16];
        for (int h = 0; h < 2; h++) {
            __m512d t[3][6];
            for (int j = 0; j < 6; j++) {
                __m512d x[6];
                for (int i = 0; i < 6; i++) {
                    __m512 f = _mm512_loadu_ps(du + (size_t)(6 * i + j) * 256 + 16 * k);
                    x[i] = _mm512_cvtps_pd(_mm512_castps512_ps256(
                        h ? _mm512_shuffle_f32x4(f, f, 0xEE) : f));
                }
                for (int a = 0; a < 3; a++) {
                    __m512d sum = _mm512_mul_pd(_mm512_set1_pd(wl4_G[0][a]), x[0]);
                    for (int i = 1; i < 6; i++) {
                        sum = _mm512_fmadd_pd(_mm512_set1_pd(wl4_G[i][a]), x[i], sum);
                    }
                    t[a][j] = sum;
                }
            }
            for (int a = 0; a < 3; a++) {
                for (int b = 0; b < 3; b++) {
                    __m512d sum = _mm512_mul_pd(t[a][0], _mm512_set1_pd(wl4_G[0][b]));
                    for (int j = 1; j < 6; j++) {
                        sum = _mm512_fmadd_pd(t[a][j], _mm512_set1_pd(wl4_G[j][b]), sum);
                    }
                    _mm256_storeu_ps(&tmp[3 * a + b][8 * h], _mm512_cvtpd_ps(sum));
                }
            }
        }
        for (int c = 0; c < 16; c++) {
            float *g = dw + ((size_t)k * 16 + c) * 9;
            for (int ab = 0; ab < 9; ab++) {
                g[ab] += tmp[ab][c];
            }
        }
    }
}

#else /* not x86-64 GCC/Clang: conv.c never chooses this path */

/* The plain statement of the weight transform (never chosen there). */
void eenet_wl4_weights(float *u, const float *w, int cout, int cin, int flip) {
    const int P = cin * cout;
    for (int ci = 0; ci < cin; ci++) {
        for (int co = 0; co < cout; co++) {
            double g[9], t[6][3];
            for (int ab = 0; ab < 9; ab++) {
                g[ab] = flip ? w[((size_t)ci * cout + co) * 9 + 8 - ab]
                             : w[((size_t)co * cin + ci) * 9 + ab];
            }
            for (int i = 0; i < 6; i++) {
                for (int b = 0; b < 3; b++) {
                    t[i][b] = wl4_G[i][0] * g[b] + wl4_G[i][1] * g[3 + b] + wl4_G[i][2] * g[6 + b];
                }
            }
            for (int i = 0; i < 6; i++) {
                for (int j = 0; j < 6; j++) {
                    double s = wl4_G[j][0] * t[i][0] + wl4_G[j][1] * t[i][1] + wl4_G[j][2] * t[i][2];
                    u[(size_t)(6 * i + j) * P + (size_t)ci * cout + co] = (float)s;
                }
            }
        }
    }
}

void eenet_wl4_conv(float *out, int accumulate, const float *inp, const float *u,
                    float *u_make, const float *w, int flip, const float *bias, float *slots,
                    size_t slot_stride, int N, int H, int W, int nt) {
    (void)out, (void)accumulate, (void)inp, (void)u, (void)u_make, (void)w, (void)flip;
    (void)bias, (void)slots, (void)slot_stride, (void)N, (void)H, (void)W, (void)nt;
}

void eenet_wl4_dw(float *dw, float *dbias, const float *dout, const float *inp, float *slots,
                  size_t slot_stride, int N, int H, int W, int nt) {
    (void)dw, (void)dbias, (void)dout, (void)inp, (void)slots, (void)slot_stride, (void)N;
    (void)H, (void)W, (void)nt;
}

#endif
