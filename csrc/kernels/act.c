/* act.c: elementwise kernels (ReLU, residual add, sigmoid) and softmax.
 *
 * Elementwise: out/inp (n), any layout.  Forward overwrites; backward
 * ACCUMULATES into dinp (+=).  Parallel over chunks of the flat array once it is
 * large enough for threads to pay.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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

/* out = relu(a + b), the ReLU as eenet_relu_forward (v < 0 ? 0 : v): the
 * residual add and the ReLU after it in one pass. */
eenet_status eenet_add_relu_forward(float *out, const float *a, const float *b, size_t n) {
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        const float v = a[i] + b[i];
        out[i] = v < 0.0f ? 0.0f : v;
    }
    return EENET_OK;
}

/* Elements per block of eenet_add_relu_backward: the masked gradient of one
 * block sits in a stack buffer (L1) and is then added to / stored into da and
 * db, every inner loop a plain one the compiler vectorises (a single loop with
 * the cases as branches ran scalar, 3x slower than the separate kernels). */
#define ADD_BWD_BLOCK 1024

static void add_relu_bwd_chunk(float *da, float *db, const float *dy, const float *y,
                               ptrdiff_t lo, ptrdiff_t hi, int set_a, int set_b) {
    float buf[ADD_BWD_BLOCK];
    for (ptrdiff_t b0 = lo; b0 < hi; b0 += ADD_BWD_BLOCK) {
        const ptrdiff_t m = hi - b0 < ADD_BWD_BLOCK ? hi - b0 : ADD_BWD_BLOCK;
        const float *g = dy + b0;
        if (y) {
            /* the select alone (written as 0 + select, GCC splits it into a
             * branch per element); the 0 + is added in the loops below */
            const float *yb = y + b0;
            for (ptrdiff_t j = 0; j < m; j++) {
                const float d = g[j];
                buf[j] = yb[j] > 0.0f ? d : 0.0f;
            }
            g = buf;
        }
        float *outs[2] = {da ? da + b0 : NULL, db ? db + b0 : NULL};
        const int sets[2] = {set_a, set_b};
        for (int s = 0; s < 2; s++) {
            float *o = outs[s];
            if (!o) {
                continue;
            }
            if (sets[s]) {
                for (ptrdiff_t j = 0; j < m; j++) {
                    o[j] = 0.0f + g[j];
                }
            } else if (y) {
                for (ptrdiff_t j = 0; j < m; j++) {
                    o[j] += 0.0f + g[j];
                }
            } else {
                for (ptrdiff_t j = 0; j < m; j++) {
                    o[j] += g[j];
                }
            }
        }
    }
}

/* Backward of y = relu(a + b) (relu_out = y), or of y = a + b (relu_out NULL).
 * The gradient reaching a and b is g = 0 + (y > 0 ? dy : 0) (relu_backward into a
 * zeroed buffer), or dy without the ReLU.  da, db (n; either NULL to skip)
 * ACCUMULATE g, except that bit 1 of `set` (da) and bit 2 (db) make that buffer
 * OVERWRITTEN with 0 + g, the bits accumulating into a zeroed buffer gives, without
 * reading it.  da and db must not overlap. */
eenet_status eenet_add_relu_backward(float *da, float *db, const float *dy, const float *relu_out,
                                     size_t n, int set) {
    const ptrdiff_t len = (ptrdiff_t)n;
    const int set_a = (set & 1) != 0, set_b = (set & 2) != 0;
#pragma omp parallel num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    {
        ptrdiff_t lo = 0, hi = len;
#ifdef _OPENMP
        const ptrdiff_t nt = omp_get_num_threads(), t = omp_get_thread_num();
        const ptrdiff_t chunk = (len + nt - 1) / nt;
        lo = t * chunk < len ? t * chunk : len;
        hi = lo + chunk < len ? lo + chunk : len;
#endif
        add_relu_bwd_chunk(da, db, dy, relu_out, lo, hi, set_a, set_b);
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
