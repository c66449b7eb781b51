"""OpenMP wait policy for the benchmarks: both libraries run as PyTorch does alone.

eenet and PyTorch share one OpenMP runtime (libgomp), which reads its wait policy
once, when it loads.  ``import eenet`` sets ``GOMP_SPINCOUNT=2000`` (see
eenet/__init__.py: short spins keep a shared machine usable), and PyTorch loaded
after it then runs under eenet's setting instead of libgomp's default of 300000
spins, which is what PyTorch gets when used alone.  Measured here (2 threads,
batch 128, conv 8->16 3x3 stride 2 on 14x14, forward): PyTorch 90-97 GFLOP/s
under libgomp's default, 61-66 under 2000 spins.  A ratio against the slowed
PyTorch overstates eenet, so the benchmarks import this module before eenet: it
puts libgomp's default back unless the user chose a policy (OMP_WAIT_POLICY or
GOMP_SPINCOUNT in the environment, which then applies to both libraries).
"""
from __future__ import annotations

import os

LIBGOMP_DEFAULT_SPINCOUNT = "300000"   # libgomp's GOMP_SPINCOUNT when nothing is set

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = LIBGOMP_DEFAULT_SPINCOUNT


def describe() -> str:
    """One line for a benchmark's header: the wait policy both libraries ran under."""
    return (f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
            f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')} "
            f"(one OpenMP runtime for both; default: libgomp's, as PyTorch runs alone)")
