"""Where the time of one training step, one full-network inference and one
early-exit inference goes, per op kind, in eenet's C engine.

The engine times each op and each part of the step around the ops (zeroing
gradients, the loss, the optimiser, writing out exited rows) when
``Net._core.set_profiling(True)`` is on; this script runs a few calls of each and
prints milliseconds per call and shares.  Wall-clock: on a busy machine prefer
``--threads 1`` and compare runs made in the same minute.  The early-exit case uses
the same threshold tuning as benchmarks/train.py (default 60% of the batch leaves
at exit 0, half the rest at exit 1).

Usage: python benchmarks/engine_profile.py [--models eenet20] [--batches 32,128]
       [--threads 1] [--steps 5]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import eenet  # noqa: E402
from eenet import optim  # noqa: E402
from train import SHAPES, tune_confidences  # noqa: E402


def timed(net, fn, calls: int) -> dict:
    """{part: ms per call} over `calls` calls of fn (after one warm-up call)."""
    fn()
    net._core.set_profiling(True)
    for _ in range(calls):
        fn()
    prof = net._core.profile()
    net._core.set_profiling(False)
    return {k: 1e3 * v / calls for k, v in prof.items() if v > 0}


def show(title: str, prof: dict) -> None:
    """Print one profile, largest part first, with op-kind groups summed."""
    total = sum(prof.values())
    print(f"\n{title}: {total:.2f} ms per call")
    for k, v in sorted(prof.items(), key=lambda kv: -kv[1]):
        print(f"  {k:26s} {v:9.3f} ms {100 * v / total:6.1f}%")
    conv = sum(v for k, v in prof.items() if k.startswith("conv2d"))
    print(f"  {'(conv2d, all)':26s} {conv:9.3f} ms {100 * conv / total:6.1f}%   "
          f"{'(everything else)':18s} {total - conv:9.3f} ms {100 * (total - conv) / total:6.1f}%")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="eenet20")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="calls timed per case")
    ap.add_argument("--shares", default="0.6,0.5",
                    help="share of the running samples that leave at each early exit")
    args = ap.parse_args(argv)
    eenet.set_num_threads(args.threads)
    shares = [float(s) for s in args.shares.split(",")]
    print(f"threads={args.threads} eenet={eenet.__version__}")
    for model in args.models.split(","):
        shape = SHAPES[model]
        for batch in (int(b) for b in args.batches.split(",")):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch,) + shape).astype(np.float32)
            y = rng.integers(0, 10, size=batch).astype(np.int64)
            net = eenet.build(model, num_classes=10, input_shape=shape, num_ee=2,
                              distribution="fine", exit_type="pool", max_batch=batch, seed=0)
            opt = optim.SGD(net, lr=0.01, momentum=0.9, weight_decay=1e-4)
            show(f"{model} batch {batch}: train_step (v2, SGD)",
                 timed(net, lambda: net.train_step(x, y, opt, loss="v2"), args.steps))
            net.eval()
            show(f"{model} batch {batch}: predict_all (every exit)",
                 timed(net, lambda: net.predict_all(x), args.steps))
            tune_confidences(net, x, shares)
            pred = net.predict(x)
            counts = np.bincount(pred.exit, minlength=net.num_exits).tolist()
            cost = float(net.flop_costs[pred.exit].mean())
            show(f"{model} batch {batch}: predict (early exit, exits {counts}, "
                 f"FLOP cost {cost:.3f})", timed(net, lambda: net.predict(x), args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
