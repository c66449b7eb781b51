/* conv_direct.h: internal interface between conv.c and the vectorised
 * direct-convolution micro-kernels (conv_avx512.c).
 *
 * The direct path works in "q-space": a sample's input is copied, zero-padded
 * and split into s*s phase planes P[c,a,b][y][x] = xpad[c][s*y+a][s*x+b]
 * (each plane hs x ws, stored with `plane` floats including a zero tail), so
 * that a tap (c,i,j) of a stride-s convolution becomes a contiguous shifted
 * read: out_q[k][q] += w[k,c,i,j] * src[off(c,i,j) + q], q = oy*ws + ox,
 * off(c,i,j) = (c*s*s + (i%s)*s + j%s)*plane + (i/s)*ws + j/s.
 * Columns ox >= Wo of q-space are garbage (computed, then dropped).
 */
#ifndef EENET_CONV_DIRECT_H
#define EENET_CONV_DIRECT_H

#include <stddef.h>

/* Output channels per register block of the forward micro-kernel for
 * `remaining` channels (the weight packing in conv.c uses the same rule). */
static inline int eenet_conv_fwd_kblock(int remaining) {
    return remaining >= 8 ? 8 : remaining >= 4 ? 4 : remaining >= 2 ? 2 : 1;
}

/* 1 if the AVX-512 micro-kernels can run on this CPU (x86-64 with AVX-512F,
 * checked at run time), else 0 (other CPUs use the im2col+GEMM path). */
int eenet_conv_direct_available(void);

/* yq (cout, ldy) = sum_t wp[t] * src[off[t] + q] for q < nq*16 (overwrites).
 * wp: for each output-channel block [k0, k0+kb) (kb = eenet_conv_fwd_kblock),
 * ntaps*kb floats at wp + k0*ntaps laid out [t][kk]. */
void eenet_conv_direct_fwd(float *yq, size_t ldy, const float *src, const int *off,
                           const float *wp, int cout, int ntaps, int nq);

/* dw (cout, ntaps) += sum_{b<nb} sum_{q<nq*16} dq[b][k][q] * src[b][off[t] + q]
 * (accumulates); dq sample b at dq + b*dq_stride with rows ldq apart; src
 * sample b at src + b*src_stride. */
void eenet_conv_direct_bw(float *dw, const float *dq, size_t ldq, size_t dq_stride,
                          const float *src, size_t src_stride, const int *off, int cout,
                          int ntaps, int nq, int nb);

/* K-vectorised path (16*kv output channels per register block; cout a
 * multiple of 16*kv).  xp (cin, hp, wp): the zero-padded input; off[t] =
 * c*hp*wp + i*wp + j.  wk packed like the forward q-space weights with
 * blocks of 16*kv channels.  Forward writes out (cout, ho, wo) = result + bias
 * (accumulate = 0) or adds the result (accumulate = 1); P (16, 14, 8, 7 or 4;
 * 8, 7 or 4 when kv = 2) divides wo; tile holds P*16*kv floats.  Only the
 * output rows [r0, r1) are computed (0, ho: all). */
void eenet_conv_kvec_fwd(float *out, int accumulate, const float *bias, const float *xp, int wp,
                         int s, const int *off, const float *wk, int cout, int ntaps, int ho,
                         int wo, int r0, int r1, int kv, int P, float *tile);

/* 3x3 stride-2 pad-1 forward of one sample x (C, H, W) into out (K, H/2,
 * W/2) = result + bias (NULL: none), the output channels in the vector lanes
 * (conv_avx512.c explains the tiles); where eenet_conv_s2_ok(H, W) (H even,
 * W 14, 16 or 32), K a multiple of 16, wk packed per block of 16 channels
 * like eenet_conv_kvec_fwd's (kv = 1).  Computes the tiles [t0, t1) of the
 * (K/16) * eenet_conv_s2_tiles(H, W) tiles of output rows, channel block
 * major.  Skips the products with the padding (the weights must be finite
 * for the result to equal the full sum). */
int eenet_conv_s2_ok(int H, int W);
int eenet_conv_s2_tiles(int H, int W);
void eenet_conv_s2_fwd(float *out, const float *bias, const float *x, int C, int H, int W,
                       const float *wk, int K, int t0, int t1);

/* 3x3 stride-2 pad-1 weight gradient of one sample x (C, H, W), H and W
 * even: dwt (C*9, K) += sum over the output positions of x(tap) * dyt (Ho*Wo,
 * K) (dy transposed, eenet_conv_transpose_dy), K a multiple of 16, the
 * input read in place and the taps that read padding skipped (NaN there for
 * the channels whose dy is inf or NaN in the top row or left column, as the
 * full sum would give). */
void eenet_conv_cl_bw(float *dwt, const float *dyt, const float *x, int C, int H, int W, int K);

/* Polyphase data gradient of a 3x3 stride-2 pad-1 layer with W even (conv.c
 * pd_sample): dx (cout, H, W) rows of parity a,
 *   dx[c][2m+a][2x+b] += sum_t wk_b[t] * dp[off_b[t] + m*wpp + x],
 * m < hq, x < W/2, b = 0, 1 (accumulates); dp the padded dout, wk_b packed
 * like eenet_conv_kvec_fwd's weights (16*kv channels), P (16, 14, 8, 7, 4;
 * 8, 7 or 4 when kv = 2) divides W/2, cout a multiple of 16*kv. */
void eenet_conv_kvec_pd(float *dx, int H, int W, int a, const float *dp, int wpp,
                        const int *off0, const float *wk0, int nt0, const int *off1,
                        const float *wk1, int nt1, int cout, int hq, int kv, int P);

/* dwt (ntaps, cout) += sum over nb samples and their positions of x(tap) *
 * dyt (ho*wo, cout); sample b's dyt at dyt + b*dyt_stride, its input at
 * xp + b*xp_stride (summed in registers across the samples); cout a multiple
 * of 16.  Also runs on q-space planes (xp = phase planes, off from the
 * q-space offsets, wp = ws, s = 1). */
void eenet_conv_kvec_bw(float *dwt, const float *dyt, const float *xp, int wp, int s,
                        const int *off, int cout, int ntaps, int ho, int wo, int nb,
                        size_t dyt_stride, size_t xp_stride);

/* One sample's phase planes (s = 1 or 2; padding and tails left untouched):
 * pixel (iy, ix) of channel c to plane (c, (iy+ph)%s, (ix+pw)%s), row
 * (iy+ph)/s, column (ix+pw)/s; planes `plane` floats apart, rows ws. */
void eenet_conv_fill_planes(float *src, const float *x, int cin, int h, int w, int s, int ph,
                            int pw, int ws, size_t plane);

/* out (cout, ho, wo) = yq (cout, ldq; rows ws apart) + bias (NULL: none), or
 * out += yq (accumulate = 1). */
void eenet_conv_store_rows(float *out, const float *yq, size_t ldq, int ws, int cout, int ho,
                           int wo, const float *bias, int accumulate);

/* dq (cout, ldq; rows ws apart) = dy (cout, ho, wo), garbage columns not
 * written; pdb[k] += channel sums of dy (pdb NULL: skip). */
void eenet_conv_fill_dq(float *dq, float *pdb, const float *dy, int cout, int ho, int wo,
                        int ws, size_t ldq);

/* xp (cin, h+2ph, w+2pw) interior = x (cin, h, w); the border stays zero. */
void eenet_conv_pad_fill(float *xp, const float *x, int cin, int h, int w, int ph, int pw);

/* dyt (howo, K) = dy (K, howo)^T, K a multiple of 16; adds the channel sums
 * of dy into pdb (NULL: skip). */
void eenet_conv_transpose_dy(float *dyt, float *pdb, const float *dy, int K, int howo);

/* ---- batch-lane path (conv_avx512.c): 16 samples in the zmm lanes ------
 * Lane layout of a group of nimg <= 16 samples: (C, H, W, 16), pixel
 * (c, y, x) of sample b at [((c*H + y)*W + x)*16 + b]; lanes b >= nimg are
 * zero (inputs) or ignored (outputs). */

/* xl (cin, h+2ph, w+2pw, 16) interior = samples x + b*img_stride (cin, h, w),
 * b < nimg; lanes b >= nimg of the interior are zeroed; the border is not
 * written (the caller zeroes it once).  Only the rows y = 0, ystep, 2*ystep..
 * are written (ystep = s for a 1x1 stride-s convolution, which reads no
 * others). */
void eenet_conv_lanes_in(float *xl, const float *x, int nimg, size_t img_stride, int cin, int h,
                         int w, int ph, int pw, int ystep);

/* As eenet_conv_lanes_in into xl (cin, hp, wp, 16) with the interior at row
 * ph, column pw (hp >= h + ph, wp >= w + pw: asymmetric padding, e.g. the
 * Winograd tiles' extra bottom row and right column). */
void eenet_conv_lanes_in_pad(float *xl, const float *x, int nimg, size_t img_stride, int cin,
                             int h, int w, int hp, int wp, int ph, int pw, int ystep);

/* Sample b < nimg of out (its (cout, hw) block at out + b*img_stride) =
 * yl (cout, hw, 16) lane b + bias[k] (bias NULL: none), or += (accumulate). */
void eenet_conv_lanes_out(float *out, size_t img_stride, const float *yl, int nimg, int cout,
                          int hw, const float *bias, int accumulate);

/* Sample b < nimg of out (cout, H, W) += phase planes ph[q] (cout, hq, wq,
 * 16), q = 2*(iy%2) + ix%2, hq = (H+1)/2 or H/2, wq = (W+1)/2 or W/2, pixel
 * (iy, ix) at row iy/2, column ix/2 (the polyphase data gradient, conv.c
 * pd_lanes; accumulates). */
void eenet_conv_lanes_out_pd(float *out, size_t img_stride, const float *const ph[4], int nimg,
                             int cout, int H, int W);

/* yl (cout, ho, wo, 16) = sum_t wpk[t] * xl[off16[t] + 16*(oy*s*wp + ox*s)]
 * (overwrites); xl rows wp vectors wide; off16[t] = 16*((c*hp + i)*wp + j);
 * wpk packed like the q-space forward weights (eenet_conv_fwd_kblock). */
void eenet_conv_lanes_fwd(float *yl, const float *xl, int wp, int s, const int *off16,
                          const float *wpk, int cout, int ntaps, int ho, int wo);

/* Tap subsets of the batch-lane forward (eenet_conv_lanes_fwd_taps): output
 * row oy is in row class rcls[oy], column ox in column class ccls[ox] (the
 * classes differ in which kernel rows / columns read padding); combination
 * q = rcls*ncc + ccls keeps ntaps[q] of the taps (those reading the input,
 * in the full list's order): their offsets at off16 + q*ostride and their
 * indices in the full list (to find their packed weights) at wtap + q*ostride.
 * Only integers: the weights stay packed once, for the full list. */
typedef struct {
    const int *rcls, *ccls, *ntaps, *off16, *wtap;
    int ncc;
    size_t ostride;
} eenet_lanes_taps;

/* As eenet_conv_lanes_fwd with the taps of each output position limited to
 * its class's subset: the products with padding (zeros) are skipped.  The
 * sums keep the full list's order, so for finite weights every output has
 * the value (and, but for the sign of an underflowed zero, the bits) of
 * eenet_conv_lanes_fwd's (each skipped product is +-0, adding it changes no
 * nonzero sum). */
void eenet_conv_lanes_fwd_taps(float *yl, const float *xl, int wp, int s,
                               const eenet_lanes_taps *lt, const float *wpk, int cout, int ntaps,
                               int ho, int wo);

/* dwl (cout, ntaps, 16) += dy(k, oy, ox) * xl[off16[t] + 16*(oy*s*wp + ox*s)]
 * summed over the ho x wo positions, per lane; dy channel k at dy + k*dplane,
 * rows ldr vectors apart (accumulates). */
void eenet_conv_lanes_bw(float *dwl, const float *dy, size_t dplane, int ldr, const float *xl,
                         int wp, int s, const int *off16, int cout, int ntaps, int ho, int wo);

/* dw[k*sk + t*st] += sum over the 16 lanes of dwl (cout, ntaps, 16). */
void eenet_conv_lanes_reduce(float *dw, size_t sk, size_t st, const float *dwl, int cout,
                             int ntaps);

/* db[k] += sum over lanes and the ho x wo positions of dy (as in lanes_bw). */
void eenet_conv_lanes_bias(float *db, const float *dy, size_t dplane, int ldr, int cout, int ho,
                           int wo);

#endif /* EENET_CONV_DIRECT_H */
