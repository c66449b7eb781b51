/* linear.c: fully connected layer, out = inp @ w^T + bias (torch.nn.functional.linear).
 *
 * out (N,Fo); inp (N,Fi); w (Fo,Fi); bias (Fo) or NULL.
 * Products go to OpenBLAS's sgemm (scipy-openblas32).  Measured on this machine
 * (1 thread; forward / backward in microseconds; sgemm vs the plain loops below):
 *   N=1   Fi=64  Fo=10 :  0.11 / 0.17  vs   0.47 / 0.93
 *   N=32  Fi=8   Fo=10 :  0.51 / 0.74  vs   1.39 / 2.30
 *   N=128 Fi=16  Fo=1  :  1.38 / 0.87  vs   1.09 / 4.18
 *   N=128 Fi=64  Fo=10 :  9.19 / 6.78  vs  23.4  / 45.3
 *   N=128 Fi=512 Fo=200:   456 / 803   vs  1689  / 3811
 * so sgemm is used from LINEAR_BLAS_MIN = 0 multiply-adds on, i.e. always, even for
 * the one-output confidence heads; the loops serve a build without OpenBLAS.
 */
#include <string.h>

#include "kernels.h"

#ifdef EENET_HAVE_OPENBLAS
#include <cblas.h>
#endif

/* Multiply-adds (N*Fi*Fo) from which sgemm is used. */
#ifndef LINEAR_BLAS_MIN
#define LINEAR_BLAS_MIN 0
#endif

static eenet_status check_sizes(const char *fn, int N, int Fi, int Fo) {
    if (N < 1 || Fi < 1 || Fo < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "%s: sizes must be positive, got N=%d Fi=%d Fo=%d",
                               fn, N, Fi, Fo);
    }
    return EENET_OK;
}

#ifdef EENET_HAVE_OPENBLAS
static int use_blas(int N, int Fi, int Fo) {
    return (double)N * Fi * Fo >= LINEAR_BLAS_MIN;
}
#endif

/* Forward, overwrites out: out[n,o] = sum_i inp[n,i] * w[o,i] + bias[o]. */
eenet_status eenet_linear_forward(float *out, const float *inp, const float *w,
                                  const float *bias, int N, int Fi, int Fo) {
    eenet_status st = check_sizes("linear_forward", N, Fi, Fo);
    if (st != EENET_OK) {
        return st;
    }
#ifdef EENET_HAVE_OPENBLAS
    if (use_blas(N, Fi, Fo)) {
        for (int n = 0; n < N; n++) {
            if (bias) {
                memcpy(out + (size_t)n * Fo, bias, sizeof(float) * (size_t)Fo);
            } else {
                memset(out + (size_t)n * Fo, 0, sizeof(float) * (size_t)Fo);
            }
        }
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Fo, Fi, 1.0f, inp, Fi, w, Fi,
                          1.0f, out, Fo);
        return EENET_OK;
    }
#endif
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((double)N * Fi * Fo > 8192)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * Fi;
        float *y = out + (size_t)n * Fo;
        for (int o = 0; o < Fo; o++) {
            const float *wo = w + (size_t)o * Fi;
            /* 8 independent partial sums: a vectorisable dot product */
            float acc[8] = {0};
            int i = 0;
            for (; i + 8 <= Fi; i += 8) {
                for (int l = 0; l < 8; l++) {
                    acc[l] += x[i + l] * wo[i + l];
                }
            }
            float s = 0.0f;
            for (; i < Fi; i++) {
                s += x[i] * wo[i];
            }
            for (int l = 0; l < 8; l++) {
                s += acc[l];
            }
            y[o] = s + (bias ? bias[o] : 0.0f);
        }
    }
    return EENET_OK;
}

/* Backward, ACCUMULATES:
 *   dinp (N,Fi) += dout (N,Fo) @ w (Fo,Fi)        (NULL: skip)
 *   dw   (Fo,Fi) += dout^T (Fo,N) @ inp (N,Fi)
 *   dbias (Fo)  += sum_n dout[n,:]               (NULL: skip)
 * The loop version splits into race-free nests: dinp over rows n, dw/dbias over
 * output rows o. */
eenet_status eenet_linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                   const float *inp, const float *w, int N, int Fi, int Fo) {
    eenet_status st = check_sizes("linear_backward", N, Fi, Fo);
    if (st != EENET_OK) {
        return st;
    }
    if (dbias) {
        for (int n = 0; n < N; n++) {
            const float *g = dout + (size_t)n * Fo;
            for (int o = 0; o < Fo; o++) {
                dbias[o] += g[o];
            }
        }
    }
#ifdef EENET_HAVE_OPENBLAS
    if (use_blas(N, Fi, Fo)) {
        if (dinp) {
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, Fi, Fo, 1.0f, dout, Fo,
                              w, Fi, 1.0f, dinp, Fi);
        }
        scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Fo, Fi, N, 1.0f, dout, Fo, inp,
                          Fi, 1.0f, dw, Fi);
        return EENET_OK;
    }
#endif
    const int par = (double)N * Fi * Fo > 8192;
    (void)par; /* unused without OpenMP */
    if (dinp) {
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (par)
        for (int n = 0; n < N; n++) {
            const float *g = dout + (size_t)n * Fo;
            float *dx = dinp + (size_t)n * Fi;
            for (int o = 0; o < Fo; o++) {
                const float go = g[o];
                const float *wo = w + (size_t)o * Fi;
                for (int i = 0; i < Fi; i++) {
                    dx[i] += go * wo[i];
                }
            }
        }
    }
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (par)
    for (int o = 0; o < Fo; o++) {
        float *dwo = dw + (size_t)o * Fi;
        for (int n = 0; n < N; n++) {
            const float go = dout[(size_t)n * Fo + o];
            const float *x = inp + (size_t)n * Fi;
            for (int i = 0; i < Fi; i++) {
                dwo[i] += go * x[i];
            }
        }
    }
    return EENET_OK;
}

/* Naive references (double accumulation), same contracts as above. */
eenet_status eenet_linear_forward_naive(float *out, const float *inp, const float *w,
                                        const float *bias, int N, int Fi, int Fo) {
    eenet_status st = check_sizes("linear_forward_naive", N, Fi, Fo);
    if (st != EENET_OK) {
        return st;
    }
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < Fo; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int i = 0; i < Fi; i++) {
                s += (double)inp[(size_t)n * Fi + i] * w[(size_t)o * Fi + i];
            }
            out[(size_t)n * Fo + o] = (float)s;
        }
    }
    return EENET_OK;
}

eenet_status eenet_linear_backward_naive(float *dinp, float *dw, float *dbias,
                                         const float *dout, const float *inp, const float *w,
                                         int N, int Fi, int Fo) {
    eenet_status st = check_sizes("linear_backward_naive", N, Fi, Fo);
    if (st != EENET_OK) {
        return st;
    }
    if (dinp) {
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < Fi; i++) {
                double s = 0.0;
                for (int o = 0; o < Fo; o++) {
                    s += (double)dout[(size_t)n * Fo + o] * w[(size_t)o * Fi + i];
                }
                dinp[(size_t)n * Fi + i] += (float)s;
            }
        }
    }
    for (int o = 0; o < Fo; o++) {
        for (int i = 0; i < Fi; i++) {
            double s = 0.0;
            for (int n = 0; n < N; n++) {
                s += (double)dout[(size_t)n * Fo + o] * inp[(size_t)n * Fi + i];
            }
            dw[(size_t)o * Fi + i] += (float)s;
        }
        if (dbias) {
            double s = 0.0;
            for (int n = 0; n < N; n++) {
                s += dout[(size_t)n * Fo + o];
            }
            dbias[o] += (float)s;
        }
    }
    return EENET_OK;
}
