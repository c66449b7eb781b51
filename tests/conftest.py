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

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:  # torch comparisons are skipped, everything else runs
    HAVE_TORCH = False

requires_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
