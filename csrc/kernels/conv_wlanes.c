/* conv_wlanes.c: batch-lane Winograd F(2x2,3x3) for 3x3 stride-1 pad-1
 * convolutions with few channels (cin, cout <= 16: EENet-8's 16->16 7x7),
 * forward and backward-data (conv.c chooses it, see wlanes_pick there).
 *
 * Same transforms as conv_winograd.c (Lavin & Gray): for the 2x2 output tile
 * at (2ty, 2tx), input tile d (4x4) at rows 2ty-1..2ty+2, columns
 * 2tx-1..2tx+2 (zero outside the input) and a 3x3 filter g,
 *
 *   V = B^T d B,  U = G g G^T,  Y = A^T (sum_c U_kc (.) V_c) A
 *
 *   B^T = [1  0 -1  0]   G = [ 1    0    0 ]   A^T = [1 1  1  0]
 *         [0  1  1  0]       [1/2  1/2  1/2]         [0 1 -1 -1]
 *         [0 -1  1  0]       [1/2 -1/2  1/2]
 *         [0  1  0 -1]       [ 0    0    1 ]
 *
 * so out[k] of one tile at element e = 4i+j of the transformed domain is
 * M_e[k] = sum_c U_e[k][c] V_e[c]: 16 multiply-adds per 4 outputs and
 * channel pair instead of 36.  Every zmm holds 16 independent tiles, and
 * each lane goes through exactly the same operations in the same order
 * (transforms: adds only, no shuffles; products: one FMA chain over c from
 * 0), so a lane's result does not depend on what the other lanes hold:
 *   - group mode: 16 SAMPLES in the lanes (eenet_conv_lanes_in_pad's lane
 *     layout (cin, 2th+2, 2tw+2, 16), one vector per tile and element),
 *     for every whole group of 16 samples;
 *   - tile mode: 16 TILES of one sample in the lanes (gathered from the
 *     sample's zero-padded planes), for the samples left over (a 7x7 plane
 *     has exactly 16 tiles, so no lane is wasted there).
 * Both give the same bits for a sample, so batched early-exit inference
 * equals one-sample-at-a-time evaluation (tests/test_conv.py).
 * U is formed in double and rounded once; B^T and A^T have entries 0, +-1.
 * Products: acc[E][KB] (E elements x KB output channels, E*KB = 16 zmm), per
 * input channel E vector loads of V and E*KB FMAs with the U scalar
 * broadcast from memory.
 */
#include "conv_winograd.h"

#include <string.h>

#include "conv_direct.h"
#include "eenet.h"

/* Tile rows th, tiles per row tw, padded plane hp x wp (interior at (1, 1),
 * the extra bottom row/right column of odd sizes zero), tile vectors of one
 * sample in tile mode. */
typedef struct {
    int th, tw, T, hp, wp, ntv;
} wl_geom;

static void wl_geom_init(wl_geom *g, int H, int W) {
    g->th = (H + 1) / 2;
    g->tw = (W + 1) / 2;
    g->T = g->th * g->tw;
    g->hp = 2 * g->th + 2;
    g->wp = 2 * g->tw + 2;
    g->ntv = (g->T + 15) / 16;
}

/* Tile mode: the lanes of tile vector tv are tiles t0 + l, l < nt.  Planes
 * up to 14 wide (padded rows of at most 16 floats): npair pairs of tile rows
 * from ty0, each lane's input column pi[pr][l] (+16: the pair's second row)
 * under mask pm[pr]; output rows oy0 + r, r < nrow, column ox from lane
 * ri[r][ox] (+16: odd columns) under mask rm[r].  Wider planes: gathers at
 * idx[l], outputs through (src, dst) pairs (np of them). */
#define WL_PAIRS 8
typedef struct {
    int t0, nt, ty0, npair, oy0, nrow, np;
    int pi[WL_PAIRS][16];
    unsigned pm[WL_PAIRS];
    int ri[2 * WL_PAIRS][16];
    unsigned rm[2 * WL_PAIRS];
    int idx[16], src[64], dst[64];
} wl_tv;

/* Per-thread slot for up to m channels on either side, in floats:
 * xl (m, hp, wp, 16) group input; yl (m, H, W, 16) group output;
 * v (16, m, 16) and mm (16, m, 16) one tile vector's V and M;
 * xs (m, hp, wp) one sample's padded planes (tile mode);
 * tb (m, 4, 16) one tile vector's outputs (tile mode). */
typedef struct {
    size_t xl, yl, v, mm, xs, tb, slot;
} wl_layout;

static void wl_layout_init(wl_layout *l, int m, int H, int W) {
    wl_geom g;
    wl_geom_init(&g, H, W);
    size_t at = 0;
    l->xl = at, at += eenet_round16(16 * (size_t)m * g.hp * g.wp);
    l->yl = at, at += eenet_round16(16 * (size_t)m * H * W);
    l->v = at, at += 256 * (size_t)m;
    l->mm = at, at += 256 * (size_t)m;
    l->xs = at, at += eenet_round16((size_t)m * g.hp * g.wp + 16); /* + slack: 16-float row loads */
    l->tb = at, at += 64 * (size_t)m;
    l->slot = at;
}

/* Shared region: U (16, cin, cout), then the tile-mode tables. */
static size_t wl_tabs_at(int C, int K) {
    return eenet_round16(16 * (size_t)C * K);
}

void eenet_wlanes_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot) {
    wl_layout l;
    wl_layout_init(&l, C > K ? C : K, H, W);
    wl_geom g;
    wl_geom_init(&g, H, W);
    *shared = wl_tabs_at(C, K) + eenet_round16(((size_t)g.ntv * sizeof(wl_tv) + 3) / 4);
    *slot = l.slot;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define EENET_AVX512 __attribute__((target("avx512f")))
#define WL_INLINE static EENET_AVX512 inline __attribute__((always_inline))

/* The tile-mode tables of wl_tv for every tile vector of an H x W plane. */
static void wl_tv_init(wl_tv *tvs, int H, int W, const wl_geom *g) {
    for (int tv = 0; tv < g->ntv; tv++) {
        wl_tv *tt = tvs + tv;
        memset(tt, 0, sizeof *tt);
        int t0 = 16 * tv, nt = g->T - t0 < 16 ? g->T - t0 : 16;
        int ty0 = t0 / g->tw, ty1 = (t0 + nt - 1) / g->tw;
        tt->t0 = t0, tt->nt = nt, tt->ty0 = ty0;
        for (int l = 0; l < nt; l++) {
            int t = t0 + l, ty = t / g->tw, tx = t % g->tw;
            tt->idx[l] = 2 * ty * g->wp + 2 * tx;
            for (int q = 0; q < 4; q++) {
                int oy = 2 * ty + q / 2, ox = 2 * tx + q % 2;
                if (oy < H && ox < W) {
                    tt->src[tt->np] = 16 * q + l, tt->dst[tt->np] = oy * W + ox, tt->np++;
                }
            }
        }
        if (g->wp > 16) {
            continue;
        }
        tt->npair = (ty1 - ty0 + 2) / 2;
        for (int l = 0; l < nt; l++) {
            int t = t0 + l, ty = t / g->tw, tx = t % g->tw, pr = (ty - ty0) / 2;
            tt->pi[pr][l] = 2 * tx + ((ty - ty0) % 2 ? 16 : 0);
            tt->pm[pr] |= 1u << l;
        }
        tt->oy0 = 2 * ty0;
        tt->nrow = (2 * ty1 + 2 < H ? 2 * ty1 + 2 : H) - tt->oy0;
        for (int r = 0; r < tt->nrow; r++) {
            int ty = (tt->oy0 + r) / 2;
            for (int ox = 0; ox < W; ox++) {
                int t = ty * g->tw + ox / 2;
                if (t >= t0 && t < t0 + nt) {
                    tt->ri[r][ox] = (ox % 2 ? 16 : 0) + (t - t0);
                    tt->rm[r] |= 1u << ox;
                }
            }
        }
    }
}


/* v[4i+j] = (B^T d B)[i][j] for the input tile d[4i+j] (row i, column j). */
WL_INLINE void in_tf(__m512 *v, const __m512 *d) {
    __m512 t[16];
    for (int j = 0; j < 4; j++) { /* rows: B^T d */
        t[j] = _mm512_sub_ps(d[j], d[8 + j]);
        t[4 + j] = _mm512_add_ps(d[4 + j], d[8 + j]);
        t[8 + j] = _mm512_sub_ps(d[8 + j], d[4 + j]);
        t[12 + j] = _mm512_sub_ps(d[4 + j], d[12 + j]);
    }
    for (int i = 0; i < 4; i++) { /* columns: (B^T d) B */
        const __m512 *r = t + 4 * i;
        v[4 * i] = _mm512_sub_ps(r[0], r[2]);
        v[4 * i + 1] = _mm512_add_ps(r[1], r[2]);
        v[4 * i + 2] = _mm512_sub_ps(r[2], r[1]);
        v[4 * i + 3] = _mm512_sub_ps(r[1], r[3]);
    }
}

/* y[2a+b] = (A^T m A)[a][b] for m[4i+j]. */
WL_INLINE void out_tf(__m512 *y, const __m512 *m) {
    __m512 s0[4], s1[4];
    for (int j = 0; j < 4; j++) {
        s0[j] = _mm512_add_ps(_mm512_add_ps(m[j], m[4 + j]), m[8 + j]);
        s1[j] = _mm512_sub_ps(_mm512_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
    }
    y[0] = _mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]);
    y[1] = _mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]);
    y[2] = _mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]);
    y[3] = _mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]);
}

/* mm[e][k] (16 lanes) = sum_{c < cin} u[e][c][k] * v[e][c] for the E
 * elements e0.. and KB output channels k0..; v (16, cin, 16), mm (16, cout,
 * 16), u (16, cin, cout).  The chain over c starts from 0 and runs in order. */
#define DEFINE_WP(KB, E)                                                                  \
    static EENET_AVX512 void wp_##KB(float *mm, const float *v, const float *u, int cin,  \
                                     int cout, int k0, int e0) {                          \
        __m512 acc[E][KB];                                                                \
        for (int q = 0; q < E; q++) {                                                     \
            for (int a = 0; a < KB; a++) {                                                \
                acc[q][a] = _mm512_setzero_ps();                                          \
            }                                                                             \
        }                                                                                 \
        for (int c = 0; c < cin; c++) {                                                   \
            for (int q = 0; q < E; q++) {                                                 \
                size_t ec = (size_t)(e0 + q) * cin + c;                                   \
                __m512 x = _mm512_loadu_ps(v + 16 * ec);                                  \
                const float *ue = u + ec * cout + k0;                                     \
                for (int a = 0; a < KB; a++) {                                            \
                    acc[q][a] = _mm512_fmadd_ps(_mm512_set1_ps(ue[a]), x, acc[q][a]);     \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
        for (int q = 0; q < E; q++) {                                                     \
            for (int a = 0; a < KB; a++) {                                                \
                _mm512_storeu_ps(mm + 16 * ((size_t)(e0 + q) * cout + k0 + a), acc[q][a]); \
            }                                                                             \
        }                                                                                 \
    }

DEFINE_WP(16, 1)
DEFINE_WP(8, 2)
DEFINE_WP(4, 4)
DEFINE_WP(2, 8)
DEFINE_WP(1, 16)

typedef void (*wp_fn)(float *, const float *, const float *, int, int, int, int);

/* need: bit e set if M_e is read by a stored output (a tile whose second
 * output row lies outside the plane needs no i = 3 elements, as A^T's first
 * row is (1 1 1 0); likewise j = 3 for its second column).  Elements left
 * out keep stale values that only reach unstored outputs. */
static EENET_AVX512 void products(float *mm, const float *v, const float *u, int cin,
                                  int cout, unsigned need) {
    for (int k0 = 0; k0 < cout;) {
        int rem = cout - k0;
        int kb = rem >= 16 ? 16 : rem >= 8 ? 8 : rem >= 4 ? 4 : rem >= 2 ? 2 : 1;
        wp_fn fn = kb == 16 ? wp_16 : kb == 8 ? wp_8 : kb == 4 ? wp_4 : kb == 2 ? wp_2 : wp_1;
        int E = 16 / kb;
        for (int e0 = 0; e0 < 16; e0 += E) {
            if ((need >> e0) & ((1u << E) - 1u)) {
                fn(mm, v, u, cin, cout, k0, e0);
            }
        }
        k0 += kb;
    }
}

/* V (16, cin, 16) of one tile vector, channels [c0, c1), from its input
 * tile rows: row i of channel c at r0 + i*rs + c*cstride, columns 16 floats
 * apart. */
WL_INLINE void in_tile(float *v, const float *r0, size_t rs, size_t cstride, int cin, int c0,
                       int c1) {
    size_t vs = 16 * (size_t)cin;
    for (int c = c0; c < c1; c++) {
        const float *b = r0 + (size_t)c * cstride;
        __m512 d[16], t[16];
        for (int i = 0; i < 4; i++) {
            for (int j = 0; j < 4; j++) {
                d[4 * i + j] = _mm512_loadu_ps(b + i * rs + 16 * j);
            }
        }
        in_tf(t, d);
        float *vc = v + 16 * (size_t)c;
        for (int e = 0; e < 16; e++) {
            _mm512_storeu_ps(vc + e * vs, t[e]);
        }
    }
}

/* Group mode, output channels [k0, k1) of tile (ty, tx): yl (cout, H, W, 16)
 * at the tile's 2x2 outputs inside the plane = A^T M A, M (16, cout, 16). */
WL_INLINE void out_tile(float *yl, const float *mm, int cout, int H, int W, int ty, int tx,
                        int k0, int k1) {
    int full = 2 * ty + 1 < H && 2 * tx + 1 < W;
    size_t ms = 16 * (size_t)cout, ks = 16 * (size_t)H * W, rs = 16 * (size_t)W;
    float *o = yl + 16 * ((size_t)2 * ty * W + 2 * tx) + (size_t)k0 * ks;
    for (int k = k0; k < k1; k++, o += ks) {
        __m512 m[16], y[4];
        const float *mk = mm + 16 * (size_t)k;
        for (int e = 0; e < 16; e++) {
            m[e] = _mm512_loadu_ps(mk + e * ms);
        }
        out_tf(y, m);
        if (full) {
            _mm512_storeu_ps(o, y[0]);
            _mm512_storeu_ps(o + 16, y[1]);
            _mm512_storeu_ps(o + rs, y[2]);
            _mm512_storeu_ps(o + rs + 16, y[3]);
            continue;
        }
        int rows = 2 * ty + 1 < H ? 2 : 1, cols = 2 * tx + 1 < W ? 2 : 1;
        for (int a = 0; a < rows; a++) {
            for (int b = 0; b < cols; b++) {
                _mm512_storeu_ps(o + a * rs + 16 * b, y[2 * a + b]);
            }
        }
    }
}

/* Group mode, one tile (ty, tx) of 16 samples: yl (cout, H, W, 16) at the
 * tile's 2x2 outputs inside the plane from xl (cin, hp, wp, 16).  Out of
 * line: inlined into the driver it ran ~10% slower (register allocation). */
static EENET_AVX512 __attribute__((noinline)) void group_tile(float *yl, const float *xl,
                                                              const float *u, float *v,
                                                              float *mm, int cin, int cout,
                                                              int H, int W, const wl_geom *g,
                                                              int ty, int tx) {
    in_tile(v, xl + 16 * ((size_t)2 * ty * g->wp + 2 * tx), 16 * (size_t)g->wp,
            16 * (size_t)g->hp * g->wp, cin, 0, cin);
    unsigned need = 0xFFFF;
    if (2 * ty + 1 >= H) {
        need &= 0x0FFF; /* no second output row: i = 3 unused */
    }
    if (2 * tx + 1 >= W) {
        need &= 0x7777; /* no second output column: j = 3 unused */
    }
    products(mm, v, u, cin, cout, need);
    out_tile(yl, mm, cout, H, W, ty, tx, 0, cout);
}

/* Tile mode input tile vectors d[4i+j] of one channel (plane p) for a
 * tile vector over two pairs of tile rows (7x7 and 14x14 planes): as the
 * generic loop in sample_run, unrolled so that the rows and indices stay
 * in registers. */
WL_INLINE void in_pairs2(__m512 *d, const float *p, const wl_tv *tt, const wl_geom *g) {
    __m512i i0 = _mm512_loadu_si512(tt->pi[0]), i1 = _mm512_loadu_si512(tt->pi[1]);
    __mmask16 m0 = (__mmask16)tt->pm[0], m1 = (__mmask16)tt->pm[1];
    const __m512i one = _mm512_set1_epi32(1);
    for (int i = 0; i < 4; i++) {
        int r = 2 * tt->ty0 + i; /* rows r, r+2 (pair 0) and r+4, r+6 (pair 1) */
        __m512 a0 = _mm512_loadu_ps(p + (size_t)r * g->wp);
        __m512 b0 = _mm512_loadu_ps(p + (size_t)(r + 2) * g->wp);
        __m512 a1 = r + 4 < g->hp ? _mm512_loadu_ps(p + (size_t)(r + 4) * g->wp)
                                  : _mm512_setzero_ps();
        __m512 b1 = r + 6 < g->hp ? _mm512_loadu_ps(p + (size_t)(r + 6) * g->wp)
                                  : _mm512_setzero_ps();
        __m512i j0 = i0, j1 = i1;
        for (int j = 0; j < 4; j++) {
            __m512 x = _mm512_maskz_permutex2var_ps(m0, a0, j0, b0);
            d[4 * i + j] = _mm512_mask_mov_ps(x, m1, _mm512_permutex2var_ps(a1, j1, b1));
            j0 = _mm512_add_epi32(j0, one);
            j1 = _mm512_add_epi32(j1, one);
        }
    }
}

/* Tile mode, one sample: out (cout, H, W) = conv + bias (or += conv) from
 * its padded planes xs (cin, hp, wp; border zero), 16 tiles per vector
 * (lanes, index tables: wl_tv). */
static EENET_AVX512 void sample_run(float *out, int accumulate, const float *xs,
                                    const float *u, const float *bias, float *v, float *mm,
                                    float *tb, const wl_tv *tvs, int cin, int cout, int H,
                                    int W, const wl_geom *g) {
    size_t vs = 16 * (size_t)cin, ms = 16 * (size_t)cout, plane = (size_t)g->hp * g->wp;
    for (int tv = 0; tv < g->ntv; tv++) {
        const wl_tv *tt = tvs + tv;
        int npair = tt->npair, nrow = tt->nrow;
        for (int c = 0; c < cin; c++) {
            const float *p = xs + (size_t)c * plane;
            __m512 d[16], t[16];
            if (npair == 2) {
                in_pairs2(d, p, tt, g);
            } else if (npair > 0) {
                /* the lanes of tile rows ty0 + 2pr and the next pick their
                 * columns 2tx + j out of the padded rows 2ty + i (one permute
                 * of two rows, the pairs merged by masks; the xs slot has 16
                 * floats of slack after the planes for the 16-float loads) */
                for (int i = 0; i < 4; i++) {
                    __m512 ra[WL_PAIRS], rb[WL_PAIRS];
                    for (int pr = 0; pr < npair; pr++) {
                        int r = 2 * (tt->ty0 + 2 * pr) + i;
                        ra[pr] = _mm512_loadu_ps(p + (size_t)r * g->wp);
                        rb[pr] = r + 2 < g->hp ? _mm512_loadu_ps(p + (size_t)(r + 2) * g->wp)
                                               : _mm512_setzero_ps();
                    }
                    for (int j = 0; j < 4; j++) {
                        __m512i jv = _mm512_set1_epi32(j);
                        __m512 x = _mm512_maskz_permutex2var_ps(
                            tt->pm[0], ra[0], _mm512_add_epi32(_mm512_loadu_si512(tt->pi[0]), jv),
                            rb[0]);
                        for (int pr = 1; pr < npair; pr++) {
                            __m512i ix = _mm512_add_epi32(_mm512_loadu_si512(tt->pi[pr]), jv);
                            x = _mm512_mask_mov_ps(x, tt->pm[pr],
                                                   _mm512_permutex2var_ps(ra[pr], ix, rb[pr]));
                        }
                        d[4 * i + j] = x;
                    }
                }
            } else {
                __m512i iv = _mm512_loadu_si512(tt->idx);
                __mmask16 mk = (__mmask16)(tt->nt >= 16 ? 0xFFFF : (1u << tt->nt) - 1u);
                for (int i = 0; i < 4; i++) {
                    for (int j = 0; j < 4; j++) {
                        d[4 * i + j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, iv,
                                                                p + (size_t)i * g->wp + j, 4);
                    }
                }
            }
            in_tf(t, d);
            float *vc = v + 16 * (size_t)c;
            for (int e = 0; e < 16; e++) {
                _mm512_storeu_ps(vc + e * vs, t[e]);
            }
        }
        products(mm, v, u, cin, cout, 0xFFFF);
        for (int k = 0; k < cout; k++) {
            __m512 m[16], y[4];
            const float *mk2 = mm + 16 * (size_t)k;
            for (int e = 0; e < 16; e++) {
                m[e] = _mm512_loadu_ps(mk2 + e * ms);
            }
            out_tf(y, m);
            /* as eenet_conv_lanes_out: r + old, or r + bias (0 without one) */
            float *ok = out + (size_t)k * H * W;
            if (nrow > 0) {
                /* output row oy0 + r interleaves the lanes of y[2a] (even
                 * columns) and y[2a+1] (odd): one permute, a masked store */
                /* the rows to add to are all loaded before the first store: a
                 * load overlapping the 64 bytes of a masked store just before
                 * it waits for that store (no forwarding) */
                __m512 add[2 * WL_PAIRS];
                __m512 bv = _mm512_set1_ps((!accumulate && bias) ? bias[k] : 0.0f);
                for (int r = 0; r < nrow; r++) {
                    add[r] = accumulate ? _mm512_maskz_loadu_ps(
                                              (__mmask16)tt->rm[r], ok + (size_t)(tt->oy0 + r) * W)
                                        : bv;
                }
                for (int r = 0; r < nrow; r++) {
                    int oy = tt->oy0 + r, a = oy % 2;
                    __m512 x = _mm512_permutex2var_ps(y[2 * a], _mm512_loadu_si512(tt->ri[r]),
                                                      y[2 * a + 1]);
                    _mm512_mask_storeu_ps(ok + (size_t)oy * W, (__mmask16)tt->rm[r],
                                          _mm512_add_ps(x, add[r]));
                }
                continue;
            }
            for (int q = 0; q < 4; q++) {
                _mm512_storeu_ps(tb + 16 * q, y[q]);
            }
            if (accumulate) {
                for (int i = 0; i < tt->np; i++) {
                    ok[tt->dst[i]] = tb[tt->src[i]] + ok[tt->dst[i]];
                }
            } else {
                float bk = bias ? bias[k] : 0.0f;
                for (int i = 0; i < tt->np; i++) {
                    ok[tt->dst[i]] = tb[tt->src[i]] + bk;
                }
            }
        }
    }
}

/* xs (cin, hp, wp) interior at (1, 1) = x (cin, H, W); border untouched. */
static EENET_AVX512 void wl_pad_fill(float *xs, const float *x, int cin, int H, int W, int hp,
                                     int wp) {
    for (int c = 0; c < cin; c++) {
        for (int y = 0; y < H; y++) {
            float *d = xs + ((size_t)c * hp + y + 1) * wp + 1;
            const float *r = x + ((size_t)c * H + y) * W;
            for (int i = 0; i < W; i += 16) {
                __mmask16 m = (__mmask16)(W - i >= 16 ? 0xFFFF : (1u << (W - i)) - 1u);
                _mm512_mask_storeu_ps(d + i, m, _mm512_maskz_loadu_ps(m, r + i));
            }
        }
    }
}

EENET_AVX512 void eenet_wlanes_conv(float *out, int accumulate, const float *inp,
                                    const float *u, float *shared, const float *bias, float *slots,
                                    size_t slot_stride, int N, int cin, int cout, int H, int W,
                                    int m, int nt) {
    wl_geom g;
    wl_geom_init(&g, H, W);
    wl_layout l;
    wl_layout_init(&l, m, H, W);
    /* whole groups of 16 samples, as many as split evenly over the threads,
     * then single samples (tile mode: the same bits, so the split may depend
     * on nt; each loop is balanced on its own) */
    int ng = N / 16;
    if (nt > 1) {
        ng -= ng % nt;
    }
    int rem = N - 16 * ng;
    nt = eenet_threads_for(nt, ng + rem);
    size_t in_img = (size_t)cin * H * W, out_img = (size_t)cout * H * W;
    wl_tv *tvs = (wl_tv *)(shared + wl_tabs_at(cin, cout));
    if (rem > 0) {
        wl_tv_init(tvs, H, W, &g);
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *slot = slots + (size_t)tid * slot_stride;
        float *xl = slot + l.xl, *yl = slot + l.yl, *v = slot + l.v, *mm = slot + l.mm;
        float *xs = slot + l.xs, *tb = slot + l.tb;
        /* the borders stay zero: the fills below write the interiors only */
        if (ng > 0) {
            memset(xl, 0, sizeof(float) * 16 * (size_t)cin * g.hp * g.wp);
        }
        if (rem > 0) {
            memset(xs, 0, sizeof(float) * (size_t)cin * g.hp * g.wp);
        }
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (int gi = 0; gi < ng; gi++) {
            int n0 = 16 * gi;
            eenet_conv_lanes_in_pad(xl, inp + (size_t)n0 * in_img, 16, in_img, cin, H, W, g.hp,
                                    g.wp, 1, 1, 1);
            for (int ty = 0; ty < g.th; ty++) {
                for (int tx = 0; tx < g.tw; tx++) {
                    group_tile(yl, xl, u, v, mm, cin, cout, H, W, &g, ty, tx);
                }
            }
            eenet_conv_lanes_out(out + (size_t)n0 * out_img, out_img, yl, 16, cout, H * W, bias,
                                 accumulate);
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int n = 16 * ng; n < N; n++) {
            wl_pad_fill(xs, inp + (size_t)n * in_img, cin, H, W, g.hp, g.wp);
            sample_run(out + (size_t)n * out_img, accumulate, xs, u, bias, v, mm, tb, tvs, cin,
                       cout, H, W, &g);
        }
    }
}

/* u (16, cin, cout) = G g G^T as in the portable version at the end of
 * this file, but in float (the scalar double loop
 * cost as much as the 16->16 7x7 convolution of one sample): each sum of
 * G g G^T rounded as it goes, 16 channel pairs p = ci*cout + co at a time.
 * The g are staged in u's first 9 rows for all pairs first (AVX-512 gathers
 * are slow on Zen 4, and vector loads right behind the scalar stores would
 * stall on store forwarding); chunk p0 reads its staged columns before
 * writing U's. */
EENET_AVX512 void eenet_wlanes_weights(float *u, const float *w, int cout, int cin, int flip) {
    int P = cin * cout;
    for (int ci = 0; ci < cin; ci++) {
        for (int co = 0; co < cout; co++) {
            size_t pp = (size_t)ci * cout + co;
            if (flip) {
                const float *wp = w + pp * 9;
                for (int ab = 0; ab < 9; ab++) {
                    u[(size_t)ab * P + pp] = wp[8 - ab];
                }
            } else {
                const float *wp = w + ((size_t)co * cin + ci) * 9;
                for (int ab = 0; ab < 9; ab++) {
                    u[(size_t)ab * P + pp] = wp[ab];
                }
            }
        }
    }
    const __m512 half = _mm512_set1_ps(0.5f);
    for (int p0 = 0; p0 < P; p0 += 16) {
        __mmask16 m = (__mmask16)(P - p0 >= 16 ? 0xFFFF : (1u << (P - p0)) - 1u);
        __m512 g[3][3], t[4][3];
        for (int a = 0; a < 3; a++) {
            for (int b = 0; b < 3; b++) {
                g[a][b] = _mm512_maskz_loadu_ps(m, u + (size_t)(3 * a + b) * P + p0);
            }
        }
        for (int b = 0; b < 3; b++) { /* t = G g (4x3) */
            t[0][b] = g[0][b];
            t[1][b] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(g[0][b], g[1][b]), g[2][b]));
            t[2][b] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(g[0][b], g[1][b]), g[2][b]));
            t[3][b] = g[2][b];
        }
        for (int i = 0; i < 4; i++) { /* U = t G^T (4x4) */
            __m512 v[4];
            v[0] = t[i][0];
            v[1] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(t[i][0], t[i][1]), t[i][2]));
            v[2] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(t[i][0], t[i][1]), t[i][2]));
            v[3] = t[i][2];
            for (int j = 0; j < 4; j++) {
                _mm512_mask_storeu_ps(u + (size_t)(4 * i + j) * P + p0, m, v[j]);
            }
        }
    }
}

#else /* not x86-64 GCC/Clang: conv.c never chooses this path */

/* U in double, rounded once (the portable build; never chosen by conv.c
 * there, kept as the plain statement of the formula). */
void eenet_wlanes_weights(float *u, const float *w, int cout, int cin, int flip) {
    for (int co = 0; co < cout; co++) {
        for (int ci = 0; ci < cin; ci++) {
            double uf[16];
            eenet_wino_filter(uf, w, cout, cin, co, ci, flip);
            for (int e = 0; e < 16; e++) {
                u[((size_t)e * cin + ci) * cout + co] = (float)uf[e];
            }
        }
    }
}


void eenet_wlanes_conv(float *out, int accumulate, const float *inp, const float *u,
                       float *shared, const float *bias, float *slots, size_t slot_stride, int N,
                       int cin, int cout, int H, int W, int m, int nt) {
    (void)out, (void)accumulate, (void)inp, (void)u, (void)shared, (void)bias, (void)slots;
    (void)slot_stride, (void)N, (void)cin, (void)cout, (void)H, (void)W, (void)m, (void)nt;
}

#endif
