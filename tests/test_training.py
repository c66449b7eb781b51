"""eenet.training: schedules, tag updates, validation of settings (pure logic), and small
real training runs on Fashion-MNIST with the C engine (results folder, best model,
resume, v4 tags, evaluate)."""
import json
import math
import os

import numpy as np
import pytest

from conftest import FASHION_MNIST

import eenet
from eenet import training as T

# ---- pure logic ---------------------------------------------------------------------------


def test_loss_schedule_two_stage_switches_after_25_epochs():
    cfg = T.TrainConfig(model="eenet20", two_stage=True)
    assert [cfg.loss_for_epoch(e) for e in (1, 25, 26, 150)] == ["v0", "v0", "v1", "v1"]
    short = T.TrainConfig(model="eenet20", two_stage=True, two_stage_epochs=2)
    assert [short.loss_for_epoch(e) for e in (1, 2, 3)] == ["v0", "v0", "v1"]
    assert T.TrainConfig(model="eenet20").loss_for_epoch(1) == "v2"
    assert T.TrainConfig(model="eenet20", loss_func="v4").loss_for_epoch(30) == "v4"
    # a plain ResNet trains with cross-entropy, which is v0 on its single exit
    assert T.TrainConfig(model="resnet20").loss_for_epoch(1) == "v0"
    assert T.TrainConfig(model="resnet20").resolved_num_ee == 0
    assert T.TrainConfig(model="eenet20").resolved_num_ee == 2


def test_exit_threshold_defaults():
    assert T.TrainConfig().exit_threshold() == 0.5
    assert T.TrainConfig(loss_func="v3", num_ee=4).exit_threshold() == 0.25
    assert T.TrainConfig(loss_func="v3", num_ee=4, threshold=0.7).exit_threshold() == 0.7
    # two-stage runs end with v1 whatever loss_func says, so T stays 0.5
    assert T.TrainConfig(loss_func="v3", num_ee=4, two_stage=True).exit_threshold() == 0.5


def test_default_results_dir_uses_the_canonical_dataset_name():
    assert T.TrainConfig(model="eenet8", dataset="FMNIST").default_results_dir() == \
        os.path.join("results", "fashion-mnist", "eenet8")
    assert T.TrainConfig(model="eenet20", dataset="cifar-10").default_results_dir() == \
        os.path.join("results", "cifar10", "eenet20", "ee2_fine")


def test_evaluate_default_threshold_follows_the_saved_run():
    """evaluate() without a threshold uses the loss the saved run ended with, as training
    did (config.json beside the model; v2 without one)."""
    assert T._saved_final_loss({}) == "v2"
    assert T._saved_final_loss({"loss_func": "v3", "num_ee": 4}) == "v3"
    assert T._saved_final_loss({"loss_func": "v3", "two_stage": True}) == "v1"
    assert T._saved_final_loss({"model": "resnet20", "unknown_key": 1}) == "v0"


def test_adaptive_learning_rate_schedule():
    sgd = T.TrainConfig(model="eenet20", dataset="cifar10", optimizer="SGD", adaptive_lr=True)
    assert [sgd and T.adaptive_learning_rate(sgd, e, 0.5) for e in (1, 99, 100, 199, 200)] == \
        pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    deep = T.TrainConfig(model="eenet110", optimizer="SGD", adaptive_lr=True)
    assert [T.adaptive_learning_rate(deep, e, 0.5) for e in (1, 2, 3)] == \
        pytest.approx([0.01, 0.01, 0.1])
    tiny = T.TrainConfig(model="eenet18", dataset="tiny-imagenet", optimizer="SGD",
                         adaptive_lr=True)
    assert [T.adaptive_learning_rate(tiny, e, 0.5) for e in (1, 30, 31, 61)] == \
        pytest.approx([0.005, 0.005, 0.0005, 0.00005])
    # any spelling load() accepts selects the same schedule
    alias = T.TrainConfig(model="eenet18", dataset="TinyImageNet", optimizer="SGD",
                          adaptive_lr=True)
    assert [T.adaptive_learning_rate(alias, e, 0.5) for e in (1, 31)] == \
        pytest.approx([0.005, 0.0005])
    # Adam, or no --adaptive-lr: the current rate is kept
    adam = T.TrainConfig(optimizer="Adam", adaptive_lr=True)
    assert T.adaptive_learning_rate(adam, 100, 0.123) == 0.123
    assert T.adaptive_learning_rate(T.TrainConfig(optimizer="SGD"), 100, 0.123) == 0.123


def test_best_exit_tags_matches_brute_force(rng):
    nll = rng.exponential(1.0, size=(3, 50)).astype(np.float32)
    costs = np.array([0.08, 0.26, 1.0])
    for lam in (0.0, 0.5, 3.0):
        got = T.best_exit_tags(nll, costs, lam)
        want = [min(range(3), key=lambda i: (nll[i, b] + lam * costs[i], i)) for b in range(50)]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
    # ties go to the earliest exit; a huge lambda sends everyone to the cheapest exit
    np.testing.assert_array_equal(T.best_exit_tags(np.zeros((3, 4)), np.ones(3), 1.0), 0)
    np.testing.assert_array_equal(T.best_exit_tags(nll, costs, 1e6), 0)


def test_sem():
    assert T._sem([1.0]) == 0.0
    assert T._sem([1.0, 3.0]) == pytest.approx(1.0)
    v = np.arange(10.0)
    assert T._sem(v) == pytest.approx(v.std(ddof=1) / math.sqrt(10))


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="nosuchnet"), "unknown model"),
    (dict(model="eenet8", dataset="fashion-mnist", num_ee=3), "exactly 2 early exits"),
    (dict(model="resnet20", num_ee=2), "--num-ee must be 0"),
    (dict(model="resnet20", loss_func="v2"), "cross-entropy"),
    (dict(model="resnet20", two_stage=True), "--two-stage needs an EENet"),
    (dict(model="eenet20", two_stage=True, loss_func="v2"), "--two-stage"),
    (dict(model="eenet20", num_ee=0), "--num-ee must be >= 1"),
    (dict(model="eenet20", resume=True, load_model="x.eenet"), "--resume"),
    (dict(model="eenet20", resume=True, save_model=False), "--no-save-model"),
    (dict(model="eenet20", dataset="nosuchdata"), "unknown dataset"),
    (dict(model="eenet20", epochs=0), "--epochs"),
    (dict(model="eenet20", lr=-1.0), "--lr"),
    (dict(model="eenet20", lr=float("nan")), "--lr"),
    (dict(model="eenet20", lambda_coef=-0.1), "--lambda-coef"),
    (dict(model="eenet20", threshold=1.5), "--threshold"),
    (dict(model="eenet20", momentum=1.0), "--momentum"),
    (dict(model="eenet20", val_fraction=1.0), "--val-fraction"),
    (dict(model="eenet20", val_fraction=0.0, val_size=10), "--val-size"),
    (dict(model="eenet20", train_size=0), "--train-size"),
    (dict(model="eenet20", optimizer="RMSprop"), "unknown optimizer"),
    (dict(model="eenet20", distribution="uniform"), "unknown distribution"),
])
def test_validate_config_refuses(kwargs, message):
    with pytest.raises(T.ConfigError, match=message.replace("-", r"\-")):
        T.validate_config(T.TrainConfig(**kwargs), check_model=False)


def test_validate_config_checks_architecture_early():
    """More exits than the model can place fails before any data is read."""
    with pytest.raises(T.ConfigError, match="eenet20"):
        T.validate_config(T.TrainConfig(model="eenet20", dataset="cifar10", num_ee=40))
    T.validate_config(T.TrainConfig(model="eenet20", dataset="cifar10", num_ee=2))
    T.validate_config(T.TrainConfig(model="resnet20", dataset="cifar10"))


def test_format_summary_lists_every_exit():
    res = {"accuracy": 0.875, "accuracy_sem": 0.01, "avg_cost": 0.3125, "avg_cost_sem": 0.02,
           "flop_cost": 0.55, "flops": 12345.0, "full_flops": 40000.0, "num_samples": 8,
           "threshold": 0.5, "time_per_sample": 2.5e-5, "images_per_s": 40000.0,
           "batch_size": 1, "exit_counts": [4, 2, 2], "exit_accuracy": [1.0, 0.5, float("nan")],
           "exit_costs": [0.08, 0.26, 1.0], "exit_flop_costs": [0.45, 0.74, 1.0]}
    text = T.format_summary(res, "title")
    assert "87.50%" in text and "0.3125" in text and "40,000 images/s" in text
    assert "12,345" in text and "0.0250 ms/sample" in text
    lines = text.splitlines()
    assert any(line.split()[:4] == ["0", "0.0800", "0.4500", "4"] for line in lines)
    assert any(line.split()[0] == "final" and line.split()[-1] == "-" for line in lines)


def test_plots_write_pngs(tmp_path):
    import pandas as pd
    from eenet import plots
    hist = pd.DataFrame({
        "epoch": [1, 2, 3], "train_loss": [2.0, 1.5, 1.2], "train_loss_sem": [0.1] * 3,
        "loss_cls": [1.5, 1.1, 0.9], "loss_cls_sem": [0.1] * 3, "loss_cost": [0.5, 0.4, 0.3],
        "loss_cost_sem": [0.01] * 3, "loss_conf": [0.0] * 3, "loss_conf_sem": [0.0] * 3,
        "val_loss": [1.9, np.nan, 1.1], "val_loss_sem": [0.1, np.nan, 0.1],
        "acc": [0.6, np.nan, 0.8], "acc_sem": [0.02, np.nan, 0.02],
        "cost": [0.5, np.nan, 0.3], "cost_sem": [0.01, np.nan, 0.01],
        "flop": [5e4, np.nan, 3e4], "flop_sem": [1e3, np.nan, 1e3]})
    paths = plots.plot_run(str(tmp_path), hist, {"exit_counts": [5, 3, 2],
                                                 "exit_accuracy": [0.9, 0.7, float("nan")],
                                                 "exit_costs": [0.1, 0.4, 1.0]}, "test")
    assert [os.path.basename(p) for p in paths] == ["loss.png", "acc_cost.png",
                                                    "acc_vs_flops.png", "exits.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 5000
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


# ---- real training runs (C engine, real Fashion-MNIST) ----------------------------------


needs_fashion = pytest.mark.skipif(not (FASHION_MNIST / "train-labels-idx1-ubyte.gz").exists(),
                                   reason="Fashion-MNIST is not installed")

SMALL = dict(model="eenet8", dataset="fashion-mnist", epochs=2, batch_size=32, test_batch=64,
             train_size=640, val_size=256, test_size=256, seed=3, threads=1, progress=False)


def _weights(path):
    net, opt, extra = eenet.load_checkpoint(str(path))
    return {k: np.array(v) for k, v in net.state_dict().items()}, opt, extra


@needs_fashion
def test_train_writes_results_folder_and_consistent_figures(tmp_path):
    out = tmp_path / "run"
    res = T.train(results_dir=str(out), **SMALL)
    for name in ("config.json", "history.csv", "checkpoint.eenet", "model.eenet", "metrics.json",
                 "loss.png", "acc_cost.png", "acc_vs_flops.png", "exits.png"):
        assert (out / name).exists(), name
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    hist = res["history"]
    assert list(hist["epoch"]) == [1, 2]
    for col in ("train_loss", "train_loss_sem", "loss_cls", "loss_cost", "loss_conf", "acc",
                "acc_sem", "cost", "cost_sem", "flop", "flop_sem", "val_loss", "val_loss_sem"):
        assert col in hist.columns and np.isfinite(hist[col]).all(), col
    # the csv holds the same rows
    import pandas as pd
    csv = pd.read_csv(out / "history.csv")
    np.testing.assert_allclose(csv["val_loss"], hist["val_loss"])
    # exits and cost are consistent with the network's costs
    net = eenet.load(str(out / "model.eenet"))
    counts = np.array(res["exit_counts"])
    assert counts.sum() == SMALL["test_size"] and len(counts) == net.num_exits == 3
    assert res["avg_cost"] == pytest.approx(counts @ np.asarray(net.exit_costs) / counts.sum())
    assert 0.0 <= res["accuracy"] <= 1.0 and res["images_per_s"] > 0
    # best epoch = the smallest validation loss
    assert res["best_epoch"] == int(hist.loc[hist["val_loss"].idxmin(), "epoch"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(res["accuracy"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "eenet8" and cfg["epochs"] == 2 and cfg["batch_size"] == 32
    # evaluating the saved best model on the same test subset gives the same figures
    ev = T.evaluate(str(out / "model.eenet"), "fashion-mnist", test_size=SMALL["test_size"],
                    seed=SMALL["seed"], batch_size=100)
    assert ev["accuracy"] == res["accuracy"]
    assert ev["exit_counts"] == res["exit_counts"]
    assert ev["outputs"]["probs"].shape == (3, 256, 10)
    assert ev["outputs"]["conf"].shape == (3, 256)
    np.testing.assert_allclose(ev["outputs"]["probs"].sum(-1), 1.0, rtol=1e-4)


@needs_fashion
def test_evaluate_threshold_extremes(tmp_path):
    out = tmp_path / "run"
    T.train(results_dir=str(out), **{**SMALL, "epochs": 1})
    model = str(out / "model.eenet")
    never = T.evaluate(model, test_size=128, threshold=1.0)   # conf > 1 never holds
    assert never["exit_counts"] == [0, 0, 128] and never["avg_cost"] == pytest.approx(1.0)
    assert never["dataset"] == "fashion-mnist"                 # from config.json
    net = eenet.load(model)
    always = T.evaluate(model, test_size=128, threshold=0.0)  # sigmoid > 0 always holds
    assert always["exit_counts"] == [128, 0, 0]
    assert always["avg_cost"] == pytest.approx(float(net.exit_costs[0]))
    with pytest.raises(T.ConfigError):
        T.evaluate(model, test_size=16, threshold=0.5, target_cost=0.3)


@needs_fashion
def test_resume_gives_the_same_weights_v4(tmp_path):
    cfg = {**SMALL, "epochs": 3, "loss_func": "v4", "train_size": 320}
    full = T.train(results_dir=str(tmp_path / "full"), **cfg)
    T.train(results_dir=str(tmp_path / "cut"), **{**cfg, "epochs": 1})
    resumed = T.train(results_dir=str(tmp_path / "cut"), resume=True, **cfg)
    w_full, opt_full, extra_full = _weights(tmp_path / "full" / "checkpoint.eenet")
    w_cut, opt_cut, extra_cut = _weights(tmp_path / "cut" / "checkpoint.eenet")
    assert w_full.keys() == w_cut.keys()
    for k in w_full:
        np.testing.assert_array_equal(w_full[k], w_cut[k], err_msg=k)
    assert extra_full["tags"] == extra_cut["tags"] and extra_full["epoch"] == 3
    assert resumed["accuracy"] == full["accuracy"]
    assert resumed["exit_counts"] == full["exit_counts"]
    cols = ["epoch", "train_loss", "val_loss", "acc", "cost"]
    np.testing.assert_array_equal(resumed["history"][cols].to_numpy(),
                                  full["history"][cols].to_numpy())
    # refusing to resume with different training settings
    with pytest.raises(T.ConfigError, match="lambda_coef"):
        T.train(results_dir=str(tmp_path / "cut"), resume=True, **{**cfg, "lambda_coef": 2.0})
    # and refusing to overwrite a run silently
    with pytest.raises(T.ConfigError, match="--resume"):
        T.train(results_dir=str(tmp_path / "cut"), **cfg)


@needs_fashion
def test_v4_tags_follow_lambda(tmp_path):
    """With a huge lambda every sample's best exit is the cheapest one (exit 0)."""
    T.train(results_dir=str(tmp_path / "r"),
            **{**SMALL, "epochs": 1, "loss_func": "v4", "lambda_coef": 1000.0})
    _, _, extra = _weights(tmp_path / "r" / "checkpoint.eenet")
    tags = np.asarray(extra["tags"])
    assert tags.shape == (SMALL["train_size"],)
    assert (tags == 0).all()


@needs_fashion
def test_no_save_model_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = T.train(save_model=False, **{**SMALL, "epochs": 1})
    assert res["results_dir"] is None and os.listdir(tmp_path) == []
    assert len(res["history"]) == 1


@needs_fashion
def test_two_stage_sgd_adaptive_lr_schedule_in_history(tmp_path):
    res = T.train(results_dir=str(tmp_path / "r"),
                  **{**SMALL, "model": "eenet8", "train_size": 320, "epochs": 3, "two_stage": True,
                     "two_stage_epochs": 2, "optimizer": "SGD", "adaptive_lr": True, "lr": 0.5})
    hist = res["history"]
    assert list(hist["loss_func"]) == ["v0", "v0", "v1"]
    np.testing.assert_allclose(hist["lr"], 0.1)            # the schedule, not --lr
    assert (hist["loss_cost"].iloc[:2] == 0).all() and hist["loss_cost"].iloc[2] > 0
    net, opt, _ = eenet.load_checkpoint(str(tmp_path / "r" / "checkpoint.eenet"))
    assert type(opt).__name__ == "SGD" and opt.lr == pytest.approx(0.1)


@needs_fashion
def test_plain_resnet_trains_with_cross_entropy(tmp_path):
    res = T.train(results_dir=str(tmp_path / "r"),
                  **{**SMALL, "model": "resnet20", "epochs": 1, "train_size": 96, "val_size": 32,
                     "test_size": 32})
    assert res["exit_counts"] == [32] and res["avg_cost"] == pytest.approx(1.0)
    hist = res["history"]
    assert hist["loss_func"].iloc[0] == "v0"
    # v0 on a single exit is the cross-entropy: no cost or confidence part
    assert hist["loss_cost"].iloc[0] == 0 and hist["loss_conf"].iloc[0] == 0
    assert hist["train_loss"].iloc[0] == pytest.approx(hist["loss_cls"].iloc[0])


# ---- review fixes: thread count, stored threshold, public helpers for sweeps ---------------


def _other_thread_count() -> int:
    return 2 if eenet.get_num_threads() == 1 else 1


def test_train_and_evaluate_restore_the_thread_count_on_error(tmp_path):
    """threads=N applies to one call: the process-wide count is put back, also when the
    call fails after setting it (here: no dataset files, a missing model)."""
    before = eenet.get_num_threads()
    n = _other_thread_count()
    with pytest.raises((FileNotFoundError, ValueError)):
        T.train(model="eenet8", dataset="mnist", data_dir=str(tmp_path), epochs=1,
                threads=n, save_model=False, progress=False)
    assert eenet.get_num_threads() == before
    with pytest.raises(FileNotFoundError):
        T.evaluate(str(tmp_path / "absent.eenet"), "mnist", threads=n)
    assert eenet.get_num_threads() == before


def test_threads_set_to_sets_inside_and_restores():
    before = eenet.get_num_threads()
    n = _other_thread_count()
    with T.threads_set_to(n):
        assert eenet.get_num_threads() == n
    assert eenet.get_num_threads() == before
    with T.threads_set_to(None):
        assert eenet.get_num_threads() == before


@needs_fashion
def test_train_restores_the_thread_count(tmp_path):
    before = eenet.get_num_threads()
    n = _other_thread_count()
    T.train(**{**SMALL, "epochs": 1, "threads": n, "save_model": False, "train_size": 64,
               "val_size": 32, "test_size": 32})
    assert eenet.get_num_threads() == before


def _saved_untrained(tmp_path, **config) -> str:
    """An untrained eenet8 saved with a config.json beside it (no training needed)."""
    net = eenet.build("eenet8", num_classes=10, input_shape=(1, 28, 28), max_batch=64, seed=0)
    path = tmp_path / "model.eenet"
    eenet.save(net, str(path))
    cfg = {"model": "eenet8", "dataset": "fashion-mnist", **config}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def test_saved_threshold_prefers_the_runs_own_threshold():
    net = eenet.build("eenet8", num_classes=10, input_shape=(1, 28, 28), max_batch=4)
    assert T._saved_threshold({}, net) == 0.5
    assert T._saved_threshold({"threshold": None}, net) == 0.5
    assert T._saved_threshold({"threshold": 0.8}, net) == 0.8
    assert T._saved_threshold({"loss_func": "v3", "threshold": 0.8}, net) == 0.8
    assert T._saved_threshold({"loss_func": "v3"}, net) == 0.5   # 1/num_ee, num_ee = 2


@needs_fashion
def test_evaluate_uses_the_stored_threshold_unless_given(tmp_path):
    """A run trained with --threshold T is evaluated at T by default; an explicit
    threshold overrides it.  T = 1 sends every sample to the final exit (sigmoid > 1
    never holds), T = 0 every sample to the first."""
    model = _saved_untrained(tmp_path, threshold=1.0)
    stored = T.evaluate(model, test_size=64)
    assert stored["threshold"] == 1.0 and stored["exit_counts"] == [0, 0, 64]
    given = T.evaluate(model, test_size=64, threshold=0.0)
    assert given["threshold"] == 0.0 and given["exit_counts"] == [64, 0, 0]


def test_sweep_uses_only_public_training_helpers():
    """eenet.sweep reaches training's data and evaluation through documented public
    functions, not private ones."""
    import inspect
    import re
    from eenet import sweep
    assert not re.findall(r"training\._\w+", inspect.getsource(sweep))
    for fn in (T.load_splits, T.evaluate_net):
        assert fn.__doc__ and len(fn.__doc__) > 100
