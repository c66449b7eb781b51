"""Data-pipeline throughput: does the batch iterator keep up with training?

Times eenet.data.BatchIterator delivering normalised, augmented (random crop 32 pad 4 +
horizontal flip) CIFAR-10-sized float32 batches of 128, with and without the prefetch
thread, from the JPEG CIFAR-10 copy read through the image-folder loader (or synthetic
uint8 data of the same shape with --synthetic). If the engine is available
(``eenet.build``), it also times ``net.train_step`` of eenet20 at batch 128 and prints the
ratio, plus how long a real training loop waits for data.

    python benchmarks/data.py [--data-dir ../shared/data] [--synthetic] [--epochs 3]

A script that prints figures, not a test.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import eenet  # noqa: E402
from eenet import data, datasets  # noqa: E402


def load_dataset(data_dir: str | None, synthetic: bool) -> datasets.Dataset:
    if not synthetic:
        try:
            t = time.perf_counter()
            ds = datasets.load("cifar10-jpeg", "train", data_dir=data_dir, download=False)
            print(f"loaded {ds} in {time.perf_counter() - t:.2f} s (decode or cache)")
            return ds
        except (datasets.DatasetNotFoundError, datasets.DatasetError) as e:
            print(f"CIFAR-10 JPEG copy not available ({str(e).splitlines()[0]}); using synthetic data")
    rng = np.random.default_rng(0)
    n = 20000
    return datasets.Dataset(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                            rng.integers(0, 10, n), datasets.CIFAR10_CLASSES, name="synthetic-cifar10",
                            mean=datasets.CIFAR10_MEAN, std=datasets.CIFAR10_STD,
                            augmentation="crop-flip")


def iterator_throughput(ds, batch_size: int, epochs: int, prefetch: int) -> float:
    """Images/s of full epochs of augmented, normalised batches (consumer does nothing)."""
    it = data.BatchIterator(ds, batch_size, shuffle=True, seed=0, augment=True, prefetch=prefetch)
    for _ in it.epoch(99):  # warm-up epoch (page faults, allocator)
        pass
    t = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for x, y, idx in it:
            n += y.size
    return n / (time.perf_counter() - t)


def train_step_throughput(batch_size: int, steps: int):
    """Images/s of eenet20 train_step at ``batch_size`` (None if the engine is missing)."""
    try:
        build = eenet.build
        from eenet import optim
    except (AttributeError, ImportError) as e:
        print(f"engine not available ({e}): train_step not timed")
        return None
    net = build("eenet20", num_classes=10, input_shape=(3, 32, 32), max_batch=batch_size)
    opt = optim.SGD(net, lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch_size).astype(np.int64)
    net.train_step(x, y, opt)  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        net.train_step(x, y, opt)
    return batch_size * steps / (time.perf_counter() - t), net, opt


def fed_training(ds, net, opt, batch_size: int, steps: int) -> tuple[float, float]:
    """Run ``steps`` train steps fed by the prefetching iterator; return (seconds spent
    waiting for batches, total seconds)."""
    it = data.BatchIterator(ds, batch_size, shuffle=True, seed=1, augment=True, drop_last=True)
    wait = 0.0
    t0 = time.perf_counter()
    ep = iter(it)
    for _ in range(steps):
        t = time.perf_counter()
        try:
            x, y, _ = next(ep)
        except StopIteration:
            ep = iter(it)
            x, y, _ = next(ep)
        wait += time.perf_counter() - t
        net.train_step(x, y, opt)
    ep.close()
    return wait, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # ../shared beside the checkout, or $EENET_SHARED, as in tests/conftest.py
    shared = pathlib.Path(os.environ.get("EENET_SHARED", REPO.parent / "shared"))
    p.add_argument("--data-dir", default=str(shared / "data"))
    p.add_argument("--synthetic", action="store_true", help="synthetic uint8 data instead of the JPEG copy")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="train steps to time")
    args = p.parse_args()

    print(f"eenet threads: {eenet.get_num_threads()}, cores: {os.cpu_count()}")
    ds = load_dataset(args.data_dir, args.synthetic)
    bs = args.batch_size
    sync = iterator_throughput(ds, bs, args.epochs, prefetch=0)
    pre = iterator_throughput(ds, bs, args.epochs, prefetch=2)
    per_batch_ms = 1e3 * bs / sync
    print(f"iterator, batch {bs}, crop+flip+normalise -> float32 (B,3,32,32):")
    print(f"  in the caller's thread: {sync:12,.0f} images/s ({per_batch_ms:.2f} ms per batch)")
    print(f"  with prefetch thread:   {pre:12,.0f} images/s")

    res = train_step_throughput(bs, args.steps)
    if res is None:
        return
    step_ips, net, opt = res
    print(f"eenet20 train_step, batch {bs}: {step_ips:12,.0f} images/s ({1e3 * bs / step_ips:.1f} ms per step)")
    print(f"iterator / train_step ratio: {sync / step_ips:.1f}x (caller's thread), "
          f"{pre / step_ips:.1f}x (prefetch); bar >= 10x")
    wait, total = fed_training(ds, net, opt, bs, args.steps)
    print(f"training fed by the prefetching iterator: {args.steps} steps in {total:.2f} s, "
          f"{1e3 * wait / args.steps:.2f} ms per step waiting for data ({100 * wait / total:.1f}%)")


if __name__ == "__main__":
    main()
