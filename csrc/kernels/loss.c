/* loss.c: negative log-likelihood on probabilities.
 *
 * The authors apply F.nll_loss to log() of softmax outputs (and of mixtures of
 * them), so the loss takes probabilities, not logits.  A probability that
 * underflows to 0 would give an infinite loss; it is floored:
 *   loss = -1/N sum_n log(max(prob[n, y_n], EENET_PROB_FLOOR))
 * and, like torch.clamp, the floor passes no gradient:
 *   dprob[n, y_n] += -dloss / (N * prob[n, y_n])   if prob[n, y_n] >= floor, else 0.
 * prob (N,K), labels (N) in [0, K).
 */
#include <math.h>

#include "kernels.h"

static eenet_status check_labels(const char *fn, const int64_t *labels, int N, int K) {
    if (N < 1 || K < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "%s: expected N, K >= 1, got N=%d K=%d", fn, N,
                               K);
    }
    for (int n = 0; n < N; n++) {
        if (labels[n] < 0 || labels[n] >= K) {
            return eenet_set_error(EENET_ERR_VALUE,
                                   "%s: label %lld at index %d is outside [0, %d)", fn,
                                   (long long)labels[n], n, K);
        }
    }
    return EENET_OK;
}

/* Overwrites *loss. */
eenet_status eenet_nll_prob_forward(float *loss, const float *prob, const int64_t *labels,
                                    int N, int K) {
    eenet_status st = check_labels("nll_prob_forward", labels, N, K);
    if (st != EENET_OK) {
        return st;
    }
    double s = 0.0;
    for (int n = 0; n < N; n++) {
        const float p = prob[(size_t)n * K + labels[n]];
        if (!(p >= 0.0f) || isinf(p)) {
            return eenet_set_error(EENET_ERR_NONFINITE,
                                   "nll_prob_forward: prob[%d, %lld] = %g is not a finite "
                                   "probability",
                                   n, (long long)labels[n], (double)p);
        }
        s -= log(p > EENET_PROB_FLOOR ? (double)p : (double)EENET_PROB_FLOOR);
    }
    *loss = (float)(s / N);
    return EENET_OK;
}

/* ACCUMULATES into dprob (N,K). */
eenet_status eenet_nll_prob_backward(float *dprob, const float *prob, const int64_t *labels,
                                     float dloss, int N, int K) {
    eenet_status st = check_labels("nll_prob_backward", labels, N, K);
    if (st != EENET_OK) {
        return st;
    }
    for (int n = 0; n < N; n++) {
        const size_t idx = (size_t)n * K + labels[n];
        const float p = prob[idx];
        if (p >= EENET_PROB_FLOOR) {
            dprob[idx] += (float)(-(double)dloss / ((double)N * p));
        }
    }
    return EENET_OK;
}
