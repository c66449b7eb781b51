"""Functional API on NumPy arrays: every kernel of eenet's C core, forward and backward.

All arrays are float32 and C-contiguous, layout NCHW; labels are int64, exit tags int32.
Nothing is converted silently: a float64 or non-contiguous array raises ``TypeError`` or
``ValueError`` naming the argument (use ``np.ascontiguousarray(x, dtype=np.float32)``).
Backward functions return fresh gradient arrays (the C kernels accumulate; here they
accumulate into zeros).

Example::

    y, save_mean, save_invstd = ops.batch_norm2d(x, gamma, beta, rm, rv)
    dx, dgamma, dbeta = ops.batch_norm2d_backward(dy, x, gamma, save_mean, save_invstd)
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _core

__all__ = [
    "conv2d", "conv2d_backward", "batch_norm2d", "batch_norm2d_backward", "relu",
    "relu_backward", "add", "add_backward", "sigmoid", "sigmoid_backward", "softmax",
    "softmax_backward", "max_pool2d", "max_pool2d_backward", "global_avg_pool",
    "global_avg_pool_backward", "linear", "linear_backward", "nll_prob", "nll_prob_backward",
    "ee_loss", "sgd_step", "adam_step", "PROB_FLOOR",
]

#: Probabilities are floored at this value before the log in the NLL losses (C: EENET_PROB_FLOOR).
PROB_FLOOR = 1e-30


# ---- convolution (kernels from the conv section of _core) ---------------------------------

def conv2d(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None, stride: int = 1,
           padding: int = 0) -> np.ndarray:
    """2-d convolution (cross-correlation, as torch.nn.functional.conv2d).

    x (N, C, H, W), w (K, C, kh, kw), b (K,) or None -> y (N, K, Ho, Wo) with
    Ho = (H + 2 padding - kh) // stride + 1 and
    y[n,k,i,j] = b[k] + sum_{c,u,v} x[n, c, i*stride - padding + u, j*stride - padding + v] w[k,c,u,v]
    (zero padding).
    """
    return _core.conv2d_forward(x, w, b, int(stride), int(padding))


def conv2d_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, stride: int = 1,
                    padding: int = 0, with_bias: bool = True
                    ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Gradients of :func:`conv2d`: dy (N, K, Ho, Wo) -> (dx (N,C,H,W), dw (K,C,kh,kw),
    db (K,) or None when ``with_bias`` is false); db = sum of dy over n, i, j."""
    return _core.conv2d_backward(dy, x, w, int(stride), int(padding), bool(with_bias))


# ---- batch norm ----------------------------------------------------------------------------

def batch_norm2d(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                 running_var: np.ndarray, training: bool = True, momentum: float = 0.1,
                 eps: float = 1e-5, relu: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray],
                                                                 Optional[np.ndarray]]:
    """Batch normalisation over (N, H, W) per channel, as torch.nn.functional.batch_norm.

    x (N, C, H, W); gamma, beta, running_mean, running_var (C,).
    Training: mean, var = batch mean and biased variance of each channel;
    y = gamma (x - mean) / sqrt(var + eps) + beta; running_mean and running_var are updated
    IN PLACE: r = (1 - momentum) r + momentum s, with the unbiased variance for running_var.
    Returns (y, save_mean (C,), save_invstd = 1/sqrt(var + eps) (C,)).
    Eval (training=False): the running statistics normalise; returns (y, None, None).
    relu=True: y = relu(batch_norm(x)) in one pass (the engine's fused kernel; the same
    values as :func:`relu` of the unfused output).
    """
    if training:
        return _core.bn2d_forward_train(x, gamma, beta, running_mean, running_var,
                                        float(momentum), float(eps), bool(relu))
    y = _core.bn2d_forward_eval(x, gamma, beta, running_mean, running_var, float(eps),
                                bool(relu))
    return y, None, None


def batch_norm2d_backward(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                          save_mean: np.ndarray, save_invstd: np.ndarray,
                          relu_out: Optional[np.ndarray] = None, overwrite: bool = False
                          ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode gradients of :func:`batch_norm2d`.

    dy, x (N, C, H, W); gamma, save_mean, save_invstd (C,). With xhat = (x - mean) invstd and
    M = N H W: dbeta = sum dy, dgamma = sum dy xhat,
    dx = gamma invstd / M (M dy - sum dy - xhat sum(dy xhat)). Returns (dx, dgamma, dbeta).
    relu_out (N, C, H, W): gradients of relu(batch_norm(x)) whose output relu_out is, dy being
    the gradient of that output (the engine's fused kernel; dy itself is not modified).
    overwrite: run the engine's kernel that writes dx instead of accumulating (same result).
    """
    return _core.bn2d_backward(dy, x, gamma, save_mean, save_invstd, relu_out, bool(overwrite))


# ---- elementwise -----------------------------------------------------------------------------

def relu(x: np.ndarray) -> np.ndarray:
    """y = max(x, 0), any shape."""
    return _core.relu_forward(x)


def relu_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = dy where y > 0 else 0 (y is relu's output; same shape as dy)."""
    return _core.relu_backward(dy, y)


def add(a: np.ndarray, b: np.ndarray, relu: bool = False) -> np.ndarray:
    """Residual add y = a + b (same shapes, no broadcasting); relu=True: y = relu(a + b) in
    one pass (the engine's fused kernel)."""
    return _core.add_forward(a, b, bool(relu))


def add_backward(dy: np.ndarray, relu_out: Optional[np.ndarray] = None,
                 overwrite: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`add`: (da, db) = (dy, dy), as new arrays.

    relu_out (same shape as dy): gradients of relu(a + b) whose output relu_out is,
    da = db = dy where relu_out > 0 else 0 (the engine's fused kernel).  overwrite: bit 1 / 2
    run the kernel that writes da / db instead of accumulating (same result)."""
    return _core.add_backward(dy, relu_out, int(overwrite))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """y = 1 / (1 + exp(-x)), any shape, without overflow for large |x|."""
    return _core.sigmoid_forward(x)


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = dy y (1 - y), y the sigmoid's output."""
    return _core.sigmoid_backward(dy, y)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of logits (N, K): p = exp(z - max z) / sum exp(z - max z)."""
    return _core.softmax_forward(logits)


def softmax_backward(dprob: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """dlogits = prob (dprob - sum_k dprob prob), all (N, K)."""
    return _core.softmax_backward(dprob, prob)


# ---- pooling ---------------------------------------------------------------------------------

def max_pool2d(x: np.ndarray, kernel: int = 3, stride: int = 2, padding: int = 1
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Max pool (torch.nn.functional.max_pool2d, ceil_mode False, padding is -inf).

    x (N, C, H, W) -> (y (N, C, Ho, Wo), argmax (N, C, Ho, Wo) int32) with
    Ho = (H + 2 padding - kernel) // stride + 1; argmax is the flat index h*W + w of the
    chosen element in its (H, W) plane (first in row-major order on ties).
    Requires padding <= kernel // 2.
    """
    return _core.maxpool2d_forward(x, int(kernel), int(stride), int(padding))


def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, input_hw: Tuple[int, int]
                        ) -> np.ndarray:
    """Gradient of :func:`max_pool2d`: dx[n, c, argmax] += dy; dy, argmax (N, C, Ho, Wo),
    input_hw = (H, W) of the forward input; returns dx (N, C, H, W)."""
    H, W = input_hw
    return _core.maxpool2d_backward(dy, argmax, int(H), int(W))


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    """y[n, c] = mean over (H, W) of x[n, c]; x (N, C, H, W) -> y (N, C)."""
    return _core.global_avgpool_forward(x)


def global_avg_pool_backward(dy: np.ndarray, input_hw: Tuple[int, int]) -> np.ndarray:
    """dx[n, c, h, w] = dy[n, c] / (H W); dy (N, C), input_hw = (H, W) -> dx (N, C, H, W)."""
    H, W = input_hw
    return _core.global_avgpool_backward(dy, int(H), int(W))


# ---- linear ----------------------------------------------------------------------------------

def linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None) -> np.ndarray:
    """y = x w^T + b (torch.nn.functional.linear); x (N, Fi), w (Fo, Fi), b (Fo,) or None
    -> y (N, Fo)."""
    return _core.linear_forward(x, w, b)


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, with_bias: bool = True
                    ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Gradients of :func:`linear`: dy (N, Fo) -> (dx = dy w (N, Fi), dw = dy^T x (Fo, Fi),
    db = sum_n dy (Fo,) or None when ``with_bias`` is false)."""
    return _core.linear_backward(dy, x, w, bool(with_bias))


# ---- losses ----------------------------------------------------------------------------------

def nll_prob(prob: np.ndarray, labels: np.ndarray) -> float:
    """Negative log-likelihood on probabilities (the authors' F.nll_loss(p.log(), y)):
    loss = -mean_n log(max(prob[n, y_n], PROB_FLOOR)); prob (N, K), labels (N,) int64.
    The floor keeps the loss finite when a probability underflows to 0."""
    return _core.nll_prob_forward(prob, labels)


def nll_prob_backward(prob: np.ndarray, labels: np.ndarray, dloss: float = 1.0) -> np.ndarray:
    """Gradient of :func:`nll_prob`: dprob[n, y_n] = -dloss / (N prob[n, y_n]) where
    prob[n, y_n] >= PROB_FLOOR (0 below the floor, like torch.clamp); other entries 0."""
    return _core.nll_prob_backward(prob, labels, float(dloss))


def ee_loss(probs: np.ndarray, conf: np.ndarray, costs: np.ndarray, labels: np.ndarray,
            version: int = 2, lambda_coef: float = 1.0, tags: Optional[np.ndarray] = None
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Early-exit losses v0..v4 of EENets (DESIGN.md "Losses") and their gradients.

    probs (E1, N, K) softmax outputs p_i of the E1 exits (final last); conf (E1, N) sigmoid
    confidences h_i (the final row is ignored; the final exit counts as h = 1); costs (E1,)
    float32 c_i with c_final = 1; labels (N,) int64; tags (N,) int32 exit tags for v4.
    With NLL(q) = -mean_n log max(q[n, y_n], PROB_FLOOR), P_F = p_F, C_F = c_F,
    P_i = h_i p_i + (1 - h_i) P_{i+1}, C_i = h_i c_i + (1 - h_i) C_{i+1}:

    * v0: sum_i NLL(p_i)
    * v1: NLL(P_0) + lambda mean C_0
    * v2: sum_i [NLL(P_i) + lambda mean C_i]
    * v3: w_i = mean h_i / sum_j mean h_j (h_F = 1, w not detached);
      sum_i w_i (NLL(p_i) + lambda c_i)
    * v4: NLL(p_tag) + lambda mean c_tag + sum_{i < F} mean(w BCE(h_i, e_i)),
      e_i = [tag = i], r_i = mean e_i, w = e_i (1 - r_i) + (1 - e_i) r_i, BCE as
      torch.nn.functional.binary_cross_entropy (log clamped at -100).

    Returns (parts (4,) = [total, classification, cost (lambda times), confidence],
    dprobs (E1, N, K), dconf (E1, N)), the gradients of the total.
    """
    return _core.ee_loss(probs, conf, costs, labels, int(version), float(lambda_coef), tags)


# ---- optimisers ------------------------------------------------------------------------------

def sgd_step(params: np.ndarray, momentum_buf: Optional[np.ndarray], grads: np.ndarray,
             lr: float, momentum: float = 0.0, dampening: float = 0.0,
             weight_decay: float = 0.0, nesterov: bool = False, first_step: bool = False
             ) -> None:
    """One torch.optim.SGD step, IN PLACE on params and momentum_buf (same size as grads):
    g = grad + wd p; buf = g on the first step else momentum buf + (1 - dampening) g;
    g = g + momentum buf (Nesterov) or buf; p -= lr g.  momentum_buf may be None when
    momentum is 0."""
    _core.sgd_step(params, momentum_buf, grads, float(lr), float(momentum), float(dampening),
                   float(weight_decay), bool(nesterov), bool(first_step))


def adam_step(params: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              grads: np.ndarray, lr: float, beta1: float = 0.9, beta2: float = 0.999,
              eps: float = 1e-8, weight_decay: float = 0.0, step: int = 1) -> None:
    """One torch.optim.Adam step (L2 weight decay, no amsgrad), IN PLACE on params, exp_avg
    and exp_avg_sq; ``step`` is the 1-based step count t:
    g = grad + wd p; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
    p -= lr / (1 - beta1^t) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)."""
    _core.adam_step(params, exp_avg, exp_avg_sq, grads, float(lr), float(beta1), float(beta2),
                    float(eps), float(weight_decay), int(step))
