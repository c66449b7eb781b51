"""Per-kernel benchmark: eenet's conv2d against PyTorch (CPU, same thread count).

For every convolution shape of EENet-8 (1x28x28 input, f = 2 and 4 starting
filters) and every distinct convolution shape of ResNet-20 (3x32x32 input,
16/32/64 channels), at batch 32 and 128, prints the GFLOP/s of

  fwd  forward                               y = conv2d(x, w, b)
  bwd-data   gradient w.r.t. the input       (eenet: need_dw=False, no bias;
                                              torch: convolution_backward mask [1,0,0])
  bwd-weight gradient w.r.t. weight and bias (eenet: need_dx=False;
                                              torch: convolution_backward mask [0,1,1])

for eenet and PyTorch, their ratio (eenet / torch, > 1 means eenet is faster)
and eenet's share of the machine's peak FP32 rate.  FLOPs = 2 * N * K * Ho *
Wo * C * kh * kw for each of the three.  Times are the median (--stat) of
--repeats runs of about 5 ms each, after a warm-up, with eenet and torch runs
alternating so that both see the same load from other processes.

Peak: measured once at start by eenet._core.peak_gflops: every thread runs
independent fused-multiply-add chains on the CPU's widest vectors (AVX-512
here), reading no memory; the best of several rounds, with the same thread
count and clock.  It is the FMA units' ceiling for a direct convolution (with
the wall clock on a loaded machine it too comes out low).  Layers that eenet
runs with Winograd F(2x2,3x3) (3x3 stride-1, 16-64 channels) do 2.25x fewer
multiplications than the direct FLOP count above, so their %pk can exceed 100%.

On a machine shared with other work, wall-clock runs with several threads
mostly measure the scheduler (a worker thread that waits for a core stalls the
whole parallel region, for torch and eenet alike); compare kernels there with
`--threads 1 --clock cpu`.

OpenMP wait policy: both libraries run under libgomp's default spin count,
as PyTorch does alone (benchmarks/omp_wait.py), unless OMP_WAIT_POLICY or
GOMP_SPINCOUNT is set in the environment.

Usage:  python benchmarks/kernels.py [--threads T] [--repeats R] [--batches 32,128]
                                     [--stat median|min] [--clock wall|cpu]
Run from the repository root after `python setup.py build_ext --inplace`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import omp_wait  # noqa: E402  (before eenet: sets the OpenMP wait policy both run under)
import eenet  # noqa: E402
from eenet import _core  # noqa: E402


@dataclass(frozen=True)
class ConvShape:
    """One convolution: input (C, H, W) -> K channels, k x k kernel."""

    net: str
    name: str
    C: int
    H: int
    K: int
    k: int
    stride: int
    pad: int
    bias: bool

    def out_size(self) -> int:
        return (self.H + 2 * self.pad - self.k) // self.stride + 1

    def flops(self, n: int) -> float:
        ho = self.out_size()
        return 2.0 * n * self.K * ho * ho * self.C * self.k * self.k


def eenet8_shapes(f: int) -> list[ConvShape]:
    """Every conv of EENet-8 with f starting filters (reference README), with bias."""
    net = f"eenet8 f={f}"
    return [
        ConvShape(net, "stem 3x3", 1, 28, f, 3, 1, 1, True),
        ConvShape(net, "b1 3x3", f, 28, f, 3, 1, 1, True),
        ConvShape(net, "b2 3x3 s2", f, 28, 2 * f, 3, 2, 1, True),
        ConvShape(net, "b2 3x3", 2 * f, 14, 2 * f, 3, 1, 1, True),
        ConvShape(net, "b2 1x1 s2", f, 28, 2 * f, 1, 2, 0, True),
        ConvShape(net, "b3 3x3 s2", 2 * f, 14, 4 * f, 3, 2, 1, True),
        ConvShape(net, "b3 3x3", 4 * f, 7, 4 * f, 3, 1, 1, True),
        ConvShape(net, "b3 1x1 s2", 2 * f, 14, 4 * f, 1, 2, 0, True),
    ]


def resnet20_shapes() -> list[ConvShape]:
    """Distinct convs of ResNet-20 (no bias; 1x1 stride-2 projection shortcuts)."""
    net = "resnet20"
    return [
        ConvShape(net, "stem 3x3", 3, 32, 16, 3, 1, 1, False),
        ConvShape(net, "s1 3x3", 16, 32, 16, 3, 1, 1, False),
        ConvShape(net, "s2 3x3 s2", 16, 32, 32, 3, 2, 1, False),
        ConvShape(net, "s2 3x3", 32, 16, 32, 3, 1, 1, False),
        ConvShape(net, "s2 1x1 s2", 16, 32, 32, 1, 2, 0, False),
        ConvShape(net, "s3 3x3 s2", 32, 16, 64, 3, 2, 1, False),
        ConvShape(net, "s3 3x3", 64, 8, 64, 3, 1, 1, False),
        ConvShape(net, "s3 1x1 s2", 32, 16, 64, 1, 2, 0, False),
    ]


# Clock for every timing: wall time (time.perf_counter) by default; with
# --clock cpu the process's CPU time (time.process_time), which does not count
# time the process waits for a core, so one-thread runs stay comparable on a
# machine loaded by other work (with several threads it also counts threads
# spinning in barriers, so use it with --threads 1).
_clock = time.perf_counter


def _inner_count(fn) -> int:
    """Calls of fn per timed run so that one run lasts about 5 ms."""
    fn()
    t0 = _clock()
    fn()
    one = max(_clock() - t0, 1e-6)
    return max(1, int(0.005 / one))


def time_pair(fa, fb, repeats: int, stat: str) -> tuple[float, float]:
    """Seconds per call of fa and fb, timed in alternation (a, b, a, b, ...)
    so both see the same machine load; median (or min) over `repeats` runs."""
    na, nb = _inner_count(fa), _inner_count(fb)
    ta, tb = [], []
    for _ in range(repeats):
        for fn, n, out in ((fa, na, ta), (fb, nb, tb)):
            t0 = _clock()
            for _ in range(n):
                fn()
            out.append((_clock() - t0) / n)
    pick = statistics.median if stat == "median" else min
    return pick(ta), pick(tb)


def measure_peak(threads: int, cpu_clock: bool) -> tuple[float, int]:
    """FP32 FMA throughput (GFLOP/s, vector lanes) of `threads` threads, from
    eenet's C probe (csrc/peak.c): the rate the FMA units sustain, timed with
    the benchmark's clock."""
    return eenet._core.peak_gflops(1.0, threads, cpu_clock)


def pin_malloc_thresholds() -> None:
    """Fix glibc's mmap and trim thresholds for the whole process.

    eenet.ops allocates each call's workspace (megabytes) and frees it; glibc
    then raises its dynamic mmap threshold, later large blocks come from the
    heap, and trimming returns and re-faults their pages on every call: in
    measurement this halved torch's rate on some layers and made figures
    depend on the run order.  Pinned thresholds keep every allocation of both
    libraries on one path.  (Same as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
    in the environment; a no-op where mallopt is absent.)  Off by default:
    with it, other layers (strided 1x1) move instead, so a figure that changes
    with --pin-malloc is the allocator's, not the kernel's."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3   # glibc's malloc.h constants
    # older glibc caps the mmap threshold at 32 MiB (mallopt returns 0 above
    # it); setting it at all also stops the dynamic adjustment
    for size in (1 << 30, 32 << 20):
        if libc.mallopt(m_mmap_threshold, size):
            break
    libc.mallopt(m_trim_threshold, 1 << 30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads for eenet and torch (default: all available cores)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per measurement")
    ap.add_argument("--batches", default="32,128", help="comma-separated batch sizes")
    ap.add_argument("--nets", default="eenet8,resnet20", help="eenet8 and/or resnet20")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic over the repeats (min resists load from other processes)")
    ap.add_argument("--pin-malloc", action="store_true",
                    help="fix glibc's mmap/trim thresholds first (see pin_malloc_thresholds); "
                         "the layers whose ratio moves with this flag are allocator-bound")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or process CPU time (robust to machine load with "
                         "--threads 1)")
    args = ap.parse_args()
    if args.pin_malloc:
        pin_malloc_thresholds()
    global _clock
    _clock = time.perf_counter if args.clock == "wall" else time.process_time

    import torch

    torch.set_num_threads(args.threads)
    eenet.set_num_threads(args.threads)
    peak, lanes = measure_peak(args.threads, args.clock == "cpu")
    print(f"threads: {args.threads} (eenet {eenet.get_num_threads()}, torch "
          f"{torch.get_num_threads()}), torch {torch.__version__}")
    print(f"peak FP32: {peak:.1f} GFLOP/s (FMA chains on {lanes}-lane vectors, "
          f"{args.threads} threads, {args.clock} clock)")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"statistic: {args.stat} of {args.repeats}; clock: {args.clock}; "
          f"{omp_wait.describe()}")
    print("GF/s = GFLOP/s; ratio = eenet / torch (higher is better); %pk = eenet's share of peak")

    shapes: list[ConvShape] = []
    nets = args.nets.split(",")
    if "eenet8" in nets:
        shapes += eenet8_shapes(2) + eenet8_shapes(4)
    if "resnet20" in nets:
        shapes += resnet20_shapes()
    batches = [int(b) for b in args.batches.split(",")]
    cb = torch.ops.aten.convolution_backward
    rng = np.random.default_rng(0)

    header = (f"{'net':<11} {'layer':<10} {'C->K':>7} {'HxW':>5} {'N':>4} | "
              f"{'fwd eenet':>9} {'torch':>6} {'ratio':>5} {'%pk':>4} | "
              f"{'bwd-data':>8} {'torch':>6} {'ratio':>5} {'%pk':>4} | "
              f"{'bwd-wt':>7} {'torch':>6} {'ratio':>5} {'%pk':>4}")
    ratios: dict[tuple[str, int, str], list[float]] = {}
    for n in batches:
        print()
        print(header)
        print("-" * len(header))
        for sh in shapes:
            x = rng.standard_normal((n, sh.C, sh.H, sh.H), dtype=np.float32)
            w = rng.standard_normal((sh.K, sh.C, sh.k, sh.k), dtype=np.float32)
            b = rng.standard_normal(sh.K, dtype=np.float32) if sh.bias else None
            ho = sh.out_size()
            dy = rng.standard_normal((n, sh.K, ho, ho), dtype=np.float32)
            xt, wt, dyt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
            bt = torch.from_numpy(b) if b is not None else None
            s, p = sh.stride, sh.pad
            bias_sizes = [sh.K] if sh.bias else None

            def t_fwd():
                with torch.no_grad():
                    torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p)

            def t_bd():
                cb(dyt, xt, wt, bias_sizes, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                   [True, False, False])

            def t_bw():
                cb(dyt, xt, wt, bias_sizes, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                   [False, True, sh.bias])

            def e_fwd():
                _core.conv2d_forward(x, w, b, s, p)

            def e_bd():
                _core.conv2d_backward(dy, x, w, s, p, False, need_dx=True, need_dw=False)

            def e_bw():
                _core.conv2d_backward(dy, x, w, s, p, sh.bias, need_dx=False)

            fl = sh.flops(n) / 1e9
            cells = []
            for op, ef, tf in (("fwd", e_fwd, t_fwd), ("bwd-data", e_bd, t_bd),
                               ("bwd-weight", e_bw, t_bw)):
                te, tt = time_pair(ef, tf, args.repeats, args.stat)
                ge, gt = fl / te, fl / tt
                ratios.setdefault((sh.net, n, op), []).append(tt / te)
                cells.append(f"{ge:>{9 if op == 'fwd' else 8 if op == 'bwd-data' else 7}.1f} "
                             f"{gt:>6.1f} {tt / te:>5.2f} {100 * ge / peak:>3.0f}%")
            print(f"{sh.net:<11} {sh.name:<10} {f'{sh.C}->{sh.K}':>7} "
                  f"{f'{sh.H}x{sh.H}':>5} {n:>4} | " + " | ".join(cells), flush=True)

    print()
    print("ratio eenet/torch per net, batch and op: geometric mean [min]")
    for (net, n, op), rs in ratios.items():
        gm = float(np.exp(np.mean(np.log(rs))))
        print(f"  {net:<11} N={n:<4} {op:<10} {gm:5.2f} [{min(rs):.2f}]")


if __name__ == "__main__":
    main()
