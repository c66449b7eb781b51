"""The command line, run as users run it: ``python -m eenet ...`` in a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, requires_fashion

import eenet
from eenet import cli


def run_eenet(*args, timeout=300, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "eenet", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


ISSUE_FLAGS = ["--model", "--dataset", "--num-ee", "--distribution", "--exit-type",
               "--loss-func", "--two-stage", "--lambda-coef", "--optimizer", "--lr",
               "--adaptive-lr", "--momentum", "--weight-decay", "--epochs", "--batch-size",
               "--test-batch", "--filters", "--seed", "--log-interval", "--no-save-model",
               "--load-model", "--testing", "--data-dir", "--results-dir", "--threads",
               "--threshold", "--resume", "--train-size", "--val-size", "--test-size"]


def test_train_help_lists_every_flag_with_authors_defaults():
    proc = run_eenet("train", "--help")
    text = " ".join(proc.stdout.split())
    for flag in ISSUE_FLAGS:
        assert flag in text, flag
    for default in ("(default: 32)", "(default: 150)", "(default: 0.001)", "(default: Adam)",
                    "(default: fine)", "(default: pool)", "(default: 1.0)", "(default: 0.0001)",
                    "(default: 0.9)", "(default: 1)", "(default: v2", "(default: eenet20)"):
        assert default in text, default


def test_defaults_mirror_the_authors():
    """The parsed defaults (not only the help text) are the authors' main.py values."""
    args = cli.build_parser().parse_args(["train"])
    cfg = cli.config_from_args(args)
    assert (cfg.batch_size, cfg.test_batch, cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay,
            cfg.seed, cfg.log_interval, cfg.filters, cfg.lambda_coef) == \
        (32, 1, 150, 0.001, 0.9, 0.0001, 1, 1, 2, 1.0)
    assert (cfg.optimizer, cfg.distribution, cfg.exit_type, cfg.model, cfg.dataset) == \
        ("Adam", "fine", "pool", "eenet20", "cifar10")
    assert cfg.resolved_num_ee == 2 and cfg.final_loss == "v2" and cfg.save_model


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuchnet"], "invalid choice"),
    (["--model", "eenet8", "--dataset", "fashion-mnist", "--num-ee", "3"], "exactly 2"),
    (["--model", "resnet20", "--num-ee", "2"], "--num-ee must be 0"),
    (["--model", "resnet20", "--loss-func", "v4"], "cross-entropy"),
    (["--two-stage", "--loss-func", "v2"], "--two-stage"),
    (["--loss-func", "v9"], "invalid choice"),
    (["--optimizer", "RMSprop"], "invalid choice"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--threshold", "2"], "--threshold"),
    (["--lr", "-0.1"], "--lr"),
    (["--testing"], "--load-model"),
    (["--resume", "--no-save-model"], "--no-save-model"),
    (["--resume", "--load-model", "m.eenet"], "--resume"),
    (["--dataset", "nosuchdata"], "unknown dataset"),
    (["--model", "eenet20", "--num-ee", "40"], "eenet20"),
])
def test_invalid_combinations_are_refused_before_work(tmp_path, args, message):
    out = tmp_path / "res"
    proc = run_eenet("train", *args, "--results-dir", out, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "usage: eenet train" in proc.stderr
    assert not out.exists()


def test_evaluate_refuses_missing_model(tmp_path):
    proc = run_eenet("evaluate", tmp_path / "nothing.eenet", check=False, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_subcommand_registry_adds_registered_modules(monkeypatch, tmp_path):
    """How the sweep helper plugs in: a registered module's function adds a subparser;
    a registered module that is absent is skipped."""
    (tmp_path / "my_cmd.py").write_text(
        "def add_cli(sub):\n"
        "    p = sub.add_parser('hello', help='say hello')\n"
        "    p.add_argument('--name', default='x')\n"
        "    p.set_defaults(func=lambda args: 7 if args.name == 'y' else 0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "hello", "my_cmd:add_cli")
    monkeypatch.setitem(cli.SUBCOMMANDS, "absent", "no_such_module_xyz:add_cli")
    assert cli.main(["hello", "--name", "y"]) == 7
    assert "hello" in cli.build_parser().format_help()


@requires_fashion
def test_train_one_epoch_writes_results_and_reports(tmp_path):
    """The issue's bar: `python -m eenet train --model eenet8 --dataset fashion-mnist
    --epochs 1` (with size caps) finishes, writes the results folder, reports accuracy and
    average cost; `evaluate` reads the model back."""
    out = tmp_path / "run"
    proc = run_eenet("train", "--model", "eenet8", "--dataset", "fashion-mnist", "--epochs", 1,
                     "--train-size", 1000, "--val-size", 200, "--test-size", 300,
                     "--test-batch", 100, "--threads", 1, "--results-dir", out)
    for name in ("config.json", "history.csv", "checkpoint.eenet", "model.eenet", "metrics.json",
                 "loss.png", "acc_cost.png", "acc_vs_flops.png", "exits.png"):
        assert (out / name).exists(), name
    assert "accuracy" in proc.stdout and "average cost" in proc.stdout
    assert "images/s" in proc.stdout and "final" in proc.stdout
    assert "epoch 1/1" in proc.stderr          # the tqdm bar
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["exit_counts"]) == 300
    assert f"{100 * metrics['accuracy']:.2f}%" in proc.stdout
    ev = run_eenet("evaluate", out / "model.eenet", "--test-size", 300, "--json",
                   tmp_path / "ev.json")
    again = json.loads((tmp_path / "ev.json").read_text())
    assert again["exit_counts"] == metrics["exit_counts"]
    assert again["accuracy"] == metrics["accuracy"]
    assert "average cost" in ev.stdout
    # a cost budget picks the threshold (eenet.calibrate) and is met on the same data
    run_eenet("evaluate", out / "model.eenet", "--test-size", 300, "--target-cost", 0.5,
              "--json", tmp_path / "budget.json")
    budget = json.loads((tmp_path / "budget.json").read_text())
    assert budget["avg_cost"] <= 0.5 and budget["target_cost"] == 0.5
    # an existing run is not overwritten by accident
    proc = run_eenet("train", "--model", "eenet8", "--dataset", "fashion-mnist", "--epochs", 1,
                     "--results-dir", out, check=False, timeout=60)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def _checkpoint_epoch(path):
    return eenet.load_checkpoint(str(path))[2]["epoch"]


@requires_fashion
def test_kill_mid_epoch_then_resume_gives_same_weights(tmp_path):
    """SIGKILL a real run during epoch 2, resume it, and compare every weight with an
    uninterrupted run of the same settings."""
    common = ["train", "--model", "eenet8", "--dataset", "fashion-mnist", "--epochs", 3,
              "--loss-func", "v4", "--train-size", 3000, "--val-size", 200, "--test-size", 200,
              "--test-batch", 100, "--threads", 1, "--no-progress"]
    run_eenet(*common, "--results-dir", tmp_path / "full")

    cut = tmp_path / "cut"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "eenet", *map(str, common),
                             "--results-dir", str(cut)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        # checkpoint.eenet appears (atomically renamed into place) at the end of epoch 1;
        # epoch 2 is running from then until it is replaced
        while not (cut / "checkpoint.eenet").exists():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline
            time.sleep(0.01)
        time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _checkpoint_epoch(cut / "checkpoint.eenet") == 1   # killed inside epoch 2

    run_eenet(*common, "--results-dir", cut, "--resume")
    for name in ("checkpoint.eenet", "model.eenet"):
        a = eenet.load_checkpoint(str(tmp_path / "full" / name))[0].state_dict()
        b = eenet.load_checkpoint(str(cut / name))[0].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{name} {k}")
    m_full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    m_cut = json.loads((cut / "metrics.json").read_text())
    assert m_full["accuracy"] == m_cut["accuracy"] and m_full["exit_counts"] == m_cut["exit_counts"]
    import pandas as pd
    h_full = pd.read_csv(tmp_path / "full" / "history.csv")
    h_cut = pd.read_csv(cut / "history.csv")
    assert list(h_cut["epoch"]) == [1, 2, 3]
    np.testing.assert_array_equal(h_full["val_loss"], h_cut["val_loss"])


def test_evaluate_help_says_the_default_threshold_is_the_runs():
    p = cli.build_parser()
    sub = next(a for a in p._actions if a.dest == "command").choices["evaluate"]
    text = " ".join(sub.format_help().split())
    assert "the --threshold the run was trained with" in text
    assert "atomically" in text


@requires_fashion
def test_evaluate_json_is_written_atomically(tmp_path, monkeypatch):
    """--json PATH replaces PATH in one step: a failure while producing the JSON leaves
    the old file whole (a plain open(PATH, "w") would have truncated it)."""
    net = eenet.build("eenet8", num_classes=10, input_shape=(1, 28, 28), max_batch=64, seed=0)
    model = tmp_path / "model.eenet"
    eenet.save(net, str(model))
    (tmp_path / "config.json").write_text(json.dumps({"model": "eenet8",
                                                      "dataset": "fashion-mnist",
                                                      "threshold": 1.0}))
    out = tmp_path / "ev.json"
    assert cli.main(["evaluate", str(model), "--test-size", "32", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["threshold"] == 1.0 and res["exit_counts"] == [0, 0, 32]   # stored threshold
    out.write_text("old")
    from eenet import training
    monkeypatch.setattr(training, "_jsonable", lambda obj: {"a": 1, "b": object()})
    with pytest.raises(TypeError):
        cli.main(["evaluate", str(model), "--test-size", "32", "--json", str(out)])
    assert out.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["config.json", "ev.json", "model.eenet"]
