/* bn.c: 2-d batch normalisation (PyTorch's nn.BatchNorm2d semantics).
 *
 * Layout: inp/out (N, C, HW) -- NCHW with the spatial plane flattened.
 * Per channel c, over the M = N*HW values x of that channel:
 *   mean = sum x / M,  var = sum (x - mean)^2 / M            (biased, normalises)
 *   invstd = 1 / sqrt(var + eps)
 *   out = gamma * (x - mean) * invstd + beta
 *   running_mean = (1 - momentum) * running_mean + momentum * mean
 *   running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)  (unbiased)
 * Statistics: two passes (mean, then squared deviations around it), float lanes per
 * plane and double across planes, so they do not drift with M.
 * Parallel over channels: each channel's sums are private to one thread, so the
 * result does not depend on the thread count.
 */
#include <math.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "kernels.h"

static int finite_stats(double mean, double var) {
    return isfinite(mean) && isfinite(var);
}

/* Sums over one (n, c) plane of HW floats.  LANES independent float accumulators
 * let the compiler vectorise without -ffast-math (which would reorder freely);
 * the plane's total is then added in double, so a channel's statistics carry the
 * rounding of at most HW/LANES float additions per lane. */
#define LANES 16

/* returns sum_i x[i] */
static double plane_sum(const float *x, int HW) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= HW; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            acc[l] += x[i + l];
        }
    }
    double s = 0.0;
    for (; i < HW; i++) {
        s += x[i];
    }
    for (int l = 0; l < LANES; l++) {
        s += acc[l];
    }
    return s;
}

/* returns sum_i (x[i] - mean)^2 */
static double plane_sqdev(const float *x, float mean, int HW) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= HW; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            const float d = x[i + l] - mean;
            acc[l] += d * d;
        }
    }
    double s = 0.0;
    for (; i < HW; i++) {
        const double d = (double)x[i] - mean;
        s += d * d;
    }
    for (int l = 0; l < LANES; l++) {
        s += acc[l];
    }
    return s;
}

/* *sdy += sum_i dy[i]; *sdyx += sum_i dy[i] * (x[i] - mean) */
static void plane_dsums(const float *dy, const float *x, float mean, int HW, double *sdy,
                        double *sdyx) {
    float a1[LANES] = {0}, a2[LANES] = {0};
    int i = 0;
    for (; i + LANES <= HW; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            a1[l] += dy[i + l];
            a2[l] += dy[i + l] * (x[i + l] - mean);
        }
    }
    double s1 = 0.0, s2 = 0.0;
    for (; i < HW; i++) {
        s1 += dy[i];
        s2 += (double)dy[i] * ((double)x[i] - mean);
    }
    for (int l = 0; l < LANES; l++) {
        s1 += a1[l];
        s2 += a2[l];
    }
    *sdy += s1;
    *sdyx += s2;
}


/* AVX-512 copies of the three plane helpers, picked at run time.  Lane l of
 * acc[] is element l of one zmm register, and the plane total is formed in the
 * same order (tail first, then lanes 0..15, in double), so they return the
 * same bits as the portable helpers above; only the loads and adds are wider
 * (the portable build is SSE2 unless the compiler is told otherwise). */
#if defined(__x86_64__) && defined(__GNUC__)
#define BN_HAVE_AVX512 1
#define BN_AVX512 __attribute__((target("avx512f")))

static int bn_use_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return cached;
}

/* returns tail + acc[0] + ... + acc[15], left to right in double */
static BN_AVX512 double lanes_after(double s, __m512 v) {
    float acc[LANES];
    _mm512_storeu_ps(acc, v);
    for (int l = 0; l < LANES; l++) {
        s += acc[l];
    }
    return s;
}

/* as plane_sum, for planes x0 and x1 at once (two independent chains) */
static BN_AVX512 void plane_sum2_avx512(const float *x0, const float *x1, int HW, double *s0,
                                        double *s1) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + LANES <= HW; i += LANES) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x0 + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x1 + i));
    }
    double t0 = 0.0, t1 = 0.0;
    for (; i < HW; i++) {
        t0 += x0[i];
        t1 += x1[i];
    }
    *s0 = lanes_after(t0, a0);
    *s1 = lanes_after(t1, a1);
}

/* as plane_sqdev, for planes x0 and x1 at once */
static BN_AVX512 void plane_sqdev2_avx512(const float *x0, const float *x1, float mean, int HW,
                                          double *s0, double *s1) {
    const __m512 m = _mm512_set1_ps(mean);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + LANES <= HW; i += LANES) {
        const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x0 + i), m);
        const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(x1 + i), m);
        a0 = _mm512_add_ps(a0, _mm512_mul_ps(d0, d0));
        a1 = _mm512_add_ps(a1, _mm512_mul_ps(d1, d1));
    }
    double t0 = 0.0, t1 = 0.0;
    for (; i < HW; i++) {
        const double d0 = (double)x0[i] - mean, d1 = (double)x1[i] - mean;
        t0 += d0 * d0;
        t1 += d1 * d1;
    }
    *s0 = lanes_after(t0, a0);
    *s1 = lanes_after(t1, a1);
}

/* as plane_dsums (one plane; its two sums are already two chains) */
static BN_AVX512 void plane_dsums_avx512(const float *dy, const float *x, float mean, int HW,
                                         double *sdy, double *sdyx) {
    const __m512 m = _mm512_set1_ps(mean);
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
    int i = 0;
    for (; i + LANES <= HW; i += LANES) {
        const __m512 g = _mm512_loadu_ps(dy + i);
        a1 = _mm512_add_ps(a1, g);
        a2 = _mm512_add_ps(a2, _mm512_mul_ps(g, _mm512_sub_ps(_mm512_loadu_ps(x + i), m)));
    }
    double s1 = 0.0, s2 = 0.0;
    for (; i < HW; i++) {
        s1 += dy[i];
        s2 += (double)dy[i] * ((double)x[i] - mean);
    }
    *sdy += lanes_after(s1, a1);
    *sdyx += lanes_after(s2, a2);
}

/* y = (x - mean) * scale + beta over HW (the portable loop's operations) */
static BN_AVX512 void plane_affine_avx512(float *y, const float *x, float mean, float scale,
                                          float beta, int HW) {
    const __m512 vm = _mm512_set1_ps(mean), vs = _mm512_set1_ps(scale),
                 vb = _mm512_set1_ps(beta);
    int i = 0;
    for (; i + 16 <= HW; i += 16) {
        const __m512 v = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm);
        _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_mul_ps(v, vs), vb));
    }
    for (; i < HW; i++) {
        y[i] = (x[i] - mean) * scale + beta;
    }
}

/* y = relu((x - mean) * scale + beta) over HW, relu(v) = v < 0 ? 0 : v as
 * eenet_relu_forward (NaN and -0 pass through): max_ps(0, v) returns its second
 * operand v when v is NaN or either zero, and 0 only when v < 0. */
static BN_AVX512 void plane_affine_relu_avx512(float *y, const float *x, float mean,
                                               float scale, float beta, int HW) {
    const __m512 vm = _mm512_set1_ps(mean), vs = _mm512_set1_ps(scale),
                 vb = _mm512_set1_ps(beta), zero = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= HW; i += 16) {
        const __m512 v = _mm512_sub_ps(_mm512_loadu_ps(x + i), vm);
        _mm512_storeu_ps(y + i, _mm512_max_ps(zero, _mm512_add_ps(_mm512_mul_ps(v, vs), vb)));
    }
    for (; i < HW; i++) {
        const float v = (x[i] - mean) * scale + beta;
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

/* The ReLU mask and plane_dsums in one pass: g <- 0 + (y > 0 ? g : 0) in place
 * (relu_backward into a zeroed buffer), then the sums of plane_dsums over the
 * masked g, with the same lanes and order as the two separate passes. */
static BN_AVX512 void plane_mask_dsums_avx512(float *g, const float *y, const float *x,
                                              float mean, int HW, double *sdy, double *sdyx) {
    const __m512 m = _mm512_set1_ps(mean), zero = _mm512_setzero_ps();
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
    int i = 0;
    for (; i + LANES <= HW; i += LANES) {
        const __mmask16 pos = _mm512_cmp_ps_mask(_mm512_loadu_ps(y + i), zero, _CMP_GT_OQ);
        const __m512 gv = _mm512_add_ps(zero, _mm512_maskz_mov_ps(pos, _mm512_loadu_ps(g + i)));
        _mm512_storeu_ps(g + i, gv);
        a1 = _mm512_add_ps(a1, gv);
        a2 = _mm512_add_ps(a2, _mm512_mul_ps(gv, _mm512_sub_ps(_mm512_loadu_ps(x + i), m)));
    }
    double s1 = 0.0, s2 = 0.0;
    for (; i < HW; i++) {
        const float gi = g[i];
        g[i] = 0.0f + (y[i] > 0.0f ? gi : 0.0f);
        s1 += g[i];
        s2 += (double)g[i] * ((double)x[i] - mean);
    }
    *sdy += lanes_after(s1, a1);
    *sdyx += lanes_after(s2, a2);
}

/* dx = 0 + k * ((dy - mdy) - (x - mean) * c2) over HW: plane_dx_avx512 into a
 * zeroed dx, without reading it */
static BN_AVX512 void plane_dx_set_avx512(float *dx, const float *dy, const float *x, float k,
                                          float mdy, float mean, float c2, int HW) {
    const __m512 vk = _mm512_set1_ps(k), vmdy = _mm512_set1_ps(mdy), vm = _mm512_set1_ps(mean),
                 vc2 = _mm512_set1_ps(c2), zero = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= HW; i += 16) {
        const __m512 t =
            _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(dy + i), vmdy),
                          _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vc2));
        _mm512_storeu_ps(dx + i, _mm512_add_ps(zero, _mm512_mul_ps(vk, t)));
    }
    for (; i < HW; i++) {
        dx[i] = 0.0f + k * (dy[i] - mdy - (x[i] - mean) * c2);
    }
}

/* dx += k * ((dy - mdy) - (x - mean) * c2) over HW (the portable loop's operations) */
static BN_AVX512 void plane_dx_avx512(float *dx, const float *dy, const float *x, float k,
                                      float mdy, float mean, float c2, int HW) {
    const __m512 vk = _mm512_set1_ps(k), vmdy = _mm512_set1_ps(mdy), vm = _mm512_set1_ps(mean),
                 vc2 = _mm512_set1_ps(c2);
    int i = 0;
    for (; i + 16 <= HW; i += 16) {
        const __m512 t =
            _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(dy + i), vmdy),
                          _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vc2));
        _mm512_storeu_ps(dx + i, _mm512_add_ps(_mm512_loadu_ps(dx + i), _mm512_mul_ps(vk, t)));
    }
    for (; i < HW; i++) {
        dx[i] += k * (dy[i] - mdy - (x[i] - mean) * c2);
    }
}
#else
#define BN_HAVE_AVX512 0
static int bn_use_avx512(void) {
    return 0;
}
#endif

/* One plane of the affine step: y = (x - mean) * scale + beta over HW, then
 * (relu != 0) relu(v) = v < 0 ? 0 : v; the AVX-512 helpers when wide, with the
 * same operations and so the same bits. */
static void plane_affine(float *y, const float *x, float mean, float scale, float beta, int HW,
                         int relu, int wide) {
#if BN_HAVE_AVX512
    if (wide) {
        if (relu) {
            plane_affine_relu_avx512(y, x, mean, scale, beta, HW);
        } else {
            plane_affine_avx512(y, x, mean, scale, beta, HW);
        }
        return;
    }
#endif
    (void)wide;
    if (relu) {
        for (int i = 0; i < HW; i++) {
            const float v = (x[i] - mean) * scale + beta;
            y[i] = v < 0.0f ? 0.0f : v;
        }
    } else {
        for (int i = 0; i < HW; i++) {
            y[i] = (x[i] - mean) * scale + beta;
        }
    }
}

/* Training forward (relu != 0: out = relu(bn(x)), the ReLU as eenet_relu_forward).
 * Overwrites out, save_mean, save_invstd (C); updates running_mean/running_var (C)
 * in place. */
static eenet_status bn2d_forward_train_impl(const char *name, float *out, float *save_mean,
                                            float *save_invstd, float *running_mean,
                                            float *running_var, const float *inp,
                                            const float *gamma, const float *beta,
                                            float momentum, float eps, int N, int C, int HW,
                                            int relu) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "%s: sizes must be positive, got N=%d C=%d HW=%d",
                               name, N, C, HW);
    }
    const size_t M = (size_t)N * (size_t)HW;
    if (M < 2) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "%s: expected more than 1 value per channel "
                               "when training, got N=%d HW=%d",
                               name, N, HW);
    }
    int bad = 0;
    const int wide = bn_use_avx512();
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) reduction(|| : bad)
    for (int c = 0; c < C; c++) {
        double sum = 0.0;
        int n0 = 0;
#if BN_HAVE_AVX512
        if (wide) {
            for (; n0 + 2 <= N; n0 += 2) {
                double s0, s1;
                plane_sum2_avx512(inp + ((size_t)n0 * C + c) * HW,
                                  inp + ((size_t)(n0 + 1) * C + c) * HW, HW, &s0, &s1);
                sum += s0;
                sum += s1;
            }
        }
#endif
        for (int n = n0; n < N; n++) {
            sum += plane_sum(inp + ((size_t)n * C + c) * HW, HW);
        }
        const double mean = sum / (double)M;
        /* second pass around the mean: no cancellation when |mean| >> std */
        double ss = 0.0;
        n0 = 0;
#if BN_HAVE_AVX512
        if (wide) {
            for (; n0 + 2 <= N; n0 += 2) {
                double s0, s1;
                plane_sqdev2_avx512(inp + ((size_t)n0 * C + c) * HW,
                                    inp + ((size_t)(n0 + 1) * C + c) * HW, (float)mean, HW, &s0,
                                    &s1);
                ss += s0;
                ss += s1;
            }
        }
#endif
        for (int n = n0; n < N; n++) {
            ss += plane_sqdev(inp + ((size_t)n * C + c) * HW, (float)mean, HW);
        }
        /* deviations were taken around (float)mean m': sum (x-m')^2 = sum (x-m)^2 + M (m-m')^2 */
        const double dm = mean - (double)(float)mean;
        ss -= (double)M * dm * dm;
        ss = ss > 0.0 ? ss : 0.0;
        const double var = ss / (double)M;
        if (!finite_stats(mean, var)) {
            bad = 1;
            continue;
        }
        const double invstd = 1.0 / sqrt(var + (double)eps);
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
        /* y = (x - mean) * (gamma invstd) + beta: subtracting first keeps the precision
         * when |mean| >> std (x * scale + shift would cancel) */
        const float scale = (float)(gamma[c] * invstd);
        const float fmean = (float)mean, fbeta = beta[c];
        for (int n = 0; n < N; n++) {
            plane_affine(out + ((size_t)n * C + c) * HW, inp + ((size_t)n * C + c) * HW, fmean,
                         scale, fbeta, HW, relu, wide);
        }
        const double unbiased = ss / (double)(M - 1);
        running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
        running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
    }
    if (bad) {
        return eenet_set_error(EENET_ERR_NONFINITE,
                               "%s: non-finite batch statistics (NaN or "
                               "infinity in the input)", name);
    }
    return EENET_OK;
}

eenet_status eenet_bn2d_forward_train(float *out, float *save_mean, float *save_invstd,
                                      float *running_mean, float *running_var,
                                      const float *inp, const float *gamma, const float *beta,
                                      float momentum, float eps, int N, int C, int HW) {
    return bn2d_forward_train_impl("bn2d_forward_train", out, save_mean, save_invstd,
                                   running_mean, running_var, inp, gamma, beta, momentum, eps, N,
                                   C, HW, 0);
}

eenet_status eenet_bn2d_relu_forward_train(float *out, float *save_mean, float *save_invstd,
                                           float *running_mean, float *running_var,
                                           const float *inp, const float *gamma,
                                           const float *beta, float momentum, float eps, int N,
                                           int C, int HW) {
    return bn2d_forward_train_impl("bn2d_relu_forward_train", out, save_mean, save_invstd,
                                   running_mean, running_var, inp, gamma, beta, momentum, eps, N,
                                   C, HW, 1);
}

/* Eval forward, overwrites out:
 * out = (x - running_mean) / sqrt(running_var + eps) * gamma + beta, then the
 * ReLU (v < 0 ? 0 : v) when relu != 0.  Per (n, c) plane, so a sample's output
 * never depends on its batch neighbours. */
static eenet_status bn2d_forward_eval_impl(const char *name, float *out, const float *inp,
                                           const float *gamma, const float *beta,
                                           const float *running_mean, const float *running_var,
                                           float eps, int N, int C, int HW, int relu) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "%s: sizes must be positive, got N=%d C=%d HW=%d",
                               name, N, C, HW);
    }
    const int planes = N * C;
    const int wide = bn_use_avx512();
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)planes * HW > 32768)
    for (int p = 0; p < planes; p++) {
        const int c = p % C;
        const double invstd = 1.0 / sqrt((double)running_var[c] + (double)eps);
        const float scale = (float)(gamma[c] * invstd);
        const float fmean = running_mean[c], fbeta = beta[c];
        plane_affine(out + (size_t)p * HW, inp + (size_t)p * HW, fmean, scale, fbeta, HW, relu,
                     wide);
    }
    return EENET_OK;
}

eenet_status eenet_bn2d_forward_eval(float *out, const float *inp, const float *gamma,
                                     const float *beta, const float *running_mean,
                                     const float *running_var, float eps, int N, int C,
                                     int HW) {
    return bn2d_forward_eval_impl("bn2d_forward_eval", out, inp, gamma, beta, running_mean,
                                  running_var, eps, N, C, HW, 0);
}

eenet_status eenet_bn2d_relu_forward_eval(float *out, const float *inp, const float *gamma,
                                          const float *beta, const float *running_mean,
                                          const float *running_var, float eps, int N, int C,
                                          int HW) {
    return bn2d_forward_eval_impl("bn2d_relu_forward_eval", out, inp, gamma, beta, running_mean,
                                  running_var, eps, N, C, HW, 1);
}

/* Shared body of the backward entry points (dout == dmask when relu_out is
 * given).  Training backward.  With xhat = (x - mean) * invstd, M = N*HW:
 *   dbeta  += sum dy
 *   dgamma += sum dy * xhat
 *   dx     += gamma * invstd / M * (M * dy - sum dy - xhat * sum(dy * xhat))
 * dinp may be NULL (skip).  overwrite != 0: dx is written as 0 + (...) -- the
 * same bits as accumulating into a zeroed buffer -- without reading it. */
static eenet_status bn2d_backward_impl(const char *name, float *dinp, float *dgamma,
                                       float *dbeta, const float *dout, float *dmask,
                                       const float *relu_out, const float *inp,
                                       const float *gamma, const float *save_mean,
                                       const float *save_invstd, int N, int C, int HW,
                                       int overwrite) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "%s: sizes must be positive, got N=%d C=%d HW=%d", name, N, C,
                               HW);
    }
    const double M = (double)N * (double)HW;
    const int wide = bn_use_avx512();
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads())
    for (int c = 0; c < C; c++) {
        const float mean = save_mean[c];
        const double invstd = save_invstd[c];
        double sdy = 0.0, sdxm = 0.0; /* sum dy, sum dy * (x - mean) */
        for (int n = 0; n < N; n++) {
            const size_t off = ((size_t)n * C + c) * HW;
            if (relu_out) {
                /* the ReLU's backward, in place: 0 + (y > 0 ? g : 0) as relu_backward
                 * gives into a zeroed buffer, fused with the sums' pass */
                float *g = dmask + off;
                const float *yr = relu_out + off;
#if BN_HAVE_AVX512
                if (wide) {
                    plane_mask_dsums_avx512(g, yr, inp + off, mean, HW, &sdy, &sdxm);
                    continue;
                }
#endif
                for (int i = 0; i < HW; i++) {
                    const float gi = g[i];
                    g[i] = 0.0f + (yr[i] > 0.0f ? gi : 0.0f);
                }
            }
#if BN_HAVE_AVX512
            if (wide) {
                plane_dsums_avx512(dout + off, inp + off, mean, HW, &sdy, &sdxm);
                continue;
            }
#endif
            plane_dsums(dout + off, inp + off, mean, HW, &sdy, &sdxm);
        }
        const double sdyx = sdxm * invstd; /* sum dy * xhat */
        dbeta[c] += (float)sdy;
        dgamma[c] += (float)sdyx;
        if (dinp) {
            /* dx = k (dy - mean(dy) - (x - mean) * invstd * mean(dy xhat)) */
            const float k = (float)(gamma[c] * invstd);
            const float mdy = (float)(sdy / M);
            const float c2 = (float)(invstd * sdyx / M);
            /* last planes first: the sums' pass left them in L2 (a channel's dy,
             * x and y outgrow it at 32x32 and batch 128); elementwise, so the
             * order changes no result */
            for (int n = N - 1; n >= 0; n--) {
                const size_t off = ((size_t)n * C + c) * HW;
                const float *x = inp + off;
                const float *dy = dout + off;
                float *dx = dinp + off;
#if BN_HAVE_AVX512
                if (wide) {
                    if (overwrite) {
                        plane_dx_set_avx512(dx, dy, x, k, mdy, mean, c2, HW);
                    } else {
                        plane_dx_avx512(dx, dy, x, k, mdy, mean, c2, HW);
                    }
                    continue;
                }
#endif
                if (overwrite) {
                    for (int i = 0; i < HW; i++) {
                        dx[i] = 0.0f + k * (dy[i] - mdy - (x[i] - mean) * c2);
                    }
                } else {
                    for (int i = 0; i < HW; i++) {
                        dx[i] += k * (dy[i] - mdy - (x[i] - mean) * c2);
                    }
                }
            }
        }
    }
    return EENET_OK;
}

eenet_status eenet_bn2d_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                                 const float *inp, const float *gamma, const float *save_mean,
                                 const float *save_invstd, int N, int C, int HW) {
    return bn2d_backward_impl("bn2d_backward", dinp, dgamma, dbeta, dout, NULL, NULL, inp, gamma,
                              save_mean, save_invstd, N, C, HW, 0);
}

/* Backward of relu(bn(x)) with y = relu output (N,C,HW): first
 * dy <- 0 + (y > 0 ? dy : 0) in place (exactly relu_backward into a zeroed
 * buffer), then as eenet_bn2d_backward with that dy.  dy is overwritten. */
eenet_status eenet_bn2d_relu_backward(float *dinp, float *dgamma, float *dbeta, float *dy,
                                      const float *relu_out, const float *inp,
                                      const float *gamma, const float *save_mean,
                                      const float *save_invstd, int N, int C, int HW) {
    return bn2d_backward_impl("bn2d_relu_backward", dinp, dgamma, dbeta, dy, dy, relu_out, inp,
                              gamma, save_mean, save_invstd, N, C, HW, 0);
}

/* Either of the two above (relu_out NULL: plain batch norm, dy read only), with
 * dinp OVERWRITTEN (= 0 + the value the accumulating forms add) instead of
 * accumulated; dgamma and dbeta still accumulate. */
eenet_status eenet_bn2d_backward_set(float *dinp, float *dgamma, float *dbeta, float *dy,
                                     const float *relu_out, const float *inp, const float *gamma,
                                     const float *save_mean, const float *save_invstd, int N,
                                     int C, int HW) {
    return bn2d_backward_impl("bn2d_backward_set", dinp, dgamma, dbeta, dy,
                              relu_out ? dy : NULL, relu_out, inp, gamma, save_mean,
                              save_invstd, N, C, HW, 1);
}
