/* optim.c: SGD and Adam steps over one flat parameter buffer, with the exact
 * arithmetic of torch.optim.SGD / torch.optim.Adam (single-tensor path, which is
 * what PyTorch uses for CPU tensors), in float32 with the same operation order.
 * Hyper-parameters arrive as double, like the Python floats torch receives;
 * scalars torch computes in Python (1 - dampening, 1 - beta, the bias corrections,
 * lr / bias_correction1) are computed in double here too and then rounded to
 * float, as the tensor kernels round their scalar arguments.
 *
 * params, momentum_buf / exp_avg / exp_avg_sq, grads: (n).  Parameters and the
 * optimiser state are updated in place; grads are read only.
 */
#include <math.h>

#include "kernels.h"

#define PAR_MIN 65536

/* torch.optim.SGD, per element:
 *   g = grad + wd * p                                  (if wd != 0)
 *   buf = first_step ? g : momentum * buf + (1 - dampening) * g   (if momentum != 0)
 *   g = nesterov ? g + momentum * buf : buf            (if momentum != 0)
 *   p = p + (-lr) * g
 * momentum_buf may be NULL when momentum == 0. */
eenet_status eenet_sgd_step(float *params, float *momentum_buf, const float *grads, size_t n,
                            double lr, double momentum, double dampening, double weight_decay,
                            int nesterov, int first_step) {
    if (!isfinite(lr) || !isfinite(momentum) || !isfinite(dampening) ||
        !isfinite(weight_decay)) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "sgd_step: non-finite hyper-parameter (lr=%g momentum=%g "
                               "dampening=%g weight_decay=%g)",
                               lr, momentum, dampening, weight_decay);
    }
    if (momentum != 0.0 && !momentum_buf) {
        return eenet_set_error(EENET_ERR_VALUE, "sgd_step: momentum %g needs a momentum buffer",
                               momentum);
    }
    if (nesterov && (momentum <= 0.0 || dampening != 0.0)) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "sgd_step: Nesterov momentum requires a momentum and zero "
                               "dampening (got momentum=%g dampening=%g)",
                               momentum, dampening);
    }
    const int use_wd = weight_decay != 0.0, use_mom = momentum != 0.0;
    const float wd = (float)weight_decay, mom = (float)momentum;
    const float one_minus_damp = (float)(1.0 - dampening);
    const float neg_lr = (float)(-lr);
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        float g = grads[i];
        if (use_wd) {
            g = g + wd * params[i];
        }
        if (use_mom) {
            float b;
            if (first_step) {
                b = g;
            } else {
                b = momentum_buf[i] * mom;
                b = b + one_minus_damp * g;
            }
            momentum_buf[i] = b;
            g = nesterov ? g + mom * b : b;
        }
        params[i] = params[i] + neg_lr * g;
    }
    return EENET_OK;
}

/* torch.optim.Adam (amsgrad off, L2-style weight decay), step t >= 1, per element:
 *   g = grad + wd * p                                  (if wd != 0)
 *   m = lerp(m, g, 1 - beta1) = m + (1 - beta1) * (g - m)   (torch's form for weight < 0.5)
 *   v = v * beta2 + ((1 - beta2) * g) * g
 *   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
 *   p = p + ((-lr / (1 - beta1^t)) * m) / denom */
eenet_status eenet_adam_step(float *params, float *exp_avg, float *exp_avg_sq,
                             const float *grads, size_t n, double lr, double beta1, double beta2,
                             double eps, double weight_decay, int step) {
    if (step < 1) {
        return eenet_set_error(EENET_ERR_VALUE, "adam_step: step must be >= 1, got %d", step);
    }
    if (!isfinite(lr) || !(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0) ||
        !isfinite(eps) || !isfinite(weight_decay)) {
        return eenet_set_error(EENET_ERR_VALUE,
                               "adam_step: bad hyper-parameter (lr=%g beta1=%g beta2=%g eps=%g "
                               "weight_decay=%g)",
                               lr, beta1, beta2, eps, weight_decay);
    }
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const float neg_step_size = (float)(-(lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const double w1d = 1.0 - beta1;
    const float w1 = (float)w1d;
    const float one_minus_w1 = (float)(1.0 - w1d);
    const float b2 = (float)beta2, w2 = (float)(1.0 - beta2);
    const float feps = (float)eps, wd = (float)weight_decay;
    const int use_wd = weight_decay != 0.0;
    const int small_weight = fabs(w1d) < 0.5;
    const ptrdiff_t len = (ptrdiff_t)n;
#pragma omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)
    for (ptrdiff_t i = 0; i < len; i++) {
        float g = grads[i];
        if (use_wd) {
            g = g + wd * params[i];
        }
        const float m0 = exp_avg[i];
        /* torch's lerp picks its form by the weight's size */
        const float m = small_weight ? m0 + w1 * (g - m0) : g - (g - m0) * one_minus_w1;
        exp_avg[i] = m;
        float v = exp_avg_sq[i] * b2;
        v = v + (w2 * g) * g;
        exp_avg_sq[i] = v;
        const float denom = sqrtf(v) / bc2_sqrt + feps;
        params[i] = params[i] + (neg_step_size * m) / denom;
    }
    return EENET_OK;
}
