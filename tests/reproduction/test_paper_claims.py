"""The paper's claim, measured: an EENet reaches accuracy close to its plain counterpart
trained the same way, at an average cost well below 1.

Real data only: MNIST (../shared/data) and Fashion-MNIST (Debian's dataset-fashion-mnist).
EENet-8 has no plain counterpart in eenet.models, so the comparison is EENet-20 against
ResNet-20, trained with the same settings: the authors' defaults (Adam, lr 0.001, weight
decay 1e-4, batch 32, loss v2, lambda 1, two exits placed `fine`) except `plain` exits
(heads on the flattened feature map; with `pool` exits the short runs below send every
sample to the final exit) and a CI-sized budget: 3,000 training images, 3 epochs, 1,000
validation and 2,000 test images, one thread (the numbers depend on the thread count).

The margins come from these seeded runs (the README's "Reproduction results" table; each
row's command is ``command(RUNS[name])``): EENet-20 measured 93.75% (MNIST) and 80.30%
(Fashion-MNIST) at cost 0.126, ResNet-20 96.05% and 77.75%. An earlier engine build (other
summation orders) gave 94.05/80.35 and 95.90/79.35, so results move by about a point with
the kernels. The accuracy margin (4 points) is the largest measured gap (2.3) plus about two
standard errors of a difference of 2,000-image accuracies; the cost bound 0.3 admits the
second exit (0.24) but not the full network.
"""
import pytest

from conftest import FASHION_MNIST, SHARED_DATA

import eenet

pytestmark = pytest.mark.slow

COMMON = dict(epochs=3, train_size=3000, val_size=1000, test_size=2000, test_batch=256,
              seed=1, threads=1, progress=False)
MNIST = dict(dataset="mnist", data_dir=str(SHARED_DATA))
FASHION = dict(dataset="fashion-mnist")
RUNS = {
    "eenet20-mnist": dict(model="eenet20", exit_type="plain", **MNIST, **COMMON),
    "resnet20-mnist": dict(model="resnet20", **MNIST, **COMMON),
    "eenet20-fashion": dict(model="eenet20", exit_type="plain", **FASHION, **COMMON),
    "resnet20-fashion": dict(model="resnet20", **FASHION, **COMMON),
}
ACC_MARGIN = 0.04     # EENet-20 accuracy >= ResNet-20 accuracy - margin
MAX_COST = 0.3        # EENet-20 average cost (ResNet-20: 1)


def command(kwargs: dict) -> str:
    """The `python -m eenet train` command line of a run (as in the README table)."""
    parts = ["python -m eenet train"]
    for key, value in kwargs.items():
        if key == "progress":
            continue
        if key == "data_dir":
            value = "../shared/data"
        parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def _available(kwargs: dict) -> bool:
    if kwargs["dataset"] == "mnist":
        return (SHARED_DATA / "mnist" / "train-labels-idx1-ubyte.gz").exists()
    return (FASHION_MNIST / "train-labels-idx1-ubyte.gz").exists()


_CACHE: dict = {}


def run(name: str, tmp_path_factory) -> dict:
    """Train run ``name`` once per session (its results folder in a temporary directory)."""
    kwargs = RUNS[name]
    if not _available(kwargs):
        pytest.skip(f"{kwargs['dataset']} is not available")
    if name not in _CACHE:
        out = tmp_path_factory.mktemp(name)
        res = eenet.train(results_dir=str(out), **kwargs)
        print(f"\n{name}: accuracy {res['accuracy']:.4f}, avg cost {res['avg_cost']:.4f}, "
              f"exits {res['exit_counts']}\n  {command(kwargs)}")
        _CACHE[name] = res
    return _CACHE[name]


@pytest.mark.parametrize("data", ["mnist", "fashion"])
def test_eenet20_close_to_resnet20_at_low_cost(data, tmp_path_factory):
    ee = run(f"eenet20-{data}", tmp_path_factory)
    plain = run(f"resnet20-{data}", tmp_path_factory)
    assert plain["avg_cost"] == pytest.approx(1.0)
    assert plain["exit_counts"] == [2000]
    assert ee["avg_cost"] <= MAX_COST
    assert ee["accuracy"] >= plain["accuracy"] - ACC_MARGIN
    # both really learned (chance is 10%)
    assert min(ee["accuracy"], plain["accuracy"]) >= 0.75
