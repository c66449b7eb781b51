/* conv.c: 2-d convolution (cross-correlation, PyTorch's conv2d), NCHW float32.
 *
 *   out[n,k,oy,ox] = bias[k] + sum_{c,i,j} w[k,c,i,j] * inp[n,c,oy*s+i-p,ox*s+j-p]
 *
 * (taps outside the input read 0; symmetric padding p, stride s).
 *
 * Paths (all share one contract, see kernels.h):
 *   - GEMM path: per sample, im2col (C*kh*kw, Ho*Wo) then
 *       out_n (K, HoWo)      = w (K, CKK) @ col                 forward
 *       dw    (K, CKK)      += dout_n (K, HoWo) @ col^T          backward-weight
 *       dcol  (CKK, HoWo)    = w^T @ dout_n, col2im += into dinp backward-data
 *     (1x1, stride 1, pad 0 skips im2col: col is the input itself).
 *     OpenMP over the batch with OpenBLAS single-threaded inside each thread.
 *   - the naive references: direct loops with double accumulation.
 *
 * Threads and workspace: the workspace holds one slot per thread (the im2col
 * columns and the thread's partial dw/dbias).  eenet_conv2d_forward/backward
 * use eenet_get_num_threads() threads, so their workspace must be sized for
 * at least that many; callers whose thread count may grow after sizing (the
 * engine sizes once at build time) call the *_ex forms with the count they
 * sized for: the kernels then use min(that, eenet_get_num_threads()) threads
 * and never touch memory beyond the workspace.
 */
#include "kernels.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm.h"

/* ---- sizes ------------------------------------------------------------- */

int eenet_conv_out_size(int in, int k, int stride, int pad) {
    if (stride < 1 || k < 1 || in + 2 * pad < k) {
        return 0;
    }
    return (in + 2 * pad - k) / stride + 1;
}

/* Round a float count up to a multiple of 16 (64 bytes) so that every slot
 * starts cache-line aligned relative to the workspace base. */
static size_t round16(size_t n) {
    return (n + 15u) & ~(size_t)15u;
}

/* Floats one thread's slot needs: im2col columns, partial dw, partial dbias. */
static size_t slot_floats(int C, int H, int W, int K, int kh, int kw, int stride, int pad) {
    int Ho = eenet_conv_out_size(H, kh, stride, pad);
    int Wo = eenet_conv_out_size(W, kw, stride, pad);
    size_t ckk = (size_t)C * kh * kw;
    return round16(ckk * (size_t)Ho * Wo) + round16((size_t)K * ckk) + round16((size_t)K);
}

size_t eenet_conv2d_workspace_floats(int N, int C, int H, int W, int K, int kh, int kw,
                                     int stride, int pad, int nthreads) {
    if (nthreads < 1) {
        nthreads = 1;
    }
    if (eenet_conv_out_size(H, kh, stride, pad) < 1 || eenet_conv_out_size(W, kw, stride, pad) < 1) {
        return 0;
    }
    return (size_t)nthreads * slot_floats(C, H, W, K, kh, kw, stride, pad);
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
    return EENET_OK;
}

/* Threads to use: the caller's bound, the global setting and the batch. */
static int pick_threads(int nthreads_ws, int N) {
    int t = eenet_get_num_threads();
    if (nthreads_ws >= 1 && t > nthreads_ws) {
        t = nthreads_ws;
    }
    if (t > N) {
        t = N;
    }
    return t < 1 ? 1 : t;
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

/* dinp (C,H,W) += scatter of col (C*kh*kw, Ho*Wo); accumulates. */
static void col2im_add(float *dinp, const float *col, int C, int H, int W, int kh, int kw,
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

/* ---- GEMM path ---------------------------------------------------------- */

static int is_pointwise(int kh, int kw, int stride, int pad) {
    return kh == 1 && kw == 1 && stride == 1 && pad == 0;
}

static void forward_gemm(float *out, const float *inp, const float *w, const float *bias,
                         float *workspace, int nt, int N, int C, int H, int W, int K, int kh,
                         int kw, int stride, int pad, int Ho, int Wo) {
    size_t slot = slot_floats(C, H, W, K, kh, kw, stride, pad);
    int ckk = C * kh * kw;
    int howo = Ho * Wo;
    int pointwise = is_pointwise(kh, kw, stride, pad);
    eenet_blas_set_threads(1);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *col = workspace + (size_t)tid * slot;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C * H * W;
            float *y = out + (size_t)n * K * howo;
            const float *b = x;
            if (!pointwise) {
                im2col(col, x, C, H, W, kh, kw, stride, pad, Ho, Wo);
                b = col;
            }
            eenet_sgemm(0, 0, K, howo, ckk, 1.0f, w, ckk, b, howo, 0.0f, y, howo);
            if (bias) {
                for (int k = 0; k < K; k++) {
                    float bk = bias[k];
                    float *yk = y + (size_t)k * howo;
                    for (int q = 0; q < howo; q++) {
                        yk[q] += bk;
                    }
                }
            }
        }
    }
    eenet_blas_set_threads(eenet_get_num_threads());
}

static void backward_gemm(float *dinp, float *dw, float *dbias, const float *dout,
                          const float *inp, const float *w, float *workspace, int nt, int N,
                          int C, int H, int W, int K, int kh, int kw, int stride, int pad,
                          int Ho, int Wo) {
    size_t slot = slot_floats(C, H, W, K, kh, kw, stride, pad);
    int ckk = C * kh * kw;
    int howo = Ho * Wo;
    size_t ncol = round16((size_t)ckk * howo);
    size_t ndw = round16((size_t)K * ckk);
    int pointwise = is_pointwise(kh, kw, stride, pad);
    eenet_blas_set_threads(1);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *col = workspace + (size_t)tid * slot;
        float *pdw = col + ncol;   /* this thread's partial dw (K, CKK) */
        float *pdb = pdw + ndw;    /* this thread's partial dbias (K) */
        memset(pdw, 0, sizeof(float) * (size_t)K * ckk);
        memset(pdb, 0, sizeof(float) * (size_t)K);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C * H * W;
            const float *dy = dout + (size_t)n * K * howo;
            const float *b = x;
            if (!pointwise) {
                im2col(col, x, C, H, W, kh, kw, stride, pad, Ho, Wo);
                b = col;
            }
            /* dw (K, CKK) += dy (K, HoWo) @ col^T */
            eenet_sgemm(0, 1, K, ckk, howo, 1.0f, dy, howo, b, howo, 1.0f, pdw, ckk);
            if (dbias) {
                for (int k = 0; k < K; k++) {
                    const float *dyk = dy + (size_t)k * howo;
                    float acc = 0.0f;
                    for (int q = 0; q < howo; q++) {
                        acc += dyk[q];
                    }
                    pdb[k] += acc;
                }
            }
            if (dinp) {
                float *dx = dinp + (size_t)n * C * H * W;
                if (pointwise) {
                    /* dx (C, HW) += w^T (C, K) @ dy (K, HW) */
                    eenet_sgemm(1, 0, ckk, howo, K, 1.0f, w, ckk, dy, howo, 1.0f, dx, howo);
                } else {
                    eenet_sgemm(1, 0, ckk, howo, K, 1.0f, w, ckk, dy, howo, 0.0f, col, howo);
                    col2im_add(dx, col, C, H, W, kh, kw, stride, pad, Ho, Wo);
                }
            }
        }
        /* implicit barrier of omp for: every partial is complete here */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int e = 0; e < K * ckk; e++) {
            float acc = 0.0f;
            for (int t = 0; t < nt; t++) {
                acc += workspace[(size_t)t * slot + ncol + e];
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
                    acc += workspace[(size_t)t * slot + ncol + ndw + k];
                }
                dbias[k] += acc;
            }
        }
    }
    eenet_blas_set_threads(eenet_get_num_threads());
}

/* ---- public entry points ------------------------------------------------ */

eenet_status eenet_conv2d_forward_ex(float *out, const float *inp, const float *w,
                                     const float *bias, float *workspace, int N, int C, int H,
                                     int W, int K, int kh, int kw, int stride, int pad,
                                     int nthreads) {
    int Ho = 0, Wo = 0;
    eenet_status st = check_sizes(N, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo);
    if (st != EENET_OK) {
        return st;
    }
    if (!out || !inp || !w || !workspace) {
        return eenet_set_error(EENET_ERR_VALUE, "conv2d_forward: NULL buffer");
    }
    int nt = pick_threads(nthreads, N);
    forward_gemm(out, inp, w, bias, workspace, nt, N, C, H, W, K, kh, kw, stride, pad, Ho, Wo);
    return EENET_OK;
}

eenet_status eenet_conv2d_forward(float *out, const float *inp, const float *w,
                                  const float *bias, float *workspace, int N, int C, int H,
                                  int W, int K, int kh, int kw, int stride, int pad) {
    return eenet_conv2d_forward_ex(out, inp, w, bias, workspace, N, C, H, W, K, kh, kw, stride,
                                   pad, eenet_get_num_threads());
}

eenet_status eenet_conv2d_backward_ex(float *dinp, float *dw, float *dbias, const float *dout,
                                      const float *inp, const float *w, float *workspace,
                                      int N, int C, int H, int W, int K, int kh, int kw,
                                      int stride, int pad, int nthreads) {
    int Ho = 0, Wo = 0;
    eenet_status st = check_sizes(N, C, H, W, K, kh, kw, stride, pad, &Ho, &Wo);
    if (st != EENET_OK) {
        return st;
    }
    if (!dw || !dout || !inp || !w || !workspace) {
        return eenet_set_error(EENET_ERR_VALUE, "conv2d_backward: NULL buffer");
    }
    int nt = pick_threads(nthreads, N);
    backward_gemm(dinp, dw, dbias, dout, inp, w, workspace, nt, N, C, H, W, K, kh, kw, stride,
                  pad, Ho, Wo);
    return EENET_OK;
}

eenet_status eenet_conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                   const float *inp, const float *w, float *workspace, int N,
                                   int C, int H, int W, int K, int kh, int kw, int stride,
                                   int pad) {
    return eenet_conv2d_backward_ex(dinp, dw, dbias, dout, inp, w, workspace, N, C, H, W, K,
                                    kh, kw, stride, pad, eenet_get_num_threads());
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
    for (int k = 0; k < K; k++) {
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
