/* act.c: elementwise kernels (ReLU, residual add, sigmoid) and softmax.
 *
 * Elementwise: out/inp (n), any layout.  Forward overwrites; backward
 * ACCUMULATES into dinp (+=).  Parallel over chunks of the flat array once it is
 * large enough for threads to pay.
 */
#include <math.h>

#include "kernels.h"

/* Below this many elements an elementwise loop runs on one thread. */
#define PAR_MIN 65536

/* out = max(inp, 0).  NaN stays NaN (as torch.relu). */
eenet_status eenet_relu_forward(float *out, const float *inp, size_t n) {
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        const float x = inp[i];
        out[i] = x < 0.0f ? 0.0f : x;
    }
    return EENET_OK;
}

/* dinp += out > 0 ? dout : 0   (out is the forward output; the kink x = 0 gets 0,
 * as PyTorch's threshold_backward). */
eenet_status eenet_relu_backward(float *dinp, const float *dout, const float *out, size_t n) {
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        /* load unconditionally and select: GCC vectorises this (the branchy
         * form ran scalar with a mispredicted branch per element, 10x slower) */
        const float g = dout[i];
        dinp[i] += out[i] > 0.0f ? g : 0.0f;
    }
    return EENET_OK;
}

/* out = a + b. */
eenet_status eenet_add_forward(float *out, const float *a, const float *b, size_t n) {
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        out[i] = a[i] + b[i];
    }
    return EENET_OK;
}

/* da += dout; db += dout (either may be NULL to skip). */
eenet_status eenet_add_backward(float *da, float *db, const float *dout, size_t n) {
    const ptrdiff_t len = (ptrdiff_t)n;
    if (da) {
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++) {
            da[i] += dout[i];
        }
    }
    if (db) {
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
        for (ptrdiff_t i = 0; i < len; i++) {
            db[i] += dout[i];
        }
    }
    return EENET_OK;
}

/* out = 1 / (1 + exp(-x)), written so neither branch overflows:
 * x >= 0: 1 / (1 + e^-x);  x < 0: e^x / (1 + e^x). */
eenet_status eenet_sigmoid_forward(float *out, const float *inp, size_t n) {
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        const float x = inp[i];
        if (x >= 0.0f) {
            out[i] = 1.0f / (1.0f + expf(-x));
        } else {
            const float e = expf(x);
            out[i] = e / (1.0f + e);
        }
    }
    return EENET_OK;
}

/* dinp += dout * out * (1 - out). */
eenet_status eenet_sigmoid_backward(float *dinp, const float *dout, const float *out, size_t n) {
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        dinp[i] += dout[i] * out[i] * (1.0f - out[i]);
    }
    return EENET_OK;
}

/* Softmax over the last axis, numerically stable:
 * prob[n,k] = exp(z[n,k] - max_j z[n,j]) / sum_k exp(z[n,k] - max_j z[n,j]).
 * prob, logits (N,K); overwrites prob.  Parallel over rows. */
eenet_status eenet_softmax_forward(float *prob, const float *logits, int N, int K) {
    if (N < 1 || K < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "softmax_forward: expected N, K >= 1, got %d, %d",
                               N, K);
    }
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)N * K > 16384)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * K;
        float *p = prob + (size_t)n * K;
        float zmax = z[0];
        for (int k = 1; k < K; k++) {
            zmax = z[k] > zmax ? z[k] : zmax;
        }
        double sum = 0.0;
        for (int k = 0; k < K; k++) {
            p[k] = expf(z[k] - zmax);
            sum += p[k];
        }
        const float inv = (float)(1.0 / sum);
        for (int k = 0; k < K; k++) {
            p[k] *= inv;
        }
    }
    return EENET_OK;
}

/* dlogits[n,k] += prob[n,k] * (dprob[n,k] - sum_j dprob[n,j] * prob[n,j]). */
eenet_status eenet_softmax_backward(float *dlogits, const float *dprob, const float *prob,
                                    int N, int K) {
    if (N < 1 || K < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "softmax_backward: expected N, K >= 1, got %d, %d", N, K);
    }
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if ((size_t)N * K > 16384)
    for (int n = 0; n < N; n++) {
        const float *g = dprob + (size_t)n * K;
        const float *p = prob + (size_t)n * K;
        float *d = dlogits + (size_t)n * K;
        double dot = 0.0;
        for (int k = 0; k < K; k++) {
            dot += (double)g[k] * p[k];
        }
        const float fdot = (float)dot;
        for (int k = 0; k < K; k++) {
            d[k] += p[k] * (g[k] - fdot);
        }
    }
    return EENET_OK;
}
