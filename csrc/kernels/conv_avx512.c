/* conv_avx512.c: AVX-512 micro-kernels of the direct convolution path
 * (conv_direct.h explains q-space).  Compiled for the portable baseline with
 * per-function target("avx512f") attributes; conv.c calls them only when
 * eenet_conv_direct_available() says the CPU has AVX-512F.  On other
 * architectures this file provides stubs and conv.c uses im2col+GEMM.
 *
 * Register blocking (Zen 4 / Skylake-X have 32 zmm registers):
 *   forward  acc[KB][QV]: KB output channels x QV*16 q positions; per tap
 *            QV unaligned loads, KB broadcasts, KB*QV FMAs (8x3 = 24 acc);
 *   backward-weight acc[KB][TB]: KB output channels x TB taps, each a
 *            16-lane partial sum over q; per q vector KB + TB loads and
 *            KB*TB FMAs (4x6 = 24 acc), reduced horizontally at the end.
 * No -ffast-math: FMAs are explicit intrinsics.
 */
#include "conv_direct.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define EENET_AVX512 __attribute__((target("avx512f")))

int eenet_conv_direct_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

/* yq rows kk < KB, columns [0, 16*QV) of one tile. */
#define DEFINE_FWD(KB, QV)                                                            \
    static EENET_AVX512 void fwd_##KB##x##QV(float *yq, size_t ldy, const float *src, \
                                              const int *off, const float *wpb,       \
                                              int ntaps) {                            \
        __m512 acc[KB][QV];                                                           \
        for (int a = 0; a < KB; a++) {                                                \
            for (int v = 0; v < QV; v++) {                                            \
                acc[a][v] = _mm512_setzero_ps();                                      \
            }                                                                         \
        }                                                                             \
        for (int t = 0; t < ntaps; t++) {                                             \
            const float *s = src + off[t];                                            \
            __m512 x[QV];                                                             \
            for (int v = 0; v < QV; v++) {                                            \
                x[v] = _mm512_loadu_ps(s + 16 * v);                                   \
            }                                                                         \
            const float *wt = wpb + (size_t)t * KB;                                   \
            for (int a = 0; a < KB; a++) {                                            \
                __m512 wv = _mm512_set1_ps(wt[a]);                                    \
                for (int v = 0; v < QV; v++) {                                        \
                    acc[a][v] = _mm512_fmadd_ps(wv, x[v], acc[a][v]);                 \
                }                                                                     \
            }                                                                         \
        }                                                                             \
        for (int a = 0; a < KB; a++) {                                                \
            for (int v = 0; v < QV; v++) {                                            \
                _mm512_storeu_ps(yq + (size_t)a * ldy + 16 * v, acc[a][v]);           \
            }                                                                         \
        }                                                                             \
    }

DEFINE_FWD(8, 3)
DEFINE_FWD(8, 2)
DEFINE_FWD(8, 1)
DEFINE_FWD(4, 4)
DEFINE_FWD(4, 2)
DEFINE_FWD(4, 1)
DEFINE_FWD(2, 8)
DEFINE_FWD(2, 4)
DEFINE_FWD(2, 2)
DEFINE_FWD(2, 1)
DEFINE_FWD(1, 8)
DEFINE_FWD(1, 4)
DEFINE_FWD(1, 2)
DEFINE_FWD(1, 1)

typedef void (*fwd_fn)(float *, size_t, const float *, const int *, const float *, int);

/* Tiles of one output-channel block: as many QVmax-vector tiles as fit,
 * then the tail in halving sizes; for KB = 8 a tail of 1 after a 3 becomes
 * 2 + 2 (16 accumulators each rather than 24 + 8). */
EENET_AVX512 void eenet_conv_direct_fwd(float *yq, size_t ldy, const float *src,
                                        const int *off, const float *wp, int cout, int ntaps,
                                        int nq) {
    static const fwd_fn t8[4] = {0, fwd_8x1, fwd_8x2, fwd_8x3};
    static const fwd_fn t4[5] = {0, fwd_4x1, fwd_4x2, 0, fwd_4x4};
    static const fwd_fn t2[9] = {0, fwd_2x1, fwd_2x2, 0, fwd_2x4, 0, 0, 0, fwd_2x8};
    static const fwd_fn t1[9] = {0, fwd_1x1, fwd_1x2, 0, fwd_1x4, 0, 0, 0, fwd_1x8};
    for (int k0 = 0; k0 < cout;) {
        int kb = eenet_conv_fwd_kblock(cout - k0);
        const fwd_fn *tab = kb == 8 ? t8 : kb == 4 ? t4 : kb == 2 ? t2 : t1;
        int qmax = kb == 8 ? 3 : kb == 4 ? 4 : 8;
        const float *wpb = wp + (size_t)k0 * ntaps;
        float *y = yq + (size_t)k0 * ldy;
        int q = 0;
        int rem = nq;
        if (kb == 8 && nq % 3 == 1 && nq >= 4) {
            rem = nq - 4; /* leave 4 vectors for two 2-vector tiles */
        }
        for (; rem >= qmax; rem -= qmax, q += qmax) {
            tab[qmax](y + 16 * q, ldy, src + 16 * q, off, wpb, ntaps);
        }
        while (q < nq) {
            int v = qmax;
            while (v > nq - q || !tab[v]) {
                v--;
            }
            if (kb == 8 && nq - q == 4) {
                v = 2;
            }
            tab[v](y + 16 * q, ldy, src + 16 * q, off, wpb, ntaps);
            q += v;
        }
        k0 += kb;
    }
}

/* dw rows a < KB (ldw apart), taps b < TB of one block. */
#define DEFINE_BW(KB, TB)                                                                  \
    static EENET_AVX512 void bw_##KB##x##TB(float *dw, size_t ldw, const float *dq,        \
                                             size_t ldq, size_t dq_stride, const float *src, \
                                             size_t src_stride, const int *off, int nq,    \
                                             int nb) {                                     \
        __m512 acc[KB][TB];                                                                \
        for (int a = 0; a < KB; a++) {                                                     \
            for (int b = 0; b < TB; b++) {                                                 \
                acc[a][b] = _mm512_setzero_ps();                                           \
            }                                                                              \
        }                                                                                  \
        for (int n = 0; n < nb; n++) {                                                     \
            const float *d0 = dq + (size_t)n * dq_stride;                                  \
            const float *s0 = src + (size_t)n * src_stride;                                \
            for (int q = 0; q < nq; q++) {                                                 \
                __m512 d[KB];                                                              \
                for (int a = 0; a < KB; a++) {                                             \
                    d[a] = _mm512_loadu_ps(d0 + (size_t)a * ldq + 16 * q);                 \
                }                                                                          \
                for (int b = 0; b < TB; b++) {                                             \
                    __m512 x = _mm512_loadu_ps(s0 + off[b] + 16 * q);                      \
                    for (int a = 0; a < KB; a++) {                                         \
                        acc[a][b] = _mm512_fmadd_ps(d[a], x, acc[a][b]);                   \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (int a = 0; a < KB; a++) {                                                     \
            for (int b = 0; b < TB; b++) {                                                 \
                dw[(size_t)a * ldw + b] += _mm512_reduce_add_ps(acc[a][b]);                \
            }                                                                              \
        }                                                                                  \
    }

DEFINE_BW(4, 6)
DEFINE_BW(4, 3)
DEFINE_BW(4, 1)
DEFINE_BW(2, 6)
DEFINE_BW(2, 3)
DEFINE_BW(2, 1)
DEFINE_BW(1, 6)
DEFINE_BW(1, 3)
DEFINE_BW(1, 1)

typedef void (*bw_fn)(float *, size_t, const float *, size_t, size_t, const float *, size_t,
                      const int *, int, int);

EENET_AVX512 void eenet_conv_direct_bw(float *dw, const float *dq, size_t ldq,
                                       size_t dq_stride, const float *src, size_t src_stride,
                                       const int *off, int cout, int ntaps, int nq, int nb) {
    static const bw_fn table[3][3] = {{bw_4x6, bw_4x3, bw_4x1},
                                      {bw_2x6, bw_2x3, bw_2x1},
                                      {bw_1x6, bw_1x3, bw_1x1}};
    for (int k0 = 0; k0 < cout;) {
        int rem = cout - k0;
        int ka = rem >= 4 ? 0 : rem >= 2 ? 1 : 2;
        int kb = 4 >> ka;
        for (int t0 = 0; t0 < ntaps;) {
            int trem = ntaps - t0;
            int ta = trem >= 6 ? 0 : trem >= 3 ? 1 : 2;
            int tb = ta == 0 ? 6 : ta == 1 ? 3 : 1;
            table[ka][ta](dw + (size_t)k0 * ntaps + t0, (size_t)ntaps, dq + (size_t)k0 * ldq,
                          ldq, dq_stride, src, src_stride, off + t0, nq, nb);
            t0 += tb;
        }
        k0 += kb;
    }
}

/* ---- row helpers for q-space filling and compaction (masked, any n) ---- */

static EENET_AVX512 inline __mmask16 tail_mask(int n) {
    return (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
}

/* dst[0..n) = src[0..n). */
static EENET_AVX512 inline __attribute__((always_inline)) void row_copy(float *dst,
                                                                       const float *src, int n) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
    }
}

/* ev[m] = x[2m] for m < ceil(n/2); od[m] = x[2m+1] for m < floor(n/2). */
static EENET_AVX512 inline __attribute__((always_inline)) void row_deint2(float *ev, float *od,
                                                                         const float *x,
                                                                         int n) {
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int i = 0; i < n; i += 32) {
        int r = n - i;
        __m512 lo = _mm512_maskz_loadu_ps(tail_mask(r), x + i);
        __m512 hi = _mm512_maskz_loadu_ps(tail_mask(r - 16 > 0 ? r - 16 : 0), x + i + 16);
        int ne = (r + 1) / 2, no = r / 2;
        _mm512_mask_storeu_ps(ev + i / 2, tail_mask(ne), _mm512_permutex2var_ps(lo, ie, hi));
        _mm512_mask_storeu_ps(od + i / 2, tail_mask(no), _mm512_permutex2var_ps(lo, io, hi));
    }
}

/* Phase planes of one sample, s = 1 or 2 (conv_direct.h): input pixel
 * (iy, ix) of channel c goes to plane (c, (iy+ph)%s, (ix+pw)%s) at row
 * (iy+ph)/s, column (ix+pw)/s; padding and tails are not written. */
EENET_AVX512 void eenet_conv_fill_planes(float *src, const float *x, int cin, int h, int w,
                                         int s, int ph, int pw, int ws, size_t plane) {
    for (int c = 0; c < cin; c++) {
        const float *xc = x + (size_t)c * h * w;
        for (int iy = 0; iy < h; iy++) {
            int yy = iy + ph;
            const float *xr = xc + (size_t)iy * w;
            float *P0 = src + ((size_t)c * s + (size_t)(yy % s)) * s * plane + (size_t)(yy / s) * ws;
            if (s == 1) {
                row_copy(P0 + pw, xr, w);
            } else {
                int be = pw % 2;
                row_deint2(P0 + (size_t)be * plane + pw / 2,
                           P0 + (size_t)(1 - be) * plane + (pw + 1) / 2, xr, w);
            }
        }
    }
}

/* out (cout, ho, wo) = yq (cout, ldq) rows ws apart + bias[k] (bias may be
 * NULL), or out += yq (accumulate = 1). */
EENET_AVX512 void eenet_conv_store_rows(float *out, const float *yq, size_t ldq, int ws,
                                        int cout, int ho, int wo, const float *bias,
                                        int accumulate) {
    for (int k = 0; k < cout; k++) {
        __m512 b = _mm512_set1_ps((!accumulate && bias) ? bias[k] : 0.0f);
        const float *yk = yq + (size_t)k * ldq;
        float *ok = out + (size_t)k * ho * wo;
        for (int oy = 0; oy < ho; oy++) {
            const float *src = yk + (size_t)oy * ws;
            float *dst = ok + (size_t)oy * wo;
            for (int i = 0; i < wo; i += 16) {
                __mmask16 m = tail_mask(wo - i);
                __m512 v = _mm512_maskz_loadu_ps(m, src + i);
                v = accumulate ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, dst + i))
                               : _mm512_add_ps(v, b);
                _mm512_mask_storeu_ps(dst + i, m, v);
            }
        }
    }
}

/* dq (cout, ldq; rows ws apart) = dy (cout, ho, wo) in q-space (the garbage
 * columns are not written); pdb[k] += sum of dy's channel k (pdb may be NULL). */
EENET_AVX512 void eenet_conv_fill_dq(float *dq, float *pdb, const float *dy, int cout, int ho,
                                     int wo, int ws, size_t ldq) {
    for (int k = 0; k < cout; k++) {
        const float *dk = dy + (size_t)k * ho * wo;
        float *qk = dq + (size_t)k * ldq;
        __m512 acc = _mm512_setzero_ps();
        for (int oy = 0; oy < ho; oy++) {
            const float *src = dk + (size_t)oy * wo;
            float *dst = qk + (size_t)oy * ws;
            for (int i = 0; i < wo; i += 16) {
                __mmask16 m = tail_mask(wo - i);
                __m512 v = _mm512_maskz_loadu_ps(m, src + i);
                _mm512_mask_storeu_ps(dst + i, m, v);
                acc = _mm512_add_ps(acc, v);
            }
        }
        if (pdb) {
            pdb[k] += _mm512_reduce_add_ps(acc);
        }
    }
}

/* xp (cin, h+2ph, w+2pw) interior = x (cin, h, w); the border is not
 * written (it stays zero).  One call per sample: the row loop is inlined. */
EENET_AVX512 void eenet_conv_pad_fill(float *xp, const float *x, int cin, int h, int w, int ph,
                                      int pw) {
    size_t hp = (size_t)h + 2 * (size_t)ph, wpad = (size_t)w + 2 * (size_t)pw;
    if (w <= 16) {
        __mmask16 m = tail_mask(w);
        for (int c = 0; c < cin; c++) {
            float *dc = xp + ((size_t)c * hp + ph) * wpad + pw;
            const float *xc = x + (size_t)c * h * w;
            for (int y = 0; y < h; y++) {
                _mm512_mask_storeu_ps(dc + (size_t)y * wpad, m,
                                      _mm512_maskz_loadu_ps(m, xc + (size_t)y * w));
            }
        }
        return;
    }
    for (int c = 0; c < cin; c++) {
        for (int y = 0; y < h; y++) {
            row_copy(xp + ((size_t)c * hp + y + ph) * wpad + pw, x + ((size_t)c * h + y) * w, w);
        }
    }
}

/* dyt (howo, K) = dy (K, howo)^T for K a multiple of 16, in 16x16 blocks
 * (unpack/shuffle within 128-bit lanes, then two 128-bit lane shuffles);
 * adds the per-channel sums of dy into pdb (NULL: skip). */
EENET_AVX512 void eenet_conv_transpose_dy(float *dyt, float *pdb, const float *dy, int K,
                                          int howo) {
    for (int k0 = 0; k0 < K; k0 += 16) {
        __m512 sum = _mm512_setzero_ps();
        for (int p0 = 0; p0 < howo; p0 += 16) {
            int np = howo - p0 < 16 ? howo - p0 : 16;
            __mmask16 m = tail_mask(np);
            __m512 r[16], t[16], u[16];
            for (int i = 0; i < 16; i++) {
                r[i] = _mm512_maskz_loadu_ps(m, dy + (size_t)(k0 + i) * howo + p0);
            }
            for (int i = 0; i < 8; i++) {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            for (int g = 0; g < 4; g++) {
                __m512 *tg = t + 4 * g;
                u[4 * g + 0] = _mm512_shuffle_ps(tg[0], tg[2], 0x44);
                u[4 * g + 1] = _mm512_shuffle_ps(tg[0], tg[2], 0xEE);
                u[4 * g + 2] = _mm512_shuffle_ps(tg[1], tg[3], 0x44);
                u[4 * g + 3] = _mm512_shuffle_ps(tg[1], tg[3], 0xEE);
            }
            /* u[4g+m] lane j = rows 4g..4g+3 of column 4j+m */
            for (int mm = 0; mm < 4; mm++) {
                __m512 v0 = _mm512_shuffle_f32x4(u[mm], u[4 + mm], 0x88);
                __m512 v1 = _mm512_shuffle_f32x4(u[mm], u[4 + mm], 0xDD);
                __m512 w0 = _mm512_shuffle_f32x4(u[8 + mm], u[12 + mm], 0x88);
                __m512 w1 = _mm512_shuffle_f32x4(u[8 + mm], u[12 + mm], 0xDD);
                __m512 c[4];
                c[0] = _mm512_shuffle_f32x4(v0, w0, 0x88); /* column mm */
                c[1] = _mm512_shuffle_f32x4(v1, w1, 0x88); /* column 4 + mm */
                c[2] = _mm512_shuffle_f32x4(v0, w0, 0xDD); /* column 8 + mm */
                c[3] = _mm512_shuffle_f32x4(v1, w1, 0xDD); /* column 12 + mm */
                for (int j = 0; j < 4; j++) {
                    int col = 4 * j + mm;
                    if (col < np) {
                        _mm512_storeu_ps(dyt + (size_t)(p0 + col) * K + k0, c[j]);
                        sum = _mm512_add_ps(sum, c[j]);
                    }
                }
            }
        }
        if (pdb) {
            _mm512_storeu_ps(pdb + k0, _mm512_add_ps(_mm512_loadu_ps(pdb + k0), sum));
        }
    }
}

/* ---- K-vectorised kernels: 16 output channels per zmm lane group ------
 * Forward tile: acc[P][KV] for P consecutive output columns of one row and
 * 16*KV output channels; per tap KV weight loads, P broadcasts of input
 * scalars, P*KV FMAs.  No q-space garbage, so it suits the 8x8..32x32 planes
 * with 16/32/64 channels of the ResNets. */
#define DEFINE_KF(KV, P) DEFINE_KF_S(kf_##KV##x##P, KV, P, s) DEFINE_KF_S(kf1_##KV##x##P, KV, P, 1)
/* NAME: the kernel; SS: its column stride (the argument s, or the constant 1
 * so that the broadcasts address with fixed displacements). */
#define DEFINE_KF_S(NAME, KV, P, SS)                                                    \
    static EENET_AVX512 void NAME(float *tile, const float *xrow, int s,                \
                                  const int *off, const float *wk, int ntaps) {         \
        (void)s;                                                                        \
        __m512 acc[P][KV];                                                              \
        for (int p = 0; p < P; p++) {                                                   \
            for (int v = 0; v < KV; v++) {                                              \
                acc[p][v] = _mm512_setzero_ps();                                        \
            }                                                                           \
        }                                                                               \
        for (int t = 0; t < ntaps; t++) {                                               \
            const float *xt = xrow + off[t];                                            \
            __m512 wv[KV];                                                              \
            for (int v = 0; v < KV; v++) {                                              \
                wv[v] = _mm512_loadu_ps(wk + ((size_t)t * KV + v) * 16);                \
            }                                                                           \
            for (int p = 0; p < P; p++) {                                               \
                __m512 xb = _mm512_set1_ps(xt[p * (SS)]);                               \
                for (int v = 0; v < KV; v++) {                                          \
                    acc[p][v] = _mm512_fmadd_ps(xb, wv[v], acc[p][v]);                  \
                }                                                                       \
            }                                                                           \
        }                                                                               \
        for (int p = 0; p < P; p++) {                                                   \
            for (int v = 0; v < KV; v++) {                                              \
                _mm512_storeu_ps(tile + ((size_t)p * KV + v) * 16, acc[p][v]);          \
            }                                                                           \
        }                                                                               \
    }

DEFINE_KF(1, 16)
DEFINE_KF(1, 14)
DEFINE_KF(1, 8)
DEFINE_KF(1, 7)
DEFINE_KF(1, 4)
DEFINE_KF(2, 8)
DEFINE_KF(2, 7)
DEFINE_KF(2, 4)

/* The same over two output rows of PR columns each (the second row's
 * input starts rs floats after the first's): 2*PR accumulators, for narrow
 * rows (7 columns) where one row alone would leave the FMA units idle. */
#define DEFINE_KF2(KV, PR)                                                                  \
    static EENET_AVX512 void kf2_##KV##x##PR(float *tile, const float *xrow, int s,          \
                                              size_t rs, const int *off, const float *wk,    \
                                              int ntaps) {                                   \
        __m512 acc[2 * PR][KV];                                                             \
        for (int p = 0; p < 2 * PR; p++) {                                                  \
            for (int v = 0; v < KV; v++) {                                                  \
                acc[p][v] = _mm512_setzero_ps();                                            \
            }                                                                               \
        }                                                                                   \
        for (int t = 0; t < ntaps; t++) {                                                   \
            const float *xt = xrow + off[t];                                                \
            __m512 wv[KV];                                                                  \
            for (int v = 0; v < KV; v++) {                                                  \
                wv[v] = _mm512_loadu_ps(wk + ((size_t)t * KV + v) * 16);                    \
            }                                                                               \
            for (int p = 0; p < 2 * PR; p++) {                                              \
                __m512 xb = _mm512_set1_ps(xt[(p / PR) * rs + (size_t)(p % PR) * s]);       \
                for (int v = 0; v < KV; v++) {                                              \
                    acc[p][v] = _mm512_fmadd_ps(xb, wv[v], acc[p][v]);                      \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int p = 0; p < 2 * PR; p++) {                                                  \
            for (int v = 0; v < KV; v++) {                                                  \
                _mm512_storeu_ps(tile + ((size_t)p * KV + v) * 16, acc[p][v]);              \
            }                                                                               \
        }                                                                                   \
    }

DEFINE_KF2(1, 7)

typedef void (*kf_fn)(float *, const float *, int, const int *, const float *, int);

/* Store 8 positions x 16 channels from a tile (rows t + p*ldt, p < 8, 16
 * channels each) transposed into out rows o + c*hw (c < 16, 8 floats each):
 * an 8x8 transpose on each 256-bit half (channels 0-7 and 8-15 at once).
 * accumulate: o += tile; else o = tile + bias (b16: 16 biases or NULL). */
static EENET_AVX512 void store_t8x16(float *o, size_t hw, const float *t, size_t ldt,
                                     const float *b16, int accumulate, int n) {
    /* n < 8: only positions p < n are loaded from o and stored */
    __mmask16 mk = (__mmask16)((1u << n) - 1u); /* AVX-512 masks: AVX vmaskmov is slow on AMD */
    __m512 r[8], u[8];
    for (int p = 0; p < 8; p++) {
        r[p] = _mm512_loadu_ps(t + (size_t)p * ldt);
    }
    /* within 128-bit lanes, exactly as the classic AVX 8x8 transpose */
    __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpackhi_ps(r[0], r[1]);
    __m512 t2 = _mm512_unpacklo_ps(r[2], r[3]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
    __m512 t4 = _mm512_unpacklo_ps(r[4], r[5]), t5 = _mm512_unpackhi_ps(r[4], r[5]);
    __m512 t6 = _mm512_unpacklo_ps(r[6], r[7]), t7 = _mm512_unpackhi_ps(r[6], r[7]);
    u[0] = _mm512_shuffle_ps(t0, t2, 0x44), u[1] = _mm512_shuffle_ps(t0, t2, 0xEE);
    u[2] = _mm512_shuffle_ps(t1, t3, 0x44), u[3] = _mm512_shuffle_ps(t1, t3, 0xEE);
    u[4] = _mm512_shuffle_ps(t4, t6, 0x44), u[5] = _mm512_shuffle_ps(t4, t6, 0xEE);
    u[6] = _mm512_shuffle_ps(t5, t7, 0x44), u[7] = _mm512_shuffle_ps(t5, t7, 0xEE);
    /* the AVX permute2f128 0x20 / 0x31 step, on each 256-bit half */
    const __m512i lo = _mm512_set_epi32(27, 26, 25, 24, 11, 10, 9, 8, 19, 18, 17, 16, 3, 2, 1, 0);
    const __m512i hi = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 23, 22, 21, 20, 7, 6, 5, 4);
    for (int c = 0; c < 4; c++) {
        for (int h = 0; h < 2; h++) {
            int ch = c + 4 * h; /* output row: channel ch (low half), ch + 8 (high half) */
            __m512 v = _mm512_permutex2var_ps(u[c], h ? hi : lo, u[c + 4]);
            __m256 vl = _mm512_castps512_ps256(v);
            __m256 vh = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
            float *ol = o + (size_t)ch * hw, *oh = o + (size_t)(ch + 8) * hw;
            if (accumulate) {
                vl = _mm256_add_ps(vl, n < 8 ? _mm512_castps512_ps256(_mm512_maskz_loadu_ps(mk, ol))
                                             : _mm256_loadu_ps(ol));
                vh = _mm256_add_ps(vh, n < 8 ? _mm512_castps512_ps256(_mm512_maskz_loadu_ps(mk, oh))
                                             : _mm256_loadu_ps(oh));
            } else if (b16) {
                vl = _mm256_add_ps(vl, _mm256_set1_ps(b16[ch]));
                vh = _mm256_add_ps(vh, _mm256_set1_ps(b16[ch + 8]));
            }
            if (n < 8) {
                _mm512_mask_storeu_ps(ol, mk, _mm512_castps256_ps512(vl));
                _mm512_mask_storeu_ps(oh, mk, _mm512_castps256_ps512(vh));
            } else {
                _mm256_storeu_ps(ol, vl);
                _mm256_storeu_ps(oh, vh);
            }
        }
    }
}

EENET_AVX512 void eenet_conv_kvec_fwd(float *out, int accumulate, const float *bias,
                                      const float *xp, int wp, int s, const int *off,
                                      const float *wk, int cout, int ntaps, int ho, int wo,
                                      int r0, int r1, int kv, int P, float *tile) {
    kf_fn fn;
    if (s == 1) {
        fn = kv == 2 ? (P == 8 ? kf1_2x8 : P == 7 ? kf1_2x7 : kf1_2x4)
                     : (P == 16 ? kf1_1x16 : P == 14 ? kf1_1x14 : P == 8 ? kf1_1x8
                        : P == 7 ? kf1_1x7 : kf1_1x4);
    } else {
        fn = kv == 2 ? (P == 8 ? kf_2x8 : P == 7 ? kf_2x7 : kf_2x4)
                     : (P == 16 ? kf_1x16 : P == 14 ? kf_1x14 : P == 8 ? kf_1x8
                        : P == 7 ? kf_1x7 : kf_1x4);
    }
    int kb = 16 * kv;
    size_t hw = (size_t)ho * wo;
    for (int k0 = 0; k0 < cout; k0 += kb) {
        const float *wkb = wk + (size_t)k0 * ntaps;
        for (int oy = r0; oy < r1; oy++) {
            if (kv == 1 && P == 7 && wo == 7 && oy + 1 < r1) {
                /* rows oy and oy+1 in one 14-position tile */
                kf2_1x7(tile, xp + (size_t)oy * s * wp, s, (size_t)s * wp, off, wkb, ntaps);
                /* rows oy, oy+1 are 14 contiguous floats of each channel */
                float *o = out + (size_t)k0 * hw + (size_t)oy * wo;
                const float *b16 = bias ? bias + k0 : NULL;
                store_t8x16(o, hw, tile, (size_t)kb, b16, accumulate, 8);
                store_t8x16(o + 8, hw, tile + (size_t)8 * kb, (size_t)kb, b16, accumulate, 6);
                oy++;
                continue;
            }
            for (int ox0 = 0; ox0 < wo; ox0 += P) {
                fn(tile, xp + (size_t)oy * s * wp + (size_t)ox0 * s, s, off, wkb, ntaps);
                /* tile (P, kb) -> out[k0+kk][oy][ox0+p] */
                float *o = out + (size_t)k0 * hw + (size_t)oy * wo + ox0;
                for (int p0 = 0; p0 < P; p0 += 8) {
                    for (int v = 0; v < kv; v++) {
                        store_t8x16(o + (size_t)16 * v * hw + p0, hw,
                                    tile + (size_t)p0 * kb + 16 * v, (size_t)kb,
                                    bias ? bias + k0 + 16 * v : NULL, accumulate,
                                    P - p0 < 8 ? P - p0 : 8);
                    }
                }
            }
        }
    }
}

/* Polyphase data gradient of a 3x3 stride-2 pad-1 layer, W even: the rows
 * of parity a of dx (cout, H, W), both column phases at once, so each tile
 * of P phase columns becomes 2P contiguous dx columns (no phase planes):
 *   dx[c][2m+a][2x+b] += sum_t wk_b[t][c] * dp[off_b[t] + m*wpp + x]
 * for m < hq, x < W/2, b = 0, 1 (accumulates).  dp: the padded dout; wk_b
 * packed like eenet_conv_kvec_fwd's weights (blocks of 16*kv channels). */
EENET_AVX512 void eenet_conv_kvec_pd(float *dx, int H, int W, int a, const float *dp, int wpp,
                                     const int *off0, const float *wk0, int nt0,
                                     const int *off1, const float *wk1, int nt1, int cout,
                                     int hq, int kv, int P) {
    kf_fn fn = kv == 2 ? (P == 8 ? kf1_2x8 : P == 7 ? kf1_2x7 : kf1_2x4)
                       : (P == 16 ? kf1_1x16 : P == 14 ? kf1_1x14 : P == 8 ? kf1_1x8
                          : P == 7 ? kf1_1x7 : kf1_1x4);
    float t0[16 * 32] __attribute__((aligned(64)));
    float t1[16 * 32] __attribute__((aligned(64)));
    float ti[32 * 32] __attribute__((aligned(64)));
    int kb = 16 * kv, wq = W / 2;
    size_t hw = (size_t)H * W;
    for (int k0 = 0; k0 < cout; k0 += kb) {
        for (int m = 0; m < hq; m++) {
            float *orow = dx + (size_t)k0 * hw + (size_t)(2 * m + a) * W;
            for (int ox0 = 0; ox0 < wq; ox0 += P) {
                const float *xr = dp + (size_t)m * wpp + ox0;
                fn(t0, xr, 1, off0, wk0 + (size_t)k0 * nt0, nt0);
                fn(t1, xr, 1, off1, wk1 + (size_t)k0 * nt1, nt1);
                /* position 2p from phase b = 0, 2p+1 from b = 1 */
                for (int p = 0; p < P; p++) {
                    for (int v = 0; v < kv; v++) {
                        _mm512_store_ps(ti + ((size_t)(2 * p) * kv + v) * 16,
                                        _mm512_load_ps(t0 + ((size_t)p * kv + v) * 16));
                        _mm512_store_ps(ti + ((size_t)(2 * p + 1) * kv + v) * 16,
                                        _mm512_load_ps(t1 + ((size_t)p * kv + v) * 16));
                    }
                }
                float *o = orow + 2 * (size_t)ox0;
                for (int p0 = 0; p0 < 2 * P; p0 += 8) {
                    for (int v = 0; v < kv; v++) {
                        store_t8x16(o + (size_t)16 * v * hw + p0, hw, ti + (size_t)p0 * kb + 16 * v,
                                    (size_t)kb, NULL, 1, 2 * P - p0 < 8 ? 2 * P - p0 : 8);
                    }
                }
            }
        }
    }
}

/* Backward-weight: acc[TB][KV] over every output position of a sample,
 * dwt[t][k] += sum_pos x[tap t at pos] * dyt[pos][k]; lanes are channels,
 * so no horizontal reduction is needed. */
#define DEFINE_KW(KV, TB)                                                                    \
    static EENET_AVX512 void kw_##KV##x##TB(float *dwt, int ldk, const float *dyt,           \
                                             const float *xp, int wp, int s, const int *off, \
                                             int ho, int wo, int nb, size_t dyt_stride,      \
                                             size_t xp_stride) {                             \
        __m512 acc[TB][KV];                                                                  \
        for (int b = 0; b < TB; b++) {                                                       \
            for (int v = 0; v < KV; v++) {                                                   \
                acc[b][v] = _mm512_setzero_ps();                                             \
            }                                                                                \
        }                                                                                    \
        for (int n = 0; n < nb; n++, dyt += dyt_stride, xp += xp_stride) {                   \
        const float *sp[TB];                                                                 \
        for (int b = 0; b < TB; b++) {                                                       \
            sp[b] = xp + off[b];                                                             \
        }                                                                                    \
        for (int oy = 0; oy < ho; oy++) {                                                    \
            const float *dr = dyt + (size_t)oy * wo * ldk;                                   \
            size_t base = (size_t)oy * s * wp;                                               \
            for (int ox = 0; ox < wo; ox++, base += s) {                                     \
                __m512 d[KV];                                                                \
                for (int v = 0; v < KV; v++) {                                               \
                    d[v] = _mm512_loadu_ps(dr + (size_t)ox * ldk + 16 * v);                  \
                }                                                                            \
                for (int b = 0; b < TB; b++) {                                               \
                    __m512 xb = _mm512_set1_ps(sp[b][base]);                                 \
                    for (int v = 0; v < KV; v++) {                                           \
                        acc[b][v] = _mm512_fmadd_ps(xb, d[v], acc[b][v]);                    \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        }                                                                                    \
        for (int b = 0; b < TB; b++) {                                                       \
            for (int v = 0; v < KV; v++) {                                                   \
                float *dst = dwt + (size_t)b * ldk + 16 * v;                                 \
                _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), acc[b][v]));      \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_KW(4, 6)
DEFINE_KW(4, 3)
DEFINE_KW(4, 1)
DEFINE_KW(2, 12)
DEFINE_KW(2, 3)
DEFINE_KW(2, 1)
DEFINE_KW(1, 12)
DEFINE_KW(1, 3)
DEFINE_KW(1, 1)

typedef void (*kw_fn)(float *, int, const float *, const float *, int, int, const int *, int,
                      int, int, size_t, size_t);

EENET_AVX512 void eenet_conv_kvec_bw(float *dwt, const float *dyt, const float *xp, int wp,
                                     int s, const int *off, int cout, int ntaps, int ho,
                                     int wo, int nb, size_t dyt_stride, size_t xp_stride) {
    int kv = cout % 64 == 0 ? 4 : cout % 32 == 0 ? 2 : 1;
    kw_fn big = kv == 4 ? kw_4x6 : kv == 2 ? kw_2x12 : kw_1x12;
    kw_fn three = kv == 4 ? kw_4x3 : kv == 2 ? kw_2x3 : kw_1x3;
    kw_fn one = kv == 4 ? kw_4x1 : kv == 2 ? kw_2x1 : kw_1x1;
    int tb = kv == 4 ? 6 : 12;
    for (int k0 = 0; k0 < cout; k0 += 16 * kv) {
        int t0 = 0;
        for (; t0 + tb <= ntaps; t0 += tb) {
            big(dwt + (size_t)t0 * cout + k0, cout, dyt + k0, xp, wp, s, off + t0, ho, wo, nb,
                dyt_stride, xp_stride);
        }
        for (; t0 + 3 <= ntaps; t0 += 3) {
            three(dwt + (size_t)t0 * cout + k0, cout, dyt + k0, xp, wp, s, off + t0, ho, wo, nb,
                dyt_stride, xp_stride);
        }
        for (; t0 < ntaps; t0++) {
            one(dwt + (size_t)t0 * cout + k0, cout, dyt + k0, xp, wp, s, off + t0, ho, wo, nb,
                dyt_stride, xp_stride);
        }
    }
}


/* ---- batch-lane kernels: 16 samples in the zmm lanes --------------------
 * For layers with few channels (EENet-8: 1-16) a sample's planes are too
 * small to fill vectors without waste (q-space garbage columns: 7-wide rows
 * use 49 of 64 lanes; stride-2 phase planes cost a de-interleave per
 * sample).  Here a group of up to 16 samples is transposed into "lane
 * layout" (C, H, W, 16): every pixel is one vector holding that pixel of the
 * 16 samples, so any stride, tail or padding is a plain vector address and
 * every lane does useful work.  Lanes of missing samples (a group of
 * nimg < 16) are zero on input and never stored on output. */

/* r[0..16) (rows) -> c[0..16) (columns): c[j] lane i = r[i] lane j. */
static EENET_AVX512 inline __attribute__((always_inline)) void tr16(__m512 *c, const __m512 *r) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {
        const __m512 *tg = t + 4 * g;
        u[4 * g + 0] = _mm512_shuffle_ps(tg[0], tg[2], 0x44);
        u[4 * g + 1] = _mm512_shuffle_ps(tg[0], tg[2], 0xEE);
        u[4 * g + 2] = _mm512_shuffle_ps(tg[1], tg[3], 0x44);
        u[4 * g + 3] = _mm512_shuffle_ps(tg[1], tg[3], 0xEE);
    }
    /* u[4g+m] 128-bit lane j = rows 4g..4g+3 of column 4j+m */
    for (int mm = 0; mm < 4; mm++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[mm], u[4 + mm], 0x88);
        __m512 v1 = _mm512_shuffle_f32x4(u[mm], u[4 + mm], 0xDD);
        __m512 w0 = _mm512_shuffle_f32x4(u[8 + mm], u[12 + mm], 0x88);
        __m512 w1 = _mm512_shuffle_f32x4(u[8 + mm], u[12 + mm], 0xDD);
        c[mm] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        c[4 + mm] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        c[8 + mm] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        c[12 + mm] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
}

/* ---- 3x3 stride-2 pad-1 forward, output channels in the lanes ------------
 *
 *   out[k][oy][ox] = bias[k] + sum_{c,i,j} w[k][c][i][j] x[c][2oy+i-1][2ox+j-1]
 *
 * for x (C, H, W), H even, W 14, 16 or 32, out (K, H/2, W/2), K a multiple
 * of 16.  A register tile holds 16 output positions at most, one zmm each
 * with 16 output channels: two output rows of 7 or 8 (W 14, 16) or one row
 * of 16 (W 32).  Per tap (c, i, j) one weight vector wk[t][0..16) and one
 * FMA per position with the input pixel broadcast from the NCHW plane itself
 * (no transposed or padded copy of the input).  The taps that would read the
 * zero padding (row iy = -1 for oy = 0 and i = 0; column ix = -1 for ox = 0
 * and j = 0) are skipped, the others summed in tap order t = (c*3+i)*3+j
 * from zero, and the bias added at the end: the sums of the batch-lane
 * forward with its tap classes, bit for bit.  The tile is transposed in
 * registers (16x16) and stored as up to 16 contiguous floats per channel (a
 * tile's rows are contiguous in the output plane). */

/* Output rows per tile for input planes w wide. */
static inline int s2_rows(int w) {
    return w / 2 <= 8 ? 2 : 1;
}

static EENET_AVX512 inline __attribute__((always_inline)) void s2_tile(
    float *o, size_t hw, const float *x, int C, size_t plane, const float *wkb,
    const float *b16, const int W, const int nrows, const int top) {
    /* o = out + k0*hw + oy*W/2; x = the sample's input + 2*oy*W (row 2*oy) */
    const int WO = W / 2;
    __m512 acc[16];
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++) {
        acc[p] = _mm512_setzero_ps();
    }
    for (int c = 0; c < C; c++) {
        const float *xc = x + (size_t)c * plane;
        const float *wc = wkb + (size_t)c * 9 * 16;
#pragma GCC unroll 16
        for (int i = 0; i < 3; i++) {
#pragma GCC unroll 16
            for (int j = 0; j < 3; j++) {
                __m512 wv = _mm512_loadu_ps(wc + (i * 3 + j) * 16);
#pragma GCC unroll 16
                for (int r = 0; r < nrows; r++) {
                    if (top && r == 0 && i == 0) {
                        continue; /* input row -1: padding */
                    }
                    /* input row 2(oy+r)+i-1, column 2q+j-1 */
                    const float *xr = xc + (2 * r + i - 1) * W + j;
                    /* opaque to the optimiser: taps that share pixels must not share
                     * broadcast registers (that spills the accumulators); each
                     * product stays one FMA with a broadcast memory operand */
                    __asm__ volatile("" : "+r"(xr));
#pragma GCC unroll 16
                    for (int q = j == 0 ? 1 : 0; q < WO; q++) {
                        acc[r * WO + q] =
                            _mm512_fmadd_ps(_mm512_set1_ps(xr[2 * q - 1]), wv, acc[r * WO + q]);
                    }
                }
            }
        }
    }
    __m512 ch[16];
    tr16(ch, acc); /* ch[k] lane p = acc[p] lane k */
    __mmask16 m = (__mmask16)((1u << (nrows * WO)) - 1u);
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) {
        __m512 v = b16 ? _mm512_add_ps(ch[k], _mm512_set1_ps(b16[k])) : ch[k];
        _mm512_mask_storeu_ps(o + (size_t)k * hw, m, v);
    }
}

typedef void (*s2_fn)(float *, size_t, const float *, int, size_t, const float *, const float *);

/* Per plane width, the tile kinds, each compiled with its loops unrolled:
 * top (oy = 0) or not, full or one row (the last tile of an odd H/2). */
#define DEFINE_S2(W)                                                                       \
    static EENET_AVX512 void s2_##W##_top(float *o, size_t hw, const float *x, int C,      \
                                          size_t plane, const float *wkb, const float *b) { \
        s2_tile(o, hw, x, C, plane, wkb, b, W, W / 2 <= 8 ? 2 : 1, 1);                     \
    }                                                                                      \
    static EENET_AVX512 void s2_##W##_mid(float *o, size_t hw, const float *x, int C,      \
                                          size_t plane, const float *wkb, const float *b) { \
        s2_tile(o, hw, x, C, plane, wkb, b, W, W / 2 <= 8 ? 2 : 1, 0);                     \
    }                                                                                      \
    static EENET_AVX512 void s2_##W##_top1(float *o, size_t hw, const float *x, int C,     \
                                           size_t plane, const float *wkb, const float *b) { \
        s2_tile(o, hw, x, C, plane, wkb, b, W, 1, 1);                                      \
    }                                                                                      \
    static EENET_AVX512 void s2_##W##_mid1(float *o, size_t hw, const float *x, int C,     \
                                           size_t plane, const float *wkb, const float *b) { \
        s2_tile(o, hw, x, C, plane, wkb, b, W, 1, 0);                                      \
    }

DEFINE_S2(14)
DEFINE_S2(16)
DEFINE_S2(32)

int eenet_conv_s2_ok(int H, int W) {
    return H >= 2 && H % 2 == 0 && (W == 14 || W == 16 || W == 32);
}

int eenet_conv_s2_tiles(int H, int W) {
    int R = s2_rows(W);
    return (H / 2 + R - 1) / R;
}

EENET_AVX512 void eenet_conv_s2_fwd(float *out, const float *bias, const float *x, int C,
                                    int H, int W, const float *wk, int K, int t0, int t1) {
    /* [top, mid, top one row, mid one row] */
    static const s2_fn k14[4] = {s2_14_top, s2_14_mid, s2_14_top1, s2_14_mid1};
    static const s2_fn k16[4] = {s2_16_top, s2_16_mid, s2_16_top1, s2_16_mid1};
    static const s2_fn k32[4] = {s2_32_top, s2_32_mid, s2_32_top1, s2_32_mid1};
    const s2_fn *kind = W == 14 ? k14 : W == 16 ? k16 : k32;
    int ho = H / 2, wo = W / 2, R = s2_rows(W);
    size_t hw = (size_t)ho * wo, plane = (size_t)H * W;
    int ntile = eenet_conv_s2_tiles(H, W);
    for (int u = t0; u < t1; u++) {
        int k0 = 16 * (u / ntile), oy = R * (u % ntile);
        float *o = out + (size_t)k0 * hw + (size_t)oy * wo;
        const float *xr = x + (size_t)2 * oy * W;
        const float *wkb = wk + (size_t)k0 * C * 9;
        const float *b16 = bias ? bias + k0 : NULL;
        int one = R == 2 && oy + 1 == ho; /* the last tile has one row */
        kind[(oy == 0 ? 0 : 1) + (one ? 2 : 0)](o, hw, xr, C, plane, wkb, b16);
    }
}

/* ---- 3x3 stride-2 pad-1 weight gradient, output channels in the lanes ----
 *
 *   dw[k][c][i][j] += sum_{oy,ox} dy[k][oy][ox] x[c][2oy+i-1][2ox+j-1]
 *
 * for one sample x (C, H, W), H and W even (no tap reads past the bottom or
 * right edge), dy given transposed: dyt (Ho*Wo, K), one vector of 16
 * channels per position.  dwt (C*9, K) holds the sums transposed (as
 * eenet_conv_kvec_bw's).  Per block of 2 input channels (18 taps) and 16
 * output channels the 18 sums stay in registers over the sample's
 * positions: per position one dy vector and one FMA per tap with the input
 * pixel broadcast from the NCHW plane itself (no padded copy); taps that
 * read padding (row -1 at oy = 0, column -1 at ox = 0) are skipped. */

/* acc[b*9 + i*3 + j] += x[b][2oy+i-1][2ox+j-1] * dyv for the block's nch
 * channels at one position; q = x + 2oy*W + 2ox of the first channel (the
 * taps skipped at the top / left never form a pointer before x). */
static EENET_AVX512 inline __attribute__((always_inline)) void s2bw_pos(
    __m512 *acc, const float *q, size_t plane, int W, __m512 dyv, const int nch, const int top,
    const int left) {
#pragma GCC unroll 4
    for (int b = 0; b < nch; b++) {
#pragma GCC unroll 4
        for (int i = top ? 1 : 0; i < 3; i++) {
#pragma GCC unroll 4
            for (int j = left ? 1 : 0; j < 3; j++) {
                const float *pix = q + (size_t)b * plane + (ptrdiff_t)(i - 1) * W + (j - 1);
                acc[b * 9 + i * 3 + j] =
                    _mm512_fmadd_ps(_mm512_set1_ps(*pix), dyv, acc[b * 9 + i * 3 + j]);
            }
        }
    }
}

static EENET_AVX512 inline __attribute__((always_inline)) void s2bw_block(
    float *dwt, int K, const float *dyt, const float *x, int H, int W, const int nch) {
    /* dwt = the block's first tap row + k0; dyt = positions' vectors + k0 */
    int ho = H / 2, wo = W / 2;
    size_t plane = (size_t)H * W;
    __m512 acc[18];
#pragma GCC unroll 18
    for (int t = 0; t < 9 * nch; t++) {
        acc[t] = _mm512_loadu_ps(dwt + (size_t)t * K);
    }
    for (int oy = 0; oy < ho; oy++) {
        const float *dr = dyt + (size_t)oy * wo * K;
        const float *xr = x + (size_t)(2 * oy) * W; /* input row 2oy */
        if (oy == 0) {
            s2bw_pos(acc, xr, plane, W, _mm512_loadu_ps(dr), nch, 1, 1);
#pragma GCC unroll 1
            for (int ox = 1; ox < wo; ox++) {
                s2bw_pos(acc, xr + 2 * ox, plane, W, _mm512_loadu_ps(dr + (size_t)ox * K), nch,
                         1, 0);
            }
        } else {
            s2bw_pos(acc, xr, plane, W, _mm512_loadu_ps(dr), nch, 0, 1);
#pragma GCC unroll 1
            for (int ox = 1; ox < wo; ox++) {
                s2bw_pos(acc, xr + 2 * ox, plane, W, _mm512_loadu_ps(dr + (size_t)ox * K), nch,
                         0, 0);
            }
        }
    }
#pragma GCC unroll 18
    for (int t = 0; t < 9 * nch; t++) {
        _mm512_storeu_ps(dwt + (size_t)t * K, acc[t]);
    }
}

static EENET_AVX512 void s2bw_block2(float *dwt, int K, const float *dyt, const float *x,
                                     int H, int W) {
    s2bw_block(dwt, K, dyt, x, H, W, 2);
}

static EENET_AVX512 void s2bw_block1(float *dwt, int K, const float *dyt, const float *x,
                                     int H, int W) {
    s2bw_block(dwt, K, dyt, x, H, W, 1);
}

EENET_AVX512 void eenet_conv_cl_bw(float *dwt, const float *dyt, const float *x, int C, int H,
                                   int W, int K) {
    size_t plane = (size_t)H * W;
    for (int k0 = 0; k0 < K; k0 += 16) {
        int c0 = 0;
        for (; c0 + 2 <= C; c0 += 2) {
            s2bw_block2(dwt + (size_t)c0 * 9 * K + k0, K, dyt + k0, x + (size_t)c0 * plane, H, W);
        }
        if (c0 < C) {
            s2bw_block1(dwt + (size_t)c0 * 9 * K + k0, K, dyt + k0, x + (size_t)c0 * plane, H, W);
        }
    }
}

EENET_AVX512 void eenet_conv_lanes_in(float *xl, const float *x, int nimg, size_t img_stride,
                                      int cin, int h, int w, int ph, int pw, int ystep) {
    eenet_conv_lanes_in_pad(xl, x, nimg, img_stride, cin, h, w, h + 2 * ph, w + 2 * pw, ph, pw,
                            ystep);
}

/* Every row (ystep 1): the images' (cin, h, w) floats taken 16 at a time in
 * memory order, across row and channel ends, so a 14-wide plane costs 12.25
 * transposes instead of 14 (one per row); each of the 16 pixel vectors goes
 * to its padded place.  The data moved is the same as row by row. */
static EENET_AVX512 void lanes_in_flat(float *xl, const float *x, int nimg, size_t img_stride,
                                       int cin, int h, int w, size_t hp, size_t wpad, int ph,
                                       int pw) {
    size_t total = (size_t)cin * h * w;
    int y = 0, xc = 0;
    float *dst = xl + 16 * ((size_t)ph * wpad + pw);
    for (size_t f0 = 0; f0 < total; f0 += 16) {
        int nf = total - f0 < 16 ? (int)(total - f0) : 16;
        __mmask16 m = tail_mask(nf);
        __m512 r[16], cc[16];
        for (int b = 0; b < 16; b++) {
            r[b] = b < nimg ? _mm512_maskz_loadu_ps(m, x + (size_t)b * img_stride + f0)
                            : _mm512_setzero_ps();
        }
        tr16(cc, r);
        for (int j = 0; j < nf; j++) {
            _mm512_storeu_ps(dst, cc[j]);
            dst += 16;
            if (++xc == w) {
                /* next row: skip the right and left padding; next plane:
                 * also the bottom and top padding rows */
                xc = 0;
                dst += 16 * (wpad - (size_t)w);
                if (++y == h) {
                    y = 0;
                    dst += 16 * (hp - (size_t)h) * wpad;
                }
            }
        }
    }
}

EENET_AVX512 void eenet_conv_lanes_in_pad(float *xl, const float *x, int nimg,
                                          size_t img_stride, int cin, int h, int w, int hp_,
                                          int wp_, int ph, int pw, int ystep) {
    size_t hp = (size_t)hp_, wpad = (size_t)wp_;
    if (ystep == 1) {
        lanes_in_flat(xl, x, nimg, img_stride, cin, h, w, hp, wpad, ph, pw);
        return;
    }
    for (int c = 0; c < cin; c++) {
        for (int y = 0; y < h; y += ystep) {
            const float *xr = x + ((size_t)c * h + y) * w;
            float *dst = xl + 16 * (((size_t)c * hp + y + ph) * wpad + pw);
            for (int x0 = 0; x0 < w; x0 += 16) {
                int nx = w - x0 < 16 ? w - x0 : 16;
                __mmask16 m = tail_mask(nx);
                __m512 r[16], cc[16];
                for (int b = 0; b < 16; b++) {
                    r[b] = b < nimg ? _mm512_maskz_loadu_ps(m, xr + (size_t)b * img_stride + x0)
                                    : _mm512_setzero_ps();
                }
                tr16(cc, r);
                for (int j = 0; j < nx; j++) {
                    _mm512_storeu_ps(dst + 16 * (size_t)(x0 + j), cc[j]);
                }
            }
        }
    }
}

/* dst + b*img_stride, b < nimg: nf floats = lane b of the nf vectors at src
 * (+ bv, or + what is there when accumulating). */
static EENET_AVX512 inline __attribute__((always_inline)) void lanes_store16(
    float *dst, size_t img_stride, const float *src, int nf, int nimg, __m512 bv,
    int accumulate) {
    __mmask16 m = tail_mask(nf);
    __m512 r[16], cc[16];
    for (int i = 0; i < 16; i++) {
        r[i] = i < nf ? _mm512_loadu_ps(src + 16 * (size_t)i) : _mm512_setzero_ps();
    }
    tr16(cc, r);
    for (int b = 0; b < nimg; b++) {
        float *d = dst + (size_t)b * img_stride;
        __m512 v = accumulate ? _mm512_add_ps(cc[b], _mm512_maskz_loadu_ps(m, d))
                              : _mm512_add_ps(cc[b], bv);
        _mm512_mask_storeu_ps(d, m, v);
    }
}

/* Planes of a multiple of 16 positions go channel by channel.  Others are
 * taken 16 vectors at a time in memory order across channel ends (as
 * lanes_in_flat), so a 49-position plane costs 3.06 transposes instead of 4
 * and every store but the last is a full vector (8->16 14x14 s2 forward);
 * the values are the same either way (out = yl + bias[k], or out += yl). */
EENET_AVX512 void eenet_conv_lanes_out(float *out, size_t img_stride, const float *yl, int nimg,
                                       int cout, int hw, const float *bias, int accumulate) {
    int use_bias = !accumulate && bias;
    if (hw % 16 == 0 || cout == 1) {
        for (int k = 0; k < cout; k++) {
            __m512 bv = _mm512_set1_ps(use_bias ? bias[k] : 0.0f);
            const float *yk = yl + 16 * (size_t)k * hw;
            for (int p0 = 0; p0 < hw; p0 += 16) {
                int np = hw - p0 < 16 ? hw - p0 : 16;
                lanes_store16(out + (size_t)k * hw + p0, img_stride, yk + 16 * (size_t)p0, np,
                              nimg, bv, accumulate);
            }
        }
        return;
    }
    size_t total = (size_t)cout * hw;
    int k = 0, pos = 0; /* channel and position of the next bias lane */
    for (size_t f0 = 0; f0 < total; f0 += 16) {
        int nf = total - f0 < 16 ? (int)(total - f0) : 16;
        __m512 bv = _mm512_setzero_ps();
        if (use_bias && pos + nf <= hw) { /* the 16 positions in one channel */
            bv = _mm512_set1_ps(bias[k]);
            pos += nf;
            if (pos == hw) {
                pos = 0, k++;
            }
        } else if (use_bias) { /* across a channel end: lane by lane */
            float bb[16] = {0};
            for (int j = 0; j < nf; j++) {
                bb[j] = bias[k];
                if (++pos == hw) {
                    pos = 0, k++;
                }
            }
            bv = _mm512_loadu_ps(bb);
        }
        lanes_store16(out + f0, img_stride, yl + 16 * f0, nf, nimg, bv, accumulate);
    }
}

/* Sample b < nimg of out (cout, H, W) += the polyphase data gradient's phase
 * planes in lane layout: pixel (c, iy, ix) from plane q = 2*(iy%2) + ix%2
 * (c, hq, wq, 16) at row iy/2, column ix/2, lane b (the interleave and
 * eenet_conv_lanes_out in one pass). */
EENET_AVX512 void eenet_conv_lanes_out_pd(float *out, size_t img_stride,
                                          const float *const ph[4], int nimg, int cout, int H,
                                          int W) {
    int w0 = (W + 1) / 2, w1 = W / 2, h0 = (H + 1) / 2, h1 = H / 2;
    for (int k = 0; k < cout; k++) {
        for (int iy = 0; iy < H; iy++) {
            int a = iy & 1, m = iy >> 1, hq = a ? h1 : h0;
            const float *p0 = ph[2 * a] + 16 * ((size_t)k * hq + m) * w0;
            const float *p1 = ph[2 * a + 1] + 16 * ((size_t)k * hq + m) * w1;
            for (int x0 = 0; x0 < W; x0 += 16) {
                int np = W - x0 < 16 ? W - x0 : 16;
                __mmask16 msk = tail_mask(np);
                __m512 r[16], cc[16];
                for (int i = 0; i < 16; i++) {
                    int ix = x0 + i;
                    r[i] = i < np ? _mm512_loadu_ps((ix & 1 ? p1 : p0) + 16 * (size_t)(ix >> 1))
                                  : _mm512_setzero_ps();
                }
                tr16(cc, r);
                for (int b = 0; b < nimg; b++) {
                    float *dst = out + (size_t)b * img_stride + ((size_t)k * H + iy) * W + x0;
                    _mm512_mask_storeu_ps(dst, msk,
                                          _mm512_add_ps(cc[b], _mm512_maskz_loadu_ps(msk, dst)));
                }
            }
        }
    }
}

/* Forward tile in lane layout: acc[KB][PX] for KB output channels and PX
 * consecutive output columns of one row; per tap PX vector loads (stride s
 * apart), KB weight broadcasts, KB*PX FMAs.  y: first output vector, rows
 * of channel a at y + a*ystride; xb: the input vector of tap offset 0 for
 * the first column; off16[t] in floats; the weights of tap t at
 * wpb + KB*t (lf_), or at wpb + KB*wtap[t] (lft_: a subset of the packed
 * taps); one body, inlined into both, so lf_ has no index load. */
#define DEFINE_LF(KB, PX)                                                                   \
    static EENET_AVX512 inline __attribute__((always_inline)) void lf_body_##KB##x##PX(     \
        float *y, size_t ystride, const float *xb, int s, const int *off16,                 \
        const float *wpb, const int *wtap, int ntaps) {                                     \
        __m512 acc[KB][PX];                                                                 \
        for (int a = 0; a < KB; a++) {                                                      \
            for (int v = 0; v < PX; v++) {                                                  \
                acc[a][v] = _mm512_setzero_ps();                                            \
            }                                                                               \
        }                                                                                   \
        size_t sv = 16 * (size_t)s;                                                         \
        for (int t = 0; t < ntaps; t++) {                                                   \
            const float *p = xb + off16[t];                                                 \
            __m512 x[PX];                                                                   \
            for (int v = 0; v < PX; v++) {                                                  \
                x[v] = _mm512_loadu_ps(p + sv * v);                                         \
            }                                                                               \
            const float *wt = wpb + (size_t)(wtap ? wtap[t] : t) * KB;                      \
            for (int a = 0; a < KB; a++) {                                                  \
                __m512 wv = _mm512_set1_ps(wt[a]);                                          \
                for (int v = 0; v < PX; v++) {                                              \
                    acc[a][v] = _mm512_fmadd_ps(wv, x[v], acc[a][v]);                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int a = 0; a < KB; a++) {                                                      \
            for (int v = 0; v < PX; v++) {                                                  \
                _mm512_storeu_ps(y + (size_t)a * ystride + 16 * v, acc[a][v]);              \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    static EENET_AVX512 void lf_##KB##x##PX(float *y, size_t ystride, const float *xb,      \
                                             int s, const int *off16, const float *wpb,     \
                                             int ntaps) {                                   \
        lf_body_##KB##x##PX(y, ystride, xb, s, off16, wpb, NULL, ntaps);                    \
    }                                                                                       \
    static EENET_AVX512 void lft_##KB##x##PX(float *y, size_t ystride, const float *xb,     \
                                              int s, const int *off16, const float *wpb,    \
                                              const int *wtap, int ntaps) {                 \
        lf_body_##KB##x##PX(y, ystride, xb, s, off16, wpb, wtap, ntaps);                    \
    }

DEFINE_LF(8, 3)
DEFINE_LF(8, 2)
DEFINE_LF(8, 1)
DEFINE_LF(4, 6)
DEFINE_LF(4, 5)
DEFINE_LF(4, 4)
DEFINE_LF(4, 3)
DEFINE_LF(4, 2)
DEFINE_LF(4, 1)
DEFINE_LF(2, 8)
DEFINE_LF(2, 4)
DEFINE_LF(2, 2)
DEFINE_LF(2, 1)
DEFINE_LF(1, 8)
DEFINE_LF(1, 4)
DEFINE_LF(1, 2)
DEFINE_LF(1, 1)

typedef void (*lf_fn)(float *, size_t, const float *, int, const int *, const float *, int);
typedef void (*lft_fn)(float *, size_t, const float *, int, const int *, const float *,
                       const int *, int);

EENET_AVX512 void eenet_conv_lanes_fwd(float *yl, const float *xl, int wp, int s,
                                       const int *off16, const float *wpk, int cout, int ntaps,
                                       int ho, int wo) {
    static const lf_fn t8[4] = {0, lf_8x1, lf_8x2, lf_8x3};
    static const lf_fn t4[7] = {0, lf_4x1, lf_4x2, lf_4x3, lf_4x4, lf_4x5, lf_4x6};
    static const lf_fn t2[9] = {0, lf_2x1, lf_2x2, 0, lf_2x4, 0, 0, 0, lf_2x8};
    static const lf_fn t1[9] = {0, lf_1x1, lf_1x2, 0, lf_1x4, 0, 0, 0, lf_1x8};
    size_t plane = 16 * (size_t)ho * wo;
    for (int k0 = 0; k0 < cout;) {
        int kb = eenet_conv_fwd_kblock(cout - k0);
        const lf_fn *tab = kb == 8 ? t8 : kb == 4 ? t4 : kb == 2 ? t2 : t1;
        int pmax = kb == 8 ? 3 : kb == 4 ? 6 : 8;
        const float *wpb = wpk + (size_t)k0 * ntaps;
        for (int oy = 0; oy < ho; oy++) {
            float *y = yl + (size_t)k0 * plane + 16 * (size_t)oy * wo;
            const float *xr = xl + 16 * (size_t)oy * s * wp;
            for (int ox = 0; ox < wo;) {
                int v = wo - ox < pmax ? wo - ox : pmax;
                while (!tab[v]) {
                    v--;
                }
                tab[v](y + 16 * (size_t)ox, plane, xr + 16 * (size_t)ox * s, s, off16, wpb,
                       ntaps);
                ox += v;
            }
        }
        k0 += kb;
    }
}

EENET_AVX512 void eenet_conv_lanes_fwd_taps(float *yl, const float *xl, int wp, int s,
                                            const eenet_lanes_taps *lt, const float *wpk,
                                            int cout, int ntaps, int ho, int wo) {
    static const lft_fn t8[4] = {0, lft_8x1, lft_8x2, lft_8x3};
    static const lft_fn t4[7] = {0, lft_4x1, lft_4x2, lft_4x3, lft_4x4, lft_4x5, lft_4x6};
    static const lft_fn t2[9] = {0, lft_2x1, lft_2x2, 0, lft_2x4, 0, 0, 0, lft_2x8};
    static const lft_fn t1[9] = {0, lft_1x1, lft_1x2, 0, lft_1x4, 0, 0, 0, lft_1x8};
    size_t plane = 16 * (size_t)ho * wo;
    for (int k0 = 0; k0 < cout;) {
        int kb = eenet_conv_fwd_kblock(cout - k0);
        const lft_fn *tab = kb == 8 ? t8 : kb == 4 ? t4 : kb == 2 ? t2 : t1;
        int pmax = kb == 8 ? 3 : kb == 4 ? 6 : 8;
        for (int oy = 0; oy < ho; oy++) {
            float *y = yl + (size_t)k0 * plane + 16 * (size_t)oy * wo;
            const float *xr = xl + 16 * (size_t)oy * s * wp;
            int rq = lt->rcls[oy] * lt->ncc;
            for (int ox = 0; ox < wo;) {
                /* a run of columns of one class, cut into tiles */
                int cq = lt->ccls[ox], run = 1;
                while (ox + run < wo && lt->ccls[ox + run] == cq) {
                    run++;
                }
                int q = rq + cq, nt = lt->ntaps[q];
                const int *off = lt->off16 + (size_t)q * lt->ostride;
                const int *wtap = lt->wtap + (size_t)q * lt->ostride;
                const float *wpb = wpk + (size_t)k0 * ntaps;
                for (int end = ox + run; ox < end;) {
                    int v = end - ox < pmax ? end - ox : pmax;
                    while (!tab[v]) {
                        v--;
                    }
                    tab[v](y + 16 * (size_t)ox, plane, xr + 16 * (size_t)ox * s, s, off, wpb, wtap,
                           nt);
                    ox += v;
                }
            }
        }
        k0 += kb;
    }
}

/* Backward-weight tile in lane layout: acc[KB][TB] (lane partial sums over
 * the group's samples) for KB output channels and TB taps over all output
 * positions, added into the lane partials dwl (cout, ntaps, 16). */
#define DEFINE_LB(KB, TB)                                                                    \
    static EENET_AVX512 void lb_##KB##x##TB(float *dwl, int ntaps, const float *dy,          \
                                             size_t dplane, int ldr, const float *xl, int wp, \
                                             int s, const int *off16, int ho, int wo) {      \
        __m512 acc[KB][TB];                                                                  \
        for (int a = 0; a < KB; a++) {                                                       \
            for (int b = 0; b < TB; b++) {                                                   \
                acc[a][b] = _mm512_loadu_ps(dwl + 16 * ((size_t)a * ntaps + b));             \
            }                                                                                \
        }                                                                                    \
        const float *sp[TB];                                                                 \
        for (int b = 0; b < TB; b++) {                                                       \
            sp[b] = xl + off16[b];                                                           \
        }                                                                                    \
        for (int oy = 0; oy < ho; oy++) {                                                    \
            const float *dr = dy + 16 * (size_t)oy * ldr;                                    \
            size_t base = 16 * (size_t)oy * s * wp;                                          \
            for (int ox = 0; ox < wo; ox++, base += 16 * (size_t)s) {                        \
                __m512 d[KB];                                                                \
                for (int a = 0; a < KB; a++) {                                               \
                    d[a] = _mm512_loadu_ps(dr + (size_t)a * dplane + 16 * (size_t)ox);       \
                }                                                                            \
                for (int b = 0; b < TB; b++) {                                               \
                    __m512 xv = _mm512_loadu_ps(sp[b] + base);                               \
                    for (int a = 0; a < KB; a++) {                                           \
                        acc[a][b] = _mm512_fmadd_ps(d[a], xv, acc[a][b]);                    \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        for (int a = 0; a < KB; a++) {                                                       \
            for (int b = 0; b < TB; b++) {                                                   \
                _mm512_storeu_ps(dwl + 16 * ((size_t)a * ntaps + b), acc[a][b]);             \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_LB(4, 6)
DEFINE_LB(4, 3)
DEFINE_LB(4, 1)
DEFINE_LB(2, 6)
DEFINE_LB(2, 3)
DEFINE_LB(2, 1)
DEFINE_LB(1, 6)
DEFINE_LB(1, 3)
DEFINE_LB(1, 1)

typedef void (*lb_fn)(float *, int, const float *, size_t, int, const float *, int, int,
                      const int *, int, int);

EENET_AVX512 void eenet_conv_lanes_bw(float *dwl, const float *dy, size_t dplane, int ldr,
                                      const float *xl, int wp, int s, const int *off16,
                                      int cout, int ntaps, int ho, int wo) {
    static const lb_fn table[3][3] = {{lb_4x6, lb_4x3, lb_4x1},
                                      {lb_2x6, lb_2x3, lb_2x1},
                                      {lb_1x6, lb_1x3, lb_1x1}};
    for (int k0 = 0; k0 < cout;) {
        int rem = cout - k0;
        int ka = rem >= 4 ? 0 : rem >= 2 ? 1 : 2;
        int kb = 4 >> ka;
        for (int t0 = 0; t0 < ntaps;) {
            int trem = ntaps - t0;
            int ta = trem >= 6 ? 0 : trem >= 3 ? 1 : 2;
            int tb = ta == 0 ? 6 : ta == 1 ? 3 : 1;
            table[ka][ta](dwl + 16 * ((size_t)k0 * ntaps + t0), ntaps, dy + (size_t)k0 * dplane,
                          dplane, ldr, xl, wp, s, off16 + t0, ho, wo);
            t0 += tb;
        }
        k0 += kb;
    }
}

/* dw[k*sk + t*st] += sum over lanes of dwl (cout, ntaps, 16); db[k] += sum
 * over lanes and positions of dy (cout, planes dplane apart; rows ldr apart,
 * ho x wo) when db is not NULL. */
EENET_AVX512 void eenet_conv_lanes_reduce(float *dw, size_t sk, size_t st, const float *dwl,
                                          int cout, int ntaps) {
    for (int k = 0; k < cout; k++) {
        for (int t = 0; t < ntaps; t++) {
            dw[(size_t)k * sk + (size_t)t * st] +=
                _mm512_reduce_add_ps(_mm512_loadu_ps(dwl + 16 * ((size_t)k * ntaps + t)));
        }
    }
}

EENET_AVX512 void eenet_conv_lanes_bias(float *db, const float *dy, size_t dplane, int ldr,
                                        int cout, int ho, int wo) {
    for (int k = 0; k < cout; k++) {
        __m512 acc = _mm512_setzero_ps();
        for (int oy = 0; oy < ho; oy++) {
            const float *dr = dy + (size_t)k * dplane + 16 * (size_t)oy * ldr;
            for (int ox = 0; ox < wo; ox++) {
                acc = _mm512_add_ps(acc, _mm512_loadu_ps(dr + 16 * (size_t)ox));
            }
        }
        db[k] += _mm512_reduce_add_ps(acc);
    }
}

#else /* not x86-64 GCC/Clang: no direct path, conv.c uses im2col+GEMM */

void eenet_conv_lanes_in_pad(float *xl, const float *x, int nimg, size_t img_stride, int cin,
                             int h, int w, int hp, int wp, int ph, int pw, int ystep) {
    (void)xl, (void)x, (void)nimg, (void)img_stride, (void)cin, (void)h, (void)w, (void)hp;
    (void)wp, (void)ph, (void)pw, (void)ystep;
}

void eenet_conv_lanes_in(float *xl, const float *x, int nimg, size_t img_stride, int cin, int h,
                         int w, int ph, int pw, int ystep) {
    (void)xl, (void)x, (void)nimg, (void)img_stride, (void)cin, (void)h, (void)w, (void)ph;
    (void)pw, (void)ystep;
}

void eenet_conv_lanes_out(float *out, size_t img_stride, const float *yl, int nimg, int cout,
                          int hw, const float *bias, int accumulate) {
    (void)out, (void)img_stride, (void)yl, (void)nimg, (void)cout, (void)hw, (void)bias;
    (void)accumulate;
}

void eenet_conv_lanes_out_pd(float *out, size_t img_stride, const float *const ph[4], int nimg,
                             int cout, int H, int W) {
    (void)out, (void)img_stride, (void)ph, (void)nimg, (void)cout, (void)H, (void)W;
}

void eenet_conv_lanes_fwd(float *yl, const float *xl, int wp, int s, const int *off16,
                          const float *wpk, int cout, int ntaps, int ho, int wo) {
    (void)yl, (void)xl, (void)wp, (void)s, (void)off16, (void)wpk, (void)cout, (void)ntaps;
    (void)ho, (void)wo;
}

void eenet_conv_lanes_fwd_taps(float *yl, const float *xl, int wp, int s,
                               const eenet_lanes_taps *lt, const float *wpk, int cout, int ntaps,
                               int ho, int wo) {
    (void)yl, (void)xl, (void)wp, (void)s, (void)lt, (void)wpk, (void)cout, (void)ntaps;
    (void)ho, (void)wo;
}

void eenet_conv_lanes_bw(float *dwl, const float *dy, size_t dplane, int ldr, const float *xl,
                         int wp, int s, const int *off16, int cout, int ntaps, int ho, int wo) {
    (void)dwl, (void)dy, (void)dplane, (void)ldr, (void)xl, (void)wp, (void)s, (void)off16;
    (void)cout, (void)ntaps, (void)ho, (void)wo;
}

void eenet_conv_lanes_reduce(float *dw, size_t sk, size_t st, const float *dwl, int cout,
                             int ntaps) {
    (void)dw, (void)sk, (void)st, (void)dwl, (void)cout, (void)ntaps;
}

void eenet_conv_lanes_bias(float *db, const float *dy, size_t dplane, int ldr, int cout, int ho,
                           int wo) {
    (void)db, (void)dy, (void)dplane, (void)ldr, (void)cout, (void)ho, (void)wo;
}


int eenet_conv_direct_available(void) {
    return 0;
}

void eenet_conv_cl_bw(float *dwt, const float *dyt, const float *x, int C, int H, int W,
                      int K) {
    (void)dwt, (void)dyt, (void)x, (void)C, (void)H, (void)W, (void)K;
}

int eenet_conv_s2_ok(int H, int W) {
    (void)H, (void)W;
    return 0;
}

int eenet_conv_s2_tiles(int H, int W) {
    (void)H, (void)W;
    return 0;
}

void eenet_conv_s2_fwd(float *out, const float *bias, const float *x, int C, int H, int W,
                       const float *wk, int K, int t0, int t1) {
    (void)out, (void)bias, (void)x, (void)C, (void)H, (void)W, (void)wk, (void)K, (void)t0;
    (void)t1;
}
void eenet_conv_direct_fwd(float *yq, size_t ldy, const float *src, const int *off,
                           const float *wp, int cout, int ntaps, int nq) {
    (void)yq, (void)ldy, (void)src, (void)off, (void)wp, (void)cout, (void)ntaps, (void)nq;
}

void eenet_conv_direct_bw(float *dw, const float *dq, size_t ldq, size_t dq_stride,
                          const float *src, size_t src_stride, const int *off, int cout,
                          int ntaps, int nq, int nb) {
    (void)dw, (void)dq, (void)ldq, (void)dq_stride, (void)src, (void)src_stride, (void)off;
    (void)cout, (void)ntaps, (void)nq, (void)nb;
}

void eenet_conv_kvec_fwd(float *out, int accumulate, const float *bias, const float *xp, int wp,
                         int s, const int *off, const float *wk, int cout, int ntaps, int ho,
                         int wo, int r0, int r1, int kv, int P, float *tile) {
    (void)out, (void)accumulate, (void)bias, (void)xp, (void)wp, (void)s, (void)off, (void)wk;
    (void)cout, (void)ntaps, (void)ho, (void)wo, (void)r0, (void)r1, (void)kv, (void)P;
    (void)tile;
}

void eenet_conv_kvec_pd(float *dx, int H, int W, int a, const float *dp, int wpp,
                        const int *off0, const float *wk0, int nt0, const int *off1,
                        const float *wk1, int nt1, int cout, int hq, int kv, int P) {
    (void)dx, (void)H, (void)W, (void)a, (void)dp, (void)wpp, (void)off0, (void)wk0, (void)nt0;
    (void)off1, (void)wk1, (void)nt1, (void)cout, (void)hq, (void)kv, (void)P;
}

void eenet_conv_kvec_bw(float *dwt, const float *dyt, const float *xp, int wp, int s,
                        const int *off, int cout, int ntaps, int ho, int wo, int nb,
                        size_t dyt_stride, size_t xp_stride) {
    (void)dwt, (void)dyt, (void)xp, (void)wp, (void)s, (void)off, (void)cout, (void)ntaps;
    (void)ho, (void)wo, (void)nb, (void)dyt_stride, (void)xp_stride;
}

void eenet_conv_transpose_dy(float *dyt, float *pdb, const float *dy, int K, int howo) {
    (void)dyt, (void)pdb, (void)dy, (void)K, (void)howo;
}

void eenet_conv_pad_fill(float *xp, const float *x, int cin, int h, int w, int ph, int pw) {
    (void)xp, (void)x, (void)cin, (void)h, (void)w, (void)ph, (void)pw;
}

void eenet_conv_fill_planes(float *src, const float *x, int cin, int h, int w, int s, int ph,
                            int pw, int ws, size_t plane) {
    (void)src, (void)x, (void)cin, (void)h, (void)w, (void)s, (void)ph, (void)pw, (void)ws;
    (void)plane;
}

void eenet_conv_store_rows(float *out, const float *yq, size_t ldq, int ws, int cout, int ho,
                           int wo, const float *bias, int accumulate) {
    (void)out, (void)yq, (void)ldq, (void)ws, (void)cout, (void)ho, (void)wo, (void)bias;
    (void)accumulate;
}

void eenet_conv_fill_dq(float *dq, float *pdb, const float *dy, int cout, int ho, int wo,
                        int ws, size_t ldq) {
    (void)dq, (void)pdb, (void)dy, (void)cout, (void)ho, (void)wo, (void)ws, (void)ldq;
}

#endif
