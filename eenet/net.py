"""The network: a :class:`~eenet.spec.ModelSpec` compiled into the C engine.

:func:`build` makes a :class:`Net` from the same arguments as
:func:`eenet.models.build_spec`.  A :class:`Net` keeps every trainable parameter
in one contiguous float32 buffer, the gradients in a second with the same
layout, the optimiser state in a third and the batch-norm running statistics
in a fourth; :meth:`Net.state_dict` hands out zero-copy, writeable NumPy views
on them under the authors' PyTorch names.

Encoding handed to the C engine (``csrc/net.h`` documents it field by field):
the spec's tensors become a ``(T, 3)`` int32 table (vectors as ``(F, 1, 1)``);
each exit gets two extra tensors, the sigmoid of its confidence head and the
softmax of its classifier; the ops of stage 0, exit 0, stage 1, ..., exit E
become ``(num_ops, 16)`` int32 records (kind, tensor ids, kernel/stride/pad,
parameter offsets, segment) plus ``(num_ops, 2)`` float attributes (eps,
momentum).

Initialisation: NumPy's ``default_rng(seed)`` draws every parameter in
``spec.params`` order from its ``Param.init`` (Kaiming normal with fan_out,
uniform +-1/sqrt(fan_in), ones, zeros), so a seed gives the same weights on
every machine; they differ from PyTorch's draws for the same seed.

Differences from the authors' PyTorch code worth knowing: the ``bnpool`` exit's
batch norm is trained and uses running statistics in eval mode (the authors'
is hidden from the optimiser and always uses batch statistics); a new
:class:`Net` starts in training mode, as a PyTorch module does.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _core
from ._io import atomic_open
from .spec import ModelSpec

__all__ = ["Net", "Prediction", "build", "save", "load", "load_checkpoint", "LOSSES"]

LOSSES = ("v0", "v1", "v2", "v3", "v4")

# op kinds in the order of csrc/net.h's eenet_op_kind
_KINDS = {"conv2d": 0, "batchnorm2d": 1, "relu": 2, "add": 3, "maxpool2d": 4,
          "global_avgpool": 5, "linear": 6, "sigmoid": 7, "softmax": 8}
_FIELDS = 16
(_F_KIND, _F_IN0, _F_IN1, _F_OUT, _F_KERNEL, _F_STRIDE, _F_PAD, _F_WEIGHT, _F_BIAS,
 _F_RMEAN, _F_RVAR, _F_NBT, _F_SEGMENT) = range(13)

_FORMAT = "eenet-checkpoint"
_FORMAT_VERSION = 1


@dataclass
class Prediction:
    """Early-exit predictions for a batch of B samples.

    labels (B,) int64 predicted class; probs (B, K) float32 softmax of the exit
    taken; exit (B,) int64 index of that exit (E = the final exit); cost (B,)
    float64 its cost c_exit; conf (B,) float32 its confidence (1.0 at a final
    exit without a confidence head).
    """
    labels: np.ndarray
    probs: np.ndarray
    exit: np.ndarray
    cost: np.ndarray
    conf: np.ndarray


def default_threshold(loss: str, num_ee: int) -> float:
    """The confidence threshold T of early-exit inference when none is given: 0.5, or
    1/num_ee for loss ``v3`` with ``num_ee`` >= 1 early exits.  The one rule behind
    ``Net.default_threshold``, ``TrainConfig.exit_threshold`` and ``eenet.evaluate``."""
    if loss == "v3" and num_ee > 0:
        return 1.0 / num_ee
    return 0.5


def _shape3(shape: tuple) -> tuple:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 1:
        return (shape[0], 1, 1)
    raise ValueError(f"tensor shape {shape} is neither (C, H, W) nor (F,)")


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class _Program:
    """The C encoding of a ModelSpec plus the name -> buffer layout."""

    def __init__(self, spec: ModelSpec):
        self.param_slots: dict = {}   # name -> (offset, shape) in params
        self.buf_slots: dict = {}     # name -> (offset, shape) in bufs
        self.nbt_slots: dict = {}     # name -> index in nbt
        self.order: list = []         # state_dict names in spec order
        n_params = n_bufs = n_bn = 0
        for p in spec.params:
            shape = tuple(int(s) for s in p.shape)
            self.order.append(p.name)
            if p.trainable:
                self.param_slots[p.name] = (n_params, shape)
                n_params += _numel(shape)
            elif p.name.endswith("num_batches_tracked"):
                self.nbt_slots[p.name] = n_bn
                n_bn += 1
            else:
                self.buf_slots[p.name] = (n_bufs, shape)
                n_bufs += _numel(shape)
        self.num_params, self.num_bufs, self.num_bn = n_params, n_bufs, n_bn

        tensors = [_shape3(s) for s in spec.tensors]
        records, floats, exits = [], [], []

        def new_tensor(shape):
            tensors.append(_shape3(shape))
            return len(tensors) - 1

        def emit(op, segment):
            rec = [-1] * _FIELDS
            rec[_F_KIND] = _KINDS[op.kind]
            rec[_F_IN0] = int(op.inputs[0])
            rec[_F_IN1] = int(op.inputs[1]) if len(op.inputs) > 1 else -1
            rec[_F_OUT] = int(op.output)
            rec[_F_SEGMENT] = segment
            eps, momentum = 1e-5, 0.1
            a = op.attrs
            if op.kind in ("conv2d", "maxpool2d"):
                rec[_F_KERNEL] = int(a["kernel"])
                rec[_F_STRIDE] = int(a.get("stride", 1))
                rec[_F_PAD] = int(a.get("padding", 0))
            if op.kind in ("conv2d", "linear"):
                rec[_F_WEIGHT] = self._param(op.params[0])
                rec[_F_BIAS] = self._param(op.params[1]) if len(op.params) > 1 else -1
            elif op.kind == "batchnorm2d":
                w, b, rm, rv, nbt = op.params
                rec[_F_WEIGHT] = self._param(w)
                rec[_F_BIAS] = self._param(b)
                rec[_F_RMEAN] = self.buf_slots[rm][0]
                rec[_F_RVAR] = self.buf_slots[rv][0]
                rec[_F_NBT] = self.nbt_slots[nbt]
                eps = float(a.get("eps", 1e-5))
                momentum = float(a.get("momentum", 0.1))
            records.append(rec)
            floats.append([eps, momentum])

        def emit_act(kind, inp, segment):
            out = new_tensor(tensors[inp])
            rec = [-1] * _FIELDS
            rec[_F_KIND] = _KINDS[kind]
            rec[_F_IN0] = inp
            rec[_F_OUT] = out
            rec[_F_SEGMENT] = segment
            records.append(rec)
            floats.append([0.0, 0.0])
            return out

        produced_by = {0: -1}   # tensor -> segment
        for s, (stage, ex) in enumerate(zip(spec.stages, spec.exits)):
            for op in stage:
                emit(op, 2 * s)
            for op in ex.ops:
                emit(op, 2 * s + 1)
            conf_t = -1
            if ex.confidence is not None:
                emit(ex.confidence, 2 * s + 1)
                conf_t = emit_act("sigmoid", int(ex.confidence.output), 2 * s + 1)
            emit(ex.classifier, 2 * s + 1)
            prob_t = emit_act("softmax", int(ex.classifier.output), 2 * s + 1)
            exits.append([int(ex.input), prob_t, conf_t])
            # batched early exit compacts only the stage-boundary tensor: check
            # that nothing else crosses a boundary
            for op in list(stage) + list(ex.ops) + [ex.classifier] + (
                    [ex.confidence] if ex.confidence is not None else []):
                seg = 2 * s + (0 if op in stage else 1)
                for t in op.inputs:
                    t = int(t)
                    allowed = (produced_by.get(t) == seg or
                               (seg == 2 * s + 1 and t == int(ex.input)) or
                               (seg == 2 * s and s > 0 and t == int(spec.exits[s - 1].input)) or
                               (seg == 0 and t == 0))
                    if not allowed:
                        raise ValueError(
                            f"{spec.model}: op {op.kind} -> {op.output} in "
                            f"{'stage' if seg % 2 == 0 else 'exit'} {s} reads tensor {t} "
                            f"from another stage; only exit inputs may cross stages")
                produced_by[int(op.output)] = seg
        self.tensors = np.ascontiguousarray(tensors, dtype=np.int32)
        self.ops = np.ascontiguousarray(records, dtype=np.int32)
        self.opf = np.ascontiguousarray(floats, dtype=np.float32)
        self.exits = np.ascontiguousarray(exits, dtype=np.int32)

    def _param(self, name: str) -> int:
        return self.param_slots[name][0]


class Net:
    """An EENet (or plain ResNet) running in the C engine.

    Build with :func:`build`.  Arrays: x float32 (B, C, H, W) with
    1 <= B <= max_batch, labels int64 (B,).  E1 = :attr:`num_exits` (early exits
    plus the final one), K = :attr:`num_classes`.
    """

    def __init__(self, spec: ModelSpec, max_batch: int = 128, seed: int = 0,
                 build_args: Optional[dict] = None):
        if not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.spec = spec
        self.build_args = dict(build_args or {})
        self.max_batch = int(max_batch)
        self.seed = seed
        prog = _Program(spec)
        self._prog = prog
        costs = np.asarray(spec.costs, dtype=np.float64)
        self.exit_costs = costs
        flop_costs = spec.flop_costs if spec.flop_costs else spec.costs
        self.flop_costs = np.asarray(flop_costs, dtype=np.float64)
        self.exit_flops = np.asarray([e.flops for e in spec.exits], dtype=np.int64)
        self.num_exits = len(spec.exits)
        self.num_classes = int(spec.num_classes)
        self.input_shape = tuple(int(s) for s in spec.input_shape)
        self.training = True
        self._core = _core.Net(prog.tensors, prog.ops, prog.opf, prog.exits,
                               np.ascontiguousarray(costs, dtype=np.float32), prog.num_params,
                               prog.num_bufs, prog.num_bn, self.max_batch)
        self._params, self._grads, self._opt_state, self._bufs, self._nbt = self._core.views()
        self._optimizer = None
        self._views = {}
        self._grad_views = {}
        for name, (off, shape) in prog.param_slots.items():
            n = _numel(shape)
            self._views[name] = self._params[off:off + n].reshape(shape)
            self._grad_views[name] = self._grads[off:off + n].reshape(shape)
        for name, (off, shape) in prog.buf_slots.items():
            self._views[name] = self._bufs[off:off + _numel(shape)].reshape(shape)
        for name, idx in prog.nbt_slots.items():
            self._views[name] = self._nbt[idx:idx + 1].reshape(())
        self.reset_parameters(seed)

    # -- parameters ----------------------------------------------------------
    def reset_parameters(self, seed: int = 0) -> None:
        """Initialise every parameter and buffer from ``Param.init`` with
        ``numpy.random.default_rng(seed)``, in ``spec.params`` order."""
        rng = np.random.default_rng(seed)
        for p in self.spec.params:
            v = self._views[p.name]
            if p.name in self._prog.nbt_slots:
                v[...] = 0
            elif p.init == "kaiming_normal_fan_out":
                v[...] = rng.normal(0.0, math.sqrt(2.0 / p.fan_out), size=v.shape)
            elif p.init == "uniform_fan_in":
                bound = 1.0 / math.sqrt(p.fan_in)
                v[...] = rng.uniform(-bound, bound, size=v.shape)
            elif p.init == "ones":
                v[...] = 1.0
            elif p.init == "zeros":
                v[...] = 0.0
            else:
                raise ValueError(f"parameter {p.name}: unknown init {p.init!r}")

    def state_dict(self) -> dict:
        """name -> zero-copy writeable view: trainable parameters, BN running
        statistics (float32) and ``num_batches_tracked`` (int64, shape ()),
        named as the authors' PyTorch state_dict, in spec order."""
        return {name: self._views[name] for name in self._prog.order}

    def parameters(self) -> dict:
        """name -> view of every trainable parameter."""
        return {n: self._views[n] for n in self._prog.order if n in self._prog.param_slots}

    def gradients(self) -> dict:
        """name -> view of the gradient of every trainable parameter (last step)."""
        return {n: self._grad_views[n] for n in self._prog.order if n in self._prog.param_slots}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the network by name.  Every shape is checked (and,
        with ``strict``, missing or unexpected names are errors) before
        anything is written, so a failed load changes nothing."""
        own = self.state_dict()
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing[:10]}"
                             f"{'...' if len(missing) > 10 else ''}, unexpected keys "
                             f"{unexpected[:10]}{'...' if len(unexpected) > 10 else ''}")
        staged = {}
        for name, value in state.items():
            if name not in own:
                continue
            arr = np.asarray(value)
            if tuple(arr.shape) != tuple(own[name].shape):
                raise ValueError(f"load_state_dict: {name}: expected shape "
                                 f"{tuple(own[name].shape)}, got {tuple(arr.shape)}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"load_state_dict: {name}: contains NaN or infinity")
            staged[name] = arr
        for name, arr in staged.items():
            own[name][...] = arr

    @property
    def num_parameters(self) -> int:
        """Trainable scalars (all exits included)."""
        return int(self._prog.num_params)

    # -- modes -----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Net":
        """Training mode: forward() uses batch statistics and updates running ones."""
        self.training = bool(mode)
        return self

    def eval(self) -> "Net":
        """Evaluation mode: batch norm uses running statistics (folded into the
        convolution it follows, see the README's notes on threads and eval mode)."""
        return self.train(False)

    # -- compute -------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> tuple:
        """Every exit on x float32 (B, C, H, W) -> (probs (E1, B, K) float32,
        conf (E1, B) float32).  In training mode BN updates running statistics."""
        return self._core.forward(x, self.training)

    __call__ = forward

    def predict_all(self, x: np.ndarray) -> tuple:
        """Eval-mode forward of every exit (any batch size; chunks of max_batch):
        (probs (E1, B, K), conf (E1, B))."""
        x = self._check_any_batch(x)
        if x.shape[0] <= self.max_batch:
            return self._core.forward(x, False)
        parts = [self._core.forward(x[i:i + self.max_batch], False)
                 for i in range(0, x.shape[0], self.max_batch)]
        return (np.concatenate([p for p, _ in parts], axis=1),
                np.concatenate([c for _, c in parts], axis=1))

    def predict(self, x: np.ndarray, threshold: float = 0.5) -> Prediction:
        """Batched early-exit inference in eval mode.

        Stage by stage: samples whose confidence exceeds ``threshold`` at an
        early exit leave with that exit's prediction, the rest are compacted
        and continue; the final exit takes whoever is left.  Any batch size
        (processed in chunks of max_batch).  A sample's result does not depend
        on its batch neighbours.
        """
        x = self._check_any_batch(x)
        threshold = float(threshold)
        if x.shape[0] <= self.max_batch:
            # one chunk: the core's arrays as they are (the concatenations cost
            # ~10 us a call, 4% of an EENet-8 batch of 32)
            labels, probs, exits, conf = self._core.predict(x, threshold)
        else:
            chunks = [self._core.predict(x[i:i + self.max_batch], threshold)
                      for i in range(0, x.shape[0], self.max_batch)]
            labels, probs, exits, conf = (np.concatenate([c[j] for c in chunks])
                                          for j in range(4))
        return Prediction(labels=labels, probs=probs, exit=exits,
                          cost=self.exit_costs[exits], conf=conf)

    def _check_any_batch(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x: expected a numpy.ndarray of float32, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[0] < 1:
            raise ValueError(f"x: expected shape (B, {', '.join(map(str, self.input_shape))}) "
                             f"with B >= 1, got {x.shape}")
        return x

    def default_threshold(self, loss: str = "v2") -> float:
        """T of the inference rule: 0.5, or 1/num_early_exits for loss v3
        (:func:`default_threshold`)."""
        return default_threshold(loss, self.num_exits - 1)

    def train_step(self, x: np.ndarray, y: np.ndarray, opt, loss: str = "v2",
                   lambda_coef: float = 1.0, tags: Optional[np.ndarray] = None,
                   threshold: Optional[float] = None) -> dict:
        """One step: zero grads, forward (train mode), loss, backward, update.

        x float32 (B, C, H, W); y int64 (B,); tags int32 (B,) exit tags for
        ``loss="v4"``.  Returns {loss, loss_cls, loss_cost, loss_conf, correct,
        cost_sum, exit_counts (E1,) int64, nll (E1, B) float32}.  Raises
        FloatingPointError on a non-finite loss or gradient (naming the step)
        and ValueError/TypeError on bad input; in both cases weights, running
        statistics and optimiser state are left as they were.
        """
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        if getattr(opt, "net", None) is not self:
            raise ValueError("opt: the optimiser is bound to another network "
                             "(create it with eenet.optim.SGD(net, ...) or Adam(net, ...))")
        if self._optimizer is not opt:
            raise ValueError("opt: a newer optimiser was created for this network; "
                             "use that one (the state buffer is shared)")
        if threshold is None:
            threshold = self.default_threshold(loss)
        version = LOSSES.index(loss)
        stats = self._core.train_step(
            x, y, tags, version, float(lambda_coef), float(threshold), opt._KIND,
            float(opt.lr), float(getattr(opt, "momentum", 0.0)),
            float(getattr(opt, "dampening", 0.0)), bool(getattr(opt, "nesterov", False)),
            float(opt.betas[0]) if hasattr(opt, "betas") else 0.9,
            float(opt.betas[1]) if hasattr(opt, "betas") else 0.999,
            float(getattr(opt, "eps", 1e-8)), float(opt.weight_decay), int(opt.step_count) + 1,
            opt.step_count == 0)
        opt.step_count += 1
        return stats

    # -- misc ------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the C engine allocated for this network."""
        return int(self._core.nbytes)

    def architecture(self) -> dict:
        """The build arguments that recreate this network (JSON-able)."""
        return dict(self.build_args, max_batch=self.max_batch)

    def __repr__(self) -> str:
        return (f"Net({self.spec.model}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape}, exits={self.num_exits}, "
                f"costs={np.round(self.exit_costs, 4).tolist()}, "
                f"params={self.num_parameters}, max_batch={self.max_batch})")


def build(model: str = "eenet20", num_classes: int = 10, input_shape: tuple = (3, 32, 32),
          num_ee: int = 2, distribution: str = "fine", exit_type: str = "pool",
          filters: int = 2, max_batch: int = 128, seed: int = 0) -> Net:
    """Build a network (see :func:`eenet.models.build_spec` for the arguments)
    with an activation arena for batches of up to ``max_batch`` and weights
    initialised from ``seed``."""
    from .models import build_spec
    spec = build_spec(model, num_classes=num_classes, input_shape=tuple(input_shape),
                      num_ee=num_ee, distribution=distribution, exit_type=exit_type,
                      filters=filters)
    args = dict(model=model, num_classes=int(num_classes),
                input_shape=[int(s) for s in input_shape], num_ee=int(num_ee),
                distribution=distribution, exit_type=exit_type, filters=int(filters))
    return Net(spec, max_batch=max_batch, seed=seed, build_args=args)


# ---- checkpoints ----------------------------------------------------------------------

def save(net: Net, path, optimizer=None, extra: Optional[dict] = None) -> None:
    """Write ``net`` (architecture, weights, running statistics), optionally
    the optimiser (hyper-parameters, step count, state) and a JSON-able
    ``extra`` dict to one ``.npz`` file, atomically: a temporary file in the
    same directory, then ``os.replace``."""
    path = os.fspath(path)
    if optimizer is not None and getattr(optimizer, "net", None) is not net:
        raise ValueError("optimizer: bound to another network")
    header = {"format": _FORMAT, "version": _FORMAT_VERSION,
              "architecture": net.architecture(), "seed": net.seed,
              "names": list(net.state_dict().keys()),
              "optimizer": optimizer.hyper() if optimizer is not None else None,
              "extra": extra if extra is not None else {}}
    try:
        header_bytes = json.dumps(header).encode("utf-8")
    except TypeError as exc:
        raise ValueError(f"extra: must be JSON-serialisable ({exc})") from None
    arrays = {"header": np.frombuffer(header_bytes, dtype=np.uint8)}
    for name, v in net.state_dict().items():
        arrays["sd/" + name] = np.array(v)
    if optimizer is not None:
        arrays["opt/state"] = np.array(net._opt_state)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _read(path: str) -> tuple:
    """(header dict, arrays dict) of a checkpoint; ValueError naming the file
    if it is not a complete eenet checkpoint."""
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable eenet checkpoint (corrupt or truncated: "
                         f"{exc})") from None
    if "header" not in arrays:
        raise ValueError(f"{path}: not an eenet checkpoint (no header)")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupt checkpoint header ({exc})") from None
    if header.get("format") != _FORMAT or header.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {header.get('format')!r} "
                         f"version {header.get('version')!r}")
    return header, arrays


def _restore(path: str, header: dict, arrays: dict, net: Optional[Net],
             optimizer=None) -> tuple:
    from . import optim
    arch = header["architecture"]
    if net is None:
        args = dict(arch)
        max_batch = args.pop("max_batch", 128)
        try:
            net = build(**args, max_batch=max_batch, seed=header.get("seed", 0))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: cannot rebuild the architecture {arch}: {exc}") from None
    else:
        mine = {k: v for k, v in net.architecture().items() if k != "max_batch"}
        theirs = {k: v for k, v in arch.items() if k != "max_batch"}
        diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs)
                if theirs.get(k) != mine.get(k)}
        if diff:
            raise ValueError(f"{path}: checkpoint of another architecture: " + ", ".join(
                f"{k}={a!r} in the file, {b!r} in the network" for k, (a, b) in
                sorted(diff.items())))
    state = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    try:
        own = net.state_dict()
        for name, v in state.items():
            if name in own and own[name].dtype != v.dtype:
                raise ValueError(f"{name}: dtype {v.dtype}, expected {own[name].dtype}")
        # validate everything (shapes, names, optimiser) before writing anything
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if missing or unexpected:
            raise ValueError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, v in state.items():
            if v.shape != own[name].shape:
                raise ValueError(f"{name}: shape {v.shape}, expected {own[name].shape}")
        opt_hyper = header.get("optimizer")
        opt_state = arrays.get("opt/state")
        if opt_hyper is not None and (opt_state is None or opt_state.shape !=
                                      net._opt_state.shape or opt_state.dtype != np.float32):
            raise ValueError("optimizer state missing or of the wrong size")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    net.load_state_dict(state)
    opt = None
    if opt_hyper is not None:
        if optimizer is None:
            opt = optim.from_hyper(net, opt_hyper)
        else:
            opt = optimizer
            opt.load_hyper(opt_hyper)
        net._opt_state[...] = opt_state
    return net, opt


def load(path, net: Optional[Net] = None) -> Net:
    """Read a checkpoint written by :func:`save` and return the network.

    With ``net`` the weights are loaded into that network after checking the
    architecture matches; otherwise a new network is built from the file.
    Raises ValueError naming the file for a corrupt or truncated file or an
    architecture mismatch, before changing anything.
    """
    path = os.fspath(path)
    header, arrays = _read(path)
    return _restore(path, header, arrays, net)[0]


def load_checkpoint(path, net: Optional[Net] = None, optimizer=None) -> tuple:
    """Read a checkpoint: ``(net, optimizer or None, extra dict)``.  With
    ``net`` (and ``optimizer``) given, restores into them (same checks as
    :func:`load`); the optimiser's state, step count and hyper-parameters come
    from the file, so the next step is the one training would have taken."""
    path = os.fspath(path)
    header, arrays = _read(path)
    net, opt = _restore(path, header, arrays, net, optimizer)
    return net, opt, header.get("extra", {})
