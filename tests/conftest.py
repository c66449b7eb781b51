"""Shared pytest fixtures and helpers."""
import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# ../shared sits beside the checkout (the work tree and CI's clone alike).
SHARED = pathlib.Path(os.environ.get("EENET_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
REFERENCE = SHARED / "reference"
FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")

# torch ships its own libgomp.so.1: whichever of torch and eenet loads first starts the
# one OpenMP runtime of the process, so let eenet set its wait policy (bounded spinning,
# see eenet/__init__.py) before torch loads; torch's own default spins ~7 ms per wait,
# which starves the other thread on busy cores
import eenet  # noqa: E402,F401

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:  # torch comparisons are skipped, everything else runs
    HAVE_TORCH = False

requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
requires_fashion = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason=f"{FASHION_MNIST} is absent (apt-get install dataset-fashion-mnist)")


def f32(a) -> np.ndarray:
    """``a`` as a C-contiguous float32 array (what the C core takes)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def numgrad(f, x, h: float = 1e-6) -> np.ndarray:
    """Central differences (f(x + h e_i) - f(x - h e_i)) / 2h of the scalar ``f`` at every
    element of the float64 copy of ``x``; same shape as ``x``."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def grad_close(actual, expected, rtol: float) -> None:
    """Caffe-style bound: |a - b| <= rtol * max(|a|, |b|, 1) elementwise."""
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1.0)
    assert np.all(np.abs(a - b) <= rtol * scale), np.max(np.abs(a - b) / scale)


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """Give every test the thread count it started with: eenet.train(threads=N) and
    set_num_threads change the process-wide count, and results depend on it (summation
    order), so a test must not inherit another test's setting."""
    import eenet
    before = eenet.get_num_threads()
    yield
    if eenet.get_num_threads() != before:
        eenet.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
