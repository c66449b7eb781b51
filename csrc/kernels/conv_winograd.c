/* conv_winograd.c: Winograd F(2x2,3x3) convolution (3x3 kernel, stride 1,
 * padding 1), used by conv.c for forward, backward-data and weight gradient
 * where measured faster than the direct kernels (see plan_choose in conv.c;
 * the weight gradient is at the end of this file).
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
 * GEMMs into M (16, cout, ldv), output transform (+ bias, + an added tensor,
 * ReLU) into the output; V and M stay in L2.
 *
 * AVX-512 path (caller checked the CPU): transforms vectorised over 16 tiles
 * of a tile row (deinterleaving loads with permutes; masked at the borders),
 * GEMM by the direct kernel's register-blocked micro-kernel
 * (eenet_conv_direct_fwd, 8 output channels x 48 tiles per block).
 * Portable path: scalar transforms and eenet_sgemm (OpenBLAS).
 */
#include "conv_winograd.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "conv_direct.h"
#include "eenet.h"
#include "gemm.h"

/* Target tile columns per block (GEMM width); measured on Zen 4, see conv.c. */
#ifndef WINO_COLS
#define WINO_COLS 64
#endif

/* Tile rows th, tiles per row tw, tile rows per block at most, row stride of V/M. */
static void wino_geom(int H, int W, int *th, int *tw, int *rmax, int *ldv) {
    *th = (H + 1) / 2;
    *tw = (W + 1) / 2;
    *rmax = WINO_COLS / *tw;
    if (*rmax < 1) {
        *rmax = 1;
    }
    *ldv = (int)eenet_round16((size_t)*rmax * *tw);
}

/* Floats between the 16 element planes of V (cin rows) or M (cout rows): one
 * cache line more than the rows, so that the 16 planes of a tile, read or
 * written together by the transforms, do not all map to the same L1 set
 * (cin*ldv*4 bytes is a multiple of 4 KiB for 64 channels). */
static size_t e_stride(int rows, int ldv) {
    return (size_t)rows * ldv + 16;
}

void eenet_wino_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot) {
    int th, tw, rmax, ldv;
    wino_geom(H, W, &th, &tw, &rmax, &ldv);
    *shared = 16 * e_stride(C > K ? C : K, C > K ? K : C) + eenet_round16((size_t)(C > K ? C : K));
    *slot = (size_t)16 * (e_stride(C, ldv) + e_stride(K, ldv)) +
            16 * e_stride(C > K ? C : K, C > K ? K : C);
}

/* U_e (cout, cin) for e = 0..15 at u + e*e_stride(cout, cin): (G g G^T)[e/4][e%4] for
 * g = w[co][ci] (flip = 0; w (cout, cin, 3, 3)) or g[a][b] =
 * w[ci][co][2-a][2-b] (flip = 1; w (cin, cout, 3, 3)).  packed = 1 lays each
 * U_e out as the direct micro-kernel wants (blocks of kb output channels,
 * [ci][kk] inside, conv_direct.h), else row-major (cout, cin). */
static void wino_weights(float *u, const float *w, int cout, int cin, int flip, int packed) {
    size_t ue = e_stride(cout, cin);
    for (int k0 = 0; k0 < cout;) {
        int kb = packed ? eenet_conv_fwd_kblock(cout - k0) : cout;
        for (int ci = 0; ci < cin; ci++) {
            for (int co = k0; co < k0 + kb; co++) {
                double uf[16];
                eenet_wino_filter(uf, w, cout, cin, co, ci, flip);
                size_t idx = packed ? (size_t)k0 * cin + (size_t)ci * kb + (size_t)(co - k0)
                                    : (size_t)co * cin + ci;
                for (int e = 0; e < 16; e++) {
                    u[(size_t)e * ue + idx] = (float)uf[e];
                }
            }
        }
        k0 += kb;
    }
}

/* Permutation tables of the stacked AVX-512 transforms (tw divides 16, tw < 16):
 * G = 16/tw tile rows of tw tiles fill the 16 lanes, lane g*tw + tx; their
 * input rows, 2tw columns each, are stacked in 32 floats (two registers),
 * position g*2tw + col.  e/o pick columns 2tx/2tx+1; op/en columns 2tx-1 and
 * 2tx+2 (lanes masked by mop/men read the zero padding). */
typedef struct {
    int32_t e[16], o[16], op[16], en[16];
    unsigned mop, men;
    int G, L; /* tile rows per vector, stacked row width 2tw */
} wino_idx;

static void wino_idx_init(wino_idx *ix, int tw) {
    ix->G = 16 / tw;
    ix->L = 2 * tw;
    ix->mop = ix->men = 0;
    for (int l = 0; l < 16; l++) {
        int g = l / tw, tx = l % tw, base = g * 2 * tw + 2 * tx;
        ix->e[l] = base;
        ix->o[l] = base + 1;
        ix->op[l] = tx > 0 ? base - 1 : 0;
        ix->en[l] = tx < tw - 1 ? base + 2 : 0;
        ix->mop |= (unsigned)(tx > 0) << l;
        ix->men |= (unsigned)(tx < tw - 1) << l;
    }
}

/* Tile-row blocks of a run over rtot = N * th tile rows: R rows per block (at
 * most rmax), nblk blocks, their count a multiple of the threads where
 * possible; *nt is lowered to the blocks there are (at least 1). */
static void wino_blocks(long long rtot, int rmax, int *nt, long long *R, long long *nblk) {
    long long nb = (rtot + rmax - 1) / rmax;
    if (*nt > 1) {
        nb = (nb + *nt - 1) / *nt * *nt;
        if (nb > rtot) {
            nb = rtot;
        }
    }
    *R = (rtot + nb - 1) / nb;
    *nblk = (rtot + *R - 1) / *R;
    *nt = eenet_threads_for(*nt, *nblk);
}

/* Tile rows the AVX-512 input transform handles per call (G): stacked
 * transforms where tw divides 16 (8x8 planes: 4 tile rows per vector, *pix
 * set to ix), else a sample's th tile rows (in_tiles_avx reuses input rows
 * across them); 1 on the portable path. */
static int wino_stacking(wino_idx *ix, const wino_idx **pix, int avx, int tw, int th) {
    *pix = NULL;
    if (avx && tw < 16 && 16 % tw == 0) {
        wino_idx_init(ix, tw);
        *pix = ix;
        return ix->G;
    }
    return avx ? th : 1;
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

/* Output plane yc (H, W), tile row ty: yc = post(A^T m A + bias), m the 16
 * rows (es apart) of M, columns [0, tw); post(y) = relu?(y + ac) with ac the
 * plane of the added tensor (NULL: none; yc itself to accumulate) and relu as
 * eenet_relu_forward (v < 0 ? 0 : v), so that the fused forms give the bits of
 * the conv followed by eenet_add_forward / eenet_add_relu_forward. */
static inline float out_post(float y, const float *ac, size_t i, int relu) {
    if (ac) {
        y = y + ac[i];
    }
    return relu && y < 0.0f ? 0.0f : y;
}

static void out_tiles_c(float *yc, const float *m, size_t es, int H, int W, int ty, int tw,
                        float bias, const float *ac, int relu) {
    for (int tx = 0; tx < tw; tx++) {
        float t[2][4];
        for (int j = 0; j < 4; j++) { /* t = A^T m */
            float m0 = m[(size_t)j * es + tx], m1 = m[(size_t)(4 + j) * es + tx];
            float m2 = m[(size_t)(8 + j) * es + tx], m3 = m[(size_t)(12 + j) * es + tx];
            t[0][j] = m0 + m1 + m2;
            t[1][j] = m1 - m2 - m3;
        }
        for (int a = 0; a < 2 && 2 * ty + a < H; a++) {
            size_t i = (size_t)(2 * ty + a) * W + 2 * tx;
            float y0 = t[a][0] + t[a][1] + t[a][2] + bias;
            float y1 = t[a][1] - t[a][2] - t[a][3] + bias;
            yc[i] = out_post(y0, ac, i, relu);
            if (2 * tx + 1 < W) {
                yc[i + 1] = out_post(y1, ac, i + 1, relu);
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

/* out_post on 16 lanes (mask mk of the stored ones) that go to plane index i:
 * + the added plane ac's values there (ac non-NULL), then v < 0 ? 0 : v (relu). */
static WINO_AVX512 inline __m512 post_avx(__m512 v, const float *ac, ptrdiff_t i, __mmask16 mk,
                                          int relu) {
    if (ac) {
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, ac + i));
    }
    if (relu) {
        v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ),
                               _mm512_setzero_ps());
    }
    return v;
}

static WINO_AVX512 inline __m512 shift1(__m512 lo, __m512 hi) {
    /* lanes t < 15: lo[t+1]; lane 15: hi[0] */
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 1));
}

/* As in_tiles_c for ntr tile rows ty.. (V columns tw apart per row), 16
 * tiles per vector: for tiles tx0+t, the columns 2(tx0+t)-1+j are the
 * even/odd lanes of 32 (+2) consecutive floats; each input row is loaded
 * and transformed once (rows 2, 3 of a tile row are rows 0, 1 of the next). */
static WINO_AVX512 void in_tiles_avx(float *v, size_t es, const float *xc, int H, int W, int ty,
                                     int ntr, int tw) {
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int tx0 = 0; tx0 < tw; tx0 += 16) {
        int c0 = 2 * tx0 - 1;
        __mmask16 ma = colmask(c0, W), mb = colmask(c0 + 16, W);
        __mmask16 mc = (__mmask16)(colmask(c0 + 32, W) & 3u);
        __mmask16 ms = tmask(tw - tx0);
        __m512 r[4][4];
        /* ntr tile rows ty..: rows 2, 3 of one are rows 0, 1 of the next */
        for (int q = 0; q < ntr; q++) {
            for (int i = q == 0 ? 0 : 2; i < 4; i++) {
                int y = 2 * (ty + q) - 1 + i;
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
            float *vt = v + (size_t)q * tw + tx0;
            for (int j = 0; j < 4; j++) {
                float *vj = vt + (size_t)j * es;
                _mm512_mask_storeu_ps(vj, ms, _mm512_sub_ps(r[0][j], r[2][j]));
                _mm512_mask_storeu_ps(vj + 4 * es, ms, _mm512_add_ps(r[1][j], r[2][j]));
                _mm512_mask_storeu_ps(vj + 8 * es, ms, _mm512_sub_ps(r[2][j], r[1][j]));
                _mm512_mask_storeu_ps(vj + 12 * es, ms, _mm512_sub_ps(r[1][j], r[3][j]));
                r[0][j] = r[2][j];
                r[1][j] = r[3][j];
            }
        }
    }
}

/* As out_tiles_c, 16 tiles per vector; the two columns of each tile are
 * interleaved back into 32 consecutive floats of an output row. */
static WINO_AVX512 void out_tiles_avx(float *yc, const float *m, size_t es, int H, int W, int ty,
                                      int tw, float bias, const float *ac, int relu) {
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
            size_t i = (size_t)(2 * ty + a) * W + col0;
            float *row = yc + i;
            lo = post_avx(lo, ac, (ptrdiff_t)i, mlo, relu);
            hi = post_avx(hi, ac, (ptrdiff_t)i + 16, mhi, relu);
            _mm512_mask_storeu_ps(row, mlo, lo);
            _mm512_mask_storeu_ps(row + 16, mhi, hi);
        }
    }
}
/* As in_tiles_avx for ntr <= G tile rows ty.. at once (wino_idx): each
 * input row's 2tw columns (W = 2tw or 2tw-1; the rest zero) are loaded into
 * its slot of the 32-float stack, then the four columns of every tile are
 * permuted out of it. */
static WINO_AVX512 void in_stack_avx(float *v, size_t es, const float *xc, int H, int W, int ty,
                                     int ntr, const wino_idx *ix) {
    const __m512i ie = _mm512_loadu_si512(ix->e), io = _mm512_loadu_si512(ix->o);
    const __m512i iop = _mm512_loadu_si512(ix->op), ien = _mm512_loadu_si512(ix->en);
    const __mmask16 mop = (__mmask16)ix->mop, men = (__mmask16)ix->men;
    const unsigned mw = (1u << W) - 1u;
    int L = ix->L;
    __m512 r[4][4];
    for (int i = 0; i < 4; i++) {
        /* two named registers (an indexed array would live on the stack) */
        __m512 S0 = _mm512_setzero_ps(), S1 = _mm512_setzero_ps();
        for (int g = 0; g < ntr; g++) {
            int y = 2 * (ty + g) - 1 + i;
            if (y < 0 || y >= H) {
                continue;
            }
            int p = g * L, o = p % 16;
            const float *src = xc + (size_t)y * W - o;
            if (p < 16) {
                S0 = _mm512_mask_loadu_ps(S0, (__mmask16)(mw << o), src);
            } else {
                S1 = _mm512_mask_loadu_ps(S1, (__mmask16)(mw << o), src);
            }
        }
        __m512 d0 = _mm512_maskz_permutex2var_ps(mop, S0, iop, S1);
        __m512 d1 = _mm512_permutex2var_ps(S0, ie, S1);
        __m512 d2 = _mm512_permutex2var_ps(S0, io, S1);
        __m512 d3 = _mm512_maskz_permutex2var_ps(men, S0, ien, S1);
        r[i][0] = _mm512_sub_ps(d0, d2);
        r[i][1] = _mm512_add_ps(d1, d2);
        r[i][2] = _mm512_sub_ps(d2, d1);
        r[i][3] = _mm512_sub_ps(d1, d3);
    }
    __mmask16 ms = tmask(ntr * (L / 2));
    for (int j = 0; j < 4; j++) {
        _mm512_mask_storeu_ps(v + (size_t)(0 + j) * es, ms, _mm512_sub_ps(r[0][j], r[2][j]));
        _mm512_mask_storeu_ps(v + (size_t)(4 + j) * es, ms, _mm512_add_ps(r[1][j], r[2][j]));
        _mm512_mask_storeu_ps(v + (size_t)(8 + j) * es, ms, _mm512_sub_ps(r[2][j], r[1][j]));
        _mm512_mask_storeu_ps(v + (size_t)(12 + j) * es, ms, _mm512_sub_ps(r[1][j], r[3][j]));
    }
}

/* As out_tiles_avx for ntr <= G tile rows: the interleaved pair of output
 * rows of each tile row is the stack slot g (2tw columns, W stored). */
static WINO_AVX512 void out_stack_avx(float *yc, const float *m, size_t es, int H, int W, int ty,
                                      int ntr, const wino_idx *ix, float bias, const float *ac,
                                      int relu) {
    const __m512i il = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ih =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512 vb = _mm512_set1_ps(bias);
    const unsigned mw = (1u << W) - 1u;
    int L = ix->L;
    __mmask16 ml = tmask(ntr * (L / 2));
    __m512 t[2][4];
    for (int j = 0; j < 4; j++) {
        __m512 m0 = _mm512_maskz_loadu_ps(ml, m + (size_t)j * es);
        __m512 m1 = _mm512_maskz_loadu_ps(ml, m + (size_t)(4 + j) * es);
        __m512 m2 = _mm512_maskz_loadu_ps(ml, m + (size_t)(8 + j) * es);
        __m512 m3 = _mm512_maskz_loadu_ps(ml, m + (size_t)(12 + j) * es);
        t[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        t[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    for (int a = 0; a < 2; a++) {
        __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(t[a][0], t[a][1]), t[a][2]), vb);
        __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(t[a][1], t[a][2]), t[a][3]), vb);
        __m512 S0 = _mm512_permutex2var_ps(y0, il, y1), S1 = _mm512_permutex2var_ps(y0, ih, y1);
        for (int g = 0; g < ntr; g++) {
            int oy = 2 * (ty + g) + a;
            if (oy >= H) {
                continue;
            }
            int p = g * L, o = p % 16;
            __mmask16 mk = (__mmask16)(mw << o);
            ptrdiff_t i = (ptrdiff_t)oy * W - o;
            __m512 val = post_avx(p < 16 ? S0 : S1, ac, i, mk, relu);
            _mm512_mask_storeu_ps(yc + i, mk, val);
        }
    }
}
#define WINO_HAVE_AVX512 1
#else
#define WINO_HAVE_AVX512 0
#endif

/* Input transform of ntr tile rows ty.. (V columns tw apart per row); ix
 * non-NULL: the stacked AVX-512 form (ntr <= ix->G). */
static void in_rows(float *v, size_t es, const float *xc, int H, int W, int ty, int ntr, int tw,
                    int avx, const wino_idx *ix) {
#if WINO_HAVE_AVX512
    if (ix) {
        in_stack_avx(v, es, xc, H, W, ty, ntr, ix);
        return;
    }
#endif
#if WINO_HAVE_AVX512
    if (avx) {
        in_tiles_avx(v, es, xc, H, W, ty, ntr, tw);
        return;
    }
#endif
    for (int q = 0; q < ntr; q++) {
        in_tiles_c(v + (size_t)q * tw, es, xc, H, W, ty + q, tw);
    }
}

/* Output transform of ntr tile rows ty.. (M columns tw apart per row); ac
 * and relu as in out_tiles_c. */
static void out_rows(float *yc, const float *m, size_t es, int H, int W, int ty, int ntr, int tw,
                     float bias, const float *ac, int relu, int avx, const wino_idx *ix) {
#if WINO_HAVE_AVX512
    if (ix) {
        out_stack_avx(yc, m, es, H, W, ty, ntr, ix, bias, ac, relu);
        return;
    }
#endif
    for (int q = 0; q < ntr; q++) {
#if WINO_HAVE_AVX512
        if (avx) {
            out_tiles_avx(yc, m + (size_t)q * tw, es, H, W, ty + q, tw, bias, ac, relu);
            continue;
        }
#endif
        out_tiles_c(yc, m + (size_t)q * tw, es, H, W, ty + q, tw, bias, ac, relu);
    }
}

/* ---- the convolution ---------------------------------------------------- */

/* Hint into the cache the plane rows that tile rows [r0, r1) read (input,
 * planes of nch channels: rows 2ty-1 .. 2ty+2) or write (output: rows 2ty,
 * 2ty+1), so that the transforms of the next block do not wait on memory
 * while this block's GEMMs run.  No-op without GCC/Clang. */
static void prefetch_rows(const float *base, int write, long long r0, long long r1, int th,
                          int nch, int H, int W) {
#if defined(__GNUC__)
    size_t hw = (size_t)H * W;
    for (long long r = r0; r < r1;) {
        int n = (int)(r / th), ty = (int)(r % th);
        long long seg = th - ty < r1 - r ? th - ty : r1 - r;
        int ya = write ? 2 * ty : 2 * ty - 1, yb = 2 * (ty + (int)seg) + (write ? 0 : 1);
        ya = ya < 0 ? 0 : ya;
        yb = yb > H ? H : yb;
        for (int c = 0; c < nch && yb > ya; c++) {
            const float *p = base + ((size_t)n * nch + c) * hw + (size_t)ya * W;
            size_t len = (size_t)(yb - ya) * W;
            for (size_t i = 0; i < len; i += 16) {
                if (write) {
                    __builtin_prefetch(p + i, 1, 3);
                } else {
                    __builtin_prefetch(p + i, 0, 3);
                }
            }
        }
        r += seg;
    }
#else
    (void)base, (void)write, (void)r0, (void)r1, (void)th, (void)nch, (void)H, (void)W;
#endif
}

/* Tile rows handled together from global tile row r (tile row ty of its
 * sample): at most G, not past the block end r1 nor the sample's last row. */
static int rows_at(long long r, long long r1, int ty, int th, int G) {
    long long n = G;
    if (n > r1 - r) {
        n = r1 - r;
    }
    if (n > th - ty) {
        n = th - ty;
    }
    return (int)n;
}

size_t eenet_wino_weights_floats(int cin, int cout) {
    return 16 * e_stride(cout, cin);
}

void eenet_wino_weights(float *u, const float *w, int cout, int cin, int flip, int avx) {
    wino_weights(u, w, cout, cin, flip, avx && WINO_HAVE_AVX512);
}

void eenet_wino_conv(float *out, const float *add, int relu, const float *inp, const float *w,
                     const float *u_pre, int flip, const float *bias, float *shared,
                     float *slots, size_t slot_stride, int N, int cin, int cout, int H, int W,
                     int nt, int avx) {
    int th, tw, rmax, ldv;
    wino_geom(H, W, &th, &tw, &rmax, &ldv);
    avx = avx && WINO_HAVE_AVX512;
    size_t ue = e_stride(cout, cin);
    int *off = (int *)(shared + 16 * e_stride(cin > cout ? cin : cout, cin > cout ? cout : cin));
    const float *u = u_pre;
    if (!u) {
        wino_weights(shared, w, cout, cin, flip, avx);
        u = shared;
    }
    for (int c = 0; c < cin; c++) {
        off[c] = c * ldv;
    }
    /* blocks of R tile rows; their count a multiple of the threads where possible */
    const long long rtot = (long long)N * th;
    long long R, nblk;
    wino_blocks(rtot, rmax, &nt, &R, &nblk);
    if (!avx) {
        eenet_blas_set_threads(1);
    }
    wino_idx ix;
    const wino_idx *pix = NULL;
    const int G = wino_stacking(&ix, &pix, avx, tw, th);
    size_t hw = (size_t)H * W;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *v = slots + (size_t)tid * slot_stride; /* V (16, cin, ldv), planes esv apart */
        size_t esv = e_stride(cin, ldv), esm = e_stride(cout, ldv);
        float *mm = v + 16 * esv; /* M (16, cout, ldv), planes esm apart */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long long b = 0; b < nblk; b++) {
            long long r0 = b * R, r1 = r0 + R < rtot ? r0 + R : rtot;
            int cols = (int)(r1 - r0) * tw;
            int nq = (cols + 15) / 16;
            if (nq * 16 > cols) {
                /* GEMM tail columns: finite values, never stored */
                for (int e = 0; e < 16; e++) {
                    for (int c = 0; c < cin; c++) {
                        memset(v + e * esv + (size_t)c * ldv + cols, 0,
                               sizeof(float) * (size_t)(nq * 16 - cols));
                    }
                }
            }
            /* V_e[c][col] for the block's tiles, G tile rows of a sample at a time */
            for (int c = 0; c < cin; c++) {
                for (long long r = r0; r < r1;) {
                    int n = (int)(r / th), ty = (int)(r % th);
                    int ntr = rows_at(r, r1, ty, th, G);
                    in_rows(v + (size_t)c * ldv + (size_t)(r - r0) * tw, esv,
                            inp + ((size_t)n * cin + c) * hw, H, W, ty, ntr, tw, avx, pix);
                    r += ntr;
                }
            }
            /* while the GEMMs run: this block's output rows, the next block's input */
            prefetch_rows(out, 1, r0, r1, th, cout, H, W);
            if (b + 1 < nblk) {
                long long n1 = r1 + R < rtot ? r1 + R : rtot;
                prefetch_rows(inp, 0, r1, n1, th, cin, H, W);
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
            for (long long r = r0; r < r1;) {
                int n = (int)(r / th), ty = (int)(r % th);
                int ntr = rows_at(r, r1, ty, th, G);
                const float *mr = mm + (size_t)(r - r0) * tw;
                for (int k = 0; k < cout; k++) {
                    const size_t plane = ((size_t)n * cout + k) * hw;
                    out_rows(out + plane, mr + (size_t)k * ldv, esm, H, W, ty, ntr, tw,
                             bias ? bias[k] : 0.0f, add ? add + plane : NULL, relu, avx, pix);
                }
                r += ntr;
            }
        }
    }
    if (!avx) {
        eenet_blas_set_threads(eenet_get_num_threads());
    }
}

/* ---- weight gradient ---------------------------------------------------- */

/* With Y = A^T [U (.) V] A per tile and U = G g G^T:
 *   dL/dU = sum over tiles of (A dY A^T) (.) V,   dL/dg = G^T (dL/dU) G,
 * i.e. per element e one GEMM dU_e (K, C) += D_e (K, tiles) . V_e^T, with
 * D = A dY A^T (4x4 from a tile's 2x2 output gradient; zero outside the
 * output).  D is written transposed, (tiles, K), 16 output channels per
 * vector (gathered from the K planes), so the GEMM keeps K in the lanes
 * and sums over all the block's tiles in registers. */

/* Dt (16 planes es apart, rows K floats apart) rows [0, tw) of tile row ty:
 * A dY A^T of output-gradient planes dyn (K, H, W); scalar. */
static void dy_tiles_c(float *dt, size_t es, const float *dyn, int K, int H, int W, int ty,
                       int tw) {
    size_t hw = (size_t)H * W;
    for (int tx = 0; tx < tw; tx++) {
        int y0 = 2 * ty, x0 = 2 * tx;
        int hasx = x0 + 1 < W, hasy = y0 + 1 < H;
        for (int k = 0; k < K; k++) {
            const float *p = dyn + (size_t)k * hw + (size_t)y0 * W + x0;
            float d00 = p[0], d01 = hasx ? p[1] : 0.0f;
            float d10 = hasy ? p[W] : 0.0f, d11 = hasx && hasy ? p[W + 1] : 0.0f;
            /* T = A dY (4x2), then T A^T (4x4) */
            float t[4][2] = {{d00, d01}, {d00 + d10, d01 + d11}, {d00 - d10, d01 - d11},
                             {-d10, -d11}};
            for (int i = 0; i < 4; i++) {
                float *o = dt + (size_t)tx * K + k;
                o[(size_t)(4 * i + 0) * es] = t[i][0];
                o[(size_t)(4 * i + 1) * es] = t[i][0] + t[i][1];
                o[(size_t)(4 * i + 2) * es] = t[i][0] - t[i][1];
                o[(size_t)(4 * i + 3) * es] = -t[i][1];
            }
        }
    }
}

#if WINO_HAVE_AVX512
/* As dy_tiles_c, 16 output channels per vector (K a multiple of 16). */
static WINO_AVX512 void dy_tiles_avx(float *dt, size_t es, const float *dyn, int K, int H, int W,
                                     int ty, int tw) {
    int hw = H * W;
    const __m512i vi = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(hw));
    const __m512 z = _mm512_setzero_ps();
    for (int tx = 0; tx < tw; tx++) {
        int y0 = 2 * ty, x0 = 2 * tx;
        int hasx = x0 + 1 < W, hasy = y0 + 1 < H;
        for (int k0 = 0; k0 < K; k0 += 16) {
            const float *p = dyn + (size_t)k0 * hw + (size_t)y0 * W + x0;
            __m512 d00 = _mm512_i32gather_ps(vi, p, 4);
            __m512 d01 = hasx ? _mm512_i32gather_ps(vi, p + 1, 4) : z;
            __m512 d10 = hasy ? _mm512_i32gather_ps(vi, p + W, 4) : z;
            __m512 d11 = hasx && hasy ? _mm512_i32gather_ps(vi, p + W + 1, 4) : z;
            __m512 t[4][2] = {{d00, d01},
                              {_mm512_add_ps(d00, d10), _mm512_add_ps(d01, d11)},
                              {_mm512_sub_ps(d00, d10), _mm512_sub_ps(d01, d11)},
                              {_mm512_sub_ps(z, d10), _mm512_sub_ps(z, d11)}};
            float *o = dt + (size_t)tx * K + k0;
            for (int i = 0; i < 4; i++) {
                _mm512_storeu_ps(o + (size_t)(4 * i + 0) * es, t[i][0]);
                _mm512_storeu_ps(o + (size_t)(4 * i + 1) * es, _mm512_add_ps(t[i][0], t[i][1]));
                _mm512_storeu_ps(o + (size_t)(4 * i + 2) * es, _mm512_sub_ps(t[i][0], t[i][1]));
                _mm512_storeu_ps(o + (size_t)(4 * i + 3) * es, _mm512_sub_ps(z, t[i][1]));
            }
        }
    }
}

/* du (C, K) += sum_{t < cols} v[c*ldv + t] * dt[t*K + k] for channels
 * [c0, c0+TB), KV vectors of K; accumulators in registers over all t. */
#define DEFINE_WBW(KV, TB)                                                                 \
    static WINO_AVX512 void wbw_##KV##x##TB(float *du, int K, const float *dt,            \
                                             const float *v, int ldv, int cols) {          \
        __m512 acc[TB][KV];                                                                \
        for (int a = 0; a < TB; a++) {                                                     \
            for (int b = 0; b < KV; b++) {                                                 \
                acc[a][b] = _mm512_setzero_ps();                                           \
            }                                                                              \
        }                                                                                  \
        for (int t = 0; t < cols; t++) {                                                   \
            __m512 d[KV];                                                                  \
            for (int b = 0; b < KV; b++) {                                                 \
                d[b] = _mm512_loadu_ps(dt + (size_t)t * K + 16 * b);                       \
            }                                                                              \
            for (int a = 0; a < TB; a++) {                                                 \
                __m512 x = _mm512_set1_ps(v[(size_t)a * ldv + t]);                         \
                for (int b = 0; b < KV; b++) {                                             \
                    acc[a][b] = _mm512_fmadd_ps(x, d[b], acc[a][b]);                       \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (int a = 0; a < TB; a++) {                                                     \
            for (int b = 0; b < KV; b++) {                                                 \
                float *o = du + (size_t)a * K + 16 * b;                                    \
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[a][b]));        \
            }                                                                              \
        }                                                                                  \
    }

DEFINE_WBW(4, 6)
DEFINE_WBW(4, 1)
DEFINE_WBW(3, 8)
DEFINE_WBW(3, 1)
DEFINE_WBW(2, 12)
DEFINE_WBW(2, 1)
DEFINE_WBW(1, 24)
DEFINE_WBW(1, 1)

/* du (C, K) += V (C, cols; rows ldv) . Dt (cols, K), K in 16..64 a multiple of 16:
 * blocks of tb input channels with the kv = K/16 register tile, then one
 * channel at a time. */
typedef void (*wbw_kernel)(float *du, int K, const float *dt, const float *v, int ldv,
                           int cols);

static WINO_AVX512 void wbw_gemm(float *du, const float *v, int ldv, const float *dt, int C,
                                 int K, int cols) {
    static const wbw_kernel block[4] = {wbw_1x24, wbw_2x12, wbw_3x8, wbw_4x6};
    static const wbw_kernel single[4] = {wbw_1x1, wbw_2x1, wbw_3x1, wbw_4x1};
    static const int block_rows[4] = {24, 12, 8, 6};
    const int kv = K / 16, tb = block_rows[kv - 1];
    int c = 0;
    for (; c + tb <= C; c += tb) {
        block[kv - 1](du + (size_t)c * K, K, dt, v + (size_t)c * ldv, ldv, cols);
    }
    for (; c < C; c++) {
        single[kv - 1](du + (size_t)c * K, K, dt, v + (size_t)c * ldv, ldv, cols);
    }
}
#endif

int eenet_wino_dw_ok(int C, int K, int avx) {
    (void)C;
    return avx ? (WINO_HAVE_AVX512 && K % 16 == 0 && K >= 16 && K <= 64) : 1;
}

void eenet_wino_dw(float *dw, const float *dout, const float *inp, float *slots,
                   size_t slot_stride, int N, int C, int K, int H, int W, int nt, int avx) {
    int th, tw, rmax, ldv;
    wino_geom(H, W, &th, &tw, &rmax, &ldv);
    avx = avx && WINO_HAVE_AVX512;
    const long long rtot = (long long)N * th;
    long long R, nblk;
    wino_blocks(rtot, rmax, &nt, &R, &nblk);
    if (!avx) {
        eenet_blas_set_threads(1);
    }
    wino_idx ix;
    const wino_idx *pix = NULL;
    const int G = wino_stacking(&ix, &pix, avx, tw, th);
    size_t hw = (size_t)H * W;
    size_t esv = e_stride(C, ldv), esd = e_stride(K, ldv), esu = e_stride(K, C);
    /* each thread's dU partial: 16 planes (C, K) (K contiguous) */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *v = slots + (size_t)tid * slot_stride; /* V (16, C, ldv) */
        float *dt = v + 16 * esv;                      /* Dt (16, ldv, K) */
        float *du = dt + 16 * esd;                     /* dU (16, C, K) */
        int team = 1; /* threads that really run (and zeroed their partials) */
#ifdef _OPENMP
        team = omp_get_num_threads();
#endif
        for (int e = 0; e < 16; e++) {
            memset(du + e * esu, 0, sizeof(float) * (size_t)C * K);
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long long b = 0; b < nblk; b++) {
            long long r0 = b * R, r1 = r0 + R < rtot ? r0 + R : rtot;
            int cols = (int)(r1 - r0) * tw;
            for (int c = 0; c < C; c++) {
                for (long long r = r0; r < r1;) {
                    int n = (int)(r / th), ty = (int)(r % th);
                    int ntr = rows_at(r, r1, ty, th, G);
                    in_rows(v + (size_t)c * ldv + (size_t)(r - r0) * tw, esv,
                            inp + ((size_t)n * C + c) * hw, H, W, ty, ntr, tw, avx, pix);
                    r += ntr;
                }
            }
            for (long long r = r0; r < r1; r++) {
                int n = (int)(r / th), ty = (int)(r % th);
                float *d = dt + (size_t)(r - r0) * tw * K;
                const float *dyn = dout + (size_t)n * K * hw;
#if WINO_HAVE_AVX512
                if (avx) {
                    dy_tiles_avx(d, esd, dyn, K, H, W, ty, tw);
                    continue;
                }
#endif
                dy_tiles_c(d, esd, dyn, K, H, W, ty, tw);
            }
            for (int e = 0; e < 16; e++) {
#if WINO_HAVE_AVX512
                if (avx) {
                    wbw_gemm(du + e * esu, v + e * esv, ldv, dt + e * esd, C, K, cols);
                    continue;
                }
#endif
                /* dU_e (C, K) += V_e (C, cols) . Dt_e (cols, K) */
                eenet_sgemm(0, 0, C, K, cols, 1.0f, v + e * esv, ldv, dt + e * esd, K, 1.0f,
                            du + e * esu, K);
            }
        }
        /* dw[k][c] += G^T (sum over threads of dU[.][c][k]) G */
#ifdef _OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
        for (int kc = 0; kc < K * C; kc++) {
            int k = kc / C, c = kc % C;
            double P[4][4];
            for (int e = 0; e < 16; e++) {
                double acc = 0.0;
                for (int q = 0; q < team; q++) {
                    const float *duq = slots + (size_t)q * slot_stride + 16 * esv + 16 * esd;
                    acc += duq[e * esu + (size_t)c * K + k];
                }
                P[e / 4][e % 4] = acc;
            }
            double t[3][4]; /* G^T P */
            for (int j = 0; j < 4; j++) {
                t[0][j] = P[0][j] + 0.5 * (P[1][j] + P[2][j]);
                t[1][j] = 0.5 * (P[1][j] - P[2][j]);
                t[2][j] = 0.5 * (P[1][j] + P[2][j]) + P[3][j];
            }
            float *o = dw + (size_t)kc * 9;
            for (int a = 0; a < 3; a++) { /* (G^T P) G */
                o[a * 3 + 0] += (float)(t[a][0] + 0.5 * (t[a][1] + t[a][2]));
                o[a * 3 + 1] += (float)(0.5 * (t[a][1] - t[a][2]));
                o[a * 3 + 2] += (float)(0.5 * (t[a][1] + t[a][2]) + t[a][3]);
            }
        }
    }
    if (!avx) {
        eenet_blas_set_threads(eenet_get_num_threads());
    }
}
