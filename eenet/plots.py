"""Plots (matplotlib, drawn on ``matplotlib.figure.Figure`` objects so they work in
scripts, workers and notebooks alike without touching pyplot's global state)."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np


# --------------------------------------------------------------------------- sweeps: accuracy vs cost

def pareto_front(df, cost: str = "avg_cost", accuracy: str = "accuracy"):
    """Rows of ``df`` on the accuracy–cost Pareto front (no other row has lower or equal
    cost and higher accuracy), sorted by cost. Rows without both figures are ignored."""
    ok = df[np.isfinite(df[cost].astype(float)) & np.isfinite(df[accuracy].astype(float))]
    ok = ok.sort_values([cost, accuracy], ascending=[True, False], kind="mergesort")
    keep, best = [], -np.inf
    for idx, acc in zip(ok.index, ok[accuracy].astype(float)):
        if acc > best:
            keep.append(idx)
            best = acc
    return ok.loc[keep]


def _reference_points(df, reference) -> list[tuple[str, float, float]]:
    """(label, cost, accuracy) reference points: a float accuracy (plain ResNet at cost 1),
    a (cost, accuracy) pair, a {label: accuracy or (cost, accuracy)} dict, or None (rows of
    df whose model is a plain resnet*)."""
    if reference is None:
        if df is None or "model" not in df:
            return []
        plain = df[df["model"].astype(str).str.startswith("resnet")]
        return [(str(r["model"]), float(r["avg_cost"]), float(r["accuracy"]))
                for _, r in plain.iterrows()
                if np.isfinite(float(r["avg_cost"])) and np.isfinite(float(r["accuracy"]))]
    if isinstance(reference, dict):
        out = []
        for label, v in reference.items():
            c, a = (1.0, float(v)) if np.isscalar(v) else (float(v[0]), float(v[1]))
            out.append((str(label), c, a))
        return out
    if np.isscalar(reference):
        return [("plain ResNet", 1.0, float(reference))]
    c, a = reference
    return [("plain ResNet", float(c), float(a))]


def plot_pareto(df, path: "str | os.PathLike | None" = None, reference=None,
                label: str | None = None, ax=None):
    """Accuracy against average cost over trials, with the Pareto front and the plain
    ResNet reference point(s) (see :func:`_reference_points` for ``reference``).

    df: a sweep table (eenet.sweep.load) with columns accuracy, avg_cost (and model).
    label: a column whose value labels each point (default: lambda_coef if present).
    Saves to ``path`` when given; returns the Figure.
    """
    from matplotlib.figure import Figure
    fig = None
    if ax is None:
        fig = Figure(figsize=(6, 4.5))
        ax = fig.add_subplot()
    refs = _reference_points(df, reference)
    d = df
    if "model" in df and reference is None:
        d = df[~df["model"].astype(str).str.startswith("resnet")]
    d = d[np.isfinite(d["avg_cost"].astype(float)) & np.isfinite(d["accuracy"].astype(float))]
    ax.scatter(d["avg_cost"], d["accuracy"], s=28, alpha=0.7, label="trials", zorder=2)
    if label is None and "lambda_coef" in d and d["lambda_coef"].nunique() > 1:
        label = "lambda_coef"
    if label is not None and label in d:
        for _, r in d.iterrows():
            ax.annotate(f"{r[label]:g}" if isinstance(r[label], (int, float)) else str(r[label]),
                        (r["avg_cost"], r["accuracy"]), fontsize=7, alpha=0.8,
                        textcoords="offset points", xytext=(3, 3))
    front = pareto_front(d) if len(d) else d
    if len(front):
        ax.step(front["avg_cost"], front["accuracy"], where="post", color="C1", lw=1.5,
                label="Pareto front", zorder=3)
        ax.scatter(front["avg_cost"], front["accuracy"], s=40, color="C1", zorder=4)
    for i, (lab, c, a) in enumerate(refs):
        ax.scatter([c], [a], marker="*", s=160, color=f"C{3 + i}", zorder=5, label=lab)
    ax.set_xlabel("average cost (fraction of the plain ResNet's FLOPs)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("accuracy vs average cost")
    if fig is None:
        fig = ax.figure
    if path is not None:
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=120)
    return fig


# --------------------------------------------------------------------------- threshold curve

def exit_assignment(conf: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit taken by every sample at every threshold: the first early exit i with
    conf[i] > T, else the final exit.

    conf (E+1, N) confidences; thresholds (T,) -> (T, N) int64 exit indices.
    """
    conf = np.asarray(conf)
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    E = conf.shape[0] - 1
    N = conf.shape[1]
    out = np.full((thresholds.size, N), E, dtype=np.int64)
    if E == 0 or N == 0:
        return out
    early = conf[:E].astype(np.float64)
    # chunk the thresholds so that the (t, E, N) comparison stays ~16M booleans
    step = max(1, int(16_000_000 // max(1, E * N)))
    for s in range(0, thresholds.size, step):
        t = thresholds[s:s + step]
        exceed = early[None, :, :] > t[:, None, None]            # (t, E, N)
        first = exceed.argmax(axis=1)                              # (t, N)
        out[s:s + step] = np.where(exceed.any(axis=1), first, E)
    return out


def threshold_curve(probs: np.ndarray, conf: np.ndarray, labels: np.ndarray | None,
                    costs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None):
    """Accuracy and average cost of early-exit inference for many thresholds T from ONE pass
    of stored per-exit outputs (no re-run per threshold).

    probs (E+1, N, K) softmax outputs, conf (E+1, N) confidences, labels (N,) int or None,
    costs (E+1,) exit costs, thresholds (T,) (default 101 values in [0, 1]).
    Returns a DataFrame, one row per T: threshold, accuracy, avg_cost, exit_0..exit_E
    (sample counts per exit).
    """
    import pandas as pd
    probs = np.asarray(probs)
    conf = np.asarray(conf)
    costs = np.asarray(costs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"probs: expected shape (E+1, N, K), got {probs.shape}")
    E1, N, _ = probs.shape
    if conf.shape != (E1, N):
        raise ValueError(f"conf: expected shape {(E1, N)}, got {conf.shape}")
    if costs.shape != (E1,):
        raise ValueError(f"costs: expected shape ({E1},), got {costs.shape}")
    if thresholds is None:
        thresholds = np.linspace(0.0, 1.0, 101)
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    exits = exit_assignment(conf, t)                                # (T, N)
    cols: dict[str, Any] = {"threshold": t}
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (N,):
            raise ValueError(f"labels: expected shape ({N},), got {labels.shape}")
        correct = probs.argmax(axis=2) == labels[None, :]           # (E+1, N)
        hit = correct[exits, np.arange(N)[None, :]]                 # (T, N)
        cols["accuracy"] = hit.mean(axis=1) if N else np.full(t.size, np.nan)
    else:
        cols["accuracy"] = np.full(t.size, np.nan)
    cols["avg_cost"] = costs[exits].mean(axis=1) if N else np.full(t.size, np.nan)
    flat = (exits + E1 * np.arange(t.size)[:, None]).ravel()
    counts = np.bincount(flat, minlength=t.size * E1).reshape(t.size, E1)
    for i in range(E1):
        cols[f"exit_{i}"] = counts[:, i]
    return pd.DataFrame(cols)


def plot_threshold_curve(curve, path: "str | os.PathLike | None" = None, reference=None,
                         mark: Sequence[float] = (0.5,)):
    """Two panels from a :func:`threshold_curve` table: accuracy against average cost as T
    varies (with reference points as in :func:`plot_pareto`), and accuracy and cost against
    T. ``mark`` highlights thresholds. Saves to ``path`` when given; returns the Figure."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(curve["avg_cost"], curve["accuracy"], "-", color="C0", lw=1.5, label="EENet, T varies")
    for m in mark:
        i = int(np.argmin(np.abs(curve["threshold"].to_numpy() - m)))
        r = curve.iloc[i]
        ax1.scatter([r["avg_cost"]], [r["accuracy"]], color="C1", zorder=3)
        ax1.annotate(f"T={r['threshold']:.2g}", (r["avg_cost"], r["accuracy"]), fontsize=8,
                     textcoords="offset points", xytext=(4, -10))
    for i, (lab, c, a) in enumerate(_reference_points(None, reference)):
        ax1.scatter([c], [a], marker="*", s=160, color=f"C{3 + i}", zorder=5, label=lab)
    ax1.set_xlabel("average cost")
    ax1.set_ylabel("accuracy")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title("accuracy vs cost as the threshold T varies")
    ax2.plot(curve["threshold"], curve["accuracy"], color="C0", label="accuracy")
    ax2.plot(curve["threshold"], curve["avg_cost"], color="C2", label="average cost")
    ax2.set_xlabel("threshold T")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("accuracy and cost against T")
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
    return fig
