"""An independent PyTorch implementation of an EENet, written from DESIGN.md.

It walks the same :class:`~eenet.spec.ModelSpec` (the architecture description)
but builds ordinary ``torch.nn`` modules (Conv2d, BatchNorm2d, Linear) at the
paths given by the parameter names, so ``state_dict()`` has the authors' names
and eenet's weights load into it by name.  The forward pass, the losses
v0..v4 and the optimisers (``torch.optim``) are PyTorch's own; nothing here
calls eenet's C core.  Used by tests/test_net.py and benchmarks/train.py.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _module_path(param_name: str) -> tuple:
    parts = param_name.split(".")
    return tuple(parts[:-1])


class TorchEENet(nn.Module):
    """EENet from a ModelSpec.  forward(x) -> (probs (E1,B,K), conf (E1,B)),
    conf = 1 for an exit without a confidence head."""

    def __init__(self, spec, dtype=torch.float64):
        super().__init__()
        self.spec = spec
        self._mods = {}
        ops = []
        for stage, ex in zip(spec.stages, spec.exits):
            ops += list(stage) + list(ex.ops)
            if ex.confidence is not None:
                ops.append(ex.confidence)
            ops.append(ex.classifier)
        # register modules in the order of the spec's parameter list (the
        # authors' state_dict order)
        rank = {p.name: i for i, p in enumerate(spec.params)}
        ops = sorted((op for op in ops if op.params), key=lambda op: rank[op.params[0]])
        for op in ops:
            mod = self._make(op, spec)
            path = _module_path(op.params[0])
            parent = self
            for part in path[:-1]:
                if not hasattr(parent, part) or part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.add_module(path[-1], mod)
            self._mods[id(op)] = mod
        self.to(dtype)

    @staticmethod
    def _make(op, spec):
        a = op.attrs
        cin = spec.tensors[op.inputs[0]]
        if op.kind == "conv2d":
            return nn.Conv2d(cin[0], a["out_channels"], a["kernel"], stride=a.get("stride", 1),
                             padding=a.get("padding", 0), bias=bool(a.get("bias", False)))
        if op.kind == "batchnorm2d":
            return nn.BatchNorm2d(cin[0], eps=a.get("eps", 1e-5), momentum=a.get("momentum", 0.1))
        if op.kind == "linear":
            n_in = int(np.prod(cin))
            return nn.Linear(n_in, a["out_features"], bias=len(op.params) > 1)
        raise ValueError(f"op {op.kind} has parameters but no module")

    def _run(self, op, t):
        x = t[op.inputs[0]]
        k = op.kind
        if k in ("conv2d", "batchnorm2d"):
            return self._mods[id(op)](x)
        if k == "linear":
            return self._mods[id(op)](x.flatten(1))
        if k == "relu":
            if self._track:
                # distance of the nearest ReLU input from zero, relative to the
                # tensor's largest magnitude
                m = float(x.detach().abs().min() / x.detach().abs().max().clamp_min(1e-300))
                self.kink_margin = min(self.kink_margin, m)
            return F.relu(x)
        if k == "add":
            return x + t[op.inputs[1]]
        if k == "maxpool2d":
            a = op.attrs
            return F.max_pool2d(x, a["kernel"], a.get("stride", a["kernel"]), a.get("padding", 0))
        if k == "global_avgpool":
            return x.mean(dim=(2, 3))
        raise ValueError(f"unknown op {k}")

    _track = False
    kink_margin = float("inf")

    def forward(self, x, track_kinks: bool = False):
        """track_kinks: set ``self.kink_margin`` to the smallest |ReLU input| /
        max|that ReLU's input| of this pass (how close the pass is to a kink)."""
        self._track = track_kinks
        self.kink_margin = float("inf")
        t = {0: x}
        probs, confs = [], []
        for stage, ex in zip(self.spec.stages, self.spec.exits):
            for op in stage:
                t[op.output] = self._run(op, t)
            for op in ex.ops:
                t[op.output] = self._run(op, t)
            logits = self._run(ex.classifier, t)
            probs.append(F.softmax(logits, dim=1))
            if ex.confidence is not None:
                confs.append(torch.sigmoid(self._run(ex.confidence, t)).squeeze(1))
            else:
                confs.append(torch.ones(x.shape[0], dtype=x.dtype))
        return torch.stack(probs), torch.stack(confs)


def _nll(p, y):
    """-mean log p[n, y_n] (the authors take log of probabilities)."""
    return -torch.log(p.gather(1, y[:, None]).squeeze(1).clamp_min(1e-30)).mean()


def ee_loss(probs, conf, costs, y, version, lam, tags=None):
    """DESIGN.md's losses.  probs (E1,B,K), conf (E1,B), costs (E1,), y (B,).
    Returns (total, classification, cost, confidence).

    Choices where DESIGN.md leaves room (the kernel contract agrees): v3 gives
    the final exit weight mean(h_F) = 1; v4's BCE runs over the early exits."""
    E1 = probs.shape[0]
    zero = probs.new_zeros(())
    costs = torch.as_tensor(costs, dtype=probs.dtype)
    if version == 0:
        cls = sum(_nll(probs[i], y) for i in range(E1))
        return cls, cls, zero, zero
    if version in (1, 2):
        P = probs[E1 - 1]
        C = torch.ones_like(conf[0]) * costs[E1 - 1]
        Ps, Cs = [P], [C]
        for i in range(E1 - 2, -1, -1):
            h = conf[i]
            P = h[:, None] * probs[i] + (1 - h[:, None]) * P
            C = h * costs[i] + (1 - h) * C
            Ps.insert(0, P)
            Cs.insert(0, C)
        if version == 1:
            cls, cost = _nll(Ps[0], y), lam * Cs[0].mean()
        else:
            cls = sum(_nll(Pi, y) for Pi in Ps)
            cost = sum(lam * Ci.mean() for Ci in Cs)
        return cls + cost, cls, cost, zero
    if version == 3:
        m = [conf[i].mean() for i in range(E1 - 1)] + [probs.new_ones(())]
        total_m = sum(m)
        w = [mi / total_m for mi in m]
        cls = sum(w[i] * _nll(probs[i], y) for i in range(E1))
        cost = sum(w[i] * lam * costs[i] for i in range(E1))
        return cls + cost, cls, cost, zero
    if version == 4:
        tags = torch.as_tensor(tags, dtype=torch.long)
        B = y.shape[0]
        P = probs[tags, torch.arange(B)]
        C = costs[tags]
        cls = _nll(P, y)
        cost = lam * C.mean()
        confl = zero
        for i in range(E1 - 1):
            e = (tags == i).to(probs.dtype)
            r = e.mean()
            w = e * (1 - r) + (1 - e) * r
            bce = F.binary_cross_entropy(conf[i], e, reduction="none")
            confl = confl + (w * bce).mean()
        return cls + cost + confl, cls, cost, confl
    raise ValueError(version)


def from_eenet(net, dtype=torch.float64) -> TorchEENet:
    """A TorchEENet with the eenet network's weights and buffers (by name)."""
    model = TorchEENet(net.spec, dtype=dtype)
    sd = {k: torch.tensor(np.array(v)) for k, v in net.state_dict().items()}
    own = model.state_dict()
    assert set(sd) == set(own), (set(sd) ^ set(own))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
    return model
