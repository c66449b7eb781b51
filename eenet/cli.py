"""The command line: ``python -m eenet <command>`` (also the ``eenet`` script).

Commands are registered in :data:`SUBCOMMANDS` as ``name -> "module:function"``.
The function receives argparse's ``subparsers`` object, adds its parser with
``subparsers.add_parser(name, ...)`` and sets ``func=<callable(args) -> int>``
with ``set_defaults``.  A command whose module is not present is left out, so a
module can be registered before it lands.  Flag groups shared by several
commands (model, optimisation, data) are the ``add_*_args`` functions below;
:func:`config_from_args` turns parsed flags into a
:class:`eenet.training.TrainConfig`.

Defaults mirror the authors' ``main.py`` (eenets.pytorch).  Invalid flags and
combinations are refused by argparse (exit status 2, a message naming the
flag) before any data is read or any network is built.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Optional, Sequence

SUBCOMMANDS = {
    "train": "eenet.cli:add_train_command",
    "evaluate": "eenet.cli:add_evaluate_command",
    "sweep": "eenet.sweep:add_cli",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model --dataset --num-ee --distribution --exit-type --filters."""
    from .training import DISTRIBUTIONS, EXIT_TYPES, MODELS
    g = p.add_argument_group("model")
    g.add_argument("--model", default="eenet20", choices=MODELS, metavar="NAME",
                   help="model: eenet8, eenet18/34/50/101/152, eenet20/32/44/56/110 or a plain "
                        "counterpart resnet18...resnet110 (default: eenet20)")
    g.add_argument("--dataset", default="cifar10", metavar="NAME",
                   help="dataset: mnist, fashion-mnist, cifar10, svhn, tiny-imagenet, "
                        "cifar10-jpeg, or imagefolder (with --data-dir DIR holding "
                        "<split>/<class>/*.jpg|png) (default: cifar10)")
    g.add_argument("--num-ee", type=_nonneg_int, default=None, metavar="N",
                   help="number of early-exit blocks (default: 2 for EENets, 0 for resnet*; "
                        "eenet8 always has 2)")
    g.add_argument("--distribution", default="fine", choices=DISTRIBUTIONS,
                   help="placement of the exit blocks by cost (default: fine)")
    g.add_argument("--exit-type", default="pool", choices=EXIT_TYPES,
                   help="exit block: plain (flatten), pool (global average pool) or bnpool "
                        "(batch norm + pool) (default: pool)")
    g.add_argument("--filters", type=_positive_int, default=2, metavar="N",
                   help="starting filters of eenet8 (default: 2)")


def add_optim_args(p: argparse.ArgumentParser) -> None:
    """Loss, optimiser and schedule flags."""
    from .training import LOSSES, OPTIMIZERS, TWO_STAGE_EPOCHS
    g = p.add_argument_group("optimisation")
    g.add_argument("--loss-func", default=None, choices=LOSSES,
                   help="loss version (default: v2; v0 = sum of exit cross-entropies, "
                        "v4 = exit tags)")
    g.add_argument("--two-stage", action="store_true",
                   help="train with v0 for the first --two-stage-epochs epochs, then v1")
    g.add_argument("--two-stage-epochs", type=_positive_int, default=TWO_STAGE_EPOCHS,
                   metavar="N", help="length of the first (v0) stage of --two-stage "
                                     f"(default: {TWO_STAGE_EPOCHS}, as the authors)")
    g.add_argument("--lambda-coef", type=float, default=1.0, metavar="X",
                   help="lambda: weight of the cost term against accuracy (default: 1.0)")
    g.add_argument("--optimizer", default="Adam", choices=OPTIMIZERS,
                   help="optimizer (default: Adam)")
    g.add_argument("--lr", type=float, default=0.001, metavar="X",
                   help="learning rate (default: 0.001)")
    g.add_argument("--adaptive-lr", action="store_true",
                   help="SGD only: ResNet-paper step schedule, 0.1 divided by 10 every 100 "
                        "epochs (tiny-imagenet: 0.05 * 0.1 ** ((epoch - 1) // 30 + 1)); "
                        "Adam keeps --lr")
    g.add_argument("--momentum", type=float, default=0.9, metavar="X",
                   help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, default=0.0001, metavar="X",
                   help="weight decay of SGD and Adam (default: 0.0001)")
    g.add_argument("--epochs", type=_positive_int, default=150, metavar="N",
                   help="number of epochs to train (default: 150)")
    g.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                   help="training batch size (default: 32)")
    g.add_argument("--seed", type=int, default=1, metavar="N",
                   help="random seed of weights, data order, augmentation and splits "
                        "(default: 1)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--data-dir, split fraction and size caps."""
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="dataset root (default: $EENET_DATA, the per-user cache, then "
                        "system locations such as /usr/share/datasets/fashion-mnist)")
    g.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="part of the training set held out for validation; 0 validates on "
                        "the test set as the authors do (default: 0.1)")
    g.add_argument("--train-size", type=_positive_int, default=None, metavar="N",
                   help="use at most N training samples (seeded random subset)")
    g.add_argument("--val-size", type=_positive_int, default=None, metavar="N",
                   help="use at most N validation samples (seeded random subset)")
    g.add_argument("--test-size", type=_positive_int, default=None, metavar="N",
                   help="use at most N test samples (seeded random subset)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Evaluation, saving and machine flags of ``train``."""
    g = p.add_argument_group("run")
    g.add_argument("--test-batch", type=_positive_int, default=1, metavar="N",
                   help="batch size of validation and test inference (default: 1, the "
                        "per-sample latency the authors measure)")
    g.add_argument("--threshold", type=_probability, default=None, metavar="T",
                   help="confidence threshold of early exit (default: 0.5; 1/num-ee for v3)")
    g.add_argument("--log-interval", type=_positive_int, default=1, metavar="N",
                   help="validate (and log) every N epochs; the last epoch always "
                        "(default: 1)")
    g.add_argument("--no-save-model", action="store_true",
                   help="do not write checkpoints or the model file")
    g.add_argument("--load-model", default=None, metavar="PATH",
                   help="start from this saved model (with --testing: only evaluate it)")
    g.add_argument("--testing", action="store_true",
                   help="evaluate the --load-model model on the test set instead of training")
    g.add_argument("--results-dir", default=None, metavar="DIR",
                   help="results folder (default: results/<dataset>/<model>[/ee<N>_<dist>])")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --results-dir from its last "
                        "checkpoint (same final weights as an uninterrupted run)")
    g.add_argument("--overwrite", action="store_true",
                   help="start again in a results folder that holds an earlier run")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads of the C core (default: the cores available)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars or per-epoch lines (the summary table is still "
                        "printed)")


def config_from_args(args: argparse.Namespace):
    """A :class:`eenet.training.TrainConfig` from parsed ``train`` flags."""
    from .training import TrainConfig
    return TrainConfig(
        model=args.model, dataset=args.dataset, num_ee=args.num_ee,
        distribution=args.distribution, exit_type=args.exit_type, loss_func=args.loss_func,
        two_stage=args.two_stage, two_stage_epochs=args.two_stage_epochs,
        lambda_coef=args.lambda_coef, optimizer=args.optimizer,
        lr=args.lr, adaptive_lr=args.adaptive_lr, momentum=args.momentum,
        weight_decay=args.weight_decay, epochs=args.epochs, batch_size=args.batch_size,
        test_batch=args.test_batch, filters=args.filters, seed=args.seed,
        log_interval=args.log_interval, save_model=not args.no_save_model,
        load_model=args.load_model, data_dir=args.data_dir, results_dir=args.results_dir,
        threads=args.threads, threshold=args.threshold, resume=args.resume,
        overwrite=args.overwrite, val_fraction=args.val_fraction, train_size=args.train_size,
        val_size=args.val_size, test_size=args.test_size, progress=not args.no_progress)


# ---- train --------------------------------------------------------------------------------

def add_train_command(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train an EENet and evaluate it on the test set",
        description="Train an EENet (or plain ResNet), validate every --log-interval epochs, "
                    "keep the best model by validation loss, evaluate it on the test set with "
                    "early-exit inference and write the results folder (config.json, "
                    "history.csv, checkpoint.eenet, model.eenet, metrics.json, plots).")
    add_model_args(p)
    add_optim_args(p)
    add_data_args(p)
    add_run_args(p)
    p.set_defaults(func=run_train, _parser=p)


def run_train(args: argparse.Namespace) -> int:
    from .training import ConfigError, format_summary, run_training, validate_config
    parser = args._parser
    if args.testing and not args.load_model:
        parser.error("--testing evaluates a saved model; give it with --load-model PATH")
    cfg = config_from_args(args)
    try:
        validate_config(cfg, check_model=not args.testing)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.testing:
        from .training import evaluate
        res = evaluate(args.load_model, cfg.dataset, threshold=cfg.threshold,
                       data_dir=cfg.data_dir, batch_size=cfg.test_batch,
                       test_size=cfg.test_size, lambda_coef=cfg.lambda_coef,
                       threads=cfg.threads, seed=cfg.seed)
        print(format_summary(res, f"{args.load_model} on {cfg.dataset} (test set)"))
        return 0
    try:
        res = run_training(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    if not cfg.progress:  # the summary table is printed by run_training otherwise
        title = f"{cfg.model} on {cfg.dataset} (test set; best epoch {res['best_epoch']})"
        print(format_summary(res, title))
    return 0


# ---- evaluate -----------------------------------------------------------------------------

def add_evaluate_command(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a saved model with early-exit inference",
        description="Evaluate a model saved by 'eenet train' (model.eenet or checkpoint.eenet) "
                    "on a dataset with batched early-exit inference and print accuracy, "
                    "average cost, exits per block with their accuracy, FLOPs and speed.")
    p.add_argument("model_path", metavar="MODEL", help="the saved model file")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="dataset (default: the one in config.json beside MODEL)")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="which split to evaluate (default: test)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="dataset root (default: $EENET_DATA, the per-user cache, then "
                        "system locations such as /usr/share/datasets/fashion-mnist)")
    p.add_argument("--threshold", type=_probability, default=None, metavar="T",
                   help="confidence threshold of early exit (default: the --threshold the "
                        "run was trained with, from config.json beside MODEL, else 0.5; "
                        "1/num-ee for v3)")
    p.add_argument("--target-cost", type=_probability, default=None, metavar="C",
                   help="use the largest threshold whose average cost on this same data "
                        "is at most C (eenet.calibrate; replaces --threshold)")
    p.add_argument("--batch-size", "--test-batch", dest="batch_size", type=_positive_int,
                   default=256, metavar="N", help="inference batch size (default: 256)")
    p.add_argument("--test-size", type=_positive_int, default=None, metavar="N",
                   help="use at most N samples (seeded random subset)")
    p.add_argument("--lambda-coef", type=float, default=1.0, metavar="X",
                   help="lambda of the reported loss -log p[y] + lambda*cost (default: 1.0)")
    p.add_argument("--seed", type=int, default=1, metavar="N",
                   help="seed of the --test-size subset (default: 1)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads of the C core (default: the cores available)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="also write the figures as JSON to PATH (written atomically)")
    p.set_defaults(func=run_evaluate, _parser=p)


def run_evaluate(args: argparse.Namespace) -> int:
    import os
    from ._io import atomic_write_text
    from .training import ConfigError, _jsonable, evaluate, format_summary
    parser = args._parser
    target = args.target_cost
    if target is not None and args.threshold is not None:
        parser.error("give either --threshold or --target-cost, not both")
    if not os.path.exists(args.model_path):
        parser.error(f"model file {args.model_path} does not exist")
    try:
        res = evaluate(args.model_path, args.dataset, threshold=args.threshold,
                       data_dir=args.data_dir, split=args.split, batch_size=args.batch_size,
                       test_size=args.test_size, target_cost=target,
                       lambda_coef=args.lambda_coef, threads=args.threads, seed=args.seed)
    except ConfigError as exc:
        parser.error(str(exc))
    print(format_summary(res, f"{args.model_path} on {res['dataset']} ({args.split} set)"))
    if args.json:
        out = {k: v for k, v in res.items() if k != "outputs"}
        atomic_write_text(args.json, json.dumps(_jsonable(out), indent=2) + "\n")
    return 0


# ---- entry point --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eenet", description="Early-exit convolutional neural networks (EENets): train, "
                                  "evaluate and sweep from the command line.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"eenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, target in SUBCOMMANDS.items():
        module_name, func_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # registered but not present (yet)
            raise
        adder = getattr(module, func_name, None)
        if adder is not None:
            adder(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except (FloatingPointError, FileNotFoundError) as exc:
        print(f"eenet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. a corrupt dataset or checkpoint file (names the file)
        print(f"eenet {args.command}: error: {exc}", file=sys.stderr)
        return 1
