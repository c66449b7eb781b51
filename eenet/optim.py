"""Optimisers bound to a :class:`eenet.net.Net`.

The state lives in the network's C optimiser buffer (one float32 buffer of
2 x num_parameters: SGD's momentum buffer in the first half, Adam's exp_avg
and exp_avg_sq in the two halves); the update runs in C inside
:meth:`Net.train_step` with PyTorch's formulas (kernels.h).  Weight decay is
applied to every trainable parameter, batch-norm weights and biases included,
as ``torch.optim.*(model.parameters(), weight_decay=...)`` does.

A network has one optimiser at a time: creating a new one resets the state
buffer, and the previous optimiser can no longer step that network.

Exactly PyTorch's update (single-tensor path; tests/test_net.py feeds torch.optim
eenet's gradients for five consecutive steps and compares parameters and state to
a few ulp): weight decay is added to the gradient (L2, not AdamW's decoupled
decay); SGD's buffer is the gradient itself on the first step, Nesterov uses
g + momentum * buf; Adam uses both bias corrections and adds eps after the
corrected square root.  Not supported, and refused with TypeError if passed:
``maximize`` (always False), ``amsgrad`` (always False), ``foreach``/``fused``/
``capturable``/``differentiable`` (no meaning here), decoupled weight decay
(``torch.optim.AdamW``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["SGD", "Adam", "from_hyper"]


class _Optimizer:
    _KIND = -1
    _NAME = ""
    _HYPER: tuple = ()

    def __init__(self, net, lr: float):
        from .net import Net
        if not isinstance(net, Net):
            raise TypeError(f"net: expected an eenet Net, got {type(net).__name__}")
        self.net = net
        self.lr = lr
        self.step_count = 0
        net._opt_state[...] = 0.0
        net._optimizer = self

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        value = float(value)
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"lr: expected a finite value >= 0, got {value}")
        self._lr = value

    def hyper(self) -> dict:
        """Kind, hyper-parameters and step count (JSON-able)."""
        d = {"kind": self._NAME, "lr": self.lr, "step": self.step_count}
        for k in self._HYPER:
            v = getattr(self, k)
            d[k] = list(v) if isinstance(v, tuple) else v
        return d

    def load_hyper(self, d: dict) -> None:
        if d.get("kind") != self._NAME:
            raise ValueError(f"optimizer state of kind {d.get('kind')!r}, this is "
                             f"{self._NAME!r}")
        self.lr = d["lr"]
        for k in self._HYPER:
            v = d[k]
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.step_count = int(d["step"])

    def state_dict(self) -> dict:
        """Hyper-parameters, step count and copies of the state arrays (flat,
        in the network's parameter-buffer layout)."""
        d = self.hyper()
        n = self.net.num_parameters
        for i, key in enumerate(self._STATE):
            d[key] = np.array(self.net._opt_state[i * n:(i + 1) * n])
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore from :meth:`state_dict` (checked before anything changes)."""
        n = self.net.num_parameters
        arrays = []
        for key in self._STATE:
            a = np.asarray(d[key], dtype=np.float32)
            if a.shape != (n,):
                raise ValueError(f"{key}: expected shape ({n},), got {a.shape}")
            arrays.append(a)
        old = self.hyper()
        try:
            self.load_hyper(d)
        except (KeyError, ValueError):
            self.load_hyper(old)
            raise
        for i, a in enumerate(arrays):
            self.net._opt_state[i * n:(i + 1) * n] = a


class SGD(_Optimizer):
    """torch.optim.SGD: g = grad + wd*p; buf = g on the first step, else
    momentum*buf + (1-dampening)*g; g = g + momentum*buf if nesterov else buf;
    p -= lr*g."""
    _KIND = 0
    _NAME = "sgd"
    _HYPER = ("momentum", "dampening", "weight_decay", "nesterov")
    _STATE = ("momentum_buffer",)

    def __init__(self, net, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening 0 (as PyTorch)")
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")
        super().__init__(net, lr)
        self.momentum = float(momentum)
        self.dampening = float(dampening)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)


class Adam(_Optimizer):
    """torch.optim.Adam with L2-style weight decay (g = grad + wd*p)."""
    _KIND = 1
    _NAME = "adam"
    _HYPER = ("betas", "eps", "weight_decay")
    _STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, net, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or eps < 0 or weight_decay < 0:
            raise ValueError(f"Adam: betas in [0, 1), eps >= 0, weight_decay >= 0; got "
                             f"betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(net, lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)


def from_hyper(net, d: dict) -> _Optimizer:
    """A new optimiser for ``net`` from :meth:`_Optimizer.hyper` output."""
    kinds = {"sgd": SGD, "adam": Adam}
    if d.get("kind") not in kinds:
        raise ValueError(f"unknown optimizer kind {d.get('kind')!r}")
    opt = kinds[d["kind"]](net)
    opt.load_hyper(d)
    return opt
