/* conv_winograd.c: Winograd F(2x2,3x3) convolution (3x3 kernel, stride 1,
 * padding 1), used by conv.c for forward and backward-data where measured
 * faster than the direct kernels (see plan_choose in conv.c).
 *
 * For a 2x2 output tile at (2ty, 2tx) with input tile d (4x4) read at rows
 * 2ty-1..2ty+2, columns 2tx-1..2tx+2 (zero outside the input), and a 3x3
 * filter g (Lavin & Gray's F(2x2,3x3)):
 *
 *   V = B^T d B,  U = G g G^T,  Y = A^T (U (.) V) A      (U, V 4x4; Y 2x2)
 *
 *   B^T = [1  0 -1  0]   G = [ 1    0    0 ]   A^T = [1 1  1  0]
 *         [0  1  1  0]       [1/2  1/2  1/2]         [0 1 -1 -1]
 *         [0 -1  1  0]       [1/2 -1/2  1/2]
 *         [0  1  0 -1]       [ 0    0    1 ]
 *
 * Summed over input channels, (U (.) V) becomes 16 independent GEMMs, one per
 * element e = 4i+j:  M_e (cout, tiles) = U_e (cout, cin) . V_e (cin, tiles).
 * That is 16 multiply-adds per 4 outputs per channel pair instead of 36
 * (2.25x fewer), for the price of the transforms (O(cin + cout) per tile).
 * B^T and A^T have entries 0 and +-1 only, so the input and output transforms
 * are exact additions; U is formed in double and rounded once.  Error versus
 * float64 stays within a few float32 ulps of the output's magnitude (the
 * tests hold it to rtol 1e-4, atol 1e-5 like every other path).
 *
 * Blocking: tiles are numbered by global tile row r = n*th + ty (th = ceil(H/2)
 * tile rows of tw = ceil(W/2) tiles per sample); a block is R consecutive tile
 * rows (R*tw <= WINO_COLS columns, possibly spanning samples), so small
 * images (8x8: 16 tiles) still give GEMMs with 64 columns and the block count,
 * rounded to a multiple of the thread count, keeps 2 threads balanced at any
 * batch.  Per block and thread: input transform into V (16, cin, ldv), 16
 * GEMMs into M (16, cout, ldv), output transform (+ bias, or accumulate) into
 * the output; V and M stay in L2.
 *
 * AVX-512 path (caller checked the CPU): transforms vectorised over 16 tiles
 * of a tile row (deinterleaving loads with permutes; masked at the borders),
 * GEMM by the direct kernel's register-blocked micro-kernel
 * (eenet_conv_direct_fwd, 8 output channels x 48 tiles per block).
 * Portable path: scalar transforms and eenet_sgemm (OpenBLAS).
 */
#include "conv_winograd.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "conv_direct.h"
#include "eenet.h"
#include "gemm.h"

/* Target tile columns per block (GEMM width); measured on Zen 4, see conv.c. */
#define WINO_COLS 64

static size_t r16(size_t n) {
    return (n + 15u) & ~(size_t)15u;
}

/* Tile rows th, tiles per row tw, tile rows per block at most, row stride of V/M. */
static void wino_geom(int H, int W, int *th, int *tw, int *rmax, int *ldv) {
    *th = (H + 1) / 2;
    *tw = (W + 1) / 2;
    *rmax = WINO_COLS / *tw;
    if (*rmax < 1) {
        *rmax = 1;
    }
    *ldv = (int)r16((size_t)*rmax * *tw);
}

void eenet_wino_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot) {
    int th, tw, rmax, ldv;
    wino_geom(H, W, &th, &tw, &rmax, &ldv);
    *shared = r16((size_t)16 * C * K) + r16((size_t)(C > K ? C : K));
    *slot = (size_t)16 * ((size_t)C + K) * ldv;
}

/* U_e (cout, cin) for e = 0..15 at u + e*cout*cin: (G g G^T)[e/4][e%4] for
 * g = w[co][ci] (flip = 0; w (cout, cin, 3, 3)) or g[a][b] =
 * w[ci][co][2-a][2-b] (flip = 1; w (cin, cout, 3, 3)).  packed = 1 lays each
 * U_e out as the direct micro-kernel wants (blocks of kb output channels,
 * [ci][kk] inside, conv_direct.h), else row-major (cout, cin). */
static void wino_weights(float *u, const float *w, int cout, int cin, int flip, int packed) {
    size_t ue = (size_t)cout * cin;
    for (int k0 = 0; k0 < cout;) {
        int kb = packed ? eenet_conv_fwd_kblock(cout - k0) : cout;
        for (int co = k0; co < k0 + kb; co++) {
            for (int ci = 0; ci < cin; ci++) {
                double g[3][3], t[4][3];
                for (int a = 0; a < 3; a++) {
                    for (int b = 0; b < 3; b++) {
                        g[a][b] = flip ? w[((size_t)ci * cout + co) * 9 + (2 - a) * 3 + (2 - b)]
                                       : w[((size_t)co * cin + ci) * 9 + a * 3 + b];
                    }
                }
                for (int b = 0; b < 3; b++) { /* t = G g (4x3) */
                    t[0][b] = g[0][b];
                    t[1][b] = 0.5 * (g[0][b] + g[1][b] + g[2][b]);
                    t[2][b] = 0.5 * (g[0][b] - g[1][b] + g[2][b]);
                    t[3][b] = g[2][b];
                }
                size_t idx = packed ? (size_t)k0 * cin + (size_t)ci * kb + (size_t)(co - k0)
                                    : (size_t)co * cin + ci;
                for (int i = 0; i < 4; i++) { /* U = t G^T (4x4) */
                    double v[4] = {t[i][0], 0.5 * (t[i][0] + t[i][1] + t[i][2]),
                                   0.5 * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
                    for (int j = 0; j < 4; j++) {
                        u[(size_t)(4 * i + j) * ue + idx] = (float)v[j];
                    }
                }
            }
        }
        k0 += kb;
    }
}

/* ---- portable transforms ------------------------------------------------ */

/* V (16 rows es apart) columns [0, tw) = B^T d B of the tiles of tile row ty
 * of one input plane xc (H, W). */
static void in_tiles_c(float *v, size_t es, const float *xc, int H, int W, int ty, int tw) {
    for (int tx = 0; tx < tw; tx++) {
        float d[4][4], r[4][4];
        for (int i = 0; i < 4; i++) {
            int y = 2 * ty - 1 + i;
            for (int j = 0; j < 4; j++) {
                int x = 2 * tx - 1 + j;
                d[i][j] = (y >= 0 && y < H && x >= 0 && x < W) ? xc[(size_t)y * W + x] : 0.0f;
            }
        }
        for (int i = 0; i < 4; i++) { /* r = d B (rows) */
            r[i][0] = d[i][0] - d[i][2];
            r[i][1] = d[i][1] + d[i][2];
            r[i][2] = d[i][2] - d[i][1];
            r[i][3] = d[i][1] - d[i][3];
        }
        for (int j = 0; j < 4; j++) { /* V = B^T r (columns) */
            v[(size_t)(0 + j) * es + tx] = r[0][j] - r[2][j];
            v[(size_t)(4 + j) * es + tx] = r[1][j] + r[2][j];
            v[(size_t)(8 + j) * es + tx] = r[2][j] - r[1][j];
            v[(size_t)(12 + j) * es + tx] = r[1][j] - r[3][j];
        }
    }
}

/* Output plane yc (H, W), tile row ty: Y = A^T m A + bias (or yc += Y),
 * m the 16 rows (es apart) of M, columns [0, tw). */
static void out_tiles_c(float *yc, const float *m, size_t es, int H, int W, int ty, int tw,
                        float bias, int accumulate) {
    for (int tx = 0; tx < tw; tx++) {
        float t[2][4];
        for (int j = 0; j < 4; j++) { /* t = A^T m */
            float m0 = m[(size_t)j * es + tx], m1 = m[(size_t)(4 + j) * es + tx];
            float m2 = m[(size_t)(8 + j) * es + tx], m3 = m[(size_t)(12 + j) * es + tx];
            t[0][j] = m0 + m1 + m2;
            t[1][j] = m1 - m2 - m3;
        }
        for (int a = 0; a < 2 && 2 * ty + a < H; a++) {
            float *row = yc + (size_t)(2 * ty + a) * W + 2 * tx;
            float y0 = t[a][0] + t[a][1] + t[a][2] + bias;
            float y1 = t[a][1] - t[a][2] - t[a][3] + bias;
            if (accumulate) {
                row[0] += y0;
                if (2 * tx + 1 < W) {
                    row[1] += y1;
                }
            } else {
                row[0] = y0;
                if (2 * tx + 1 < W) {
                    row[1] = y1;
                }
            }
        }
    }
}

/* ---- AVX-512 transforms ------------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define WINO_AVX512 __attribute__((target("avx512f")))

static WINO_AVX512 inline __mmask16 tmask(int n) {
    return (__mmask16)(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1u);
}

/* Lanes l of a 16-vector starting at column s that lie inside [0, W). */
static WINO_AVX512 inline __mmask16 colmask(int s, int W) {
    int lo = s < 0 ? -s : 0;
    int hi = W - s;
    if (hi > 16) {
        hi = 16;
    }
    if (hi <= lo) {
        return 0;
    }
    return (__mmask16)(tmask(hi) & ~tmask(lo));
}

static WINO_AVX512 inline __m512 shift1(__m512 lo, __m512 hi) {
    /* lanes t < 15: lo[t+1]; lane 15: hi[0] */
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 1));
}

/* As in_tiles_c, 16 tiles per vector: for tiles tx0+t, the columns
 * 2(tx0+t)-1+j are the even/odd lanes of 32 (+2) consecutive floats. */
static WINO_AVX512 void in_tiles_avx(float *v, size_t es, const float *xc, int H, int W, int ty,
                                     int tw) {
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int tx0 = 0; tx0 < tw; tx0 += 16) {
        int c0 = 2 * tx0 - 1;
        __mmask16 ma = colmask(c0, W), mb = colmask(c0 + 16, W);
        __mmask16 mc = (__mmask16)(colmask(c0 + 32, W) & 3u);
        __mmask16 ms = tmask(tw - tx0);
        __m512 r[4][4];
        for (int i = 0; i < 4; i++) {
            int y = 2 * ty - 1 + i;
            if (y < 0 || y >= H) {
                for (int j = 0; j < 4; j++) {
                    r[i][j] = _mm512_setzero_ps();
                }
                continue;
            }
            const float *row = xc + (size_t)y * W;
            __m512 A = _mm512_maskz_loadu_ps(ma, row + c0);
            __m512 B = _mm512_maskz_loadu_ps(mb, row + c0 + 16);
            __m512 Cc = _mm512_maskz_loadu_ps(mc, row + c0 + 32);
            __m512 d0 = _mm512_permutex2var_ps(A, ie, B);
            __m512 d1 = _mm512_permutex2var_ps(A, io, B);
            __m512 d2 = shift1(d0, Cc);
            __m512 d3 = shift1(d1, shift1(Cc, Cc));
            r[i][0] = _mm512_sub_ps(d0, d2);
            r[i][1] = _mm512_add_ps(d1, d2);
            r[i][2] = _mm512_sub_ps(d2, d1);
            r[i][3] = _mm512_sub_ps(d1, d3);
        }
        float *vt = v + tx0;
        for (int j = 0; j < 4; j++) {
            _mm512_mask_storeu_ps(vt + (size_t)(0 + j) * es, ms, _mm512_sub_ps(r[0][j], r[2][j]));
            _mm512_mask_storeu_ps(vt + (size_t)(4 + j) * es, ms, _mm512_add_ps(r[1][j], r[2][j]));
            _mm512_mask_storeu_ps(vt + (size_t)(8 + j) * es, ms, _mm512_sub_ps(r[2][j], r[1][j]));
            _mm512_mask_storeu_ps(vt + (size_t)(12 + j) * es, ms, _mm512_sub_ps(r[1][j], r[3][j]));
        }
    }
}

/* As out_tiles_c, 16 tiles per vector; the two columns of each tile are
 * interleaved back into 32 consecutive floats of an output row. */
static WINO_AVX512 void out_tiles_avx(float *yc, const float *m, size_t es, int H, int W, int ty,
                                      int tw, float bias, int accumulate) {
    const __m512i il = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ih =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512 vb = _mm512_set1_ps(bias);
    for (int tx0 = 0; tx0 < tw; tx0 += 16) {
        __mmask16 ml = tmask(tw - tx0);
        const float *mt = m + tx0;
        __m512 t[2][4];
        for (int j = 0; j < 4; j++) {
            __m512 m0 = _mm512_maskz_loadu_ps(ml, mt + (size_t)j * es);
            __m512 m1 = _mm512_maskz_loadu_ps(ml, mt + (size_t)(4 + j) * es);
            __m512 m2 = _mm512_maskz_loadu_ps(ml, mt + (size_t)(8 + j) * es);
            __m512 m3 = _mm512_maskz_loadu_ps(ml, mt + (size_t)(12 + j) * es);
            t[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            t[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        int col0 = 2 * tx0;
        int ncol = W - col0 < 2 * (tw - tx0) ? W - col0 : 2 * (tw - tx0);
        __mmask16 mlo = tmask(ncol), mhi = tmask(ncol - 16);
        for (int a = 0; a < 2 && 2 * ty + a < H; a++) {
            __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(t[a][0], t[a][1]), t[a][2]), vb);
            __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(t[a][1], t[a][2]), t[a][3]), vb);
            __m512 lo = _mm512_permutex2var_ps(y0, il, y1);
            __m512 hi = _mm512_permutex2var_ps(y0, ih, y1);
            float *row = yc + (size_t)(2 * ty + a) * W + col0;
            if (accumulate) {
                lo = _mm512_add_ps(lo, _mm512_maskz_loadu_ps(mlo, row));
                hi = _mm512_add_ps(hi, _mm512_maskz_loadu_ps(mhi, row + 16));
            }
            _mm512_mask_storeu_ps(row, mlo, lo);
            _mm512_mask_storeu_ps(row + 16, mhi, hi);
        }
    }
}
#define WINO_HAVE_AVX512 1
#else
#define WINO_HAVE_AVX512 0
#endif

static void in_tiles(float *v, size_t es, const float *xc, int H, int W, int ty, int tw,
                     int avx) {
#if WINO_HAVE_AVX512
    if (avx) {
        in_tiles_avx(v, es, xc, H, W, ty, tw);
        return;
    }
#endif
    in_tiles_c(v, es, xc, H, W, ty, tw);
}

static void out_tiles(float *yc, const float *m, size_t es, int H, int W, int ty, int tw,
                      float bias, int accumulate, int avx) {
#if WINO_HAVE_AVX512
    if (avx) {
        out_tiles_avx(yc, m, es, H, W, ty, tw, bias, accumulate);
        return;
    }
#endif
    out_tiles_c(yc, m, es, H, W, ty, tw, bias, accumulate);
}

/* ---- the convolution ---------------------------------------------------- */

void eenet_wino_conv(float *out, int accumulate, const float *inp, const float *w, int flip,
                     const float *bias, float *shared, float *slots, size_t slot_stride, int N,
                     int cin, int cout, int H, int W, int nt, int avx) {
    int th, tw, rmax, ldv;
    wino_geom(H, W, &th, &tw, &rmax, &ldv);
    avx = avx && WINO_HAVE_AVX512;
    size_t ue = (size_t)cout * cin;
    float *u = shared;
    int *off = (int *)(shared + r16(16 * ue));
    wino_weights(u, w, cout, cin, flip, avx);
    for (int c = 0; c < cin; c++) {
        off[c] = c * ldv;
    }
    /* blocks of R tile rows; their count a multiple of the threads where possible */
    long long rtot = (long long)N * th;
    long long nblk = (rtot + rmax - 1) / rmax;
    if (nt > 1) {
        nblk = (nblk + nt - 1) / nt * nt;
        if (nblk > rtot) {
            nblk = rtot;
        }
    }
    long long R = (rtot + nblk - 1) / nblk;
    nblk = (rtot + R - 1) / R;
    if (nt > nblk) {
        nt = (int)nblk;
    }
    if (nt < 1) {
        nt = 1;
    }
    if (!avx) {
        eenet_blas_set_threads(1);
    }
    size_t hw = (size_t)H * W;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *v = slots + (size_t)tid * slot_stride; /* V (16, cin, ldv) */
        float *mm = v + (size_t)16 * cin * ldv;        /* M (16, cout, ldv) */
        size_t esv = (size_t)cin * ldv, esm = (size_t)cout * ldv;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long long b = 0; b < nblk; b++) {
            long long r0 = b * R, r1 = r0 + R < rtot ? r0 + R : rtot;
            int cols = (int)(r1 - r0) * tw;
            int nq = (cols + 15) / 16;
            if (nq * 16 > cols) {
                /* GEMM tail columns: finite values, never stored */
                for (size_t row = 0; row < (size_t)16 * cin; row++) {
                    memset(v + row * ldv + cols, 0, sizeof(float) * (size_t)(nq * 16 - cols));
                }
            }
            /* V_e[c][col] for the block's tiles */
            for (int c = 0; c < cin; c++) {
                for (long long r = r0; r < r1; r++) {
                    int n = (int)(r / th), ty = (int)(r % th);
                    in_tiles(v + (size_t)c * ldv + (size_t)(r - r0) * tw, esv,
                             inp + ((size_t)n * cin + c) * hw, H, W, ty, tw, avx);
                }
            }
            /* M_e (cout, cols) = U_e (cout, cin) . V_e (cin, cols) */
            for (int e = 0; e < 16; e++) {
                if (avx) {
                    eenet_conv_direct_fwd(mm + e * esm, (size_t)ldv, v + e * esv, off,
                                          u + e * ue, cout, cin, nq);
                } else {
                    eenet_sgemm(0, 0, cout, cols, cin, 1.0f, u + e * ue, cin, v + e * esv, ldv,
                                0.0f, mm + e * esm, ldv);
                }
            }
            /* Y = A^T M A (+ bias) into the output planes */
            for (long long r = r0; r < r1; r++) {
                int n = (int)(r / th), ty = (int)(r % th);
                const float *mr = mm + (size_t)(r - r0) * tw;
                for (int k = 0; k < cout; k++) {
                    out_tiles(out + ((size_t)n * cout + k) * hw, mr + (size_t)k * ldv, esm, H, W,
                              ty, tw, bias ? bias[k] : 0.0f, accumulate, avx);
                }
            }
        }
    }
    if (!avx) {
        eenet_blas_set_threads(eenet_get_num_threads());
    }
}
