"""Early-exit losses v0..v4 (eenet.ops.ee_loss) against a float64 NumPy reference written
from DESIGN.md, finite differences and torch autograd."""
import numpy as np
import pytest

from eenet import ops
from conftest import f32, numgrad, requires_torch
from conftest import grad_close as _grad_close

FLOOR = ops.PROB_FLOOR


def flog(q):
    return np.log(np.maximum(q, FLOOR))


def ref_loss(probs, conf, costs, y, version, lam, tags=None):
    """parts [total, cls, cost, conf] in float64; the final exit's conf row is unused."""
    E1, N, _ = probs.shape
    F = E1 - 1
    rows = np.arange(N)
    py = probs[:, rows, y]  # (E1, N): p_i[n, y_n]
    cls = cost = bce = 0.0
    if version == 0:
        cls = sum(-flog(py[i]).mean() for i in range(E1))
    elif version in (1, 2):
        q, C = py[F], np.full(N, costs[F])
        terms = [(q, C)]
        for i in range(F - 1, -1, -1):
            q = conf[i] * py[i] + (1 - conf[i]) * q
            C = conf[i] * costs[i] + (1 - conf[i]) * C
            terms.append((q, C))
        if version == 1:
            terms = terms[-1:]
        cls = sum(-flog(q).mean() for q, _ in terms)
        cost = lam * sum(C.mean() for _, C in terms)
    elif version == 3:
        m = np.array([conf[i].mean() for i in range(F)] + [1.0])
        w = m / m.sum()
        cls = sum(w[i] * -flog(py[i]).mean() for i in range(E1))
        cost = sum(w[i] * lam * costs[i] for i in range(E1))
    else:
        cls = -flog(py[tags, rows]).mean()
        cost = lam * costs[tags].mean()
        for i in range(F):
            e = (tags == i).astype(np.float64)
            r = e.mean()
            wt = e * (1 - r) + (1 - e) * r
            lx = np.maximum(np.log(conf[i]), -100)
            l1x = np.maximum(np.log(1 - conf[i]), -100)
            bce += np.mean(-wt * (e * lx + (1 - e) * l1x))
    return np.array([cls + cost + bce, cls, cost, bce])


def make(rng, E1=3, N=6, K=4, extreme=False):
    logits = rng.normal(0, 30 if extreme else 1.5, (E1, N, K))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf = 1 / (1 + np.exp(-rng.normal(0, 1.5, (E1, N))))
    costs = np.append(np.sort(rng.uniform(0.05, 0.9, E1 - 1)), 1.0)
    y = rng.integers(0, K, N).astype(np.int64)
    tags = rng.integers(0, E1, N).astype(np.int32)
    return f32(p), f32(conf), f32(costs), y, tags


def grad_close(a, b, rtol=2e-3):
    _grad_close(a, b, rtol)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("E1,N,K", [(3, 6, 4), (1, 2, 3), (2, 1, 2), (4, 9, 10)])
def test_forward_and_fd(rng, version, E1, N, K):
    p, c, costs, y, tags = make(rng, E1, N, K)
    lam = 0.7
    t = tags if version == 4 else None
    p0, c0 = p.copy(), c.copy()
    parts, dp, dc = ops.ee_loss(p, c, costs, y, version, lam, t)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(c, c0)
    p64, c64, k64 = p.astype(np.float64), c.astype(np.float64), costs.astype(np.float64)
    ref = ref_loss(p64, c64, k64, y, version, lam, t)
    np.testing.assert_allclose(parts, ref, rtol=1e-5, atol=1e-6)
    grad_close(dp, numgrad(lambda v: ref_loss(v, c64, k64, y, version, lam, t)[0], p64))
    gc = numgrad(lambda v: ref_loss(p64, v, k64, y, version, lam, t)[0], c64)
    grad_close(dc, gc)
    assert np.all(dc[-1] == 0)  # the final exit's confidence does not enter


def test_parts_meaning(rng):
    p, c, costs, y, tags = make(rng, 3, 8, 5)
    parts = ops.ee_loss(p, c, costs, y, 0, 1.0)[0]
    assert parts[2] == 0 and parts[3] == 0 and parts[0] == pytest.approx(parts[1])
    parts1 = ops.ee_loss(p, c, costs, y, 1, 0.0)[0]
    assert parts1[2] == 0
    parts4 = ops.ee_loss(p, c, costs, y, 4, 2.0, tags)[0]
    assert parts4[3] > 0
    assert parts4[0] == pytest.approx(parts4[1:].sum(), rel=1e-6)


def test_underflow_finite(rng):
    p, c, costs, y, tags = make(rng, 3, 16, 10, extreme=True)
    p[:, 0, :] = 0.0
    p[:, 0, (y[0] + 1) % 10] = 1.0  # the label's probability is exactly 0 at every exit
    c[0, 1] = 0.0
    c[1, 2] = 1.0
    for v in range(5):
        parts, dp, dc = ops.ee_loss(p, c, costs, y, v, 1.0, tags if v == 4 else None)
        assert np.all(np.isfinite(parts)) and np.all(np.isfinite(dp)) and np.all(np.isfinite(dc))


@requires_torch
@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_torch_autograd(rng, version):
    import torch
    import torch.nn.functional as F
    p, c, costs, y, tags = make(rng, 4, 32, 10)
    lam = 1.3
    pt = torch.tensor(p, requires_grad=True)
    ct = torch.tensor(c, requires_grad=True)
    yt = torch.tensor(y)
    cost = [torch.tensor(float(v)) for v in costs]
    pred = [pt[i] for i in range(4)]
    conf = [ct[i] for i in range(3)]  # early exits only, as the authors' models return

    def nll(q):
        return F.nll_loss(q.clamp(min=FLOOR).log(), yt)

    if version == 0:
        loss = sum(nll(q) for q in pred)
    elif version in (1, 2):
        q, C = pred[3], cost[3]
        loss = nll(q) + lam * C.mean() if version == 2 else 0
        for i in range(2, -1, -1):
            h = conf[i][:, None]
            q = h * pred[i] + (1 - h) * q
            C = conf[i] * cost[i] + (1 - conf[i]) * C
            if version == 2:
                loss = loss + nll(q) + lam * C.mean()
        if version == 1:
            loss = nll(q) + lam * C.mean()
    elif version == 3:
        m = [h.mean() for h in conf] + [torch.tensor(1.0)]
        s = sum(m)
        loss = sum(m[i] / s * (nll(pred[i]) + lam * cost[i]) for i in range(4))
    else:
        tt = torch.tensor(tags.astype(np.int64))
        q, C = pred[3], cost[3] * torch.ones(32)
        loss = 0
        for i in range(4):
            e = (tt == i).float()
            q = e[:, None] * pred[i] + (1 - e[:, None]) * q
            C = e * cost[i] + (1 - e) * C
            if i < 3:
                r = e.mean()
                loss = loss + F.binary_cross_entropy(conf[i], e, e * (1 - r) + (1 - e) * r)
        loss = loss + nll(q) + lam * C.mean()
    loss.backward()
    parts, dp, dc = ops.ee_loss(p, c, costs, y, version, lam, tags if version == 4 else None)
    np.testing.assert_allclose(parts[0], loss.item(), rtol=1e-5)
    np.testing.assert_allclose(dp, pt.grad.numpy(), rtol=1e-4, atol=1e-5)
    gc = ct.grad.numpy() if ct.grad is not None else np.zeros_like(c)
    np.testing.assert_allclose(dc, gc, rtol=1e-4, atol=1e-5)


def test_bad_input(rng):
    p, c, costs, y, tags = make(rng, 3, 5, 4)
    with pytest.raises(ValueError, match="version"):
        ops.ee_loss(p, c, costs, y, 5, 1.0)
    with pytest.raises(ValueError, match="tags"):
        ops.ee_loss(p, c, costs, y, 4, 1.0)
    with pytest.raises(TypeError, match="tags"):
        ops.ee_loss(p, c, costs, y, 4, 1.0, tags.astype(np.int64))
    with pytest.raises(ValueError, match="tags"):
        ops.ee_loss(p, c, costs, y, 4, 1.0, np.full(5, 3, np.int32))
    with pytest.raises(ValueError, match="tags"):
        ops.ee_loss(p, c, costs, y, 4, 1.0, tags[:4].copy())
    with pytest.raises(ValueError, match="labels"):
        ops.ee_loss(p, c, costs, np.array([0, 1, 2, 3, 4], np.int64), 2, 1.0)
    with pytest.raises(ValueError, match="conf"):
        ops.ee_loss(p, c[:, :4].copy(), costs, y, 2, 1.0)
    with pytest.raises(ValueError, match="costs"):
        ops.ee_loss(p, c, costs[:2].copy(), y, 2, 1.0)
    with pytest.raises(TypeError, match="probs"):
        ops.ee_loss(p.astype(np.float64), c, costs, y, 2, 1.0)
    with pytest.raises(ValueError, match="probs"):
        ops.ee_loss(p[:, :, ::2], c, costs, y, 2, 1.0)
    with pytest.raises(ValueError, match="probs"):
        ops.ee_loss(p[0], c, costs, y, 2, 1.0)
    with pytest.raises(ValueError, match="probs"):
        ops.ee_loss(np.zeros((3, 0, 4), np.float32), np.zeros((3, 0), np.float32), costs,
                    np.zeros(0, np.int64), 2, 1.0)
    pn = p.copy()
    pn[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="probs"):
        ops.ee_loss(pn, c, costs, y, 2, 1.0)
    cn = c.copy()
    cn[0, 1] = np.inf
    with pytest.raises(ValueError, match="conf"):
        ops.ee_loss(p, cn, costs, y, 2, 1.0)
    cn[0, 1] = 1.5
    with pytest.raises(ValueError, match="conf"):
        ops.ee_loss(p, cn, costs, y, 2, 1.0)
    cf = c.copy()
    cf[-1] = np.nan  # the final exit's row is ignored
    ops.ee_loss(p, cf, costs, y, 2, 1.0)
    with pytest.raises(ValueError, match="lambda_coef"):
        ops.ee_loss(p, c, costs, y, 2, float("nan"))
