"""Training and evaluation loops: :func:`train` and :func:`evaluate`.

Python owns the orchestration (epochs, data order, schedules, logging,
checkpoints); every loop over numbers runs in the C engine (``Net.train_step``,
``Net.predict``).  The command line (``python -m eenet train|evaluate``) is a
thin layer over these two functions and shares their defaults, which mirror
the authors' ``main.py`` (eenets.pytorch): batch 32, test batch 1, 150 epochs,
Adam, lr 0.001, weight decay 1e-4, momentum 0.9, lambda 1.0, 2 exits placed
``fine``, ``pool`` exits, loss ``v2``, seed 1, validation every epoch.

Differences from the authors' loop, all deliberate:

* Validation uses a held-out part of the training set (``val_fraction``,
  default 0.1); the authors validate on the test set.  ``val_fraction=0``
  restores their behaviour.
* The best model is chosen by validation loss compared as numbers (the
  authors compare the CSV strings).
* v4 exit tags belong to samples (by index), not to batch positions of a
  reshuffled loader.  A sample's new tag is ``argmin_i -log p_i[y] + lambda c_i``
  using the per-sample ``nll`` that ``train_step`` returned for it during the
  epoch (train mode, augmented input, weights of that step); the authors run a
  second train-mode pass after the epoch.  This costs nothing extra, and the
  tags take effect from the next epoch.
* ``adaptive_lr`` follows the schedule the authors' code intends (the ResNet
  paper's): SGD starts at 0.1 (0.01 for the first 2 epochs of a 110-layer
  model) divided by 10 every 100 epochs; Tiny-ImageNet/ImageNet use
  0.05 * 0.1 ** ((epoch - 1) // 30 + 1).  Their code as written resets to 0.1
  at every epoch that is not a multiple of 100 and fails for Adam; here Adam's
  learning rate is left unchanged.
* Everything random is seeded: initial weights from ``seed``, data order and
  augmentation of epoch ``e`` from ``(seed, e)``, the initial v4 tags from
  ``seed``.  So a run resumed from its last epoch checkpoint replays the
  interrupted epoch identically and ends with the same weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from . import models as _models
from ._io import atomic_write_text as _atomic_write_text
from ._io import jsonable as _jsonable
from .net import LOSSES

# The names the model builder and the engine accept (one source: eenet.models, eenet.net).
MODELS = tuple(_models.model_names())
DISTRIBUTIONS = _models.DISTRIBUTIONS
EXIT_TYPES = _models.EXIT_TYPES
OPTIMIZERS = ("SGD", "Adam")
TWO_STAGE_EPOCHS = 25          # v0 for epochs 1..25, then v1 (authors)
CHECKPOINT = "checkpoint.eenet"  # written after every epoch
BEST_MODEL = "model.eenet"       # best validation loss so far
_TRAINING_FIELDS = ("model", "dataset", "num_ee", "distribution", "exit_type", "loss_func",
                    "two_stage", "two_stage_epochs", "lambda_coef", "optimizer", "lr", "adaptive_lr", "momentum",
                    "weight_decay", "batch_size", "filters", "seed", "val_fraction",
                    "train_size", "val_size", "load_model")


class ConfigError(ValueError):
    """An invalid training configuration (raised before any work starts)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI flags, one to one).

    ``num_ee=None`` means the model's own number (2 for EENets, 0 for plain
    ResNets); ``loss_func=None`` means ``v2`` (``v1`` after the first stage
    when ``two_stage``); ``threshold=None`` means 0.5 (1/num_ee for ``v3``).
    """
    model: str = "eenet20"
    dataset: str = "cifar10"
    num_ee: Optional[int] = None
    distribution: str = "fine"
    exit_type: str = "pool"
    loss_func: Optional[str] = None
    two_stage: bool = False
    two_stage_epochs: int = TWO_STAGE_EPOCHS
    lambda_coef: float = 1.0
    optimizer: str = "Adam"
    lr: float = 0.001
    adaptive_lr: bool = False
    momentum: float = 0.9
    weight_decay: float = 0.0001
    epochs: int = 150
    batch_size: int = 32
    test_batch: int = 1
    filters: int = 2
    seed: int = 1
    log_interval: int = 1
    save_model: bool = True
    load_model: Optional[str] = None
    data_dir: Optional[str] = None
    results_dir: Optional[str] = None
    threads: Optional[int] = None
    threshold: Optional[float] = None
    resume: bool = False
    overwrite: bool = False
    val_fraction: float = 0.1
    train_size: Optional[int] = None
    val_size: Optional[int] = None
    test_size: Optional[int] = None
    progress: bool = True

    # ---- derived values ------------------------------------------------------------
    @property
    def is_plain(self) -> bool:
        """A plain ResNet (no early exits, ordinary cross-entropy)."""
        return self.model.startswith("resnet")

    @property
    def resolved_num_ee(self) -> int:
        if self.num_ee is not None:
            return int(self.num_ee)
        return 0 if self.is_plain else 2

    @property
    def final_loss(self) -> str:
        """The loss used after the first stage (all epochs without two_stage)."""
        if self.is_plain:
            return "v0"  # v0 with a single exit is exactly cross-entropy
        if self.two_stage:
            return "v1"
        return self.loss_func or "v2"

    def loss_for_epoch(self, epoch: int) -> str:
        """Loss of 1-based ``epoch``: two-stage runs v0 for the first ``two_stage_epochs``
        (25, the authors' number) epochs."""
        if self.two_stage and not self.is_plain and epoch <= self.two_stage_epochs:
            return "v0"
        return self.final_loss

    def exit_threshold(self) -> float:
        """Confidence threshold T of early-exit inference."""
        from .net import default_threshold
        if self.threshold is not None:
            return float(self.threshold)
        return default_threshold(self.final_loss, self.resolved_num_ee)

    def default_results_dir(self) -> str:
        """``results/<dataset>/<model>[/ee<n>_<distribution>]`` (the authors' layout), with
        the canonical dataset name (``--dataset FMNIST`` writes to ``results/fashion-mnist``)."""
        dataset = _canonical_dataset(self.dataset) or self.dataset
        path = os.path.join("results", dataset, self.model)
        if not self.is_plain and self.model != "eenet8":
            path = os.path.join(path, f"ee{self.resolved_num_ee}_{self.distribution}")
        return path

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config of a saved ``config.json`` (:meth:`to_dict`); unknown keys are
        ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def _known_datasets() -> tuple:
    """Dataset names :func:`eenet.datasets.load` accepts."""
    from . import datasets
    return tuple(datasets.names())


def _canonical_dataset(name: str) -> Optional[str]:
    """The canonical dataset name, or None if unknown."""
    from . import datasets
    try:
        return datasets.canonical_name(name)
    except ValueError:
        return None


def dataset_shape(name: str) -> Optional[tuple]:
    """``((C, H, W), num_classes)`` of dataset ``name`` without reading its files
    (None for an image folder, known only once read)."""
    from . import datasets
    key = _canonical_dataset(name)
    if key is None:
        raise ConfigError(f"unknown dataset {name!r}; expected one of "
                          f"{', '.join(_known_datasets())}")
    try:
        meta = datasets.info(key)
    except KeyError:
        return None
    return tuple(meta.input_shape), int(meta.num_classes)


def validate_config(cfg: TrainConfig, *, check_model: bool = True) -> None:
    """Refuse invalid settings and combinations with a message (no data is read).

    Raises :class:`ConfigError`.  With ``check_model`` the architecture is
    built as a spec (``eenet.models.build_spec``) so that, for example, more
    exits than the model can place fail here, before any work starts.
    """
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.model in MODELS, f"unknown model {cfg.model!r}; expected one of {', '.join(MODELS)}")
    need(cfg.distribution in DISTRIBUTIONS,
         f"unknown distribution {cfg.distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    need(cfg.exit_type in EXIT_TYPES,
         f"unknown exit type {cfg.exit_type!r}; expected one of {', '.join(EXIT_TYPES)}")
    need(cfg.loss_func is None or cfg.loss_func in LOSSES,
         f"unknown loss {cfg.loss_func!r}; expected one of {', '.join(LOSSES)}")
    need(cfg.optimizer in OPTIMIZERS,
         f"unknown optimizer {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    need(_canonical_dataset(cfg.dataset) is not None,
         f"unknown dataset {cfg.dataset!r}; expected one of {', '.join(_known_datasets())}")
    need(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.test_batch >= 1, f"--test-batch must be >= 1, got {cfg.test_batch}")
    need(cfg.log_interval >= 1, f"--log-interval must be >= 1, got {cfg.log_interval}")
    need(cfg.two_stage_epochs >= 1,
         f"--two-stage-epochs must be >= 1, got {cfg.two_stage_epochs}")
    need(cfg.filters >= 1, f"--filters must be >= 1, got {cfg.filters}")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}")
    need(math.isfinite(cfg.lambda_coef) and cfg.lambda_coef >= 0,
         f"--lambda-coef must be >= 0, got {cfg.lambda_coef}")
    need(math.isfinite(cfg.momentum) and 0 <= cfg.momentum < 1,
         f"--momentum must be in [0, 1), got {cfg.momentum}")
    need(math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0,
         f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.threshold is None or 0.0 <= cfg.threshold <= 1.0,
         f"--threshold must be in [0, 1], got {cfg.threshold}")
    need(0.0 <= cfg.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    for name in ("train_size", "val_size", "test_size"):
        value = getattr(cfg, name)
        need(value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}")
    need(cfg.val_size is None or cfg.val_fraction > 0,
         "--val-size needs a validation split (--val-fraction > 0)")

    # combinations
    if cfg.is_plain:
        need(cfg.num_ee in (None, 0),
             f"{cfg.model} is a plain ResNet without early exits; --num-ee must be 0, "
             f"got {cfg.num_ee}")
        need(cfg.loss_func in (None, "v0"),
             f"{cfg.model} is trained with cross-entropy; --loss-func {cfg.loss_func} needs an "
             "EENet model")
        need(not cfg.two_stage, f"--two-stage needs an EENet model, not {cfg.model}")
    else:
        need(cfg.num_ee is None or cfg.num_ee >= 1,
             f"--num-ee must be >= 1 for {cfg.model}, got {cfg.num_ee}")
    if cfg.model == "eenet8":
        need(cfg.num_ee in (None, 2), f"eenet8 has exactly 2 early exits; got --num-ee {cfg.num_ee}")
    if cfg.two_stage:
        need(cfg.loss_func in (None, "v0", "v1"),
             f"--two-stage trains with v0 then v1; it cannot be combined with --loss-func "
             f"{cfg.loss_func}")
    need(not (cfg.resume and cfg.load_model),
         "--resume continues the run in --results-dir; it cannot be combined with --load-model")
    need(not (cfg.resume and not cfg.save_model),
         "--resume needs the run's checkpoints; it cannot be combined with --no-save-model")

    if check_model and not (cfg.load_model or cfg.resume):
        check_architecture(cfg)


def check_architecture(cfg: TrainConfig):
    """Build the model's spec (cheap, no weights) to validate model, exits and input shape.

    Returns the :class:`eenet.spec.ModelSpec`; raises :class:`ConfigError` with
    the model builder's message (e.g. how many exits fit).
    """
    known = dataset_shape(cfg.dataset)
    if known is None:
        return None  # an image folder: shape known only once read
    input_shape, num_classes = known
    from . import models
    try:
        return models.build_spec(cfg.model, num_classes=num_classes, input_shape=input_shape,
                                 num_ee=cfg.resolved_num_ee, distribution=cfg.distribution,
                                 exit_type=cfg.exit_type, filters=cfg.filters)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{cfg.model} on {cfg.dataset} {tuple(input_shape)}: {exc}") from None


# ---- schedules ---------------------------------------------------------------------------

def adaptive_learning_rate(cfg: TrainConfig, epoch: int, current: float) -> float:
    """Learning rate of 1-based ``epoch`` under ``adaptive_lr`` (see module docstring)."""
    if not cfg.adaptive_lr or cfg.optimizer != "SGD":
        return current
    if (_canonical_dataset(cfg.dataset) or cfg.dataset) == "tiny-imagenet":
        return 0.05 * 0.1 ** ((epoch - 1) // 30 + 1)
    if cfg.model.endswith("110") and epoch <= 2:
        return 0.01
    return 0.1 / 10 ** (epoch // 100)


def best_exit_tags(nll: np.ndarray, costs: np.ndarray, lambda_coef: float) -> np.ndarray:
    """v4 tag update: ``argmin_i nll[i, b] + lambda * costs[i]`` per sample.

    nll (E+1, B) per-exit ``-log p_i[y]``; costs (E+1,).  Returns (B,) int32.
    Ties go to the earliest exit.
    """
    score = np.asarray(nll, np.float64) + lambda_coef * np.asarray(costs, np.float64)[:, None]
    return np.argmin(score, axis=0).astype(np.int32)


def _sem(values) -> float:
    """Standard error of the mean (0 for fewer than 2 values)."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return 0.0
    return float(v.std(ddof=1) / math.sqrt(v.size))


# ---- data (the only code that touches eenet.datasets / eenet.data) ----------------------

@dataclass
class Splits:
    """The datasets of a run (:func:`load_splits`)."""
    train: Any
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple


def _cap(ds, n: Optional[int], seed: int):
    """``n`` samples of ``ds`` chosen at random with ``seed`` (all if None)."""
    from . import data
    return data.subset(ds, n, seed=seed)


def load_splits(cfg: TrainConfig, need_train: bool = True) -> Splits:
    """The data of a run: ``cfg.dataset``'s test set, and (``need_train``) its training
    set split into train and validation (seeded by ``cfg.seed``, ``cfg.val_fraction``;
    with ``val_fraction == 0`` the test set serves as validation), each capped at
    ``cfg.train_size`` / ``cfg.val_size`` / ``cfg.test_size`` samples.  Returns an
    object with ``train``, ``val``, ``test`` (datasets; train and val are None without
    ``need_train``), ``num_classes`` and ``input_shape`` (C, H, W).  Used by
    :func:`run_training` and :mod:`eenet.sweep`."""
    from . import data, datasets
    test = datasets.load(cfg.dataset, split="test", data_dir=cfg.data_dir, progress=cfg.progress)
    test = _cap(test, cfg.test_size, cfg.seed + 2)
    train = val = None
    if need_train:
        full = datasets.load(cfg.dataset, split="train", data_dir=cfg.data_dir,
                             progress=cfg.progress)
        if cfg.val_fraction > 0:
            train, val = data.train_val_split(full, val_fraction=cfg.val_fraction, seed=cfg.seed)
            val = _cap(val, cfg.val_size, cfg.seed + 1)
        else:
            train, val = full, test
        train = _cap(train, cfg.train_size, cfg.seed)
    return Splits(train, val, test, int(test.num_classes), tuple(test.image_shape))


def _batches(ds, batch_size: int, *, epoch: int, seed: int, train: bool) -> Iterator:
    """Yield ``(x, y, idx)``: x float32 (B, C, H, W), y int64 (B,), idx int64 (B,) sample
    positions in ``ds``.  Training batches are shuffled and augmented (the dataset's
    augmentation) as a pure function of ``(seed, epoch)``; evaluation batches are in
    order and not augmented."""
    from . import data
    it = data.BatchIterator(ds, batch_size, shuffle=train, augment=train, seed=seed)
    with it.epoch(epoch) as batches:
        yield from batches


def _num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


# ---- evaluation ----------------------------------------------------------------------------

def evaluate_net(net, ds, *, batch_size: int, threshold: float, lambda_coef: float,
                 with_outputs: bool = False) -> dict:
    """Early-exit inference (``net.predict``) of an in-memory network over dataset
    ``ds`` (an eenet dataset, e.g. from :func:`load_splits`), in order and without
    augmentation, ``batch_size`` samples at a time (at most ``net.max_batch``).
    :func:`evaluate` does the same for a saved model; :mod:`eenet.sweep` uses this.

    Returns accuracy, avg_cost, flop_cost (measured FLOP ratio), flops, loss
    (per sample ``-log p_exit[y] + lambda * c_exit``; no cost term for plain
    models), each with its standard error over samples, exit counts and
    per-exit accuracy, and wall-clock time of the ``predict`` calls.
    """
    net.eval()
    batch_size = min(batch_size, net.max_batch)
    costs = np.asarray(net.exit_costs, np.float64)
    flop_costs = np.asarray(getattr(net, "flop_costs", costs), np.float64)
    exit_flops = np.asarray(net.exit_flops, np.float64)
    labels, exits, correct, nll = [], [], [], []
    outs_p, outs_c = [], []
    elapsed = 0.0
    for x, y, _ in _batches(ds, batch_size, epoch=0, seed=0, train=False):
        t0 = time.perf_counter()
        pred = net.predict(x, threshold=threshold)
        elapsed += time.perf_counter() - t0
        y = np.asarray(y, np.int64)
        p_true = pred.probs[np.arange(len(y)), y].astype(np.float64)
        nll.append(-np.log(np.maximum(p_true, 1e-30)))
        labels.append(y)
        exits.append(np.asarray(pred.exit, np.int64))
        correct.append(np.asarray(pred.labels) == y)
        if with_outputs:
            probs, conf = net.predict_all(x)
            outs_p.append(np.asarray(probs))
            outs_c.append(np.asarray(conf))
    y = np.concatenate(labels)
    ex = np.concatenate(exits)
    ok = np.concatenate(correct).astype(np.float64)
    nll_v = np.concatenate(nll)
    n = len(y)
    c = costs[ex]
    loss = nll_v + (lambda_coef * c if net.num_exits > 1 else 0.0)
    num_exits = int(net.num_exits)
    counts = np.bincount(ex, minlength=num_exits)
    exit_acc = [float(ok[ex == i].mean()) if counts[i] else float("nan") for i in range(num_exits)]
    res = {
        "accuracy": float(ok.mean()), "accuracy_sem": _sem(ok),
        "avg_cost": float(c.mean()), "avg_cost_sem": _sem(c),
        "flop_cost": float(flop_costs[ex].mean()),
        "flops": float(exit_flops[ex].mean()), "flops_sem": _sem(exit_flops[ex]),
        "full_flops": float(exit_flops[-1]),
        "loss": float(loss.mean()), "loss_sem": _sem(loss),
        "exit_counts": [int(v) for v in counts],
        "exit_accuracy": exit_acc,
        "exit_costs": [float(v) for v in costs],
        "exit_flop_costs": [float(v) for v in flop_costs],
        "num_samples": int(n),
        "threshold": float(threshold),
        "batch_size": int(batch_size),
        "time_per_sample": elapsed / max(n, 1),
        "images_per_s": n / elapsed if elapsed > 0 else float("inf"),
    }
    if with_outputs:
        res["outputs"] = {"probs": np.concatenate(outs_p, axis=1),
                          "conf": np.concatenate(outs_c, axis=1), "labels": y}
    return res


def format_summary(res: dict, title: str = "") -> str:
    """The end-of-run table: accuracy, average cost, exits with their accuracy, FLOPs,
    wall-clock inference time per sample and images/s."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"  accuracy          {100 * res['accuracy']:.2f}% "
                 f"(± {100 * res['accuracy_sem']:.2f}, {res['num_samples']} samples, "
                 f"threshold {res['threshold']:g})")
    lines.append(f"  average cost      {res['avg_cost']:.4f} (± {res['avg_cost_sem']:.4f}; "
                 f"cost c_i of the loss)")
    lines.append(f"  FLOP ratio        {res['flop_cost']:.4f} (measured FLOPs / full network)")
    lines.append(f"  FLOPs per sample  {res['flops']:,.0f} of {res['full_flops']:,.0f}")
    lines.append(f"  inference         {1e3 * res['time_per_sample']:.4f} ms/sample, "
                 f"{res['images_per_s']:,.0f} images/s (batch {res['batch_size']})")
    lines.append(f"  {'exit':>5} {'cost':>7} {'FLOPratio':>9} {'samples':>8} {'share':>7} "
                 f"{'accuracy':>9}")
    n = max(res["num_samples"], 1)
    last = len(res["exit_counts"]) - 1
    for i, cnt in enumerate(res["exit_counts"]):
        name = "final" if i == last else str(i)
        acc = res["exit_accuracy"][i]
        acc_s = "-" if acc != acc else f"{100 * acc:.2f}%"
        lines.append(f"  {name:>5} {res['exit_costs'][i]:7.4f} {res['exit_flop_costs'][i]:9.4f} "
                     f"{cnt:8d} {100 * cnt / n:6.2f}% {acc_s:>9}")
    return "\n".join(lines)


# ---- files ---------------------------------------------------------------------------------

def _write_history(path: str, rows: list) -> None:
    import pandas as pd
    df = pd.DataFrame(rows)
    _atomic_write_text(path, df.to_csv(index=False))


def _history_frame(rows: list):
    import pandas as pd
    return pd.DataFrame(rows)


# ---- training ------------------------------------------------------------------------------

def _make_optimizer(cfg: TrainConfig, net):
    from . import optim
    if cfg.optimizer == "SGD":
        return optim.SGD(net, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optim.Adam(net, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _copy_state(net) -> dict:
    return {k: np.array(v, copy=True) for k, v in net.state_dict().items()}


def _log(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def train(model: str = "eenet20", dataset: str = "cifar10", **kwargs) -> dict:
    """Train an EENet (or plain ResNet) and evaluate its early-exit inference.

    Keyword arguments are the fields of :class:`TrainConfig` (the CLI flags).
    Returns ``{"accuracy", "avg_cost", "exit_counts", "exit_accuracy", "flops",
    "loss", "time_per_sample", "images_per_s", "epochs_run", "results_dir",
    "history" (pandas.DataFrame, one row per epoch), "config"}`` plus the other
    test-set figures of :func:`evaluate` (``accuracy_sem``, ``avg_cost_sem``,
    ``flop_cost``, ...).  Accuracy and cost are fractions.  Writes the results
    folder (``config.json``, ``history.csv``, ``checkpoint.eenet`` every epoch,
    ``model.eenet`` = best by validation loss, ``metrics.json``, plots) unless
    ``save_model=False`` and ``results_dir=None``.
    """
    cfg = TrainConfig(model=model, dataset=dataset, **kwargs)
    return run_training(cfg)


@contextlib.contextmanager
def threads_set_to(n: Optional[int]) -> Iterator[None]:
    """Run the block with the C core's thread count (``eenet.set_num_threads``, which
    is process-wide) at ``n``, and put the previous count back on the way out, error or
    not.  ``n=None`` leaves the count alone."""
    import eenet
    if n is None:
        yield
        return
    before = eenet.get_num_threads()
    eenet.set_num_threads(n)
    try:
        yield
    finally:
        eenet.set_num_threads(before)


def run_training(cfg: TrainConfig) -> dict:
    """:func:`train` on a :class:`TrainConfig`.  ``cfg.threads`` applies for the run
    only: the process's thread count is restored afterwards, also on error."""
    validate_config(cfg)
    with threads_set_to(cfg.threads):
        return _run_training(cfg)


def _run_training(cfg: TrainConfig) -> dict:
    import eenet
    results_dir = cfg.results_dir or cfg.default_results_dir()
    write_files = cfg.save_model or cfg.results_dir is not None
    ckpt_path = os.path.join(results_dir, CHECKPOINT)
    best_path = os.path.join(results_dir, BEST_MODEL)
    resuming = cfg.resume and os.path.exists(ckpt_path)
    if write_files:
        if os.path.exists(ckpt_path) and not (cfg.resume or cfg.overwrite):
            raise ConfigError(f"{results_dir} holds a checkpoint of an earlier run; pass --resume "
                              "to continue it, --overwrite to start again, or another "
                              "--results-dir")
        if resuming:
            _check_resume_config(cfg, results_dir)
        os.makedirs(results_dir, exist_ok=True)
        if not resuming:
            for name in (CHECKPOINT, BEST_MODEL, "history.csv", "metrics.json"):
                if os.path.exists(os.path.join(results_dir, name)):
                    os.remove(os.path.join(results_dir, name))
        _atomic_write_text(os.path.join(results_dir, "config.json"),
                           json.dumps(_jsonable(cfg.to_dict()), indent=2) + "\n")

    splits = load_splits(cfg)
    max_batch = max(cfg.batch_size, cfg.test_batch)

    # ---- network, optimiser, training state ------------------------------------------
    tag_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 4]))
    n_train = len(splits.train)
    if resuming:
        net, opt, extra = eenet.load_checkpoint(ckpt_path)
        if opt is None:
            raise ConfigError(f"{ckpt_path} has no optimiser state; cannot resume")
        start_epoch = int(extra["epoch"]) + 1
        history = list(extra.get("history", []))
        best = dict(extra.get("best") or {})
        tags = np.asarray(extra["tags"], np.int32) if extra.get("tags") is not None else None
        tag_rng.bit_generator.state = extra["rng_state"]
        _log(cfg, f"resuming {results_dir} after epoch {start_epoch - 1}")
    else:
        if cfg.load_model:
            net = eenet.load(cfg.load_model)
        else:
            net = eenet.build(model=cfg.model, num_classes=splits.num_classes,
                              input_shape=splits.input_shape, num_ee=cfg.resolved_num_ee,
                              distribution=cfg.distribution, exit_type=cfg.exit_type,
                              filters=cfg.filters, max_batch=max_batch, seed=cfg.seed)
        opt = _make_optimizer(cfg, net)
        start_epoch = 1
        history, best = [], {}
        tags = None
    if net.max_batch < cfg.batch_size:
        raise ConfigError(f"the network was built for batches of at most {net.max_batch}; "
                          f"--batch-size {cfg.batch_size} is larger")
    num_exits = int(net.num_exits)
    costs = np.asarray(net.exit_costs, np.float64)
    uses_v4 = any(cfg.loss_for_epoch(e) == "v4" for e in range(1, cfg.epochs + 1))
    if uses_v4 and tags is None:
        tags = tag_rng.integers(0, num_exits, size=n_train).astype(np.int32)
    threshold = cfg.exit_threshold()
    best_state = None

    n_batches = _num_batches(n_train, cfg.batch_size)
    _log(cfg, f"{cfg.model} on {cfg.dataset}: {n_train} train / {len(splits.val)} val / "
              f"{len(splits.test)} test samples, exits {num_exits}, costs "
              + ", ".join(f"{c:.3f}" for c in costs))

    # ---- epochs -------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs + 1):
        loss_name = cfg.loss_for_epoch(epoch)
        opt.lr = adaptive_learning_rate(cfg, epoch, opt.lr)
        net.train()
        t_epoch = time.perf_counter()
        parts = {k: [] for k in ("loss", "loss_cls", "loss_cost", "loss_conf")}
        n_seen = n_correct = 0
        cost_sum = 0.0
        new_tags = tags.copy() if tags is not None else None
        bar = _progress(cfg, n_batches, f"epoch {epoch}/{cfg.epochs} {loss_name}")
        step = 0
        for x, y, idx in _batches(splits.train, cfg.batch_size, epoch=epoch, seed=cfg.seed,
                                  train=True):
            step += 1
            batch_tags = tags[idx] if loss_name == "v4" else None
            try:
                st = net.train_step(x, y, opt, loss=loss_name, lambda_coef=cfg.lambda_coef,
                                    tags=batch_tags, threshold=cfg.threshold)
            except FloatingPointError as exc:
                if bar is not None:
                    bar.close()
                raise FloatingPointError(f"epoch {epoch}, step {step}: {exc}") from None
            for k in parts:
                parts[k].append(float(st[k]))
            n_seen += len(y)
            n_correct += int(st["correct"])
            cost_sum += float(st["cost_sum"])
            if new_tags is not None:
                new_tags[idx] = best_exit_tags(st["nll"], costs, cfg.lambda_coef)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == n_batches:
                    bar.set_postfix(loss=f"{np.mean(parts['loss']):.4f}",
                                    acc=f"{100 * n_correct / n_seen:.2f}%",
                                    cost=f"{cost_sum / n_seen:.3f}", refresh=False)
        if bar is not None:
            bar.close()
        if new_tags is not None:
            tags = new_tags
        row = {"epoch": epoch, "loss_func": loss_name, "lr": float(opt.lr)}
        for k, v in parts.items():
            key = "train_loss" if k == "loss" else k
            row[key] = float(np.mean(v)) if v else float("nan")
            row[key + "_sem"] = _sem(v)
        row["train_acc"] = n_correct / max(n_seen, 1)
        row["train_cost"] = cost_sum / max(n_seen, 1)
        row["train_time"] = time.perf_counter() - t_epoch
        if tags is not None:
            row.update({f"tags_{i}": int(c) for i, c in
                        enumerate(np.bincount(tags, minlength=num_exits))})

        validated = epoch % cfg.log_interval == 0 or epoch == cfg.epochs
        if validated:
            ev = evaluate_net(net, splits.val, batch_size=max(cfg.test_batch, 1),
                               threshold=threshold, lambda_coef=cfg.lambda_coef)
            row.update({"acc": ev["accuracy"], "acc_sem": ev["accuracy_sem"],
                        "cost": ev["avg_cost"], "cost_sem": ev["avg_cost_sem"],
                        "flop_cost": ev["flop_cost"], "flop": ev["flops"],
                        "flop_sem": ev["flops_sem"], "val_loss": ev["loss"],
                        "val_loss_sem": ev["loss_sem"], "val_time": ev["time_per_sample"]})
            row.update({f"exit_{i}": c for i, c in enumerate(ev["exit_counts"])})
            _log(cfg, f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss "
                      f"{ev['loss']:.4f}, val acc {100 * ev['accuracy']:.2f}%, val cost "
                      f"{ev['avg_cost']:.3f}, exits {ev['exit_counts']}")
            improved = not best or float(ev["loss"]) < float(best["val_loss"])
            if improved:
                best = {"epoch": epoch, "val_loss": float(ev["loss"])}
                if cfg.save_model:
                    eenet.save(net, best_path)
                else:
                    best_state = _copy_state(net)
        history.append(row)
        if write_files:
            _write_history(os.path.join(results_dir, "history.csv"), history)
        if cfg.save_model:
            extra = {"epoch": epoch, "tags": tags.tolist() if tags is not None else None,
                     "rng_state": tag_rng.bit_generator.state, "history": history,
                     "best": best, "config": cfg.to_dict()}
            eenet.save(net, ckpt_path, optimizer=opt, extra=_jsonable(extra))

    # ---- the best model on the test set ------------------------------------------------
    if best:
        if cfg.save_model and os.path.exists(best_path):
            net = eenet.load(best_path)
        elif best_state is not None:
            net.load_state_dict(best_state)
    final = evaluate_net(net, splits.test, batch_size=cfg.test_batch, threshold=threshold,
                          lambda_coef=cfg.lambda_coef)
    title = (f"{cfg.model} on {cfg.dataset} (test set; best epoch "
             f"{best.get('epoch', cfg.epochs)} of {cfg.epochs})")
    if cfg.progress:
        print(format_summary(final, title), flush=True)
    metrics = dict(final)
    metrics.update({"epochs_run": len(history), "best_epoch": best.get("epoch"),
                    "results_dir": results_dir if write_files else None})
    hist_df = _history_frame(history)
    if write_files:
        _atomic_write_text(os.path.join(results_dir, "metrics.json"),
                           json.dumps(_jsonable(metrics), indent=2) + "\n")
        from . import plots
        plots.plot_run(results_dir, hist_df, metrics, title=f"{cfg.model} on {cfg.dataset}")
    out = dict(metrics)
    out.update({"history": hist_df, "config": cfg.to_dict()})
    return out


def _check_resume_config(cfg: TrainConfig, results_dir: str) -> None:
    """Refuse to resume a run with different training settings (epochs may grow)."""
    path = os.path.join(results_dir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    new = _jsonable(cfg.to_dict())
    diff = [k for k in _TRAINING_FIELDS if k in old and old[k] != new.get(k)]
    if diff:
        raise ConfigError("--resume with settings that differ from the interrupted run: "
                          + ", ".join(f"{k} {old[k]!r} -> {new.get(k)!r}" for k in diff))


def _progress(cfg: TrainConfig, total: int, desc: str):
    if not cfg.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def _saved_threshold(saved_cfg: dict, net) -> float:
    """The threshold a saved run used: its ``--threshold`` (``threshold`` in
    config.json) if it gave one, else the default for the loss it ended with."""
    if saved_cfg.get("threshold") is not None:
        return float(saved_cfg["threshold"])
    return net.default_threshold(_saved_final_loss(saved_cfg))


def _saved_final_loss(saved_cfg: dict) -> str:
    """The loss a saved run ended with (``TrainConfig.final_loss`` of its config.json;
    ``v2`` without one)."""
    return TrainConfig.from_dict(saved_cfg).final_loss


# ---- evaluation of a saved model -------------------------------------------------------------

def evaluate(model_path: str, dataset: Optional[str] = None, *, threshold: Optional[float] = None,
             data_dir: Optional[str] = None, split: str = "test", batch_size: int = 256,
             test_size: Optional[int] = None, target_cost: Optional[float] = None,
             lambda_coef: float = 1.0, threads: Optional[int] = None, seed: int = 1,
             progress: bool = False) -> dict:
    """Evaluate a saved model (``eenet.save`` file) with early-exit inference.

    ``dataset=None`` takes the dataset from the ``config.json`` beside the
    model.  ``split`` is ``"test"`` or ``"train"``.  ``threshold=None`` uses the
    threshold the run was trained with: the ``threshold`` stored in that
    config.json (``--threshold`` of ``eenet train``) if any, else the default of the
    loss the run ended with (0.5; 1/num_ee for v3); an explicit ``threshold``
    overrides it.  ``target_cost`` (needs :mod:`eenet.calibrate`) uses the largest
    threshold whose average cost on this same data is at most the target (ValueError
    if it is below the first exit's cost).  ``threads`` sets the C core's thread
    count for this call only (restored afterwards).  Returns the figures of
    :func:`train` (no history) plus ``"outputs": {"probs": (E+1, N, K), "conf": (E+1, N),
    "labels": (N,)}`` of the eval-mode forward of every exit.
    """
    if threshold is not None and target_cost is not None:
        raise ConfigError("give either threshold or target_cost, not both")
    with threads_set_to(threads):
        return _evaluate_saved(model_path, dataset, threshold=threshold, data_dir=data_dir,
                               split=split, batch_size=batch_size, test_size=test_size,
                               target_cost=target_cost, lambda_coef=lambda_coef, seed=seed,
                               progress=progress)


def _evaluate_saved(model_path, dataset, *, threshold, data_dir, split, batch_size, test_size,
                    target_cost, lambda_coef, seed, progress) -> dict:
    import eenet
    from . import datasets
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    saved_cfg = {}
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            saved_cfg = json.load(f)
    if dataset is None:
        dataset = saved_cfg.get("dataset")
        if dataset is None:
            raise ConfigError(f"no dataset given and no config.json beside {model_path}")
    if split not in ("test", "train"):
        raise ConfigError(f"split must be 'test' or 'train', got {split!r}")
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"model file {model_path} does not exist")
    net = eenet.load(model_path)
    ds = datasets.load(dataset, split=split, data_dir=data_dir, progress=progress)
    ds = _cap(ds, test_size, seed + 2)
    if threshold is None and target_cost is None:
        threshold = _saved_threshold(saved_cfg, net)
    res = evaluate_net(net, ds, batch_size=batch_size,
                       threshold=0.5 if threshold is None else threshold,
                       lambda_coef=lambda_coef, with_outputs=True)
    if target_cost is not None:
        from . import calibrate
        threshold = calibrate.threshold_for_cost(res["outputs"], np.asarray(net.exit_costs),
                                                 target_cost)
        outputs = res["outputs"]
        res = evaluate_net(net, ds, batch_size=batch_size, threshold=threshold,
                           lambda_coef=lambda_coef)
        res["outputs"] = outputs
        res["target_cost"] = float(target_cost)
    res["model_path"] = model_path
    res["dataset"] = dataset
    res["split"] = split
    if progress:
        print(format_summary(res, f"{model_path} on {dataset} ({split} set)"), flush=True)
    return res
