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

/* Training forward.  Overwrites out, save_mean, save_invstd (C); updates
 * running_mean/running_var (C) in place. */
eenet_status eenet_bn2d_forward_train(float *out, float *save_mean, float *save_invstd,
                                      float *running_mean, float *running_var,
                                      const float *inp, const float *gamma, const float *beta,
                                      float momentum, float eps, int N, int C, int HW) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "bn2d_forward_train: sizes must be positive, got N=%d C=%d HW=%d",
                               N, C, HW);
    }
    const size_t M = (size_t)N * (size_t)HW;
    if (M < 2) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "bn2d_forward_train: expected more than 1 value per channel "
                               "when training, got N=%d HW=%d",
                               N, HW);
    }
    int bad = 0;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) reduction(|| : bad)
    for (int c = 0; c < C; c++) {
        double sum = 0.0;
        for (int n = 0; n < N; n++) {
            sum += plane_sum(inp + ((size_t)n * C + c) * HW, HW);
        }
        const double mean = sum / (double)M;
        /* second pass around the mean: no cancellation when |mean| >> std */
        double ss = 0.0;
        for (int n = 0; n < N; n++) {
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
            const float *x = inp + ((size_t)n * C + c) * HW;
            float *y = out + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                y[i] = (x[i] - fmean) * scale + fbeta;
            }
        }
        const double unbiased = ss / (double)(M - 1);
        running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
        running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
    }
    if (bad) {
        return eenet_set_error(EENET_ERR_NONFINITE,
                               "bn2d_forward_train: non-finite batch statistics (NaN or "
                               "infinity in the input)");
    }
    return EENET_OK;
}

/* Eval forward, overwrites out:
 * out = (x - running_mean) / sqrt(running_var + eps) * gamma + beta. */
eenet_status eenet_bn2d_forward_eval(float *out, const float *inp, const float *gamma,
                                     const float *beta, const float *running_mean,
                                     const float *running_var, float eps, int N, int C,
                                     int HW) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "bn2d_forward_eval: sizes must be positive, got N=%d C=%d HW=%d",
                               N, C, HW);
    }
    const int planes = N * C;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)planes * HW > 32768)
    for (int p = 0; p < planes; p++) {
        const int c = p % C;
        const double invstd = 1.0 / sqrt((double)running_var[c] + (double)eps);
        const float scale = (float)(gamma[c] * invstd);
        const float fmean = running_mean[c], fbeta = beta[c];
        const float *x = inp + (size_t)p * HW;
        float *y = out + (size_t)p * HW;
        for (int i = 0; i < HW; i++) {
            y[i] = (x[i] - fmean) * scale + fbeta;
        }
    }
    return EENET_OK;
}

/* Training backward, ACCUMULATES.  With xhat = (x - mean) * invstd, M = N*HW:
 *   dbeta  += sum dy
 *   dgamma += sum dy * xhat
 *   dx     += gamma * invstd / M * (M * dy - sum dy - xhat * sum(dy * xhat))
 * dinp may be NULL (skip). */
eenet_status eenet_bn2d_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                                 const float *inp, const float *gamma, const float *save_mean,
                                 const float *save_invstd, int N, int C, int HW) {
    if (N < 1 || C < 1 || HW < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "bn2d_backward: sizes must be positive, got N=%d C=%d HW=%d", N,
                               C, HW);
    }
    const double M = (double)N * (double)HW;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads())
    for (int c = 0; c < C; c++) {
        const float mean = save_mean[c];
        const double invstd = save_invstd[c];
        double sdy = 0.0, sdxm = 0.0; /* sum dy, sum dy * (x - mean) */
        for (int n = 0; n < N; n++) {
            const size_t off = ((size_t)n * C + c) * HW;
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
            for (int n = 0; n < N; n++) {
                const size_t off = ((size_t)n * C + c) * HW;
                const float *x = inp + off;
                const float *dy = dout + off;
                float *dx = dinp + off;
                for (int i = 0; i < HW; i++) {
                    dx[i] += k * (dy[i] - mdy - (x[i] - mean) * c2);
                }
            }
        }
    }
    return EENET_OK;
}
