/* conv_tl4.c: Winograd F(4x4,3x3), 3x3 stride-1 pad-1, C -> K <= 16 channels
 * on planes of 13..16 rows and columns (4x4 tiles of 4x4 outputs: EENet-8
 * f=4's 8->8 14x14), forward (or += for backward-data) and weight gradient,
 * AVX-512, one sample at a time with the sample's 16 TILES in the 16 lanes of
 * a zmm (lane 4*ty + tx = tile (ty, tx)); conv.c chooses it (tl4_pick).
 *
 * Transforms and interpolation points {0, 1, -1, 1/2, -2, inf} as
 * conv_wino4.c / conv_wl4.c (bt6, at6 of wino4_tf.h): for tile (ty, tx) the
 * input tile d (6x6) is read at rows 4ty-1..4ty+4, columns 4tx-1..4tx+4 (zero
 * outside the plane), V = B^T d B, U = G g G^T (6x6, in double, rounded
 * once), Y = A^T (sum_c U_c[k] V_c) A (4x4; outputs outside the plane are
 * dropped).  16 tiles x 36 = 576 products per channel pair on a 14x14 plane
 * (direct: 196 x 9 = 1764).
 *
 * Per sample (x86-64 AVX-512), in the thread's slot:
 *   input: for each channel, the plane rows 4ty + i - 1 (ty = 0..3) of tile
 *       row element i are loaded as vectors over the columns (masked, zero
 *       outside the plane) and permuted into tiles (rows_to_tiles: four
 *       two-source permutes, four 128-bit shuffles), giving elements j = 1..4
 *       of the 16 tiles; j = 0, 5 and i = 4, 5 are lane moves of those (see
 *       input_transform).  No padded copy of the plane is made;
 *   v (36, C, 16) = V_e of channel c (lanes: tiles);
 *   m (36, K, 16) = M_e[k] = sum_{c = 0..C-1, in order} U_e[c][k] V_e[c] (U
 *       from u (36, C, K), broadcast);
 *   output: Y_{a,b} (16 tiles) turned back into plane rows (tiles_to_rows),
 *       stored with the bias or added to the old output (accumulate).
 * Measured on 8->8 14x14 forward at batch 128, 1 thread: the first version,
 * which split the padded plane by phase into a buffer (one load, two
 * permutes and eight 4-float stores per row), ran at 128 GFLOP/s
 * (eenet._core calls, CPU time, best of 15), loading the rows with lane
 * moves at 148; in a C harness (buffers allocated once, best of 400) 149,
 * 161 with the 14x14 sizes known to the compiler (tl4_sample_8814), 173
 * with the permute form of the transposes (8 instead of 16 shuffles per 4
 * rows: 4x4 unpack/shuffle pairs before).
 * Every sample goes through the same operations whatever its batch, thread
 * count or position, so a sample's bits do not depend on them.
 *
 * Weight gradient (eenet_tl4_dw): dU_e[k][c] = sum over samples and tiles of
 * D_e[k] V_e[c] with D = A dY A^T (6x6 from the 4x4 dout tile, zero outside
 * the plane; dY gathered from the dout rows by the inverse transposes), V as
 * above; dw[k][c] += G^T dU[k][c] G; dbias[k] += the sum of D_7[k] (each
 * tile's sum) over samples and tiles.  Per thread, dU is kept lane-wise (36,
 * K, C, 16 tiles): for each element e the products of a block of TL4_NB
 * samples are summed in registers onto it (4 output x 4 input channels per
 * register block for 8 -> 8: 8 loads per 16 products; eenet._core calls,
 * CPU time, batch 128: blocks of 2 x 8 with 4 samples 108-111 GFLOP/s, 4 x 4
 * with 8 samples 119-122; C harness 138-139, with 16 samples 140-142: not
 * kept, twice the buffers); a thread's first block sets its dU (no memset).
 * At the end each thread sums its partial over the 16 lanes (16 sums at a
 * time, hsum16), the threads' sums are added in thread order, and G^T dU G
 * is formed in double (rounded once into dw); dbias's lane-wise partials
 * are added in thread order, then over the lanes.  Fixed cost per call
 * (8->8 14x14, C harness): 7.6 -> 6.3 us with the two.
 */
#include "conv_winograd.h"

#include <string.h>

#include "eenet.h"

#define TL4_NB 8  /* samples per weight-gradient block */

int eenet_tl4_ok(int C, int K, int H, int W) {
    return C >= 1 && C <= 16 && K >= 1 && K <= 16 && H > 12 && H <= 16 && W > 12 && W <= 16;
}

/* Forward slot: s (C * 640), v (36 C 16), m (36 K 16).  Weight-gradient slot:
 * s, the block's v (TL4_NB, 36, C, 16) and d (TL4_NB, 36, K, 16), the
 * lane-wise dU partial (36, K, C, 16), the dbias partial (K, 16). */
void eenet_tl4_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot) {
    (void)H, (void)W;
    size_t fwd = 36 * 16 * ((size_t)C + K);
    size_t dw = (size_t)TL4_NB * 36 * 16 * ((size_t)C + K) +
                36 * 16 * (size_t)K * C + 16 * (size_t)K;
    *shared = eenet_round16(36 * (size_t)C * K); /* U, or the reduced dU */
    *slot = eenet_round16(fwd > dw ? fwd : dw);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* G (6x3) of the points 0, 1, -1, 1/2, -2, inf (conv_wino4.c). */
static const double tl4_G[6][3] = {{1, 0, 0},
                                   {1.0 / 3, 1.0 / 3, 1.0 / 3},
                                   {-1.0 / 3, 1.0 / 3, -1.0 / 3},
                                   {-16.0 / 15, -8.0 / 15, -4.0 / 15},
                                   {1.0 / 15, -2.0 / 15, 4.0 / 15},
                                   {0, 0, 1}};

#define TL4_AVX512 __attribute__((target("avx512f")))
#define TL4_INLINE static TL4_AVX512 inline __attribute__((always_inline))

/* bt6 (x B) and at6 (A^T x), shared with conv_wino4.c */
#include "wino4_tf.h"

/* u (36, cin, cout): u[(e cin + ci) cout + co] = (G g G^T)[e/6][e%6] with
 * g = w[co][ci] (flip = 0; w (cout, cin, 3, 3)) or g[a][b] =
 * w[ci][co][2-a][2-b] (flip = 1; w (cin, cout, 3, 3): backward-data), in
 * double, rounded once (the same values as eenet_wl4_weights): 8 output
 * channels at a time in AVX-512 double, the products and sums in the order of
 * the plain statement (#else branch), so the same bits.  Measured (8->8
 * 14x14, C harness, one thread, best of 400x5): forward at batch 1 4.2 ->
 * 2.9 us (scalar double before; the q-space direct path it replaced: 4.0
 * us), backward-data 3.0 us (q-space 5.6); batch 128 unchanged (166 us). */
static TL4_AVX512 void tl4_weights_range(float *u, const float *w, int cout, int cin, int flip,
                                         int ci0, int ci1) {
    const size_t P = (size_t)cin * cout;
    for (int ci = ci0; ci < ci1; ci++) {
        for (int co0 = 0; co0 < cout; co0 += 8) {
            const int nl = cout - co0 < 8 ? cout - co0 : 8;
            double gt[9][8];
            for (int l = 0; l < 8; l++) {
                const int co = co0 + (l < nl ? l : 0);
                for (int ab = 0; ab < 9; ab++) {
                    gt[ab][l] = flip ? w[((size_t)ci * cout + co) * 9 + 8 - ab]
                                     : w[((size_t)co * cin + ci) * 9 + ab];
                }
            }
            __m512d g[9], t[6][3];
            for (int ab = 0; ab < 9; ab++) {
                g[ab] = _mm512_loadu_pd(gt[ab]);
            }
            for (int i = 0; i < 6; i++) {
                for (int b = 0; b < 3; b++) {
                    t[i][b] = _mm512_add_pd(
                        _mm512_add_pd(_mm512_mul_pd(_mm512_set1_pd(tl4_G[i][0]), g[b]),
                                      _mm512_mul_pd(_mm512_set1_pd(tl4_G[i][1]), g[3 + b])),
                        _mm512_mul_pd(_mm512_set1_pd(tl4_G[i][2]), g[6 + b]));
                }
            }
            const __mmask16 mk = (__mmask16)((1u << nl) - 1u);
            for (int i = 0; i < 6; i++) {
                for (int j = 0; j < 6; j++) {
                    __m512d sum = _mm512_add_pd(
                        _mm512_add_pd(_mm512_mul_pd(_mm512_set1_pd(tl4_G[j][0]), t[i][0]),
                                      _mm512_mul_pd(_mm512_set1_pd(tl4_G[j][1]), t[i][1])),
                        _mm512_mul_pd(_mm512_set1_pd(tl4_G[j][2]), t[i][2]));
                    _mm512_mask_storeu_ps(u + (size_t)(6 * i + j) * P + (size_t)ci * cout + co0, mk,
                                          _mm512_castps256_ps512(_mm512_cvtpd_ps(sum)));
                }
            }
        }
    }
}

TL4_AVX512 void eenet_tl4_weights(float *u, const float *w, int cout, int cin, int flip) {
    tl4_weights_range(u, w, cout, cin, flip, 0, cin);
}

/* Plane rows to tiles: t[ty] lane 4tx + jj (row ty of a tile row's 4 rows)
 * -> t[jj] lane 4ty + tx (element jj of the 16 tiles), by 4 two-source
 * permutes (rows 2p, 2p+1: elements 0, 1 and 2, 3 in 4-lane groups) and 4
 * shuffles of 128-bit lanes. */
TL4_INLINE void rows_to_tiles(__m512 t[4]) {
    const __m512i ia = _mm512_set_epi32(29, 25, 21, 17, 28, 24, 20, 16, 13, 9, 5, 1, 12, 8, 4, 0);
    const __m512i ib = _mm512_set_epi32(31, 27, 23, 19, 30, 26, 22, 18, 15, 11, 7, 3, 14, 10, 6, 2);
    __m512 a01 = _mm512_permutex2var_ps(t[0], ia, t[1]), b01 = _mm512_permutex2var_ps(t[0], ib, t[1]);
    __m512 a23 = _mm512_permutex2var_ps(t[2], ia, t[3]), b23 = _mm512_permutex2var_ps(t[2], ib, t[3]);
    t[0] = _mm512_shuffle_f32x4(a01, a23, 0x88);
    t[1] = _mm512_shuffle_f32x4(a01, a23, 0xDD);
    t[2] = _mm512_shuffle_f32x4(b01, b23, 0x88);
    t[3] = _mm512_shuffle_f32x4(b01, b23, 0xDD);
}

/* The inverse: t[b] lane 4ty + tx -> t[ty] lane 4tx + b. */
TL4_INLINE void tiles_to_rows(__m512 t[4]) {
    const __m512i r0 = _mm512_set_epi32(27, 19, 11, 3, 26, 18, 10, 2, 25, 17, 9, 1, 24, 16, 8, 0);
    const __m512i r1 = _mm512_set_epi32(31, 23, 15, 7, 30, 22, 14, 6, 29, 21, 13, 5, 28, 20, 12, 4);
    __m512 a01 = _mm512_shuffle_f32x4(t[0], t[1], 0x44), b01 = _mm512_shuffle_f32x4(t[2], t[3], 0x44);
    __m512 a23 = _mm512_shuffle_f32x4(t[0], t[1], 0xEE), b23 = _mm512_shuffle_f32x4(t[2], t[3], 0xEE);
    t[0] = _mm512_permutex2var_ps(a01, r0, b01);
    t[1] = _mm512_permutex2var_ps(a01, r1, b01);
    t[2] = _mm512_permutex2var_ps(a23, r0, b23);
    t[3] = _mm512_permutex2var_ps(a23, r1, b23);
}

/* Lane mask of the first n (0..16) lanes. */
TL4_INLINE __mmask16 first_lanes(int n) {
    return (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1u);
}

/* v (36 elements, stride vs floats) = V_e = (B^T d B)[e/6][e%6] of the 16
 * tiles of one input channel x (H, W).  Tile element (i, j) of tile (ty, tx)
 * is P[4ty + i][4tx + j] = x[4ty + i - 1][4tx + j - 1] (zero outside x):
 * for i = 0..3 the rows 4ty + i - 1 (ty = 0..3) are loaded as vectors over
 * the columns and permuted (rows_to_tiles) to t[jj] lane 4ty + tx = x[4ty + i - 1][4tx + jj], i.e. elements j = 1..4;
 * j = 0 and 5 are t[3] and t[0] moved by one tile column (zero at the plane's
 * edge).  Rows i = 4, 5 are rows 0, 1 of the tile row below (lanes + 4; zero
 * below the plane), so after the row transform (lane-wise, linear) they are
 * rows 0, 1 moved by 4 lanes (i = 4 with H = 16 reads its own rows: x row
 * 15 exists). */
TL4_INLINE void input_transform(float *v, size_t vs, const float *x, int H, int W) {
    const __mmask16 mw = first_lanes(W);
    const __m512i zero = _mm512_setzero_si512();
    __m512 r[6][6];
    const int nrows = H == 16 ? 5 : 4;
    for (int i = 0; i < nrows; i++) {
        __m512 t[4];
        for (int ty = 0; ty < 4; ty++) {
            int y = 4 * ty + i - 1;
            t[ty] = (y >= 0 && y < H) ? _mm512_maskz_loadu_ps(mw, x + (size_t)y * W)
                                      : _mm512_setzero_ps();
        }
        rows_to_tiles(t);
        __m512 x0 = _mm512_maskz_permute_ps((__mmask16)0xEEEE, t[3], _MM_SHUFFLE(2, 1, 0, 0));
        __m512 x5 = _mm512_maskz_permute_ps((__mmask16)0x7777, t[0], _MM_SHUFFLE(3, 3, 2, 1));
        bt6(r[i], x0, t[0], t[1], t[2], t[3], x5); /* rows: d B */
    }
    for (int j = 0; j < 6; j++) {
        if (nrows == 4) {
            r[4][j] = _mm512_castsi512_ps(
                _mm512_alignr_epi32(zero, _mm512_castps_si512(r[0][j]), 4));
        }
        r[5][j] = _mm512_castsi512_ps(_mm512_alignr_epi32(zero, _mm512_castps_si512(r[1][j]), 4));
    }
    for (int j = 0; j < 6; j++) { /* columns: B^T (.) */
        __m512 o[6];
        bt6(o, r[0][j], r[1][j], r[2][j], r[3][j], r[4][j], r[5][j]);
        for (int i = 0; i < 6; i++) {
            _mm512_storeu_ps(v + (size_t)(6 * i + j) * vs, o[i]);
        }
    }
}

/* One sample, C -> K (compile-time constants where specialised):
 * out (K, H, W) = conv + bias, or += conv (accumulate). */
TL4_INLINE void tl4_sample(float *out, int accumulate, const float *x, const float *u,
                           const float *bias, float *slot, int C, int K, int H, int W) {
    float *v = slot, *m = v + (size_t)36 * C * 16;
    const int hw = H * W;
    for (int c = 0; c < C; c++) {
        input_transform(v + (size_t)c * 16, (size_t)C * 16, x + (size_t)c * hw, H, W);
    }
    /* m[e][k] = sum_c u[e][c][k] v[e][c], c in order from zero */
    for (int e = 0; e < 36; e++) {
        __m512 acc[16];
        for (int k = 0; k < K; k++) {
            acc[k] = _mm512_setzero_ps();
        }
        const float *ue = u + (size_t)e * C * K;
        const float *ve = v + (size_t)e * C * 16;
        for (int c = 0; c < C; c++) {
            __m512 vc = _mm512_loadu_ps(ve + 16 * c);
            for (int k = 0; k < K; k++) {
                acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(ue[c * K + k]), vc, acc[k]);
            }
        }
        for (int k = 0; k < K; k++) {
            _mm512_storeu_ps(m + ((size_t)e * K + k) * 16, acc[k]);
        }
    }
    /* Y = A^T M A per output channel, then plane rows 4ty + a */
    const __mmask16 mw = first_lanes(W);
    for (int k = 0; k < K; k++) {
        const float *mk = m + (size_t)k * 16;
        const size_t es = (size_t)K * 16;
        __m512 sa[4][6];
        for (int j = 0; j < 6; j++) {
            __m512 o[4];
            at6(o, _mm512_loadu_ps(mk + j * es), _mm512_loadu_ps(mk + (6 + j) * es),
                _mm512_loadu_ps(mk + (12 + j) * es), _mm512_loadu_ps(mk + (18 + j) * es),
                _mm512_loadu_ps(mk + (24 + j) * es), _mm512_loadu_ps(mk + (30 + j) * es));
            for (int a = 0; a < 4; a++) {
                sa[a][j] = o[a];
            }
        }
        float *ok = out + (size_t)k * hw;
        const __m512 bk = _mm512_set1_ps((!accumulate && bias) ? bias[k] : 0.0f);
        for (int a = 0; a < 4; a++) {
            __m512 t[4];
            at6(t, sa[a][0], sa[a][1], sa[a][2], sa[a][3], sa[a][4], sa[a][5]);
            tiles_to_rows(t); /* t[ty] = plane row 4ty + a, lane = column */
            for (int ty = 0; ty < 4; ty++) {
                int oy = 4 * ty + a;
                if (oy < H) {
                    float *row = ok + (size_t)oy * W;
                    __m512 add = accumulate ? _mm512_maskz_loadu_ps(mw, row) : bk;
                    _mm512_mask_storeu_ps(row, mw, _mm512_add_ps(t[ty], add));
                }
            }
        }
    }
}

/* See touch_pages_for_write in conv_wl4.c: before an accumulated output is
 * first read, one locked no-op write per 4 KB page it spans (its own words),
 * so that freshly zero-allocated pages take one write fault instead of a
 * zero-page mapping and a copy-on-write. */
TL4_INLINE void touch_for_write(float *out, size_t len) {
    char *q = (char *)out, *end = (char *)(out + len);
    while (q < end) {
        __asm__ volatile("lock orl $0, (%0)" : : "r"(q) : "memory");
        q = (char *)(((size_t)q + 4096) & ~(size_t)4095);
    }
}

/* 8 -> 8 on 14x14 (EENet-8 f=4 b2), sizes known to the compiler */
static TL4_AVX512 void tl4_sample_8814(float *out, int accumulate, const float *x,
                                       const float *u, const float *bias, float *slot) {
    tl4_sample(out, accumulate, x, u, bias, slot, 8, 8, 14, 14);
}

static TL4_AVX512 void tl4_sample_any(float *out, int accumulate, const float *x,
                                      const float *u, const float *bias, float *slot, int C,
                                      int K, int H, int W) {
    tl4_sample(out, accumulate, x, u, bias, slot, C, K, H, W);
}

TL4_AVX512 void eenet_tl4_conv(float *out, int accumulate, const float *inp, const float *u,
                               float *u_make, const float *w, int flip, const float *bias,
                               float *slots, size_t slot_stride, int N, int C, int K, int H, int W,
                               int nt) {
    nt = eenet_threads_for(nt, N);
    const size_t in_img = (size_t)C * H * W, out_img = (size_t)K * H * W;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *slot = slots + (size_t)tid * slot_stride;
        if (!u) { /* U made by the team, a share of its input channels each */
            int nth = eenet_team_size();
            tl4_weights_range(u_make, w, K, C, flip, C * tid / nth, C * (tid + 1) / nth);
#ifdef _OPENMP
#pragma omp barrier
#endif
        }
        const float *uu = u ? u : u_make;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int n = 0; n < N; n++) {
            float *o = out + (size_t)n * out_img;
            const float *x = inp + (size_t)n * in_img;
            if (accumulate) {
                touch_for_write(o, out_img);
            }
            if (C == 8 && K == 8 && H == 14 && W == 14) {
                tl4_sample_8814(o, accumulate, x, uu, bias, slot);
            } else {
                tl4_sample_any(o, accumulate, x, uu, bias, slot, C, K, H, W);
            }
        }
    }
}

/* o = A y (6 from 4; A = (A^T)^T of conv_wino4.c), as conv_wl4.c's a6. */
TL4_INLINE void a6(__m512 o[6], __m512 y0, __m512 y1, __m512 y2, __m512 y3) {
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

/* d (36 elements, stride ds floats) = D_e = (A dY A^T)[e/6][e%6] of the 16
 * tiles of one output channel's dout plane dy (H, W) (zero outside it);
 * bsum += D_7, the sum of each tile's 16 values (row 1 of A is all ones). */
TL4_INLINE void dout_transform(float *d, size_t ds, __m512 *bsum, const float *dy, int H,
                               int W) {
    const __mmask16 mw = first_lanes(W);
    __m512 s[4][6];
    for (int a = 0; a < 4; a++) {
        __m512 t[4];
        for (int ty = 0; ty < 4; ty++) {
            int oy = 4 * ty + a;
            t[ty] = oy < H ? _mm512_maskz_loadu_ps(mw, dy + (size_t)oy * W) : _mm512_setzero_ps();
        }
        rows_to_tiles(t); /* t[b] lane 4ty + tx = dY[a][b] of tile (ty, tx) */
        a6(s[a], t[0], t[1], t[2], t[3]); /* rows: dY A^T */
    }
    for (int j = 0; j < 6; j++) { /* columns: A (.) */
        __m512 o[6];
        a6(o, s[0][j], s[1][j], s[2][j], s[3][j]);
        for (int i = 0; i < 6; i++) {
            _mm512_storeu_ps(d + (size_t)(6 * i + j) * ds, o[i]);
        }
        if (j == 1) {
            *bsum = _mm512_add_ps(*bsum, o[1]);
        }
    }
}

/* acc (36, K, C, 16) += (first: =) sum over the nb samples of the block of d
 * (nb, 36, K, 16) times v (nb, 36, C, 16), lane-wise: for each e and group of
 * kg output channels (kg divides K, kg * C <= 16; constants where
 * specialised), kg * C running sums in registers. */
TL4_INLINE void dw_block(float *acc, const float *v, const float *d, int nb, int C, int K,
                         int kg, int first) {
    const size_t vstride = (size_t)36 * C * 16, dstride = (size_t)36 * K * 16;
    for (int e = 0; e < 36; e++) {
        for (int k0 = 0; k0 < K; k0 += kg) {
            __m512 r[16];
            float *ae = acc + ((size_t)e * K + k0) * C * 16;
            for (int q = 0; q < kg * C; q++) {
                r[q] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(ae + 16 * (size_t)q);
            }
            for (int n = 0; n < nb; n++) {
                const float *vn = v + n * vstride + (size_t)e * C * 16;
                const float *dn = d + n * dstride + ((size_t)e * K + k0) * 16;
                __m512 dk[16];
                for (int gi = 0; gi < kg; gi++) {
                    dk[gi] = _mm512_loadu_ps(dn + 16 * gi);
                }
                for (int c = 0; c < C; c++) {
                    __m512 vc = _mm512_loadu_ps(vn + 16 * c);
                    for (int gi = 0; gi < kg; gi++) {
                        r[gi * C + c] = _mm512_fmadd_ps(dk[gi], vc, r[gi * C + c]);
                    }
                }
            }
            for (int q = 0; q < kg * C; q++) {
                _mm512_storeu_ps(ae + 16 * (size_t)q, r[q]);
            }
        }
    }
}

/* dw_block for C = K = 8 in 4x4 register blocks: 4 + 4 loads per 16
 * products (the general form above: 10 per 16). */
TL4_INLINE void dw_block_88(float *acc, const float *v, const float *d, int nb, int first) {
    const size_t vstride = (size_t)36 * 8 * 16, dstride = (size_t)36 * 8 * 16;
    for (int e = 0; e < 36; e++) {
        for (int k0 = 0; k0 < 8; k0 += 4) {
            for (int c0 = 0; c0 < 8; c0 += 4) {
                __m512 r[4][4];
                float *ae = acc + ((size_t)e * 8 + k0) * 8 * 16 + 16 * (size_t)c0;
                for (int a = 0; a < 4; a++) {
                    for (int b = 0; b < 4; b++) {
                        r[a][b] = first ? _mm512_setzero_ps()
                                        : _mm512_loadu_ps(ae + 128 * a + 16 * b);
                    }
                }
                for (int n = 0; n < nb; n++) {
                    const float *vn = v + n * vstride + ((size_t)e * 8 + c0) * 16;
                    const float *dn = d + n * dstride + ((size_t)e * 8 + k0) * 16;
                    __m512 vc[4];
                    for (int b = 0; b < 4; b++) {
                        vc[b] = _mm512_loadu_ps(vn + 16 * b);
                    }
                    for (int a = 0; a < 4; a++) {
                        __m512 dk = _mm512_loadu_ps(dn + 16 * a);
                        for (int b = 0; b < 4; b++) {
                            r[a][b] = _mm512_fmadd_ps(dk, vc[b], r[a][b]);
                        }
                    }
                }
                for (int a = 0; a < 4; a++) {
                    for (int b = 0; b < 4; b++) {
                        _mm512_storeu_ps(ae + 128 * a + 16 * b, r[a][b]);
                    }
                }
            }
        }
    }
}

/* Lane i of the result = the sum of the 16 lanes of v[i] (a fixed tree:
 * pairs within 128-bit lanes, then across them); 45 operations instead of
 * 16 reductions of one vector each. */
TL4_INLINE __m512 hsum16(const __m512 v[16]) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++) { /* per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3 */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    for (int i = 0; i < 4; i++) { /* lane (L, m): the 128-bit lane L of v[4i + m] summed */
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
    }
    __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44),
                               _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
    __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x44),
                               _mm512_shuffle_f32x4(u[2], u[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xDD));
}

/* One block of nb samples starting at x, dy into the slot's block buffers,
 * then dw_block onto the slot's lane-wise dU (first: its first block, which
 * sets it). */
TL4_INLINE void dw_samples(float *slot, const float *x, const float *dy, int nb, int C, int K,
                           int kg, int H, int W, int first) {
    const int hw = H * W;
    float *vb = slot;
    float *db = vb + (size_t)TL4_NB * 36 * C * 16;
    float *acc = db + (size_t)TL4_NB * 36 * K * 16;
    float *bacc = acc + (size_t)36 * K * C * 16;
    for (int n = 0; n < nb; n++) {
        float *vn = vb + (size_t)n * 36 * C * 16, *dn = db + (size_t)n * 36 * K * 16;
        for (int c = 0; c < C; c++) {
            input_transform(vn + (size_t)c * 16, (size_t)C * 16, x + ((size_t)n * C + c) * hw, H,
                            W);
        }
        for (int k = 0; k < K; k++) {
            __m512 bs = _mm512_loadu_ps(bacc + 16 * (size_t)k);
            dout_transform(dn + (size_t)k * 16, (size_t)K * 16, &bs,
                           dy + ((size_t)n * K + k) * hw, H, W);
            _mm512_storeu_ps(bacc + 16 * (size_t)k, bs);
        }
    }
    if (C == 8 && K == 8) {
        dw_block_88(acc, vb, db, nb, first);
    } else {
        dw_block(acc, vb, db, nb, C, K, kg, first);
    }
}

static TL4_AVX512 void dw_samples_8814(float *slot, const float *x, const float *dy, int nb,
                                       int first) {
    dw_samples(slot, x, dy, nb, 8, 8, 2, 14, 14, first);
}

static TL4_AVX512 void dw_samples_any(float *slot, const float *x, const float *dy, int nb,
                                      int C, int K, int H, int W, int first) {
    dw_samples(slot, x, dy, nb, C, K, 1, H, W, first);
}

TL4_AVX512 void eenet_tl4_dw(float *dw, float *dbias, const float *dout, const float *inp,
                             float *du, float *slots, size_t slot_stride, int N, int C, int K,
                             int H, int W, int nt) {
    const int nblk = (N + TL4_NB - 1) / TL4_NB;
    nt = eenet_threads_for(nt, nblk);
    const size_t in_img = (size_t)C * H * W, out_img = (size_t)K * H * W;
    const size_t o_acc = (size_t)TL4_NB * 36 * 16 * ((size_t)C + K);
    const size_t n_acc = (size_t)36 * K * C * 16;
    const int ndu = 36 * K * C;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *slot = slots + (size_t)tid * slot_stride;
        int first = 1; /* the thread's first block sets its dU (no memset) */
        memset(slot + o_acc + n_acc, 0, sizeof(float) * 16 * (size_t)K);
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (int bi = 0; bi < nblk; bi++) {
            int n0 = bi * TL4_NB, nb = N - n0 < TL4_NB ? N - n0 : TL4_NB;
            const float *x = inp + (size_t)n0 * in_img, *dy = dout + (size_t)n0 * out_img;
            if (C == 8 && K == 8 && H == 14 && W == 14) {
                dw_samples_8814(slot, x, dy, nb, first);
            } else {
                dw_samples_any(slot, x, dy, nb, C, K, H, W, first);
            }
            first = 0;
        }
        if (first) { /* no block came to this thread */
            memset(slot + o_acc, 0, sizeof(float) * n_acc);
        }
        /* this thread's lane-wise partial summed over its 16 lanes, into
         * the start of its slot (the blocks' v, no longer needed): cdu
         * (36, K, C), 1/16 of what the other thread then reads from this
         * core's cache (reading the lane-wise partials across instead:
         * 8->8 14x14, 2 threads, 1.06x the time at batch 32, 1.03x at 128) */
        float *cdu = slot;
        for (int q0 = 0; q0 < ndu; q0 += 16) {
            const float *a0 = slot + o_acc + 16 * (size_t)q0;
            if (q0 + 16 <= ndu) {
                __m512 sv[16];
                for (int i = 0; i < 16; i++) {
                    sv[i] = _mm512_loadu_ps(a0 + 16 * i);
                }
                _mm512_storeu_ps(cdu + q0, hsum16(sv));
            } else {
                for (int q = q0; q < ndu; q++) {
                    cdu[q] = _mm512_reduce_add_ps(_mm512_loadu_ps(a0 + 16 * (size_t)(q - q0)));
                }
            }
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        /* the threads' sums added in thread order: du (36, K, C) */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int q0 = 0; q0 < ndu; q0 += 16) {
            int nq = ndu - q0 < 16 ? ndu - q0 : 16;
            __mmask16 m = (__mmask16)((1u << nq) - 1u);
            __m512 sum = _mm512_maskz_loadu_ps(m, slots + q0);
            for (int th = 1; th < nt; th++) {
                sum = _mm512_add_ps(sum,
                                    _mm512_maskz_loadu_ps(m, slots + (size_t)th * slot_stride + q0));
            }
            _mm512_mask_storeu_ps(du + q0, m, sum);
        }
    }
    if (dbias) {
        for (int k = 0; k < K; k++) {
            __m512 sum = _mm512_loadu_ps(slots + o_acc + n_acc + 16 * (size_t)k);
            for (int th = 1; th < nt; th++) {
                sum = _mm512_add_ps(sum, _mm512_loadu_ps(slots + (size_t)th * slot_stride +
                                                         o_acc + n_acc + 16 * (size_t)k));
            }
            dbias[k] += _mm512_reduce_add_ps(sum);
        }
    }
    /* dw[k][c] += G^T dU[k][c] G (3x3 from 6x6), in double, rounded once */
    for (int k = 0; k < K; k++) {
        for (int c = 0; c < C; c++) {
            double t[3][6];
            for (int j = 0; j < 6; j++) {
                for (int a = 0; a < 3; a++) {
                    double sum = 0.0;
                    for (int i = 0; i < 6; i++) {
                        sum += tl4_G[i][a] * du[((size_t)(6 * i + j) * K + k) * C + c];
                    }
                    t[a][j] = sum;
                }
            }
            float *g = dw + ((size_t)k * C + c) * 9;
            for (int a = 0; a < 3; a++) {
                for (int b = 0; b < 3; b++) {
                    double sum = 0.0;
                    for (int j = 0; j < 6; j++) {
                        sum += t[a][j] * tl4_G[j][b];
                    }
                    g[3 * a + b] += (float)sum;
                }
            }
        }
    }
}

#else /* not x86-64 GCC/Clang: conv.c never chooses this path */

/* The plain statement of the weight transform (never chosen there): the
 * same U as conv_wl4.c's, whose plain statement takes any cin, cout. */
void eenet_tl4_weights(float *u, const float *w, int cout, int cin, int flip) {
    eenet_wl4_weights(u, w, cout, cin, flip);
}

void eenet_tl4_conv(float *out, int accumulate, const float *inp, const float *u,
                    float *u_make, const float *w, int flip, const float *bias, float *slots,
                    size_t slot_stride, int N, int C, int K, int H, int W, int nt) {
    (void)out, (void)accumulate, (void)inp, (void)u, (void)u_make, (void)w, (void)flip;
    (void)bias, (void)slots, (void)slot_stride, (void)N, (void)C, (void)K, (void)H, (void)W;
    (void)nt;
}

void eenet_tl4_dw(float *dw, float *dbias, const float *dout, const float *inp, float *du,
                  float *slots, size_t slot_stride, int N, int C, int K, int H, int W, int nt) {
    (void)dw, (void)dbias, (void)dout, (void)inp, (void)du, (void)slots, (void)slot_stride;
    (void)N, (void)C, (void)K, (void)H, (void)W, (void)nt;
}

#endif
