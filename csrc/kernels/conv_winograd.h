/* conv_winograd.h: internal interface between conv.c and the Winograd
 * F(2x2,3x3) convolution of conv_winograd.c (3x3 kernels, stride 1, pad 1).
 *
 * Per 2x2 output tile (input tile d 4x4 at rows 2ty-1.., columns 2tx-1..):
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A,        (.) elementwise over 16 e
 * so the transformed-domain product is, for each of the 16 elements e, one
 * GEMM M_e (cout, tiles) = U_e (cout, cin) . V_e (cin, tiles).
 * Tiles are processed in blocks of whole tile rows (global row index
 * n*th + ty, any number of samples per block), each thread owning one
 * V (16, cin, ldv) and M (16, cout, ldv) buffer in its workspace slot.
 */
#ifndef EENET_CONV_WINOGRAD_H
#define EENET_CONV_WINOGRAD_H

#include <stddef.h>

/* n rounded up to a multiple of 16 floats (64 bytes): the offsets and row
 * strides of the conv workspaces, so that each region starts on a cache line. */
static inline size_t eenet_round16(size_t n) {
    return (n + 15u) & ~(size_t)15u;
}

/* Workspace of a Winograd convolution of (cin or cout) channels on an H x W
 * plane, large enough for both directions (forward cin = C, cout = K;
 * backward-data cin = K, cout = C): `shared` floats once (transformed
 * weights, GEMM row offsets) and `slot` floats per thread.  Depends on the
 * sizes only. */
void eenet_wino_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot);

/* out (N, cout, H, W) = relu?(conv3x3_pad1(inp (N, cin, H, W), w') + bias
 * + add), bias NULL: none, add (N, cout, H, W) NULL: none, add = out:
 * accumulate (out += conv); relu = 1 applies v < 0 ? 0 : v last.  The same
 * bits as the conv alone followed by eenet_add_forward / eenet_relu_forward.
 * flip = 0: w' = w (cout, cin, 3, 3) (forward);  flip = 1: w is the forward
 * weight (cin, cout, 3, 3) and w'[co][ci][a][b] = w[ci][co][2-a][2-b]
 * (backward-data: inp = dout, out = dinp).  u_pre: NULL, or U already
 * transformed from w (eenet_wino_weights below; w is then not read).
 * shared/slots as sized by
 * eenet_wino_sizes(C, K, H, W) (slots slot_stride floats apart, nt of them);
 * avx = 1 uses the AVX-512 transforms and GEMM micro-kernel (caller checked
 * the CPU), 0 the portable C transforms with eenet_sgemm. */
void eenet_wino_conv(float *out, const float *add, int relu, const float *inp, const float *w,
                     const float *u_pre, int flip, const float *bias, float *shared,
                     float *slots, size_t slot_stride, int N, int cin, int cout, int H, int W,
                     int nt, int avx);

/* The transformed weights U (16 positions) eenet_wino_conv forms from w at
 * each call, for a caller that keeps them over many calls with the same w
 * (u_pre): eenet_wino_weights_floats(cin, cout) floats, filled by
 * eenet_wino_weights with the same w, flip and avx as the calls. */
size_t eenet_wino_weights_floats(int cin, int cout);
void eenet_wino_weights(float *u, const float *w, int cout, int cin, int flip, int avx);

/* 1 if eenet_wino_dw handles these channel counts on this path (AVX-512:
 * K a multiple of 16 up to 64; portable: any). */
int eenet_wino_dw_ok(int C, int K, int avx);

/* Weight gradient through the Winograd domain: dw (K, C, 3, 3) +=
 * sum over samples and 2x2 output tiles of G^T [(A dY A^T) (.) (B^T d B)] G,
 * dout (N, K, H, W), inp (N, C, H, W) (ACCUMULATES; bias not handled).
 * slots as for eenet_wino_conv (sized by eenet_wino_sizes(C, K, H, W)). */
void eenet_wino_dw(float *dw, const float *dout, const float *inp, float *slots,
                   size_t slot_stride, int N, int C, int K, int H, int W, int nt, int avx);

/* U = G g G^T (4x4, u[4*i + j]) of one 3x3 filter, in double, with
 * G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] and g = w[co][ci] (flip = 0;
 * w (cout, cin, 3, 3)) or g[a][b] = w[ci][co][2-a][2-b] (flip = 1; w (cin,
 * cout, 3, 3): backward-data).  Shared by every Winograd weight transform. */
static inline void eenet_wino_filter(double u[16], const float *w, int cout, int cin, int co,
                                     int ci, int flip) {
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
    for (int i = 0; i < 4; i++) { /* U = t G^T (4x4) */
        u[4 * i + 0] = t[i][0];
        u[4 * i + 1] = 0.5 * (t[i][0] + t[i][1] + t[i][2]);
        u[4 * i + 2] = 0.5 * (t[i][0] - t[i][1] + t[i][2]);
        u[4 * i + 3] = t[i][2];
    }
}

/* ---- batch-lane Winograd F(2x2,3x3) (conv_wlanes.c): cin, cout <= 16 ---- */

/* Workspace of eenet_wlanes_conv for a C -> K layer on an H x W plane, both
 * directions (`shared`: the transformed weights, then index tables; `slot`
 * per thread, for m = max(C, K) channels).  Depends on the sizes only. */
void eenet_wlanes_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot);

/* u (16, cin, cout) = U_e[co][ci] = (G g G^T)[e/4][e%4] (in float, 16
 * filters per vector, on AVX-512 builds; in double otherwise),
 * for g = w[co][ci] (flip = 0; w (cout, cin, 3, 3)) or g[a][b] =
 * w[ci][co][2-a][2-b] (flip = 1; w (cin, cout, 3, 3): backward-data). */
void eenet_wlanes_weights(float *u, const float *w, int cout, int cin, int flip);

/* out (N, cout, H, W) = conv3x3_pad1(inp (N, cin, H, W)) + bias (accumulate
 * = 0; bias NULL: none) or out += conv (accumulate = 1), with U (16, cin,
 * cout) from eenet_wlanes_weights at u (the shared region sized by
 * eenet_wlanes_sizes, or weights prepared elsewhere) and the shared region
 * at `shared` (index tables written here after its first r16(16*cin*cout)
 * floats).  AVX-512 only (caller checked the CPU).  Slots
 * slot_stride floats apart sized by eenet_wlanes_sizes with m = max(C, K);
 * up to nt threads (whole groups of 16 samples, then single samples). */
void eenet_wlanes_conv(float *out, int accumulate, const float *inp, const float *u,
                       float *shared, const float *bias, float *slots, size_t slot_stride, int N,
                       int cin, int cout, int H, int W, int m, int nt);

/* ---- Winograd F(4x4,3x3) (conv_wino4.c): W = 32, H % 8 == 0; W = 16, H % 16 == 0; 8x8 ----
 * A forward convolution; the data gradient of a stride-1 pad-1 3x3 layer is
 * one too (dinp += conv3x3_pad1(dout, flipped transposed w): U from
 * eenet_wino4_weights with flip = 1, passed as u_pre, add = out = dinp). */

/* 1 if eenet_wino4_conv handles an H x W plane (W = 32, H a multiple of 8;
 * W = 16, H a multiple of 16; or H = W = 8). */
int eenet_wino4_ok(int H, int W);

/* Workspace of eenet_wino4_conv for a C -> K layer, large enough for both
 * directions (forward cin = C, cout = K; data gradient cin = K, cout = C):
 * `shared` floats once (transformed weights, GEMM row offsets), `slot` floats
 * per thread.  Depends on the sizes only. */
void eenet_wino4_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot);

/* U (36 planes) of eenet_wino4_conv: eenet_wino4_weights_floats(cin, cout)
 * floats, filled by eenet_wino4_weights from w (cout, cin, 3, 3) (flip = 0)
 * or, for the data gradient (inp = dout, out = dinp), from the forward weight
 * w (cin, cout, 3, 3) flipped: w'[co][ci][a][b] = w[ci][co][2-a][2-b]
 * (flip = 1). */
size_t eenet_wino4_weights_floats(int cin, int cout);
void eenet_wino4_weights(float *u, const float *w, int cout, int cin, int flip);

/* out (N, cout, H, W) = relu?(conv3x3_pad1(inp (N, cin, H, W), w) + bias
 * + add) (bias, add NULL: none; add = out allowed), the same bits as the conv
 * alone followed by eenet_add_forward / eenet_relu_forward; w (cout, cin, 3,
 * 3) or u_pre (eenet_wino4_weights of w; w then not read).  AVX-512 only
 * (caller checked the CPU and eenet_wino4_ok); shared/slots as sized by
 * eenet_wino4_sizes (nt slots slot_stride floats apart). */
void eenet_wino4_conv(float *out, const float *add, int relu, const float *inp, const float *w,
                      const float *u_pre, const float *bias, float *shared, float *slots,
                      size_t slot_stride, int N, int cin, int cout, int H, int W, int nt);

/* ---- Winograd F(4x4,3x3), 16 -> 16 on small planes (conv_wl4.c) ---- */

/* 1 if eenet_wl4_conv handles a C -> K layer on an H x W plane (C = K = 16,
 * 4 < H, W <= 8: 2x2 tiles of 4x4 outputs). */
int eenet_wl4_ok(int C, int K, int H, int W);

/* Workspace of eenet_wl4_conv (either direction): `shared` floats (U) once,
 * `slot` floats per thread.  Depends on the sizes only. */
void eenet_wl4_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot);

/* u (36, cin, cout) = U_e[co][ci] = (G g G^T)[e/6][e%6] (points 0, 1, -1,
 * 1/2, -2, inf; in double, rounded once) for g = w[co][ci] (flip = 0; w
 * (cout, cin, 3, 3)) or g[a][b] = w[ci][co][2-a][2-b] (flip = 1; w (cin,
 * cout, 3, 3): backward-data). */
void eenet_wl4_weights(float *u, const float *w, int cout, int cin, int flip);

/* out (N, 16, H, W) = conv3x3_pad1(inp (N, 16, H, W)) + bias (accumulate =
 * 0; bias NULL: none) or out += conv (accumulate = 1), with u from
 * eenet_wl4_weights, or (u NULL) with the U the threads first make into
 * u_make (the shared region of eenet_wl4_sizes) from w and flip as
 * eenet_wl4_weights(u_make, w, 16, 16, flip) would.  AVX-512 only (caller
 * checked the CPU and eenet_wl4_ok); up to nt threads over the samples,
 * slots slot_stride floats apart sized by eenet_wl4_sizes.  A sample's bits
 * do not depend on N, its position or nt. */
void eenet_wl4_conv(float *out, int accumulate, const float *inp, const float *u,
                    float *u_make, const float *w, int flip, const float *bias, float *slots,
                    size_t slot_stride, int N, int H, int W, int nt);

/* Weight gradient of the same layer through the F(4x4) domain: dw (16, 16,
 * 3, 3) += sum over samples and tiles of G^T [(A dY A^T) (.) (B^T d B)] G,
 * dbias (16; NULL: none) += sum of dout over samples and pixels, dout (N, 16,
 * H, W), inp (N, 16, H, W) (ACCUMULATES).
 * Per thread a partial dU (36, 16, 16) summed over blocks of 4 samples (each
 * block's sum formed from zero), the partials added in thread order, then
 * G^T dU G in double.  Slots as for eenet_wl4_conv. */
void eenet_wl4_dw(float *dw, float *dbias, const float *dout, const float *inp, float *slots,
                  size_t slot_stride, int N, int H, int W, int nt);

/* ---- Winograd F(4x4,3x3) with the 16 tiles of a sample in the lanes
 * (conv_tl4.c): C, K <= 16 on planes of 13..16 rows and columns ---- */

/* 1 if eenet_tl4_conv / eenet_tl4_dw handle a C -> K layer on an H x W plane
 * (1 <= C, K <= 16, 12 < H, W <= 16: 4x4 tiles of 4x4 outputs). */
int eenet_tl4_ok(int C, int K, int H, int W);

/* Workspace of eenet_tl4_conv and eenet_tl4_dw: `shared` floats (U, or the
 * reduced dU) once, `slot` floats per thread.  Depends on the sizes only. */
void eenet_tl4_sizes(int C, int K, int H, int W, size_t *shared, size_t *slot);

/* u (36, cin, cout) = U_e[co][ci] = (G g G^T)[e/6][e%6] (as
 * eenet_wl4_weights, any cin, cout): g = w[co][ci] (flip = 0; w (cout, cin,
 * 3, 3)) or g[a][b] = w[ci][co][2-a][2-b] (flip = 1; backward-data). */
void eenet_tl4_weights(float *u, const float *w, int cout, int cin, int flip);

/* out (N, K, H, W) = conv3x3_pad1(inp (N, C, H, W)) + bias (accumulate = 0;
 * bias NULL: none) or out += conv (accumulate = 1), u from eenet_tl4_weights
 * (36, C, K), or (u NULL) the U the threads first make into u_make (36 C K
 * floats) from w and flip as eenet_tl4_weights(u_make, w, K, C, flip)
 * would.  AVX-512 only (caller checked the CPU and eenet_tl4_ok); up to nt
 * threads over the samples, slots slot_stride floats apart sized by
 * eenet_tl4_sizes.  A sample's bits do not depend on N, its position or nt. */
void eenet_tl4_conv(float *out, int accumulate, const float *inp, const float *u,
                    float *u_make, const float *w, int flip, const float *bias, float *slots,
                    size_t slot_stride, int N, int C, int K, int H, int W, int nt);

/* Weight gradient through the F(4x4) domain: dw (K, C, 3, 3) += sum over
 * samples and tiles of G^T [(A dY A^T) (.) (B^T d B)] G, dbias (K; NULL: none)
 * += sum of dout, dout (N, K, H, W), inp (N, C, H, W) (ACCUMULATES).  du: the
 * shared region of eenet_tl4_sizes (36 K C floats, overwritten).  Slots as
 * for eenet_tl4_conv. */
void eenet_tl4_dw(float *dw, float *dbias, const float *dout, const float *inp, float *du,
                  float *slots, size_t slot_stride, int N, int C, int K, int H, int W, int nt);

#endif /* EENET_CONV_WINOGRAD_H */
