"""Budgeted inference: choose the exit threshold T that meets an average-cost budget.

``eenet.calibrate(net, data, target_cost)`` runs the network once over held-out data
(every exit's outputs via ``net.predict_all``), then searches the threshold: the average cost
of early-exit inference only grows with T (a higher T lets fewer samples leave early), so the
largest T whose cost stays within the budget is found by bisection over the distinct
confidence values, each step one vectorised pass over the stored outputs. The module itself
is callable (``eenet.calibrate(...)`` is ``eenet.calibrate.calibrate(...)``).

:func:`calibrate_outputs` does the same from stored outputs (``eenet.evaluate``'s
``outputs``, a sweep trial's ``outputs.npz``); :func:`threshold_for_cost` wraps it for
``evaluate --target-cost`` (outputs dict in, threshold out).
"""
from __future__ import annotations

import sys
import types
from typing import Any, Iterable, NamedTuple

import numpy as np

__all__ = ["Calibration", "calibrate", "calibrate_outputs", "threshold_for_cost",
           "collect_outputs"]


class Calibration(NamedTuple):
    """threshold: the chosen T; cost: the average cost reached on the data (<= the budget);
    accuracy: the early-exit accuracy at T (None without labels)."""
    threshold: float
    cost: float
    accuracy: float | None


def _at(conf: np.ndarray, costs: np.ndarray, T: float) -> tuple[float, np.ndarray]:
    from .plots import exit_assignment
    exits = exit_assignment(conf, np.array([T]))[0]
    return float(costs[exits].mean()), exits


def threshold_for_cost(outputs: dict, costs: np.ndarray, target_cost: float) -> float:
    """The threshold for ``evaluate --target-cost``: :func:`calibrate_outputs` on an
    ``eenet.evaluate`` outputs dict ({"probs": (E+1, N, K), "conf": (E+1, N), "labels": (N,)})
    and the exit costs (E+1,); returns the largest T whose average cost on these outputs is
    <= target_cost. Raises ValueError for a budget below the first exit's cost."""
    return calibrate_outputs(outputs.get("probs"), outputs["conf"], costs, target_cost,
                             outputs.get("labels")).threshold


def calibrate_outputs(probs: np.ndarray | None, conf: np.ndarray, costs: np.ndarray,
                      target_cost: float, labels: np.ndarray | None = None) -> Calibration:
    """The largest threshold T whose average cost on these outputs is <= ``target_cost``.

    probs (E+1, N, K) softmax outputs (only used for the accuracy; may be None when labels
    is None), conf (E+1, N) confidences, costs (E+1,) exit costs (increasing, last 1.0),
    labels (N,) or None. The rule is the engine's: a sample leaves at the first early exit
    with conf > T. Raises ValueError when the budget is below the first exit's cost (no
    threshold can reach it).
    """
    conf = np.asarray(conf)
    costs = np.asarray(costs, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != costs.shape[0]:
        raise ValueError(f"conf: expected shape (E+1, N) with E+1 = {costs.shape[0]}, got "
                         f"{conf.shape}")
    target = float(target_cost)
    if not np.isfinite(target):
        raise ValueError(f"target_cost must be a finite number, got {target_cost!r}")
    if target < costs[0]:
        raise ValueError(f"target_cost {target:g} is below the first exit's cost "
                         f"{costs[0]:.4g}: no threshold can reach it")
    E = conf.shape[0] - 1
    N = conf.shape[1]
    if N == 0:
        raise ValueError("no samples to calibrate on")
    # cost(T) is a step function of T that changes only at the confidence values; T = 1.0
    # keeps every sample to the final exit (conf > 1 never holds).
    cands = np.unique(np.concatenate([np.array([0.0, 1.0]),
                                      conf[:E].astype(np.float64).ravel()]))
    cands = cands[(cands >= 0.0) & (cands <= 1.0)]
    lo_cost, exits = _at(conf, costs, cands[0])
    if lo_cost > target:
        raise ValueError(f"target_cost {target:g} is below the lowest average cost reachable "
                         f"on this data ({lo_cost:.4g} at T=0)")
    lo, hi = 0, cands.size - 1  # invariant: cost(cands[lo]) <= target
    hi_cost, hi_exits = _at(conf, costs, cands[hi])
    if hi_cost <= target:
        lo, lo_cost, exits = hi, hi_cost, hi_exits
    else:
        while hi - lo > 1:  # cost(cands[hi]) > target
            mid = (lo + hi) // 2
            c, e = _at(conf, costs, cands[mid])
            if c <= target:
                lo, lo_cost, exits = mid, c, e
            else:
                hi = mid
    acc = None
    if labels is not None:
        probs = np.asarray(probs)
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (N,):
            raise ValueError(f"labels: expected shape ({N},), got {labels.shape}")
        pred = probs[exits, np.arange(N)].argmax(axis=1)
        acc = float((pred == labels).mean())
    return Calibration(float(cands[lo]), float(lo_cost), acc)


def _batches(data: Any, labels: Any) -> Iterable[tuple[np.ndarray, np.ndarray | None]]:
    """(x, y) batches from an array, an (x, y) pair, a dataset object or an iterable."""
    if isinstance(data, np.ndarray):
        yield data, (None if labels is None else np.asarray(labels))
        return
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        yield data[0], np.asarray(data[1])
        return
    if all(hasattr(data, a) for a in ("images", "labels", "mean", "std")) and \
            np.asarray(data.images).dtype == np.uint8:
        # an eenet.datasets.Dataset: uint8 images, normalised here chunk by chunk
        from .data import preprocess
        images, labs = np.asarray(data.images), np.asarray(data.labels)
        for s in range(0, images.shape[0], 2048):
            yield preprocess(images[s:s + 2048], data), labs[s:s + 2048]
        return
    for xa, ya in (("images", "labels"), ("x", "y"), ("data", "targets")):
        if hasattr(data, xa) and hasattr(data, ya) and isinstance(getattr(data, xa), np.ndarray):
            yield getattr(data, xa), np.asarray(getattr(data, ya))
            return
    for item in data:
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            yield np.asarray(item[0]), np.asarray(item[1])
        else:
            yield np.asarray(item), None


def collect_outputs(net, data: Any, labels: Any = None, batch_size: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every exit's outputs over ``data`` in eval mode: probs (E+1, N, K), conf (E+1, N),
    labels (N,) or None. data: images (N, C, H, W) float32, an (images, labels) pair, a
    dataset with images/labels arrays, or an iterable of (x, y) batches."""
    bs = int(batch_size or getattr(net, "max_batch", 256))
    P, C, Y = [], [], []
    have_labels = True
    for x, y in _batches(data, labels):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"data: expected images of shape (N, C, H, W), got {x.shape}")
        if y is None:
            have_labels = False
        elif y.shape[0] != x.shape[0]:
            raise ValueError(f"labels: expected {x.shape[0]} labels, got {y.shape[0]}")
        for s in range(0, x.shape[0], bs):
            p, c = net.predict_all(x[s:s + bs])
            P.append(np.asarray(p))
            C.append(np.asarray(c))
        if y is not None:
            Y.append(y.astype(np.int64))
    if not P:
        raise ValueError("data: no samples")
    return (np.concatenate(P, axis=1), np.concatenate(C, axis=1),
            np.concatenate(Y) if have_labels and Y else None)


def calibrate(net, data: Any, target_cost: float, labels: Any = None,
              batch_size: int | None = None) -> Calibration:
    """Choose the threshold T meeting an average-cost budget on held-out data.

    net: an eenet network; data: images (N, C, H, W) float32 (then ``labels`` (N,) gives
    the accuracy), an (images, labels) pair, a dataset or an iterable of (x, y) batches;
    target_cost: the budget as a fraction of the plain ResNet's FLOPs (net.exit_costs units).
    Runs the network once (net.predict_all) and returns Calibration(threshold, cost,
    accuracy) with cost <= target_cost on this data. Raises ValueError for a budget below
    the first exit's cost.
    """
    costs = np.asarray(net.exit_costs, dtype=np.float64)
    if float(target_cost) < costs[0]:
        raise ValueError(f"target_cost {float(target_cost):g} is below the first exit's cost "
                         f"{costs[0]:.4g}: no threshold can reach it")
    was_training = bool(getattr(net, "training", False))
    if was_training:
        net.eval()
    try:
        probs, conf, y = collect_outputs(net, data, labels, batch_size)
    finally:
        if was_training:
            net.train()
    return calibrate_outputs(probs, conf, costs, target_cost, y)


class _CallableModule(types.ModuleType):
    """Lets ``eenet.calibrate(net, data, target_cost)`` call :func:`calibrate`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Calibration:
        return calibrate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
