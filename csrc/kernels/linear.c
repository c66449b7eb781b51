/* linear.c: fully connected layer, out = inp @ w^T + bias (torch.nn.functional.linear).
 *
 * out (N,Fo); inp (N,Fi); w (Fo,Fi); bias (Fo) or NULL.
 * Large products go to OpenBLAS's sgemm (scipy-openblas32); the exit heads of an
 * EENet are tiny (Fo = 1 or K classes, Fi = a few channels), where a call into BLAS
 * costs more than the arithmetic, so below LINEAR_BLAS_MIN multiply-adds plain
 * loops run instead (threshold measured, see benchmarks).
 */
#include <string.h>

#include "kernels.h"

#ifdef EENET_HAVE_OPENBLAS
#include <cblas.h>
#endif

/* Multiply-adds (N*Fi*Fo) from which sgemm is used. */
#define LINEAR_BLAS_MIN 32768

static eenet_status check_sizes(const char *fn, int N, int Fi, int Fo) {
    if (N < 1 || Fi < 1 || Fo < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "%s: sizes must be positive, got N=%d Fi=%d Fo=%d",
                               fn, N, Fi, Fo);
    }
    return EENET_OK;
}

static int use_blas(int N, int Fi, int Fo) {
#ifdef EENET_HAVE_OPENBLAS
    return (double)N * Fi * Fo >= LINEAR_BLAS_MIN;
#else
    (void)N, (void)Fi, (void)Fo;
    return 0;
#endif
}

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
            float s = 0.0f;
            for (int i = 0; i < Fi; i++) {
                s += x[i] * wo[i];
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
