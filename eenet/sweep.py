"""Hyper-parameter sweeps over :func:`eenet.train`, locally or on a Dask cluster.

A sweep spec has fixed settings, a grid (every combination) and/or seeded random draws over
any argument of :func:`eenet.train`, plus an optional ``seeds`` list; it is written as a
Python dict or a TOML/JSON file::

    seeds = [1, 2]          # optional: every configuration once per seed (train's `seed`)

    [fixed]
    model = "eenet8"
    dataset = "fashion-mnist"
    epochs = 1
    [grid]                  # every combination
    lambda_coef = [0.5, 2.0]
    num_ee = [1, 2]
    [random]                # optional: n draws, seeded (`n` and `seed` are reserved here)
    n = 8
    seed = 0
    lr = { log_uniform = [1e-4, 1e-2] }
    momentum = { uniform = [0.8, 0.99] }
    optimizer = { choice = ["SGD", "Adam"] }

The trials are grid combinations x random draws x seeds. The spec is checked against the
signature of the trial function (``eenet.train``) before anything runs: an unknown parameter
or a bad value raises :class:`SpecError` naming it.

Execution uses Dask distributed, never a home-made scheduler: by default a ``LocalCluster``
of worker *processes* sized so that trials x threads per trial <= cores (the threads are
passed to ``eenet.train(threads=...)``); with ``scheduler="tcp://host:8786"`` a
``dask.distributed.Client`` to a running scheduler. A trial returns its result to the client
as a value (metrics, history, per-exit validation outputs), so workers need only eenet and
the data root, not a shared file system; the client writes the store::

    results_dir/
      spec.json                   the normalised spec of the last run
      sweep.csv                   one row per trial, rewritten atomically as trials finish
      pareto.png                  accuracy vs average cost over the finished trials
      trials/<hash>/              hash = stable hash of the trial's sorted config
        config.json  status.json  result.json  history.csv  outputs.npz  error.txt
        run/                      the trial's own results_dir (checkpoints), see below

Faults: a trial that raises, or whose worker dies (``distributed.KilledWorker``; the local
cluster is created with ``allowed_failures=0`` so each death counts as one attempt here), is
resubmitted up to ``retries`` times and then recorded as failed with its error; the sweep goes
on. Running the same sweep again skips trials whose status is ``done`` and resubmits the
others with ``resume=True`` so that they continue from their last checkpoint. Checkpoints are
written by the worker into ``trials/<hash>/run``: with a local pool or a shared file system
that is the store itself, so resuming works; a worker that cannot create that path (no shared
file system) trains in a temporary folder and the trial restarts from scratch when retried.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import io
import json
import math
import os
import pathlib
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ._io import atomic_write_bytes
from ._io import jsonable as _jsonable

__all__ = ["SpecError", "SweepSpec", "load_spec", "validate_spec", "expand", "trial_hash",
           "run", "load", "load_outputs", "add_sweep_parser", "sweep_main"]

# Arguments of eenet.train that the sweep itself sets for every trial.
RESERVED = ("results_dir", "resume", "threads", "progress")
# Keys of [random] that are not parameters.
RANDOM_KEYS = ("n", "seed")
DISTRIBUTIONS = ("log_uniform", "uniform", "choice")
TOP_LEVEL_KEYS = ("fixed", "grid", "random", "seeds", "name", "description")

# Value domains of eenet.train's arguments (applied only to parameters the trial function has).
_CHOICES: dict[str, tuple[str, ...]] = {
    "distribution": ("pareto", "fine", "linear", "gold_ratio"),
    "exit_type": ("plain", "pool", "bnpool"),
    "loss_func": ("v0", "v1", "v2", "v3", "v4"),
    "optimizer": ("SGD", "Adam"),
}
_POSITIVE_INT = ("epochs", "batch_size", "test_batch", "filters", "log_interval",
                 "train_size", "val_size", "test_size")
_NONNEG_INT = ("num_ee",)
_POSITIVE_FLOAT = ("lr",)
_NONNEG_FLOAT = ("lambda_coef", "weight_decay")
_UNIT_FLOAT = ("momentum", "threshold")  # in [0, 1]


class SpecError(ValueError):
    """An invalid sweep spec; the message names the offending section and parameter."""


@dataclass
class SweepSpec:
    """A sweep: ``fixed`` settings, a ``grid`` (lists, every combination), ``random``
    distributions ({"log_uniform": [a, b]}, {"uniform": [a, b]}, {"choice": [...]}) drawn
    ``n`` times with ``random_seed``, and ``seeds`` (each configuration once per seed)."""

    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    random: dict[str, dict] = field(default_factory=dict)
    n: int = 0
    random_seed: int = 0
    seeds: list[int] | None = None
    name: str | None = None

    def to_dict(self) -> dict:
        """The spec in its dict/TOML/JSON form."""
        d: dict[str, Any] = {"fixed": dict(self.fixed), "grid": {k: list(v) for k, v in
                                                               self.grid.items()}}
        if self.random or self.n:
            d["random"] = {"n": self.n, "seed": self.random_seed, **copy.deepcopy(self.random)}
        if self.seeds is not None:
            d["seeds"] = list(self.seeds)
        if self.name is not None:
            d["name"] = self.name
        return d


# --------------------------------------------------------------------------- spec parsing

def load_spec(source: "SweepSpec | Mapping | str | os.PathLike") -> SweepSpec:
    """Read a spec from a dict, a ``.toml`` or ``.json`` file, or return a SweepSpec as is.

    Only the structure is checked here; :func:`validate_spec` checks parameters and values.
    """
    if isinstance(source, SweepSpec):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.is_file():
            raise SpecError(f"sweep spec file {str(path)!r} does not exist")
        text = path.read_bytes()
        suffix = path.suffix.lower()
        try:
            if suffix == ".toml":
                import tomllib
                data = tomllib.loads(text.decode("utf-8"))
            elif suffix == ".json":
                data = json.loads(text.decode("utf-8"))
            else:
                raise SpecError(f"sweep spec file {str(path)!r}: expected a .toml or .json "
                                f"file, got suffix {suffix!r}")
        except SpecError:
            raise
        except Exception as e:  # tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeError
            raise SpecError(f"sweep spec file {str(path)!r} could not be parsed: {e}") from e
        return _spec_from_dict(data)
    if isinstance(source, Mapping):
        return _spec_from_dict(source)
    raise SpecError(f"sweep spec: expected a dict, a SweepSpec or a .toml/.json path, got "
                    f"{type(source).__name__}")


def _spec_from_dict(data: Mapping) -> SweepSpec:
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SpecError(f"sweep spec: unknown section {unknown[0]!r} (expected "
                        f"{', '.join(TOP_LEVEL_KEYS)}; put settings under [fixed], [grid] "
                        f"or [random])")
    sections = {}
    for sec in ("fixed", "grid", "random"):
        val = data.get(sec, {})
        if val is None:
            val = {}
        if not isinstance(val, Mapping):
            raise SpecError(f"sweep spec: [{sec}] must be a table/dict, got "
                            f"{type(val).__name__}")
        sections[sec] = dict(val)
    random = sections["random"]
    n = random.pop("n", 0 if not random else None)
    rseed = random.pop("seed", 0)
    if random and n is None:
        raise SpecError("sweep spec: [random] needs n (the number of draws)")
    if not _is_int(n) or n < 0:
        raise SpecError(f"sweep spec: random.n must be an integer >= 0, got {n!r}")
    if n > 0 and not random:
        raise SpecError("sweep spec: random.n is set but [random] has no parameter to draw")
    if not _is_int(rseed):
        raise SpecError(f"sweep spec: random.seed must be an integer, got {rseed!r}")
    seeds = data.get("seeds")
    if seeds is not None:
        if (not isinstance(seeds, (list, tuple)) or not seeds
                or not all(_is_int(s) for s in seeds)):
            raise SpecError(f"sweep spec: seeds must be a non-empty list of integers, got "
                            f"{seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise SpecError(f"sweep spec: seeds has duplicates: {list(seeds)!r}")
        seeds = [int(s) for s in seeds]
    name = data.get("name")
    return SweepSpec(fixed=sections["fixed"], grid=sections["grid"], random=random, n=int(n),
                     random_seed=int(rseed), seeds=seeds,
                     name=None if name is None else str(name))


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)))


# --------------------------------------------------------------------------- validation

def _default_trial_fn() -> Callable:
    import eenet.training
    return eenet.training.train


def _is_eenet_train(fn: Callable) -> bool:
    return getattr(fn, "__module__", None) == "eenet.training" and \
        getattr(fn, "__name__", None) == "train"


def _trial_parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    """Keyword parameters of the trial function. eenet.train takes ``**kwargs`` that are
    the fields of eenet.training.TrainConfig: those are listed with their defaults."""
    import dataclasses
    params = dict(inspect.signature(fn).parameters)
    if _is_eenet_train(fn):
        from .training import TrainConfig
        kw = inspect.Parameter.KEYWORD_ONLY
        params = {k: p for k, p in params.items() if p.kind is not p.VAR_KEYWORD}
        for f in dataclasses.fields(TrainConfig):
            if f.name not in params:
                default = f.default if f.default is not dataclasses.MISSING else \
                    inspect.Parameter.empty
                params[f.name] = inspect.Parameter(f.name, kw, default=default,
                                                   annotation=f.type)
    return params


def _check_trials_with_train(configs: list[dict]) -> None:
    """eenet.train's own settings check (eenet.training.validate_config: combinations such
    as exits that do not fit the model) on every trial, before any runs."""
    from .training import TrainConfig, validate_config
    done: set[str] = set()
    for cfg in configs:
        key = json.dumps(cfg, sort_keys=True)
        if key in done:
            continue
        done.add(key)
        try:
            validate_config(TrainConfig(**cfg), check_model=True)
        except (ValueError, TypeError) as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
            raise SpecError(f"sweep spec: trial ({shown}) is refused by eenet.train: {e}") \
                from None


def _param_kind(p: inspect.Parameter) -> str | None:
    """'bool', 'int', 'float', 'str' or None (anything) from the default or annotation."""
    d = p.default
    if isinstance(d, bool):
        return "bool"
    if isinstance(d, int):
        return "int"
    if isinstance(d, float):
        return "float"
    if isinstance(d, str):
        return "str"
    ann = p.annotation
    if isinstance(ann, str):
        a = ann.replace(" ", "")
        for kind in ("bool", "int", "float", "str"):
            if a in (kind, f"{kind}|None", f"None|{kind}", f"Optional[{kind}]"):
                return kind
    elif ann in (bool, int, float, str):
        return ann.__name__
    return None


def _check_value(name: str, value: Any, p: inspect.Parameter, where: str) -> Any:
    """Check one value of parameter ``name``; returns its canonical form (ints given for
    float parameters become floats, so that 1 and 1.0 hash alike)."""
    label = f"{where}.{name}"
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, (list, tuple, dict, set)):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected a single value"
                        + (" (lists of values go under [grid])" if where == "fixed" else ""))
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected a number, string, "
                        f"boolean or null, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"sweep spec: {label} = {value!r}: not a finite number")
    kind = _param_kind(p)
    optional = p.default is None or p.default is inspect.Parameter.empty
    if value is None:
        if not optional:
            raise SpecError(f"sweep spec: {label} = None: {name} is not optional")
        return None
    if kind == "bool" and not isinstance(value, bool):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected true or false")
    if kind == "int" and not _is_int(value):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected an integer")
    if kind == "float":
        if not _is_number(value):
            raise SpecError(f"sweep spec: {label} = {value!r}: expected a number")
        value = float(value)
    if kind == "str" and not isinstance(value, str):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected a string")
    if name in _CHOICES:
        allowed = _CHOICES[name]
        match = [a for a in allowed if isinstance(value, str) and a.lower() == value.lower()]
        if not match:
            raise SpecError(f"sweep spec: {label} = {value!r}: expected one of "
                            f"{', '.join(allowed)}")
    if name in _POSITIVE_INT and (not _is_int(value) or value < 1):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected an integer >= 1")
    if name in _NONNEG_INT and (not _is_int(value) or value < 0):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected an integer >= 0")
    if name == "seed" and not _is_int(value):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected an integer")
    if name in _POSITIVE_FLOAT and (not _is_number(value) or value <= 0):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected a number > 0")
    if name in _NONNEG_FLOAT and (not _is_number(value) or value < 0):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected a number >= 0")
    if name in _UNIT_FLOAT and (not _is_number(value) or not 0 <= value <= 1):
        raise SpecError(f"sweep spec: {label} = {value!r}: expected a number in [0, 1]")
    if name == "model" and isinstance(value, str):
        _check_model_name(label, value)
    return value


def _check_model_name(label: str, value: str) -> None:
    try:
        from . import models
    except Exception:  # models not available: the trial will report it
        return
    names = None
    for attr in ("MODELS", "MODEL_NAMES", "available_models", "list_models"):
        obj = getattr(models, attr, None)
        if obj is None:
            continue
        names = obj() if callable(obj) else obj
        break
    if names is not None:
        names = list(names)
        if value not in names:
            raise SpecError(f"sweep spec: {label} = {value!r}: unknown model (expected one "
                            f"of {', '.join(map(str, names))})")


def validate_spec(spec: SweepSpec, trial_fn: Callable | None = None) -> SweepSpec:
    """Check every parameter and value of ``spec`` against ``trial_fn``'s signature
    (default :func:`eenet.train`) and return a canonical copy; raises :class:`SpecError`
    naming the first bad parameter."""
    fn = trial_fn if trial_fn is not None else _default_trial_fn()
    params = _trial_parameters(fn)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           inspect.Parameter.KEYWORD_ONLY)}
    fn_name = getattr(fn, "__qualname__", "the trial function")
    anyp = inspect.Parameter("x", inspect.Parameter.KEYWORD_ONLY, default=None)

    def param(name: str, where: str) -> inspect.Parameter:
        if not isinstance(name, str):
            raise SpecError(f"sweep spec: {where}: parameter names must be strings, "
                            f"got {name!r}")
        if name in RESERVED:
            raise SpecError(f"sweep spec: {where}.{name}: {name} is set by the sweep "
                            f"itself and cannot be swept or fixed")
        if name in named:
            return named[name]
        if accepts_any:
            return anyp
        import difflib
        close = difflib.get_close_matches(name, list(named), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"sweep spec: {where}.{name}: unknown parameter of {fn_name}{hint}")

    seen: dict[str, str] = {}

    def claim(name: str, where: str) -> None:
        if name in seen:
            raise SpecError(f"sweep spec: {name} appears in both [{seen[name]}] and "
                            f"[{where}]")
        seen[name] = where

    out = SweepSpec(n=spec.n, random_seed=spec.random_seed, name=spec.name,
                    seeds=None if spec.seeds is None else list(spec.seeds))
    for name, value in spec.fixed.items():
        p = param(name, "fixed")
        claim(name, "fixed")
        out.fixed[name] = _check_value(name, value, p, "fixed")
    for name, values in spec.grid.items():
        p = param(name, "grid")
        claim(name, "grid")
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise SpecError(f"sweep spec: grid.{name} = {values!r}: expected a non-empty list "
                            f"of values")
        canon = [_check_value(name, v, p, "grid") for v in values]
        if len({json.dumps(v) for v in canon}) != len(canon):
            raise SpecError(f"sweep spec: grid.{name} = {list(values)!r}: duplicate values")
        out.grid[name] = canon
    for name, dist in spec.random.items():
        p = param(name, "random")
        claim(name, "random")
        out.random[name] = _check_distribution(name, dist, p)
    if spec.seeds is not None:
        if "seed" not in named and not accepts_any:
            raise SpecError(f"sweep spec: seeds: {fn_name} has no seed parameter")
        if "seed" in seen:
            raise SpecError(f"sweep spec: seeds is given and seed also appears in "
                            f"[{seen['seed']}]; use one of them")
    missing = [k for k, p in named.items() if p.default is inspect.Parameter.empty
               and k not in seen and not (k == "seed" and spec.seeds is not None)
               and k not in RESERVED]
    if missing:
        raise SpecError(f"sweep spec: {missing[0]} is required by {fn_name} but not set in "
                        f"[fixed], [grid] or [random]")
    return out


def _check_distribution(name: str, dist: Any, p: inspect.Parameter) -> dict:
    label = f"random.{name}"
    if not isinstance(dist, Mapping) or len(dist) != 1:
        raise SpecError(f"sweep spec: {label} = {dist!r}: expected one of "
                        f"{{log_uniform = [a, b]}}, {{uniform = [a, b]}}, {{choice = [...]}}")
    (kind, arg), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise SpecError(f"sweep spec: {label}: unknown distribution {kind!r} (expected "
                        f"{', '.join(DISTRIBUTIONS)})")
    if kind == "choice":
        if not isinstance(arg, (list, tuple)) or not arg:
            raise SpecError(f"sweep spec: {label}.choice = {arg!r}: expected a non-empty "
                            f"list")
        return {"choice": [_check_value(name, v, p, label + ".choice") for v in arg]}
    if (not isinstance(arg, (list, tuple)) or len(arg) != 2
            or not all(_is_number(v) for v in arg)):
        raise SpecError(f"sweep spec: {label}.{kind} = {arg!r}: expected two numbers [a, b]")
    a, b = float(arg[0]), float(arg[1])
    if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
        raise SpecError(f"sweep spec: {label}.{kind} = {list(arg)!r}: expected finite a < b")
    if kind == "log_uniform" and a <= 0:
        raise SpecError(f"sweep spec: {label}.log_uniform = {list(arg)!r}: bounds must be > 0")
    kind_of = _param_kind(p)
    if kind_of in ("bool", "str"):
        raise SpecError(f"sweep spec: {label}: {name} takes a {kind_of}; use "
                        f"{{choice = [...]}}")
    if kind_of == "int":
        if not (float(a).is_integer() and float(b).is_integer()):
            raise SpecError(f"sweep spec: {label}.{kind} = {list(arg)!r}: {name} is an "
                            f"integer parameter, bounds must be integers")
        lo, hi = (_check_value(name, int(v), p, label + "." + kind) for v in (a, b))
        return {kind: [lo, hi]}
    for v in (a, b):  # bounds must themselves be valid values
        _check_value(name, v, p, label + "." + kind)
    return {kind: [a, b]}


# --------------------------------------------------------------------------- expansion

def _draw(dist: dict, rng: np.random.Generator, is_int: bool) -> Any:
    (kind, arg), = dist.items()
    if kind == "choice":
        return copy.deepcopy(arg[int(rng.integers(len(arg)))])
    a, b = arg
    if kind == "uniform":
        v = float(rng.uniform(a, b))
    else:
        v = float(math.exp(rng.uniform(math.log(a), math.log(b))))
    return int(round(min(max(v, a), b))) if is_int else v


def expand(spec: "SweepSpec | Mapping | str | os.PathLike",
           trial_fn: Callable | None = None) -> list[dict]:
    """Validate ``spec`` and list its trial configs (dicts with sorted keys, duplicates
    removed, in a stable order): grid combinations x random draws x seeds."""
    import itertools
    fn = trial_fn if trial_fn is not None else _default_trial_fn()
    spec = validate_spec(load_spec(spec), fn)
    params = _trial_parameters(fn)
    grid_names = list(spec.grid)
    combos = [dict(zip(grid_names, vals))
              for vals in itertools.product(*(spec.grid[k] for k in grid_names))]
    draws: list[dict] = [{}]
    if spec.random and spec.n > 0:
        rng = np.random.default_rng(spec.random_seed)
        draws = []
        for _ in range(spec.n):
            d = {}
            for name in sorted(spec.random):
                p = params.get(name)
                is_int = p is not None and _param_kind(p) == "int"
                d[name] = _draw(spec.random[name], rng, is_int)
            draws.append(d)
    seeds: list[dict] = [{}] if spec.seeds is None else [{"seed": s} for s in spec.seeds]
    configs, seen = [], set()
    for combo in combos:
        for draw in draws:
            for s in seeds:
                cfg = {**spec.fixed, **combo, **draw, **s}
                cfg = {k: cfg[k] for k in sorted(cfg)}
                h = trial_hash(cfg)
                if h not in seen:
                    seen.add(h)
                    configs.append(cfg)
    if _is_eenet_train(fn):
        _check_trials_with_train(configs)
    return configs


def trial_hash(config: Mapping) -> str:
    """Stable 12-hex-digit hash of a trial config (sorted keys, canonical JSON)."""
    canon = json.dumps(_jsonable(dict(config)), sort_keys=True, separators=(",", ":"),
                       allow_nan=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- the trial (worker side)

def _has_checkpoint(run_dir: str) -> bool:
    try:
        return any(n.startswith("checkpoint") for n in os.listdir(run_dir))
    except OSError:
        return False


def _worker_threads() -> int:
    """Threads for one trial on this worker: its cores divided by its task slots."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    slots = 1
    try:
        from distributed import get_worker
        slots = max(1, int(get_worker().state.nthreads))
    except Exception:
        pass
    return max(1, cores // slots)


def _execute_trial(trial_fn: Callable | None, config: dict, run_dir: str,
                   threads: int | None, resume: bool) -> dict:
    """Run one trial (on a worker) and return everything the store needs as a value."""
    fn = trial_fn if trial_fn is not None else _default_trial_fn()
    t0 = time.perf_counter()
    params = inspect.signature(fn).parameters
    any_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        os.makedirs(run_dir, exist_ok=True)
        shared = True
    except OSError:  # no shared file system: train in a private temporary folder
        run_dir = tempfile.mkdtemp(prefix="eenet-trial-")
        shared = False
    if threads is None:
        threads = _worker_threads()
    extra = {"results_dir": run_dir, "resume": bool(resume and _has_checkpoint(run_dir)),
             "threads": int(threads), "progress": False}
    kwargs = dict(config)
    for k, v in extra.items():
        if k in params or any_kw:
            kwargs[k] = v
    result = fn(**kwargs)
    if not isinstance(result, Mapping):
        result = {"value": result}
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                           "threads": int(threads), "resumed": extra["resume"],
                           "run_dir": run_dir if shared else None}
    history = result.get("history")
    out["history_csv"] = history.to_csv(index=False) if hasattr(history, "to_csv") else None
    outputs = result.get("outputs")
    if outputs is None and _is_eenet_train(fn):
        try:
            outputs = _validation_outputs(result, config)
        except Exception as e:  # the trial itself succeeded; keep its metrics
            out["outputs_error"] = f"{type(e).__name__}: {e}"
    out["outputs"] = ({k: np.asarray(v) for k, v in outputs.items()}
                      if isinstance(outputs, Mapping) else None)
    out["metrics"] = _jsonable({k: v for k, v in result.items()
                                if k not in ("history", "outputs")})
    out["wall_time"] = time.perf_counter() - t0
    if not shared:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _validation_outputs(result: Mapping, config: Mapping) -> dict | None:
    """Per-exit outputs of the trained model (model.eenet, the best epoch) on the trial's
    validation split (eenet.train's held-out part of the training set, or the test set when
    val_fraction is 0): probs (E+1,N,K), conf (E+1,N), labels (N,), costs (E+1,)."""
    import eenet
    from . import training
    rd = result.get("results_dir")
    if not rd:
        return None
    model = None
    for name in ("model.eenet", "checkpoint.eenet"):
        if os.path.isfile(os.path.join(rd, name)):
            model = os.path.join(rd, name)
            break
    if model is None:
        return None
    cfg = training.TrainConfig.from_dict(dict(result.get("config") or config))
    cfg.progress = False
    splits = training.load_splits(cfg)
    net = eenet.load(model)
    # only the per-exit outputs are kept; the threshold is the run's own for consistency
    ev = training.evaluate_net(net, splits.val, batch_size=256,
                               threshold=cfg.exit_threshold(),
                               lambda_coef=cfg.lambda_coef, with_outputs=True)
    outs = dict(ev["outputs"])
    outs["costs"] = np.asarray(net.exit_costs, dtype=np.float64)
    outs["split"] = np.asarray("val" if cfg.val_fraction > 0 else "test")
    return outs


# --------------------------------------------------------------------------- the store (client side)

def _atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _atomic_write_json(path: pathlib.Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2, sort_keys=True)
                               + "\n").encode("utf-8"))


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


class _Store:
    """The on-disk results store (written by the client only)."""

    def __init__(self, root: "str | os.PathLike"):
        self.root = pathlib.Path(root).resolve()
        self.trials = self.root / "trials"
        self.trials.mkdir(parents=True, exist_ok=True)

    def dir(self, h: str) -> pathlib.Path:
        return self.trials / h

    def status(self, h: str) -> dict:
        return _read_json(self.dir(h) / "status.json") or {"status": "new", "attempts": 0}

    def set_status(self, h: str, status: str, **fields: Any) -> dict:
        st = self.status(h)
        st.update(fields, status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _atomic_write_json(self.dir(h) / "status.json", st)
        return st

    def write_config(self, h: str, config: dict) -> None:
        p = self.dir(h) / "config.json"
        if not p.exists():
            _atomic_write_json(p, config)

    def write_result(self, h: str, out: dict) -> None:
        d = self.dir(h)
        if out.get("history_csv") is not None:
            _atomic_write_bytes(d / "history.csv", out["history_csv"].encode("utf-8"))
        if out.get("outputs") is not None:
            buf = io.BytesIO()
            np.savez_compressed(buf, **out["outputs"])
            _atomic_write_bytes(d / "outputs.npz", buf.getvalue())
        res = dict(out.get("metrics") or {})
        res["wall_time"] = out.get("wall_time")
        for k in ("host", "pid", "threads", "resumed", "outputs_error"):
            if k in out:
                res["_" + k] = out[k]
        _atomic_write_json(d / "result.json", res)
        try:
            (d / "error.txt").unlink()
        except FileNotFoundError:
            pass

    def write_error(self, h: str, text: str) -> None:
        _atomic_write_bytes(self.dir(h) / "error.txt", text.encode("utf-8"))

    def row(self, h: str, config: dict) -> dict:
        st = self.status(h)
        res = _read_json(self.dir(h) / "result.json") or {} if st["status"] == "done" else {}
        row: dict[str, Any] = {"trial": h, "status": st.get("status")}
        for k, v in config.items():
            row[k] = v
        row["accuracy"] = res.get("accuracy")
        row["avg_cost"] = res.get("avg_cost")
        ec = res.get("exit_counts")
        row["exit_counts"] = json.dumps(ec) if ec is not None else None
        row["wall_time"] = st.get("wall_time", res.get("wall_time"))
        row["attempts"] = st.get("attempts", 0)
        row["error"] = st.get("error") if st.get("status") != "done" else None
        return row

    def write_table(self, rows: list[dict], config_keys: list[str]) -> None:
        import pandas as pd
        cols = (["trial", "status"] + config_keys
                + ["accuracy", "avg_cost", "exit_counts", "wall_time", "attempts", "error"])
        df = pd.DataFrame(rows, columns=cols)
        _atomic_write_bytes(self.root / "sweep.csv", df.to_csv(index=False).encode("utf-8"))


# --------------------------------------------------------------------------- execution

def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _local_client(n_trials: int, workers: int | None):
    """A LocalCluster of worker processes (one task slot each) and its client;
    returns (client, cluster, threads_per_trial)."""
    import logging
    from distributed import Client, LocalCluster
    cores = _cores()
    if workers is None:
        workers = max(1, min(n_trials, cores))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    threads = max(1, cores // workers)
    import dask
    # allowed_failures=0: a worker death fails its task at once (KilledWorker) and run()
    # counts it as one attempt; saturation 1.0: a worker holds only the task it runs, so a
    # dying worker takes no queued trial down with it.
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR,
                               scheduler_kwargs={"allowed_failures": 0})
    return Client(cluster), cluster, threads


def run(spec: "SweepSpec | Mapping | str | os.PathLike", results_dir: "str | os.PathLike",
        workers: int | None = None, scheduler: str | None = None, retries: int = 2,
        progress: bool = True, trial_fn: Callable | None = None, rerun_failed: bool = True,
        plot: bool = True):
    """Run every trial of ``spec`` and return the sweep table (a pandas DataFrame).

    spec: a SweepSpec, a dict, or a .toml/.json path; validated before any trial starts.
    results_dir: the store (see the module docstring); an existing store is resumed:
        trials with status done are skipped, the others are resubmitted with resume=True.
    workers: local worker processes (default min(trials, cores)); each trial gets
        cores // workers threads. Ignored with ``scheduler``.
    scheduler: address of a running Dask scheduler ("tcp://host:8786") or a
        ``distributed.Client``; each trial then uses its worker's cores / task slots threads.
    retries: resubmissions of a trial that raised or whose worker died, before it is
        recorded as failed.
    trial_fn: the function run per trial (default eenet.train); it must be importable on the
        workers and accept the spec's parameters (plus results_dir, resume, threads, progress
        when it has them); it returns a dict of metrics (accuracy, avg_cost, exit_counts, ...;
        "history" a DataFrame and "outputs" a dict of arrays are stored as files).
    rerun_failed: resubmit trials recorded as failed by an earlier run.
    plot: draw results_dir/pareto.png at the end.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if workers is not None and scheduler is not None:
        raise ValueError("give workers or scheduler, not both")
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    spec_obj = load_spec(spec)
    configs = expand(spec_obj, trial_fn)  # validates before anything runs
    store = _Store(results_dir)
    _atomic_write_json(store.root / "spec.json", validate_spec(spec_obj, trial_fn).to_dict())
    hashes = [trial_hash(c) for c in configs]
    config_of = dict(zip(hashes, configs))
    config_keys = sorted({k for c in configs for k in c})
    for h, c in config_of.items():
        store.write_config(h, c)

    def write_table() -> None:
        store.write_table([store.row(h, config_of[h]) for h in hashes], config_keys)

    todo = []
    for h in hashes:
        st = store.status(h)["status"]
        if st == "done" or (st == "failed" and not rerun_failed):
            continue
        todo.append(h)
    n_done = sum(store.status(h)["status"] == "done" for h in hashes)
    n_failed = sum(store.status(h)["status"] == "failed" for h in hashes) - \
        sum(store.status(h)["status"] == "failed" for h in todo)
    write_table()
    if todo:
        _run_trials(todo, config_of, store, workers, scheduler, retries, progress, trial_fn,
                    n_done, n_failed, len(hashes), write_table)
    write_table()
    df = load(store.root)
    if plot:
        try:
            from .plots import plot_pareto
            if (df["status"] == "done").any():
                plot_pareto(df[df["status"] == "done"], store.root / "pareto.png")
        except Exception as e:  # a plot must never fail a finished sweep
            import warnings
            warnings.warn(f"eenet.sweep: could not draw pareto.png: {e}")
    return df


def _run_trials(todo: list[str], config_of: dict, store: _Store, workers: int | None,
                scheduler, retries: int, progress: bool, trial_fn: Callable | None,
                n_done: int, n_failed: int, total: int, write_table: Callable) -> None:
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    cluster = None
    own_client = True
    if scheduler is None:
        client, cluster, threads = _local_client(len(todo), workers)
        slots = workers or min(len(todo), _cores())
    elif isinstance(scheduler, Client):
        client, threads, own_client = scheduler, None, False
        slots = None
    else:
        client, threads = Client(scheduler), None
        slots = None
    if slots is None:
        try:
            slots = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        except Exception:
            slots = len(todo)
    in_flight: dict[str, tuple[str, int]] = {}  # future key -> (hash, attempt)
    futures: dict[str, Any] = {}
    attempts: dict[str, int] = {h: 0 for h in todo}
    started: dict[str, float] = {}
    ac = as_completed()

    def submit(h: str) -> None:
        attempts[h] += 1
        prev = store.status(h)
        total_attempts = int(prev.get("attempts", 0)) + 1
        resume = total_attempts > 1 or prev.get("status") not in ("new", None)
        store.set_status(h, "running", attempts=total_attempts, error=prev.get("error"))
        key = f"eenet-trial-{h}-{total_attempts}-{time.time_ns()}"
        fut = client.submit(_execute_trial, trial_fn, config_of[h],
                            str(store.dir(h) / "run"), threads, resume, key=key, pure=False,
                            retries=0)
        in_flight[fut.key] = (h, attempts[h])
        futures[fut.key] = fut
        started.setdefault(h, time.time())
        ac.add(fut)

    bar = tqdm(total=total, initial=n_done + n_failed, desc="sweep", unit="trial",
               disable=not progress)
    done, failed = n_done, n_failed

    def postfix() -> None:
        bar.set_postfix(done=done, failed=failed, running=min(len(in_flight), slots))

    try:
        for h in todo:
            submit(h)
        postfix()
        for fut in ac:
            h, attempt = in_flight.pop(fut.key)
            futures.pop(fut.key, None)
            try:
                out = fut.result()
            except Exception as e:  # the trial raised, or its worker died (KilledWorker)
                msg = f"{type(e).__name__}: {e}".strip()
                tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                store.write_error(h, f"attempt {attempt}: {tb}")
                if attempt <= retries:
                    store.set_status(h, "retrying", error=msg)
                    submit(h)
                else:
                    store.set_status(h, "failed", error=msg,
                                     wall_time=time.time() - started[h])
                    failed += 1
                    bar.update(1)
                    write_table()
            else:
                store.write_result(h, out)
                store.set_status(h, "done", error=None, wall_time=out.get("wall_time"))
                done += 1
                bar.update(1)
                write_table()
            fut.release()
            postfix()
    except BaseException:
        # Interrupted (Ctrl-C) or the client failed: leave unfinished trials resumable.
        for key, (h, _) in list(in_flight.items()):
            try:
                store.set_status(h, "interrupted")
            except Exception:
                pass
        raise
    finally:
        bar.close()
        try:
            if futures:
                client.cancel(list(futures.values()))
        except Exception:
            pass
        if own_client:
            try:
                client.close()
            except Exception:
                pass
        if cluster is not None:
            try:
                cluster.close()
            except Exception:
                pass


# --------------------------------------------------------------------------- loading results

def load(results_dir: "str | os.PathLike"):
    """The sweep table of ``results_dir`` as a DataFrame (one row per trial: trial hash,
    status, config columns, accuracy, avg_cost, exit_counts (lists), wall_time, attempts,
    error). Reads sweep.csv, or rebuilds the table from trials/*/ when it is missing."""
    import pandas as pd
    root = pathlib.Path(results_dir)
    csv = root / "sweep.csv"
    if csv.is_file():
        df = pd.read_csv(csv)
    else:
        store = _Store(root)
        rows, keys = [], set()
        for d in sorted(p for p in store.trials.iterdir() if p.is_dir()):
            cfg = _read_json(d / "config.json")
            if cfg is None:
                continue
            keys.update(cfg)
            rows.append(store.row(d.name, cfg))
        cols = (["trial", "status"] + sorted(keys)
                + ["accuracy", "avg_cost", "exit_counts", "wall_time", "attempts", "error"])
        df = pd.DataFrame(rows, columns=cols)
    if "exit_counts" in df:
        df["exit_counts"] = [json.loads(v) if isinstance(v, str) else None
                             for v in df["exit_counts"]]
    return df


def load_outputs(results_dir: "str | os.PathLike", trial: str) -> dict[str, np.ndarray]:
    """The stored per-exit validation outputs of one trial (probs (E+1,N,K), conf (E+1,N),
    labels (N,), costs (E+1,)) as a dict of arrays."""
    path = pathlib.Path(results_dir) / "trials" / trial / "outputs.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no stored outputs for trial {trial!r}: {path} is missing")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_result(results_dir: "str | os.PathLike", trial: str) -> dict:
    """The stored final metrics (result.json) of one trial."""
    path = pathlib.Path(results_dir) / "trials" / trial / "result.json"
    res = _read_json(path)
    if res is None:
        raise FileNotFoundError(f"no result for trial {trial!r}: {path} is missing")
    return res


# --------------------------------------------------------------------------- command line

def add_sweep_parser(subparsers) -> Any:
    """Add the ``sweep`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sweep", help="run a hyper-parameter sweep (TOML/JSON spec) locally or on Dask",
        description="Run every trial of a sweep spec (TOML or JSON: [fixed], [grid], "
                    "[random], seeds) and write sweep.csv, trial folders and pareto.png. "
                    "Re-running skips finished trials and resumes the others.")
    p.add_argument("spec", help="sweep spec file (.toml or .json)")
    p.add_argument("--results-dir", required=True, help="results store folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: min(trials, cores))")
    g.add_argument("--scheduler", default=None,
                   help="address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--retries", type=int, default=2,
                   help="resubmissions of a failing trial before it is recorded as failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=sweep_main)
    return p


def sweep_main(args) -> int:
    """Entry point of ``python -m eenet sweep``; returns the exit status (0: every trial
    done, 1: some failed, 2: invalid spec)."""
    import sys
    try:
        df = run(args.spec, args.results_dir, workers=args.workers, scheduler=args.scheduler,
                 retries=args.retries, progress=not getattr(args, "no_progress", False))
    except SpecError as e:
        print(f"eenet sweep: {e}", file=sys.stderr)
        return 2
    n_done = int((df["status"] == "done").sum())
    n_failed = int((df["status"] == "failed").sum())
    print(f"{len(df)} trials: {n_done} done, {n_failed} failed; table "
          f"{pathlib.Path(args.results_dir) / 'sweep.csv'}")
    done = df[df["status"] == "done"]
    if len(done):
        cols = [c for c in ("trial", "accuracy", "avg_cost", "wall_time") if c in done]
        print(done.sort_values("avg_cost")[cols].to_string(index=False))
    for _, r in df[df["status"] == "failed"].iterrows():
        print(f"failed {r['trial']}: {r['error']}", file=sys.stderr)
    return 0 if n_failed == 0 else 1


def add_cli(subparsers) -> None:
    """Registration hook of eenet.cli.SUBCOMMANDS ("sweep": "eenet.sweep:add_cli")."""
    add_sweep_parser(subparsers)
