"""Training and inference speed of eenet against the PyTorch re-implementation.

For each model and batch size, in one run with the same thread count:

* training images/s: one full step (forward, loss v2, backward, SGD with
  momentum and weight decay) in eenet (``Net.train_step``) and in PyTorch
  (tests/torch_reference.py, float32, ``torch.optim.SGD``);
* full-network inference images/s: every exit in eval mode (eenet
  ``predict_all``, PyTorch ``forward`` under ``no_grad``);
* early-exit inference images/s: eenet's batched ``predict``.  The network is
  "threshold-tuned": each early exit's confidence bias is shifted so that a
  chosen share of the batch leaves there (default 60% at exit 0, half the rest
  at exit 1), which gives an average cost well below 1 without training; the
  average cost is measured on the batch.  The check is
  EE images/s >= 0.8 x (full images/s / average cost).

Timing: the figures that form a ratio (eenet and torch training; eenet full,
torch full and eenet early-exit inference) are timed in alternating rounds and
each keeps its best round, so both sides of a ratio see the same load.

OpenMP wait policy: libgomp's default, as PyTorch runs alone, unless
OMP_WAIT_POLICY or GOMP_SPINCOUNT is set (benchmarks/omp_wait.py).

Usage: python benchmarks/train.py [--threads 2] [--models eenet8,eenet20,eenet110]
       [--batches 32,128] [--seconds 2.0] [--rounds 5]
Figures are measured, never assumed; nothing here is a test.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import omp_wait  # noqa: E402  (before eenet: sets the OpenMP wait policy both run under)
import eenet  # noqa: E402
from eenet import optim  # noqa: E402

SHAPES = {"eenet8": (1, 28, 28), "eenet20": (3, 32, 32), "eenet110": (3, 32, 32)}


def rates(fns: dict, batch: int, seconds: float, rounds: int) -> dict:
    """Images per second of each fn() (one batch per call), measured in
    alternation: every round times each fn for about seconds / rounds, in
    turn, after one warm-up call of each; a fn's figure is its best round
    (highest rate).  Alternating rounds let the figures that form a ratio see
    the same load from other processes, and the best round is the one least
    disturbed by it."""
    best = {name: 0.0 for name in fns}
    for fn in fns.values():
        fn()
    per_round = seconds / rounds
    for _ in range(rounds):
        for name, fn in fns.items():
            n, start = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - start < per_round:
                fn()
                n += 1
            best[name] = max(best[name], n * batch / (time.perf_counter() - start))
    return best


def tune_confidences(net, x, shares) -> None:
    """Shift each early exit's confidence bias so that about shares[e] of the
    samples still running at exit e leave there (threshold 0.5)."""
    net.eval()
    sd = net.state_dict()
    for e, share in enumerate(shares):
        if e >= net.num_exits - 1:
            break
        pred = net.predict(x)
        alive = pred.exit >= e
        _, conf = net.predict_all(x)
        c = np.clip(conf[e][alive], 1e-6, 1 - 1e-6)
        q = np.quantile(c, 1.0 - share)
        sd[net.spec.exits[e].confidence.params[1]][...] -= np.float32(np.log(q / (1 - q)))


def bench(model: str, batch: int, threads: int, seconds: float, shares, rounds: int) -> dict:
    import torch
    import torch_reference as ref
    shape = SHAPES[model]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    net = eenet.build(model, num_classes=10, input_shape=shape, num_ee=2, distribution="fine",
                      exit_type="pool", max_batch=batch, seed=0)
    res = {"model": model, "batch": batch}

    # ---- training -------------------------------------------------------------
    tmodel = ref.from_eenet(net, dtype=torch.float32).train()
    opt = optim.SGD(net, lr=0.01, momentum=0.9, weight_decay=1e-4)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    costs = net.exit_costs

    def torch_step():
        topt.zero_grad()
        p, c = tmodel(xt)
        ref.ee_loss(p, c, costs, yt, 2, 1.0)[0].backward()
        topt.step()

    r = rates({"eenet": lambda: net.train_step(x, y, opt, loss="v2"), "torch": torch_step},
              batch, 2 * seconds, rounds)
    res["train_eenet"], res["train_torch"] = r["eenet"], r["torch"]

    # ---- inference --------------------------------------------------------------
    net.eval()
    # the early-exit figures need the tuned confidences, which change nothing
    # that predict_all computes but the exits' biases: tune first, then time
    # full eenet, full torch and early-exit eenet in alternation
    tune_confidences(net, x, shares)
    tmodel = ref.from_eenet(net, dtype=torch.float32).eval()
    pred = net.predict(x)
    # average cost in FLOPs (net.flop_costs: for eenet8 the authors' fixed costs
    # 0.08/0.26 are not FLOP ratios, so the speed-up is judged on the FLOPs)
    res["avg_cost"] = float(net.flop_costs[pred.exit].mean())
    res["exit_counts"] = np.bincount(pred.exit, minlength=net.num_exits).tolist()

    def torch_full():
        with torch.no_grad():
            tmodel(xt)

    r = rates({"full": lambda: net.predict_all(x), "torch": torch_full,
               "ee": lambda: net.predict(x)}, batch, 3 * seconds, rounds)
    res["full_eenet"], res["full_torch"], res["ee_eenet"] = r["full"], r["torch"], r["ee"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="eenet8,eenet20,eenet110")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="time per figure, spread over the rounds")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds per group of figures (best round counts)")
    ap.add_argument("--shares", default="0.6,0.5",
                    help="share of the running samples that leave at each early exit")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    eenet.set_num_threads(args.threads)
    shares = [float(s) for s in args.shares.split(",")]
    print(f"threads={args.threads} torch={torch.__version__} eenet={eenet.__version__} "
          f"{omp_wait.describe()}; "
          f"best of {args.rounds} alternating rounds")
    head = (f"{'model':9s} {'batch':>5s} | {'train img/s eenet':>17s} {'torch':>8s} {'ratio':>6s} | "
            f"{'full img/s eenet':>16s} {'torch':>8s} {'ratio':>6s} | {'EE img/s':>8s} "
            f"{'FLOPcost':>8s} {'exits':>14s} {'EE/(full/cost)':>14s}")
    print(head)
    print("-" * len(head))
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r = bench(model, batch, args.threads, args.seconds, shares, args.rounds)
            ee_eff = r["ee_eenet"] / (r["full_eenet"] / r["avg_cost"])
            print(f"{model:9s} {batch:5d} | {r['train_eenet']:17.1f} {r['train_torch']:8.1f} "
                  f"{r['train_eenet'] / r['train_torch']:6.2f} | {r['full_eenet']:16.1f} "
                  f"{r['full_torch']:8.1f} {r['full_eenet'] / r['full_torch']:6.2f} | "
                  f"{r['ee_eenet']:8.1f} {r['avg_cost']:8.3f} {str(r['exit_counts']):>14s} "
                  f"{ee_eff:14.2f}", flush=True)
    print("bars: train ratio >= 1.5 (eenet20, batch 128) and >= 3 (eenet8); "
          "EE/(full/cost) >= 0.8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
