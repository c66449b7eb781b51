"""Stand-in trial functions for the sweep machinery tests (importable by Dask workers: the
workers inherit the client's sys.path). Each execution leaves a file in ``marker_dir`` so that
tests can count how many times a trial ran."""
from __future__ import annotations

import os
import time
import uuid

import numpy as np


def fake_train(model: str = "eenet8", dataset: str = "fashion-mnist", *, num_ee: int = 2,
               lambda_coef: float = 1.0, lr: float = 0.001, epochs: int = 1, seed: int = 1,
               marker_dir: str | None = None, fail: bool = False, die_once: bool = False,
               sleep: float = 0.0, results_dir: str | None = None, resume: bool = False,
               threads: int | None = None, progress: bool = True) -> dict:
    """Pretend to train: record the execution, optionally fail / kill its own worker
    process on the first attempt / sleep, and return train-like metrics."""
    import pandas as pd
    key = f"{model}-{num_ee}-{lambda_coef:g}-{lr:g}-{seed}"
    if marker_dir is not None:
        os.makedirs(marker_dir, exist_ok=True)
        with open(os.path.join(marker_dir, f"exec-{key}-{uuid.uuid4().hex}"), "w") as f:
            f.write(f"{os.getpid()} resume={resume} threads={threads}\n")
        if die_once:
            flag = os.path.join(marker_dir, f"died-{key}")
            if not os.path.exists(flag):
                open(flag, "w").close()
                os._exit(13)  # the worker process dies mid-trial
    if sleep:
        time.sleep(sleep)
    if fail:
        raise RuntimeError(f"trial {key} failed on purpose")
    if results_dir is not None:
        with open(os.path.join(results_dir, "checkpoint.eenet"), "w") as f:
            f.write("fake")
    rng = np.random.default_rng(seed)
    E1 = num_ee + 1
    costs = np.linspace(1.0 / E1, 1.0, E1)
    n = 50
    counts = rng.multinomial(n, np.ones(E1) / E1)
    acc = float(1.0 - 0.1 / (1.0 + lambda_coef) - 0.01 * num_ee)
    return {"accuracy": acc, "avg_cost": float(costs @ counts / n),
            "exit_counts": counts, "epochs_run": epochs, "results_dir": results_dir,
            "history": pd.DataFrame({"epoch": [1], "loss": [0.5]}),
            "outputs": {"probs": rng.random((E1, n, 3)).astype(np.float32),
                        "conf": rng.random((E1, n)).astype(np.float32),
                        "labels": rng.integers(0, 3, n), "costs": costs},
            "threads_seen": threads, "resume_seen": resume}
