"""Plots of training runs and evaluations, as PNG files (matplotlib, Agg canvas).

A module of plain functions: each takes data (a history DataFrame, a metrics
dict) and a path, draws one figure and writes it.  Figures are created with
``matplotlib.figure.Figure`` (no pyplot, no global state, no display needed).

History columns used (``history.csv``, one row per epoch): ``epoch``,
``train_loss``, ``loss_cls``, ``loss_cost``, ``loss_conf`` (each with ``_sem``),
``val_loss``, ``acc``, ``cost``, ``flop`` (each with ``_sem``).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence


def _figure(figsize=(6.4, 4.4)):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


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
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.legend(loc="best")
    ax.xaxis.get_major_locator().set_params(integer=True)
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
    ax.set_xlabel("epoch")
    ax.set_ylabel("percent")
    ax.set_title(title or "accuracy and cost")
    ax.legend(loc="best")
    ax.xaxis.get_major_locator().set_params(integer=True)
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
