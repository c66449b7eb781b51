"""eenet: early-exit convolutional neural networks (EENets) with a C core.

``import eenet`` loads only NumPy and the C extension; datasets, training,
plots and sweeps are imported on first use.
"""
from __future__ import annotations

import ctypes
import importlib
import os


def _load_openblas() -> None:
    """Load scipy-openblas32's shared library globally so ``_core`` finds it
    wherever pip put it (the build may have linked a copy from an isolated
    build environment that no longer exists)."""
    try:
        import scipy_openblas32
    except ImportError:  # pragma: no cover - a dependency, normally present
        return
    lib_dir = scipy_openblas32.get_lib_dir()
    for name in os.listdir(lib_dir):
        if name.startswith("lib" + scipy_openblas32.get_library()) and ".so" in name:
            ctypes.CDLL(os.path.join(lib_dir, name), mode=ctypes.RTLD_GLOBAL)
            return


# How OpenMP worker threads wait between parallel regions.  They spin GOMP_SPINCOUNT pause
# iterations (libgomp, the runtime gcc links), then sleep on a futex.  Neither extreme suits
# a library of many short kernels: sleeping at once (OMP_WAIT_POLICY=PASSIVE) pays a wake-up
# per region that costs more than a second thread earns (conv 16->16 7x7 batch 128 forward:
# one thread 0.33 ms; two threads 0.37 ms passive, 0.17 ms with 1000 spins), and spinning
# without end (libgomp's default 300000 spins, or ACTIVE) burns the cores that other jobs
# need (EENet-8 training, 2 threads, beside two busy processes on 2 cores: ~600 images/s
# with libgomp's default, 13,000-17,000 passive or with 2000 spins).  2000 spins (~50 us at
# the measured 25 ns per pause here) bridge the gaps between a step's kernels.  Must be set before the C core loads the OpenMP runtime; an explicit
# OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
DEFAULT_SPINCOUNT = "2000"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT

_load_openblas()

from . import _core  # noqa: E402

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (n >= 1) in every kernel of the C core."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads used by the C core (default: the cores available)."""
    return _core.get_num_threads()


_LAZY_SUBMODULES = ("ops", "spec", "models", "datasets", "data", "optim", "net", "training",
                    "sweep", "plots", "cli", "calibrate")


_NET_EXPORTS = ("build", "save", "load", "load_checkpoint")
# Functions exported at top level but defined in a lazily imported submodule.
_LAZY_TRAINING = ("train", "evaluate")


def __getattr__(name: str):
    if name in _NET_EXPORTS:  # eenet.build / save / load / load_checkpoint (eenet.net)
        return getattr(importlib.import_module(".net", __name__), name)
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_TRAINING:
        return getattr(importlib.import_module(".training", __name__), name)
    raise AttributeError(f"module 'eenet' has no attribute {name!r}")
