/* kernels.h: every compute kernel of the core.  Plain C11, no Python.
 *
 * Conventions (STYLE.md):
 *   - signature order: outputs, inputs, parameters, sizes; gradients carry a
 *     `d` prefix; inputs are const; shapes in a comment above each function;
 *   - float32, NCHW, C-contiguous;
 *   - forward overwrites its outputs; backward ACCUMULATES (+=) into d*
 *     buffers unless the comment says otherwise;
 *   - every function returns eenet_status (eenet.h) and sets the message on
 *     error;  no malloc inside kernels: scratch comes from the caller, sized
 *     by the matching *_workspace_size function;
 *   - OpenMP regions use num_threads(eenet_get_num_threads());
 *   - each fast kernel has a *_naive twin used by the tests.
 */
#ifndef EENET_KERNELS_H
#define EENET_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "eenet.h"

/* ---- conv (conv.c, gemm.c) --------------------------------------------- */
/* BEGIN conv declarations */
/* Output size of a convolution or pooling window: (in + 2*pad - k) / stride + 1. */
int eenet_conv_out_size(int in, int k, int stride, int pad);

/* Scratch (in floats) that conv2d_forward/backward need for these sizes when
 * run with up to `nthreads` threads (im2col columns, per-thread partial
 * weight gradients, ...).  The engine allocates it once for the largest layer. */
size_t eenet_conv2d_workspace_floats(int N, int C, int H, int W, int K, int kh, int kw,
                                     int stride, int pad, int nthreads);

/* Forward, overwrites out.
 * out (N,K,Ho,Wo); inp (N,C,H,W); w (K,C,kh,kw); bias (K) or NULL;
 * workspace of eenet_conv2d_workspace_floats(...) floats. */
eenet_status eenet_conv2d_forward(float *out, const float *inp, const float *w,
                                  const float *bias, float *workspace, int N, int C, int H,
                                  int W, int K, int kh, int kw, int stride, int pad);

/* Backward, ACCUMULATES into dinp (N,C,H,W; NULL to skip), dw (K,C,kh,kw) and
 * dbias (K; NULL to skip).  dout (N,K,Ho,Wo); inp, w as in forward.
 * (The fast kernels also accept dw = NULL to skip the weight gradient.) */
eenet_status eenet_conv2d_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                   const float *inp, const float *w, float *workspace, int N,
                                   int C, int H, int W, int K, int kh, int kw, int stride,
                                   int pad);

/* The same with an explicit bound: `nthreads` is the thread count the
 * workspace was sized for; the kernels use min(nthreads, eenet_get_num_threads())
 * threads.  The forms above pass eenet_get_num_threads(), so their workspace
 * must be sized for the thread count current at call time; a caller that sizes
 * once (the engine) and may see eenet_set_num_threads() raise the count later
 * should call these. */
eenet_status eenet_conv2d_forward_ex(float *out, const float *inp, const float *w,
                                     const float *bias, float *workspace, int N, int C, int H,
                                     int W, int K, int kh, int kw, int stride, int pad,
                                     int nthreads);
eenet_status eenet_conv2d_backward_ex(float *dinp, float *dw, float *dbias, const float *dout,
                                      const float *inp, const float *w, float *workspace,
                                      int N, int C, int H, int W, int K, int kh, int kw,
                                      int stride, int pad, int nthreads);

/* eenet_conv2d_backward, except that dinp (when not NULL) is SET to the data
 * gradient, not accumulated into: its contents on entry are never used (it
 * may be uninitialised; dw and dbias still accumulate).  The paths that can
 * store their result do so (no zeroing pass, no read of dinp); the others
 * zero dinp first, split over the samples as their threads will be. */
eenet_status eenet_conv2d_backward_set(float *dinp, float *dw, float *dbias, const float *dout,
                                       const float *inp, const float *w, float *workspace,
                                       int N, int C, int H, int W, int K, int kh, int kw,
                                       int stride, int pad);

/* Forward weights prepared once for many calls with the same weights (the
 * engine's eval mode): eenet_conv2d_prepare(prep, w, ...) transforms w for
 * the path the forward of this layer takes (into prep, of
 * eenet_conv2d_prepared_floats(...) floats; 0 floats: no path to prepare for)
 * and returns its tag (0: nothing prepared).  eenet_conv2d_forward_prepared
 * is eenet_conv2d_forward_ex that uses prep instead of transforming w when
 * prep_tag is the tag of the path it takes (else it transforms w as usual),
 * with the same bits either way.  prep must come from the weights w of the
 * call; ask again after changing the implementation switch below.  Today the
 * per-sample Winograd path (3x3 stride-1 layers of 16-64 channels), the
 * Winograd F(4x4,3x3) forward (16->16 on 32x32 planes, tag 4) and the
 * batch-lane Winograd path (16->16 on 8x8, 14x14 planes, tag 3) and the
 * channel-lane F(4x4) path (16->16 on 7x7 planes, tag 5) prepare their
 * transformed weights: one transform of 64->64 weights costs about as much
 * as the products of one 8x8 sample. */
size_t eenet_conv2d_prepared_floats(int C, int H, int W, int K, int kh, int kw, int stride,
                                    int pad);
int eenet_conv2d_prepare(float *prep, const float *w, int C, int H, int W, int K, int kh, int kw,
                         int stride, int pad);
eenet_status eenet_conv2d_forward_prepared(float *out, const float *inp, const float *w,
                                           const float *prep, int prep_tag, const float *bias,
                                           float *workspace, int N, int C, int H, int W, int K,
                                           int kh, int kw, int stride, int pad, int nthreads);
/* eenet_conv2d_forward_prepared with an epilogue (the engine's eval mode, where
 * a batch norm folded into the conv leaves its ReLU and residual add):
 *   out (N,K,Ho,Wo) = relu?(conv(inp, w) + bias + residual)
 * residual (N,K,Ho,Wo) or NULL (must not overlap out); relu = 1 applies
 * v < 0 ? 0 : v last.  The same bits as the conv followed by eenet_add_forward
 * and eenet_relu_forward (or eenet_add_relu_forward): the Winograd path does
 * it in its output transform, the others in one pass over out. */
eenet_status eenet_conv2d_forward_fused(float *out, const float *inp, const float *w,
                                        const float *prep, int prep_tag, const float *bias,
                                        const float *residual, int relu, float *workspace, int N,
                                        int C, int H, int W, int K, int kh, int kw, int stride,
                                        int pad, int nthreads);

/* Implementation switch for tests and benchmarks (process-wide, not thread-safe
 * against running kernels): 0 automatic (default), 1 im2col+GEMM everywhere,
 * 2 the direct path wherever the CPU and shape allow, 3 as 2 with the weight
 * gradient K-vectorised on the q-space planes, 4 Winograd F(2x2,3x3)
 * (conv_winograd.c) for forward, backward-data and weight gradient of every
 * 3x3 stride-1 pad-1 convolution with C, K <= 128 (the workspace holds its
 * buffers only there; AVX-512 transforms where the CPU has them,
 * there the weight gradient only for K a multiple of 16 up to 64; other
 * layers as 0), 5 as 4 with the portable C transforms and OpenBLAS, 6 the batch-lane direct path (16 samples per AVX-512 vector) for
 * every layer with C, K <= 16 and every sample (others as 0), 7 the
 * batch-lane Winograd path (conv_wlanes.c) for forward and backward-data of
 * every 3x3 stride-1 pad-1 layer with C, K <= 16 (others as 0), 8 the
 * Winograd F(4x4,3x3) forward (conv_wino4.c) of every 3x3 stride-1 pad-1
 * layer with C, K <= 128 on 32-wide planes with H a multiple of 8 (AVX-512;
 * its backward and other layers as 0), 9 the channel-lane Winograd
 * F(4x4,3x3) path (conv_wl4.c) for forward, backward-data and weight
 * gradient of every 16->16
 * 3x3 stride-1 pad-1 layer on planes with 4 < H, W <= 8 (AVX-512; others as
 * 0; on 16->16 7x7 it is the automatic choice, 7 forces F(2x2) lanes
 * there).  Other values
 * select 0.  Returns the previous value.  Never
 * changes results beyond float rounding, nor workspace sizes. */
int eenet_conv2d_set_impl(int impl);
/* The current value of the switch. */
int eenet_conv2d_get_impl(void);

/* Naive direct-loop references (double accumulation), same contracts. */
eenet_status eenet_conv2d_forward_naive(float *out, const float *inp, const float *w,
                                        const float *bias, int N, int C, int H, int W, int K,
                                        int kh, int kw, int stride, int pad);
eenet_status eenet_conv2d_backward_naive(float *dinp, float *dw, float *dbias,
                                         const float *dout, const float *inp, const float *w,
                                         int N, int C, int H, int W, int K, int kh, int kw,
                                         int stride, int pad);
/* END conv declarations */

/* ---- other kernels (bn.c, act.c, pool.c, linear.c, loss.c, optim.c) ---- */
/* BEGIN ops declarations */
/* -- batch norm 2d (bn.c), PyTorch semantics: eps, momentum 0.1, running_var
 *    updated with the UNBIASED batch variance, normalisation with the biased one.
 * out, inp (N,C,HW); gamma, beta, running_* (C); save_mean, save_invstd (C)
 * are written for backward.  Train: overwrites out, updates running stats. */
eenet_status eenet_bn2d_forward_train(float *out, float *save_mean, float *save_invstd,
                                      float *running_mean, float *running_var,
                                      const float *inp, const float *gamma, const float *beta,
                                      float momentum, float eps, int N, int C, int HW);
eenet_status eenet_bn2d_forward_eval(float *out, const float *inp, const float *gamma,
                                     const float *beta, const float *running_mean,
                                     const float *running_var, float eps, int N, int C,
                                     int HW);
/* Training-mode backward, ACCUMULATES dinp (N,C,HW; NULL to skip), dgamma, dbeta (C). */
eenet_status eenet_bn2d_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                                 const float *inp, const float *gamma, const float *save_mean,
                                 const float *save_invstd, int N, int C, int HW);
/* Backward of relu(bn(x)): y (N,C,HW) is the ReLU's output, dy (N,C,HW) the
 * gradient of y, overwritten with the gradient of bn(x) (ReLU-masked); then as
 * eenet_bn2d_backward (ACCUMULATES dinp, dgamma, dbeta). */
eenet_status eenet_bn2d_relu_backward(float *dinp, float *dgamma, float *dbeta, float *dy,
                                      const float *relu_out, const float *inp,
                                      const float *gamma, const float *save_mean,
                                      const float *save_invstd, int N, int C, int HW);

/* Fused forms for the engine (same bits as the separate kernels):
 * out = relu(bn(x)), train and eval mode, arguments as the forms above. */
eenet_status eenet_bn2d_relu_forward_train(float *out, float *save_mean, float *save_invstd,
                                           float *running_mean, float *running_var,
                                           const float *inp, const float *gamma,
                                           const float *beta, float momentum, float eps, int N,
                                           int C, int HW);
eenet_status eenet_bn2d_relu_forward_eval(float *out, const float *inp, const float *gamma,
                                          const float *beta, const float *running_mean,
                                          const float *running_var, float eps, int N, int C,
                                          int HW);
/* eenet_bn2d_relu_backward (relu_out given; dy overwritten with the masked
 * gradient) or eenet_bn2d_backward (relu_out NULL; dy read only), except that dinp
 * (N,C,HW) is OVERWRITTEN with 0 + the value those ACCUMULATE (same bits as
 * accumulating into zeros), without being read; dgamma, dbeta accumulate. */
eenet_status eenet_bn2d_backward_set(float *dinp, float *dgamma, float *dbeta, float *dy,
                                     const float *relu_out, const float *inp, const float *gamma,
                                     const float *save_mean, const float *save_invstd, int N,
                                     int C, int HW);

/* -- elementwise (act.c).  out/inp (n).  Backward ACCUMULATES into dinp. */
eenet_status eenet_relu_forward(float *out, const float *inp, size_t n);
eenet_status eenet_relu_backward(float *dinp, const float *dout, const float *out, size_t n);
eenet_status eenet_add_forward(float *out, const float *a, const float *b, size_t n);
eenet_status eenet_add_backward(float *da, float *db, const float *dout, size_t n);
/* out = relu(a + b).  Backward of relu(a + b) (relu_out = its output) or of a + b
 * (relu_out NULL): da, db (n; NULL to skip) ACCUMULATE, or are OVERWRITTEN with
 * 0 + gradient where bit 1 (da) / bit 2 (db) of `set` is on. */
eenet_status eenet_add_relu_forward(float *out, const float *a, const float *b, size_t n);
eenet_status eenet_add_relu_backward(float *da, float *db, const float *dy, const float *relu_out,
                                     size_t n, int set);
eenet_status eenet_sigmoid_forward(float *out, const float *inp, size_t n);
eenet_status eenet_sigmoid_backward(float *dinp, const float *dout, const float *out, size_t n);
/* softmax over the last axis: prob, logits (N,K); backward
 * dlogits += prob * (dprob - sum_k dprob*prob). */
eenet_status eenet_softmax_forward(float *prob, const float *logits, int N, int K);
eenet_status eenet_softmax_backward(float *dlogits, const float *dprob, const float *prob,
                                    int N, int K);

/* -- pooling (pool.c).  Max pool: out (N,C,Ho,Wo), argmax (N,C,Ho,Wo) flat
 * index into the (H,W) plane of the input, inp (N,C,H,W); padding is -inf. */
eenet_status eenet_maxpool2d_forward(float *out, int32_t *argmax, const float *inp, int N,
                                     int C, int H, int W, int k, int stride, int pad);
eenet_status eenet_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                                      int N, int C, int H, int W, int Ho, int Wo);
/* Global average pool: out (N,C); inp (N,C,HW). */
eenet_status eenet_global_avgpool_forward(float *out, const float *inp, int N, int C, int HW);
eenet_status eenet_global_avgpool_backward(float *dinp, const float *dout, int N, int C,
                                           int HW);

/* -- linear (linear.c): out (N,O) = inp (N,I) @ w (O,I)^T + bias (O; NULL: none),
 * I = in_features, O = out_features (not named I: <complex.h> defines I).
 * Backward ACCUMULATES dinp (N,I; NULL to skip), dw (O,I), dbias (O; NULL to skip). */
eenet_status eenet_linear_forward(float *out, const float *inp, const float *w,
                                  const float *bias, int N, int in_features, int out_features);
eenet_status eenet_linear_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                   const float *inp, const float *w, int N, int in_features, int out_features);
/* Naive references (double accumulation) with the same contracts, for the tests. */
eenet_status eenet_linear_forward_naive(float *out, const float *inp, const float *w,
                                        const float *bias, int N, int in_features,
                                        int out_features);
eenet_status eenet_linear_backward_naive(float *dinp, float *dw, float *dbias,
                                         const float *dout, const float *inp, const float *w,
                                         int N, int in_features, int out_features);

/* -- negative log-likelihood on probabilities (loss.c): the authors take
 * log() of softmax outputs and of mixtures of them.  loss = -mean_n log(max(p[n,y_n], EENET_PROB_FLOOR));
 * the floor keeps it finite where p underflows (its gradient is 0 below the floor,
 * as torch.clamp's is).  prob (N,K), labels (N).  Backward ACCUMULATES
 * dprob[n,y_n] += -dloss / (N * p[n,y_n]) where p >= floor. */
#define EENET_PROB_FLOOR 1e-30f
eenet_status eenet_nll_prob_forward(float *loss, const float *prob, const int64_t *labels,
                                    int N, int K);
eenet_status eenet_nll_prob_backward(float *dprob, const float *prob, const int64_t *labels,
                                     float dloss, int N, int K);

/* -- early-exit losses v0..v4 (eeloss.c), DESIGN.md "Losses".  E1 = exits
 * including the final one.  probs (E1,N,K) softmax outputs; conf (E1,N) sigmoid
 * outputs (the final exit's entry is ignored); costs (E1), last = 1; labels (N);
 * tags (N) exit tags for v4 (NULL otherwise).  parts[4] receives
 * {total, classification (NLL terms), cost (lambda * cost terms), confidence (v4 BCE)}.
 * Gradients w.r.t. probs and conf ACCUMULATE into dprobs/dconf (NULL to skip). */
eenet_status eenet_ee_loss(float *parts, float *dprobs, float *dconf, const float *probs,
                           const float *conf, const float *costs, const int64_t *labels,
                           const int32_t *tags, int version, float lambda_coef, int E1, int N,
                           int K);

/* -- optimisers (optim.c), PyTorch's exact update formulas, over one flat buffer.
 * SGD: g = grad + wd*p; buf = first_step ? g : momentum*buf + (1-dampening)*g;
 *      g = nesterov ? g + momentum*buf : buf (if momentum != 0); p -= lr*g.
 * Adam (L2-style weight decay): g = grad + wd*p; m = b1 m + (1-b1) g;
 *      v = b2 v + (1-b2) g^2; p -= lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps); t = step >= 1. */
/* Hyper-parameters are double (as the Python floats torch.optim receives): torch forms
 * 1 - beta, 1 - dampening and the bias corrections in double before rounding to float,
 * and 1 - (float)0.999 differs from (float)(1 - 0.999) by 1.3e-5 relative. */
eenet_status eenet_sgd_step(float *params, float *momentum_buf, const float *grads, size_t n,
                            double lr, double momentum, double dampening, double weight_decay,
                            int nesterov, int first_step);
eenet_status eenet_adam_step(float *params, float *exp_avg, float *exp_avg_sq,
                             const float *grads, size_t n, double lr, double beta1, double beta2,
                             double eps, double weight_decay, int step);
/* END ops declarations */

#endif /* EENET_KERNELS_H */
