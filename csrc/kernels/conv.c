/* conv.c: 2-d convolution (cross-correlation, PyTorch's conv2d), NCHW float32.
 *
 *   out[n,k,oy,ox] = bias[k] + sum_{c,i,j} w[k,c,i,j] * inp[n,c,oy*s+i-p,ox*s+j-p]
 *
 * (taps outside the input read 0; symmetric padding p, stride s).
 * Backward: dinp += conv^T(dout) (the full correlation with the flipped
 * kernel for stride 1), dw[k,c,i,j] += sum_{n,oy,ox} dout * inp(tap),
 * dbias[k] += sum_{n,oy,ox} dout.  All paths share the contract of kernels.h.
 *
 * Paths, chosen per call by plan_choose() from measurements on the 2-core
 * AMD EPYC (Zen 4, AVX-512) build machine:
 *   - batch-lane direct (conv_avx512.c, conv_direct.h: 16 SAMPLES in the zmm
 *     lanes, each pixel one vector of the group's 16 values, so strides,
 *     tails and 7-wide rows waste no lane): layers with C, K <= 16 (all of
 *     EENet-8, the ResNet-20 stem and 16->16 forward), whole groups of 16
 *     samples; forward, weight gradient (lane partial sums, reduced once per
 *     call) and stride-1 data gradient; lanes_pick() lists the measured
 *     exceptions.  EENet-8 batch 128, one thread: 8->8 7x7 forward 59 -> 86
 *     GFLOP/s, 4->8 s2 weight gradient 33 -> 56, 8->8 7x7 data gradient
 *     40 -> 83;
 *   - K-vectorised direct (conv_avx512.c, 16*kv output channels in zmm lanes,
 *     P output columns per tile): forward and backward-data (a forward of
 *     dout with the flipped kernel) of layers with 32+ channels, or 16 on
 *     7/14-wide rows; weight gradient of 32+ channels (on the padded input)
 *     and of 16 channels with >= 64 taps (on the q-space planes), summing a
 *     group of samples (>= 256 positions; 4 for 64->64 8x8) in registers
 *     before touching dw (64->64 8x8 weight gradient 0.94x -> 1.1-1.2x
 *     PyTorch, one thread);
 *   - q-space direct (conv_avx512.c, conv_direct.h: positions in zmm lanes over
 *     zero-padded phase planes, so stride s becomes contiguous reads): every
 *     other 3x3/7x7 layer, and the samples of a small-channel layer left
 *     over after the whole lane groups;
 *   - Winograd F(2x2,3x3) (conv_winograd.c): forward and backward-data of
 *     3x3 stride-1 pad-1 layers with 16..64 channels on planes where the
 *     transforms fill the vector lanes well (wino_auto below), and their
 *     weight gradient from 32 channels on 8x8/16x16 planes (wino_auto_dw);
 *     2.25x fewer multiply-adds, the 16 transformed-domain GEMMs run on the
 *     direct path's register-blocked micro-kernel (64->64 8x8 at batch 128,
 *     one thread: 5.6 -> 3.4 ms forward, 6.0 -> 4.3 ms weight gradient);
 *   - Winograd F(4x4,3x3) (conv_wino4.c): the forward of 16->16 3x3
 *     stride-1 pad-1 layers on 32x32 planes and of 32->32 (16->32, 32->16)
 *     on 16x16 planes (wino4_pick), and the data gradient (a K -> C forward
 *     of dout with the flipped, transposed kernel) of those with 16..64
 *     channels on 32x32 and 16x16 planes and 32..64 on 8x8 planes
 *     (wino4_pick_bd); 32->32 16x16 at N = 128, one thread: forward and
 *     backward-data ~1.5x over F(2x2), 64->64 8x8 backward-data ~1.4-1.8x;
 *     36 products per 16 outputs instead of 64, transforms vectorised over
 *     two tile rows of 8 tiles; one thread, forward 115-123 -> 163-216
 *     GFLOP/s at N = 1..32, 16->16 backward-data 85-88 -> 126 at N = 128;
 *   - channel-lane Winograd F(4x4,3x3) (conv_wl4.c): forward, backward-data
 *     and weight gradient of 16->16 3x3 stride-1 pad-1 layers on 7x7 planes
 *     (wl4_pick), one sample at a time, channels in the zmm lanes;
 *     16->16 7x7 at batch 128, one thread: forward 133 -> 207 GFLOP/s,
 *     backward-data 129 -> 200 (over the F(2x2) batch lanes below), weight
 *     gradient with bias 92 -> 183;
 *   - tile-lane Winograd F(4x4,3x3) (conv_tl4.c): forward, backward-data
 *     and weight gradient of 8->8 3x3 stride-1 pad-1 layers on 14x14 planes
 *     (tl4_pick), one sample at a time, its 16 tiles in the zmm lanes;
 *     8->8 14x14 at batch 128, one thread: forward 88 -> 113-150 GFLOP/s,
 *     weight gradient 88 -> 82-126 (loaded machine);
 *   - batch-lane Winograd F(2x2,3x3) (conv_wlanes.c): forward and
 *     backward-data of 16->16 3x3 stride-1 pad-1 layers on 8x8 and 14x14
 *     planes (wlanes_pick; 7x7 before the F(4x4) path), whole groups of 16 samples in the zmm
 *     lanes, the samples left over with 16 tiles of one sample per zmm (same
 *     bits); 16->16 7x7 (EENet-8 f=4) at batch 128, one thread: forward
 *     99 -> 127 GFLOP/s, backward-data 98 -> 124;
 *   - polyphase data gradient (pd_pick) of 3x3 stride-2 pad-1 layers with
 *     C a multiple of 16: each parity phase of dinp is a stride-1
 *     K-vectorised forward of the padded dout with a 1x1/1x2/2x1/2x2
 *     sub-kernel (9 taps per (k, c) in all), interleaved into dinp;
 *     ResNet-20 32->64 16x16 at batch 32, one thread: 65 -> 82 GFLOP/s;
 *     with C, K <= 16 on the batch-lane path (lanes_pd_pick), EENet-8
 *     8->16 14x14 35 -> 64-69, 4->8 28x28 24 -> 48-50;
 *   - channel-lane stride 2 (conv_avx512.c eenet_conv_s2_fwd, eenet_conv_cl_bw):
 *     forward (s2_pick: 16-64 output channels, planes 14, 16 or 32 wide) and
 *     weight gradient (cw_pick: 16-32 output channels) of 3x3 stride-2 pad-1
 *     layers, one sample at a time, 16 output channels in the zmm lanes, the
 *     NCHW input read in place (no padded, phase-split or transposed copy),
 *     the products with padding skipped; EENet-8 8->16 14x14 at batch 128,
 *     one thread: forward 92 -> 111 GFLOP/s (same bits as the batch lanes),
 *     weight gradient 77 -> 104; ResNet-20 16->32 32x32 forward 80 -> 104,
 *     weight gradient 80 -> 92;
 *   - im2col + OpenBLAS sgemm: 1x1 convolutions (the GEMM is the whole work),
 *     backward-data of other strided layers (dcol = w^T dout, col2im), and every
 *     layer on CPUs without AVX-512 or other architectures (the portable
 *     fallback; plain C GEMM if built without OpenBLAS).
 *   Why: single-thread OpenBLAS sgemm reaches 57-98 GFLOP/s on these GEMM
 *   shapes (16x1024x144: 57, 64x64x576: 93; 103 on 2048^3), but im2col costs
 *   30-40% on top, so im2col+GEMM ran at 0.4-0.75x PyTorch's oneDNN (one
 *   thread) in forward and weight gradient of the ResNet-20 3x3 layers; the
 *   direct kernels run at 70-105 GFLOP/s there (0.9-1.3x).
 *   All paths: OpenMP over the batch (each thread whole samples or lane
 *   groups; OpenBLAS single-threaded inside), weight/bias gradients in
 *   per-thread partials in the workspace, reduced at the end (race-free, no
 *   atomics).  Lane groups are split evenly over the threads (the odd group
 *   goes per sample); when the samples do not split evenly over the threads
 *   (N = 1, 3, 7... in early-exit inference), the forward cuts each sample's
 *   output rows into one band per thread, so every thread is busy.
 *   - the naive references: direct loops with double accumulation.
 *
 * Threads and workspace: the workspace holds a shared part (packed weights,
 * tap offsets) and one slot per thread (planes, im2col columns, the thread's
 * partial dw/dbias).  Its layout depends on the sizes only (not on the CPU,
 * the chosen path or the thread count), so a workspace sized once always
 * fits.  eenet_conv2d_forward/backward use eenet_get_num_threads() threads, so
 * their workspace must be sized for at least that many; callers whose thread
 * count may grow after sizing (the engine sizes once at build time) call the
 * *_ex forms with the count they sized for: the kernels then use
 * min(that, eenet_get_num_threads(), N (backward only), work/2M MACs) threads
 * and never touch memory beyond the workspace.
 */
#include "kernels.h"

#include <limits.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "conv_direct.h"
#include "conv_winograd.h"
#include "gemm.h"

/* ---- sizes and the per-call plan --------------------------------------- */

int eenet_conv_out_size(int in, int k, int stride, int pad) {
    if (stride < 1 || k < 1 || pad < 0 || in + 2 * pad < k) {
        return 0;
    }
    return (in + 2 * pad - k) / stride + 1;
}

/* 0: automatic, 1: im2col+GEMM everywhere, 2: q-space direct wherever
 * possible, 3: as 2 with the weight gradient K-vectorised on q-space planes,
 * 4: Winograd (conv_winograd.c) for forward and backward-data of every 3x3
 * stride-1 pad-1 layer (AVX-512 where the CPU has it), 5: as 4 with the
 * portable C transforms and OpenBLAS, 6: the batch-lane path wherever
 * possible (every sample, partial groups included), the rest as 0, 7: the
 * batch-lane Winograd path (conv_wlanes.c) for forward and backward-data of
 * every 3x3 stride-1 pad-1 layer with C, K <= 16 (AVX-512), the rest as 0,
 * 8: the Winograd F(4x4,3x3) path (conv_wino4.c) for forward and backward-data
 * of every 3x3 stride-1 pad-1 layer on 32-wide planes (H a multiple of 8),
 * 16-wide planes (H a multiple of 16) and 8x8 planes (AVX-512), the rest as 0,
 * 9: the channel-lane Winograd F(4x4,3x3) path (conv_wl4.c) for forward,
 * backward-data and weight gradient of every 16->16 3x3 stride-1 pad-1 layer on planes with
 * 4 < H, W <= 8 (AVX-512), the rest as 0 (7 keeps F(2x2) batch lanes there),
 * 10: the tile-lane Winograd F(4x4,3x3) path (conv_tl4.c) for forward,
 * backward-data and weight gradient of every 3x3 stride-1 pad-1 layer with
 * C, K <= 16 on planes with 12 < H, W <= 16 (AVX-512), the rest as 0. */
static int conv_impl = 0;

int eenet_conv2d_set_impl(int impl) {
    int old = conv_impl;
    conv_impl = (impl >= 0 && impl <= 10) ? impl : 0;
    return old;
}

int eenet_conv2d_get_impl(void) { return conv_impl; }

/* Geometry of a direct (q-space) convolution, see conv_direct.h. */
typedef struct {
    int cin, h, w;      /* source (cin, h, w) */
    int s, ph, pw;      /* stride, padding rows/columns */
    int kh, kw;
    int hs, ws;         /* phase plane size */
    size_t plane;       /* floats per phase plane, zero tail included */
    size_t src;         /* floats of one sample's planes: cin*s*s*plane */
    int cout, ho, wo;
    int ntaps, nq;      /* cin*kh*kw taps; q vectors of 16 covering ho*ws */
    size_t ldq;         /* nq*16 */
} dgeom;

static void dgeom_init(dgeom *g, int cin, int h, int w, int cout, int kh, int kw, int s,
                       int ph, int pw) {
    g->cin = cin, g->h = h, g->w = w, g->s = s, g->ph = ph, g->pw = pw, g->kh = kh, g->kw = kw;
    g->hs = (h + 2 * ph + s - 1) / s;
    g->ws = (w + 2 * pw + s - 1) / s;
    g->cout = cout;
    g->ho = (h + 2 * ph - kh) / s + 1;
    g->wo = (w + 2 * pw - kw) / s + 1;
    g->ntaps = cin * kh * kw;
    g->nq = (int)(((size_t)g->ho * g->ws + 15) / 16);
    g->ldq = (size_t)g->nq * 16;
    size_t need = (size_t)g->hs * g->ws;
    size_t reach = (size_t)((kh - 1) / s) * g->ws + (size_t)((kw - 1) / s) + g->ldq;
    g->plane = eenet_round16(need > reach ? need : reach);
    g->src = (size_t)cin * s * s * g->plane;
}

/* Everything one call needs to know: sizes, chosen paths, workspace layout.
 * The layout depends on the sizes only (never on the CPU, the thread count
 * or the implementation switch), so a workspace sized once always fits. */
typedef struct {
    int N, C, H, W, K, kh, kw, s, p, Ho, Wo, ckk;
    int direct_ok;   /* q-space offsets fit in int: direct regions reserved */
    int bd_ok;       /* stride 1 and p <= k-1: backward-data as a direct conv */
    int use_fwd, use_bw, use_bd; /* q-space direct paths chosen for this call */
    int use_kf, use_kw, use_kd;  /* K-vectorised paths chosen for this call */
    int use_kwq;                 /* K-vectorised backward-weight on q-space planes */
    int lanes_ok;                /* C, K <= 16: batch-lane regions reserved */
    int use_lf, use_lw, use_ld;  /* batch-lane forward, weight gradient, data gradient */
    int use_cw;                  /* 3x3 s2 p1 weight gradient, channel lanes (cw_pick) */
    int use_sf;                  /* 3x3 s2 p1 forward, channel lanes, input in place
                                  * (s2_pick; not where w is not finite) */
    int wino_ok;                 /* 3x3, stride 1, pad 1: Winograd regions reserved */
    int use_wf, use_wd, wino_avx; /* Winograd forward / backward-data; its AVX-512 path */
    int use_ww;                  /* Winograd weight gradient */
    int w4_ok;                   /* Winograd F(4x4) possible (32/16-wide, 8x8 planes) */
    int use_qf;                  /* Winograd F(4x4) forward (conv_wino4.c) */
    int use_qd;                  /* ... and data gradient (a forward of dout) */
    int wl_ok;                   /* 3x3 s1 p1, C, K <= 16: batch-lane Winograd regions */
    int use_xf, use_xd;          /* batch-lane Winograd forward / backward-data */
    int y4_ok;                   /* channel-lane F(4x4) possible (conv_wl4.c) */
    int use_yf;                  /* channel-lane F(4x4) forward and backward-data */
    int use_yw;                  /* ... and its weight gradient */
    int t4_ok;                   /* tile-lane F(4x4) possible (conv_tl4.c) */
    int use_tf, use_td, use_tw;  /* its forward, backward-data, weight gradient */
    int kvf, pf, kvd, pd;        /* their register blocks (16*kv channels, P columns) */
    int hp, wp, hpd, wpd;        /* padded input (forward) and padded dout (backward-data) */
    int nb;          /* samples per backward-weight group (q-space planes) */
    int nbk;         /* samples per K-vectorised weight-gradient group (padded input) */
    dgeom g, gd;     /* forward geometry; backward-data geometry (dout planes) */
    /* shared region: packed weights and tap offsets (forward, backward-data) */
    size_t o_wp, o_off, o_wp2, o_off2, o_wk, o_offk, o_wk2, o_offk2, o_wino, o_offl, o_offl2;
    size_t o_wlu;    /* batch-lane Winograd: transformed weights (16, cin, cout) */
    int lt_nrc, lt_ncc; /* batch-lane forward tap classes of rows / columns (1, 1: none) */
    size_t lt_size;     /* floats of their tables (lanes_taps_build; 0: none) */
    size_t shared;
    /* per-thread slot */
    size_t s_src, s_dq, s_pdw, s_pdb, s_src2, s_yq2, s_col, s_xp, s_dyt, s_dp, s_tile, s_wino;
    size_t s_xl, s_dl, s_dxl, s_dwl; /* batch-lane buffers */
    size_t s_loff, s_lwp, s_llt;     /* batch-lane forward: the thread's own tap offsets, packed
                                      * weights and tap-subset tables */
    size_t s_wl, slot;               /* batch-lane Winograd slot */
    /* polyphase data gradient of 3x3 stride-2 pad-1 layers (pd_pick): the
     * four parity phases of dinp, each a stride-1 K -> C forward of the
     * padded dout with its 1, 2 or 4 taps per (k, c) */
    int pd_ok;                       /* 3x3, stride 2, pad 1: its regions reserved */
    int use_pd;                      /* chosen for this call */
    int pd_kv, pd_P[4];              /* register blocks: 16*kv channels, P columns per phase */
    int pd_fused;                    /* column phases stored straight into dinp (no planes) */
    size_t o_pdw[4], o_pdoff[4];     /* shared: per phase packed weights, tap offsets */
    size_t s_pdy, s_pdx[4];          /* slot: padded dout, the phase planes of dinp */
    int use_lpd;                     /* ... on the batch-lane path (C not a multiple of 16,
                                      * C, K <= 16; the same shared regions, packed per
                                      * eenet_conv_fwd_kblock) */
    size_t s_pdl[4];                 /* slot: its phase planes (C, hq, wq, 16) */
} conv_plan;

/* Classes of output positions along one axis by the kernel taps that read
 * the input (not padding): position o reads taps [lo, hi) with lo = max(0,
 * p - o*s), hi = min(k, n_in + p - o*s).  Returns the number of distinct
 * (lo, hi) pairs in order of first appearance (cls[o] = its class, lo/hi
 * per class, where non-NULL; room for 8), or 1 (one class, every tap) when
 * there would be more than 8. */
static int tap_classes(int n_out, int n_in, int k, int s, int p, int *cls, int *clo, int *chi) {
    int lo[8], hi[8], n = 0;
    for (int o = 0; o < n_out; o++) {
        int a = p - o * s, b = n_in + p - o * s;
        a = a < 0 ? 0 : a;
        b = b > k ? k : b;
        a = a > b ? b : a;
        int c = 0;
        while (c < n && !(lo[c] == a && hi[c] == b)) {
            c++;
        }
        if (c == n) {
            if (n == 8) {
                n = 0;
                break;
            }
            lo[n] = a, hi[n] = b, n++;
        }
        if (cls) {
            cls[o] = c;
        }
    }
    if (n == 0) { /* too many classes: one, every tap */
        for (int o = 0; cls && o < n_out; o++) {
            cls[o] = 0;
        }
        lo[0] = 0, hi[0] = k, n = 1;
    }
    for (int c = 0; c < n; c++) {
        if (clo) {
            clo[c] = lo[c];
        }
        if (chi) {
            chi[c] = hi[c];
        }
    }
    return n;
}

static void plan_init(conv_plan *pl, int N, int C, int H, int W, int K, int kh, int kw, int s,
                      int p) {
    memset(pl, 0, sizeof *pl);
    pl->N = N, pl->C = C, pl->H = H, pl->W = W, pl->K = K, pl->kh = kh, pl->kw = kw;
    pl->s = s, pl->p = p;
    pl->Ho = eenet_conv_out_size(H, kh, s, p);
    pl->Wo = eenet_conv_out_size(W, kw, s, p);
    pl->ckk = C * kh * kw;
    dgeom_init(&pl->g, C, H, W, K, kh, kw, s, p, p);
    pl->bd_ok = (s == 1 && p <= kh - 1 && p <= kw - 1);
    pl->hp = H + 2 * p, pl->wp = W + 2 * p;
    pl->hpd = pl->Ho + 2 * (kh - 1 - p), pl->wpd = pl->Wo + 2 * (kw - 1 - p);
    if (pl->bd_ok) {
        dgeom_init(&pl->gd, K, pl->Ho, pl->Wo, C, kh, kw, 1, kh - 1 - p, kw - 1 - p);
    }
    pl->direct_ok = pl->g.src < (size_t)1 << 30 && (!pl->bd_ok || pl->gd.src < (size_t)1 << 30) &&
                    (size_t)C * (H + 2 * p) * (W + 2 * p) < (size_t)1 << 30 &&
                    (size_t)K * (pl->Ho + 2 * kh) * (pl->Wo + 2 * kw) < (size_t)1 << 30;
    pl->nb = 1;
    if (pl->direct_ok) {
        int nb = (64 + pl->g.nq - 1) / pl->g.nq;
        pl->nb = nb < 1 ? 1 : nb > 8 ? 8 : nb;
    }
    /* the K-vectorised weight gradient sums >= 256 positions in registers
     * before touching dw (64->64 8x8: 4 samples) */
    {
        int howo = pl->Ho * pl->Wo;
        int nbk = howo > 0 ? (256 + howo - 1) / howo : 1;
        pl->nbk = nbk < 1 ? 1 : nbk > 8 ? 8 : nbk;
    }
    size_t ntaps = (size_t)pl->ckk;
    size_t at = 0;
    if (pl->direct_ok) {
        pl->o_wp = at, at += eenet_round16((size_t)K * ntaps);
        pl->o_off = at, at += eenet_round16(ntaps);
        if (pl->bd_ok) {
            pl->o_wp2 = at, at += eenet_round16((size_t)C * pl->gd.ntaps);
            pl->o_off2 = at, at += eenet_round16((size_t)pl->gd.ntaps);
        }
    }
    if (pl->direct_ok) {
        pl->o_wk = at, at += eenet_round16((size_t)K * ntaps);
        pl->o_offk = at, at += eenet_round16(ntaps);
        if (pl->bd_ok) {
            pl->o_wk2 = at, at += eenet_round16((size_t)C * K * kh * kw);
            pl->o_offk2 = at, at += eenet_round16((size_t)K * kh * kw);
        }
    }
    /* Winograd buffers only up to 128 channels (the automatic choice stops
     * at 64): 512->512 layers would reserve ~16 MB of transformed weights
     * plus 20 MB per thread for a path they never take */
    pl->wino_ok = kh == 3 && kw == 3 && s == 1 && p == 1 && C <= 128 && K <= 128;
    size_t wino_shared = 0, wino_slot = 0;
    if (pl->wino_ok) {
        eenet_wino_sizes(C, K, H, W, &wino_shared, &wino_slot);
        /* the F(4x4) path (32/16-wide and 8x8 planes) shares these regions: one
         * Winograd path runs at a time */
        pl->w4_ok = eenet_wino4_ok(H, W);
        if (pl->w4_ok) {
            size_t sh4 = 0, sl4 = 0;
            eenet_wino4_sizes(C, K, H, W, &sh4, &sl4);
            wino_shared = sh4 > wino_shared ? sh4 : wino_shared;
            wino_slot = sl4 > wino_slot ? sl4 : wino_slot;
        }
        pl->o_wino = at, at += eenet_round16(wino_shared);
    }
    /* batch-lane path (few channels): tap offsets of the padded input and of
     * the padded dout, in floats */
    pl->lanes_ok = pl->direct_ok && C <= 16 && K <= 16;
    if (pl->lanes_ok) {
        pl->o_offl = at, at += eenet_round16(ntaps);
        pl->o_offl2 = at, at += eenet_round16((size_t)K * kh * kw);
        /* tap subsets of the forward where kernel rows / columns read padding:
         * class tables, then per class pair the kept taps' offsets and their
         * indices in the full list */
        pl->lt_nrc = tap_classes(pl->Ho, H, kh, s, p, NULL, NULL, NULL);
        pl->lt_ncc = tap_classes(pl->Wo, W, kw, s, p, NULL, NULL, NULL);
        /* column classes cut a row's tiles at the edges (more, shorter tile
         * calls): only from 36 taps, where the calls' fixed cost is small
         * (1 thread, batch 32/128, GFLOP/s, full taps -> column and row
         * classes: 8->16 14x14 s2 81.6/82.7 -> 85.6/89.5, 8->8 7x7
         * 80.0/87.8 -> 84.8/103.9, 8->8 14x14 92.6/92.7 -> 94.8/100.4, but
         * 1->4 28x28 49.0/47.0 -> 47.1/46.1) */
        if (ntaps < 36) {
            pl->lt_ncc = 1;
        }
        size_t nq = (size_t)pl->lt_nrc * pl->lt_ncc;
        pl->lt_size = nq > 1 ? eenet_round16((size_t)pl->Ho + pl->Wo + nq) +
                                   2 * nq * eenet_round16(ntaps)
                             : 0;
    }
    /* batch-lane Winograd regions only for planes up to 32x32 (it is chosen
     * on 7x7..14x14): its group buffers grow with 16 * channels * plane */
    pl->wl_ok = pl->wino_ok && pl->lanes_ok && (size_t)H * W <= 32 * 32;
    size_t wl_shared = 0, wl_slot = 0;
    if (pl->wl_ok) {
        eenet_wlanes_sizes(C, K, H, W, &wl_shared, &wl_slot);
        /* the channel-lane F(4x4) path (conv_wl4.c) shares these regions */
        pl->y4_ok = eenet_wl4_ok(C, K, H, W);
        if (pl->y4_ok) {
            size_t sh4 = 0, sl4 = 0;
            eenet_wl4_sizes(C, K, H, W, &sh4, &sl4);
            wl_shared = sh4 > wl_shared ? sh4 : wl_shared;
            wl_slot = sl4 > wl_slot ? sl4 : wl_slot;
        }
        /* and the tile-lane F(4x4) path (conv_tl4.c) */
        pl->t4_ok = eenet_tl4_ok(C, K, H, W);
        if (pl->t4_ok) {
            size_t sh4 = 0, sl4 = 0;
            eenet_tl4_sizes(C, K, H, W, &sh4, &sl4);
            wl_shared = sh4 > wl_shared ? sh4 : wl_shared;
            wl_slot = sl4 > wl_slot ? sl4 : wl_slot;
        }
        pl->o_wlu = at, at += eenet_round16(wl_shared);
    }
    pl->pd_ok = pl->direct_ok && s == 2 && kh == 3 && kw == 3 && p == 1;
    if (pl->pd_ok) {
        for (int q = 0; q < 4; q++) {
            size_t nt = (size_t)K * (q / 2 == 0 ? 1 : 2) * (q % 2 == 0 ? 1 : 2);
            pl->o_pdw[q] = at, at += eenet_round16((size_t)C * nt);
            pl->o_pdoff[q] = at, at += eenet_round16(nt);
        }
    }
    pl->shared = at;
    at = 0;
    if (pl->direct_ok) {
        pl->s_src = at, at += (size_t)pl->nb * pl->g.src;
        pl->s_dq = at, at += (size_t)pl->nb * eenet_round16((size_t)K * pl->g.ldq);
        if (pl->bd_ok) {
            pl->s_src2 = at, at += pl->gd.src;
            pl->s_yq2 = at, at += eenet_round16((size_t)C * pl->gd.ldq);
            pl->s_dp = at, at += eenet_round16((size_t)K * pl->hpd * pl->wpd);
        }
        pl->s_xp = at, at += (size_t)pl->nbk * eenet_round16((size_t)C * pl->hp * pl->wp);
        pl->s_dyt = at, at += (size_t)(pl->nb > pl->nbk ? pl->nb : pl->nbk) *
                              eenet_round16((size_t)K * pl->Ho * pl->Wo);
        pl->s_tile = at, at += 16 * 16 * 2;
    }
    if (pl->lanes_ok) {
        /* one group of 16 samples: padded input, dout (padded for the data
         * gradient; the forward's output), data gradient, lane partial dw */
        size_t dl = (size_t)pl->Ho * pl->Wo;
        if (pl->bd_ok && (size_t)pl->hpd * pl->wpd > dl) {
            dl = (size_t)pl->hpd * pl->wpd;
        }
        if (pl->pd_ok) {
            /* the polyphase data gradient pads dout by 1 on each side */
            dl = (size_t)(pl->Ho + 2) * (pl->Wo + 2);
        }
        pl->s_xl = at, at += 16 * (size_t)C * pl->hp * pl->wp;
        pl->s_dl = at, at += 16 * (size_t)K * dl;
        pl->s_dxl = at, at += pl->bd_ok ? 16 * (size_t)C * H * W : 0;
        if (pl->pd_ok) {
            for (int q = 0; q < 4; q++) {
                int hq = q / 2 == 0 ? (H + 1) / 2 : H / 2, wq = q % 2 == 0 ? (W + 1) / 2 : W / 2;
                pl->s_pdl[q] = at, at += 16 * (size_t)C * hq * wq;
            }
        }
        pl->s_dwl = at, at += 16 * (size_t)K * ntaps;
        pl->s_loff = at, at += eenet_round16(ntaps);
        pl->s_lwp = at, at += eenet_round16((size_t)K * ntaps);
        pl->s_llt = at, at += pl->lt_size;
    }
    pl->s_pdw = at, at += eenet_round16((size_t)K * ntaps);
    pl->s_pdb = at, at += eenet_round16((size_t)K);
    pl->s_col = at, at += eenet_round16(ntaps * (size_t)pl->Ho * pl->Wo);
    if (pl->wino_ok) {
        pl->s_wino = at, at += eenet_round16(wino_slot);
    }
    if (pl->wl_ok) {
        pl->s_wl = at, at += eenet_round16(wl_slot);
    }
    if (pl->pd_ok) {
        /* dout padded by one zero row/column on each side; phase (a, b) of
         * dinp is (C, hph[a], wph[b]) */
        pl->s_pdy = at, at += eenet_round16((size_t)K * (pl->Ho + 2) * (pl->Wo + 2));
        for (int q = 0; q < 4; q++) {
            int hq = q / 2 == 0 ? (H + 1) / 2 : H / 2, wq = q % 2 == 0 ? (W + 1) / 2 : W / 2;
            pl->s_pdx[q] = at, at += eenet_round16((size_t)C * hq * wq);
        }
    }
    pl->slot = at;
}

size_t eenet_conv2d_workspace_floats(int N, int C, int H, int W, int K, int kh, int kw,
                                     int stride, int pad, int nthreads) {
    if (nthreads < 1) {
        nthreads = 1;
    }
    if (C < 1 || H < 1 || W < 1 || K < 1 || kh < 1 || kw < 1 || stride < 1 || pad < 0 ||
        eenet_conv_out_size(H, kh, stride, pad) < 1 ||
        eenet_conv_out_size(W, kw, stride, pad) < 1) {
        return 0;
    }
    conv_plan pl;
    plan_init(&pl, N < 1 ? 1 : N, C, H, W, K, kh, kw, stride, pad);
    return pl.shared + (size_t)nthreads * pl.slot;
}

/* Validate sizes shared by every entry point; sets Ho, Wo. */
static eenet_status check_sizes(int N, int C, int H, int W, int K, int kh, int kw, int stride,
                                int pad, int *Ho, int *Wo) {
    if (N < 1 || C < 1 || H < 1 || W < 1 || K < 1 || kh < 1 || kw < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "conv2d: sizes must be >= 1, got N=%d C=%d H=%d W=%d K=%d "
                               "kh=%d kw=%d",
                               N, C, H, W, K, kh, kw);
    }
    if (stride < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "conv2d: stride must be >= 1, got %d", stride);
    }
    if (pad < 0) {
        return eenet_set_error(EENET_ERR_VALUE, "conv2d: padding must be >= 0, got %d", pad);
    }
    if (kh > H + 2 * pad || kw > W + 2 * pad) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "conv2d: kernel %dx%d larger than padded input %dx%d", kh, kw,
                               H + 2 * pad, W + 2 * pad);
    }
    *Ho = eenet_conv_out_size(H, kh, stride, pad);
    *Wo = eenet_conv_out_size(W, kw, stride, pad);
    /* every per-sample extent must fit the int sizes of the kernels and BLAS */
    size_t ckk = (size_t)C * kh * kw;
    if ((size_t)H * W > INT_MAX / 4 || (size_t)*Ho * *Wo > INT_MAX / 4 ||
        ckk > INT_MAX / 4 || (size_t)K * ckk > INT_MAX / 4 || (size_t)C * H * W > INT_MAX / 4 ||
        (size_t)K * *Ho * *Wo > INT_MAX / 4 || (size_t)stride * (H + 2 * (size_t)pad) > INT_MAX / 4) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "conv2d: sizes too large (C=%d H=%d W=%d K=%d kernel %dx%d)", C,
                               H, W, K, kh, kw);
    }
    return EENET_OK;
}

/* The thread count setting, or 1 when built without OpenMP: the kernels
 * split work by omp_get_thread_num() and reduce nt per-thread partials, so
 * nt must be the number of threads that really run (eenet_get_num_threads()
 * returns the setting, 2 after set_num_threads(2), even without OpenMP). */
static int conv_max_threads(void) {
#ifdef _OPENMP
    return eenet_get_num_threads();
#else
    return 1;
#endif
}

/* Multiply-adds a convolution needs per thread it uses.  With eenet's default
 * bounded spin (GOMP_SPINCOUNT, see eenet/__init__.py) a waiting worker starts
 * within microseconds.  Measured (2 threads, EENet-8 layers, batch 128,
 * GFLOP/s, 2M -> 0.5M): 4->8 14x14 stride 2 forward 67 -> 121-123 (it ran on
 * one thread: 1.8M multiply-adds), 2->4 28x28 stride 2 forward 48-49 ->
 * 72-94, 8->16 1x1 stride 2 forward 31 -> 60; EENet-8 training step at 2
 * threads 27-28k -> 36-37k images/s (batch 32) and 38-41k -> 46-52k (batch
 * 128).  0.25M was mixed (batch 128 training 36-40k). */
#define CONV_MACS_PER_THREAD 5e5

/* At most t threads, and at most one per CONV_MACS_PER_THREAD of the work
 * (tiny convolutions are faster on one thread); at least 1. */
static int bound_by_work(int t, const conv_plan *pl) {
    double macs = (double)pl->N * pl->K * pl->Ho * pl->Wo * (double)pl->ckk;
    double by_work = 1.0 + macs / CONV_MACS_PER_THREAD;
    if ((double)t > by_work) {
        t = (int)by_work;
    }
    return t < 1 ? 1 : t;
}

/* Threads to use: the caller's bound (the workspace's slots), the global
 * setting, the batch, and the work (bound_by_work). */
static int pick_threads(int nthreads_ws, const conv_plan *pl, int split_rows) {
    int t = conv_max_threads();
    if (nthreads_ws >= 1 && t > nthreads_ws) {
        t = nthreads_ws;
    }
    if (!split_rows && t > pl->N) {
        t = pl->N;
    }
    return bound_by_work(t, pl);
}

/* Threads for the Winograd path: as pick_threads but not bounded by the
 * batch (it splits tile rows across samples; conv_winograd.c bounds by its
 * block count). */
static int pick_threads_wino(int nthreads_ws, const conv_plan *pl) {
    int t = conv_max_threads();
    if (nthreads_ws >= 1 && t > nthreads_ws) {
        t = nthreads_ws;
    }
    return bound_by_work(t, pl);
}

static int is_pointwise(int kh, int kw, int stride, int pad) {
    return kh == 1 && kw == 1 && stride == 1 && pad == 0;
}

/* Choose the paths of this call (measured on Zen 4, see the file header). */
/* Largest column tile P <= pmax among the kernels' 16, 14, 8, 7, 4 that
 * divides wo, or 0. */
static int pick_cols(int wo, int pmax) {
    static const int cand[5] = {16, 14, 8, 7, 4};
    for (int i = 0; i < 5; i++) {
        if (cand[i] <= pmax && wo % cand[i] == 0) {
            return cand[i];
        }
    }
    return 0;
}

/* Whether the batch-lane path wins for op 0 forward, 1 weight gradient,
 * 2 data gradient.  Measured (1 thread, Zen 4, batch 128, GFLOP/s lanes vs
 * the per-sample path chosen before): forward 4->8 3x3 s2 14x14 67 vs 36,
 * 8->8 7x7 86 vs 59, 8->8 14x14 91 vs 66, 8->16 s2 84 vs 79, 16->16 32x32
 * 90 vs 72, 3->16 32x32 54 vs 48; weight gradient 4->8 s2 14x14 56 vs 33,
 * 8->8 7x7 76 vs 50, 8->8 14x14 89 vs 63, 8->16 s2 72 vs 63 but 16->16
 * 7x7 76 vs 89 (K-vectorised on q-space planes); data gradient 8->8 7x7
 * 83 vs 40, 16->16 7x7 95 vs 88 but 16->16 32x32 76 vs 83; 1x1 stride 2
 * (im2col+GEMM before) forward 2->4 28x28 9.6 vs 9.1, 8->16 14x14 28.5 vs
 * 23.0, weight gradient 2->4 10.2 vs 3.8, 8->16 31.7 vs 16.6. */
static int lanes_pick(const conv_plan *pl, int op) {
    if (pl->kh * pl->kw == 1) {
        /* strided 1x1 (the shortcut projections): lanes fill only the rows
         * read; a stride-1 1x1 is one GEMM on the input as it is */
        return pl->s > 1 && pl->p == 0;
    }
    if (op == 1) {
        /* 1-2 input channels (9-18 taps), stride 1: the q-space kernel
         * wins (1->2 28x28 48 vs 42, 2->2 54 vs 40, 1->4 54 vs 45 GFLOP/s);
         * stride 2 not (2->4 28x28 s2: lanes 49 vs 36) */
        return pl->C * pl->K <= 128 && (pl->ckk >= 27 || pl->s > 1);
    }
    if (op == 2) {
        return pl->C * pl->K < 256 || pl->W % 8 != 0;
    }
    /* (8->16 14x14 s2, EENet-8 f=4, forward: a polyphase batch-lane Winograd,
     * F(4,2) + F(3,2) on the even phase of each axis and the odd phase
     * direct, 256 instead of 441 products per channel pair, measured 16.3 us
     * per group of 16 samples against 16.9 us for the direct lanes kernel,
     * plus 1.7 us per call for its weights and 2-3x the direct error: not
     * used; the direct lanes kernel runs at ~93% of the FMA peak, and the
     * transforms (8 input, 16 output channels) cost what the products save.
     * Code on branch lead-pw, csrc/kernels/conv_pw.c.) */
    /* forward: the lanes win everywhere but on the 3-channel image layers of
     * 32-wide planes, where the q-space kernel's rows of 8 fit (1 thread, CPU
     * time, GFLOP/s, q-space vs lanes: 3->16 32x32 batch 16 73 vs 59, batch 32
     * 70 vs 60, batch 128 62 vs 62; 3->8 70 vs 62; 3->4 66 vs 56) */
    return !(pl->C == 3 && pl->s == 1 && pl->W >= 32 && pl->W % 8 == 0);
}

/* Whether the forward of a 3x3 stride-2 pad-1 layer runs eenet_conv_s2_fwd:
 * one sample at a time, the output channels in the lanes, the input read in
 * place, tiles of up to 16 output positions transposed in registers.
 * Measured (Zen 4; the same bits as the paths it replaces on these shapes):
 *   EENet-8 f=4 8->16 14x14 (batch-lane forward with its tap classes
 *     before): 1 thread, CPU time, batch 128, best of 100 x 20 calls:
 *     156.7 -> 129.9 us (92 -> 111 GFLOP/s; the batch-lane kernel spent
 *     ~18% of its time transposing 16 samples into and out of the lanes);
 *     2 threads, wall clock, other processes paused, the two builds' calls
 *     alternated in one process, median of 300 x 5: batch 128 84.3 -> 70.0
 *     us (207 GFLOP/s), 32 30.8 -> 23.4, 5 9.0 -> 7.3, 1 3.6 -> 3.4 (batches
 *     below 16 took the per-sample q-space path before);
 *   ResNet-20 16->32 32x32 and 32->64 16x16 (K-vectorised kernel on a
 *     padded copy before): 1 thread, CPU time, batch 128, best of 60:
 *     80.5 -> 104.5 and 98.8 -> 119.8 GFLOP/s; 2 threads, wall clock, quiet,
 *     alternated, median of 60: batch 128 2033 -> 1767 and 1547 -> 1312 us,
 *     batch 32 498 -> 365 and 475 -> 367 us.
 * Not measured beyond 64 channels: larger layers keep the other paths.
 * Each thread takes a fixed run of tiles: a dynamic schedule (chunks of 1, 2
 * or 4 samples) measured 106, 86 and 79 us against 70.5 us static on
 * 8->16 14x14 at batch 128, 2 threads (a sample's input and output then move
 * between the cores' caches from call to call). */
static int s2_pick(const conv_plan *pl) {
    return pl->kh == 3 && pl->kw == 3 && pl->s == 2 && pl->p == 1 && pl->K % 16 == 0 &&
           pl->C <= 64 && pl->K <= 64 && eenet_conv_s2_ok(pl->H, pl->W);
}

/* Whether the weight gradient of a 3x3 stride-2 pad-1 layer runs
 * eenet_conv_cl_bw: per sample, dout transposed to (positions, K), the sums
 * of 2 input channels' 18 taps x 16 output channels in registers over the
 * positions, the input read in place and the taps that read padding
 * skipped.  Measured (Zen 4, 1 thread, CPU time, batch 128, best of 60
 * alternated calls, GFLOP/s, path before -> this): 8->16 14x14 (batch
 * lanes) 77.3 -> 104.1, batch 32 58.2 -> 94.1; 16->32 32x32 (K-vectorised
 * on a padded copy) 80.5 -> 91.7; but 32->64 16x16 89.7 -> 86.8 (that
 * kernel shares each broadcast pixel between 64 channels): K <= 32 only.
 * 2 threads, wall clock, others paused, best of 60: 8->16 14x14 batch 128
 * 126.5 -> 86.5 us, batch 32 31.8 -> 21.7 us; 16->32 32x32 batch 128 2012
 * -> 1668 us, batch 32 402 -> 348 us.  The sums run in another order than
 * before (dw moves by rounding, ~3e-6 of its largest entry). */
static int cw_pick(const conv_plan *pl) {
    return pl->kh == 3 && pl->kw == 3 && pl->s == 2 && pl->p == 1 && pl->K % 16 == 0 &&
           pl->K <= 32 && pl->C <= 64 && pl->H % 2 == 0 && pl->W % 2 == 0;
}

/* Zero the border (ph rows, pw columns on each side) of a lane-layout
 * buffer (cin, hp, wp, 16); lanes_in overwrites the interior of every group
 * (the rows it skips are never read), so this is all the zeroing needed. */
static void lanes_zero_border(float *xl, int cin, int hp, int wp, int ph, int pw) {
    if (ph == 0 && pw == 0) {
        return;
    }
    size_t row = 16 * (size_t)wp;
    for (int c = 0; c < cin; c++) {
        for (int y = 0; y < hp; y++) {
            float *r = xl + ((size_t)c * hp + y) * row;
            if (y < ph || y >= hp - ph) {
                memset(r, 0, sizeof(float) * row);
            } else if (pw > 0) {
                memset(r, 0, sizeof(float) * 16 * (size_t)pw);
                memset(r + row - 16 * (size_t)pw, 0, sizeof(float) * 16 * (size_t)pw);
            }
        }
    }
}

/* Input rows the lane path must fill: every row, or every s-th for a 1x1
 * stride-s convolution without padding (it reads no others). */
static int lanes_ystep(const conv_plan *pl) {
    return (pl->kh == 1 && pl->p == 0) ? pl->s : 1;
}

/* Samples run on the batch-lane path: whole groups of 16 (every sample with
 * conv_impl 6), as many groups as split evenly over nt threads; the rest
 * take the per-sample path (split by samples, so both threads stay busy). */
static int lanes_count(const conv_plan *pl, int nt) {
    if (conv_impl == 6) {
        return pl->N;
    }
    int ng = pl->N / 16;
    if (nt > 1) {
        ng -= ng % nt;
    }
    return 16 * ng;
}

/* Winograd in the automatic dispatch.  Measured (1 thread CPU time, Zen 4,
 * batch 128, ms forward / backward-data, direct paths -> Winograd):
 * 64->64 8x8 5.57/5.62 -> 3.38/3.49; 32->32 16x16 5.91/6.01 -> 4.56/4.26;
 * 32->32 8x8 1.42/1.42 -> 1.06/1.13; 32->32 32x32 24.3/27.0 -> 18.5/19.8;
 * 16->32 16x16 3.08/3.48 -> 2.75/2.40; 16->16 16x16 1.63/1.74 -> 1.52/1.46;
 * 16->16 8x8 0.42/0.59 -> 0.38/0.41; 16->16 32x32 6.96/7.24 -> 6.83/7.45
 * (even); but 16->16 14x14 1.13/1.15 -> 1.54/1.64, 16->16 28x28
 * 4.82/5.04 -> 5.92/5.87, 16->16 7x7 (batch 32) 0.076/0.078 -> 0.091/0.100.
 * The transforms cost ~(C+K) per tile against the GEMMs' ~C*K, and fill
 * the vector lanes fully when a tile row has 4 or 8 tiles (several rows
 * stacked per vector) or a multiple of 16, partly otherwise (tw/16 of the
 * lanes for tw < 16): Winograd where tw is 4 or 8, else where
 * C*K/(C+K) times the lanes' fill is >= 8.  Only measured from 16 to 64
 * channels (ResNet-20/EENet-20 sizes): larger ones keep the direct
 * kernels.  The choice never depends on the batch size: every path computes
 * a sample the same way at any batch, so batched early-exit inference gives
 * bit-identical results to one sample at a time (test_net.py), which a
 * batch-dependent switch would break (64->64 8x8 at batch 1 is 1.08x slower
 * with Winograd: its weight transform is not amortised). */
static int wino_auto(const conv_plan *pl) {
    int tw = (pl->W + 1) / 2;
    double fill = tw >= 16 ? (double)tw / (16.0 * ((tw + 15) / 16)) : tw / 16.0;
    double ck = (double)pl->C * pl->K / ((double)pl->C + pl->K);
    return pl->C >= 16 && pl->K >= 16 && pl->C <= 64 && pl->K <= 64 &&
           (tw == 4 || tw == 8 || ck * fill >= 8.0);
}

/* Winograd weight gradient in the automatic dispatch (on top of wino_auto).
 * Measured (1 thread CPU time, Zen 4, batch 128, ms, paths before ->
 * Winograd): 64->64 8x8 6.01 -> 4.34, 32->32 8x8 1.72 -> 1.32, 32->32
 * 16x16 6.42 -> 5.47, 64->64 8x8 batch 8 0.42 -> 0.33; but 16->32 16x16
 * 3.57 -> 4.01, 16->16 32x32 6.69 -> 12.5 (16 channels in the lanes: the
 * broadcasts and the gathered output-gradient transform dominate), 32->32
 * 32x32 24.0 -> 25.8 (16-tile rows, not stacked). */
static int wino_auto_dw(const conv_plan *pl) {
    int tw = (pl->W + 1) / 2;
    return pl->K % 16 == 0 && pl->K >= 32 && pl->C >= 32 && (tw == 4 || tw == 8);
}

/* Whether the batch-lane Winograd path (conv_wlanes.c) replaces the paths
 * above for the forward and the data gradient.  Measured (1
 * thread CPU time, min of 15, Zen 4, GFLOP/s of the direct convolution's
 * multiply-adds, paths before -> batch-lane Winograd, forward / backward-data,
 * N = batch):
 *   16->16 7x7 (EENet-8 f=4 b3): N=1 45.3->47.3 / 38.5->42.4, N=5 77.8->79.8 /
 *     72.8->75.3, N=17 89.5->100.0 / 85.4->96.9, N=32 95.8->111.7 /
 *     92.2->108.9, N=128 99.4->126.8 / 97.6->124.2 (a 7x7 plane takes 16
 *     tiles for 49 outputs; the products no stored output reads are skipped);
 *   16->16 8x8: N=1 48.5->57.6 / 35.1->51.6, N=5 69.4->107.2 / 55.1->99.9,
 *     N=32 89.3->129.5 / 62.3->110.4, N=128 88.5->125.5 / 63.5->113.8;
 *   16->16 14x14: N=1 79.5->72.8 / 72.7->68.3 (the one loss: 49 tiles in 4
 *     vectors of 16), N=5 94.4->101.2 / 90.4->97.1, N=17 98.8->139.0 /
 *     96.2->136.3, N=128 101.2->158.7 / 98.7->156.6.
 * (16->16 7x7 now takes the F(4x4) path of wl4_pick, faster still.)
 * Not chosen (earlier versions of this path, same op counts): 8->8 7x7
 * (0.71-0.83x forward), 8->8 14x14 (0.70-1.01x), 4->4 14x14/28x28
 * (0.33-0.77x: with few channels the transforms, O(C+K) per tile, outweigh
 * the saved products, O(C*K)), 16->16 16x16 and 32x32 (0.65-0.78x at N=1-5:
 * the per-sample tile mode of wider planes gathers), 8->16 and 16->8 7x7
 * (0.86-1.16x, mixed).  Like wino_auto, never looks at N (a sample's bits do
 * not depend on its batch: group and tile mode compute it the same way) nor
 * at the thread count. */
static int wlanes_pick(const conv_plan *pl) {
    return pl->C == 16 && pl->K == 16 && pl->H == pl->W &&
           (pl->W == 7 || pl->W == 8 || pl->W == 14);
}

/* 16x16 planes (ResNet/EENet CIFAR stage 2) with 16..64 channels: F(4x4)
 * (16 tiles of 4x4 outputs, one plane per vector of 16 tiles) over F(2x2)
 * (wino_auto) for the data gradient, and for the forward of 16->32, 32->16
 * and 32->32.  Measured (1 thread, thread CPU time, best of 15x3, GFLOP/s of
 * 2*N*K*C*9*H*W, C-level eenet_conv2d_forward_ex / backward_ex (dw = NULL)
 * into preallocated buffers, F(2x2) -> F(4x4), forward / backward-data; load
 * average ~2.5, the figures move +-25% between runs, the ratio holds):
 *   32->32: N=128 87.8-134.1 -> 154.8-190.1 / 86.4-127.0 -> 151.7-204.8,
 *     N=32 126.6-155.5 -> 208.5-264.5 / 127.0-155.3 -> 209.4-261.2, N=8
 *     147.8 -> 215.7 / 145.8 -> 214.0, N=1 63.4 -> 80.3 / 63.5 -> 80.9;
 *   N=128: 16->16 110.9 -> 199.6 / 107.8 -> 189.1, 16->32 112.8 -> 169.8 /
 *     122.4 -> 201.5, 32->16 89.0 -> 138.5 / 81.4 -> 132.6, 64->64 155.1 ->
 *     251.0 / 166.6 -> 253.7;
 *   benchmarks/kernels.py --threads 1 --clock cpu --stat min --nets resnet20
 *     (load average 3.2-3.5, two runs each, main ce2a4d9 -> this, GFLOP/s
 *     and torch ratio), 32->32 16x16: N=32 forward 155.9-156.9 (1.45-1.46)
 *     -> 250.4-254.0 (2.31), backward-data 151.5-152.1 (1.41-1.42) ->
 *     240.4-242.3 (2.27-2.32); N=128 forward 127.9-134.7 (1.39-1.43) ->
 *     149.7-183.5 (1.79-1.95), backward-data 123.6-131.5 (1.38-1.39) ->
 *     183.0-208.7 (1.96-2.03);
 *   2 threads, wall clock (kernels.py --threads 2, median, load average
 *     0.7-1.5, not a quiet machine; two runs each, main ce2a4d9 -> this),
 *     32->32 16x16: N=128 forward 229-257 GFLOP/s (torch ratio 1.45-1.51)
 *     -> 329-401 (2.08-2.15), backward-data 185-199 (1.35-1.37) -> 332-400
 *     (2.02-2.33); N=32 forward 206-226 (1.22-1.30) -> 413-420 (2.30-2.32),
 *     backward-data 214-217 (1.28-1.41) -> 367-403 (2.08-2.32).
 * Accuracy (worst error over the tests' tolerance rtol 1e-4 + atol 1e-5 x
 * max|ref|, x, w, dy standard normal, 4 samples, 20 seeds for 32->32, 8 for
 * the others; F(4x4) forward / backward-data, F(2x2) in brackets): 32->32
 * 0.138 / 0.153 (0.026 / 0.031), 16->16 0.138 / 0.093 (0.020 / 0.031),
 * 64->64 0.178 / 0.244 (0.031 / 0.028), 16->32 0.127 / 0.120, 32->16 0.147
 * / 0.101.
 * The forward of 16->16 and 64->64 is NOT chosen although faster:
 *   - 16->16: the eenet20 (3x16x16) gradient test against float64
 *     (tests/test_net.py) sees the stem's weight gradient 1.10x its tolerance
 *     at one element (0.44 with F(2x2) forward; 0.43 with F(4x4) data
 *     gradient alone).  Not a kink: flipping any of its nearest ReLU inputs
 *     (1.3e-6 of their tensor's max from 0) in float64 moves that gradient by
 *     90-2100x the tolerance; the larger forward rounding error of F(4x4),
 *     carried through train-mode batch norm of 6 samples, is enough;
 *   - 64->64 (eenet50 at 3x64x64, stage 1 after the max pool): a ReLU input
 *     9.6e-8 of its tensor's max from 0 changes side; flipping it in float64
 *     reproduces eenet's whole gradient shift (relative norm 4.4e-4, cosine
 *     1.000), and test_bottleneck_model_matches_torch wants 90% of each
 *     gradient within rtol 1e-4 (torch's own float32 run: 1.2e-2 off).
 * set_impl 8 forces F(4x4) on every 16-wide plane with H a multiple of 16.
 * Like wino4_pick, never looks at N nor at the thread count. */
static int wino4_pick16(const conv_plan *pl, int bd) {
    int fwd = pl->C <= 32 && pl->K <= 32 && pl->C * pl->K > 16 * 16;
    return pl->C >= 16 && pl->K >= 16 && pl->C <= 64 && pl->K <= 64 && pl->H == 16 &&
           pl->W == 16 && (bd || fwd);
}

/* 8x8 planes (ResNet/EENet CIFAR stage 3) with 32..64 channels: F(4x4) for
 * the data gradient only, a group of 16 tiles being the 2x2 tiles of one
 * channel plane of 4 consecutive samples (a batch of N fills N/4 groups; the
 * tail group's missing samples are computed on zeros and not stored).
 * Measured (as wino4_pick16; F(2x2) -> F(4x4), forward / backward-data):
 *   64->64: N=128 179.3 -> 326.1 / 174.2 -> 309.7, N=32 171.2 -> 260.9 /
 *     166.1 -> 263.4, N=5 113.0 -> 104.0 / 114.1 -> 91.3, N=1 66.0 -> 27.5 /
 *     64.7 -> 27.0 (3/4 of the lanes idle and U formed per call); with
 *     weights prepared once (eenet_conv2d_forward_prepared, eval mode) N=1
 *     111.3 -> 62.6, N=2 138.1 -> 122.9, N=3 153.1 -> 201.5, N=8 172.8 ->
 *     294.9;
 *   32->32: N=128 143.1 -> 270.0 / 133.8 -> 257.1, N=32 134.8 -> 211.4 /
 *     126.5 -> 207.5, prepared N=1 51.6 -> 39.2; 32->64 N=128 164.8 ->
 *     289.6 / 155.7 -> 288.6; 16->16 N=128 131.6 -> 173.0 / 110.5 -> 170.4.
 * Whole eenet20 (3x32x32, eval-mode forward of every exit / train step, one
 * thread, thread CPU time, min): F(2x2) everywhere on 8x8 -> F(4x4)
 * backward-data -> F(4x4) forward and backward-data: N=1 forward 0.551 ->
 * 0.550 -> 0.727 ms; N=128 forward 83.5 -> 83.1 -> 75.7 ms, train step 375
 * -> 359 -> 324 ms.  The forward, which cannot look at N (a sample's bits
 * must not depend on its batch), stays F(2x2): one-sample early-exit
 * inference would be 32% slower for 9% at batch 128 (set_impl 8 forces
 * F(4x4)).  The data gradient (training: batches of many samples) takes it.
 * benchmarks/kernels.py --threads 1 --clock cpu --stat min (load average
 * 2.6, main 4055e2e -> this), 64->64 8x8 backward-data: N=32 169.2 (torch
 * ratio 1.38) -> 260.5 (2.20), N=128 171.4 (1.41) -> 234.0 (1.98); 2
 * threads, wall clock (as in wino4_pick16's note, two runs each): N=32
 * 245-301 (1.46-1.47) -> 415-483 (2.30-2.38), N=128 250-254 (1.40-1.43) ->
 * 480-500 (2.39-2.55).
 * Accuracy: 64->64 forward / backward-data 0.115-0.179 / 0.137-0.154, 32->32
 * 0.093 / 0.098 (error over the tests' tolerance, as wino4_pick16, one or
 * two seeds).  The eenet20 (3x16x16, 32->32 8x8 in stage 2) v0 gradient
 * check of test_net.py, worst stem weight gradient error over its tolerance
 * for exit types pool / plain / bnpool: F(2x2) 0.43 / 0.17 / 0.34, F(4x4)
 * backward-data (chosen) 0.46 / 0.25 / 0.53, forward and backward-data 0.72
 * / 0.22 / 0.54 (all test_net.py torch tests pass with either). */
static int wino4_pick8(const conv_plan *pl) {
    return pl->C >= 32 && pl->K >= 32 && pl->C <= 64 && pl->K <= 64 && pl->H == 8 &&
           pl->W == 8;
}

/* Whether the Winograd F(4x4,3x3) forward (conv_wino4.c) replaces F(2x2)
 * for the forward (the data gradient: wino4_pick_bd below; the weight
 * gradient keeps its paths).
 * 16->16 32x32 (ResNet/EENet CIFAR stage 1, nearly all the work of early-exit
 * EENet-110 inference): 36 transformed-domain products per 16 outputs
 * instead of F(2x2)'s 64.  Measured (1 thread, CPU time, best of 25,
 * GFLOP/s of the direct convolution's 2*N*K*C*9*H*W, eenet.ops.conv2d,
 * F(2x2) -> F(4x4)): N=1 116 -> 163, N=7 123 -> 213, N=16 122 -> 216,
 * N=32 115 -> 209; benchmarks/kernels.py (--threads 1 --clock cpu --stat
 * min) forward 101 -> 203 at N=32, 75 -> 109 at N=128.  Profile at N=16:
 * GEMM micro-kernel 42%, input transform 17%, output transform 12%.
 * Accuracy (x, w standard normal, 40 seeds of 4 samples, worst error over
 * the tests' tolerance rtol 1e-4 + atol 1e-5 x max|ref|): F(2x2) 0.013,
 * F(4x4) with points 0, +-1, +-2 0.32, with 0, 1, -1, 1/2, -2 (kept; same
 * speed) 0.13.  Other shapes (16-channel planes of other widths, 32+
 * channels) were not measured: they keep the paths above (set_impl 8
 * forces it on every 32-wide plane).  Like wino_auto, never looks at N
 * nor at the thread count. */
static int wino4_pick(const conv_plan *pl) {
    return (pl->C == 16 && pl->K == 16 && pl->H == 32 && pl->W == 32) || wino4_pick16(pl, 0);
}

/* Whether the data gradient runs through the F(4x4) forward (conv_wino4.c)
 * instead of F(2x2) (wino_auto) or the direct paths: for stride 1, pad 1,
 * dinp[n,c] += sum_k conv3x3_pad1(dout[n,k], w_r[c,k]) with w_r[c][k][a][b] =
 * w[k][c][2-a][2-b], a K -> C forward of dout (accumulated into dinp in the
 * output transform) whose U (36*C*K floats) is formed per call.  Measured
 * (1 thread, CPU time, best of 15x3, GFLOP/s of 2*N*K*C*9*H*W, C-level
 * eenet_conv2d_backward_ex with dw = NULL into a preallocated dinp, as the
 * engine calls it; paths before -> F(4x4)):
 *   16->16 32x32: N=128 85.4-87.8 -> 125.9-126.8, N=32 88.9-100.8 ->
 *     163.5-182.4, N=4 106.4 -> 173.7, N=1 86.2-87.0 -> 113.9-114.6;
 *   N=128: 16->32 110.1 -> 146.3, 32->16 99.2 -> 141.2, 32->32 112.7 ->
 *     183.8, 64->64 173.0 -> 252.1; N=1: 16->32 118.3 -> 154.2, 32->32
 *     114.1 -> 141.3, 64->64 146.6 -> 227.4;
 *   not chosen: 8->8 66.4 vs 67.5 (even), 3->16 53.7 vs 47.1, 16->3 48.3 vs
 *     44.9 (few channels: the transforms outweigh the saved products).
 * benchmarks/kernels.py --threads 1 --clock cpu --stat min (ResNet-20 s1,
 * 16->16 32x32, N=128, load average ~2; its per-call allocations make the
 * figure move with the allocator's state): backward-data 64.8-71.4 (4 runs)
 * -> 74.2-96.2 (7 runs; torch 29.9-46.2), with --pin-malloc 74.5 -> 129.3
 * (torch 69.0-78.7).
 * Accuracy (x, w, dy standard normal, 10 seeds, worst error over the tests'
 * tolerance rtol 1e-4 + atol 1e-5 x max|ref|, F(2x2) -> F(4x4)): 16->16
 * 0.020 -> 0.139, 32->32 0.024 -> 0.165, 64->64 0.033 -> 0.253, 16->32 0.027
 * -> 0.156, 32->16 0.017 -> 0.160.  Only square 32x32 planes measured
 * (eenet_wino4_ok also takes W = 32 with other H: set_impl 8 forces it
 * there).  Like wino4_pick, never looks at N nor at the thread count. */
static int wino4_pick_bd(const conv_plan *pl) {
    return (pl->C >= 16 && pl->K >= 16 && pl->C <= 64 && pl->K <= 64 && pl->H == 32 &&
            pl->W == 32) || wino4_pick16(pl, 1) || wino4_pick8(pl);
}

/* Whether the channel-lane Winograd F(4x4,3x3) path (conv_wl4.c) replaces
 * the batch-lane F(2x2) one (wlanes_pick) for forward and backward-data, and
 * the direct paths for the weight gradient (with the bias gradient):
 * 16->16 on 7x7 planes, 4 tiles of 4x4 per sample (144 products per
 * channel pair; F(2x2): 256).  Measured (1 thread, CPU time, best of 30x5,
 * GFLOP/s of the direct convolution's 2*N*K*C*9*H*W, eenet.ops-level
 * _core.conv2d_forward / conv2d_backward(need_dw=False), F(2x2) batch lanes
 * -> F(4x4) channel lanes, forward / backward-data):
 *   16->16 7x7: N=1 43.3->51.3 / 39.4->47.3, N=5 79.0->123.8 / 74.2->115.5,
 *     N=17 117.0->182.8 / 114.7->174.3, N=32 121.6->195.7 / 119.9->187.6,
 *     N=128 133.0->206.7 / 129.3->200.0; benchmarks/kernels.py (--threads 1
 *     --clock cpu --stat min, main 49433b5 -> this) N=128 forward 115.2 ->
 *     201.3 (torch ratio 1.27 -> 2.17), backward-data 111.6 -> 190.6 (1.31 ->
 *     2.03); N=32 121.5 -> 196.9 / 120.5 -> 186.1;
 *   weight gradient with bias (16->16 7x7, need_dx=False, the K-vectorised
 *     q-space path -> F(4x4): dU_e (36, k, c) summed per thread over blocks
 *     of 4 samples, G^T dU G in double at the end): N=1 21.6->39.3, N=5
 *     57.5->111.7, N=17 79.8->162.6, N=32 86.2->178.2, N=128 92.1->182.7;
 *     kernels.py N=128 bwd-weight 89.2 (main 49433b5) -> 185.0 (torch ratio
 *     1.31 -> 2.57), N=32 84.3 -> 155.0;
 *   2 threads, wall clock (kernels.py --threads 2, N=128, load average
 *     0.6-0.9: not a quiet machine; 49433b5 -> this, two runs): forward
 *     226-252 -> 377-382 GFLOP/s (torch ratio 1.49-1.63 -> 2.41-2.48),
 *     backward-data 217-239 -> 345-349 (1.43-1.59 -> 2.23-2.35), weight
 *     gradient 175-179 -> 347-357 (1.52-1.54 -> 2.98-3.08);
 *   16->16 8x8: N=1 58.6->72.4 / 52.9->64.6, N=5 106.9->177.2 /
 *     101.1->164.4, N=17 113.8->210.1 / 106.4->199.8, N=128 121.2->228.4 /
 *     107.0->220.7.
 * Accuracy (x, w, dy standard normal, 40 seeds of 4 samples, worst error over
 * the tests' tolerance rtol 1e-4 + atol 1e-5 x max|ref|): 7x7 forward 0.108,
 * backward-data 0.154 (F(2x2): 0.015 / 0.017), weight gradient 0.122 (N=4;
 * 0.109 at N=128, 10 seeds); 8x8 0.138 / 0.134.
 * 8x8 is NOT chosen although faster: with it the eenet20 (3x16x16) five-step
 * SGD trajectory test (tests/test_net.py) meets a ReLU input 1.9e-7 of its
 * tensor's max from zero, inside F(4x4)'s rounding error, and its gradient
 * check fails; it keeps F(2x2) batch lanes (set_impl 9 forces F(4x4)).
 * Other planes (4 < H, W <= 8) were not measured.  Like wlanes_pick,
 * never looks at N nor at the thread count (one sample at a time: its bits
 * do not depend on them). */
static int wl4_pick(const conv_plan *pl) {
    return pl->C == 16 && pl->K == 16 && pl->H == pl->W && pl->W == 7;
}

/* Whether the tile-lane Winograd F(4x4,3x3) path (conv_tl4.c) replaces the
 * batch-lane direct kernels (and, for the samples outside whole groups of
 * 16, the q-space ones) for the forward (op 0), backward-data (op 1) and
 * weight gradient with bias (op 2): 8->8 on 14x14 (EENet-8 f=4 b2), 16
 * tiles of 4x4 per sample, 576 products per channel pair instead of 1764.
 * Measured (1 thread, CPU time, GFLOP/s of the direct convolution's
 * 2*N*K*C*9*H*W; the batch-lane direct paths ran at ~75% of the FMA peak):
 *   benchmarks/kernels.py --threads 1 --clock cpu --stat min, N=128, main
 *     cc63dac -> this (load average 2.7-2.9 from other work: torch's own
 *     figures moved 38-55 between runs): forward 88.2 -> 113-150 (torch
 *     ratio 2.02 -> 2.96-3.57), backward-data 84.7 -> 102-131 (3.90 ->
 *     5.2-5.6), weight gradient 88.3 -> 82-126 (1.82 -> 2.18-2.58); N=32
 *     forward 79.4 -> 140-160, backward-data 75.2 -> 111-141, weight
 *     gradient 75.0 -> 116-120;
 *   eenet._core calls, best of 30 (q-space direct, the per-sample path
 *     below 16 samples -> this): N=1 forward 40.6 -> 38.3 (the weight
 *     transform is not amortised; in a C harness 4.0 -> 4.2 us, 2.9 with
 *     it vectorised, see eenet_tl4_weights), backward-data 28.7 -> 43.7, weight
 *     gradient 28.7 -> 22.0 (the per-call reduction of the lane-wise dU;
 *     26.4 -> 25.9 once the first block sets dU and the lanes are reduced 16
 *     sums at a time); N=5 71.1 -> 109.7 / 54.2 -> 99.0 / 60.2 -> 54.2
 *     (55.8 -> 80.5 after); N=17 76.6 -> 120.1 / 59.9 -> 131.0 / 69.0 ->
 *     104.6.
 * Accuracy (x, w, dy standard normal, worst error over the tests'
 * tolerance rtol 1e-4 + atol 1e-5 x max|ref|, 16 seeds of 4 samples, 4 of
 * 128 for the weight gradient): forward 0.08, backward-data 0.09-0.10,
 * weight gradient 0.10.  Other shapes (set_impl 10 forces it on every C, K
 * <= 16 layer with 12 < H, W <= 16) were not measured.  One sample at a time:
 * like wl4_pick, never looks at N nor at the thread count. */
static int tl4_pick(const conv_plan *pl, int op) {
    (void)op;
    return pl->C == 8 && pl->K == 8 && pl->H == 14 && pl->W == 14;
}

/* Sizes of the parity phase q = 2a + b of a stride-2 layer's input: rows
 * iy = 2m + a, columns ix = 2x + b. */
static int pd_rows(const conv_plan *pl, int q) { return q / 2 == 0 ? (pl->H + 1) / 2 : pl->H / 2; }
static int pd_cols(const conv_plan *pl, int q) { return q % 2 == 0 ? (pl->W + 1) / 2 : pl->W / 2; }

/* Whether the polyphase data gradient (K-vectorised forwards of dout per
 * parity phase of dinp, C output channels in the lanes) replaces dcol =
 * w^T dout + col2im on this 3x3 stride-2 pad-1 layer; sets its register
 * blocks.  Needs C a multiple of 16 and a column tile for every non-empty
 * phase.  Decided on the shape only (never N or the thread count).
 * Measured faster on every shape tried (1 thread, CPU clock, min; GFLOP/s
 * im2col+GEMM -> polyphase): benchmarks/kernels.py batch 32: ResNet-20
 * 16->32 32x32 52.0 -> 73.3, 32->64 16x16 65.5 -> 81.8; batch 128 with
 * --pin-malloc (load 2): 42.9 -> 50.7, 47.1 -> 78.9; through the binding
 * (fresh dx each call), batch 32: 64->128 8x8 49 -> 70, 16->16 16x16
 * 28 -> 42, 32->32 14x14 45 -> 54, 16->32 15x15 47 -> 62, 32->16 16x16
 * 27 -> 45; 64->64 56x56 batch 8: 61 -> 73. */
static int pd_pick(conv_plan *pl) {
    if (!pl->pd_ok || pl->C % 16 != 0) {
        return 0;
    }
    pl->pd_kv = pl->C % 32 == 0 ? 2 : 1;
    for (int q = 0; q < 4; q++) {
        int wq = pd_cols(pl, q);
        pl->pd_P[q] = pick_cols(wq, 16 / pl->pd_kv);
        if (pd_rows(pl, q) > 0 && wq > 0 && pl->pd_P[q] == 0) {
            return 0;
        }
    }
    /* W even: both column phases of a row parity stored straight into dinp
     * (eenet_conv_kvec_pd), but only on planes under 1024 floats: its stores
     * go to 16 channel planes at once, which on 4 KB-multiple planes share
     * L1 sets (1 thread, batch 32/16/8, GFLOP/s, phase planes -> fused:
     * 32->64 16x16 86-87 -> 91-95, 32->32 14x14 66 -> 71-86, 16->32 32x32
     * 76 -> 61-67, 16->16 64x64 55 -> 40-48) */
    pl->pd_fused = pl->W % 2 == 0 && (size_t)pl->H * pl->W < 1024;
    return 1;
}

/* Whether the batch-lane path runs the polyphase data gradient (pd_sample's
 * phases, 16 samples per vector) of a 3x3 stride-2 pad-1 layer with
 * C, K <= 16 (C a multiple of 16 takes pd_pick's K-vectorised form).
 * Measured (benchmarks/kernels.py, 1 thread, CPU clock, min, load 2.5;
 * GFLOP/s im2col+GEMM -> polyphase lanes, batch 32 / 128): EENet-8 2->4
 * 28x28 13.2/13.2 -> 31.4/21.0, 4->8 14x14 15.7/20.3 -> 41.2/49.4, 4->8
 * 28x28 23.9/23.8 -> 47.8/49.9, 8->16 14x14 34.7/35.0 -> 64.0/68.8. */
static int lanes_pd_pick(const conv_plan *pl) {
    return pl->pd_ok && pl->C % 16 != 0;
}

static void plan_choose(conv_plan *pl) {
    /* 7 forces the batch-lane Winograd path (below), 8 the F(4x4) forward;
     * otherwise they are 0 */
    int impl = conv_impl >= 7 ? 0 : conv_impl;
    int avail = pl->direct_ok && impl != 1 && eenet_conv_direct_available();
    int one = pl->kh == 1 && pl->kw == 1; /* 1x1: a plain GEMM on the (subsampled) input */
    int prefer = avail && (impl != 0 || !one);
    int kvec = prefer && impl == 0;
    pl->kvf = pl->K % 32 == 0 ? 2 : 1;
    pl->pf = pick_cols(pl->Wo, 16 / pl->kvf);
    pl->kvd = pl->C % 32 == 0 ? 2 : 1;
    pl->pd = pick_cols(pl->W, 16 / pl->kvd);
    /* Measured (1 thread, Zen 4, GFLOP/s): from 32 channels the K-vectorised
     * kernels win (32->32 16x16: 93 vs 85; 64->64 8x8: 102 vs 84); with 16
     * channels the q-space ones win on rows that are multiples of 8 wide
     * (16->16 32x32: 81 vs 72) and lose on 7/14-wide ones (16->16 7x7: 86 vs
     * 69 forward, 85 vs 58 backward-data). */
    pl->use_kf = kvec && pl->K % 16 == 0 && pl->pf > 0 && (pl->K % 32 == 0 || pl->Wo % 8 != 0);
    /* the channel-lane stride-2 weight gradient (cw_pick) takes the place
     * of every other weight-gradient path where chosen */
    pl->use_cw = avail && impl == 0 && cw_pick(pl);
    pl->use_kw = kvec && pl->K % 32 == 0 && !pl->use_cw;
    pl->use_kd = kvec && pl->bd_ok && pl->C % 16 == 0 && pl->pd > 0 &&
                 (pl->C % 32 == 0 || pl->W % 8 != 0);
    /* 16 channels: the q-space forward wins, but the weight gradient is
     * faster K-vectorised on the q-space planes once there are >= 64 taps
     * (measured: 16->16 7x7 71 vs 55, 8->16 14x14 s2 42 vs 37 GFLOP/s). */
    pl->use_kwq = avail && !one && !pl->use_kw && !pl->use_cw && pl->K % 16 == 0 &&
                  (impl == 3 || (impl == 0 && pl->ckk >= 64));
    pl->use_fwd = prefer && !pl->use_kf;
    pl->use_bw = prefer && !pl->use_kw && !pl->use_kwq && !pl->use_cw;
    pl->use_bd = prefer && pl->bd_ok && !pl->use_kd;
    /* Winograd F(2x2,3x3) for forward and backward-data, and where
     * wino_auto_dw says for the weight gradient */
    int wforce = impl == 4 || impl == 5;
    int wauto = impl == 0 && eenet_conv_direct_available() && wino_auto(pl);
    /* ... except where the batch-lane path is faster: 16->16 7x7 (EENet-8
     * f=4), batch 32 and 128, one thread: forward 97 vs 72-76 GFLOP/s,
     * backward-data 91 vs 68-69.  Decided without looking at N, so that a
     * sample's forward result does not depend on the batch around it (the
     * direct paths the lanes and the per-sample fallback take sum the taps
     * in the same order, bit for bit; Winograd does not). */
    if (wauto && pl->lanes_ok && pl->Wo <= 8) {
        wauto = 0;
    }
    pl->use_wf = pl->wino_ok && (wforce || wauto);
    pl->use_wd = pl->wino_ok && (wforce || wauto);
    pl->wino_avx = impl != 5 && eenet_conv_direct_available();
    pl->use_ww = pl->wino_ok && eenet_wino_dw_ok(pl->C, pl->K, pl->wino_avx) &&
                 (wforce || (wauto && wino_auto_dw(pl)));
    /* batch-lane path: 16 samples per vector, for the few-channel layers */
    int lanes = avail && pl->lanes_ok && (impl == 6 || impl == 0);
    pl->use_lf = lanes && (impl == 6 || lanes_pick(pl, 0)) && !pl->use_wf;
    pl->use_sf = avail && impl == 0 && s2_pick(pl);
    pl->use_lw = lanes && (impl == 6 || lanes_pick(pl, 1)) && !pl->use_cw;
    pl->use_ld = lanes && pl->bd_ok && (impl == 6 || lanes_pick(pl, 2)) && !pl->use_wd;
    /* batch-lane Winograd: forward and backward-data (wlanes_pick) */
    int wl = pl->wl_ok && eenet_conv_direct_available() && (conv_impl == 7 || conv_impl == 0);
    /* channel-lane F(4x4) (wl4_pick) where chosen, instead of F(2x2) lanes */
    pl->use_yf = pl->wl_ok && pl->y4_ok && eenet_conv_direct_available() &&
                 (conv_impl == 9 || (conv_impl == 0 && wl4_pick(pl)));
    pl->use_yw = pl->use_yf; /* measured faster wherever use_yf is chosen */
    /* tile-lane F(4x4) (tl4_pick) */
    int t4 = pl->wl_ok && pl->t4_ok && !pl->use_yf && eenet_conv_direct_available();
    pl->use_tf = t4 && (conv_impl == 10 || (conv_impl == 0 && tl4_pick(pl, 0)));
    pl->use_td = t4 && (conv_impl == 10 || (conv_impl == 0 && tl4_pick(pl, 1)));
    pl->use_tw = t4 && (conv_impl == 10 || (conv_impl == 0 && tl4_pick(pl, 2)));
    pl->use_xf = wl && !pl->use_yf && !pl->use_tf && (conv_impl == 7 || wlanes_pick(pl));
    pl->use_xd = pl->use_xf && !pl->use_td; /* one measured choice for both directions */
    /* Winograd F(4x4,3x3) forward (wino4_pick) and data gradient
     * (wino4_pick_bd); the weight gradient keeps the paths above */
    pl->use_qf = pl->w4_ok && !pl->use_xf && eenet_conv_direct_available() &&
                 (conv_impl == 8 || (conv_impl == 0 && wino4_pick(pl)));
    pl->use_qd = pl->w4_ok && !pl->use_xd && eenet_conv_direct_available() &&
                 (conv_impl == 8 || (conv_impl == 0 && wino4_pick_bd(pl)));
    /* polyphase data gradient of 3x3 stride-2 layers (pd_pick), on the
     * batch-lane path for the few-channel ones (lanes_pd_pick) */
    pl->use_pd = kvec && pd_pick(pl);
    pl->use_lpd = lanes && !pl->use_pd && lanes_pd_pick(pl);
}

/* ---- im2col / col2im ---------------------------------------------------- */

/* First and one-past-last output column ox whose input column
 * ix = ox*s + j - p lies inside [0, W). */
static void valid_range(int W, int Wo, int j, int s, int p, int *lo, int *hi) {
    int a = p - j; /* ox*s >= a */
    int l = a <= 0 ? 0 : (a + s - 1) / s;
    int b = W - 1 + p - j; /* ox*s <= b */
    int h = b < 0 ? 0 : b / s + 1;
    if (h > Wo) {
        h = Wo;
    }
    if (l > h) {
        l = h;
    }
    *lo = l;
    *hi = h;
}

/* One sample's bias gradient: db[k] += sum_q dy[k, q] over dy (K, howo), each
 * channel summed in float in q order. */
static void bias_grad_add(float *db, const float *dy, int K, int howo) {
    for (int k = 0; k < K; k++) {
        const float *dyk = dy + (size_t)k * howo;
        float acc = 0.0f;
        for (int q = 0; q < howo; q++) {
            acc += dyk[q];
        }
        db[k] += acc;
    }
}

/* col (C*kh*kw, Ho*Wo) from one sample inp (C,H,W); overwrites col. */
static void im2col(float *col, const float *inp, int C, int H, int W, int kh, int kw, int s,
                   int p, int Ho, int Wo) {
    for (int c = 0; c < C; c++) {
        const float *x = inp + (size_t)c * H * W;
        for (int i = 0; i < kh; i++) {
            for (int j = 0; j < kw; j++) {
                float *row = col + (((size_t)c * kh + i) * kw + j) * Ho * Wo;
                int lo, hi;
                valid_range(W, Wo, j, s, p, &lo, &hi);
                for (int oy = 0; oy < Ho; oy++) {
                    float *r = row + (size_t)oy * Wo;
                    int iy = oy * s + i - p;
                    if (iy < 0 || iy >= H) {
                        memset(r, 0, sizeof(float) * (size_t)Wo);
                        continue;
                    }
                    const float *xr = x + (size_t)iy * W + j - p;
                    for (int ox = 0; ox < lo; ox++) {
                        r[ox] = 0.0f;
                    }
                    if (s == 1) {
                        if (hi > lo) {
                            memcpy(r + lo, xr + lo, sizeof(float) * (size_t)(hi - lo));
                        }
                    } else {
                        for (int ox = lo; ox < hi; ox++) {
                            r[ox] = xr[(size_t)ox * s];
                        }
                    }
                    for (int ox = hi; ox < Wo; ox++) {
                        r[ox] = 0.0f;
                    }
                }
            }
        }
    }
}

/* Kept out of line, out of GCC's inter-procedural specialisation and
 * 64-byte aligned: inlined into the large backward driver, cloned for it, or
 * at another code alignment, its strided loops ran 15-30% slower (stride-2
 * backward-data of the EENet-8 layers, measured with and without PyTorch
 * runs in between). */
#if defined(__GNUC__) && !defined(__clang__)
#define EENET_NOINLINE __attribute__((noinline, noipa, hot, aligned(64)))
#elif defined(__GNUC__)
#define EENET_NOINLINE __attribute__((noinline))
#else
#define EENET_NOINLINE
#endif

/* dinp (C,H,W) += scatter of col (C*kh*kw, Ho*Wo); accumulates. */
EENET_NOINLINE static void col2im_add(float *dinp, const float *col, int C, int H, int W, int kh, int kw,
                       int s, int p, int Ho, int Wo) {
    for (int c = 0; c < C; c++) {
        float *dx = dinp + (size_t)c * H * W;
        for (int i = 0; i < kh; i++) {
            for (int j = 0; j < kw; j++) {
                const float *row = col + (((size_t)c * kh + i) * kw + j) * Ho * Wo;
                int lo, hi;
                valid_range(W, Wo, j, s, p, &lo, &hi);
                for (int oy = 0; oy < Ho; oy++) {
                    int iy = oy * s + i - p;
                    if (iy < 0 || iy >= H) {
                        continue;
                    }
                    const float *r = row + (size_t)oy * Wo;
                    float *dr = dx + (size_t)iy * W + j - p;
                    if (s == 1) {
                        for (int ox = lo; ox < hi; ox++) {
                            dr[ox] += r[ox];
                        }
                    } else {
                        for (int ox = lo; ox < hi; ox++) {
                            dr[(size_t)ox * s] += r[ox];
                        }
                    }
                }
            }
        }
    }
}

/* ---- direct path helpers (plain C; the micro-kernels are in conv_avx512.c) */

/* Tap offsets off[t], t = (c*kh + i)*kw + j, into a sample's phase planes. */
static void direct_offsets(int *off, const dgeom *g) {
    int s = g->s;
    for (int c = 0; c < g->cin; c++) {
        for (int i = 0; i < g->kh; i++) {
            for (int j = 0; j < g->kw; j++) {
                size_t plane = ((size_t)c * s + (size_t)(i % s)) * s + (size_t)(j % s);
                off[((size_t)c * g->kh + i) * g->kw + j] =
                    (int)(plane * g->plane + (size_t)(i / s) * g->ws + (size_t)(j / s));
            }
        }
    }
}

/* Forward weights wq (cout, ntaps) packed per output-channel block:
 * block [k0, k0+kb) at wp + k0*ntaps, laid out [t][kk]. */
static void direct_pack(float *wp, const float *wq, int cout, int ntaps, int fixed_kb) {
    for (int k0 = 0; k0 < cout;) {
        int kb = fixed_kb ? fixed_kb : eenet_conv_fwd_kblock(cout - k0);
        float *blk = wp + (size_t)k0 * ntaps;
        for (int t = 0; t < ntaps; t++) {
            for (int a = 0; a < kb; a++) {
                blk[(size_t)t * kb + a] = wq[(size_t)(k0 + a) * ntaps + t];
            }
        }
        k0 += kb;
    }
}

/* Backward-data weights: w' (C, K*kh*kw) with
 * w'[c][(k*kh + i)*kw + j] = w[k][c][kh-1-i][kw-1-j], packed like direct_pack. */
static void direct_pack_flipped(float *wp, const float *w, int C, int K, int kh, int kw,
                                int fixed_kb) {
    int ntaps = K * kh * kw;
    for (int c0 = 0; c0 < C;) {
        int cb = fixed_kb ? fixed_kb : eenet_conv_fwd_kblock(C - c0);
        float *blk = wp + (size_t)c0 * ntaps;
        for (int k = 0; k < K; k++) {
            for (int i = 0; i < kh; i++) {
                for (int j = 0; j < kw; j++) {
                    int t = (k * kh + i) * kw + j;
                    for (int a = 0; a < cb; a++) {
                        blk[(size_t)t * cb + a] =
                            w[(((size_t)k * C + c0 + a) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
                    }
                }
            }
        }
        c0 += cb;
    }
}

/* Copy one sample x (cin, h, w) into its phase planes (the padding and tail
 * positions are zero already and never written).  Input pixel (iy, ix) goes
 * to plane (c, (iy+ph)%s, (ix+pw)%s) at row (iy+ph)/s, column (ix+pw)/s. */
static void direct_fill(float *src, const float *x, const dgeom *g) {
    int s = g->s;
    if (s <= 2) {
        eenet_conv_fill_planes(src, x, g->cin, g->h, g->w, s, g->ph, g->pw, g->ws, g->plane);
        return;
    }
    for (int c = 0; c < g->cin; c++) {
        const float *xc = x + (size_t)c * g->h * g->w;
        for (int iy = 0; iy < g->h; iy++) {
            int yy = iy + g->ph;
            const float *xr = xc + (size_t)iy * g->w;
            float *P0 = src + ((size_t)c * s + (size_t)(yy % s)) * s * g->plane +
                        (size_t)(yy / s) * g->ws;
            for (int ix = 0; ix < g->w; ix++) {
                int xx = ix + g->pw;
                P0[(size_t)(xx % s) * g->plane + (size_t)(xx / s)] = xr[ix];
            }
        }
    }
}

/* out (K, Ho, Wo) = yq (K, ldq) compacted from q-space, + bias. */
static void direct_store(float *out, const float *yq, const float *bias, const dgeom *g) {
    eenet_conv_store_rows(out, yq, g->ldq, g->ws, g->cout, g->ho, g->wo, bias, 0);
}

/* dinp (C, H, W) += yq (C, ldq) compacted from q-space. */
static void direct_store_add(float *dx, const float *yq, const dgeom *g) {
    eenet_conv_store_rows(dx, yq, g->ldq, g->ws, g->cout, g->ho, g->wo, NULL, 1);
}

/* dq (K, ldq) in q-space from dout (K, Ho, Wo); garbage positions stay 0.
 * Adds the per-channel sums of dout into pdb (NULL to skip). */
static void direct_fill_dq(float *dq, float *pdb, const float *dy, const dgeom *g) {
    eenet_conv_fill_dq(dq, pdb, dy, g->cout, g->ho, g->wo, g->ws, g->ldq);
}

/* K-vectorised path: offsets c*hp*wp + i*wp + j of the padded input. */
static void kvec_offsets(int *off, int cin, int kh, int kw, int hp, int wp) {
    for (int c = 0; c < cin; c++) {
        for (int i = 0; i < kh; i++) {
            for (int j = 0; j < kw; j++) {
                off[((size_t)c * kh + i) * kw + j] = (int)(((size_t)c * hp + i) * wp + j);
            }
        }
    }
}

/* Batch-lane path: offsets 16*((c*hp + i)*wp + j) in the lane layout. */
static void lanes_offsets(int *off16, int cin, int kh, int kw, int hp, int wp) {
    kvec_offsets(off16, cin, kh, kw, hp, wp);
    for (int t = 0; t < cin * kh * kw; t++) {
        off16[t] *= 16;
    }
}

/* 1 if the n floats are all finite (no inf, no NaN). */
static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!(v[i] - v[i] == 0.0f)) {
            return 0;
        }
    }
    return 1;
}

/* The tables of eenet_conv_lanes_fwd_taps in the region at slot + s_llt
 * (plan_init): rcls (Ho ints), ccls (Wo), ntaps (nq), then per class pair q
 * its tap offsets and its taps' indices in the full list (round16(ckk) ints
 * each; a subset of off16, in its order).  Integers only, from the shape:
 * the kernel finds each kept tap's weights in the full packed list, so
 * nothing is copied per call. */
static void lanes_taps_build(eenet_lanes_taps *lt, float *region, const int *off16,
                             const conv_plan *pl) {
    int nrc = pl->lt_nrc, ncc = pl->lt_ncc, nq = nrc * ncc, ckk = pl->ckk;
    int *rcls = (int *)region, *ccls = rcls + pl->Ho, *ntq = ccls + pl->Wo;
    size_t head = eenet_round16((size_t)pl->Ho + pl->Wo + nq);
    size_t ostride = eenet_round16((size_t)ckk);
    int *offs = (int *)(region + head);
    int *wtaps = offs + (size_t)nq * ostride;
    int rlo[8], rhi[8], clo[8], chi[8];
    tap_classes(pl->Ho, pl->H, pl->kh, pl->s, pl->p, rcls, rlo, rhi);
    if (ncc > 1) {
        tap_classes(pl->Wo, pl->W, pl->kw, pl->s, pl->p, ccls, clo, chi);
    } else { /* one column class: every kernel column */
        memset(ccls, 0, sizeof(int) * (size_t)pl->Wo);
        clo[0] = 0, chi[0] = pl->kw;
    }
    for (int a = 0; a < nrc; a++) {
        for (int b = 0; b < ncc; b++) {
            int q = a * ncc + b, n = 0;
            int *o = offs + (size_t)q * ostride, *wt = wtaps + (size_t)q * ostride;
            for (int c = 0; c < pl->C; c++) { /* the kept taps t, in order */
                for (int i = rlo[a]; i < rhi[a]; i++) {
                    for (int j = clo[b]; j < chi[b]; j++) {
                        int t = (c * pl->kh + i) * pl->kw + j;
                        wt[n] = t;
                        o[n++] = off16[t];
                    }
                }
            }
            ntq[q] = n;
        }
    }
    lt->rcls = rcls, lt->ccls = ccls, lt->ntaps = ntq, lt->off16 = offs, lt->wtap = wtaps;
    lt->ncc = ncc, lt->ostride = ostride;
}

/* Hint the next sample's n floats at p into the cache (one prefetch per
 * 64-byte line) while the current one is computed; no-op without GCC/Clang. */
static void prefetch_floats(const float *p, size_t n, int write) {
#if defined(__GNUC__)
    for (size_t i = 0; i < n; i += 16) {
        if (write) {
            __builtin_prefetch(p + i, 1, 2);
        } else {
            __builtin_prefetch(p + i, 0, 2);
        }
    }
#else
    (void)p, (void)n, (void)write;
#endif
}

/* ---- forward ------------------------------------------------------------ */

/* The forward by eenet_conv_s2_fwd: the N * (K/16) * eenet_conv_s2_tiles
 * tiles split evenly over the threads in order (a thread's run of tiles
 * covers whole samples when the batch is a multiple of nt); each thread
 * first packs its own copy of the weights (16 channels per block) into its
 * slot's s_pdw (the weight gradient's region, unused by the forward). */
static void conv_forward_s2(float *out, const float *inp, const float *w, const float *bias,
                            float *workspace, int nt, const conv_plan *pl) {
    int ntile = (pl->K / 16) * eenet_conv_s2_tiles(pl->H, pl->W);
    size_t in_img = (size_t)pl->C * pl->H * pl->W, out_img = (size_t)pl->K * pl->Ho * pl->Wo;
    long long total = (long long)pl->N * ntile;
    float *slots = workspace + pl->shared;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *wk = slots + (size_t)tid * pl->slot + pl->s_pdw;
        direct_pack(wk, w, pl->K, pl->ckk, 16);
        long long u0 = total * tid / nt, u1 = total * (tid + 1) / nt;
        while (u0 < u1) {
            long long n = u0 / ntile;
            int t0 = (int)(u0 - n * ntile);
            int t1 = u1 - n * ntile < ntile ? (int)(u1 - n * ntile) : ntile;
            eenet_conv_s2_fwd(out + (size_t)n * out_img, bias, inp + (size_t)n * in_img, pl->C,
                              pl->H, pl->W, wk, pl->K, t0, t1);
            u0 += t1 - t0;
        }
    }
}

static void conv_forward_run(float *out, const float *inp, const float *w, const float *bias,
                             float *workspace, int nt, const conv_plan *pl) {
    if (pl->use_sf && all_finite(w, (size_t)pl->K * pl->ckk)) {
        conv_forward_s2(out, inp, w, bias, workspace, nt, pl);
        return;
    }
    int N = pl->N, C = pl->C, H = pl->H, W = pl->W, K = pl->K;
    int howo = pl->Ho * pl->Wo, ckk = pl->ckk;
    int pointwise = is_pointwise(pl->kh, pl->kw, pl->s, pl->p);
    const dgeom *g = &pl->g;
    float *shared = workspace;
    float *slots = workspace + pl->shared;
    int nlane = pl->use_lf ? lanes_count(pl, nt) : 0;
    int parts = (nt > 1 && (N - nlane) % nt != 0) ? nt : 1;
    /* the per-sample paths' tables, for the samples the lane groups leave */
    int use_fwd = pl->use_fwd && nlane < N;
    if (use_fwd) {
        direct_offsets((int *)(shared + pl->o_off), g);
        direct_pack(shared + pl->o_wp, w, K, ckk, 0);
    } else if (pl->use_kf) {
        if (nlane < N) {
            kvec_offsets((int *)(shared + pl->o_offk), C, pl->kh, pl->kw, pl->hp, pl->wp);
            direct_pack(shared + pl->o_wk, w, K, ckk, 16 * pl->kvf);
        }
    } else if (!pl->use_fwd) {
        eenet_blas_set_threads(1);
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *slot = slots + (size_t)tid * pl->slot;
        if (use_fwd) {
            memset(slot + pl->s_src, 0, sizeof(float) * g->src);
        }
        if (pl->use_kf) {
            memset(slot + pl->s_xp, 0, sizeof(float) * (size_t)C * pl->hp * pl->wp);
        }
        if (nlane > 0) {
            /* groups of 16 samples in the vector lanes; out (16, K, Ho, Wo)
             * per group through yl (K, Ho, Wo, 16).  Each thread makes its
             * own tap offsets, packed weights and tap-subset tables here
             * (a few KB): no serial step before the region, and no cache
             * line the other core read in the last call is written first by
             * this one (made once before the region, they took 2-5 us of
             * the ~100 of 8->16 14x14 s2 at batch 128 on 2 threads).  The
             * lanes skip the products with padding where some output
             * positions read it (same values; not with non-finite weights,
             * whose products with zeros are NaN in the per-sample paths). */
            int *offl = (int *)(slot + pl->s_loff);
            float *wpl = slot + pl->s_lwp;
            lanes_offsets(offl, C, pl->kh, pl->kw, pl->hp, pl->wp);
            direct_pack(wpl, w, K, ckk, 0);
            eenet_lanes_taps lt;
            int use_lt = pl->lt_nrc * pl->lt_ncc > 1 && all_finite(w, (size_t)K * ckk);
            if (use_lt) {
                lanes_taps_build(&lt, slot + pl->s_llt, offl, pl);
            }
            float *xl = slot + pl->s_xl, *yl = slot + pl->s_dl;
            lanes_zero_border(xl, C, pl->hp, pl->wp, pl->p, pl->p);
            int ng = (nlane + 15) / 16;
            size_t in_img = (size_t)C * H * W, out_img = (size_t)K * howo;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
            for (int gi = 0; gi < ng; gi++) {
                int n0 = 16 * gi, nimg = nlane - n0 < 16 ? nlane - n0 : 16;
                eenet_conv_lanes_in(xl, inp + (size_t)n0 * in_img, nimg, in_img, C, H, W, pl->p,
                                    pl->p, lanes_ystep(pl));
                if (use_lt) {
                    eenet_conv_lanes_fwd_taps(yl, xl, pl->wp, pl->s, &lt, wpl, K, ckk, pl->Ho,
                                              pl->Wo);
                } else {
                    eenet_conv_lanes_fwd(yl, xl, pl->wp, pl->s, offl, wpl, K, ckk, pl->Ho,
                                         pl->Wo);
                }
                eenet_conv_lanes_out(out + (size_t)n0 * out_img, out_img, yl, nimg, K, howo,
                                     bias, 0);
            }
        }
        /* the samples [nlane, N), each cut into `parts` bands of output rows
         * when the samples alone would not split evenly over the threads
         * (small batches of early-exit inference: N = 1 runs on both
         * threads); a thread fills a sample's planes once for its bands */
        int last_n = -1;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (int u = 0; u < (N - nlane) * parts; u++) { /* nowait: the region's end waits */
            int n = nlane + u / parts, part = u % parts;
            int r0 = (int)((long long)pl->Ho * part / parts);
            int r1 = (int)((long long)pl->Ho * (part + 1) / parts);
            if (r1 <= r0) {
                continue;
            }
            int fresh = n != last_n;
            last_n = n;
            const float *x = inp + (size_t)n * C * H * W;
            float *y = out + (size_t)n * K * howo;
            if (pl->use_fwd) {
                float *src = slot + pl->s_src, *yq = slot + pl->s_dq;
                if (fresh) {
                    direct_fill(src, x, g);
                }
                if (parts == 1) {
                    eenet_conv_direct_fwd(yq, g->ldq, src, (const int *)(shared + pl->o_off),
                                          shared + pl->o_wp, K, ckk, g->nq);
                    direct_store(y, yq, bias, g);
                    continue;
                }
                /* q vectors covering rows [r0, r1): q in [r0*ws, r1*ws) */
                size_t q0 = (size_t)r0 * g->ws / 16 * 16;
                size_t q1 = ((size_t)r1 * g->ws + 15) / 16 * 16;
                q1 = q1 < g->ldq ? q1 : g->ldq;
                eenet_conv_direct_fwd(yq + q0, g->ldq, src + q0,
                                      (const int *)(shared + pl->o_off), shared + pl->o_wp, K,
                                      ckk, (int)((q1 - q0) / 16));
                for (int k = 0; k < K; k++) {
                    eenet_conv_store_rows(y + (size_t)k * howo + (size_t)r0 * pl->Wo,
                                          yq + (size_t)k * g->ldq + (size_t)r0 * g->ws, g->ldq,
                                          g->ws, 1, r1 - r0, pl->Wo, bias ? bias + k : NULL, 0);
                }
                continue;
            }
            if (pl->use_kf) {
                float *xp = slot + pl->s_xp;
                if (fresh) {
                    eenet_conv_pad_fill(xp, x, C, H, W, pl->p, pl->p);
                    if (n + 1 < N) {
                        prefetch_floats(x + (size_t)C * H * W, (size_t)C * H * W, 0);
                    }
                }
                eenet_conv_kvec_fwd(y, 0, bias, xp, pl->wp, pl->s,
                                    (const int *)(shared + pl->o_offk), shared + pl->o_wk, K,
                                    ckk, pl->Ho, pl->Wo, r0, r1, pl->kvf, pl->pf,
                                    slot + pl->s_tile);
                continue;
            }
            const float *b = x;
            if (!pointwise) {
                float *col = slot + pl->s_col;
                if (fresh) {
                    im2col(col, x, C, H, W, pl->kh, pl->kw, pl->s, pl->p, pl->Ho, pl->Wo);
                }
                b = col;
            }
            /* y[:, band] (K, cols) = w (K, CKK) @ col[:, band] (CKK, cols) */
            int c0 = r0 * pl->Wo, nc = (r1 - r0) * pl->Wo;
            eenet_sgemm(0, 0, K, nc, ckk, 1.0f, w, ckk, b + c0, howo, 0.0f, y + c0, howo);
            if (bias) {
                for (int k = 0; k < K; k++) {
                    float bk = bias[k];
                    float *yk = y + (size_t)k * howo + c0;
                    for (int q = 0; q < nc; q++) {
                        yk[q] += bk;
                    }
                }
            }
        }
    }
    if (!pl->use_fwd && !pl->use_kf) {
        eenet_blas_set_threads(eenet_get_num_threads());
    }
}

/* ---- polyphase data gradient of 3x3 stride-2 pad-1 layers ---------------
 *
 *   dinp[n,c,iy,ix] += sum_{k,i,j: iy = 2oy+i-1, ix = 2ox+j-1} w[k,c,i,j] dout[n,k,oy,ox]
 *
 * Split by the parity of (iy, ix) = (2m+a, 2x+b): an even row (a = 0) takes
 * kernel row i = 1 at oy = m; an odd row takes i = 2 at oy = m and i = 0 at
 * oy = m+1 (likewise for columns).  Each phase (a, b) is then a stride-1
 * correlation of dout with a 1x1, 1x2, 2x1 or 2x2 sub-kernel: 9 taps per
 * (k, c) in all, the multiply-adds of the direct form and none on the zeros
 * of a dilated dout.  dout is padded by a zero row/column on each side
 * (oy = Ho, ox = Wo read zeros; the top/left ones are never read). */

/* Kernel index and dout offset (0: oy = m, 1: oy = m+1) of tap r of parity a. */
static void pd_tap(int a, int r, int *ki, int *shift) {
    *ki = a == 0 ? 1 : r == 0 ? 2 : 0;
    *shift = a == 0 ? 0 : r;
}

/* Tap offsets of phase q into the padded dout (K, Ho+2, Wo+2), taps
 * t = (k*nr + r)*nc + e, times `scale` (1: planes for eenet_conv_kvec_fwd;
 * 16: the batch-lane layout (K, Ho+2, Wo+2, 16)), and its weights
 * w[k][c][i_r][j_e] packed in blocks of channels c laid out [t][cc], as
 * direct_pack: fixed_kb channels each (16*kv for the K-vectorised kernel),
 * or 0: eenet_conv_fwd_kblock's (the batch-lane kernel). */
static void pd_prepare(int *off, float *wk, const float *w, const conv_plan *pl, int q,
                       int scale, int fixed_kb) {
    int a = q / 2, b = q % 2, nr = a + 1, nc = b + 1;
    int C = pl->C, K = pl->K;
    int hpp = pl->Ho + 2, wpp = pl->Wo + 2, ntaps = K * nr * nc;
    for (int k = 0; k < K; k++) {
        for (int r = 0; r < nr; r++) {
            for (int e = 0; e < nc; e++) {
                int i, j, dyr, dxc;
                pd_tap(a, r, &i, &dyr);
                pd_tap(b, e, &j, &dxc);
                int t = (k * nr + r) * nc + e;
                off[t] = scale * (int)(((size_t)k * hpp + dyr + 1) * wpp + dxc + 1);
                for (int c0 = 0; c0 < C;) {
                    int kb = fixed_kb ? fixed_kb : eenet_conv_fwd_kblock(C - c0);
                    float *blk = wk + (size_t)c0 * ntaps + (size_t)t * kb;
                    for (int cc = 0; cc < kb; cc++) {
                        blk[cc] = w[(((size_t)k * C + c0 + cc) * 3 + i) * 3 + j];
                    }
                    c0 += kb;
                }
            }
        }
    }
}

/* A group of 16 samples: the phase planes s_pdl[q] (C, hq, wq, 16) of the
 * polyphase data gradient of dl (K, Ho+2, Wo+2, 16), the group's dout
 * padded by 1 (border zero); eenet_conv_lanes_out_pd adds them to dinp
 * (measured against interleaving into a lane buffer for eenet_conv_lanes_out,
 * 1 thread, GFLOP/s, best of two runs at batch 32/128: 2->4 28x28 29.6/31.5
 * -> 36.7/35.1, 4->8 28x28 37.7/48.9 -> 48.8/55.9, 8->16 14x14 62.4/69.0 ->
 * 68.1/71.1). */
static void pd_lanes(const float *dl, const float *shared, float *slot, const conv_plan *pl) {
    for (int q = 0; q < 4; q++) {
        int hq = pd_rows(pl, q), wq = pd_cols(pl, q);
        if (hq > 0 && wq > 0) {
            eenet_conv_lanes_fwd(slot + pl->s_pdl[q], dl, pl->Wo + 2, 1,
                                 (const int *)(shared + pl->o_pdoff[q]), shared + pl->o_pdw[q],
                                 pl->C, pl->K * (q / 2 + 1) * (q % 2 + 1), hq, wq);
        }
    }
}

/* One sample: dx (C, H, W) += the polyphase data gradient of dy (K, Ho, Wo).
 * dp: the slot's padded dout (border zero); ph[q]: phase planes. */
static void pd_sample(float *dx, const float *dy, const float *shared, float *slot,
                      const conv_plan *pl) {
    int C = pl->C, H = pl->H, W = pl->W, K = pl->K;
    float *dp = slot + pl->s_pdy;
    eenet_conv_pad_fill(dp, dy, K, pl->Ho, pl->Wo, 1, 1);
    if (pl->pd_fused) {
        /* both column phases of a row parity stored straight into dx */
        for (int a = 0; a < 2; a++) {
            int q = 2 * a, hq = pd_rows(pl, q), nt = K * (a + 1);
            if (hq > 0) {
                eenet_conv_kvec_pd(dx, H, W, a, dp, pl->Wo + 2,
                                   (const int *)(shared + pl->o_pdoff[q]), shared + pl->o_pdw[q],
                                   nt, (const int *)(shared + pl->o_pdoff[q + 1]),
                                   shared + pl->o_pdw[q + 1], 2 * nt, C, hq, pl->pd_kv,
                                   pl->pd_P[q]);
            }
        }
        return;
    }
    const float *ph[4];
    for (int q = 0; q < 4; q++) {
        int hq = pd_rows(pl, q), wq = pd_cols(pl, q);
        ph[q] = slot + pl->s_pdx[q];
        if (hq > 0 && wq > 0) {
            int ntaps = K * (q / 2 + 1) * (q % 2 + 1);
            eenet_conv_kvec_fwd(slot + pl->s_pdx[q], 0, NULL, dp, pl->Wo + 2, 1,
                                (const int *)(shared + pl->o_pdoff[q]), shared + pl->o_pdw[q],
                                C, ntaps, hq, wq, 0, hq, pl->pd_kv, pl->pd_P[q],
                                slot + pl->s_tile);
        }
    }
    /* interleave: dx[c][2m+a][2x+b] += phase (a, b)[c][m][x] */
    int w0 = (W + 1) / 2, w1 = W / 2;
    for (int c = 0; c < C; c++) {
        for (int iy = 0; iy < H; iy++) {
            int a = iy & 1, m = iy >> 1, hq = pd_rows(pl, 2 * a);
            const float *p0 = ph[2 * a] + ((size_t)c * hq + m) * w0;
            const float *p1 = ph[2 * a + 1] + ((size_t)c * hq + m) * w1;
            float *d = dx + ((size_t)c * H + iy) * W;
            for (int x = 0; x < w1; x++) {
                d[2 * x] += p0[x];
                d[2 * x + 1] += p1[x];
            }
            if (w0 > w1) {
                d[W - 1] += p0[w0 - 1];
            }
        }
    }
}

/* ---- backward ----------------------------------------------------------- */

static void conv_backward_run(float *dinp, float *dw, float *dbias, const float *dout,
                              const float *inp, const float *w, float *workspace, int nt,
                              const conv_plan *pl) {
    int N = pl->N, C = pl->C, H = pl->H, W = pl->W, K = pl->K;
    int howo = pl->Ho * pl->Wo, ckk = pl->ckk;
    int pointwise = is_pointwise(pl->kh, pl->kw, pl->s, pl->p);
    const dgeom *g = &pl->g, *gd = &pl->gd;
    int use_bd = dinp && pl->use_bd;
    int use_kd = dinp && pl->use_kd;
    int do_cw = dw && pl->use_cw; /* channel-lane, input in place (eenet_conv_cl_bw) */
    int do_bw = dw && pl->use_bw; /* dw through q-space, K-vectorised or GEMM */
    int do_kw = dw && pl->use_kw;
    int do_kwq = dw && pl->use_kwq;
    int do_gw = dw && !pl->use_cw && !pl->use_bw && !pl->use_kw && !pl->use_kwq;
    /* batch-lane path for the samples [0, nlane): weight (and bias) gradient
     * and/or data gradient; the per-sample paths do the rest */
    int lane_w = dw && pl->use_lw;
    int lane_d = dinp && pl->use_ld;
    int lane_pd = dinp && pl->use_lpd; /* polyphase data gradient (pd_lanes) */
    int nlane = (lane_w || lane_d || lane_pd) ? lanes_count(pl, nt) : 0;
    lane_pd = lane_pd && nlane > 0;
    float *shared = workspace;
    float *slots = workspace + pl->shared;
    if (nlane > 0 && lane_w) {
        lanes_offsets((int *)(shared + pl->o_offl), C, pl->kh, pl->kw, pl->hp, pl->wp);
    }
    if (nlane > 0 && lane_d) {
        lanes_offsets((int *)(shared + pl->o_offl2), K, pl->kh, pl->kw, pl->hpd, pl->wpd);
        if (!use_bd) {
            direct_pack_flipped(shared + pl->o_wp2, w, C, K, pl->kh, pl->kw, 0);
        }
    }
    if (do_bw) {
        direct_offsets((int *)(shared + pl->o_off), g);
    }
    if (use_bd) {
        direct_offsets((int *)(shared + pl->o_off2), gd);
        direct_pack_flipped(shared + pl->o_wp2, w, C, K, pl->kh, pl->kw, 0);
    }
    if (do_kw) {
        kvec_offsets((int *)(shared + pl->o_offk), C, pl->kh, pl->kw, pl->hp, pl->wp);
    }
    if (do_kwq) {
        direct_offsets((int *)(shared + pl->o_off), g);
    }
    int use_pd = dinp && pl->use_pd;
    if (use_pd || lane_pd) {
        for (int q = 0; q < 4; q++) {
            pd_prepare((int *)(shared + pl->o_pdoff[q]), shared + pl->o_pdw[q], w, pl, q,
                       use_pd ? 1 : 16, use_pd ? 16 * pl->pd_kv : 0);
        }
    }
    if (use_kd) {
        kvec_offsets((int *)(shared + pl->o_offk2), K, pl->kh, pl->kw, pl->hpd, pl->wpd);
        direct_pack_flipped(shared + pl->o_wk2, w, C, K, pl->kh, pl->kw, 16 * pl->kvd);
    }
    eenet_blas_set_threads(1);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = eenet_thread_num();
        float *slot = slots + (size_t)tid * pl->slot;
        float *pdw = slot + pl->s_pdw; /* this thread's partial dw (K, CKK) */
        float *pdb = slot + pl->s_pdb; /* this thread's partial dbias (K) */
        float *col = slot + pl->s_col;
        memset(pdw, 0, sizeof(float) * (size_t)K * ckk);
        memset(pdb, 0, sizeof(float) * (size_t)K);
        size_t dq_stride = eenet_round16((size_t)K * g->ldq);
        size_t xp_stride = eenet_round16((size_t)C * pl->hp * pl->wp);
        size_t dyt_stride = eenet_round16((size_t)K * howo);
        if (do_bw) {
            memset(slot + pl->s_src, 0, sizeof(float) * (size_t)pl->nb * g->src);
            memset(slot + pl->s_dq, 0, sizeof(float) * (size_t)pl->nb * dq_stride);
        }
        if (use_bd) {
            memset(slot + pl->s_src2, 0, sizeof(float) * gd->src);
        }
        if (do_kw) {
            memset(slot + pl->s_xp, 0, sizeof(float) * (size_t)pl->nbk * xp_stride);
        }
        if (do_kwq) {
            memset(slot + pl->s_src, 0, sizeof(float) * (size_t)pl->nb * g->src);
        }
        if (use_kd) {
            memset(slot + pl->s_dp, 0, sizeof(float) * (size_t)K * pl->hpd * pl->wpd);
        }
        if (use_pd) {
            memset(slot + pl->s_pdy, 0, sizeof(float) * (size_t)K * (pl->Ho + 2) * (pl->Wo + 2));
        }
        if (nlane > 0) {
            /* lane pass: groups of 16 samples; dl (K, Ho+2phd, Wo+2pwd, 16) the
             * group's dout, padded for the data gradient (a stride-1 forward
             * of dout with the flipped kernel) */
            int phd = lane_d ? pl->kh - 1 - pl->p : lane_pd ? 1 : 0;
            int pwd = lane_d ? pl->kw - 1 - pl->p : lane_pd ? 1 : 0;
            int hd = pl->Ho + 2 * phd, wd = pl->Wo + 2 * pwd;
            size_t dplane = 16 * (size_t)hd * wd;
            size_t in_img = (size_t)C * H * W, out_img = (size_t)K * howo;
            float *xl = slot + pl->s_xl, *dl = slot + pl->s_dl, *dxl = slot + pl->s_dxl;
            float *dwl = slot + pl->s_dwl;
            const float *dli = dl + 16 * ((size_t)phd * wd + pwd); /* dout (0, 0) */
            if (lane_w) {
                lanes_zero_border(xl, C, pl->hp, pl->wp, pl->p, pl->p);
                memset(dwl, 0, sizeof(float) * 16 * (size_t)K * ckk);
            }
            if (phd > 0 || pwd > 0) {
                lanes_zero_border(dl, K, hd, wd, phd, pwd);
            }
            int ng = (nlane + 15) / 16;
            int gs = (int)((long long)ng * tid / nt), ge = (int)((long long)ng * (tid + 1) / nt);
            for (int gi = gs; gi < ge; gi++) {
                int n0 = 16 * gi, nimg = nlane - n0 < 16 ? nlane - n0 : 16;
                if (phd == 0 && pwd == 0) {
                    /* unpadded: the planes as single rows (fewer, fuller transposes) */
                    eenet_conv_lanes_in(dl, dout + (size_t)n0 * out_img, nimg, out_img, K, 1,
                                        howo, 0, 0, 1);
                } else {
                    eenet_conv_lanes_in(dl, dout + (size_t)n0 * out_img, nimg, out_img, K,
                                        pl->Ho, pl->Wo, phd, pwd, 1);
                }
                if (lane_w) {
                    /* dwl (K, CKK, 16) += per-lane sums of dout x input(tap) */
                    eenet_conv_lanes_in(xl, inp + (size_t)n0 * in_img, nimg, in_img, C, H, W,
                                        pl->p, pl->p, lanes_ystep(pl));
                    eenet_conv_lanes_bw(dwl, dli, dplane, wd, xl, pl->wp, pl->s,
                                        (const int *)(shared + pl->o_offl), K, ckk, pl->Ho,
                                        pl->Wo);
                    if (dbias) {
                        eenet_conv_lanes_bias(pdb, dli, dplane, wd, K, pl->Ho, pl->Wo);
                    }
                }
                if (lane_d) {
                    /* dxl (C, H, W, 16) = full correlation of dout with the flipped kernel */
                    eenet_conv_lanes_fwd(dxl, dl, wd, 1, (const int *)(shared + pl->o_offl2),
                                         shared + pl->o_wp2, C, K * pl->kh * pl->kw, H, W);
                    eenet_conv_lanes_out(dinp + (size_t)n0 * in_img, in_img, dxl, nimg, C,
                                         H * W, NULL, 1);
                }
                if (lane_pd) {
                    /* dinp += the four parity phases (pd_lanes), interleaved and
                     * transposed back to samples in one pass */
                    pd_lanes(dl, shared, slot, pl);
                    const float *ph[4] = {slot + pl->s_pdl[0], slot + pl->s_pdl[1],
                                          slot + pl->s_pdl[2], slot + pl->s_pdl[3]};
                    eenet_conv_lanes_out_pd(dinp + (size_t)n0 * in_img, in_img, ph, nimg, C, H,
                                            W);
                }
            }
            if (lane_w) {
                /* into this thread's partial, in the layout the reduction reads */
                int tr = do_kw || do_kwq;
                eenet_conv_lanes_reduce(pdw, tr ? 1 : (size_t)ckk, tr ? (size_t)K : 1, dwl, K,
                                        ckk);
            }
        }
        for (int seg = 0; seg < 2; seg++) {
            /* segment 0: the samples [0, nlane) for what the lane pass did not
             * do; segment 1: the samples [nlane, N).  Contiguous shares [n0, n1) */
            int lo = seg == 0 ? 0 : nlane, hi = seg == 0 ? nlane : N;
            int sw = seg == 1 || !lane_w, sd = seg == 1 || !(lane_d || lane_pd);
            int n0 = lo + (int)((long long)(hi - lo) * tid / nt);
            int n1 = lo + (int)((long long)(hi - lo) * (tid + 1) / nt);
            int gsz = do_kw ? pl->nbk : pl->nb;
            for (int g0 = n0; g0 < n1; g0 += gsz) {
                int nb = n1 - g0 < gsz ? n1 - g0 : gsz;
                if (sw && (do_kw || do_kwq)) {
                    /* dw^T (CKK, K) += sum over the group and positions of
                     * x(tap, pos) dy^T (pos, K); on the padded input (kw) or on
                     * the q-space planes (kwq: positions q = oy*ws + ox, stride 1) */
                    float *dyt = slot + pl->s_dyt;
                    float *xs = slot + (do_kw ? pl->s_xp : pl->s_src);
                    size_t xs_stride = do_kw ? xp_stride : g->src;
                    for (int b = 0; b < nb; b++) {
                        int n = g0 + b;
                        const float *x = inp + (size_t)n * C * H * W;
                        if (do_kw) {
                            eenet_conv_pad_fill(xs + (size_t)b * xs_stride, x, C, H, W, pl->p, pl->p);
                        } else {
                            direct_fill(xs + (size_t)b * xs_stride, x, g);
                        }
                        eenet_conv_transpose_dy(dyt + (size_t)b * dyt_stride, dbias ? pdb : NULL,
                                                dout + (size_t)n * K * howo, K, howo);
                    }
                    eenet_conv_kvec_bw(pdw, dyt, xs, do_kw ? pl->wp : g->ws, do_kw ? pl->s : 1,
                                       (const int *)(shared + (do_kw ? pl->o_offk : pl->o_off)), K,
                                       ckk, pl->Ho, pl->Wo, nb, dyt_stride, xs_stride);
                }
                if (sw && do_cw) {
                    /* dw^T (CKK, K) += per sample x(tap, pos) dy^T (pos, K), in place */
                    float *dyt = slot + pl->s_dyt;
                    for (int n = g0; n < g0 + nb; n++) {
                        eenet_conv_transpose_dy(dyt, dbias ? pdb : NULL,
                                                dout + (size_t)n * K * howo, K, howo);
                        eenet_conv_cl_bw(pdw, dyt, inp + (size_t)n * C * H * W, C, H, W, K);
                    }
                }
                if (sw && do_bw) {
                    /* dw (K, CKK) += sum over the group of dq (K, q) . planes (taps, q) */
                    for (int b = 0; b < nb; b++) {
                        int n = g0 + b;
                        direct_fill(slot + pl->s_src + (size_t)b * g->src,
                                    inp + (size_t)n * C * H * W, g);
                        direct_fill_dq(slot + pl->s_dq + (size_t)b * dq_stride,
                                       dbias ? pdb : NULL, dout + (size_t)n * K * howo, g);
                    }
                    eenet_conv_direct_bw(pdw, slot + pl->s_dq, g->ldq, dq_stride,
                                         slot + pl->s_src, g->src,
                                         (const int *)(shared + pl->o_off), K, ckk, g->nq, nb);
                }
                for (int n = g0; n < g0 + nb; n++) {
                    const float *x = inp + (size_t)n * C * H * W;
                    const float *dy = dout + (size_t)n * K * howo;
                    const float *b = x;
                    if (!sw || do_kw || do_kwq || do_cw) {
                        /* done for the whole group above, or by the lane pass */
                    } else if (do_gw) {
                        if (!pointwise) {
                            im2col(col, x, C, H, W, pl->kh, pl->kw, pl->s, pl->p, pl->Ho, pl->Wo);
                            b = col;
                        }
                        /* dw (K, CKK) += dy (K, HoWo) @ col^T */
                        eenet_sgemm(0, 1, K, ckk, howo, 1.0f, dy, howo, b, howo, 1.0f, pdw, ckk);
                        if (dbias) {
                            bias_grad_add(pdb, dy, K, howo);
                        }
                    } else if (!dw && dbias) {
                        bias_grad_add(pdb, dy, K, howo);
                    }
                    if (!dinp || !sd) {
                        continue;
                    }
                    float *dx = dinp + (size_t)n * C * H * W;
                    if (use_kd) {
                        float *dp = slot + pl->s_dp;
                        eenet_conv_pad_fill(dp, dy, K, pl->Ho, pl->Wo, pl->kh - 1 - pl->p,
                                            pl->kw - 1 - pl->p);
                        if (n + 1 < n1) {
                            /* the next sample's dout and dinp (read, then written) */
                            prefetch_floats(dy + (size_t)K * howo, (size_t)K * howo, 0);
                            prefetch_floats(dx + (size_t)C * H * W, (size_t)C * H * W, 1);
                        }
                        eenet_conv_kvec_fwd(dx, 1, NULL, dp, pl->wpd, 1,
                                            (const int *)(shared + pl->o_offk2), shared + pl->o_wk2,
                                            C, K * pl->kh * pl->kw, H, W, 0, H, pl->kvd,
                                            pl->pd, slot + pl->s_tile);
                    } else if (use_bd) {
                        /* dx (C, H, W) += full correlation of dy with the flipped kernel */
                        float *src2 = slot + pl->s_src2, *yq2 = slot + pl->s_yq2;
                        direct_fill(src2, dy, gd);
                        eenet_conv_direct_fwd(yq2, gd->ldq, src2, (const int *)(shared + pl->o_off2),
                                              shared + pl->o_wp2, C, gd->ntaps, gd->nq);
                        direct_store_add(dx, yq2, gd);
                    } else if (use_pd) {
                        /* dx (C, H, W) += the four parity phases (pd_sample) */
                        pd_sample(dx, dy, shared, slot, pl);
                    } else if (pointwise) {
                        /* dx (C, HW) += w^T (C, K) @ dy (K, HW) */
                        eenet_sgemm(1, 0, ckk, howo, K, 1.0f, w, ckk, dy, howo, 1.0f, dx, howo);
                    } else {
                        /* dcol (CKK, HoWo) = w^T @ dy, scattered back into dx */
                        eenet_sgemm(1, 0, ckk, howo, K, 1.0f, w, ckk, dy, howo, 0.0f, col, howo);
                        col2im_add(dx, col, C, H, W, pl->kh, pl->kw, pl->s, pl->p, pl->Ho, pl->Wo);
                    }
                }
            }
        }
#ifdef _OPENMP
#pragma omp barrier
#pragma omp for schedule(static)
#endif
        for (int e = 0; e < (dw ? K * ckk : 0); e++) {
            /* the K-vectorised partials are stored transposed, (CKK, K) */
            size_t src_e = (do_kw || do_kwq || do_cw) ? (size_t)(e % ckk) * K + (size_t)(e / ckk)
                                                      : (size_t)e;
            float acc = 0.0f;
            for (int t = 0; t < nt; t++) {
                acc += slots[(size_t)t * pl->slot + pl->s_pdw + src_e];
            }
            dw[e] += acc;
        }
        if (dbias) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int k = 0; k < K; k++) {
                float acc = 0.0f;
                for (int t = 0; t < nt; t++) {
                    acc += slots[(size_t)t * pl->slot + pl->s_pdb + k];
                }
                dbias[k] += acc;
            }
        }
    }
    eenet_blas_set_threads(eenet_get_num_threads());
}

/* ---- public entry points ------------------------------------------------ */

/* dbias[k] += sum_{n, q} dout[n, k, q] (the Winograd weight-gradient pass
 * leaves the bias to this). */
static void bias_grad(float *dbias, const float *dout, int N, int K, int howo) {
    for (int k = 0; k < K; k++) {
        float acc = 0.0f;
        for (int n = 0; n < N; n++) {
            const float *d = dout + ((size_t)n * K + k) * howo;
            for (int q = 0; q < howo; q++) {
                acc += d[q];
            }
        }
        dbias[k] += acc;
    }
}

/* Tag of the prepared weights the forward of this plan can use: 1 + wino_avx
 * for the per-sample Winograd path (U of eenet_wino_weights), 4 for the
 * F(4x4) forward (U of eenet_wino4_weights), 3 for the
 * batch-lane Winograd path (U of eenet_wlanes_weights: 16->16 7x7, one
 * thread, C caller: one sample 4.10 -> 3.23 us, 55 -> 70 GFLOP/s; five
 * 12.8 -> 12.0 us), 0 for paths that transform nothing worth keeping. */
static int prepared_tag(const conv_plan *pl) {
    if (pl->use_yf) {
        return 5; /* U (36, C, K) of eenet_wl4_weights */
    }
    if (pl->use_tf) {
        return 6; /* U (36, C, K) of eenet_tl4_weights */
    }
    if (pl->use_xf) {
        return 3;
    }
    if (pl->use_qf) {
        return 4; /* U of eenet_wino4_weights */
    }
    return pl->use_wf ? 1 + pl->wino_avx : 0;
}

size_t eenet_conv2d_prepared_floats(int C, int H, int W, int K, int kh, int kw, int stride,
                                    int pad) {
    int Ho = 0, Wo = 0;
    if (check_sizes(1, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo) != EENET_OK) {
        return 0;
    }
    conv_plan pl;
    plan_init(&pl, 1, C, H, W, K, kh, kw, stride, pad);
    size_t n = pl.wino_ok ? eenet_wino_weights_floats(C, K) : 0;
    size_t nl = pl.wl_ok ? 16 * (size_t)C * K : 0; /* eenet_wlanes_weights' U */
    if (pl.y4_ok || pl.t4_ok) {
        nl = 36 * (size_t)C * K; /* eenet_wl4_weights' / eenet_tl4_weights' U */
    }
    size_t n4 = pl.wino_ok && pl.w4_ok ? eenet_wino4_weights_floats(C, K) : 0;
    n = n > nl ? n : nl;
    return n > n4 ? n : n4;
}

int eenet_conv2d_prepare(float *prep, const float *w, int C, int H, int W, int K, int kh, int kw,
                         int stride, int pad) {
    int Ho = 0, Wo = 0;
    if (!prep || !w || check_sizes(1, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo) != EENET_OK) {
        return 0;
    }
    conv_plan pl;
    plan_init(&pl, 1, C, H, W, K, kh, kw, stride, pad);
    plan_choose(&pl);
    const int tag = prepared_tag(&pl);
    if (tag == 5) {
        eenet_wl4_weights(prep, w, K, C, 0);
    } else if (tag == 6) {
        eenet_tl4_weights(prep, w, K, C, 0);
    } else if (tag == 3) {
        eenet_wlanes_weights(prep, w, K, C, 0);
    } else if (tag == 4) {
        eenet_wino4_weights(prep, w, K, C, 0);
    } else if (tag) {
        eenet_wino_weights(prep, w, K, C, 0, pl.wino_avx);
    }
    return tag;
}

eenet_status eenet_conv2d_forward_ex(float *out, const float *inp, const float *w,
                                     const float *bias, float *workspace, int N, int C, int H,
                                     int W, int K, int kh, int kw, int stride, int pad,
                                     int nthreads) {
    return eenet_conv2d_forward_prepared(out, inp, w, NULL, 0, bias, workspace, N, C, H, W, K,
                                         kh, kw, stride, pad, nthreads);
}

eenet_status eenet_conv2d_forward_prepared(float *out, const float *inp, const float *w,
                                           const float *prep, int prep_tag, const float *bias,
                                           float *workspace, int N, int C, int H, int W, int K,
                                           int kh, int kw, int stride, int pad, int nthreads) {
    return eenet_conv2d_forward_fused(out, inp, w, prep, prep_tag, bias, NULL, 0, workspace, N,
                                      C, H, W, K, kh, kw, stride, pad, nthreads);
}

/* out = relu?(out + residual) in place, as eenet_add_forward /
 * eenet_add_relu_forward / eenet_relu_forward compute it (the paths that do
 * not fuse the epilogue into their output stores). */
static void epilogue_pass(float *out, const float *residual, int relu, size_t n) {
    if (residual && relu) {
        eenet_add_relu_forward(out, out, residual, n);
    } else if (residual) {
        eenet_add_forward(out, out, residual, n);
    } else if (relu) {
        eenet_relu_forward(out, out, n);
    }
}

eenet_status eenet_conv2d_forward_fused(float *out, const float *inp, const float *w,
                                        const float *prep, int prep_tag, const float *bias,
                                        const float *residual, int relu, float *workspace, int N,
                                        int C, int H, int W, int K, int kh, int kw, int stride,
                                        int pad, int nthreads) {
    int Ho = 0, Wo = 0;
    eenet_status st = check_sizes(N, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo);
    if (st != EENET_OK) {
        return st;
    }
    if (!out || !inp || !w || !workspace) {
        return eenet_set_error(EENET_ERR_VALUE, "conv2d_forward: NULL buffer");
    }
    conv_plan pl;
    plan_init(&pl, N, C, H, W, K, kh, kw, stride, pad);
    plan_choose(&pl);
    if (pl.use_yf) {
        /* channel-lane F(4x4): U (36, C, K) prepared, or made for this call
         * by the kernel's threads */
        const float *u = prep && prep_tag == 5 ? prep : NULL;
        eenet_wl4_conv(out, 0, inp, u, workspace + pl.o_wlu, w, 0, bias,
                       workspace + pl.shared + pl.s_wl, pl.slot, N, H, W,
                       pick_threads_wino(nthreads, &pl));
        epilogue_pass(out, residual, relu, (size_t)N * K * Ho * Wo);
        return EENET_OK;
    }
    if (pl.use_tf) {
        /* tile-lane F(4x4): U (36, C, K) prepared, or made for this call
         * by the kernel's threads */
        const float *u = prep && prep_tag == 6 ? prep : NULL;
        eenet_tl4_conv(out, 0, inp, u, workspace + pl.o_wlu, w, 0, bias,
                       workspace + pl.shared + pl.s_wl, pl.slot, N, C, K, H, W,
                       pick_threads_wino(nthreads, &pl));
        epilogue_pass(out, residual, relu, (size_t)N * K * Ho * Wo);
        return EENET_OK;
    }
    if (pl.use_xf) {
        /* batch-lane Winograd: U (16, C, K) prepared, or made for this call */
        const float *u = prep && prep_tag == 3 ? prep : workspace + pl.o_wlu;
        if (u != prep) {
            eenet_wlanes_weights(workspace + pl.o_wlu, w, K, C, 0);
        }
        eenet_wlanes_conv(out, 0, inp, u, workspace + pl.o_wlu, bias,
                          workspace + pl.shared + pl.s_wl, pl.slot, N, C, K, H, W,
                          C > K ? C : K, pick_threads_wino(nthreads, &pl));
        epilogue_pass(out, residual, relu, (size_t)N * K * Ho * Wo);
        return EENET_OK;
    }
    if (pl.use_qf) {
        /* F(4x4): the epilogue inside the output transform */
        const float *u_pre = prep && prep_tag == 4 ? prep : NULL;
        eenet_wino4_conv(out, residual, relu, inp, w, u_pre, bias, workspace + pl.o_wino,
                         workspace + pl.shared + pl.s_wino, pl.slot, N, C, K, H, W,
                         pick_threads_wino(nthreads, &pl));
        return EENET_OK;
    }
    if (pl.use_wf) {
        /* the epilogue inside the output transform */
        const float *u_pre = prep && prep_tag != 0 && prep_tag == prepared_tag(&pl) ? prep : NULL;
        eenet_wino_conv(out, residual, relu, inp, w, u_pre, 0, bias, workspace + pl.o_wino,
                        workspace + pl.shared + pl.s_wino, pl.slot, N, C, K, H, W,
                        pick_threads_wino(nthreads, &pl), pl.wino_avx);
        return EENET_OK;
    }
    conv_forward_run(out, inp, w, bias, workspace, pick_threads(nthreads, &pl, 1), &pl);
    epilogue_pass(out, residual, relu, (size_t)N * K * Ho * Wo);
    return EENET_OK;
}

eenet_status eenet_conv2d_forward(float *out, const float *inp, const float *w,
                                  const float *bias, float *workspace, int N, int C, int H,
                                  int W, int K, int kh, int kw, int stride, int pad) {
    return eenet_conv2d_forward_ex(out, inp, w, bias, workspace, N, C, H, W, K, kh, kw, stride,
                                   pad, eenet_get_num_threads());
}

/* dx (N samples of `img` floats) set to zero by the threads that then
 * accumulate into it: the kernels split the samples statically over the
 * same thread count, so each thread's share starts in its own core's cache
 * (zeroed serially on one core first, it did not).  Measured (16->16 7x7,
 * batch 128, 2 threads, wall clock, best of 300x5 calls, a loaded machine:
 * three alternating runs each): backward-data 84.5-123 -> 81.0-100 us beside
 * the forward's 75.7-93.3 / 76.5-106 us, i.e. its excess over the forward
 * (the zeroing and the reads of dinp) 8.8 -> 4.5 us in the best runs. */
static void zero_samples(float *dx, size_t img, int N, int nt) {
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if ((size_t)N * img >= 65536)
#endif
    for (int n = 0; n < N; n++) {
        memset(dx + (size_t)n * img, 0, sizeof(float) * img);
    }
}

/* eenet_conv2d_backward_ex (set_dinp 0: dinp += the data gradient) and
 * eenet_conv2d_backward_set (1: dinp = it). */
static eenet_status conv_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                  const float *inp, const float *w, float *workspace, int N,
                                  int C, int H, int W, int K, int kh, int kw, int stride, int pad,
                                  int nthreads, int set_dinp) {
    int Ho = 0, Wo = 0;
    eenet_status st = check_sizes(N, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo);
    if (st != EENET_OK) {
        return st;
    }
    if (!dout || !inp || !w || !workspace) {
        return eenet_set_error(EENET_ERR_VALUE, "conv2d_backward: NULL buffer");
    }
    conv_plan pl;
    plan_init(&pl, N, C, H, W, K, kh, kw, stride, pad);
    plan_choose(&pl);
    /* the F(4x4) paths below store a set dinp; every other one adds to it
     * (storing instead of zeroing and adding, 2 threads, time: 16->16 7x7
     * 0.91-0.93x at batch 32, 0.95-0.96x at 128; 8->8 14x14 0.83x, 0.89x) */
    if (set_dinp && dinp && !pl.use_yf && !pl.use_td) {
        zero_samples(dinp, (size_t)C * H * W, N, pick_threads(nthreads, &pl, 0));
    }
    int add_dinp = !set_dinp;
    if (pl.use_yf && (dinp || (dw && pl.use_yw))) {
        /* dw through the F(4x4) domain (use_yw) or with dbias by the paths
         * above, then dinp += the channel-lane F(4x4) convolution of dout
         * with the flipped, transposed kernel */
        if (dw && pl.use_yw) {
            eenet_wl4_dw(dw, dbias, dout, inp, workspace + pl.shared + pl.s_wl, pl.slot, N, H,
                         W, pick_threads_wino(nthreads, &pl));
        } else if (dw || dbias) {
            conv_backward_run(NULL, dw, dbias, dout, inp, w, workspace,
                              pick_threads(nthreads, &pl, 0), &pl);
        }
        if (!dinp) {
            return EENET_OK;
        }
        eenet_wl4_conv(dinp, add_dinp, dout, NULL, workspace + pl.o_wlu, w, 1, NULL,
                       workspace + pl.shared + pl.s_wl, pl.slot, N, H, W,
                       pick_threads_wino(nthreads, &pl));
        return EENET_OK;
    }
    if ((pl.use_tw && dw) || (pl.use_td && dinp)) {
        /* the tile-lane F(4x4) path for the weight gradient (with dbias)
         * and/or the data gradient; the other one by the paths above */
        int ntw = pick_threads_wino(nthreads, &pl);
        if (dw && pl.use_tw) {
            eenet_tl4_dw(dw, dbias, dout, inp, workspace + pl.o_wlu, workspace + pl.shared + pl.s_wl,
                         pl.slot, N, C, K, H, W, ntw);
        } else if (dw || dbias) {
            conv_backward_run(NULL, dw, dbias, dout, inp, w, workspace,
                              pick_threads(nthreads, &pl, 0), &pl);
        }
        if (dinp && pl.use_td) {
            eenet_tl4_conv(dinp, add_dinp, dout, NULL, workspace + pl.o_wlu, w, 1, NULL,
                           workspace + pl.shared + pl.s_wl, pl.slot, N, K, C, H, W, ntw);
        } else if (dinp) {
            conv_backward_run(dinp, NULL, NULL, dout, inp, w, workspace,
                              pick_threads(nthreads, &pl, 0), &pl);
        }
        return EENET_OK;
    }
    if (pl.use_xd && dinp) {
        /* dw, dbias by the paths above, then dinp += the batch-lane Winograd
         * convolution of dout with the flipped, transposed kernel */
        if (dw || dbias) {
            conv_backward_run(NULL, dw, dbias, dout, inp, w, workspace,
                              pick_threads(nthreads, &pl, 0), &pl);
        }
        float *u = workspace + pl.o_wlu;
        eenet_wlanes_weights(u, w, C, K, 1);
        eenet_wlanes_conv(dinp, 1, dout, u, u, NULL, workspace + pl.shared + pl.s_wl, pl.slot, N,
                          K, C, H, W, C > K ? C : K, pick_threads_wino(nthreads, &pl));
        return EENET_OK;
    }
    int qd = pl.use_qd && dinp;
    int wd = pl.use_wd && dinp && !qd, ww = pl.use_ww && dw;
    if (wd || ww || qd) {
        /* each gradient by its own pass: the weight gradient through the
         * Winograd domain or the paths above (with dbias), then dinp += the
         * F(4x4) or F(2x2) Winograd convolution of dout with the flipped,
         * transposed kernel, or the paths above */
        int ntw = pick_threads_wino(nthreads, &pl);
        if (ww) {
            eenet_wino_dw(dw, dout, inp, workspace + pl.shared + pl.s_wino, pl.slot, N, C, K, H,
                          W, ntw, pl.wino_avx);
            if (dbias) {
                bias_grad(dbias, dout, N, K, Ho * Wo);
            }
        } else if (dw || dbias) {
            conv_backward_run(NULL, dw, dbias, dout, inp, w, workspace,
                              pick_threads(nthreads, &pl, 0), &pl);
        }
        if (qd) {
            /* U (36, C, K) of the flipped kernel for this call (36*C*K
             * floats, in the shared Winograd region), then the K -> C
             * forward of dout added to dinp in the output transform */
            float *u = workspace + pl.o_wino;
            eenet_wino4_weights(u, w, C, K, 1);
            eenet_wino4_conv(dinp, dinp, 0, dout, NULL, u, NULL, u,
                             workspace + pl.shared + pl.s_wino, pl.slot, N, K, C, H, W, ntw);
        } else if (wd) {
            eenet_wino_conv(dinp, dinp, 0, dout, w, NULL, 1, NULL, workspace + pl.o_wino,
                            workspace + pl.shared + pl.s_wino, pl.slot, N, K, C, H, W, ntw,
                            pl.wino_avx);
        } else if (dinp) {
            conv_backward_run(dinp, NULL, NULL, dout, inp, w, workspace,
                              pick_threads(nthreads, &pl, 0), &pl);
        }
        return EENET_OK;
    }
    conv_backward_run(dinp, dw, dbias, dout, inp, w, workspace, pick_threads(nthreads, &pl, 0),
                      &pl);
    return EENET_OK;
}

eenet_status eenet_conv2d_backward_ex(float *dinp, float *dw, float *dbias, const float *dout,
                                      const float *inp, const float *w, float *workspace,
                                      int N, int C, int H, int W, int K, int kh, int kw,
                                      int stride, int pad, int nthreads) {
    return conv_backward(dinp, dw, dbias, dout, inp, w, workspace, N, C, H, W, K, kh, kw,
                         stride, pad, nthreads, 0);
}

eenet_status eenet_conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                   const float *inp, const float *w, float *workspace, int N,
                                   int C, int H, int W, int K, int kh, int kw, int stride,
                                   int pad) {
    return conv_backward(dinp, dw, dbias, dout, inp, w, workspace, N, C, H, W, K, kh, kw,
                         stride, pad, eenet_get_num_threads(), 0);
}

eenet_status eenet_conv2d_backward_set(float *dinp, float *dw, float *dbias, const float *dout,
                                       const float *inp, const float *w, float *workspace,
                                       int N, int C, int H, int W, int K, int kh, int kw,
                                       int stride, int pad) {
    return conv_backward(dinp, dw, dbias, dout, inp, w, workspace, N, C, H, W, K, kh, kw,
                         stride, pad, eenet_get_num_threads(), 1);
}

/* ---- naive references --------------------------------------------------- */

eenet_status eenet_conv2d_forward_naive(float *out, const float *inp, const float *w,
                                        const float *bias, int N, int C, int H, int W, int K,
                                        int kh, int kw, int stride, int pad) {
    int Ho = 0, Wo = 0;
    eenet_status st = check_sizes(N, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo);
    if (st != EENET_OK) {
        return st;
    }
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) {
            for (int oy = 0; oy < Ho; oy++) {
                for (int ox = 0; ox < Wo; ox++) {
                    double acc = bias ? (double)bias[k] : 0.0;
                    for (int c = 0; c < C; c++) {
                        for (int i = 0; i < kh; i++) {
                            int iy = oy * stride + i - pad;
                            if (iy < 0 || iy >= H) {
                                continue;
                            }
                            for (int j = 0; j < kw; j++) {
                                int ix = ox * stride + j - pad;
                                if (ix < 0 || ix >= W) {
                                    continue;
                                }
                                acc += (double)w[(((size_t)k * C + c) * kh + i) * kw + j] *
                                       (double)inp[(((size_t)n * C + c) * H + iy) * W + ix];
                            }
                        }
                    }
                    out[(((size_t)n * K + k) * Ho + oy) * Wo + ox] = (float)acc;
                }
            }
        }
    }
    return EENET_OK;
}

eenet_status eenet_conv2d_backward_naive(float *dinp, float *dw, float *dbias,
                                         const float *dout, const float *inp, const float *w,
                                         int N, int C, int H, int W, int K, int kh, int kw,
                                         int stride, int pad) {
    int Ho = 0, Wo = 0;
    eenet_status st = check_sizes(N, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo);
    if (st != EENET_OK) {
        return st;
    }
    /* dbias[k] += sum_{n,oy,ox} dout[n,k,oy,ox] */
    if (dbias) {
        for (int k = 0; k < K; k++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) {
                const float *dy = dout + ((size_t)n * K + k) * Ho * Wo;
                for (int q = 0; q < Ho * Wo; q++) {
                    acc += dy[q];
                }
            }
            dbias[k] += (float)acc;
        }
    }
    /* dw[k,c,i,j] += sum_{n,oy,ox} dout[n,k,oy,ox] * inp[n,c,oy*s+i-p,ox*s+j-p] */
    for (int k = 0; k < (dw ? K : 0); k++) {
        for (int c = 0; c < C; c++) {
            for (int i = 0; i < kh; i++) {
                for (int j = 0; j < kw; j++) {
                    double acc = 0.0;
                    for (int n = 0; n < N; n++) {
                        for (int oy = 0; oy < Ho; oy++) {
                            int iy = oy * stride + i - pad;
                            if (iy < 0 || iy >= H) {
                                continue;
                            }
                            for (int ox = 0; ox < Wo; ox++) {
                                int ix = ox * stride + j - pad;
                                if (ix < 0 || ix >= W) {
                                    continue;
                                }
                                acc += (double)dout[(((size_t)n * K + k) * Ho + oy) * Wo + ox] *
                                       (double)inp[(((size_t)n * C + c) * H + iy) * W + ix];
                            }
                        }
                    }
                    dw[(((size_t)k * C + c) * kh + i) * kw + j] += (float)acc;
                }
            }
        }
    }
    /* dinp[n,c,iy,ix] += sum_{k,i,j: iy=oy*s+i-p, ix=ox*s+j-p} w[k,c,i,j] * dout[n,k,oy,ox] */
    if (dinp) {
        for (int n = 0; n < N; n++) {
            for (int c = 0; c < C; c++) {
                for (int iy = 0; iy < H; iy++) {
                    for (int ix = 0; ix < W; ix++) {
                        double acc = 0.0;
                        for (int k = 0; k < K; k++) {
                            for (int i = 0; i < kh; i++) {
                                int ty = iy + pad - i;
                                if (ty < 0 || ty % stride != 0 || ty / stride >= Ho) {
                                    continue;
                                }
                                int oy = ty / stride;
                                for (int j = 0; j < kw; j++) {
                                    int tx = ix + pad - j;
                                    if (tx < 0 || tx % stride != 0 || tx / stride >= Wo) {
                                        continue;
                                    }
                                    int ox = tx / stride;
                                    acc += (double)w[(((size_t)k * C + c) * kh + i) * kw + j] *
                                           (double)dout[(((size_t)n * K + k) * Ho + oy) * Wo + ox];
                                }
                            }
                        }
                        dinp[(((size_t)n * C + c) * H + iy) * W + ix] += (float)acc;
                    }
                }
            }
        }
    }
    return EENET_OK;
}
