"""Sweeps: spec parsing and validation, trial hashing, the Dask-run results store under
faults (a failing trial, a worker killed mid-trial, an interrupted client), the threshold
curve and calibration."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FASHION_MNIST, REPO

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _sweep_trials import fake_train, trial_key  # noqa: E402

from eenet import sweep  # noqa: E402
from eenet.plots import pareto_front, threshold_curve  # noqa: E402
from eenet.calibrate import calibrate_outputs, threshold_for_cost  # noqa: E402

ISSUE_TOML = """
[fixed]
model = "eenet8"
dataset = "fashion-mnist"
epochs = 1
[grid]            # every combination
lambda_coef = [0.5, 2.0]
num_ee = [1, 2]
[random]          # optional: n draws from ranges or lists, seeded
n = 8
lr = { log_uniform = [1e-4, 1e-2] }
"""


def executions(marker_dir: pathlib.Path) -> dict[str, int]:
    """How many times each fake trial ran (one exec-<key>-<uuid> file per execution)."""
    counts: dict[str, int] = {}
    for p in marker_dir.glob("exec-*"):
        key = p.name[len("exec-"):].rsplit("-", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


# --------------------------------------------------------------------------- spec

def test_toml_json_and_dict_specs_expand_alike(tmp_path):
    toml = tmp_path / "spec.toml"
    toml.write_text(ISSUE_TOML)
    configs = sweep.expand(toml, fake_train)
    assert len(configs) == 2 * 2 * 8
    lrs = np.array([c["lr"] for c in configs])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
    assert len(np.unique(lrs)) == 8  # 8 draws, crossed with the 4 grid points
    assert {(c["lambda_coef"], c["num_ee"]) for c in configs} == \
        {(0.5, 1), (0.5, 2), (2.0, 1), (2.0, 2)}
    assert all(c["model"] == "eenet8" and c["epochs"] == 1 for c in configs)
    spec = sweep.load_spec(toml)
    js = tmp_path / "spec.json"
    js.write_text(json.dumps(spec.to_dict()))
    assert sweep.expand(js, fake_train) == configs
    assert sweep.expand(spec.to_dict(), fake_train) == configs
    other = sweep.expand({**spec.to_dict(), "random": {"n": 8, "seed": 1,
                                                       "lr": {"log_uniform": [1e-4, 1e-2]}}},
                         fake_train)
    assert other != configs  # a different random seed draws differently


def test_seeds_choice_and_integer_draws():
    spec = {"fixed": {"model": "eenet8"}, "seeds": [1, 2, 3],
            "random": {"n": 5, "seed": 0, "epochs": {"uniform": [1, 4]},
                       "lambda_coef": {"choice": [0.5, 1, 2]}}}
    configs = sweep.expand(spec, fake_train)
    assert sorted({c["seed"] for c in configs}) == [1, 2, 3]
    draws = {(c["epochs"], c["lambda_coef"]) for c in configs}
    assert 1 < len(draws) <= 5  # repeated discrete draws are one trial
    assert len(configs) == 3 * len(draws)
    assert all(isinstance(c["epochs"], int) and 1 <= c["epochs"] <= 4 for c in configs)
    assert all(c["lambda_coef"] in (0.5, 1.0, 2.0) for c in configs)
    assert all(isinstance(c["lambda_coef"], float) for c in configs)


@pytest.mark.parametrize("spec, words", [
    ({"fixed": {"lamda_coef": 1.0}}, ["fixed.lamda_coef", "unknown parameter",
                                      "lambda_coef"]),
    ({"grid": {"loss_func": ["v2", "v9"]}}, ["grid.loss_func", "'v9'"]),
    ({"fixed": {"epochs": 0}}, ["fixed.epochs", ">= 1"]),
    ({"fixed": {"epochs": 1.5}}, ["fixed.epochs", "integer"]),
    ({"fixed": {"lr": "fast"}}, ["fixed.lr", "number"]),
    ({"fixed": {"lr": -0.1}}, ["fixed.lr", "> 0"]),
    ({"fixed": {"lr": [0.1, 0.2]}}, ["fixed.lr", "[grid]"]),
    ({"grid": {"num_ee": []}}, ["grid.num_ee", "non-empty"]),
    ({"grid": {"num_ee": [1, 1]}}, ["grid.num_ee", "duplicate"]),
    ({"random": {"n": 2, "lr": {"log_uniform": [0.0, 1e-2]}}}, ["random.lr", "> 0"]),
    ({"random": {"n": 2, "lr": {"normal": [0, 1]}}}, ["random.lr", "'normal'"]),
    ({"random": {"n": 2, "lr": {"uniform": [0.1, 0.01]}}}, ["random.lr", "a < b"]),
    ({"random": {"n": 2, "model": {"uniform": [0, 1]}}}, ["random.model", "choice"]),
    ({"random": {"lr": {"uniform": [0.1, 0.2]}}}, ["random", "n"]),
    ({"fixed": {"results_dir": "x"}}, ["fixed.results_dir", "set by the sweep"]),
    ({"fixed": {"lr": 0.1}, "grid": {"lr": [0.1, 0.2]}}, ["lr", "[fixed]", "[grid]"]),
    ({"grid": {"seed": [1, 2]}, "seeds": [1, 2]}, ["seeds", "seed"]),
    ({"seeds": [1, "two"]}, ["seeds"]),
    ({"fixd": {"lr": 0.1}}, ["'fixd'"]),
    ({"fixed": {"save_model": 1}}, ["fixed.save_model", "true or false"]),
])
def test_spec_errors_name_the_parameter(spec, words):
    with pytest.raises(sweep.SpecError) as err:
        sweep.expand(spec, fake_train)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_bad_spec_file_is_refused_before_any_trial(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nlambda_coef = [0.5, 2.0\n")
    with pytest.raises(sweep.SpecError, match="could not be parsed"):
        sweep.run(bad, tmp_path / "res", trial_fn=fake_train)
    bad.write_text("[grid]\nlambda_coef = [0.5, -2.0]\n")
    with pytest.raises(sweep.SpecError, match="grid.lambda_coef"):
        sweep.run(bad, tmp_path / "res", trial_fn=fake_train)
    assert not (tmp_path / "res" / "trials").exists() or \
        not any((tmp_path / "res" / "trials").iterdir())


def test_validation_against_eenet_train():
    train = pytest.importorskip("eenet.training").train
    assert sweep.validate_spec(sweep.load_spec({"fixed": {"lambda_coef": 2, "epochs": 1}}),
                               train).fixed == {"lambda_coef": 2.0, "epochs": 1}
    with pytest.raises(sweep.SpecError, match="grid.exit_typ"):
        sweep.expand({"grid": {"exit_typ": ["pool"]}})
    with pytest.raises(sweep.SpecError, match="grid.distribution"):
        sweep.expand({"grid": {"distribution": ["fine", "golden"]}})


def test_trial_hash_is_stable_and_order_free():
    a = {"model": "eenet8", "lambda_coef": 0.5, "num_ee": 2, "lr": 1e-3}
    b = dict(reversed(list(a.items())))
    assert sweep.trial_hash(a) == sweep.trial_hash(b)
    assert sweep.trial_hash(a) != sweep.trial_hash({**a, "num_ee": 1})
    # same hash in a fresh interpreter (no dependence on PYTHONHASHSEED or dict order)
    code = ("import sys, json; sys.path.insert(0, '.'); from eenet.sweep import trial_hash; "
            f"print(trial_hash(json.loads({json.dumps(json.dumps(b))})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == sweep.trial_hash(a)
    # an int given for a float parameter is the same trial
    c1 = sweep.expand({"fixed": {"lambda_coef": 1}}, fake_train)
    c2 = sweep.expand({"fixed": {"lambda_coef": 1.0}}, fake_train)
    assert sweep.trial_hash(c1[0]) == sweep.trial_hash(c2[0])


# --------------------------------------------------------------------------- execution and faults

def test_grid_on_two_workers_survives_a_failing_trial_and_a_killed_worker(tmp_path):
    """2 x 2 grid of stand-in trials on a two-worker LocalCluster: one trial raises every
    time (recorded as failed with its error once the retries are spent), one kills its own
    worker process on its first attempt (retried, finishes). A second run starts nothing;
    a third, allowed to rerun failures, reruns only the failed trial."""
    markers = tmp_path / "markers"
    res = tmp_path / "res"
    spec = {"fixed": {"model": "eenet8", "marker_dir": str(markers),
                      "fail_key": trial_key(1, 0.5), "die_key": trial_key(2, 2.0)},
            "grid": {"lambda_coef": [0.5, 2.0], "num_ee": [1, 2]}}
    df = sweep.run(spec, res, workers=2, retries=1, trial_fn=fake_train, progress=False)
    assert len(df) == 4
    df["key"] = [trial_key(n, lam) for n, lam in zip(df["num_ee"], df["lambda_coef"])]
    by_key = df.set_index("key")
    assert by_key.loc[trial_key(1, 0.5), "status"] == "failed"
    assert "failed on purpose" in by_key.loc[trial_key(1, 0.5), "error"]
    assert "RuntimeError" in by_key.loc[trial_key(1, 0.5), "error"]
    assert (df[df["key"] != trial_key(1, 0.5)]["status"] == "done").all(), df
    assert by_key.loc[trial_key(2, 2.0), "attempts"] == 2  # the worker death was retried
    runs = executions(markers)
    assert runs[trial_key(1, 0.5)] == 2 and runs[trial_key(2, 2.0)] == 2
    # (a finished trial whose result was still on the dying worker is recomputed by Dask)
    assert 1 <= runs[trial_key(1, 2.0)] <= 2 and 1 <= runs[trial_key(2, 0.5)] <= 2
    assert (markers / f"died-{trial_key(2, 2.0)}").exists()
    # the retry of the killed trial resumed from its checkpoint; first attempts did not
    flags = sorted(p.read_text().split()[1] for p in markers.glob(f"exec-{trial_key(2, 2.0)}-*"))
    assert flags == ["resume=False", "resume=True"]
    assert all("resume=False" in p.read_text()
               for p in markers.glob(f"exec-{trial_key(1, 2.0)}-*"))
    failed_dir = res / "trials" / by_key.loc[trial_key(1, 0.5), "trial"]
    assert "failed on purpose" in (failed_dir / "error.txt").read_text()
    for _, r in df[df["status"] == "done"].iterrows():
        d = res / "trials" / r["trial"]
        assert {"config.json", "result.json", "outputs.npz", "history.csv",
                "status.json"} <= {p.name for p in d.iterdir()}
        cfg = json.loads((d / "config.json").read_text())
        assert sweep.trial_hash(cfg) == r["trial"]
        assert len(r["exit_counts"]) == r["num_ee"] + 1 == sum(1 for _ in r["exit_counts"])
        assert sum(r["exit_counts"]) == 50
        out = sweep.load_outputs(res, r["trial"])
        assert out["conf"].shape == (r["num_ee"] + 1, 50)
    assert (res / "pareto.png").stat().st_size > 0
    table = sweep.load(res)
    assert list(table["trial"]) == list(df["trial"])
    assert list(table["status"]) == list(df["status"])
    # the same sweep again: nothing is run
    df2 = sweep.run(spec, res, workers=2, retries=1, trial_fn=fake_train, progress=False,
                    rerun_failed=False)
    assert executions(markers) == runs
    assert list(df2["status"]) == list(df["status"][:4])
    # rerunning failures runs only the failed trial (twice: one retry)
    sweep.run(spec, res, workers=1, retries=1, trial_fn=fake_train, progress=False)
    assert executions(markers) == {**runs, trial_key(1, 0.5): 4}


INTERRUPTED_CLIENT = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from eenet import sweep
from _sweep_trials import fake_train
if __name__ == "__main__":
    spec = {{"fixed": {{"model": "eenet8", "marker_dir": {markers!r}, "sleep": 1.5}},
            "grid": {{"lambda_coef": [0.5, 1.0, 2.0, 4.0, 8.0]}}}}
    sweep.run(spec, {res!r}, workers=1, trial_fn=fake_train, progress=False)
"""


def test_interrupted_client_restarts_without_rerunning_finished_trials(tmp_path):
    markers, res = tmp_path / "markers", tmp_path / "res"
    script = tmp_path / "client.py"
    script.write_text(INTERRUPTED_CLIENT.format(repo=str(REPO), tests=str(REPO / "tests"),
                                                markers=str(markers), res=str(res)))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            st = [json.loads(p.read_text()).get("status")
                  for p in res.glob("trials/*/status.json")] if res.exists() else []
            if st.count("done") >= 2:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("the sweep did not finish two trials in time")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = {}
    for p in res.glob("trials/*/status.json"):
        before[p.parent.name] = json.loads(p.read_text())["status"]
    done_before = {h for h, s in before.items() if s == "done"}
    assert 2 <= len(done_before) < 5, before
    runs_before = executions(markers)
    spec = {"fixed": {"model": "eenet8", "marker_dir": str(markers), "sleep": 1.5},
            "grid": {"lambda_coef": [0.5, 1.0, 2.0, 4.0, 8.0]}}
    df = sweep.run(spec, res, workers=2, trial_fn=fake_train, progress=False)
    assert (df["status"] == "done").all()
    runs_after = executions(markers)
    for _, r in df.iterrows():
        key = trial_key(2, r["lambda_coef"])
        if r["trial"] in done_before:
            assert runs_after[key] == runs_before[key] == 1  # never run twice
        else:
            assert runs_after[key] == runs_before.get(key, 0) + 1
            if runs_before.get(key):  # interrupted mid-trial: continued from its checkpoint
                assert any("resume=True" in p.read_text()
                           for p in markers.glob(f"exec-{key}-*"))


# --------------------------------------------------------------------------- analysis

def _synthetic_outputs(rng, E1=3, N=400, K=5):
    probs = rng.random((E1, N, K)).astype(np.float32)
    probs /= probs.sum(-1, keepdims=True)
    conf = rng.random((E1, N)).astype(np.float32)
    labels = rng.integers(0, K, N)
    costs = np.array([0.1, 0.4, 1.0])[:E1] if E1 == 3 else np.linspace(1 / E1, 1, E1)
    return probs, conf, labels, costs


def test_threshold_curve_matches_a_per_sample_loop(rng):
    probs, conf, labels, costs = _synthetic_outputs(rng)
    ts = np.array([0.0, 0.1, 0.25, 0.5, 0.5001, 0.9, 1.0])
    curve = threshold_curve(probs, conf, labels, costs, ts)
    E = conf.shape[0] - 1
    for t, (_, row) in zip(ts, curve.iterrows()):
        exits = []
        for n in range(conf.shape[1]):
            e = next((i for i in range(E) if conf[i, n] > t), E)
            exits.append(e)
        exits = np.array(exits)
        acc = np.mean([probs[e, n].argmax() == labels[n] for n, e in enumerate(exits)])
        assert row["accuracy"] == pytest.approx(acc, abs=0)
        assert row["avg_cost"] == pytest.approx(costs[exits].mean(), rel=1e-12)
        assert [row[f"exit_{i}"] for i in range(E + 1)] == \
            np.bincount(exits, minlength=E + 1).tolist()
    assert curve["avg_cost"].is_monotonic_increasing


def test_pareto_front_keeps_only_undominated_trials():
    import pandas as pd
    df = pd.DataFrame({"avg_cost": [0.2, 0.3, 0.25, 0.5, 0.6, np.nan],
                       "accuracy": [0.80, 0.85, 0.79, 0.90, 0.88, 0.99]})
    front = pareto_front(df)
    assert list(front.index) == [0, 1, 3]


def test_threshold_for_cost_meets_the_budget(rng):
    probs, conf, labels, costs = _synthetic_outputs(rng)
    curve = threshold_curve(probs, conf, labels, costs, np.linspace(0, 1, 201))
    for budget in (0.1, 0.2, 0.35, 0.6, 1.0):
        cal = calibrate_outputs(probs, conf, costs, budget, labels)
        assert threshold_for_cost({"probs": probs, "conf": conf, "labels": labels}, costs,
                                  budget) == cal.threshold
        assert cal.cost <= budget + 1e-12
        re = threshold_curve(probs, conf, labels, costs, [cal.threshold]).iloc[0]
        assert re["avg_cost"] == pytest.approx(cal.cost) and re["accuracy"] == cal.accuracy
        # no threshold on the grid within the budget is more expensive (it is the largest)
        ok = curve[curve["avg_cost"] <= budget + 1e-12]
        assert cal.cost >= ok["avg_cost"].max() - 1e-12
    with pytest.raises(ValueError, match="first exit's cost"):
        calibrate_outputs(probs, conf, costs, 0.05, labels)


# --------------------------------------------------------------------------- with eenet.train

def _fashion_ready() -> str | None:
    if not FASHION_MNIST.is_dir():
        return "Fashion-MNIST is not installed"
    return None


needs_fashion = pytest.mark.skipif(_fashion_ready() is not None,
                                   reason=str(_fashion_ready()))

TINY = {"model": "eenet8", "dataset": "fashion-mnist", "epochs": 1, "train_size": 300,
        "val_size": 100, "test_size": 200, "batch_size": 32, "test_batch": 256}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One EENet-8 trained for an epoch on 600 Fashion-MNIST images, and two disjoint
    held-out sets of normalised test images: (net, (xa, ya), (xb, yb))."""
    import eenet
    from eenet import data, datasets
    rd = tmp_path_factory.mktemp("trained")
    res = eenet.train(**{**TINY, "train_size": 600, "lambda_coef": 1.0, "filters": 4},
                      results_dir=str(rd), progress=False)
    net = eenet.load(os.path.join(res["results_dir"], "model.eenet"))
    test = datasets.load("fashion-mnist", split="test", progress=False)
    x = data.preprocess(test.images[:1200], test)
    y = np.asarray(test.labels[:1200], np.int64)
    return net, (x[:600], y[:600]), (x[600:], y[600:])


@needs_fashion
@pytest.mark.slow
def test_threshold_curve_equals_explicit_reevaluation(trained):
    net, (x, y), _ = trained
    parts = [net.predict_all(x[s:s + net.max_batch]) for s in range(0, len(x), net.max_batch)]
    probs = np.concatenate([p for p, _ in parts], axis=1)
    conf = np.concatenate([c for _, c in parts], axis=1)
    ts = np.array([0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    ts = np.concatenate([ts, np.quantile(conf[:-1], [0.25, 0.5, 0.75])])  # where exits split
    curve = threshold_curve(probs, conf, y, net.exit_costs, ts)
    for t, (_, row) in zip(ts, curve.iterrows()):
        exits, labels = [], []
        for s in range(0, len(x), net.max_batch):
            pred = net.predict(x[s:s + net.max_batch], threshold=float(t))
            exits.append(pred.exit)
            labels.append(pred.labels)
        exits, labels = np.concatenate(exits), np.concatenate(labels)
        assert row["avg_cost"] == pytest.approx(net.exit_costs[exits].mean(), rel=1e-12)
        assert row["accuracy"] == pytest.approx((labels == y).mean(), abs=1.5 / len(y))
        assert [row[f"exit_{i}"] for i in range(net.num_exits)] == \
            np.bincount(exits, minlength=net.num_exits).tolist()
    # the curve is not degenerate: the thresholds move samples between exits
    assert curve["avg_cost"].nunique() > 3


@needs_fashion
@pytest.mark.slow
def test_calibration_meets_its_budget_on_held_out_data(trained):
    import eenet
    net, (xa, ya), (xb, yb) = trained
    costs = np.asarray(net.exit_costs)
    for budget in (costs[0], 0.2, 0.4, 0.7):
        cal = eenet.calibrate(net, xa, budget, labels=ya)
        assert cal.cost <= budget + 1e-12
        exits = np.concatenate([net.predict(xa[s:s + net.max_batch], cal.threshold).exit
                                for s in range(0, len(xa), net.max_batch)])
        assert costs[exits].mean() == pytest.approx(cal.cost, rel=1e-12)  # as net.predict
        # and on other held-out data the budget holds up to sampling noise
        exits_b = np.concatenate([net.predict(xb[s:s + net.max_batch], cal.threshold).exit
                                  for s in range(0, len(xb), net.max_batch)])
        assert costs[exits_b].mean() <= budget + 0.1
    # the (images, labels) pair form gives the same answer; the accuracy is net.predict's
    cal = eenet.calibrate(net, (xa, ya), 0.3)
    pred = np.concatenate([net.predict(xa[s:s + net.max_batch], cal.threshold).labels
                           for s in range(0, len(xa), net.max_batch)])
    assert cal.accuracy == pytest.approx((pred == ya).mean(), abs=1.5 / len(ya))
    with pytest.raises(ValueError, match="first exit's cost"):
        eenet.calibrate(net, xa, costs[0] * 0.9)


@needs_fashion
@pytest.mark.slow
def test_real_sweep_on_two_worker_local_cluster(tmp_path):
    """A 2 x 2 grid of real eenet.train trials on a two-worker LocalCluster; re-running it
    starts no trial."""
    res = tmp_path / "res"
    spec = {"fixed": TINY, "grid": {"lambda_coef": [0.5, 2.0], "filters": [2, 4]}}
    df = sweep.run(spec, res, workers=2, progress=False)
    assert len(df) == 4 and (df["status"] == "done").all(), df[["status", "error"]]
    for _, r in df.iterrows():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.08 - 1e-9 <= r["avg_cost"] <= 1.0 + 1e-9
        assert sum(r["exit_counts"]) == TINY["test_size"] and len(r["exit_counts"]) == 3
        d = res / "trials" / r["trial"]
        result = json.loads((d / "result.json").read_text())
        assert result["accuracy"] == r["accuracy"] and result["_threads"] == 1
        assert (d / "run" / "checkpoint.eenet").is_file()
        out = sweep.load_outputs(res, r["trial"])
        assert out["probs"].shape == (3, TINY["val_size"], 10)
        assert out["conf"].shape == (3, TINY["val_size"])
        np.testing.assert_allclose(out["costs"], [0.08, 0.26, 1.0])
    stamps = {p: p.stat().st_mtime_ns for p in res.glob("trials/*/result.json")}
    df2 = sweep.run(spec, res, workers=2, progress=False)
    assert {p: p.stat().st_mtime_ns for p in res.glob("trials/*/result.json")} == stamps
    assert list(df2["attempts"]) == [1, 1, 1, 1]
    assert (res / "pareto.png").stat().st_size > 0


CLI_SPEC = """
[fixed]
model = "eenet8"
dataset = "fashion-mnist"
epochs = 1
train_size = 300
val_size = 100
test_size = 200
test_batch = 256
[grid]
lambda_coef = [{lambdas}]
filters = [2, 4]
"""


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    return subprocess.run([sys.executable, "-m", "eenet", "sweep", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_refuses_a_bad_spec(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(CLI_SPEC.format(lambdas="0.5, 2.0").replace("epochs = 1", "epoch = 1"))
    r = _cli(str(spec), "--results-dir", str(tmp_path / "res"), "--workers", "2")
    assert r.returncode == 2, r.stderr
    assert "fixed.epoch" in r.stderr and "epochs" in r.stderr
    assert not (tmp_path / "res" / "sweep.csv").exists()
    r = _cli(str(spec), "--results-dir", str(tmp_path / "res"), "--workers", "2",
             "--scheduler", "tcp://127.0.0.1:1")
    assert r.returncode == 2 and "not allowed with" in r.stderr


@needs_fashion
@pytest.mark.slow
def test_cli_sweep_with_workers_then_with_a_scheduler(tmp_path):
    """`python -m eenet sweep` on a 2 x 2 grid with --workers 2; then the grid grown by one
    lambda on a running Dask scheduler (--scheduler): only the two new trials run."""
    from distributed import LocalCluster
    spec, res = tmp_path / "spec.toml", tmp_path / "res"
    spec.write_text(CLI_SPEC.format(lambdas="0.5, 2.0"))
    r = _cli(str(spec), "--results-dir", str(res), "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 trials: 4 done, 0 failed" in r.stdout
    df = sweep.load(res)
    assert len(df) == 4 and (df["status"] == "done").all()
    assert (res / "pareto.png").stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in res.glob("trials/*/result.json")}
    spec.write_text(CLI_SPEC.format(lambdas="0.5, 2.0, 1.0"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        r = _cli(str(spec), "--results-dir", str(res), "--scheduler",
                 cluster.scheduler_address, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    df = sweep.load(res)
    assert len(df) == 6 and (df["status"] == "done").all()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished trials not rerun
    assert len(list(res.glob("trials/*/result.json"))) == 6
