"""Plots of training runs and evaluations, as PNG files (matplotlib, Agg canvas).

A module of plain functions: each takes data (a history DataFrame, a metrics
dict, sweep results) and a path, draws one figure and writes it; the sweep and
threshold plots also return the Figure (shown inline in notebooks), the path
being optional there.  Figures are created with
``matplotlib.figure.Figure`` (no pyplot, no global state, no display needed).

History columns used (``history.csv``, one row per epoch): ``epoch``,
``train_loss``, ``loss_cls``, ``loss_cost``, ``loss_conf`` (each with ``_sem``),
``val_loss``, ``acc``, ``cost``, ``flop`` (each with ``_sem``).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from ._io import atomic_open


def _figure(figsize=(6.4, 4.4)):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path



def _finish_epoch_axes(ax, ylabel: str, title: str) -> None:
    """Labels, title, legend and integer epoch ticks of a per-epoch plot."""
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    ax.xaxis.get_major_locator().set_params(integer=True)

def _series(df, col):
    """(epochs, values, sem-or-None) of rows where ``col`` is present."""
    if col not in df.columns:
        return None
    sub = df[df[col].notna()]
    if sub.empty:
        return None
    sem = sub[col + "_sem"].to_numpy() if col + "_sem" in sub.columns else None
    return sub["epoch"].to_numpy(), sub[col].to_numpy(), sem


def plot_loss(history, path: str, title: str = "") -> str:
    """Training loss and its parts, and validation loss, per epoch (error bars: SEM)."""
    fig = _figure()
    ax = fig.add_subplot()
    labels = {"train_loss": "train loss", "loss_cls": "train: classification",
              "loss_cost": "train: cost", "loss_conf": "train: confidence",
              "val_loss": "validation loss"}
    for col, label in labels.items():
        s = _series(history, col)
        if s is None or (col != "train_loss" and col != "val_loss" and not any(s[1])):
            continue
        ax.errorbar(s[0], s[1], yerr=s[2], capsize=3, marker="o", ms=3, label=label)
    _finish_epoch_axes(ax, "loss", title or "loss")
    return _save(fig, path)


def plot_acc_cost(history, path: str, title: str = "") -> str:
    """Validation accuracy and average cost (both in %) per epoch."""
    fig = _figure()
    ax = fig.add_subplot()
    for col, label in (("acc", "validation accuracy"), ("cost", "validation average cost")):
        s = _series(history, col)
        if s is None:
            continue
        yerr = None if s[2] is None else 100 * s[2]
        ax.errorbar(s[0], 100 * s[1], yerr=yerr, capsize=3, marker="o", ms=3, label=label)
    _finish_epoch_axes(ax, "percent", title or "accuracy and cost")
    return _save(fig, path)


def plot_acc_vs_flops(history, path: str, title: str = "") -> str:
    """Validation accuracy against average FLOPs per sample, one point per validated epoch."""
    fig = _figure()
    ax = fig.add_subplot()
    if "flop" in history.columns and "acc" in history.columns:
        sub = history[history["acc"].notna()].sort_values("flop")
        xerr = sub["flop_sem"] if "flop_sem" in sub.columns else None
        yerr = 100 * sub["acc_sem"] if "acc_sem" in sub.columns else None
        ax.errorbar(sub["flop"], 100 * sub["acc"], xerr=xerr, yerr=yerr, capsize=3,
                    marker="o", ms=3, linestyle="none")
        for _, r in sub.iterrows():
            ax.annotate(str(int(r["epoch"])), (r["flop"], 100 * r["acc"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FLOPs per sample (multiply-accumulates)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "accuracy vs FLOPs (labels: epoch)")
    return _save(fig, path)


def plot_exit_histogram(exit_counts: Sequence[int], path: str,
                        exit_accuracy: Optional[Sequence[float]] = None,
                        exit_costs: Optional[Sequence[float]] = None, title: str = "") -> str:
    """Samples leaving at each exit, annotated with each exit's accuracy and cost."""
    fig = _figure()
    ax = fig.add_subplot()
    n = len(exit_counts)
    names = [str(i) if i < n - 1 else "final" for i in range(n)]
    bars = ax.bar(range(n), exit_counts, tick_label=names)
    for i, b in enumerate(bars):
        note = []
        if exit_accuracy is not None and exit_accuracy[i] == exit_accuracy[i]:
            note.append(f"acc {100 * exit_accuracy[i]:.1f}%")
        if exit_costs is not None:
            note.append(f"cost {exit_costs[i]:.2f}")
        if note:
            ax.annotate("\n".join(note), (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("exit")
    ax.set_ylabel("samples")
    ax.set_title(title or "exits taken")
    ax.margins(y=0.2)
    return _save(fig, path)


def plot_run(results_dir: str, history, metrics: dict, title: str = "") -> list:
    """All plots of a training run into ``results_dir``; returns the paths written:
    ``loss.png``, ``acc_cost.png``, ``acc_vs_flops.png``, ``exits.png``."""
    sfx = f" of {title}" if title else ""
    return [
        plot_loss(history, os.path.join(results_dir, "loss.png"), "loss" + sfx),
        plot_acc_cost(history, os.path.join(results_dir, "acc_cost.png"),
                      "validation accuracy and cost" + sfx),
        plot_acc_vs_flops(history, os.path.join(results_dir, "acc_vs_flops.png"),
                          "validation accuracy vs FLOPs" + sfx),
        plot_exit_histogram(metrics["exit_counts"], os.path.join(results_dir, "exits.png"),
                            metrics.get("exit_accuracy"), metrics.get("exit_costs"),
                            "test-set exits" + sfx),
    ]


# =========================================================================== sweeps
# Accuracy-cost analysis over sweep trials and over the exit threshold. These return the
# Figure (shown inline in notebooks) and also write it when a path is given.

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
    fig = None
    if ax is None:
        fig = _figure((6, 4.5))
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
        _save(fig, os.fspath(path))
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
    # the engine compares float32 confidences with the threshold cast to float32
    # (csrc/net.c exit_of): compare in the confidences' own precision to match it exactly
    ftype = conf.dtype if conf.dtype in (np.float32, np.float64) else np.float64
    early = conf[:E].astype(ftype, copy=False)
    thresholds = thresholds.astype(ftype)
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
    fig = _figure((10, 4))
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
    if path is not None:
        _save(fig, os.fspath(path))
    else:
        fig.tight_layout()
    return fig
