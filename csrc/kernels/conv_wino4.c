/* conv_wino4.c: Winograd F(4x4,3x3) forward convolution (3x3 kernel, stride 1,
 * padding 1) on 32-wide planes (W = 32, H a multiple of 8), 16-wide planes
 * (W = 16, H a multiple of 16) and 8x8 planes, AVX-512 only.  conv.c chooses
 * it for the forward and the data gradient (a forward of dout with the
 * flipped, transposed kernel, accumulated into dinp) of ResNet/EENet CIFAR
 * stage 1 (32x32), stage 2 (16x16) and stage 3 (8x8, data gradient only)
 * layers (wino4_pick, wino4_pick_bd); the weight gradient keeps the other
 * paths.
 *
 * For a 4x4 output tile at (4ty, 4tx), input tile d (6x6) read at rows
 * 4ty-1..4ty+4, columns 4tx-1..4tx+4 (zero outside the input), filter g (3x3),
 * with the interpolation points 0, 1, -1, 1/2, -2, inf (Toom-Cook; about
 * half the float32 rounding error of Lavin & Gray's 0, +-1, +-2, inf, whose
 * B^T has entries up to 5 and A^T up to 8, for 6 more operations per
 * 6-point input transform and 2 per output one):
 *
 *   V = B^T d B (6x6),  U = G g G^T (6x6),  Y = A^T (U (.) V) A (4x4)
 *
 *   B^T = [1 -3/2   -2  3/2   1  0]   G = [   1      0      0  ]
 *         [0  -1   1/2  5/2   1  0]       [  1/3    1/3    1/3 ]
 *         [0   1  -5/2  1/2   1  0]       [ -1/3    1/3   -1/3 ]
 *         [0  -2    -1    2   1  0]       [-16/15  -8/15  -4/15]
 *         [0  1/2   -1 -1/2   1  0]       [ 1/15  -2/15   4/15 ]
 *         [0   1  -3/2   -2 3/2  1]       [   0      0      1  ]
 *
 *   A^T = [1 1  1   1    1 0]
 *         [0 1 -1  1/2  -2 0]
 *         [0 1  1  1/4   4 0]
 *         [0 1 -1  1/8  -8 1]
 *
 * Summed over input channels, (U (.) V) is 36 GEMMs, one per element
 * e = 6i+j: M_e (cout, tiles) = U_e (cout, cin) . V_e (cin, tiles): 36
 * multiply-adds per 16 outputs per channel pair (F(2x2): 64; direct: 144).
 * U is formed in double and rounded once; the transforms run in float (the
 * error stays well within the tests' rtol 1e-4, atol 1e-5 x max|ref|: see
 * conv.c wino4_pick for the measured margin).
 *
 * Vector layout: a plane has th = H/4 tile rows of W/4 tiles and gpp =
 * H*W/256 "groups" of 16 tiles, one 16-lane vector each; group q holds the
 * tile rows q + k*gpp, k = 0 .. 64/W - 1, in lane bands of W/4 lanes.  W =
 * 32: tile rows ty and ty + th/2 (lane l < 8 is tile (q, l), lane l >= 8
 * tile (q + th/2, l - 8)); W = 16: four tile rows of 4 tiles (lane 4k + t is
 * tile (q + k*th/4, t); one group per 16x16 plane).  8x8 planes (4 tiles):
 * a group is one channel plane of 4 consecutive samples (in_group8).  A
 * sample's V/M columns are 16 per group (4 on 8x8 planes).  Input rows are loaded as 16-float vectors (two per
 * 32-wide row, one per 16-wide row), the stride-4 columns 4tx+m picked with
 * _mm512_permutex2var_ps and the rows' tile bands paired with
 * _mm512_shuffle_f32x4; the columns 4tx-1 and 4tx+4 are those of the
 * neighbouring tile, shifted in by one lane (zero at the plane's border).
 * Consecutive groups of a sample share 2 of their 6 input rows (row-
 * transformed once).  The output transform interleaves the four columns of
 * each tile back into rows (two of 32 or four of 16) with two permutex2var
 * stages, then adds bias, the added tensor and applies the ReLU (post_avx of
 * conv_winograd.c: v + add, then v < 0 ? 0 : v) in the store.
 *
 * Blocking: groups are numbered globally (n * gpp + q; n/4 on 8x8 planes); a
 * block is up to W4_GROUPS consecutive groups (16 columns each, possibly
 * spanning samples), blocks split over the threads.  Each column's GEMM sums
 * over cin in the same order whatever the block (and whatever the other
 * lanes of its vector hold), so a sample's bits do not depend on its batch nor
 * on the thread count.  Per block and thread: input transform into V (36,
 * cin, ldv), 36 GEMMs (eenet_conv_direct_fwd) into M (36, cout, ldv), output
 * transform into the output planes.
 */
#include "conv_winograd.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "conv_direct.h"
#include "eenet.h"

/* Groups of 16 tiles per block (GEMM width 16 * W4_GROUPS columns). */
#ifndef W4_GROUPS
#define W4_GROUPS 4
#endif

/* Floats between the 36 element planes of V, M (rows x ldv) or U (cout x
 * cin): one cache line more than the rows (see conv_winograd.c e_stride). */
static size_t e4_stride(int rows, int ldv) {
    return (size_t)rows * ldv + 16;
}

#define W4_LDV (16 * W4_GROUPS)

int eenet_wino4_ok(int H, int W) {
    return (W == 32 && H >= 8 && H % 8 == 0) || (W == 16 && H >= 16 && H % 16 == 0) ||
           (W == 8 && H == 8);
}

void eenet_wino4_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot) {
    (void)H, (void)W;
    /* U (36 planes of cout x cin: the same size both ways), then the GEMM
     * row offsets of cin = C (forward) or K (data gradient) channels */
    *shared = 36 * e4_stride(K, C) + eenet_round16((size_t)(C > K ? C : K));
    *slot = 36 * (e4_stride(C, W4_LDV) + e4_stride(K, W4_LDV));
}

size_t eenet_wino4_weights_floats(int cin, int cout) {
    return 36 * e4_stride(cout, cin);
}

/* The transform matrix G of the filter (6x3, conv_wino4.c header). */
static const double W4_G[6][3] = {{1, 0, 0},
                                  {1.0 / 3, 1.0 / 3, 1.0 / 3},
                                  {-1.0 / 3, 1.0 / 3, -1.0 / 3},
                                  {-16.0 / 15, -8.0 / 15, -4.0 / 15},
                                  {1.0 / 15, -2.0 / 15, 4.0 / 15},
                                  {0, 0, 1}};

/* The filter g of output channel co, input channel ci (see
 * eenet_wino4_weights). */
static inline float w4_tap(const float *w, int cout, int cin, int co, int ci, int a, int flip) {
    return flip ? w[((size_t)ci * cout + co) * 9 + (8 - a)] : w[((size_t)co * cin + ci) * 9 + a];
}

/* U_e[idx] (planes ue apart) of one channel pair, in double: t = G g (6x3),
 * U = t G^T, each sum formed left to right from its three products (the AVX
 * path below forms the same operations in the same order: the same bits). */
static void w4_pair(float *u, size_t ue, size_t idx, const float g[9]) {
    double t[6][3]; /* t = G g (6x3) */
    for (int i = 0; i < 6; i++) {
        for (int b = 0; b < 3; b++) {
            t[i][b] = W4_G[i][0] * g[b] + W4_G[i][1] * g[3 + b] + W4_G[i][2] * g[6 + b];
        }
    }
    for (int i = 0; i < 6; i++) { /* U = t G^T (6x6) */
        for (int j = 0; j < 6; j++) {
            double s = t[i][0] * W4_G[j][0] + t[i][1] * W4_G[j][1] + t[i][2] * W4_G[j][2];
            u[(size_t)(6 * i + j) * ue + idx] = (float)s;
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* w4_pair for 8 consecutive output channels (idx .. idx+7), g[a] lane l:
 * tap a of channel pair (co + l, ci); mul and add kept separate (no FMA), in
 * w4_pair's order. */
static __attribute__((target("avx512f"))) void w4_pair8(float *u, size_t ue, size_t idx,
                                                          const float g[9][8]) {
    __m512d gv[9], t[6][3];
    for (int a = 0; a < 9; a++) {
        gv[a] = _mm512_cvtps_pd(_mm256_loadu_ps(g[a]));
    }
    for (int i = 0; i < 6; i++) {
        for (int b = 0; b < 3; b++) {
            __m512d p0 = _mm512_mul_pd(_mm512_set1_pd(W4_G[i][0]), gv[b]);
            __m512d p1 = _mm512_mul_pd(_mm512_set1_pd(W4_G[i][1]), gv[3 + b]);
            __m512d p2 = _mm512_mul_pd(_mm512_set1_pd(W4_G[i][2]), gv[6 + b]);
            t[i][b] = _mm512_add_pd(_mm512_add_pd(p0, p1), p2);
        }
    }
    for (int i = 0; i < 6; i++) {
        for (int j = 0; j < 6; j++) {
            __m512d p0 = _mm512_mul_pd(t[i][0], _mm512_set1_pd(W4_G[j][0]));
            __m512d p1 = _mm512_mul_pd(t[i][1], _mm512_set1_pd(W4_G[j][1]));
            __m512d p2 = _mm512_mul_pd(t[i][2], _mm512_set1_pd(W4_G[j][2]));
            __m512d sv = _mm512_add_pd(_mm512_add_pd(p0, p1), p2);
            _mm256_storeu_ps(u + (size_t)(6 * i + j) * ue + idx, _mm512_cvtpd_ps(sv));
        }
    }
}
#define W4_HAVE_PAIR8 1
#endif

/* U_e (cout, cin) for e = 0..35 at u + e*e4_stride(cout, cin): (G g G^T)[e/6][e%6]
 * with g = w[co][ci] (flip = 0; w (cout, cin, 3, 3)) or g[a][b] =
 * w[ci][co][2-a][2-b] (flip = 1; w (cin, cout, 3, 3), the forward weight of a
 * cout -> cin layer: its data gradient), in double, rounded once; laid out as
 * the direct micro-kernel wants (blocks of kb = eenet_conv_fwd_kblock output
 * channels, [ci][kk] inside, conv_direct.h).  Runs of 8 output channels go
 * through AVX-512 where the CPU has it (bit-identical, checked against the
 * scalar loop on weights of magnitudes 1e-20..1e20; one thread, 64->64
 * 112-120 -> 45 us, 32->32 31 -> 14-17 us, 128->128 480 -> 160-170 us: U of
 * the data gradient is formed at every call, before the threads start). */
void eenet_wino4_weights(float *u, const float *w, int cout, int cin, int flip) {
    size_t ue = e4_stride(cout, cin);
#ifdef W4_HAVE_PAIR8
    const int vec = eenet_conv_direct_available();
#endif
    for (int k0 = 0; k0 < cout;) {
        int kb = eenet_conv_fwd_kblock(cout - k0);
        for (int ci = 0; ci < cin; ci++) {
            int co = k0;
#ifdef W4_HAVE_PAIR8
            for (; vec && co + 8 <= k0 + kb; co += 8) {
                float g[9][8];
                for (int a = 0; a < 9; a++) {
                    for (int l = 0; l < 8; l++) {
                        g[a][l] = w4_tap(w, cout, cin, co + l, ci, a, flip);
                    }
                }
                w4_pair8(u, ue, (size_t)k0 * cin + (size_t)ci * kb + (size_t)(co - k0), g);
            }
#endif
            for (; co < k0 + kb; co++) {
                float g[9];
                for (int a = 0; a < 9; a++) {
                    g[a] = w4_tap(w, cout, cin, co, ci, a, flip);
                }
                w4_pair(u, ue, (size_t)k0 * cin + (size_t)ci * kb + (size_t)(co - k0), g);
            }
        }
        k0 += kb;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define W4_AVX512 __attribute__((target("avx512f")))

#include "wino4_tf.h"

/* r = d B for input rows ya (lanes 0-7) and yb (lanes 8-15) of plane xc
 * (H, 32): lane l holds tile tx = l % 8, d_j its column 4tx-1+j (rows
 * outside [0, H) and columns outside [0, 32) read zero). */
static W4_AVX512 inline void row_pair(__m512 r[6], const float *xc, int H, int ya, int yb) {
    const __m512i i01 =
        _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i i23 =
        _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
    const __m512i iprev = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 8, 6, 5, 4, 3, 2, 1, 0, 0);
    const __m512i inext = _mm512_set_epi32(8, 15, 14, 13, 12, 11, 10, 9, 0, 7, 6, 5, 4, 3, 2, 1);
    const __m512 z = _mm512_setzero_ps();
    __m512 a0 = z, a1 = z, b0 = z, b1 = z;
    if (ya >= 0 && ya < H) {
        a0 = _mm512_loadu_ps(xc + (size_t)ya * 32);
        a1 = _mm512_loadu_ps(xc + (size_t)ya * 32 + 16);
    }
    if (yb >= 0 && yb < H) {
        b0 = _mm512_loadu_ps(xc + (size_t)yb * 32);
        b1 = _mm512_loadu_ps(xc + (size_t)yb * 32 + 16);
    }
    /* S01 = [row a columns 4t (t < 8), row a columns 4t+1], ... */
    __m512 sa01 = _mm512_permutex2var_ps(a0, i01, a1), sa23 = _mm512_permutex2var_ps(a0, i23, a1);
    __m512 sb01 = _mm512_permutex2var_ps(b0, i01, b1), sb23 = _mm512_permutex2var_ps(b0, i23, b1);
    /* c_m lanes 0-7: row a columns 4t+m; lanes 8-15: row b */
    __m512 c0 = _mm512_shuffle_f32x4(sa01, sb01, 0x44), c1 = _mm512_shuffle_f32x4(sa01, sb01, 0xEE);
    __m512 c2 = _mm512_shuffle_f32x4(sa23, sb23, 0x44), c3 = _mm512_shuffle_f32x4(sa23, sb23, 0xEE);
    __m512 dm = _mm512_maskz_permutexvar_ps((__mmask16)0xFEFE, iprev, c3); /* columns 4t-1 */
    __m512 dp = _mm512_maskz_permutexvar_ps((__mmask16)0x7F7F, inext, c0); /* columns 4t+4 */
    bt6(r, dm, c0, c1, c2, c3, dp);
}

/* r = x B for four 16-float vectors x[k] holding 16-float rows (W = 16: lane
 * 4k + t is tile t of row k) or pairs of 8-float rows (W = 8: x[k] = [row
 * ya, row ya+4] of sample k, lane 4k + 2h + t is tile t of half h): d_j is
 * column 4t-1+j of the tile's row (columns outside [0, W) read zero).  The
 * same column picks as row_pair, with x[0], x[1] in place of the two halves
 * of row a and x[2], x[3] in place of row b; the neighbour columns shift
 * within segments of W/4 lanes. */
static W4_AVX512 inline __attribute__((always_inline)) void quad_bt(__m512 r[6],
                                                                    const __m512 x[4],
                                                                    int W) {
    const __m512i i01 =
        _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i i23 =
        _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
    /* lane l <- l - 1 and l <- l + 1 (masked lanes: the plane's border) */
    const __m512i iprev = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
    const __m512i inext = _mm512_set_epi32(15, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
    const __mmask16 mprev = W == 16 ? (__mmask16)0xEEEE : (__mmask16)0xAAAA;
    const __mmask16 mnext = W == 16 ? (__mmask16)0x7777 : (__mmask16)0x5555;
    /* S01 = [x0, x1 columns 4t, x0, x1 columns 4t+1], ... */
    __m512 sa01 = _mm512_permutex2var_ps(x[0], i01, x[1]);
    __m512 sa23 = _mm512_permutex2var_ps(x[0], i23, x[1]);
    __m512 sb01 = _mm512_permutex2var_ps(x[2], i01, x[3]);
    __m512 sb23 = _mm512_permutex2var_ps(x[2], i23, x[3]);
    /* c_m lane 4k+i: x[k]'s tile i, column 4t+m */
    __m512 c0 = _mm512_shuffle_f32x4(sa01, sb01, 0x44), c1 = _mm512_shuffle_f32x4(sa01, sb01, 0xEE);
    __m512 c2 = _mm512_shuffle_f32x4(sa23, sb23, 0x44), c3 = _mm512_shuffle_f32x4(sa23, sb23, 0xEE);
    __m512 dm = _mm512_maskz_permutexvar_ps(mprev, iprev, c3); /* columns 4t-1 */
    __m512 dp = _mm512_maskz_permutexvar_ps(mnext, inext, c0); /* columns 4t+4 */
    bt6(r, dm, c0, c1, c2, c3, dp);
}

/* r = d B for the input rows ya + k*step, k = 0..3, of plane xc (H, 16):
 * lane 4k + t holds tile tx = t of row ya + k*step (rows outside [0, H)
 * read zero). */
static W4_AVX512 inline void row_quad(__m512 r[6], const float *xc, int H, int ya, int step) {
    const __m512 z = _mm512_setzero_ps();
    __m512 x[4];
    for (int k = 0; k < 4; k++) {
        int y = ya + k * step;
        x[k] = y >= 0 && y < H ? _mm512_loadu_ps(xc + (size_t)y * 16) : z;
    }
    quad_bt(r, x, 16);
}

/* V_e columns [0, 16*ng) (planes es apart) for groups q0 .. q0+ng-1 of one
 * input plane xc (H, W), W = 32 or 16 (a constant where inlined); gpp =
 * H*W/256 groups per plane: lane band k (8 lanes for W = 32, 4 for 16) of
 * group q holds the tiles of tile row q + k*gpp. */
static W4_AVX512 inline __attribute__((always_inline)) void
in_groups_w(float *v, size_t es, const float *xc, int H, int W, int q0, int ng) {
    const int gpp = H * W / 256;
    __m512 r[6][6];
    for (int g = 0; g < ng; g++) {
        int q = q0 + g;
        for (int i = g == 0 ? 0 : 2; i < 6; i++) {
            int ya = 4 * q - 1 + i;
            if (W == 32) {
                row_pair(r[i], xc, H, ya, ya + 4 * gpp);
            } else {
                row_quad(r[i], xc, H, ya, 4 * gpp);
            }
        }
        float *vg = v + 16 * (size_t)g;
        for (int j = 0; j < 6; j++) {
            __m512 o[6];
            bt6(o, r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j]);
            for (int i = 0; i < 6; i++) {
                _mm512_storeu_ps(vg + (size_t)(6 * i + j) * es, o[i]);
            }
        }
        for (int j = 0; j < 6; j++) {
            r[0][j] = r[4][j];
            r[1][j] = r[5][j];
        }
    }
}

static W4_AVX512 void in_groups(float *v, size_t es, const float *xc, int H, int W, int q0,
                                int ng) {
    if (W == 32) {
        in_groups_w(v, es, xc, H, 32, q0, ng);
    } else {
        in_groups_w(v, es, xc, H, 16, q0, ng);
    }
}

/* Output plane yc (H, W), W = 32 or 16, groups q0 .. q0+ng-1 (layout of
 * in_groups) from M columns [0, 16*ng) (36 planes es apart): yc = post(A^T m
 * A + bias), post(y) = relu?(y + ac) (ac: the added plane, NULL: none), as
 * post_avx in conv_winograd.c. */
static W4_AVX512 void out_groups(float *yc, const float *m, size_t es, int H, int W, int q0,
                                 int ng, float bias, const float *ac, int relu) {
    const __m512i il = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ih =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512i j0 = _mm512_set_epi32(23, 22, 7, 6, 21, 20, 5, 4, 19, 18, 3, 2, 17, 16, 1, 0);
    const __m512i j1 =
        _mm512_set_epi32(31, 30, 15, 14, 29, 28, 13, 12, 27, 26, 11, 10, 25, 24, 9, 8);
    const __m512 vb = _mm512_set1_ps(bias), z = _mm512_setzero_ps();
    const int gpp = H * W / 256;
    for (int g = 0; g < ng; g++) {
        int q = q0 + g;
        const float *mg = m + 16 * (size_t)g;
        __m512 t[4][6]; /* t = A^T m (4x6) */
        for (int j = 0; j < 6; j++) {
            __m512 o[4];
            at6(o, _mm512_loadu_ps(mg + (size_t)j * es), _mm512_loadu_ps(mg + (size_t)(6 + j) * es),
                _mm512_loadu_ps(mg + (size_t)(12 + j) * es),
                _mm512_loadu_ps(mg + (size_t)(18 + j) * es),
                _mm512_loadu_ps(mg + (size_t)(24 + j) * es),
                _mm512_loadu_ps(mg + (size_t)(30 + j) * es));
            for (int a = 0; a < 4; a++) {
                t[a][j] = o[a];
            }
        }
        for (int a = 0; a < 4; a++) {
            __m512 y[4]; /* y_b lane l: output column 4tx+b of tile l */
            at6(y, t[a][0], t[a][1], t[a][2], t[a][3], t[a][4], t[a][5]);
            for (int b = 0; b < 4; b++) {
                y[b] = _mm512_add_ps(y[b], vb);
            }
            /* interleave: p01 = y0[0] y1[0] y0[1] y1[1] .. (lanes 0-7), then
             * pairs of p01 / p23 into 4 consecutive columns per tile: rows[h]
             * holds lanes 4h..4h+3 of every y_b, 16 consecutive columns (W =
             * 32: half h%2 of band h/2's row; W = 16: band h's row) */
            __m512 p01l = _mm512_permutex2var_ps(y[0], il, y[1]);
            __m512 p23l = _mm512_permutex2var_ps(y[2], il, y[3]);
            __m512 p01h = _mm512_permutex2var_ps(y[0], ih, y[1]);
            __m512 p23h = _mm512_permutex2var_ps(y[2], ih, y[3]);
            __m512 rows[4] = {_mm512_permutex2var_ps(p01l, j0, p23l),
                              _mm512_permutex2var_ps(p01l, j1, p23l),
                              _mm512_permutex2var_ps(p01h, j0, p23h),
                              _mm512_permutex2var_ps(p01h, j1, p23h)};
            for (int h = 0; h < 4; h++) {
                int band = W == 32 ? h / 2 : h;
                size_t i = (size_t)(4 * (q + band * gpp) + a) * W + (W == 32 ? 16 * (h % 2) : 0);
                __m512 val = rows[h];
                if (ac) {
                    val = _mm512_add_ps(val, _mm512_loadu_ps(ac + i));
                }
                if (relu) {
                    val = _mm512_mask_mov_ps(val, _mm512_cmp_ps_mask(val, z, _CMP_LT_OQ), z);
                }
                _mm512_storeu_ps(yc + i, val);
            }
        }
    }
}

/* 8x8 planes: a group is the 4 tiles (2x2) of the same channel plane of 4
 * consecutive samples (lane 4k + 2h + t: sample n0 + k, tile row h, tile
 * column t).  V_e columns [0, 16) (planes es apart) of the group whose first
 * sample's plane is x0 (8, 8); the planes of the next samples are sstride
 * floats apart, ns of them (1..4) exist (the lanes of the others read zero). */
static W4_AVX512 void in_group8(float *vg, size_t es, const float *x0, size_t sstride, int ns) {
    const __m512 z = _mm512_setzero_ps();
    __m512 r[6][6];
    for (int i = 0; i < 6; i++) {
        /* x[k] = [row i-1, row i+3] of sample k (rows -1 and 8 read zero) */
        __m512 x[4];
        for (int k = 0; k < 4; k++) {
            const float *xk = x0 + (size_t)k * sstride;
            x[k] = z;
            if (k < ns) {
                if (i >= 1) {
                    x[k] = _mm512_maskz_loadu_ps((__mmask16)0x00FF, xk + 8 * (i - 1));
                }
                if (i <= 4) {
                    x[k] = _mm512_mask_loadu_ps(x[k], (__mmask16)0xFF00, xk + 8 * (i + 3) - 8);
                }
            }
        }
        quad_bt(r[i], x, 8);
    }
    for (int j = 0; j < 6; j++) {
        __m512 o[6];
        bt6(o, r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j]);
        for (int i = 0; i < 6; i++) {
            _mm512_storeu_ps(vg + (size_t)(6 * i + j) * es, o[i]);
        }
    }
}

/* Output planes of one channel for the group of in_group8 (first plane y0,
 * (8, 8), the next samples' sstride floats apart, ns of them stored) from M
 * columns [0, 16) (36 planes es apart): post(A^T m A + bias) as out_groups,
 * ac: the added plane of the first sample (same strides) or NULL. */
static W4_AVX512 void out_group8(float *y0, size_t sstride, int ns, const float *mg, size_t es,
                                 float bias, const float *ac, int relu) {
    const __m512i il = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ih =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    const __m512i j0 = _mm512_set_epi32(23, 22, 7, 6, 21, 20, 5, 4, 19, 18, 3, 2, 17, 16, 1, 0);
    const __m512i j1 =
        _mm512_set_epi32(31, 30, 15, 14, 29, 28, 13, 12, 27, 26, 11, 10, 25, 24, 9, 8);
    const __m512 vb = _mm512_set1_ps(bias), z = _mm512_setzero_ps();
    __m512 t[4][6]; /* t = A^T m (4x6) */
    for (int j = 0; j < 6; j++) {
        __m512 o[4];
        at6(o, _mm512_loadu_ps(mg + (size_t)j * es), _mm512_loadu_ps(mg + (size_t)(6 + j) * es),
            _mm512_loadu_ps(mg + (size_t)(12 + j) * es), _mm512_loadu_ps(mg + (size_t)(18 + j) * es),
            _mm512_loadu_ps(mg + (size_t)(24 + j) * es),
            _mm512_loadu_ps(mg + (size_t)(30 + j) * es));
        for (int a = 0; a < 4; a++) {
            t[a][j] = o[a];
        }
    }
    for (int a = 0; a < 4; a++) {
        __m512 y[4]; /* y_b lane l: output column 4t+b of lane l's tile */
        at6(y, t[a][0], t[a][1], t[a][2], t[a][3], t[a][4], t[a][5]);
        for (int b = 0; b < 4; b++) {
            y[b] = _mm512_add_ps(y[b], vb);
        }
        /* the interleave of out_groups: rows[k] holds lanes 4k..4k+3 of every
         * y_b, i.e. sample k's row a (lanes 0-7) and row 4+a (lanes 8-15) */
        __m512 p01l = _mm512_permutex2var_ps(y[0], il, y[1]);
        __m512 p23l = _mm512_permutex2var_ps(y[2], il, y[3]);
        __m512 p01h = _mm512_permutex2var_ps(y[0], ih, y[1]);
        __m512 p23h = _mm512_permutex2var_ps(y[2], ih, y[3]);
        __m512 rows[4] = {_mm512_permutex2var_ps(p01l, j0, p23l),
                          _mm512_permutex2var_ps(p01l, j1, p23l),
                          _mm512_permutex2var_ps(p01h, j0, p23h),
                          _mm512_permutex2var_ps(p01h, j1, p23h)};
        for (int k = 0; k < ns; k++) {
            /* lanes 0-7 at row a, lanes 8-15 at row 4+a (base 8 floats back) */
            size_t lo = (size_t)k * sstride + 8 * (size_t)a;
            size_t hi = (size_t)k * sstride + 8 * (size_t)(4 + a) - 8;
            __m512 val = rows[k];
            if (ac) {
                __m512 av = _mm512_maskz_loadu_ps((__mmask16)0x00FF, ac + lo);
                av = _mm512_mask_loadu_ps(av, (__mmask16)0xFF00, ac + hi);
                val = _mm512_add_ps(val, av);
            }
            if (relu) {
                val = _mm512_mask_mov_ps(val, _mm512_cmp_ps_mask(val, z, _CMP_LT_OQ), z);
            }
            _mm512_mask_storeu_ps(y0 + lo, (__mmask16)0x00FF, val);
            _mm512_mask_storeu_ps(y0 + hi, (__mmask16)0xFF00, val);
        }
    }
}

/* Groups handled together from global group gg (group q of its sample): at
 * most up to the block end g1 and the sample's last group. */
static int groups_at(long long gg, long long g1, int q, int half) {
    long long n = g1 - gg;
    if (n > half - q) {
        n = half - q;
    }
    return (int)n;
}

void eenet_wino4_conv(float *out, const float *add, int relu, const float *inp, const float *w,
                      const float *u_pre, const float *bias, float *shared, float *slots,
                      size_t slot_stride, int N, int cin, int cout, int H, int W, int nt) {
    /* groups of 16 tiles per plane (8x8 planes: 4 samples per group) */
    const int half = W == 8 ? 1 : H * W / 256;
    const size_t ue = e4_stride(cout, cin);
    int *off = (int *)(shared + 36 * ue);
    const float *u = u_pre;
    if (!u) {
        eenet_wino4_weights(shared, w, cout, cin, 0);
        u = shared;
    }
    for (int c = 0; c < cin; c++) {
        off[c] = c * W4_LDV;
    }
    /* blocks of up to W4_GROUPS groups; their count a multiple of the threads where possible */
    const long long gtot = W == 8 ? ((long long)N + 3) / 4 : (long long)N * half;
    long long nb = (gtot + W4_GROUPS - 1) / W4_GROUPS;
    if (nt > 1) {
        nb = (nb + nt - 1) / nt * nt;
        if (nb > gtot) {
            nb = gtot;
        }
    }
    const long long R = (gtot + nb - 1) / nb;
    const long long nblk = (gtot + R - 1) / R;
    nt = eenet_threads_for(nt, nblk);
    const size_t hw = (size_t)H * W;
    const size_t esv = e4_stride(cin, W4_LDV), esm = e4_stride(cout, W4_LDV);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *v = slots + (size_t)tid * slot_stride; /* V (36, cin, ldv) */
        float *mm = v + 36 * esv;                      /* M (36, cout, ldv) */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long long b = 0; b < nblk; b++) {
            long long g0 = b * R, g1 = g0 + R < gtot ? g0 + R : gtot;
            int nq = (int)(g1 - g0);
            if (W == 8) {
                for (int c = 0; c < cin; c++) {
                    for (long long gg = g0; gg < g1; gg++) {
                        long long n0 = 4 * gg;
                        int ns = N - n0 < 4 ? (int)(N - n0) : 4;
                        in_group8(v + (size_t)c * W4_LDV + 16 * (size_t)(gg - g0), esv,
                                  inp + ((size_t)n0 * cin + c) * hw, (size_t)cin * hw, ns);
                    }
                }
            }
            for (int c = 0; c < cin && W != 8; c++) {
                for (long long gg = g0; gg < g1;) {
                    int n = (int)(gg / half), q = (int)(gg % half);
                    int ng = groups_at(gg, g1, q, half);
                    in_groups(v + (size_t)c * W4_LDV + 16 * (size_t)(gg - g0), esv,
                              inp + ((size_t)n * cin + c) * hw, H, W, q, ng);
                    gg += ng;
                }
            }
            /* M_e (cout, cols) = U_e (cout, cin) . V_e (cin, cols) */
            for (int e = 0; e < 36; e++) {
                eenet_conv_direct_fwd(mm + e * esm, (size_t)W4_LDV, v + e * esv, off, u + e * ue,
                                      cout, cin, nq);
            }
            for (long long gg = g0; gg < g1 && W == 8; gg++) {
                long long n0 = 4 * gg;
                int ns = N - n0 < 4 ? (int)(N - n0) : 4;
                const float *mg = mm + 16 * (size_t)(gg - g0);
                for (int k = 0; k < cout; k++) {
                    const size_t plane = ((size_t)n0 * cout + k) * hw;
                    out_group8(out + plane, (size_t)cout * hw, ns, mg + (size_t)k * W4_LDV, esm,
                               bias ? bias[k] : 0.0f, add ? add + plane : NULL, relu);
                }
            }
            for (long long gg = g0; gg < g1 && W != 8;) {
                int n = (int)(gg / half), q = (int)(gg % half);
                int ng = groups_at(gg, g1, q, half);
                const float *mg = mm + 16 * (size_t)(gg - g0);
                for (int k = 0; k < cout; k++) {
                    const size_t plane = ((size_t)n * cout + k) * hw;
                    out_groups(out + plane, mg + (size_t)k * W4_LDV, esm, H, W, q, ng,
                               bias ? bias[k] : 0.0f, add ? add + plane : NULL, relu);
                }
                gg += ng;
            }
        }
    }
}

#else /* no AVX-512 build: conv.c never chooses this path (no direct kernels) */

void eenet_wino4_conv(float *out, const float *add, int relu, const float *inp, const float *w,
                      const float *u_pre, const float *bias, float *shared, float *slots,
                      size_t slot_stride, int N, int cin, int cout, int H, int W, int nt) {
    (void)out, (void)add, (void)relu, (void)inp, (void)w, (void)u_pre, (void)bias;
    (void)shared, (void)slots, (void)slot_stride, (void)N, (void)cin, (void)cout, (void)H;
    (void)W, (void)nt;
}

#endif
