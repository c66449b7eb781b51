"""Kernels of eenet.ops (everything but conv2d) against float64 NumPy references,
finite differences and (when installed) PyTorch."""
import gc
import os
import pathlib
import sys

import numpy as np
import pytest

import eenet
from eenet import ops
from conftest import f32, numgrad, requires_torch
from conftest import grad_close as _grad_close

RTOL, ATOL = 1e-4, 1e-5


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=rtol, atol=atol)


def grad_close(actual, expected, rtol=1e-3):
    _grad_close(actual, expected, rtol)


# ---- float64 NumPy references ----------------------------------------------------------

def bn_ref(x, g, b, eps=1e-5):
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    return xhat * g[None, :, None, None] + b[None, :, None, None], mean, var


def maxpool_ref(x, k, s, p):
    N, C, H, W = x.shape
    xp = np.full((N, C, H + 2 * p, W + 2 * p), -np.inf)
    xp[:, :, p:p + H, p:p + W] = x
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    y = np.empty((N, C, Ho, Wo))
    am = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for i in range(Ho):
        for j in range(Wo):
            win = xp[:, :, i * s:i * s + k, j * s:j * s + k].reshape(N, C, -1)
            idx = win.argmax(-1)
            y[:, :, i, j] = win.max(-1)
            hh, ww = idx // k + i * s - p, idx % k + j * s - p
            am[:, :, i, j] = hh * W + ww
    return y, am


def softmax_ref(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def nll_ref(p, y):
    return -np.mean(np.log(np.maximum(p[np.arange(len(y)), y], ops.PROB_FLOOR)))


# ---- batch norm --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 2, 3, 1), (3, 1, 4, 7), (2, 5, 1, 1)])
def test_bn_train_forward_backward(rng, shape):
    N, C, H, W = shape
    x = f32(rng.normal(1.0, 2.0, shape))
    g, b = f32(rng.normal(1, 0.5, C)), f32(rng.normal(0, 0.5, C))
    rm, rv = f32(rng.normal(0, 1, C)), f32(rng.uniform(0.5, 2, C))
    rm0, rv0, x0 = rm.copy(), rv.copy(), x.copy()
    y, smean, sinv = ops.batch_norm2d(x, g, b, rm, rv, training=True, momentum=0.1)
    yr, mean, var = bn_ref(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64))
    close(y, yr)
    close(smean, mean)
    close(sinv, 1 / np.sqrt(var + 1e-5), rtol=1e-4)
    M = N * H * W
    close(rm, 0.9 * rm0 + 0.1 * mean)
    close(rv, 0.9 * rv0 + 0.1 * var * M / (M - 1))
    np.testing.assert_array_equal(x, x0)

    dy = f32(rng.normal(size=shape))
    dx, dg, db = ops.batch_norm2d_backward(dy, x, g, smean, sinv)
    d64 = dy.astype(np.float64)
    grad_close(dx, numgrad(lambda v: np.sum(bn_ref(v, g.astype(np.float64), b)[0] * d64),
                           x), rtol=2e-3)
    grad_close(dg, numgrad(lambda v: np.sum(bn_ref(x.astype(np.float64), v, b)[0] * d64), g))
    grad_close(db, numgrad(lambda v: np.sum(bn_ref(x.astype(np.float64), g, v)[0] * d64), b))


def test_bn_large_mean_precise(rng):
    # |mean| / std = 1e4: statistics and output must not cancel catastrophically
    x = f32(1e4 + rng.normal(size=(16, 2, 8, 8)))
    g, b = np.ones(2, np.float32), np.zeros(2, np.float32)
    y, sm, si = ops.batch_norm2d(x, g, b, np.zeros(2, np.float32), np.ones(2, np.float32))
    yr, mean, var = bn_ref(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64))
    close(y, yr, rtol=1e-3, atol=1e-3)
    close(1 / si.astype(np.float64) ** 2, var + 1e-5, rtol=1e-4)


def test_bn_eval(rng):
    x = f32(rng.normal(size=(3, 4, 5, 6)))
    g, b = f32(rng.normal(size=4)), f32(rng.normal(size=4))
    rm, rv = f32(rng.normal(size=4)), f32(rng.uniform(0.5, 2, 4))
    rm0, rv0 = rm.copy(), rv.copy()
    y, m, s = ops.batch_norm2d(x, g, b, rm, rv, training=False)
    assert m is None and s is None
    ref = ((x - rm[:, None, None]) / np.sqrt(rv[:, None, None].astype(np.float64) + 1e-5)
           * g[:, None, None] + b[:, None, None])
    close(y, ref)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


@requires_torch
def test_bn_torch(rng):
    import torch
    import torch.nn.functional as F
    x = f32(rng.normal(0.5, 3, (8, 6, 7, 7)))
    g, b = f32(rng.normal(1, .3, 6)), f32(rng.normal(0, .3, 6))
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    trm, trv = torch.zeros(6), torch.ones(6)
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(g, requires_grad=True), torch.tensor(b, requires_grad=True)
    for _ in range(3):  # running stats over several steps
        yt = F.batch_norm(xt, trm, trv, gt, bt, training=True, momentum=0.1, eps=1e-5)
        y, sm, si = ops.batch_norm2d(x, g, b, rm, rv)
    close(y, yt.detach().numpy())
    close(rm, trm.numpy())
    close(rv, trv.numpy())
    dy = f32(rng.normal(size=x.shape))
    yt.backward(torch.tensor(dy))
    dx, dg, db = ops.batch_norm2d_backward(dy, x, g, sm, si)
    close(dx, xt.grad.numpy())
    close(dg, gt.grad.numpy(), rtol=1e-4, atol=1e-4)
    close(db, bt.grad.numpy(), rtol=1e-4, atol=1e-4)
    ye = ops.batch_norm2d(x, g, b, rm, rv, training=False)[0]
    yte = F.batch_norm(torch.tensor(x), trm, trv, torch.tensor(g), torch.tensor(b),
                       training=False, eps=1e-5)
    close(ye, yte.numpy())


def test_bn_bad_input(rng):
    x = f32(rng.normal(size=(2, 3, 4, 4)))
    c = lambda: np.ones(3, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="gamma"):
        ops.batch_norm2d(x, np.ones(4, np.float32), c(), c(), c())
    with pytest.raises(TypeError, match="x"):
        ops.batch_norm2d(x.astype(np.float64), c(), c(), c(), c())
    with pytest.raises(ValueError, match="x"):
        ops.batch_norm2d(x[:, :, :, 0], c(), c(), c(), c())
    with pytest.raises(ValueError, match="x"):
        ops.batch_norm2d(np.zeros((0, 3, 4, 4), np.float32), c(), c(), c(), c())
    with pytest.raises(ValueError, match="more than 1 value"):
        ops.batch_norm2d(x[:1, :, :1, :1].copy(), c(), c(), c(), c())
    rm = c()
    xn = x.copy()
    xn[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN"):
        ops.batch_norm2d(xn, c(), c(), rm, c())
    np.testing.assert_array_equal(rm, 1.0)  # running stats untouched
    ro = c()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_var"):
        ops.batch_norm2d(x, c(), c(), c(), ro)


def gap_lane_order_ref(x):
    """Global average pool with the kernels' summation order, exactly: per (n, c) plane,
    16 float32 lanes over the whole 16-blocks, then in float64 the tail elements followed
    by lanes 0..15, divided by HW and rounded to float32."""
    N, C = x.shape[:2]
    planes = x.reshape(N * C, -1)
    HW = planes.shape[1]
    full = HW - HW % 16
    lanes = np.zeros((N * C, 16), np.float32)
    for i in range(0, full, 16):
        lanes = lanes + planes[:, i:i + 16]          # float32 additions
    s = np.zeros(N * C)
    for i in range(full, HW):
        s = s + planes[:, i].astype(np.float64)
    for lane in range(16):
        s = s + lanes[:, lane].astype(np.float64)
    return (s / HW).astype(np.float32).reshape(N, C)


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 4, 16, 16), (1, 1, 1, 1), (2, 3, 1, 17),
                                   (4, 2, 28, 28)])
def test_global_avg_pool_summation_order(rng, shape):
    """The vectorised (AVX-512) and portable sums add in the same order: same bits."""
    x = f32(rng.normal(3, 2, shape))
    np.testing.assert_array_equal(ops.global_avg_pool(x).view(np.uint32),
                                  gap_lane_order_ref(x).view(np.uint32))


# ---- the engine's fused kernels: relu(bn(x)), relu(a + b) ----------------------------------

def bits(a):
    """The float32 bit patterns (tells -0 from 0 and compares NaN)."""
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (4, 2, 4, 4), (3, 5, 7, 9), (2, 4, 16, 16)])
def test_fused_bn_relu_forward_backward(rng, shape):
    C = shape[1]
    x = f32(rng.normal(0.5, 2, shape))
    g, b = f32(rng.normal(1, 0.3, C)), f32(rng.normal(0, 0.5, C))
    rm0, rv0 = f32(rng.normal(size=C)), f32(rng.uniform(0.5, 2, C))
    # training forward: the fused kernel gives relu() of the unfused output, bit for bit,
    # with the same saved and running statistics
    rm1, rv1, rm2, rv2 = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
    y, sm, si = ops.batch_norm2d(x, g, b, rm1, rv1)
    yf, smf, sif = ops.batch_norm2d(x, g, b, rm2, rv2, relu=True)
    np.testing.assert_array_equal(bits(yf), bits(ops.relu(y)))
    for u, v in [(sm, smf), (si, sif), (rm1, rm2), (rv1, rv2)]:
        np.testing.assert_array_equal(bits(u), bits(v))
    yr, mean, var = bn_ref(x.astype(np.float64), g, b)
    close(yf, np.maximum(yr, 0), rtol=1e-5, atol=1e-5)
    # eval forward, with values whose ReLU is special: -0, NaN, exactly 0
    xe = x.copy()
    xe.flat[0], xe.flat[1] = np.nan, rm0[0]
    ye = ops.batch_norm2d(xe, g, b, rm0, rv0, training=False)[0]
    yef = ops.batch_norm2d(xe, g, b, rm0, rv0, training=False, relu=True)[0]
    np.testing.assert_array_equal(bits(yef), bits(ops.relu(ye)))
    # backward of relu(bn(x)): the fused kernel (accumulating, and overwriting dx) equals
    # relu_backward followed by batch norm's backward, bit for bit
    dy = f32(rng.normal(size=shape))
    dy_copy = dy.copy()
    ref = ops.batch_norm2d_backward(ops.relu_backward(dy, yf), x, g, smf, sif)
    for overwrite in (False, True):
        got = ops.batch_norm2d_backward(dy, x, g, smf, sif, relu_out=yf, overwrite=overwrite)
        for u, v in zip(got, ref):
            np.testing.assert_array_equal(bits(u), bits(v))
    np.testing.assert_array_equal(dy, dy_copy)  # the binding masks a copy
    # ... and the float64 reference: dL/dx of sum(dy * relu(bn(x)))
    x64, g64, b64 = x.astype(np.float64), g.astype(np.float64), b.astype(np.float64)
    yr64 = bn_ref(x64, g64, b64)[0]
    d = np.where(yr64 > 0, dy, 0.0)
    M = shape[0] * shape[2] * shape[3]
    xhat = (x64 - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    dbeta = d.sum(axis=(0, 2, 3))
    dgamma = (d * xhat).sum(axis=(0, 2, 3))
    dx = (g64 / np.sqrt(var + 1e-5))[None, :, None, None] / M * (
        M * d - dbeta[None, :, None, None] - xhat * dgamma[None, :, None, None])
    got = ops.batch_norm2d_backward(dy, x, g, smf, sif, relu_out=yf, overwrite=True)
    close(got[0], dx, rtol=1e-3, atol=1e-4)
    close(got[1], dgamma, rtol=1e-4, atol=1e-4)
    close(got[2], dbeta, rtol=1e-4, atol=1e-4)
    # the plain backward through the overwriting kernel
    got = ops.batch_norm2d_backward(dy, x, g, smf, sif, overwrite=True)
    for u, v in zip(got, ops.batch_norm2d_backward(dy, x, g, smf, sif)):
        np.testing.assert_array_equal(bits(u), bits(v))


@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
def test_fused_add_relu_forward_backward(rng, n):
    a, b = f32(rng.normal(size=n)), f32(rng.normal(size=n))
    a[0], b[0] = 1.0, -1.0          # a + b = 0 exactly: the ReLU's kink
    if n > 2:
        a[1], b[1] = -0.0, -0.0     # -0: passes through the ReLU as -0
    y = ops.add(a, b, relu=True)
    np.testing.assert_array_equal(bits(y), bits(ops.relu(ops.add(a, b))))
    np.testing.assert_array_equal(y, np.maximum(a + b, np.float32(0)))  # float32 sums
    dy = f32(rng.normal(size=n))
    mask = ops.relu_backward(dy, y)
    np.testing.assert_array_equal(mask, np.where(y > 0, dy, 0))
    ref = ops.add_backward(mask)
    for overwrite in range(4):
        got = ops.add_backward(dy, relu_out=y, overwrite=overwrite)
        for u, v in zip(got, ref):
            np.testing.assert_array_equal(bits(u), bits(v))
        plain = ops.add_backward(dy, overwrite=overwrite)
        for u in plain:
            np.testing.assert_array_equal(bits(u), bits(dy))


def test_fused_bad_input(rng):
    x = f32(rng.normal(size=(2, 3, 4, 4)))
    c = np.ones(3, np.float32)
    y, m, s = ops.batch_norm2d(x, c, c * 0, c * 0, c.copy(), relu=True)
    with pytest.raises(ValueError, match="relu_out: expected shape"):
        ops.batch_norm2d_backward(x, x, c, m, s, relu_out=y[:, :2].copy())
    with pytest.raises(TypeError, match="relu_out: expected dtype float32"):
        ops.batch_norm2d_backward(x, x, c, m, s, relu_out=y.astype(np.float64))
    with pytest.raises(ValueError, match="relu_out: expected shape"):
        ops.add_backward(x, relu_out=x[:1].copy())
    with pytest.raises(ValueError, match="set: expected 0..3"):
        ops.add_backward(x, overwrite=4)


# ---- elementwise and softmax -------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 7, 100003])
def test_relu_sigmoid_add(rng, n):
    x = f32(rng.normal(0, 3, n))
    x[0] = 0.0
    dy = f32(rng.normal(size=n))
    y = ops.relu(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(ops.relu_backward(dy, y), np.where(x > 0, dy, 0))
    s = ops.sigmoid(x)
    x64 = x.astype(np.float64)
    close(s, 1 / (1 + np.exp(-x64)), rtol=1e-6, atol=1e-7)
    close(ops.sigmoid_backward(dy, s), dy * s * (1 - s.astype(np.float64)), rtol=1e-6,
          atol=1e-7)
    b = f32(rng.normal(size=n))
    np.testing.assert_array_equal(ops.add(x, b), x + b)
    da, db = ops.add_backward(dy)
    np.testing.assert_array_equal(da, dy)
    np.testing.assert_array_equal(db, dy)


def test_sigmoid_extremes_and_fd(rng):
    x = f32([-200, -90, -20, 0, 20, 90, 200])
    s = ops.sigmoid(x)
    assert np.all(np.isfinite(s)) and s[0] == 0.0 and s[-1] == 1.0
    x = rng.normal(size=(3, 4))
    dy = rng.normal(size=(3, 4))
    s = ops.sigmoid(f32(x))
    grad_close(ops.sigmoid_backward(f32(dy), s),
               numgrad(lambda v: np.sum(dy / (1 + np.exp(-v))), x))


def test_relu_fd(rng):
    x = rng.normal(size=(2, 3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    dy = rng.normal(size=x.shape)
    y = ops.relu(f32(x))
    grad_close(ops.relu_backward(f32(dy), y), numgrad(lambda v: np.sum(dy * np.maximum(v, 0)), x))


@pytest.mark.parametrize("shape", [(1, 1), (5, 10), (3, 200), (300, 7)])
def test_softmax(rng, shape):
    z = rng.normal(0, 5, shape)
    z[0, 0] = 80.0  # would overflow exp without the max shift
    p = ops.softmax(f32(z))
    pr = softmax_ref(f32(z).astype(np.float64))
    close(p, pr, rtol=1e-5, atol=1e-7)
    dp = rng.normal(size=shape)
    dz = ops.softmax_backward(f32(dp), p)
    if z.size <= 200:
        grad_close(dz, numgrad(lambda v: np.sum(dp * softmax_ref(v)), z.astype(np.float64)),
                   rtol=1e-3)
    close(dz, pr * (dp - np.sum(dp * pr, -1, keepdims=True)), rtol=1e-4, atol=1e-6)


@requires_torch
def test_softmax_sigmoid_torch(rng):
    import torch
    z = f32(rng.normal(0, 4, (16, 10)))
    zt = torch.tensor(z, requires_grad=True)
    pt = torch.softmax(zt, dim=1)
    dp = f32(rng.normal(size=z.shape))
    pt.backward(torch.tensor(dp))
    p = ops.softmax(z)
    close(p, pt.detach().numpy(), rtol=1e-5, atol=1e-7)
    close(ops.softmax_backward(dp, p), zt.grad.numpy(), rtol=1e-4, atol=1e-6)
    st = torch.sigmoid(torch.tensor(z))
    close(ops.sigmoid(z), st.numpy(), rtol=1e-6, atol=1e-7)


def test_elementwise_bad_input(rng):
    x = f32(rng.normal(size=(4, 6)))
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        ops.relu(x[:, ::2])
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        ops.sigmoid(x.astype(np.float64))
    with pytest.raises(TypeError, match="x"):
        ops.relu([1.0, 2.0])
    with pytest.raises(ValueError, match="x: expected a non-empty"):
        ops.relu(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="y: expected shape"):
        ops.relu_backward(x, x[:3].copy())
    with pytest.raises(ValueError, match="b: expected shape"):
        ops.add(x, x.T.copy())
    with pytest.raises(ValueError, match="logits: expected a 2-d"):
        ops.softmax(x.reshape(-1))
    with pytest.raises(ValueError, match="dprob"):
        ops.softmax_backward(x[:, :5].copy(), ops.softmax(x))
    dy = f32(rng.normal(size=(2, 3, 4, 4)))
    with pytest.raises(ValueError, match="dy: expected shape"):
        ops.batch_norm2d_backward(dy, dy[:, :2].copy(), np.ones(3, np.float32),
                                  np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="save_invstd"):
        ops.batch_norm2d_backward(dy, dy, np.ones(3, np.float32), np.zeros(3, np.float32),
                                  np.ones(2, np.float32))


# ---- pooling -----------------------------------------------------------------------------

POOL_CASES = [((2, 3, 9, 9), 3, 2, 1), ((1, 1, 8, 8), 3, 2, 1), ((2, 2, 7, 10), 3, 2, 1),
              ((1, 2, 5, 5), 2, 2, 0), ((1, 3, 6, 5), 3, 1, 1), ((2, 1, 4, 4), 1, 1, 0),
              ((1, 2, 11, 6), 5, 3, 2)]


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_maxpool(rng, shape, k, s, p):
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64) * 0.01  # no ties
    x -= 3.0  # negative values: padding must not win
    y, am = ops.max_pool2d(f32(x), k, s, p)
    yr, amr = maxpool_ref(x, k, s, p)
    close(y, yr, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(am, amr)
    assert am.dtype == np.int32
    dy = rng.normal(size=yr.shape)
    dx = ops.max_pool2d_backward(f32(dy), am, shape[2:])
    grad_close(dx, numgrad(lambda v: np.sum(dy * maxpool_ref(v, k, s, p)[0]), x, h=1e-4))


def test_maxpool_ties_first_wins():
    x = np.zeros((1, 1, 4, 4), np.float32)
    y, am = ops.max_pool2d(x, 3, 2, 1)
    # every window is all zeros: the first in-bounds element in row-major order wins
    np.testing.assert_array_equal(am[0, 0], [[0, 1], [4, 5]])
    dx = ops.max_pool2d_backward(np.ones_like(y), am, (4, 4))
    assert dx.sum() == 4.0 and dx[0, 0, 0, 0] == 1.0


def test_maxpool_nan_propagates():
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 2, 2] = np.nan
    y, am = ops.max_pool2d(x, 3, 2, 1)
    # torch's rule: an element wins if greater or NaN, so the window's last NaN wins
    assert np.isnan(y[0, 0, 0, 0]) and am[0, 0, 0, 0] == 6
    assert np.isnan(y[0, 0, 1, 1]) and am[0, 0, 1, 1] == 12
    assert y[0, 0, 2, 2] == 24


@requires_torch
def test_maxpool_neg_inf_torch():
    import torch
    import torch.nn.functional as F
    x = np.full((1, 2, 5, 6), -np.inf, np.float32)
    x[0, 1, 4, 5] = 1.0
    yt, it = F.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    y, am = ops.max_pool2d(x)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(am, it.numpy())


@requires_torch
def test_maxpool_nan_torch():
    import torch
    import torch.nn.functional as F
    x = np.arange(49, dtype=np.float32).reshape(1, 1, 7, 7)[:, :, ::-1].copy()
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 3, 3] = np.nan
    yt, it = F.max_pool2d(torch.tensor(x), 3, 2, 1, return_indices=True)
    y, am = ops.max_pool2d(x)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(am, it.numpy())


@requires_torch
@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_maxpool_torch(rng, shape, k, s, p):
    import torch
    import torch.nn.functional as F
    x = f32(rng.normal(size=shape))
    xt = torch.tensor(x, requires_grad=True)
    yt, it = F.max_pool2d(xt, k, s, p, return_indices=True)
    dy = f32(rng.normal(size=yt.shape))
    yt.backward(torch.tensor(dy))
    y, am = ops.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(am, it.numpy())
    close(ops.max_pool2d_backward(dy, am, shape[2:]), xt.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 64, 8, 8)])
def test_global_avgpool(rng, shape):
    x = rng.normal(size=shape)
    y = ops.global_avg_pool(f32(x))
    close(y, f32(x).astype(np.float64).mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    dy = rng.normal(size=shape[:2])
    dx = ops.global_avg_pool_backward(f32(dy), shape[2:])
    grad_close(dx, numgrad(lambda v: np.sum(dy * v.mean(axis=(2, 3))), x))


def test_pool_bad_input(rng):
    x = f32(rng.normal(size=(1, 2, 5, 5)))
    with pytest.raises(ValueError, match="padding"):
        ops.max_pool2d(x, 3, 2, -1)
    with pytest.raises(ValueError, match="padding"):
        ops.max_pool2d(x, 3, 2, 2)
    with pytest.raises(ValueError, match="stride"):
        ops.max_pool2d(x, 3, 0, 1)
    with pytest.raises(ValueError, match="x"):
        ops.max_pool2d(np.zeros((0, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="x"):
        ops.max_pool2d(x.astype(np.float16))
    y, am = ops.max_pool2d(x)
    with pytest.raises(TypeError, match="argmax"):
        ops.max_pool2d_backward(y, am.astype(np.int64), (5, 5))
    with pytest.raises(ValueError, match="argmax"):
        ops.max_pool2d_backward(y, am, (2, 2))  # indices out of the given plane
    with pytest.raises(ValueError, match="dy"):
        ops.global_avg_pool_backward(x, (5, 5))


# ---- linear ------------------------------------------------------------------------------

LINEAR_CASES = [(1, 1, 1), (32, 4, 1), (128, 8, 10), (7, 33, 5), (64, 256, 100), (200, 64, 64)]


@pytest.mark.parametrize("N,Fi,Fo", LINEAR_CASES)
def test_linear(rng, N, Fi, Fo):
    x, w, b = rng.normal(size=(N, Fi)), rng.normal(size=(Fo, Fi)), rng.normal(size=Fo)
    xf, wf, bf = f32(x), f32(w), f32(b)
    ref = xf.astype(np.float64) @ wf.astype(np.float64).T + bf
    close(ops.linear(xf, wf, bf), ref, rtol=1e-4, atol=1e-4)
    close(ops.linear(xf, wf), ref - bf, rtol=1e-4, atol=1e-4)
    close(eenet._core.linear_forward_naive(xf, wf, bf), ref, rtol=1e-6, atol=1e-6)
    dy = f32(rng.normal(size=(N, Fo)))
    dx, dw, db = ops.linear_backward(dy, xf, wf)
    d64 = dy.astype(np.float64)
    close(dx, d64 @ wf, rtol=1e-4, atol=1e-4)
    close(dw, d64.T @ xf, rtol=1e-4, atol=1e-4)
    close(db, d64.sum(0), rtol=1e-4, atol=1e-4)
    ndx, ndw, ndb = eenet._core.linear_backward_naive(dy, xf, wf)
    close(dx, ndx, rtol=1e-4, atol=1e-4)
    close(dw, ndw, rtol=1e-4, atol=1e-4)
    assert ops.linear_backward(dy, xf, wf, with_bias=False)[2] is None


def test_linear_fd(rng):
    x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=5)
    dy = rng.normal(size=(3, 5))
    dx, dw, db = ops.linear_backward(f32(dy), f32(x), f32(w))
    grad_close(dx, numgrad(lambda v: np.sum(dy * (v @ w.T + b)), x))
    grad_close(dw, numgrad(lambda v: np.sum(dy * (x @ v.T + b)), w))
    grad_close(db, numgrad(lambda v: np.sum(dy * (x @ w.T + v)), b))


@requires_torch
def test_linear_torch(rng):
    import torch
    import torch.nn.functional as F
    for N, Fi, Fo in [(32, 16, 10), (128, 64, 100)]:
        x, w, b = f32(rng.normal(size=(N, Fi))), f32(rng.normal(size=(Fo, Fi))), f32(
            rng.normal(size=Fo))
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        yt = F.linear(xt, wt, bt)
        dy = f32(rng.normal(size=(N, Fo)))
        yt.backward(torch.tensor(dy))
        close(ops.linear(x, w, b), yt.detach().numpy(), atol=1e-4)
        dx, dw, db = ops.linear_backward(dy, x, w)
        close(dx, xt.grad.numpy(), atol=1e-4)
        close(dw, wt.grad.numpy(), atol=1e-4)
        close(db, bt.grad.numpy(), atol=1e-4)


def test_linear_bad_input(rng):
    x, w = f32(rng.normal(size=(4, 3))), f32(rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="w: expected shape"):
        ops.linear(x, f32(rng.normal(size=(5, 4))))
    with pytest.raises(ValueError, match="b: expected shape"):
        ops.linear(x, w, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="x"):
        ops.linear(x.astype(np.int32), w)
    with pytest.raises(ValueError, match="x"):
        ops.linear(np.asfortranarray(f32(rng.normal(size=(4, 3)))), w)
    with pytest.raises(ValueError, match="dy"):
        ops.linear_backward(np.zeros((4, 4), np.float32), x, w)
    with pytest.raises(ValueError, match="x"):
        ops.linear(np.zeros((0, 3), np.float32), w)


# ---- NLL -----------------------------------------------------------------------------------

def test_nll_prob(rng):
    p = softmax_ref(rng.normal(size=(6, 5)))
    y = rng.integers(0, 5, 6).astype(np.int64)
    pf = f32(p)
    close(ops.nll_prob(pf, y), nll_ref(pf.astype(np.float64), y), rtol=1e-6)
    dp = ops.nll_prob_backward(pf, y, 2.0)
    grad_close(dp, numgrad(lambda v: 2.0 * nll_ref(v, y), pf.astype(np.float64), h=1e-7))


def test_nll_underflow_finite():
    p = np.array([[0.0, 1.0], [1e-38, 1.0], [0.5, 0.5]], np.float32)
    y = np.zeros(3, np.int64)
    loss = ops.nll_prob(p, y)
    assert np.isfinite(loss)
    close(loss, (-np.log(1e-30) * 2 - np.log(0.5)) / 3, rtol=1e-6)
    dp = ops.nll_prob_backward(p, y)
    assert np.all(np.isfinite(dp))
    assert dp[0, 0] == 0 and dp[1, 0] == 0  # below the floor: no gradient (torch.clamp)
    close(dp[2, 0], -1 / (3 * 0.5))


@requires_torch
def test_nll_torch(rng):
    import torch
    import torch.nn.functional as F
    p = f32(softmax_ref(rng.normal(size=(16, 10))))
    y = rng.integers(0, 10, 16).astype(np.int64)
    pt = torch.tensor(p, requires_grad=True)
    lt = F.nll_loss(pt.log(), torch.tensor(y))
    lt.backward()
    close(ops.nll_prob(p, y), lt.item(), rtol=1e-6)
    close(ops.nll_prob_backward(p, y), pt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_nll_bad_input(rng):
    p = f32(softmax_ref(rng.normal(size=(4, 3))))
    with pytest.raises(ValueError, match="labels"):
        ops.nll_prob(p, np.array([0, 1, 3, 0], np.int64))
    with pytest.raises(ValueError, match="labels"):
        ops.nll_prob(p, np.array([0, 1, -1, 0], np.int64))
    with pytest.raises(TypeError, match="labels"):
        ops.nll_prob(p, np.array([0, 1, 2, 0], np.int32))
    with pytest.raises(ValueError, match="labels"):
        ops.nll_prob(p, np.array([0, 1, 2], np.int64))
    pn = p.copy()
    pn[1, 1] = np.nan
    with pytest.raises(ValueError, match="prob"):
        ops.nll_prob(pn, np.zeros(4, np.int64))


# ---- optimisers --------------------------------------------------------------------------

@pytest.mark.parametrize("momentum,dampening,wd,nesterov", [
    (0.0, 0.0, 0.0, False), (0.9, 0.0, 1e-4, False), (0.9, 0.0, 5e-4, True),
    (0.5, 0.3, 0.0, False)])
def test_sgd_numpy(rng, momentum, dampening, wd, nesterov):
    n = 1000
    p = f32(rng.normal(size=n))
    buf = np.zeros(n, np.float32)
    p64, b64 = p.astype(np.float64), np.zeros(n)
    for t in range(4):
        g = f32(rng.normal(size=n))
        g0 = g.copy()
        ops.sgd_step(p, buf, g, 0.1, momentum, dampening, wd, nesterov, first_step=(t == 0))
        np.testing.assert_array_equal(g, g0)
        d = g.astype(np.float64) + wd * p64
        if momentum:
            b64 = d if t == 0 else momentum * b64 + (1 - dampening) * d
            d = d + momentum * b64 if nesterov else b64
        p64 = p64 - 0.1 * d
    close(p, p64, rtol=1e-5, atol=1e-6)


def test_adam_numpy(rng):
    n = 500
    p = f32(rng.normal(size=n))
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    p64, m64, v64 = p.astype(np.float64), np.zeros(n), np.zeros(n)
    b1, b2, eps, wd, lr = 0.9, 0.999, 1e-8, 1e-3, 1e-2
    for t in range(1, 6):
        g = f32(rng.normal(size=n))
        ops.adam_step(p, m, v, g, lr, b1, b2, eps, wd, t)
        d = g + wd * p64
        m64 = b1 * m64 + (1 - b1) * d
        v64 = b2 * v64 + (1 - b2) * d * d
        p64 = p64 - lr / (1 - b1 ** t) * m64 / (np.sqrt(v64) / np.sqrt(1 - b2 ** t) + eps)
    close(p, p64, rtol=1e-5, atol=1e-6)
    close(m, m64, rtol=1e-5, atol=1e-7)
    close(v, v64, rtol=1e-5, atol=1e-9)


@requires_torch
@pytest.mark.parametrize("kw", [dict(momentum=0.9, weight_decay=1e-4),
                                dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
                                dict(momentum=0.8, dampening=0.2), dict()])
def test_sgd_torch(rng, kw):
    import torch
    n = 2000
    p0 = f32(rng.normal(size=n))
    pt = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.SGD([pt], lr=0.05, **kw)
    p, buf = p0.copy(), np.zeros(n, np.float32)
    for t in range(5):
        g = f32(rng.normal(size=n))
        pt.grad = torch.tensor(g)
        opt.step()
        ops.sgd_step(p, buf, g, 0.05, kw.get("momentum", 0.0), kw.get("dampening", 0.0),
                     kw.get("weight_decay", 0.0), kw.get("nesterov", False), t == 0)
    close(p, pt.detach().numpy(), rtol=1e-6, atol=1e-6)
    if kw.get("momentum"):
        close(buf, opt.state[pt]["momentum_buffer"].numpy(), rtol=1e-6, atol=1e-6)


@requires_torch
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_adam_torch(rng, wd):
    import torch
    n = 2000
    p0 = f32(rng.normal(size=n))
    pt = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.Adam([pt], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t in range(1, 8):
        g = f32(rng.normal(size=n))
        pt.grad = torch.tensor(g)
        opt.step()
        ops.adam_step(p, m, v, g, 1e-3, 0.9, 0.999, 1e-8, wd, t)
    close(p, pt.detach().numpy(), rtol=1e-6, atol=1e-6)
    close(m, opt.state[pt]["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
    close(v, opt.state[pt]["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)


def test_optim_bad_input(rng):
    p, g = np.zeros(10, np.float32), np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="momentum_buf"):
        ops.sgd_step(p, np.zeros(9, np.float32), g, 0.1, 0.9)
    with pytest.raises(ValueError, match="momentum_buf"):
        ops.sgd_step(p, None, g, 0.1, 0.9)
    with pytest.raises(TypeError, match="grads"):
        ops.sgd_step(p, None, g.astype(np.float64), 0.1)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="params"):
        ops.sgd_step(ro, None, g, 0.1)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        ops.adam_step(p, np.zeros(10, np.float32), np.zeros(11, np.float32), g, 0.1)
    with pytest.raises(ValueError, match="step"):
        ops.adam_step(p, np.zeros(10, np.float32), np.zeros(10, np.float32), g, 0.1, step=0)
    with pytest.raises(ValueError, match="exp_avg"):
        ops.adam_step(p, np.zeros(20, np.float32)[::2], np.zeros(10, np.float32), g, 0.1)
    gn = g.copy()
    gn[3] = np.inf
    with pytest.raises(ValueError, match="grads"):
        ops.sgd_step(p, None, gn, 0.1)
    with pytest.raises(ValueError, match="nesterov"):
        ops.sgd_step(p, np.zeros(10, np.float32), g, 0.1, 0.0, nesterov=True)
    assert np.all(p == 0)


# ---- threads, hygiene ----------------------------------------------------------------------

def _run_all(rng_seed):
    r = np.random.default_rng(rng_seed)
    x = f32(r.normal(size=(8, 16, 33, 33)))
    C = 16
    out = []
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, sm, si = ops.batch_norm2d(x, np.ones(C, np.float32), np.zeros(C, np.float32), rm, rv)
    out += [y, sm, si, rm, rv]
    out += list(ops.batch_norm2d_backward(x, x, np.ones(C, np.float32), sm, si))
    out += [ops.relu(x), ops.sigmoid(x), ops.relu_backward(x, ops.relu(x))]
    yp, am = ops.max_pool2d(x)
    out += [yp, am, ops.max_pool2d_backward(yp, am, (33, 33))]
    out += [ops.global_avg_pool(x), ops.global_avg_pool_backward(x[:, :, 0, 0].copy(), (33, 33))]
    a = f32(r.normal(size=(256, 512)))
    w = f32(r.normal(size=(300, 512)))
    out += [ops.linear(a, w), *ops.linear_backward(ops.linear(a, w), a, w)[:2]]
    out += [ops.softmax(a), ops.softmax_backward(a, ops.softmax(a))]
    p = np.ones(200000, np.float32)
    ops.adam_step(p, np.zeros_like(p), np.zeros_like(p), f32(r.normal(size=p.size)), 0.1)
    out.append(p)
    return out


def test_threads_1_vs_2():
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(1)
        one = _run_all(7)
        eenet.set_num_threads(2)
        assert eenet.get_num_threads() == 2
        two = _run_all(7)
    finally:
        eenet.set_num_threads(old)
    for a, b in zip(one, two):
        close(a, b, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("env, expected", [
    ({}, eenet.DEFAULT_SPINCOUNT),                    # eenet's bounded spin
    ({"GOMP_SPINCOUNT": "7"}, "7"),                    # the user's spin count wins
    ({"OMP_WAIT_POLICY": "PASSIVE"}, None),           # so does the user's wait policy
])
def test_wait_policy_default(env, expected):
    """import eenet sets GOMP_SPINCOUNT (before the OpenMP runtime loads) only when the
    user set neither it nor OMP_WAIT_POLICY."""
    import subprocess
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    clean.update(env)
    clean["PYTHONPATH"] = str(pathlib.Path(eenet.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c",
                          "import os, eenet; print(os.environ.get('GOMP_SPINCOUNT'))"],
                         env=clean, capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(expected)

def test_no_refcount_growth(rng):
    x = f32(rng.normal(size=(2, 3, 6, 6)))
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    w = f32(rng.normal(size=(4, 3)))
    b4 = np.zeros(4, np.float32)
    y = np.zeros(2, np.int64)
    probs = np.full((2, 2, 3), 1 / 3, np.float32)
    conf = np.full((2, 2), 0.5, np.float32)
    costs = np.array([0.5, 1.0], np.float32)
    tags = np.array([0, 1], np.int32)
    pv, gv = np.zeros(50, np.float32), np.ones(50, np.float32)
    buf, buf2 = np.zeros(50, np.float32), np.zeros(50, np.float32)

    def calls():
        yb, sm, si = ops.batch_norm2d(x, g, b, rm, rv)
        ops.batch_norm2d_backward(yb, x, g, sm, si)
        yp, am = ops.max_pool2d(x)
        ops.max_pool2d_backward(yp, am, (6, 6))
        x2 = x[:, :, 0, 0].copy()
        ops.linear_backward(ops.linear(x2, w, b4), x2, w)
        ops.nll_prob(ops.softmax(w[:2].copy()), y)
        ops.ee_loss(probs, conf, costs, y, 2, 1.0)
        ops.ee_loss(probs, conf, costs, y, 4, 1.0, tags)
        ops.sgd_step(pv, buf, gv, 0.1, 0.9)
        ops.adam_step(pv, buf, buf2, gv, 0.1)
        for bad in (lambda: ops.linear(x, w), lambda: ops.ee_loss(probs, conf, costs, y, 4, 1.0),
                    lambda: ops.max_pool2d(x, 3, 2, 5), lambda: ops.relu(x.astype(np.float64))):
            try:
                bad()
            except (ValueError, TypeError):
                pass

    calls()
    gc.collect()
    refs = [sys.getrefcount(a) for a in (x, g, b, b4, rm, rv, w, y, probs, conf, costs, tags, pv,
                                             gv, buf)]
    total = sys.gettotalrefcount() if hasattr(sys, "gettotalrefcount") else None
    for _ in range(300):
        calls()
    gc.collect()
    assert [sys.getrefcount(a) for a in (x, g, b, b4, rm, rv, w, y, probs, conf, costs, tags, pv,
                                             gv, buf)] == refs
    if total is not None:
        assert sys.gettotalrefcount() - total < 100


# ---- conv2d wrappers (the kernels themselves are tested in test_conv.py) -----------------

@pytest.mark.skipif(not hasattr(eenet._core, "conv2d_forward"), reason="conv not built")
def test_conv2d_wrappers(rng):
    x, w, b = f32(rng.normal(size=(2, 3, 7, 6))), f32(rng.normal(size=(4, 3, 3, 3))), f32(
        rng.normal(size=4))
    y = ops.conv2d(x, w, b, stride=2, padding=1)
    x64 = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((2, 4, 4, 3))
    for i in range(4):
        for j in range(3):
            ref[:, :, i, j] = np.einsum("nchw,kchw->nk", x64[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3],
                                        w) + b
    close(y, ref, atol=1e-4)
    dy = f32(rng.normal(size=y.shape))
    dx, dw, db = ops.conv2d_backward(dy, x, w, stride=2, padding=1)
    assert dx.shape == x.shape and dw.shape == w.shape
    close(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), atol=1e-4)
    assert ops.conv2d_backward(dy, x, w, 2, 1, with_bias=False)[2] is None
    with pytest.raises(TypeError, match="x"):
        ops.conv2d(x.astype(np.float64), w)


def test_inputs_not_modified(rng):
    x = f32(rng.normal(size=(3, 4, 7, 7)))
    dy4 = f32(rng.normal(size=x.shape))
    g, b = f32(rng.normal(size=4)), f32(rng.normal(size=4))
    z = f32(rng.normal(size=(5, 6)))
    w = f32(rng.normal(size=(3, 6)))
    y = rng.integers(0, 6, 5).astype(np.int64)
    arrays = [x, dy4, g, b, z, w, y]
    saved = [a.copy() for a in arrays]
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    yb, sm, si = ops.batch_norm2d(x, g, b, rm, rv)
    ops.batch_norm2d(x, g, b, rm, rv, training=False)
    ops.batch_norm2d_backward(dy4, x, g, sm, si)
    ops.relu_backward(dy4, ops.relu(x))
    ops.sigmoid_backward(dy4, ops.sigmoid(x))
    ops.add(x, dy4)
    ops.add_backward(dy4)
    ops.softmax_backward(z, ops.softmax(z))
    yp, am = ops.max_pool2d(x)
    ops.max_pool2d_backward(f32(np.ones(yp.shape)), am, (7, 7))
    ops.global_avg_pool_backward(ops.global_avg_pool(x), (7, 7))
    ops.linear_backward(ops.linear(z, w, b[:3].copy()), z, w)
    p = ops.softmax(z)
    ops.nll_prob(p, y)
    ops.nll_prob_backward(p, y)
    for a, s in zip(arrays, saved):
        np.testing.assert_array_equal(a, s)


@requires_torch
def test_relu_gap_add_torch(rng):
    import torch
    import torch.nn.functional as F
    x = f32(rng.normal(size=(4, 5, 6, 7)))
    xt = torch.tensor(x, requires_grad=True)
    yt = F.adaptive_avg_pool2d(F.relu(xt), 1).flatten(1)
    dy = f32(rng.normal(size=(4, 5)))
    yt.backward(torch.tensor(dy))
    r = ops.relu(x)
    close(ops.global_avg_pool(r), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    dx = ops.relu_backward(ops.global_avg_pool_backward(dy, (6, 7)), r)
    close(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ops.add(x, r), (torch.tensor(x) + torch.tensor(r)).numpy())
