"""Stand-in trial functions for the sweep machinery tests (importable by Dask workers: the
workers inherit the client's sys.path). Each execution leaves a file in ``marker_dir`` so that
tests can count how many times a trial ran."""
from __future__ import annotations

import os
import time
import uuid

import numpy as np


def trial_key(num_ee: int, lambda_coef: float, seed: int = 1) -> str:
    return f"{num_ee}-{lambda_coef:g}-{seed}"


def fake_train(model: str = "eenet8", dataset: str = "fashion-mnist", *, num_ee: int = 2,
               lambda_coef: float = 1.0, lr: float = 0.001, epochs: int = 1, seed: int = 1,
               loss_func: str = "v2", save_model: bool = True,
               marker_dir: str | None = None, fail_key: str | None = None,
               die_key: str | None = None, sleep: float = 0.0, results_dir: str | None = None, resume: bool = False,
               threads: int | None = None, progress: bool = True) -> dict:
    """Pretend to train: record the execution, raise when the trial's key
    (f"{num_ee}-{lambda_coef:g}-{seed}") is ``fail_key``, kill its own worker process on the
    first attempt when it is ``die_key``, sleep, and return train-like metrics."""
    import pandas as pd
    key = trial_key(num_ee, lambda_coef, seed)
    if marker_dir is not None:
        os.makedirs(marker_dir, exist_ok=True)
        with open(os.path.join(marker_dir, f"exec-{key}-{uuid.uuid4().hex}"), "w") as f:
            f.write(f"{os.getpid()} resume={resume} threads={threads}\n")
        if results_dir is not None:  # a "checkpoint" from the first moment on
            with open(os.path.join(results_dir, "checkpoint.eenet"), "w") as f:
                f.write("fake")
        if die_key == key:
            flag = os.path.join(marker_dir, f"died-{key}")
            if not os.path.exists(flag):
                open(flag, "w").close()
                time.sleep(0.5)  # die mid-trial, not at its start
                os._exit(13)  # the worker process dies mid-trial
    if sleep:
        time.sleep(sleep)
    if fail_key == key:
        raise RuntimeError(f"trial {key} failed on purpose")
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
