/* eeloss.c: the early-exit losses v0..v4 of EENets (DESIGN.md "Losses").
 *
 * Shapes: E1 exits including the final one (F = E1 - 1); probs (E1,N,K) softmax
 * outputs p_i; conf (E1,N) sigmoid outputs h_i (the final exit's row is ignored);
 * costs (E1) c_i with c_F the final exit's cost (1); labels (N) y; tags (N) exit
 * tags for v4.  Every log is taken as log(max(., EENET_PROB_FLOOR)) with no gradient
 * below the floor (as nll_prob, loss.c).  NLL(q) = -1/N sum_n log q[n, y_n].
 *
 *   v0: L = sum_{i=0..F} NLL(p_i)
 *   mixtures (v1, v2): P_F = p_F, C_F = c_F;
 *        P_i = h_i p_i + (1 - h_i) P_{i+1},  C_i = h_i c_i + (1 - h_i) C_{i+1}
 *   v1: L = NLL(P_0) + lambda mean_n C_0
 *   v2: L = sum_{i=0..F} [NLL(P_i) + lambda mean_n C_i]
 *   v3: m_i = mean_n h_i (i < F), m_F = 1;  w_i = m_i / sum_j m_j (not detached);
 *       L = sum_{i=0..F} w_i (NLL(p_i) + lambda c_i).
 *       The authors' loss_v3 normalises over the confidences it is given and then
 *       indexes norm_conf[num_ee], which their models never return (the final exit
 *       has no confidence head, so that code raises IndexError).  We take the
 *       final exit's confidence as 1, the value a forced exit has (the engine's
 *       forward also reports h_F = 1), so every exit, the final one included,
 *       enters both sums; the weights carry gradient, as in the authors' code.
 *   v4: P = p_tag, C = c_tag, and for each early exit i < F (the exits that have
 *       a confidence head; the authors' loop also visits i = F, whose conf[F]
 *       does not exist in their models):
 *       e_i = [tag = i], r_i = mean_n e_i, w = e_i (1 - r_i) + (1 - e_i) r_i,
 *       L = NLL(P) + lambda mean_n C + sum_{i<F} mean_n w BCE(h_i, e_i),
 *       BCE(x, e) = -(e max(log x, -100) + (1 - e) max(log(1 - x), -100)) and its
 *       gradient w (x - e) / max(x (1 - x), 1e-12), both exactly as
 *       torch.nn.functional.binary_cross_entropy (r_i is a constant).
 *
 * parts = {total, classification (NLL terms, weighted in v3), cost (lambda * cost
 * terms), confidence (v4's BCE)}.  Gradients ACCUMULATE into dprobs (E1,N,K) and
 * dconf (E1,N); only column y_n of dprobs is touched; dconf's final row gets 0.
 * Per-sample work is independent, so the batch is split across threads; sums are
 * accumulated in double.
 */
#include <math.h>

#include "kernels.h"

#define MAX_EXITS 64
#define BCE_LOG_MIN -100.0
#define BCE_EPS 1e-12

static double floor_log(double q) {
    return log(q > (double)EENET_PROB_FLOOR ? q : (double)EENET_PROB_FLOOR);
}

/* d(-log max(q, floor))/dq, scaled by s: -s/q above the floor, 0 below. */
static double floor_dlog(double q, double s) {
    return q >= (double)EENET_PROB_FLOOR ? -s / q : 0.0;
}

static eenet_status validate(const float *probs, const float *conf, const float *costs,
                             const int64_t *labels, const int32_t *tags, int version,
                             float lambda_coef, int E1, int N, int K) {
    if (E1 < 1 || E1 > MAX_EXITS || N < 1 || K < 1) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "ee_loss: expected 1 <= exits <= %d, N >= 1, K >= 1, got "
                               "exits=%d N=%d K=%d",
                               MAX_EXITS, E1, N, K);
    }
    if (version < 0 || version > 4) {
        return eenet_set_error(EENET_ERR_VALUE, "ee_loss: version must be 0..4, got %d",
                               version);
    }
    if (!isfinite(lambda_coef)) {
        return eenet_set_error(EENET_ERR_NONFINITE, "ee_loss: lambda_coef is %g",
                               (double)lambda_coef);
    }
    for (int n = 0; n < N; n++) {
        if (labels[n] < 0 || labels[n] >= K) {
            return eenet_set_error(EENET_ERR_VALUE,
                                   "ee_loss: label %lld at index %d is outside [0, %d)",
                                   (long long)labels[n], n, K);
        }
    }
    if (version == 4) {
        if (!tags) {
            return eenet_set_error(EENET_ERR_VALUE, "ee_loss: version 4 needs exit tags");
        }
        for (int n = 0; n < N; n++) {
            if (tags[n] < 0 || tags[n] >= E1) {
                return eenet_set_error(EENET_ERR_VALUE,
                                       "ee_loss: tag %d at index %d is outside [0, %d)",
                                       (int)tags[n], n, E1);
            }
        }
    }
    for (int i = 0; i < E1; i++) {
        if (!isfinite(costs[i])) {
            return eenet_set_error(EENET_ERR_NONFINITE, "ee_loss: costs[%d] is %g", i,
                                   (double)costs[i]);
        }
    }
    const size_t np = (size_t)E1 * N * K;
    for (size_t j = 0; j < np; j++) {
        if (!isfinite(probs[j])) {
            return eenet_set_error(EENET_ERR_NONFINITE,
                                   "ee_loss: probs holds %g at flat index %zu",
                                   (double)probs[j], j);
        }
        if (probs[j] < 0.0f) {
            return eenet_set_error(EENET_ERR_VALUE,
                                   "ee_loss: probs holds the negative value %g at flat index %zu",
                                   (double)probs[j], j);
        }
    }
    const size_t nc = (size_t)(E1 - 1) * N; /* the final exit's row is ignored */
    for (size_t j = 0; j < nc; j++) {
        if (!isfinite(conf[j])) {
            return eenet_set_error(EENET_ERR_NONFINITE,
                                   "ee_loss: conf holds %g at flat index %zu", (double)conf[j],
                                   j);
        }
        if (conf[j] < 0.0f || conf[j] > 1.0f) {
            return eenet_set_error(EENET_ERR_VALUE,
                                   "ee_loss: conf holds %g at flat index %zu, outside [0, 1]",
                                   (double)conf[j], j);
        }
    }
    return EENET_OK;
}

/* v1 (all_exits = 0) and v2 (all_exits = 1): the recursive mixtures. */
static void loss_mixture(double *cls, double *cost, float *dprobs, float *dconf,
                         const float *probs, const float *conf, const float *costs,
                         const int64_t *labels, double lambda, int all_exits, int E1, int N,
                         int K) {
    const int F = E1 - 1;
    const size_t NK = (size_t)N * K;
    double scls = 0.0, scost = 0.0;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) \
    if (N * E1 > 4096) reduction(+ : scls, scost)
    for (int n = 0; n < N; n++) {
        double q[MAX_EXITS], C[MAX_EXITS], gq[MAX_EXITS], gC[MAX_EXITS];
        const size_t y = (size_t)labels[n];
        q[F] = probs[F * NK + (size_t)n * K + y];
        C[F] = costs[F];
        for (int i = F - 1; i >= 0; i--) {
            const double h = conf[(size_t)i * N + n];
            q[i] = h * probs[i * NK + (size_t)n * K + y] + (1.0 - h) * q[i + 1];
            C[i] = h * costs[i] + (1.0 - h) * C[i + 1];
        }
        const int last = all_exits ? F : 0;
        for (int i = 0; i <= F; i++) {
            gq[i] = 0.0;
            gC[i] = 0.0;
        }
        for (int i = 0; i <= last; i++) {
            scls -= floor_log(q[i]);
            scost += C[i];
            gq[i] = floor_dlog(q[i], 1.0 / N);
            gC[i] = lambda / N;
        }
        /* backward through the recursion, exit 0 first */
        for (int i = 0; i < F; i++) {
            const double h = conf[(size_t)i * N + n];
            const size_t pi = i * NK + (size_t)n * K + y;
            if (dprobs) {
                dprobs[pi] += (float)(gq[i] * h);
            }
            if (dconf) {
                dconf[(size_t)i * N + n] +=
                    (float)(gq[i] * (probs[pi] - q[i + 1]) + gC[i] * (costs[i] - C[i + 1]));
            }
            gq[i + 1] += gq[i] * (1.0 - h);
            gC[i + 1] += gC[i] * (1.0 - h);
        }
        if (dprobs) {
            dprobs[F * NK + (size_t)n * K + y] += (float)gq[F];
        }
    }
    *cls = scls / N;
    *cost = lambda * scost / N;
}

/* v0 (weights NULL: every exit weight 1) and the classification part of v3. */
static void loss_per_exit_nll(double *nll, float *dprobs, const float *probs,
                              const int64_t *labels, const double *weights, int E1, int N,
                              int K) {
    const size_t NK = (size_t)N * K;
    for (int i = 0; i < E1; i++) {
        double s = 0.0;
        const double wi = weights ? weights[i] : 1.0;
        for (int n = 0; n < N; n++) {
            const size_t pi = i * NK + (size_t)n * K + (size_t)labels[n];
            s -= floor_log(probs[pi]);
            if (dprobs) {
                dprobs[pi] += (float)floor_dlog(probs[pi], wi / N);
            }
        }
        nll[i] = s / N;
    }
}

static void loss_v3(double *parts, float *dprobs, float *dconf, const float *probs,
                    const float *conf, const float *costs, const int64_t *labels,
                    double lambda, int E1, int N, int K) {
    const int F = E1 - 1;
    double m[MAX_EXITS] = {0}, w[MAX_EXITS] = {0}, nll[MAX_EXITS] = {0};
    double S = 0.0;
    for (int i = 0; i < E1; i++) {
        double s = 0.0;
        if (i < F) {
            for (int n = 0; n < N; n++) {
                s += conf[(size_t)i * N + n];
            }
            m[i] = s / N;
        } else {
            m[i] = 1.0; /* the forced final exit */
        }
        S += m[i];
    }
    for (int i = 0; i < E1; i++) {
        w[i] = m[i] / S;
    }
    loss_per_exit_nll(nll, dprobs, probs, labels, w, E1, N, K);
    double cls = 0.0, cost = 0.0;
    for (int i = 0; i < E1; i++) {
        cls += w[i] * nll[i];
        cost += w[i] * lambda * costs[i];
    }
    const double L = cls + cost;
    if (dconf) {
        /* dL/dm_i = (l_i - L) / S with l_i = nll_i + lambda c_i; dm_i/dh_i[n] = 1/N */
        for (int i = 0; i < F; i++) {
            const double g = (nll[i] + lambda * costs[i] - L) / (S * N);
            for (int n = 0; n < N; n++) {
                dconf[(size_t)i * N + n] += (float)g;
            }
        }
    }
    parts[1] = cls;
    parts[2] = cost;
    parts[3] = 0.0;
}

static void loss_v4(double *parts, float *dprobs, float *dconf, const float *probs,
                    const float *conf, const float *costs, const int64_t *labels,
                    const int32_t *tags, double lambda, int E1, int N, int K) {
    const int F = E1 - 1;
    const size_t NK = (size_t)N * K;
    double cls = 0.0, cost = 0.0, bce = 0.0;
    for (int n = 0; n < N; n++) {
        const int t = tags[n];
        const size_t pi = t * NK + (size_t)n * K + (size_t)labels[n];
        cls -= floor_log(probs[pi]);
        cost += costs[t];
        if (dprobs) {
            dprobs[pi] += (float)floor_dlog(probs[pi], 1.0 / N);
        }
    }
    for (int i = 0; i < F; i++) {
        int count = 0;
        for (int n = 0; n < N; n++) {
            count += tags[n] == i;
        }
        const double r = (double)count / N;
        for (int n = 0; n < N; n++) {
            const int e = tags[n] == i;
            const double wt = e ? 1.0 - r : r;
            const double x = conf[(size_t)i * N + n];
            double lg = e ? log(x) : log(1.0 - x);
            lg = lg > BCE_LOG_MIN ? lg : BCE_LOG_MIN;
            bce -= wt * lg;
            if (dconf) {
                double den = x * (1.0 - x);
                den = den > BCE_EPS ? den : BCE_EPS;
                dconf[(size_t)i * N + n] += (float)(wt * (x - e) / (den * N));
            }
        }
    }
    parts[1] = cls / N;
    parts[2] = lambda * cost / N;
    parts[3] = bce / N;
}

eenet_status eenet_ee_loss(float *parts, float *dprobs, float *dconf, const float *probs,
                           const float *conf, const float *costs, const int64_t *labels,
                           const int32_t *tags, int version, float lambda_coef, int E1, int N,
                           int K) {
    eenet_status st =
        validate(probs, conf, costs, labels, tags, version, lambda_coef, E1, N, K);
    if (st != EENET_OK) {
        return st;
    }
    const double lambda = lambda_coef;
    double p[4] = {0.0, 0.0, 0.0, 0.0};
    switch (version) {
    case 0: {
        double nll[MAX_EXITS];
        loss_per_exit_nll(nll, dprobs, probs, labels, NULL, E1, N, K);
        for (int i = 0; i < E1; i++) {
            p[1] += nll[i];
        }
        break;
    }
    case 1:
    case 2:
        loss_mixture(&p[1], &p[2], dprobs, dconf, probs, conf, costs, labels, lambda,
                     version == 2, E1, N, K);
        break;
    case 3:
        loss_v3(p, dprobs, dconf, probs, conf, costs, labels, lambda, E1, N, K);
        break;
    default:
        loss_v4(p, dprobs, dconf, probs, conf, costs, labels, tags, lambda, E1, N, K);
        break;
    }
    p[0] = p[1] + p[2] + p[3];
    for (int j = 0; j < 4; j++) {
        parts[j] = (float)p[j];
    }
    if (!isfinite(parts[0])) {
        return eenet_set_error(EENET_ERR_NONFINITE, "ee_loss: the loss is %g",
                               (double)parts[0]);
    }
    return EENET_OK;
}
