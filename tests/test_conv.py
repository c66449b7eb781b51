"""conv2d kernels (eenet._core.conv2d_forward / conv2d_backward).

Checked against a float64 NumPy reference written here, the C naive reference,
PyTorch (forward and autograd) and central finite differences; plus thread
invariance, the C kernels' accumulation contract (through ctypes, since the
binding returns fresh arrays), argument validation and boundary hygiene.
"""
import contextlib
import ctypes
import gc
import sys
import tracemalloc

import numpy as np
import pytest

import eenet
from eenet import _core, ops

from conftest import requires_torch

RTOL, ATOL = 1e-4, 1e-5

# (N, C, H, W, K, k, stride, pad)
SHAPES = [
    (1, 1, 5, 5, 2, 3, 1, 1),      # batch 1, C = 1
    (2, 2, 7, 9, 2, 3, 1, 1),      # C = K = 2, odd sizes
    (3, 3, 7, 9, 5, 3, 2, 1),      # stride-2 tails
    (2, 4, 9, 8, 6, 1, 2, 0),      # 1x1 stride 2 shortcut
    (2, 4, 6, 6, 3, 1, 1, 0),      # 1x1 stride 1 (no im2col)
    (2, 3, 19, 17, 4, 7, 2, 3),    # 7x7 stride 2 pad 3 stem
    (2, 2, 5, 6, 3, (5, 6), 1, 0),  # kernel = input size
    (1, 3, 4, 4, 2, 3, 3, 2),      # stride 3, padding 2
    (3, 8, 12, 12, 16, 3, 1, 1),   # 8 -> 16 channels
    (2, 16, 8, 8, 8, 3, 2, 1),     # 16 -> 8 channels, stride 2
    (4, 2, 28, 28, 4, 3, 1, 1),    # EENet-8-like
    (2, 16, 8, 8, 32, 3, 1, 1),    # ResNet-like: 16 -> 32 channels (K-vectorised paths)
    (2, 32, 12, 12, 16, 3, 1, 1),  # 32 -> 16, 12 columns (4-column tiles)
    (2, 32, 16, 16, 64, 3, 2, 1),  # 32 -> 64 stride 2
    (1, 3, 32, 32, 16, 7, 2, 3),   # ImageNet-style stem
    (3, 16, 7, 7, 16, 3, 1, 1),    # EENet-8 f=4 last block: 7-column tiles
    (2, 8, 14, 14, 16, 3, 2, 1),   # EENet-8 f=4 16-channel stride 2
    (2, 32, 14, 14, 32, 3, 1, 1),  # 14-column tiles, 32 channels
    (2, 32, 8, 8, 16, 3, 1, 1),    # backward-data K-vectorised with 8-column tiles
    (17, 4, 14, 14, 8, 3, 2, 1),   # batch-lane path: one group of 16 + a 1-sample tail, s2
    (33, 3, 7, 9, 5, 3, 1, 1),     # batch-lane: 2 groups + tail, C, K not powers of 2
    (18, 2, 9, 7, 3, 5, 1, 2),     # batch-lane: 5x5 kernel, odd sizes
    (17, 5, 9, 8, 6, 1, 2, 0),     # batch-lane 1x1 stride 2 (only even rows filled), odd H
]

# conv2d implementation switch of the C core (kernels.h eenet_conv2d_set_impl):
# 0 automatic, 1 im2col+GEMM everywhere, 2 the q-space direct path wherever possible,
# 3 as 2 with the weight gradient K-vectorised on the q-space planes,
# 4 Winograd F(2x2,3x3) for forward and backward-data of every 3x3 stride-1 pad-1
# layer (AVX-512 transforms where the CPU has them), 5 as 4 with the portable C path,
# 6 the batch-lane path (16 samples per vector, C, K <= 16) for every sample,
# 7 the batch-lane Winograd path (conv_wlanes.c) for forward and backward-data of
# every 3x3 stride-1 pad-1 layer with C, K <= 16 (AVX-512 CPUs), the rest as 0,
# 8 the Winograd F(4x4,3x3) path (conv_wino4.c) for forward and backward-data of
# every 3x3 stride-1 pad-1 layer on 32-wide planes with H a multiple of 8,
# 16-wide planes with H a multiple of 16 and 8x8 planes (AVX-512 CPUs), the rest
# as 0,
# 9 the channel-lane Winograd F(4x4,3x3) path (conv_wl4.c) for forward and
# backward-data of every 16->16 3x3 stride-1 pad-1 layer with 4 < H, W <= 8,
# 10 the tile-lane Winograd F(4x4,3x3) path (conv_tl4.c) for forward, backward-data
# and weight gradient of every 3x3 stride-1 pad-1 layer with C, K <= 16 on planes
# with 12 < H, W <= 16.
IMPLS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
WINO_IMPLS = [4, 5]


@contextlib.contextmanager
def _switch(value):
    """The conv implementation switch (eenet_conv2d_set_impl) at value inside the
    block, restored after it."""
    lib = ctypes.CDLL(_core.__file__)
    old = lib.eenet_conv2d_set_impl(value)
    try:
        yield value
    finally:
        lib.eenet_conv2d_set_impl(old)


@pytest.fixture(params=IMPLS, ids=["auto", "gemm", "direct", "direct-kvec-wt", "wino", "wino-c",
                                   "lanes", "wlanes", "wino4", "wl4", "tl4"])
def impl(request):
    with _switch(request.param):
        yield request.param


def _k(shape):
    k = shape[5]
    return (k, k) if isinstance(k, int) else k


def _arrays(rng, shape, bias=True):
    N, C, H, W, K, _, s, p = shape
    kh, kw = _k(shape)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, kh, kw)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32) if bias else None
    Ho = (H + 2 * p - kh) // s + 1
    Wo = (W + 2 * p - kw) // s + 1
    dy = rng.standard_normal((N, K, Ho, Wo)).astype(np.float32)
    return x, w, b, dy


def ref_forward(x, w, b, s, p):
    """float64 reference: sum over taps of einsum on strided views of the padded input."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    N, C, H, W = x.shape
    K, _, kh, kw = w.shape
    Ho, Wo = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((N, K, Ho, Wo))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s]
            y += np.einsum("nchw,kc->nkhw", win, w[:, :, i, j])
    if b is not None:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def ref_backward(dy, x, w, s, p):
    """float64 reference gradients (dx, dw, db)."""
    dy = dy.astype(np.float64)
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    N, C, H, W = x.shape
    K, _, kh, kw = w.shape
    Ho, Wo = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(None), slice(i, i + s * (Ho - 1) + 1, s),
                  slice(j, j + s * (Wo - 1) + 1, s))
            dw[:, :, i, j] = np.einsum("nkhw,nchw->kc", dy, xp[sl])
            dxp[sl] += np.einsum("nkhw,kc->nchw", dy, w[:, :, i, j])
    dx = dxp[:, :, p:p + H, p:p + W]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def _close(a, ref, rtol=RTOL, atol=ATOL):
    # scale atol with the size of the sums involved
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(a, ref, rtol=rtol, atol=atol * scale)


def _check_forward_backward(x, w, b, dy):
    """conv2d (3x3 stride 1 pad 1) forward and its three gradients against the
    float64 reference."""
    _close(_core.conv2d_forward(x, w, b, 1, 1), ref_forward(x, w, b, 1, 1))
    rdx, rdw, rdb = ref_backward(dy, x, w, 1, 1)
    dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, True)
    _close(dx, rdx)
    _close(dw, rdw)
    _close(db, rdb)


@pytest.mark.parametrize("naive", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_numpy(rng, shape, naive):
    s, p = shape[6], shape[7]
    for bias in (True, False):
        x, w, b, _ = _arrays(rng, shape, bias)
        y = _core.conv2d_forward(x, w, b, s, p, naive=naive)
        assert y.dtype == np.float32 and y.flags.c_contiguous
        _close(y, ref_forward(x, w, b, s, p))


@pytest.mark.parametrize("naive", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_numpy(rng, shape, naive):
    s, p = shape[6], shape[7]
    x, w, _, dy = _arrays(rng, shape)
    rdx, rdw, rdb = ref_backward(dy, x, w, s, p)
    dx, dw, db = _core.conv2d_backward(dy, x, w, s, p, True, naive=naive)
    _close(dx, rdx)
    _close(dw, rdw)
    _close(db, rdb)
    dx2, dw2, db2 = _core.conv2d_backward(dy, x, w, s, p, False, need_dx=False, naive=naive)
    assert dx2 is None and db2 is None
    _close(dw2, rdw)
    dx3, dw3, db3 = _core.conv2d_backward(dy, x, w, s, p, True, need_dw=False, naive=naive)
    assert dw3 is None
    _close(dx3, rdx)
    _close(db3, rdb)


@pytest.mark.parametrize("shape", SHAPES)
def test_fast_matches_naive(rng, shape, impl):
    s, p = shape[6], shape[7]
    x, w, b, dy = _arrays(rng, shape)
    _close(_core.conv2d_forward(x, w, b, s, p),
           _core.conv2d_forward(x, w, b, s, p, naive=True))
    fast = _core.conv2d_backward(dy, x, w, s, p, True)
    slow = _core.conv2d_backward(dy, x, w, s, p, True, naive=True)
    for a, r in zip(fast, slow):
        _close(a, r)


@requires_torch
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(rng, shape, impl):
    import torch
    import torch.nn.functional as F

    s, p = shape[6], shape[7]
    for bias in (True, False):
        x, w, b, dy = _arrays(rng, shape, bias)
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True) if bias else None
        yt = F.conv2d(xt, wt, bt, stride=s, padding=p)
        yt.backward(torch.tensor(dy))
        _close(_core.conv2d_forward(x, w, b, s, p), yt.detach().numpy())
        dx, dw, db = _core.conv2d_backward(dy, x, w, s, p, bias)
        _close(dx, xt.grad.numpy())
        _close(dw, wt.grad.numpy())
        if bias:
            _close(db, bt.grad.numpy())
        else:
            assert db is None


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3], (1, 2, 6, 5, 2, 3, 2, 2)])
def test_backward_finite_differences(rng, shape):
    """Central differences of L = sum(y * dy) (computed in float64 from the
    naive forward's float32 output) against the fast backward."""
    s, p = shape[6], shape[7]
    x, w, b, dy = _arrays(rng, shape)
    dy64 = dy.astype(np.float64)
    dx, dw, db = _core.conv2d_backward(dy, x, w, s, p, True)

    def loss(xx, ww, bb):
        y = _core.conv2d_forward(xx, ww, bb, s, p, naive=True)
        return float((y.astype(np.float64) * dy64).sum())

    eps = 1e-2
    for name, arr, grad in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        flat = arr.reshape(-1)
        for idx in rng.choice(flat.size, size=min(8, flat.size), replace=False):
            old = flat[idx]
            flat[idx] = old + eps
            lp = loss(x, w, b)
            flat[idx] = old - eps
            lm = loss(x, w, b)
            flat[idx] = old
            num = (lp - lm) / (2 * eps)
            ana = float(grad.reshape(-1)[idx])
            assert abs(num - ana) <= 2e-3 * max(abs(num), abs(ana), 1.0), (name, idx, num, ana)


@pytest.mark.parametrize("shape", [(8, 16, 16, 16, 32, 3, 1, 1), (16, 4, 28, 28, 8, 3, 1, 1),
                                   (8, 32, 16, 16, 64, 3, 2, 1), (40, 8, 7, 7, 8, 3, 1, 1),
                                   (35, 4, 14, 14, 8, 3, 2, 1), (1, 16, 32, 32, 16, 3, 1, 1),
                                   (3, 32, 16, 16, 32, 3, 1, 1), (1, 3, 96, 96, 16, 3, 1, 1),
                                   (1, 64, 64, 64, 64, 1, 2, 0), (3, 16, 33, 31, 8, 3, 2, 1)])
def test_threads_give_same_results(rng, shape, impl):
    """1 and 2 threads agree (shapes big enough for the kernels to use 2;
    batches of 1 and 3 split each sample's output rows over the threads)."""
    s, p = shape[6], shape[7]
    x, w, b, dy = _arrays(rng, shape)
    old = eenet.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            eenet.set_num_threads(t)
            outs.append((_core.conv2d_forward(x, w, b, s, p),)
                        + _core.conv2d_backward(dy, x, w, s, p, True))
    finally:
        eenet.set_num_threads(old)
    for a, r in zip(*outs):
        _close(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[19]])
def test_inputs_not_modified(rng, shape, impl):
    s, p = shape[6], shape[7]
    x, w, b, dy = _arrays(rng, shape)
    copies = [a.copy() for a in (x, w, b, dy)]
    _core.conv2d_forward(x, w, b, s, p)
    _core.conv2d_backward(dy, x, w, s, p, True)
    _core.conv2d_backward(dy, x, w, s, p, True, naive=True)
    for a, c in zip((x, w, b, dy), copies):
        np.testing.assert_array_equal(a, c)


# ---- the C kernels' own contract, through ctypes ---------------------------

def _lib():
    lib = ctypes.CDLL(_core.__file__)
    fp = ctypes.POINTER(ctypes.c_float)
    i = ctypes.c_int
    lib.eenet_conv2d_workspace_floats.restype = ctypes.c_size_t
    lib.eenet_conv2d_workspace_floats.argtypes = [i] * 10
    lib.eenet_conv2d_backward_ex.restype = i
    lib.eenet_conv2d_backward_ex.argtypes = [fp] * 7 + [i] * 10
    lib.eenet_conv2d_backward_set.restype = i
    lib.eenet_conv2d_backward_set.argtypes = [fp] * 7 + [i] * 9
    lib.eenet_conv2d_backward_naive.restype = i
    lib.eenet_conv2d_backward_naive.argtypes = [fp] * 6 + [i] * 9
    lib.eenet_conv2d_forward_ex.restype = i
    lib.eenet_conv2d_forward_ex.argtypes = [fp] * 5 + [i] * 10
    lib.eenet_conv2d_prepared_floats.restype = ctypes.c_size_t
    lib.eenet_conv2d_prepared_floats.argtypes = [i] * 8
    lib.eenet_conv2d_prepare.restype = i
    lib.eenet_conv2d_prepare.argtypes = [fp] * 2 + [i] * 8
    lib.eenet_conv2d_forward_prepared.restype = i
    lib.eenet_conv2d_forward_prepared.argtypes = [fp] * 4 + [i] + [fp] * 2 + [i] * 10
    lib.eenet_conv2d_forward_fused.restype = i
    lib.eenet_conv2d_forward_fused.argtypes = [fp] * 4 + [i] + [fp] * 2 + [i] + [fp] + [i] * 10
    return lib


def _p(a):
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[5], SHAPES[10], SHAPES[11],
                                   (3, 16, 7, 7, 16, 3, 1, 1), SHAPES[18], SHAPES[19],
                                   SHAPES[20], (34, 8, 14, 14, 8, 3, 1, 1),
                                   (17, 8, 14, 14, 16, 3, 2, 1)])
def test_c_backward_accumulates(rng, shape, impl):
    """eenet_conv2d_backward(_ex) and the naive twin ADD into dinp/dw/dbias
    (the engine relies on accumulation); eenet_conv2d_backward_set (what the
    binding calls) SETS dinp, whose NaN contents on entry it never reads (the
    F(4x4) paths store, the others zero first), and still ADDS into dw/dbias."""
    lib = _lib()
    N, C, H, W, K, _, s, p = shape
    kh, kw = _k(shape)
    x, w, _, dy = _arrays(rng, shape)
    rdx, rdw, rdb = ref_backward(dy, x, w, s, p)
    nt = eenet.get_num_threads()
    ws = np.empty(lib.eenet_conv2d_workspace_floats(N, C, H, W, K, kh, kw, s, p, nt) + 1,
                  np.float32)
    for mode in ("ex", "naive", "set"):
        dx0 = (np.full(x.shape, np.nan, np.float32) if mode == "set"
               else rng.standard_normal(x.shape).astype(np.float32))
        dw0 = rng.standard_normal(w.shape).astype(np.float32)
        db0 = rng.standard_normal(K).astype(np.float32)
        dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
        if mode == "naive":
            st = lib.eenet_conv2d_backward_naive(_p(dx), _p(dw), _p(db), _p(dy), _p(x), _p(w),
                                                 N, C, H, W, K, kh, kw, s, p)
        elif mode == "ex":
            st = lib.eenet_conv2d_backward_ex(_p(dx), _p(dw), _p(db), _p(dy), _p(x), _p(w),
                                              _p(ws), N, C, H, W, K, kh, kw, s, p, nt)
        else:
            st = lib.eenet_conv2d_backward_set(_p(dx), _p(dw), _p(db), _p(dy), _p(x), _p(w),
                                               _p(ws), N, C, H, W, K, kh, kw, s, p)
        assert st == 0
        _close(dx, rdx if mode == "set" else dx0 + rdx)
        _close(dw, dw0 + rdw)
        _close(db, db0 + rdb)


@pytest.mark.parametrize("shape", [(8, 8, 16, 16, 16, 3, 1, 1), (34, 8, 14, 14, 8, 3, 1, 1)])
def test_c_workspace_bound_respected(rng, shape, impl):
    """Sized for 1 thread, the _ex kernels must stay inside the workspace even
    when more threads are configured (a guard region after it stays intact)."""
    lib = _lib()
    # enough work for 2 threads; the second has batch-lane groups
    N, C, H, W, K, _, s, p = shape
    x, w, b, dy = _arrays(rng, shape)
    n = lib.eenet_conv2d_workspace_floats(N, C, H, W, K, 3, 3, s, p, 1)
    guard = 4096
    ws = np.zeros(n + guard, np.float32)
    ws[n:] = 12345.0
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(2)
        y = np.empty((N, K, H, W), np.float32)
        assert lib.eenet_conv2d_forward_ex(_p(y), _p(x), _p(w), _p(b), _p(ws), N, C, H, W, K,
                                           3, 3, s, p, 1) == 0
        dx = np.zeros_like(x)
        dw = np.zeros_like(w)
        db = np.zeros_like(b)
        assert lib.eenet_conv2d_backward_ex(_p(dx), _p(dw), _p(db), _p(dy), _p(x), _p(w),
                                            _p(ws), N, C, H, W, K, 3, 3, s, p, 1) == 0
    finally:
        eenet.set_num_threads(old)
    assert np.all(ws[n:] == 12345.0)
    _close(y, ref_forward(x, w, b, s, p))
    rdx, rdw, rdb = ref_backward(dy, x, w, s, p)
    _close(dx, rdx)
    _close(dw, rdw)
    _close(db, rdb)


# ---- argument validation ---------------------------------------------------

def _good(rng):
    x, w, b, dy = _arrays(rng, (2, 3, 8, 8, 4, 3, 1, 1))
    return x, w, b, dy


def test_forward_bad_arguments(rng):
    x, w, b, _ = _good(rng)
    cases = [
        ((x.astype(np.float64), w, b, 1, 1), TypeError, "x"),
        ((x, w.astype(np.float64), b, 1, 1), TypeError, "w"),
        ((x, w, b.astype(np.float64), 1, 1), TypeError, "b"),
        ((x.tolist(), w, b, 1, 1), TypeError, "x"),
        ((x.astype(np.int32), w, b, 1, 1), TypeError, "x"),
        ((x[:, :, :, ::2], w, b, 1, 1), ValueError, "x"),
        ((np.asfortranarray(x), w, b, 1, 1), ValueError, "x"),
        ((x[0], w, b, 1, 1), ValueError, "x"),
        ((x, w[0], b, 1, 1), ValueError, "w"),
        ((x, w[:, :2].copy(), b, 1, 1), ValueError, "w"),
        ((x, w, b[:3].copy(), 1, 1), ValueError, "b"),
        ((x, w, b, 0, 1), ValueError, "stride"),
        ((x, w, b, 1, -1), ValueError, "padding"),
        ((x[:0].copy(), w, b, 1, 1), ValueError, "x"),
        ((x[:, :, :1, :1].copy(), w, b, 1, 0), ValueError, "w"),
    ]
    for args, exc, name in cases:
        with pytest.raises(exc, match=rf"^{name}:"):
            _core.conv2d_forward(*args)
    with pytest.raises(TypeError):
        _core.conv2d_forward(x, w, b, 1.5, 1)


def test_backward_bad_arguments(rng):
    x, w, _, dy = _good(rng)
    cases = [
        ((dy.astype(np.float64), x, w, 1, 1, True), TypeError, "dy"),
        ((dy, x.astype(np.float64), w, 1, 1, True), TypeError, "x"),
        ((dy[:, :, :7].copy(), x, w, 1, 1, True), ValueError, "dy"),
        ((dy, x, w, 2, 1, True), ValueError, "dy"),          # shape for stride 2 differs
        ((dy[:, :2].copy(), x, w, 1, 1, True), ValueError, "dy"),
        ((dy[0], x, w, 1, 1, True), ValueError, "dy"),
        ((dy, x, w[:, :2].copy(), 1, 1, True), ValueError, "w"),
        ((dy, x, w, 0, 1, True), ValueError, "stride"),
        ((dy, x, w, 1, -2, True), ValueError, "padding"),
        ((dy[:0].copy(), x[:0].copy(), w, 1, 1, True), ValueError, "x"),
        ((dy.transpose(0, 1, 3, 2), x, w, 1, 1, True), ValueError, "dy"),
    ]
    for args, exc, name in cases:
        with pytest.raises(exc, match=rf"^{name}:"):
            _core.conv2d_backward(*args)
    # the module still works after every error
    _close(_core.conv2d_backward(dy, x, w, 1, 1, True)[1], ref_backward(dy, x, w, 1, 1)[1])


def test_error_messages_give_expected_and_actual(rng):
    x, w, _, dy = _good(rng)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 4, 8, 8\), got \(2, 4, 7, 8\)"):
        _core.conv2d_backward(dy[:, :, :7].copy(), x, w, 1, 1, True)
    with pytest.raises(TypeError, match="x: expected dtype float32, got float64"):
        _core.conv2d_forward(x.astype(np.float64), w, None, 1, 1)


# ---- boundary hygiene ------------------------------------------------------

def test_no_reference_or_memory_growth(rng):
    x, w, b, dy = _arrays(rng, (2, 3, 10, 10, 4, 3, 1, 1))
    args = (x, w, b, dy)
    before = [sys.getrefcount(a) for a in args]

    def run(n):
        for _ in range(n):
            _core.conv2d_forward(x, w, b, 1, 1)
            _core.conv2d_backward(dy, x, w, 1, 1, True)
            _core.conv2d_backward(dy, x, w, 1, 1, False, need_dx=False)
            try:
                _core.conv2d_backward(dy, x, w, 2, 1, True)
            except ValueError:
                pass
            else:
                raise AssertionError("wrong dy shape accepted")

    run(50)
    gc.collect()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    run(200)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(st.size_diff for st in snap1.compare_to(snap0, "filename"))
    assert growth < 64 * 1024, growth
    assert [sys.getrefcount(a) for a in args] == before


# ---- Winograd F(2x2,3x3) (conv_winograd.c), forced with set_impl 4 / 5 ------

# (N, C, H, W, K): batch 1, odd sizes whose 2x2 tiles overhang the border,
# 1x1 and 2x3 planes, channel counts off multiples of 8/16, the ResNet-20 shapes
WINO_SHAPES = [
    (1, 16, 7, 7, 16),
    (2, 3, 5, 9, 5),
    (3, 16, 1, 1, 16),
    (2, 5, 2, 3, 33),
    (1, 17, 9, 6, 20),
    (2, 64, 8, 8, 64),
    (2, 16, 32, 32, 16),
    (1, 32, 16, 16, 32),
    (2, 24, 34, 35, 9),   # tile rows wider than 16 tiles (two vectors, tail of 2)
    (5, 16, 3, 3, 16),    # blocks spanning several samples
]


@pytest.fixture(params=WINO_IMPLS, ids=["wino", "wino-c"])
def wino_impl(request):
    with _switch(request.param):
        yield request.param


def _wshape(s5):
    N, C, H, W, K = s5
    return (N, C, H, W, K, 3, 1, 1)


def _max_rel(a, ref):
    return float(np.abs(a.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("s5", WINO_SHAPES)
def test_winograd_matches_numpy_and_naive(rng, s5, wino_impl):
    shape = _wshape(s5)
    for bias in (True, False):
        x, w, b, dy = _arrays(rng, shape, bias)
        ref = ref_forward(x, w, b, 1, 1)
        y = _core.conv2d_forward(x, w, b, 1, 1)
        _close(y, ref)
        _close(y, _core.conv2d_forward(x, w, b, 1, 1, naive=True))
        # F(2x2,3x3) stays within a few float32 roundings of the output's scale
        assert _max_rel(y, ref) < 2e-6
    rdx, rdw, rdb = ref_backward(dy, x, w, 1, 1)
    dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, True)
    ndx, ndw, ndb = _core.conv2d_backward(dy, x, w, 1, 1, True, naive=True)
    for a, r, n in ((dx, rdx, ndx), (dw, rdw, ndw), (db, rdb, ndb)):
        _close(a, r)
        _close(a, n)
    assert _max_rel(dx, rdx) < 2e-6
    dx3, dw3, db3 = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)
    assert dw3 is None and db3 is None
    _close(dx3, rdx)


@pytest.mark.parametrize("scale", [1e4, 1e-4])
def test_winograd_large_and_small_values(rng, scale, wino_impl):
    shape = (2, 16, 7, 9, 16, 3, 1, 1)
    x, w, b, dy = _arrays(rng, shape)
    x *= scale
    dy *= scale
    b *= scale
    ref = ref_forward(x, w, b, 1, 1)
    y = _core.conv2d_forward(x, w, b, 1, 1)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL * np.abs(ref).max())
    rdx = ref_backward(dy, x, w, 1, 1)[0]
    dx = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0]
    np.testing.assert_allclose(dx, rdx, rtol=RTOL, atol=ATOL * np.abs(rdx).max())


@requires_torch
@pytest.mark.parametrize("s5", WINO_SHAPES[:6])
def test_winograd_matches_torch(rng, s5, wino_impl):
    import torch
    import torch.nn.functional as F

    x, w, b, dy = _arrays(rng, _wshape(s5))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = F.conv2d(xt, wt, bt, stride=1, padding=1)
    yt.backward(torch.tensor(dy))
    _close(_core.conv2d_forward(x, w, b, 1, 1), yt.detach().numpy())
    dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, True)
    _close(dx, xt.grad.numpy())
    _close(dw, wt.grad.numpy())
    _close(db, bt.grad.numpy())


@pytest.mark.parametrize("s5", [(1, 16, 8, 8, 16), (3, 32, 16, 16, 32), (16, 64, 8, 8, 64),
                                (2, 16, 7, 7, 16)])
def test_winograd_threads_give_same_results(rng, s5, wino_impl):
    """1 and 2 threads agree, also at batch 1-3 (tile rows split across threads;
    the weight gradient sums per-thread partials)."""
    shape = _wshape(s5)
    x, w, b, dy = _arrays(rng, shape)
    old = eenet.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            eenet.set_num_threads(t)
            outs.append((_core.conv2d_forward(x, w, b, 1, 1),)
                        + _core.conv2d_backward(dy, x, w, 1, 1, True))
    finally:
        eenet.set_num_threads(old)
    for a, r in zip(*outs):
        _close(a, r, rtol=1e-5, atol=1e-6)


def test_winograd_inputs_not_modified(rng, wino_impl):
    shape = _wshape((2, 16, 7, 9, 16))
    x, w, b, dy = _arrays(rng, shape)
    copies = [a.copy() for a in (x, w, b, dy)]
    _core.conv2d_forward(x, w, b, 1, 1)
    _core.conv2d_backward(dy, x, w, 1, 1, True)
    for a, c in zip((x, w, b, dy), copies):
        np.testing.assert_array_equal(a, c)


def _check_c_accumulates_and_workspace(rng, s5):
    """3x3 stride-1 layer s5 = (N, C, H, W, K) through the C API under the
    current conv switch: backward-data ADDS into dinp, and a workspace sized for
    1 thread (then 2 threads configured) is never overrun."""
    lib = _lib()
    N, C, H, W, K = s5
    x, w, b, dy = _arrays(rng, _wshape(s5))
    n = lib.eenet_conv2d_workspace_floats(N, C, H, W, K, 3, 3, 1, 1, 1)
    guard = 4096
    ws = np.zeros(n + guard, np.float32)
    ws[n:] = 12345.0
    dx0 = rng.standard_normal(x.shape).astype(np.float32)
    dw0 = rng.standard_normal(w.shape).astype(np.float32)
    db0 = rng.standard_normal(K).astype(np.float32)
    dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
    y = np.empty((N, K, H, W), np.float32)
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(2)
        assert lib.eenet_conv2d_forward_ex(_p(y), _p(x), _p(w), _p(b), _p(ws), N, C, H, W, K,
                                           3, 3, 1, 1, 1) == 0
        assert lib.eenet_conv2d_backward_ex(_p(dx), _p(dw), _p(db), _p(dy), _p(x), _p(w),
                                            _p(ws), N, C, H, W, K, 3, 3, 1, 1, 1) == 0
    finally:
        eenet.set_num_threads(old)
    assert np.all(ws[n:] == 12345.0)
    _close(y, ref_forward(x, w, b, 1, 1))
    rdx, rdw, rdb = ref_backward(dy, x, w, 1, 1)
    _close(dx, dx0 + rdx)
    _close(dw, dw0 + rdw)
    _close(db, db0 + rdb)


@pytest.mark.parametrize("s5", [(8, 16, 16, 16, 16), (3, 20, 7, 9, 24)])
def test_winograd_c_accumulates_and_respects_workspace(rng, s5, wino_impl):
    """Through the C API: backward-data ADDS into dinp, and a workspace sized
    for 1 thread (then 2 threads configured) is never overrun."""
    _check_c_accumulates_and_workspace(rng, s5)


@pytest.mark.parametrize("s5", [(4, 16, 32, 32, 16), (4, 32, 16, 16, 32), (4, 64, 8, 8, 64),
                                (1, 16, 7, 7, 16), (2, 8, 14, 14, 8)])
def test_default_dispatch_on_winograd_shapes(rng, s5):
    """The automatic choice (Winograd or direct) on the eligible shapes."""
    with _switch(0):
        x, w, b, dy = _arrays(rng, _wshape(s5))
        _check_forward_backward(x, w, b, dy)


@pytest.mark.parametrize("s5", [(5, 64, 8, 8, 64), (3, 16, 7, 9, 20)])
def test_winograd_batch_invariant(rng, s5):
    """A sample's result does not depend on the batch around it (bit for bit):
    batched early-exit inference relies on it (tiles of several samples share
    a GEMM block).  The AVX-512 path only: the portable one (set_impl 5, never
    chosen automatically) hands the GEMMs to OpenBLAS, whose blocking depends
    on the column count."""
    with _switch(4):
        _check_batch_invariant(rng, s5)


def _check_batch_invariant(rng, s5):
    x, w, b, dy = _arrays(rng, _wshape(s5))
    y = _core.conv2d_forward(x, w, b, 1, 1)
    dx = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0]
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, b, 1, 1)[0], y[i])
        dxi = _core.conv2d_backward(dy[i:i + 1], x[i:i + 1], w, 1, 1, False, need_dw=False)[0]
        np.testing.assert_array_equal(dxi[0], dx[i])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(33, 8, 7, 7, 8, 3, 1, 1), (17, 16, 7, 7, 16, 3, 1, 1),
                                   (18, 4, 14, 14, 8, 3, 2, 1), (17, 8, 14, 14, 16, 1, 2, 0),
                                   (16, 3, 12, 12, 16, 3, 1, 1)])
def test_forward_batch_invariant_small_channels(rng, shape, threads):
    """Automatic dispatch: a sample's forward output is bit-identical alone
    (per-sample paths) and inside a batch whose whole groups of 16 run on the
    batch-lane path; batched early-exit inference relies on it."""
    s, p = shape[6], shape[7]
    x, w, b, _ = _arrays(rng, shape)
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(threads)
        y = _core.conv2d_forward(x, w, b, s, p)
        for i in range(x.shape[0]):
            np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, b, s, p)[0], y[i])
    finally:
        eenet.set_num_threads(old)


# ---- batch-lane forward: products with the padding skipped ----------------
# Output rows / columns whose kernel rows / columns read padding take only the
# taps that read the input (conv.c lanes_taps_build), in the full order: the
# same values, and the same bits as the per-sample paths (which multiply the
# zeros) for finite weights; with inf / NaN weights nothing is skipped.

# (N, C, H, W, K, k, stride, pad): EENet-8 f=4 8->16 stride 2 (row and
# column classes), 5x5 on 3x3 planes (a class per row), kernel rows that read
# only padding (pad 3: no taps at all in the corners), stride 3, 2 channels
# (rows only, < 36 taps)
SKIP_SHAPES = [
    (17, 8, 14, 14, 16, 3, 2, 1),
    (128, 8, 14, 14, 16, 3, 2, 1),
    (17, 3, 3, 3, 4, 5, 1, 2),
    (17, 4, 2, 3, 5, 3, 1, 3),
    (18, 5, 7, 9, 6, 3, 3, 2),
    (17, 2, 9, 9, 4, 3, 1, 1),
]


@pytest.mark.parametrize("switch", [0, 6], ids=["auto", "lanes"])
@pytest.mark.parametrize("shape", SKIP_SHAPES)
def test_lanes_skip_padding_matches_reference(rng, shape, switch):
    s, p = shape[6], shape[7]
    with _switch(switch):
        for bias in (True, False):
            x, w, b, _ = _arrays(rng, shape, bias)
            copies = [a.copy() for a in (x, w) + ((b,) if bias else ())]
            y = _core.conv2d_forward(x, w, b, s, p)
            _close(y, ref_forward(x, w, b, s, p))
            for a, c in zip((x, w) + ((b,) if bias else ()), copies):
                np.testing.assert_array_equal(a, c)


@requires_torch
@pytest.mark.parametrize("shape", SKIP_SHAPES[:2])
def test_lanes_skip_padding_matches_torch(rng, shape):
    import torch
    import torch.nn.functional as F

    s, p = shape[6], shape[7]
    x, w, b, _ = _arrays(rng, shape)
    with torch.no_grad():
        yt = F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=s, padding=p)
    _close(_core.conv2d_forward(x, w, b, s, p), yt.numpy())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SKIP_SHAPES)
def test_lanes_skip_padding_batch_invariant(rng, shape, threads):
    """Automatic dispatch: each sample alone (per-sample paths, every product)
    gives the bits it gets inside the batch (whole groups of 16 on the
    batch-lane path, padding products skipped)."""
    s, p = shape[6], shape[7]
    x, w, b, _ = _arrays(rng, shape)
    x[1] = 0.0   # a sample of zeros: sums of +-0 products only
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(threads)
        y = _core.conv2d_forward(x, w, b, s, p)
        y0 = _core.conv2d_forward(x, w, None, s, p)
        for i in range(x.shape[0]):
            np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, b, s, p)[0], y[i])
            np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, None, s, p)[0],
                                          y0[i])
    finally:
        eenet.set_num_threads(old)


@pytest.mark.parametrize("switch", [0, 6], ids=["auto", "lanes"])
def test_lanes_nonfinite_weights_multiply_padding(rng, switch):
    """With an inf and a NaN weight the lanes path multiplies the padding
    too: inf * 0 = NaN at the border as in the float64 reference (and in the
    per-sample paths: each sample alone gives the batch's bits)."""
    shape = (33, 8, 14, 14, 16, 3, 2, 1)   # 2 groups of 16 (1 or 2 threads) + 1
    s, p = shape[6], shape[7]
    x, w, b, _ = _arrays(rng, shape)
    w[3, 2, 0, 0] = np.inf      # reads the top / left padding in row / column 0
    w[5, 7, 0, 1] = np.nan
    ref = ref_forward(x, w, b, s, p)
    with _switch(switch), np.errstate(invalid="ignore"):
        y = _core.conv2d_forward(x, w, b, s, p)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
        fin = np.isfinite(ref)
        assert np.isnan(y[:, 3, 0, :]).all() and fin[:, 4:].any()
        _close(y[fin], ref[fin])
        for i in (0, 31, 32):
            np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, b, s, p)[0], y[i])


# ---- 3x3 stride-2 pad-1 forward with the output channels in the lanes
# (conv_avx512.c eenet_conv_s2_fwd, chosen by conv.c s2_pick: H even, W 14, 16
# or 32, K a multiple of 16, C, K <= 64; with inf / NaN weights the other
# paths run, see the test above): tiles of up to 16 output positions, the taps
# that read padding skipped, so on C, K <= 16 the sums are those of the
# batch-lane path with its tap classes, bit for bit.
# (N, C, H, W, K, k, stride, pad) with every tile kind: the top tile and inner
# ones, two rows (W 14: 7 + 7 positions, W 16: 8 + 8) or one (the last of an
# odd H/2; W 32: rows of 16), one and several blocks of 16 output channels.
S2_SHAPES = [
    (5, 8, 14, 14, 16, 3, 2, 1),    # EENet-8 f=4 b3: rows 0-1, 2-3, 4-5, 6
    (3, 1, 2, 14, 16, 3, 2, 1),     # one output row: a one-row top tile
    (4, 3, 4, 14, 16, 3, 2, 1),     # one two-row top tile
    (2, 16, 6, 14, 16, 3, 2, 1),    # a top tile and a one-row inner tile
    (3, 5, 16, 14, 16, 3, 2, 1),    # four two-row tiles
    (3, 32, 16, 16, 64, 3, 2, 1),   # ResNet-20 stage 3: 4 blocks of 16 channels
    (2, 7, 10, 16, 32, 3, 2, 1),    # W 16, odd H/2: a one-row last tile
    (3, 16, 32, 32, 32, 3, 2, 1),   # ResNet-20 stage 2: one-row tiles of 16
    (2, 2, 4, 32, 48, 3, 2, 1),     # W 32, 3 blocks, 2 output rows
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", S2_SHAPES)
def test_s2_matches_reference_and_lanes(rng, shape, threads):
    """With and without bias: close to the float64 reference; the same bits as
    each sample alone (at 2 threads a small batch's tiles split inside
    samples) and, with 16 channels or fewer, as the batch-lane path (set_impl
    6); inputs not modified."""
    s, p = shape[6], shape[7]
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(threads)
        for bias in (True, False):
            x, w, b, _ = _arrays(rng, shape, bias)
            x[1, :, :2] = 0.0   # zero rows: sums of +-0 products at the top
            args = (x, w) + ((b,) if bias else ())
            copies = [a.copy() for a in args]
            y = _core.conv2d_forward(x, w, b, s, p)
            _close(y, ref_forward(x, w, b, s, p))
            if shape[1] <= 16 and shape[4] <= 16:
                with _switch(6):
                    np.testing.assert_array_equal(_core.conv2d_forward(x, w, b, s, p), y)
            for i in range(x.shape[0]):
                np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, b, s, p)[0],
                                              y[i])
            for a, c in zip(args, copies):
                np.testing.assert_array_equal(a, c)
    finally:
        eenet.set_num_threads(old)


@requires_torch
@pytest.mark.parametrize("shape", S2_SHAPES)
def test_s2_matches_torch(rng, shape):
    import torch
    import torch.nn.functional as F

    s, p = shape[6], shape[7]
    x, w, b, _ = _arrays(rng, shape)
    with torch.no_grad():
        yt = F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride=s, padding=p)
    _close(_core.conv2d_forward(x, w, b, s, p), yt.numpy())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", S2_SHAPES + [(3, 3, 6, 10, 16, 3, 2, 1)])
def test_s2_backward_matches_reference(rng, shape, threads):
    """The gradients of the stride-2 layers, K <= 32 taking the channel-lane
    weight gradient (conv.c cw_pick; odd C: a last block of one channel; H = 2:
    one output row), with and without dx: close to the float64 reference;
    inputs not modified."""
    s, p = shape[6], shape[7]
    x, w, _, dy = _arrays(rng, shape)
    copies = [a.copy() for a in (x, w, dy)]
    rdx, rdw, rdb = ref_backward(dy, x, w, s, p)
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(threads)
        dx, dw, db = _core.conv2d_backward(dy, x, w, s, p, True)
        _close(dx, rdx)
        _close(dw, rdw)
        _close(db, rdb)
        _, dw1, db1 = _core.conv2d_backward(dy, x, w, s, p, True, need_dx=False)
        _close(dw1, rdw)
        _close(db1, rdb)
    finally:
        eenet.set_num_threads(old)
    for a, c in zip((x, w, dy), copies):
        np.testing.assert_array_equal(a, c)


@requires_torch
@pytest.mark.parametrize("shape", S2_SHAPES[:1] + S2_SHAPES[6:8])
def test_s2_weight_gradient_matches_torch(rng, shape):
    import torch
    import torch.nn.functional as F

    s, p = shape[6], shape[7]
    x, w, b, dy = _arrays(rng, shape)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    F.conv2d(xt, wt, bt, stride=s, padding=p).backward(torch.tensor(dy))
    _, dw, db = _core.conv2d_backward(dy, x, w, s, p, True, need_dx=False)
    _close(dw, wt.grad.numpy())
    _close(db, bt.grad.numpy())


def test_s2_nonfinite_weights_multiply_padding(rng):
    """With an inf weight on a 32-channel layer (not the batch lanes) the
    padding is multiplied too: inf * 0 = NaN in the first output row, as in
    the float64 reference."""
    shape = (3, 16, 16, 16, 32, 3, 2, 1)
    s, p = shape[6], shape[7]
    x, w, b, _ = _arrays(rng, shape)
    w[20, 2, 0, 1] = np.inf     # kernel row 0 reads the top padding in output row 0
    ref = ref_forward(x, w, b, s, p)
    with np.errstate(invalid="ignore"):
        y = _core.conv2d_forward(x, w, b, s, p)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y[:, 20, 0, :]).all()
    fin = np.isfinite(ref)
    _close(y[fin], ref[fin])


def test_winograd_forced_beyond_128_channels_falls_back(rng, wino_impl):
    """Above 128 channels no Winograd buffers are reserved: the forced switch
    leaves such layers to the other paths, with the same results."""
    shape = _wshape((2, 130, 5, 4, 9))
    x, w, b, dy = _arrays(rng, shape)
    _check_forward_backward(x, w, b, dy)


# ---- batch-lane Winograd F(2x2,3x3) (conv_wlanes.c), forced with set_impl 7 --
# Whole groups of 16 samples run with the samples in the vector lanes, the
# samples left over with 16 tiles of one sample per vector: both must give
# the same bits for a sample.

# (N, C, H, W, K): batches 1, 15, 16, 17 and 128 (groups and leftovers),
# channels 1..16, the EENet-8 planes (7x7, 14x14, 28x28) and odd sizes
WLANES_SHAPES = [
    (1, 16, 7, 7, 16),
    (15, 16, 7, 7, 16),
    (16, 16, 7, 7, 16),
    (17, 16, 7, 7, 16),
    (128, 16, 7, 7, 16),
    (17, 8, 7, 7, 8),
    (33, 8, 14, 14, 8),
    (16, 4, 14, 14, 4),
    (17, 4, 28, 28, 4),
    (15, 1, 28, 28, 2),
    (18, 3, 5, 9, 5),     # odd sizes: tiles overhang the bottom and right
    (17, 16, 3, 2, 7),    # plane smaller than a tile, K not a power of 2
    (17, 5, 13, 31, 11),  # rows wider than 16 (the gathered tile-mode path)
]


@pytest.fixture
def wlanes_impl():
    with _switch(7):
        yield 7


@pytest.mark.parametrize("s5", WLANES_SHAPES)
def test_wlanes_matches_numpy(rng, s5, wlanes_impl):
    shape = _wshape(s5)
    for bias in (True, False):
        x, w, b, dy = _arrays(rng, shape, bias)
        ref = ref_forward(x, w, b, 1, 1)
        y = _core.conv2d_forward(x, w, b, 1, 1)
        _close(y, ref)
        assert _max_rel(y, ref) < 2e-6
        rdx, rdw, rdb = ref_backward(dy, x, w, 1, 1)
        dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, bias)
        _close(dx, rdx)
        _close(dw, rdw)
        assert _max_rel(dx, rdx) < 2e-6
        if bias:
            _close(db, rdb)
        dx3, dw3, _ = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)
        assert dw3 is None
        np.testing.assert_array_equal(dx3, dx)


@pytest.mark.parametrize("s5", [(37, 16, 7, 7, 16), (37, 8, 14, 14, 8), (20, 3, 5, 9, 5),
                                (19, 5, 13, 31, 11)])
@pytest.mark.parametrize("threads", [1, 2])
def test_wlanes_batch_invariant(rng, s5, threads):
    """A sample's forward output and input gradient are bit-identical alone
    (16 tiles per vector) and inside a batch of 37 (16 samples per vector for
    two groups, then 5 alone), on 1 or 2 threads."""
    old_t = eenet.get_num_threads()
    try:
        with _switch(7):
            eenet.set_num_threads(threads)
            _check_batch_invariant(rng, s5)
    finally:
        eenet.set_num_threads(old_t)


@pytest.mark.parametrize("s5", [(40, 16, 7, 7, 16), (3, 16, 7, 7, 16), (35, 4, 28, 28, 4)])
def test_wlanes_threads_give_same_bits(rng, s5, wlanes_impl):
    x, w, b, dy = _arrays(rng, _wshape(s5))
    old = eenet.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            eenet.set_num_threads(t)
            outs.append((_core.conv2d_forward(x, w, b, 1, 1),
                         _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0]))
    finally:
        eenet.set_num_threads(old)
    for a, r in zip(*outs):
        np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("s5", [(35, 16, 7, 7, 16), (3, 8, 14, 14, 8)])
def test_wlanes_c_accumulates_and_respects_workspace(rng, s5, wlanes_impl):
    """Through the C API: backward-data ADDS into dinp; a workspace sized for
    1 thread (then 2 threads configured) is never overrun."""
    _check_c_accumulates_and_workspace(rng, s5)


@pytest.mark.parametrize("scale", [1e4, 1e-4])
@pytest.mark.parametrize("switch", [7, 0], ids=["wlanes-f2x2", "auto-wl4-f4x4"])
def test_batch_lane_large_and_small_values(rng, scale, switch):
    """16->16 7x7 forward and data gradient at large and small magnitudes, on the
    batch-lane F(2x2) path (switch 7) and the automatic F(4x4) channel-lane path."""
    with _switch(switch):
        x, w, b, dy = _arrays(rng, _wshape((17, 16, 7, 7, 16)))
        x *= scale
        dy *= scale
        b *= scale
        ref = ref_forward(x, w, b, 1, 1)
        np.testing.assert_allclose(_core.conv2d_forward(x, w, b, 1, 1), ref, rtol=RTOL,
                                   atol=ATOL * np.abs(ref).max())
        rdx = ref_backward(dy, x, w, 1, 1)[0]
        dx = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0]
        np.testing.assert_allclose(dx, rdx, rtol=RTOL, atol=ATOL * np.abs(rdx).max())


@pytest.mark.parametrize("s5", [(37, 16, 7, 7, 16), (21, 16, 8, 8, 16), (18, 16, 14, 14, 16)])
def test_auto_batch_invariant_on_wlanes_shapes(rng, s5):
    """Automatic dispatch on the shapes where the batch-lane Winograd path is
    chosen: forward and input gradient bit-identical alone and in a batch."""
    with _switch(0):
        _check_batch_invariant(rng, s5)
        x, w, b, dy = _arrays(rng, _wshape(s5))
        _check_forward_backward(x, w, b, dy)


@pytest.mark.parametrize("shape", [(3, 64, 8, 8, 64, 3, 1, 1), (2, 32, 16, 16, 32, 3, 1, 1),
                                   (5, 16, 32, 32, 16, 3, 1, 1), (4, 16, 8, 8, 64, 3, 1, 1),
                                   (3, 16, 8, 8, 16, 3, 1, 1),
                                   (2, 8, 9, 9, 8, 3, 1, 1), (3, 32, 16, 16, 64, 3, 2, 1),
                                   (5, 16, 7, 7, 16, 3, 1, 1), (17, 16, 14, 14, 16, 3, 1, 1),
                                   (3, 8, 14, 14, 8, 3, 1, 1)])
def test_c_prepared_weights_same_bits(rng, shape, impl):
    """eenet_conv2d_forward_prepared with weights prepared once (the engine's eval
    mode) gives the bits of eenet_conv2d_forward_ex, which transforms them at each
    call; a prep of other weights is used only under its tag (tag 0: ignored)."""
    lib = _lib()
    N, C, H, W, K, _, s, p = shape
    x, w, b, _ = _arrays(rng, shape)
    nt = eenet.get_num_threads()
    ws = np.empty(lib.eenet_conv2d_workspace_floats(N, C, H, W, K, 3, 3, s, p, nt), np.float32)
    want = np.empty((N, K) + ref_forward(x[:1], w, b, s, p).shape[2:], np.float32)
    assert lib.eenet_conv2d_forward_ex(_p(want), _p(x), _p(w), _p(b), _p(ws), N, C, H, W, K, 3,
                                       3, s, p, nt) == 0
    _close(want, ref_forward(x, w, b, s, p))
    prep = np.full(lib.eenet_conv2d_prepared_floats(C, H, W, K, 3, 3, s, p) + 1, np.nan,
                   np.float32)
    tag = lib.eenet_conv2d_prepare(_p(prep), _p(w), C, H, W, K, 3, 3, s, p)
    winograd = (impl in (4, 5) and s == 1) or (
        impl == 0 and (C, K, H) in ((64, 64, 8), (32, 32, 16), (16, 16, 32))) or (
        impl == 8 and s == 1 and W == 32 and H % 8 == 0)
    w4 = (W == 32 and H % 8 == 0) or (W == 16 and H % 16 == 0) or H == W == 8
    if _avx512() and s == 1 and w4 and (
            impl == 8 or (impl == 0 and (C, K, H, W) in ((16, 16, 32, 32), (32, 32, 16, 16)))):
        assert tag == 4   # the F(4x4) forward (conv_wino4.c) is chosen
    # the batch-lane Winograd path (16->16 on 14x14, or forced by 7)
    wlanes = (impl in (0, 7) and (C, K, H) == (16, 16, 14)) or (
        impl == 7 and s == 1 and max(C, K) <= 16 and H * W <= 1024)
    # the channel-lane F(4x4) path (16->16 on 7x7/8x8, or forced by 9)
    if _avx512() and s == 1 and (C, K) == (16, 16) and (
            (impl == 0 and H == W == 7) or (impl == 9 and 4 < H <= 8 and 4 < W <= 8)):
        assert tag == 5
    # the tile-lane F(4x4) path (8->8 on 14x14, or forced by 10)
    if _avx512() and s == 1 and max(C, K) <= 16 and (
            (impl == 0 and (C, K, H, W) == (8, 8, 14, 14)) or (impl == 10 and 12 < H <= 16
                                                              and 12 < W <= 16)):
        assert tag == 6
    if winograd or wlanes:
        assert tag != 0   # the Winograd paths: their transformed weights are kept
    got = np.empty_like(want)
    assert lib.eenet_conv2d_forward_prepared(_p(got), _p(x), _p(w), _p(prep), tag, _p(b), _p(ws),
                                             N, C, H, W, K, 3, 3, s, p, nt) == 0
    np.testing.assert_array_equal(got, want)
    if tag:
        # a prep made from other weights is what the call uses (w is not read)
        w2 = (w * 2).astype(np.float32)
        assert lib.eenet_conv2d_prepare(_p(prep), _p(w2), C, H, W, K, 3, 3, s, p) == tag
        assert lib.eenet_conv2d_forward_prepared(_p(got), _p(x), _p(w), _p(prep), tag, _p(b),
                                                 _p(ws), N, C, H, W, K, 3, 3, s, p, nt) == 0
        _close(got, ref_forward(x, w2, b, s, p))
        # under another tag it is ignored
        assert lib.eenet_conv2d_forward_prepared(_p(got), _p(x), _p(w), _p(prep), tag + 7,
                                                 _p(b), _p(ws), N, C, H, W, K, 3, 3, s, p,
                                                 nt) == 0
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(3, 64, 8, 8, 64, 3, 1, 1), (5, 16, 32, 32, 16, 3, 1, 1),
                                   (2, 32, 16, 16, 32, 3, 1, 1), (2, 8, 9, 9, 8, 3, 1, 1),
                                   (3, 32, 16, 16, 64, 3, 2, 1), (5, 16, 7, 7, 16, 3, 1, 1),
                                   (4, 16, 8, 8, 32, 1, 2, 0), (3, 8, 14, 14, 8, 3, 1, 1)])
def test_c_fused_epilogue_same_bits(rng, shape, impl):
    """eenet_conv2d_forward_fused (the engine's eval mode with a batch norm folded
    into the conv) gives the bits of the conv followed by the add and ReLU kernels:
    relu(conv + residual), conv + residual and relu(conv), on every path (the
    Winograd paths apply them in their output transform, the others after)."""
    lib = _lib()
    N, C, H, W, K, k, s, p = shape
    x, w, b, _ = _arrays(rng, shape)
    nt = eenet.get_num_threads()
    ws = np.empty(lib.eenet_conv2d_workspace_floats(N, C, H, W, K, k, k, s, p, nt), np.float32)
    conv = np.empty((N, K) + ref_forward(x[:1], w, b, s, p).shape[2:], np.float32)
    assert lib.eenet_conv2d_forward_ex(_p(conv), _p(x), _p(w), _p(b), _p(ws), N, C, H, W, K, k,
                                       k, s, p, nt) == 0
    residual = rng.standard_normal(conv.shape).astype(np.float32)
    res0 = residual.copy()
    prep = np.empty(lib.eenet_conv2d_prepared_floats(C, H, W, K, k, k, s, p) + 1, np.float32)
    tag = lib.eenet_conv2d_prepare(_p(prep), _p(w), C, H, W, K, k, k, s, p)
    cases = [(residual, 1, ops.add(conv, residual, relu=True)),
             (residual, 0, ops.add(conv, residual)), (None, 1, ops.relu(conv)), (None, 0, conv)]
    for res, relu, want in cases:
        got = np.full_like(conv, np.nan)
        assert lib.eenet_conv2d_forward_fused(_p(got), _p(x), _p(w), _p(prep), tag, _p(b),
                                              _p(res), relu, _p(ws), N, C, H, W, K, k, k, s, p,
                                              nt) == 0
        np.testing.assert_array_equal(got, want)
        assert (got < 0).any() == (not relu)   # the ReLU did (or did not) run
    np.testing.assert_array_equal(residual, res0)



# ---- Winograd F(4x4,3x3) (conv_wino4.c) -------------------------------------
# Chosen automatically for the forward of 16->16 32x32 (the ResNet/EENet CIFAR
# stage 1) and the backward-data of 16..64 -> 16..64 channels on 32x32 planes (a
# K -> C forward of dy with the flipped, transposed kernel), forced with
# set_impl 8 for both on every 3x3 stride-1 pad-1 layer on 32-wide planes with
# H a multiple of 8; the weight gradient keeps the other paths.

def _avx512():
    lib = ctypes.CDLL(_core.__file__)
    return lib.eenet_conv_direct_available() == 1


@pytest.mark.parametrize("n", [1, 3, 16])
def test_wino4_auto_forward_matches_numpy(rng, n):
    """Automatic dispatch on 16->16 32x32 (F(4x4) on AVX-512 CPUs) through the
    public ops API, with and without bias, against the float64 reference; the
    output transform puts every tile's 4x4 outputs at the right place, so a
    plane of distinct impulses comes back as the filter at each of them."""
    with _switch(0):
        for bias in (True, False):
            x, w, b, _ = _arrays(rng, _wshape((n, 16, 32, 32, 16)), bias)
            y = ops.conv2d(x, w, b, padding=1)
            assert y.shape == (n, 16, 32, 32) and y.dtype == np.float32
            _close(y, ref_forward(x, w, b, 1, 1))
        # impulses at tile corners and borders: exact positions of the outputs
        x = np.zeros((1, 16, 32, 32), np.float32)
        for c, (yy, xx) in enumerate([(0, 0), (3, 4), (31, 31), (4, 3), (16, 15), (7, 28),
                                      (28, 7), (12, 12)]):
            x[0, c, yy, xx] = 1.0 + c
        _close(ops.conv2d(x, w, None, padding=1), ref_forward(x, w, None, 1, 1))


@pytest.mark.parametrize("s5", [(2, 16, 32, 32, 16), (1, 3, 32, 32, 16), (2, 16, 16, 32, 32),
                                (3, 5, 8, 32, 7), (1, 16, 64, 32, 16), (17, 16, 32, 32, 16),
                                (2, 16, 16, 16, 16), (1, 3, 48, 16, 5), (17, 16, 16, 16, 16),
                                (2, 64, 32, 16, 64), (5, 64, 8, 8, 64), (1, 3, 8, 8, 16),
                                (7, 16, 8, 8, 16)])
def test_wino4_forced_matches_numpy(rng, s5):
    """set_impl 8: the F(4x4) forward and backward-data on its other shapes (3
    and 5 input channels, 7 and 32 output channels, 8/16/64-row 32-wide planes,
    16/32/48-row 16-wide planes, 8x8 planes (4 samples per vector: batches of
    1, 5, 7), batches spanning several GEMM blocks); the weight gradient (other
    paths) stays right."""
    with _switch(8):
        for bias in (True, False):
            x, w, b, dy = _arrays(rng, _wshape(s5), bias)
            _check_forward_backward(x, w, b, dy)


def test_wino4_accuracy_margin():
    """The F(4x4) transforms grow the float32 rounding error over F(2x2) (points
    0, +-1, +-2); over several seeds it stays well inside the tolerance every
    test applies (rtol 1e-4, atol 1e-5 x max|ref|): worst error/tolerance
    measured 0.30 (x, w standard normal); fail above 0.6."""
    worst = 0.0
    with _switch(0):
        for seed in range(6):
            r = np.random.default_rng(1000 + seed)
            x, w, b, _ = _arrays(r, _wshape((4, 16, 32, 32, 16)))
            ref = ref_forward(x, w, b, 1, 1)
            y = _core.conv2d_forward(x, w, b, 1, 1)
            tol = RTOL * np.abs(ref) + ATOL * max(1.0, float(np.abs(ref).max()))
            worst = max(worst, float((np.abs(y - ref) / tol).max()))
    assert 0.0 < worst < 0.6


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [5, 16])
def test_wino4_batch_invariant(rng, n, threads):
    """Automatic dispatch on 16->16 32x32: a sample's forward bits are the same
    alone and inside a batch (batched early-exit inference relies on it), and
    the same with 1 and 2 threads."""
    x, w, b, _ = _arrays(rng, _wshape((n, 16, 32, 32, 16)))
    old = eenet.get_num_threads()
    try:
        with _switch(0):
            eenet.set_num_threads(1)
            y1 = _core.conv2d_forward(x, w, b, 1, 1)
            eenet.set_num_threads(threads)
            y = _core.conv2d_forward(x, w, b, 1, 1)
            np.testing.assert_array_equal(y, y1)
            for i in range(n):
                np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, b, 1, 1)[0],
                                              y[i])
            # a batch cut at other places (blocks of GEMM columns span samples)
            np.testing.assert_array_equal(_core.conv2d_forward(x[1:4], w, b, 1, 1), y[1:4])
    finally:
        eenet.set_num_threads(old)


@pytest.mark.parametrize("impl_s5", [(0, (4, 16, 32, 32, 16)), (8, (3, 5, 16, 32, 40)),
                                     (8, (2, 40, 8, 32, 3)), (0, (2, 32, 32, 32, 64)),
                                     (0, (5, 32, 16, 16, 32)), (0, (3, 64, 16, 16, 64)),
                                     (8, (3, 5, 32, 16, 40)), (0, (5, 64, 8, 8, 64)),
                                     (8, (3, 5, 8, 8, 40))])
def test_wino4_c_respects_workspace(rng, impl_s5):
    """Through the C API, F(4x4) forward and backward-data (auto on 16->16
    32x32, forced on C != K): a workspace sized for 1 thread (then 2 threads
    configured) is never overrun, and the backward (dx through F(4x4)) still
    accumulates."""
    sw, s5 = impl_s5
    with _switch(sw):
        _check_c_accumulates_and_workspace(rng, s5)


# backward-data through the F(4x4) forward: (switch, (N, C, H, W, K)) where it is
# chosen automatically (16..64 channels on 32x32 planes; batches spanning GEMM
# blocks and samples) and forced (set_impl 8: few channels, C != K, 8/16/64 rows)
WINO4_BD_CASES = [(0, (1, 16, 32, 32, 16)), (0, (3, 16, 32, 32, 16)), (0, (17, 16, 32, 32, 16)),
                  (0, (2, 16, 32, 32, 32)), (0, (2, 32, 32, 32, 16)), (0, (1, 64, 32, 32, 64)),
                  (8, (2, 3, 32, 32, 16)), (8, (3, 5, 16, 32, 40)), (8, (2, 40, 8, 32, 3)),
                  (8, (1, 16, 64, 32, 16)),
                  # 16x16 planes (ResNet/EENet CIFAR stage 2): 16..64 channels
                  (0, (1, 32, 16, 16, 32)), (0, (3, 32, 16, 16, 32)), (0, (128, 32, 16, 16, 32)),
                  (0, (2, 16, 16, 16, 16)), (0, (5, 64, 16, 16, 64)), (0, (2, 16, 16, 16, 32)),
                  (0, (3, 32, 16, 16, 16)), (8, (2, 3, 32, 16, 16)), (8, (17, 5, 16, 16, 7)),
                  # 8x8 planes (stage 3): 32..64 channels, 4 samples per vector
                  (0, (1, 64, 8, 8, 64)), (0, (5, 64, 8, 8, 64)), (0, (128, 32, 8, 8, 32)),
                  (0, (3, 32, 8, 8, 64)), (0, (2, 64, 8, 8, 32)), (8, (6, 3, 8, 8, 5)),
                  (8, (2, 16, 8, 8, 16))]


def _check_dx_and_full_backward(dy, x, w, s, copies):
    """dx of conv2d_backward(need_dw=False) against the float64 reference, then
    the full backward (with bias) giving the same dx bits and the right dw, db;
    the inputs not modified.  Returns (dx, rdx)."""
    rdx, rdw, rdb = ref_backward(dy, x, w, s, 1)
    dx = _core.conv2d_backward(dy, x, w, s, 1, False, need_dw=False)[0]
    _close(dx, rdx)
    dx2, dw2, db2 = _core.conv2d_backward(dy, x, w, s, 1, True)
    np.testing.assert_array_equal(dx2, dx)
    _close(dw2, rdw)
    _close(db2, rdb)
    for a, c in zip((x, w, dy), copies):
        np.testing.assert_array_equal(a, c)
    return dx, rdx


@pytest.mark.parametrize("sw_s5", WINO4_BD_CASES)
def test_wino4_backward_data_matches_numpy(rng, sw_s5):
    """Backward-data through the F(4x4) forward against the float64 reference
    (error over the tolerance reported, < 0.5), with and without the weight
    and bias gradients (same dx bits; dw, db right), inputs not modified; the
    path is the one taken (its bits differ from F(2x2), set_impl 4)."""
    sw, s5 = sw_s5
    with _switch(sw):
        x, w, b, dy = _arrays(rng, _wshape(s5))
        copies = [a.copy() for a in (x, w, dy)]
        dx, rdx = _check_dx_and_full_backward(dy, x, w, 1, copies)
        err = _wl4_err(dx, rdx)
        print(f"F(4x4) backward-data {s5}: error / tolerance {err:.3f}")
        assert 0.0 < err < 0.5
    if _avx512():
        with _switch(4):
            assert not np.array_equal(
                _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0], dx)


@requires_torch
@pytest.mark.parametrize("sw_s5", [WINO4_BD_CASES[i] for i in (1, 3, 4, 7, 9, 11, 12, 14, 17,
                                                                20, 22, 24)])
def test_wino4_backward_data_matches_torch(rng, sw_s5):
    """Backward-data through F(4x4) against PyTorch's autograd (and the weight
    and bias gradients beside it)."""
    import torch
    import torch.nn.functional as F

    sw, s5 = sw_s5
    x, w, b, dy = _arrays(rng, _wshape(s5))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    F.conv2d(xt, wt, bt, stride=1, padding=1).backward(torch.tensor(dy))
    with _switch(sw):
        dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, True)
    _close(dx, xt.grad.numpy())
    _close(dw, wt.grad.numpy())
    _close(db, bt.grad.numpy())


def test_wino4_backward_data_accuracy_margin():
    """F(4x4)'s float32 rounding error in the data gradient (x, w, dy standard
    normal, automatic dispatch; worst error over the tolerance every test
    applies, rtol 1e-4 + atol 1e-5 x max|ref|): measured over 10 seeds 0.14 on
    16->16 (F(2x2) 0.020), 0.25 on 64->64; fail above 0.5."""
    worst = 0.0
    with _switch(0):
        for seed in range(6):
            r = np.random.default_rng(3000 + seed)
            s5 = (4, 16, 32, 32, 16) if seed < 5 else (2, 64, 32, 32, 64)
            x, w, _, dy = _arrays(r, _wshape(s5), bias=False)
            dx = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0]
            worst = max(worst, _wl4_err(dx, ref_backward(dy, x, w, 1, 1)[0]))
    assert 0.0 < worst < 0.5


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sw_s5", [(0, (5, 16, 32, 32, 16)), (8, (3, 8, 16, 32, 24)),
                                   (0, (5, 32, 16, 16, 32)), (0, (3, 64, 16, 16, 64)),
                                   (8, (3, 8, 32, 16, 24)), (0, (7, 64, 8, 8, 64)),
                                   (8, (6, 16, 8, 8, 24))])
def test_wino4_backward_data_batch_invariant(rng, sw_s5, threads):
    """A sample's input gradient (and forward output) is bit-identical alone
    and inside a batch, on 1 or 2 threads, and the same on 1 and 2 threads."""
    sw, s5 = sw_s5
    old = eenet.get_num_threads()
    try:
        with _switch(sw):
            x, w, _, dy = _arrays(rng, _wshape(s5))
            eenet.set_num_threads(1)
            dx1 = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0]
            eenet.set_num_threads(threads)
            np.testing.assert_array_equal(
                _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0], dx1)
            _check_batch_invariant(rng, s5)
    finally:
        eenet.set_num_threads(old)


# ---- F(4x4) on 16-wide planes (16x16: ResNet/EENet CIFAR stage 2) -------------
# One vector of 16 tiles per 16x16 plane.  Chosen automatically for the forward
# of 32->32 (16->32, 32->16) and the data gradient of 16..64 channels on 16x16
# planes; the forward of 16->16 and 64->64 keeps F(2x2) (conv.c wino4_pick16:
# the eenet20 and eenet50 gradient tests in test_net.py).

# (switch, (N, C, H, W, K)): automatic and forced forward cases
WINO4_16_FWD_CASES = [(0, (1, 32, 16, 16, 32)), (0, (3, 32, 16, 16, 32)),
                      (0, (128, 32, 16, 16, 32)), (0, (2, 16, 16, 16, 32)),
                      (0, (5, 32, 16, 16, 16)), (8, (2, 16, 16, 16, 16)),
                      (8, (1, 3, 16, 16, 16)), (8, (3, 5, 32, 16, 7)), (8, (17, 64, 16, 16, 64))]


@pytest.mark.parametrize("sw_s5", WINO4_16_FWD_CASES)
def test_wino4_16_forward_matches_numpy(rng, sw_s5):
    """Forward through F(4x4) on 16-wide planes against the float64 reference
    (bias or not; error over the tolerance reported, < 0.5), inputs not
    modified, and the path is the one taken (its bits differ from F(2x2),
    set_impl 4)."""
    sw, s5 = sw_s5
    with _switch(sw):
        for bias in (True, False):
            x, w, b, _ = _arrays(rng, _wshape(s5), bias)
            copies = [a.copy() for a in (x, w)]
            y = _core.conv2d_forward(x, w, b, 1, 1)
            ref = ref_forward(x, w, b, 1, 1)
            _close(y, ref)
            err = _wl4_err(y, ref)
            print(f"F(4x4) forward {s5} bias {bias}: error / tolerance {err:.3f}")
            assert 0.0 < err < 0.5
            for a, c in zip((x, w), copies):
                np.testing.assert_array_equal(a, c)
    if _avx512():
        with _switch(4):
            assert not np.array_equal(_core.conv2d_forward(x, w, b, 1, 1), y)


def test_wino4_16_forward_impulses():
    """The output transform puts every tile's 4x4 outputs at the right place of a
    16x16 plane: distinct impulses at tile corners and borders come back as the
    filter around each of them (automatic dispatch, 32->32)."""
    r = np.random.default_rng(7)
    w = r.standard_normal((32, 32, 3, 3)).astype(np.float32)
    x = np.zeros((2, 32, 16, 16), np.float32)
    spots = [(0, 0), (3, 4), (15, 15), (4, 3), (8, 7), (7, 12), (12, 7), (11, 11), (0, 15),
             (15, 0), (4, 4), (3, 3)]
    for c, (yy, xx) in enumerate(spots):
        x[c % 2, c, yy, xx] = 1.0 + c
    with _switch(0):
        y = ops.conv2d(x, w, None, padding=1)
    _close(y, ref_forward(x, w, None, 1, 1))


@pytest.mark.parametrize("s5", [(3, 16, 16, 16, 16), (3, 64, 16, 16, 64), (3, 64, 8, 8, 64),
                                (5, 32, 8, 8, 32)])
def test_wino4_forward_not_chosen(rng, s5):
    """16->16 and 64->64 on 16x16 keep the F(2x2) forward in the automatic
    dispatch (their F(4x4) forward moves the eenet20 / eenet50 gradient tests
    of test_net.py past their tolerance, see conv.c wino4_pick16), and so do
    the 8x8 planes (F(4x4) is slower for one sample there, wino4_pick8): the
    bits of set_impl 4."""
    if not _avx512():
        pytest.skip("F(4x4) and the AVX-512 F(2x2) need AVX-512")
    x, w, b, _ = _arrays(rng, _wshape(s5))
    with _switch(0):
        y = _core.conv2d_forward(x, w, b, 1, 1)
    with _switch(4):
        np.testing.assert_array_equal(_core.conv2d_forward(x, w, b, 1, 1), y)


@requires_torch
@pytest.mark.parametrize("sw_s5", [WINO4_16_FWD_CASES[i] for i in (0, 2, 3, 6, 8)])
def test_wino4_16_matches_torch(rng, sw_s5):
    """Forward, data gradient (F(4x4)) and weight/bias gradients (other paths)
    on 16-wide planes against PyTorch."""
    import torch
    import torch.nn.functional as F

    sw, s5 = sw_s5
    x, w, b, dy = _arrays(rng, _wshape(s5))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = F.conv2d(xt, wt, bt, stride=1, padding=1)
    yt.backward(torch.tensor(dy))
    with _switch(sw):
        y = _core.conv2d_forward(x, w, b, 1, 1)
        dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, True)
    _close(y, yt.detach().numpy())
    _close(dx, xt.grad.numpy())
    _close(dw, wt.grad.numpy())
    _close(db, bt.grad.numpy())


def test_wino4_16_accuracy_margin():
    """F(4x4)'s float32 rounding error on 32->32 16x16 (x, w, dy standard
    normal, automatic dispatch; worst error over the tolerance rtol 1e-4 + atol
    1e-5 x max|ref|): measured over 20 seeds of 4 samples forward 0.138,
    backward-data 0.153 (F(2x2), set_impl 4: 0.026 / 0.031); fail above 0.5."""
    worst = [0.0, 0.0]
    with _switch(0):
        for seed in range(5):
            r = np.random.default_rng(5000 + seed)
            x, w, b, dy = _arrays(r, _wshape((4, 32, 16, 16, 32)))
            worst[0] = max(worst[0], _wl4_err(_core.conv2d_forward(x, w, b, 1, 1),
                                              ref_forward(x, w, b, 1, 1)))
            dx = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)[0]
            worst[1] = max(worst[1], _wl4_err(dx, ref_backward(dy, x, w, 1, 1)[0]))
    assert 0.0 < worst[0] < 0.5 and 0.0 < worst[1] < 0.5


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sw_s5", [(0, (5, 32, 16, 16, 32)), (0, (17, 32, 16, 16, 16)),
                                   (8, (6, 16, 16, 16, 16))])
def test_wino4_16_forward_batch_invariant(rng, sw_s5, threads):
    """A sample's forward bits are the same alone and inside a batch (blocks of
    4 planes span samples), cut at other places, on 1 or 2 threads, and the same
    with 1 and 2 threads."""
    sw, s5 = sw_s5
    x, w, b, _ = _arrays(rng, _wshape(s5))
    old = eenet.get_num_threads()
    try:
        with _switch(sw):
            eenet.set_num_threads(1)
            y1 = _core.conv2d_forward(x, w, b, 1, 1)
            eenet.set_num_threads(threads)
            y = _core.conv2d_forward(x, w, b, 1, 1)
            np.testing.assert_array_equal(y, y1)
            for i in range(x.shape[0]):
                np.testing.assert_array_equal(_core.conv2d_forward(x[i:i + 1], w, b, 1, 1)[0],
                                              y[i])
            np.testing.assert_array_equal(_core.conv2d_forward(x[1:4], w, b, 1, 1), y[1:4])
    finally:
        eenet.set_num_threads(old)


# ---- channel-lane Winograd F(4x4,3x3) (conv_wl4.c) ----------------------------
# Chosen automatically for forward, backward-data and weight gradient of 16->16
# on 7x7 planes (EENet-8 f=4), forced with set_impl 9 on every 16->16 plane with
# 4 < H, W <= 8.  One sample at a time (channels in the lanes): a sample's bits
# never depend on its batch or the thread count.

WL4_SHAPES = [(1, 16, 7, 7, 16), (5, 16, 7, 7, 16), (16, 16, 7, 7, 16), (17, 16, 7, 7, 16),
              (32, 16, 7, 7, 16), (128, 16, 7, 7, 16)]


def _wl4_err(y, ref):
    """Worst |y - ref| over the tests' tolerance rtol + atol x max|ref|."""
    tol = RTOL * np.abs(ref) + ATOL * max(1.0, float(np.abs(ref).max()))
    return float((np.abs(y - ref) / tol).max())


@pytest.mark.parametrize("sw_s5", [(0, s) for s in WL4_SHAPES] + [
    (9, (3, 16, 5, 5, 16)), (9, (18, 16, 6, 8, 16)), (9, (2, 16, 8, 5, 16)),
    (9, (1, 16, 8, 8, 16)), (9, (17, 16, 8, 8, 16))])
def test_wl4_matches_numpy(rng, sw_s5):
    """Forward and data gradient against the float64 reference (bias or not;
    batches with and without whole groups of 16), and the path is the one
    taken (its bits differ from the F(2x2) batch lanes of set_impl 7)."""
    sw, s5 = sw_s5
    with _switch(sw):
        shape = _wshape(s5)
        for bias in (True, False):
            x, w, b, dy = _arrays(rng, shape, bias)
            ref = ref_forward(x, w, b, 1, 1)
            y = _core.conv2d_forward(x, w, b, 1, 1)
            _close(y, ref)
            assert _wl4_err(y, ref) < 0.5
            rdx, rdw, rdb = ref_backward(dy, x, w, 1, 1)
            dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, bias)
            _close(dx, rdx)
            assert _wl4_err(dx, rdx) < 0.5
            _close(dw, rdw)
            assert _wl4_err(dw, rdw) < 0.5
            if bias:
                _close(db, rdb)
            dx3, dw3, _ = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)
            assert dw3 is None
            np.testing.assert_array_equal(dx3, dx)
            dx4, dw4, db4 = _core.conv2d_backward(dy, x, w, 1, 1, bias, need_dx=False)
            assert dx4 is None
            np.testing.assert_array_equal(dw4, dw)
            if bias:
                np.testing.assert_array_equal(db4, db)
            if _avx512():
                with _switch(7):
                    assert not np.array_equal(_core.conv2d_forward(x, w, b, 1, 1), y)


def test_wl4_accuracy_margin():
    """F(4x4)'s float32 rounding error on 16->16 7x7 (x, w, dy standard normal,
    8 seeds of 4 samples; the weight gradient also at 128 samples, its sums
    over 512 tiles): worst error over the tolerance every test applies
    (rtol 1e-4, atol 1e-5 x max|ref|) measured 0.15 for forward and
    backward-data, 0.12 for the weight gradient (40 seeds of 4, 10 of 128); fail
    above 0.3."""
    worst = [0.0, 0.0]
    with _switch(0):
        for seed in range(8):
            r = np.random.default_rng(2000 + seed)
            x, w, b, dy = _arrays(r, _wshape((4 if seed < 6 else 128, 16, 7, 7, 16)))
            rdx, rdw, _ = ref_backward(dy, x, w, 1, 1)
            dx, dw, _ = _core.conv2d_backward(dy, x, w, 1, 1, False)
            worst[1] = max(worst[1], _wl4_err(dw, rdw))
            if seed < 6:
                worst[0] = max(worst[0], _wl4_err(_core.conv2d_forward(x, w, b, 1, 1),
                                                  ref_forward(x, w, b, 1, 1)),
                               _wl4_err(dx, rdx))
    assert 0.0 < worst[0] < 0.3 and 0.0 < worst[1] < 0.3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sw_s5", [(0, (37, 16, 7, 7, 16)), (9, (19, 16, 8, 8, 16)),
                                   (9, (18, 16, 6, 5, 16))])
def test_wl4_batch_invariant(rng, sw_s5, threads):
    """A sample's forward output and input gradient are bit-identical alone and
    inside a batch (and a batch cut elsewhere), on 1 or 2 threads."""
    sw, s5 = sw_s5
    old_t = eenet.get_num_threads()
    try:
        with _switch(sw):
            eenet.set_num_threads(threads)
            _check_batch_invariant(rng, s5)
            x, w, b, _ = _arrays(rng, _wshape(s5))
            np.testing.assert_array_equal(_core.conv2d_forward(x[3:8], w, b, 1, 1),
                                          _core.conv2d_forward(x, w, b, 1, 1)[3:8])
    finally:
        eenet.set_num_threads(old_t)


@pytest.mark.parametrize("sw_s5", [(0, (40, 16, 7, 7, 16)), (0, (3, 16, 7, 7, 16)),
                                   (9, (33, 16, 8, 8, 16))])
def test_wl4_threads_give_same_bits(rng, sw_s5):
    sw, s5 = sw_s5
    x, w, b, dy = _arrays(rng, _wshape(s5))
    old = eenet.get_num_threads()
    try:
        with _switch(sw):
            outs = []
            for t in (1, 2):
                eenet.set_num_threads(t)
                outs.append((_core.conv2d_forward(x, w, b, 1, 1),)
                            + _core.conv2d_backward(dy, x, w, 1, 1, True))
    finally:
        eenet.set_num_threads(old)
    for a, r in zip(outs[0][:2], outs[1][:2]):
        np.testing.assert_array_equal(a, r)
    # the weight and bias gradients sum per-thread partials: equal to rounding
    for a, r in zip(outs[0][2:], outs[1][2:]):
        _close(a, r)


@pytest.mark.parametrize("sw_s5", [(0, (35, 16, 7, 7, 16)), (9, (3, 16, 8, 8, 16)),
                                   (9, (5, 16, 6, 7, 16))])
def test_wl4_c_accumulates_and_respects_workspace(rng, sw_s5):
    """Through the C API: backward-data ADDS into dinp; a workspace sized for
    1 thread (then 2 threads configured) is never overrun."""
    sw, s5 = sw_s5
    with _switch(sw):
        _check_c_accumulates_and_workspace(rng, s5)


# ---- tile-lane Winograd F(4x4,3x3) (conv_tl4.c) -----------------------------
# Chosen automatically for forward, backward-data and weight gradient of 8->8 on
# 14x14 planes (EENet-8 f=4 b2), forced with set_impl 10 on every 3x3 stride-1
# pad-1 layer with C, K <= 16 on planes with 12 < H, W <= 16.  One sample at a
# time (its 16 tiles in the lanes): a sample's bits never depend on its batch or
# the thread count.

TL4_CASES = [(0, (1, 8, 14, 14, 8)), (0, (3, 8, 14, 14, 8)), (0, (16, 8, 14, 14, 8)),
             (0, (17, 8, 14, 14, 8)), (0, (33, 8, 14, 14, 8)),
             (10, (2, 5, 13, 16, 11)), (10, (1, 16, 16, 16, 16)), (10, (3, 1, 15, 13, 3)),
             (10, (2, 16, 14, 14, 16)), (10, (9, 3, 16, 14, 7)), (10, (4, 8, 16, 16, 8))]


@pytest.mark.parametrize("sw_s5", TL4_CASES)
def test_tl4_matches_numpy(rng, sw_s5):
    """Forward and the three gradients against the float64 reference (bias or
    not; error over the tolerance < 0.5), each gradient alone giving the bits
    of all three together, inputs not modified; the path is the one taken (its
    bits differ from the direct q-space path of set_impl 2)."""
    sw, s5 = sw_s5
    with _switch(sw):
        shape = _wshape(s5)
        for bias in (True, False):
            x, w, b, dy = _arrays(rng, shape, bias)
            copies = [a.copy() for a in (x, w, dy)]
            ref = ref_forward(x, w, b, 1, 1)
            y = _core.conv2d_forward(x, w, b, 1, 1)
            _close(y, ref)
            assert _wl4_err(y, ref) < 0.5
            rdx, rdw, rdb = ref_backward(dy, x, w, 1, 1)
            dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, bias)
            _close(dx, rdx)
            assert _wl4_err(dx, rdx) < 0.5
            _close(dw, rdw)
            assert _wl4_err(dw, rdw) < 0.5
            if bias:
                _close(db, rdb)
            dx3, dw3, _ = _core.conv2d_backward(dy, x, w, 1, 1, False, need_dw=False)
            assert dw3 is None
            np.testing.assert_array_equal(dx3, dx)
            dx4, dw4, db4 = _core.conv2d_backward(dy, x, w, 1, 1, bias, need_dx=False)
            assert dx4 is None
            np.testing.assert_array_equal(dw4, dw)
            if bias:
                np.testing.assert_array_equal(db4, db)
            for a, c in zip((x, w, dy), copies):
                np.testing.assert_array_equal(a, c)
            if _avx512():
                with _switch(2):
                    assert not np.array_equal(_core.conv2d_forward(x, w, b, 1, 1), y)


@requires_torch
@pytest.mark.parametrize("sw_s5", [TL4_CASES[i] for i in (0, 3, 5, 7, 8)])
def test_tl4_matches_torch(rng, sw_s5):
    """Forward, input, weight and bias gradients against PyTorch's conv2d and
    autograd."""
    import torch
    import torch.nn.functional as F

    sw, s5 = sw_s5
    x, w, b, dy = _arrays(rng, _wshape(s5))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = F.conv2d(xt, wt, bt, stride=1, padding=1)
    yt.backward(torch.tensor(dy))
    with _switch(sw):
        y = _core.conv2d_forward(x, w, b, 1, 1)
        dx, dw, db = _core.conv2d_backward(dy, x, w, 1, 1, True)
    _close(y, yt.detach().numpy())
    _close(dx, xt.grad.numpy())
    _close(dw, wt.grad.numpy())
    _close(db, bt.grad.numpy())


def test_tl4_accuracy_margin():
    """F(4x4)'s float32 rounding error on 8->8 14x14 (x, w, dy standard normal,
    automatic dispatch, 6 seeds of 4 samples and 2 of 128 for the weight
    gradient): worst error over the tolerance every test applies (rtol 1e-4,
    atol 1e-5 x max|ref|) measured 0.08 forward, 0.09-0.10 backward-data, 0.10
    weight gradient (16 seeds of 4, 4 of 128 for the weight gradient; F(4x4)
    16->16 7x7 of conv_wl4.c: 0.11-0.15); fail above 0.3."""
    worst = [0.0, 0.0]
    with _switch(0):
        for seed in range(8):
            r = np.random.default_rng(4000 + seed)
            x, w, b, dy = _arrays(r, _wshape((4 if seed < 6 else 128, 8, 14, 14, 8)))
            rdx, rdw, _ = ref_backward(dy, x, w, 1, 1)
            dx, dw, _ = _core.conv2d_backward(dy, x, w, 1, 1, False)
            worst[1] = max(worst[1], _wl4_err(dw, rdw))
            if seed < 6:
                worst[0] = max(worst[0], _wl4_err(_core.conv2d_forward(x, w, b, 1, 1),
                                                  ref_forward(x, w, b, 1, 1)),
                               _wl4_err(dx, rdx))
    print(f"tile-lane F(4x4) worst error / tolerance: forward, backward-data {worst[0]:.3f}, "
          f"weight gradient {worst[1]:.3f}")
    assert 0.0 < worst[0] < 0.3 and 0.0 < worst[1] < 0.3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sw_s5", [(0, (19, 8, 14, 14, 8)), (10, (6, 5, 13, 16, 11))])
def test_tl4_batch_invariant(rng, sw_s5, threads):
    """A sample's forward output and input gradient are bit-identical alone and
    inside a batch (and a batch cut elsewhere), on 1 or 2 threads, and the same
    on 1 and 2 threads; the weight and bias gradients (per-thread partials)
    equal to rounding."""
    sw, s5 = sw_s5
    old_t = eenet.get_num_threads()
    try:
        with _switch(sw):
            x, w, b, dy = _arrays(rng, _wshape(s5))
            eenet.set_num_threads(1)
            one = (_core.conv2d_forward(x, w, b, 1, 1),) + _core.conv2d_backward(dy, x, w, 1, 1,
                                                                                 True)
            eenet.set_num_threads(threads)
            _check_batch_invariant(rng, s5)
            np.testing.assert_array_equal(_core.conv2d_forward(x[3:5], w, b, 1, 1),
                                          _core.conv2d_forward(x, w, b, 1, 1)[3:5])
            got = (_core.conv2d_forward(x, w, b, 1, 1),) + _core.conv2d_backward(dy, x, w, 1, 1,
                                                                                 True)
    finally:
        eenet.set_num_threads(old_t)
    for a, r in zip(got[:2], one[:2]):
        np.testing.assert_array_equal(a, r)
    for a, r in zip(got[2:], one[2:]):
        _close(a, r)


@pytest.mark.parametrize("sw_s5", [(0, (35, 8, 14, 14, 8)), (0, (1, 8, 14, 14, 8)),
                                   (10, (3, 16, 16, 16, 16)), (10, (9, 5, 13, 14, 3))])
def test_tl4_c_accumulates_and_respects_workspace(rng, sw_s5):
    """Through the C API: backward-data and the weight and bias gradients ADD
    into their buffers; a workspace sized for 1 thread (then 2 threads
    configured) is never overrun."""
    sw, s5 = sw_s5
    with _switch(sw):
        _check_c_accumulates_and_workspace(rng, s5)


# ---- polyphase data gradient of 3x3 stride-2 pad-1 layers (conv.c pd_pick) --
# Chosen automatically where C is a multiple of 16 and every parity phase of dx
# has a K-vectorised column tile (phase widths (W+1)//2 and W//2 in 16, 14, 8,
# 7, 4); otherwise dcol = w^T dy + col2im.  (N, C, H, W, K): the ResNet-20
# layers, odd H/W (phases of different sizes), one phase row (H = 1, 2), C a
# multiple of 16 but not of 32, batch 1 and 17; the phases are stored straight
# into dx for even W on planes under 1024 floats (column tiles of 4, 7, 8, 14
# and 16 here), through phase planes otherwise.  With C, K <= 16 and C not a
# multiple of 16 the batch-lane form runs on whole groups of 16 samples (as
# many as split evenly over the threads; GEMM for the rest): the EENet-8
# layers, odd sizes (phases 5 and 4 wide), 1-3 channels, one row, groups plus a tail.
PD_CASES = [(2, 32, 16, 16, 64), (3, 16, 32, 32, 32), (1, 16, 15, 15, 32), (17, 32, 9, 15, 16),
            (1, 48, 5, 8, 16), (2, 16, 1, 8, 16), (2, 32, 2, 14, 3), (1, 64, 7, 14, 64),
            (2, 16, 10, 28, 16), (2, 16, 6, 32, 8),
            (35, 2, 28, 28, 4), (32, 4, 14, 14, 8), (33, 8, 14, 14, 16), (32, 3, 7, 9, 5),
            (32, 1, 1, 5, 12), (34, 5, 2, 3, 16)]
# not chosen (a phase 6 or 3 columns wide, or C not a multiple of 16): GEMM
PD_OFF = [(2, 16, 13, 13, 32), (2, 32, 8, 6, 32), (2, 8, 16, 16, 16)]


def _pd_shape(s5):
    N, C, H, W, K = s5
    return (N, C, H, W, K, 3, 2, 1)


@pytest.mark.parametrize("s5", PD_CASES + PD_OFF)
def test_polyphase_bd_matches_numpy(rng, s5):
    """Backward-data against the float64 reference, with and without the
    weight and bias gradients (same dx bits), inputs not modified; the path is
    the one taken where chosen (its bits differ from im2col+GEMM, set_impl 1)
    and not taken elsewhere (same bits as set_impl 1)."""
    with _switch(0):
        x, w, b, dy = _arrays(rng, _pd_shape(s5))
        copies = [a.copy() for a in (x, w, dy)]
        dx, _ = _check_dx_and_full_backward(dy, x, w, 2, copies)
    if _avx512():
        with _switch(1):
            gemm = _core.conv2d_backward(dy, x, w, 2, 1, False, need_dw=False)[0]
        assert np.array_equal(gemm, dx) == (s5 in PD_OFF)


@requires_torch
@pytest.mark.parametrize("s5", PD_CASES)
def test_polyphase_bd_matches_torch(rng, s5):
    """Backward-data (and the weight and bias gradients beside it) against
    PyTorch's autograd."""
    import torch
    import torch.nn.functional as F

    with _switch(0):
        x, w, b, dy = _arrays(rng, _pd_shape(s5))
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        F.conv2d(xt, wt, bt, stride=2, padding=1).backward(torch.tensor(dy))
        dx, dw, db = _core.conv2d_backward(dy, x, w, 2, 1, True)
    _close(dx, xt.grad.numpy())
    _close(dw, wt.grad.numpy())
    _close(db, bt.grad.numpy())


@pytest.mark.parametrize("s5", [(2, 32, 16, 16, 64), (17, 16, 15, 15, 32), (1, 16, 32, 32, 32),
                                (35, 4, 14, 14, 8)])
def test_polyphase_bd_threads_and_batch_invariant(rng, s5):
    """1 and 2 threads give the same dx bits, and so does a slice of the batch
    (each sample's phases are computed alone)."""
    old = eenet.get_num_threads()
    try:
        with _switch(0):
            x, w, b, dy = _arrays(rng, _pd_shape(s5))
            eenet.set_num_threads(1)
            one = _core.conv2d_backward(dy, x, w, 2, 1, False, need_dw=False)[0]
            eenet.set_num_threads(2)
            two = _core.conv2d_backward(dy, x, w, 2, 1, False, need_dw=False)[0]
            part = _core.conv2d_backward(dy[-1:], x[-1:], w, 2, 1, False, need_dw=False)[0]
    finally:
        eenet.set_num_threads(old)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(part, one[-1:])


@pytest.mark.parametrize("s5", [(8, 32, 16, 16, 64), (3, 16, 15, 15, 32), (1, 48, 5, 8, 16),
                                (35, 4, 14, 14, 8), (32, 3, 7, 9, 5)])
def test_polyphase_bd_c_accumulates_and_respects_workspace(rng, s5):
    """Through the C API: backward-data ADDS into dinp (dw, dbias too), and a
    workspace sized for 1 thread (then 2 threads configured) is never overrun."""
    lib = _lib()
    N, C, H, W, K = s5
    x, w, b, dy = _arrays(rng, _pd_shape(s5))
    n = lib.eenet_conv2d_workspace_floats(N, C, H, W, K, 3, 3, 2, 1, 1)
    guard = 4096
    ws = np.zeros(n + guard, np.float32)
    ws[n:] = 12345.0
    rdx, rdw, rdb = ref_backward(dy, x, w, 2, 1)
    old = eenet.get_num_threads()
    try:
        eenet.set_num_threads(2)
        for need_dw in (False, True):
            dx0 = rng.standard_normal(x.shape).astype(np.float32)
            dw0 = rng.standard_normal(w.shape).astype(np.float32)
            db0 = rng.standard_normal(K).astype(np.float32)
            dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
            with _switch(0):
                assert lib.eenet_conv2d_backward_ex(
                    _p(dx), _p(dw) if need_dw else None, _p(db) if need_dw else None, _p(dy),
                    _p(x), _p(w), _p(ws), N, C, H, W, K, 3, 3, 2, 1, 1) == 0
            _close(dx, dx0 + rdx)
            if need_dw:
                _close(dw, dw0 + rdw)
                _close(db, db0 + rdb)
    finally:
        eenet.set_num_threads(old)
    assert np.all(ws[n:] == 12345.0)
