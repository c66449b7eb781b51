/* bn.c: 2-d batch normalisation (PyTorch's nn.BatchNorm2d semantics).
 *
 * Layout: inp/out (N, C, HW) -- NCHW with the spatial plane flattened.
 * Per channel c, over the M = N*HW values x of that channel:
 *   mean = sum x / M,  var = sum (x - mean)^2 / M            (biased, normalises)
 *   invstd = 1 / sqrt(var + eps)
 *   out = gamma * (x - mean) * invstd + beta
 *   running_mean = (1 - momentum) * running_mean + momentum * mean
 *   running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)  (unbiased)
 * Statistics are accumulated in double (two passes), so they do not drift with M.
 * Parallel over channels: each channel's sums are private to one thread, so the
 * result does not depend on the thread count.
 */
#include <math.h>

#include "kernels.h"

static int finite_stats(double mean, double var) {
    return isfinite(mean) && isfinite(var);
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
            const float *x = inp + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                sum += x[i];
            }
        }
        const double mean = sum / (double)M;
        double ss = 0.0;
        for (int n = 0; n < N; n++) {
            const float *x = inp + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                const double d = x[i] - mean;
                ss += d * d;
            }
        }
        const double var = ss / (double)M;
        if (!finite_stats(mean, var)) {
            bad = 1;
            continue;
        }
        const double invstd = 1.0 / sqrt(var + (double)eps);
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
        const float scale = (float)(gamma[c] * invstd);
        const float shift = (float)(beta[c] - mean * gamma[c] * invstd);
        for (int n = 0; n < N; n++) {
            const float *x = inp + ((size_t)n * C + c) * HW;
            float *y = out + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                y[i] = x[i] * scale + shift;
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
        const float shift = (float)(beta[c] - running_mean[c] * (double)gamma[c] * invstd);
        const float *x = inp + (size_t)p * HW;
        float *y = out + (size_t)p * HW;
        for (int i = 0; i < HW; i++) {
            y[i] = x[i] * scale + shift;
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
        const double mean = save_mean[c];
        const double invstd = save_invstd[c];
        double sdy = 0.0, sdyx = 0.0;
        for (int n = 0; n < N; n++) {
            const float *x = inp + ((size_t)n * C + c) * HW;
            const float *dy = dout + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                sdy += dy[i];
                sdyx += dy[i] * ((x[i] - mean) * invstd);
            }
        }
        dbeta[c] += (float)sdy;
        dgamma[c] += (float)sdyx;
        if (dinp) {
            const double k = gamma[c] * invstd;
            const double mdy = sdy / M, mdyx = sdyx / M;
            for (int n = 0; n < N; n++) {
                const float *x = inp + ((size_t)n * C + c) * HW;
                const float *dy = dout + ((size_t)n * C + c) * HW;
                float *dx = dinp + ((size_t)n * C + c) * HW;
                for (int i = 0; i < HW; i++) {
                    const double xhat = (x[i] - mean) * invstd;
                    dx[i] += (float)(k * (dy[i] - mdy - xhat * mdyx));
                }
            }
        }
    }
    return EENET_OK;
}
