"""eenet.models: exit placement, FLOPs, parameter names and shapes against the authors' figures
(../shared/reference), and the consistency of every spec's op program."""
import json
import re
import warnings

import pytest

from conftest import REFERENCE
from eenet.models import (DISTRIBUTIONS, EXIT_TYPES, authors_aliases, build_spec, describe,
                          model_names)
from eenet.spec import INIT_KINDS, OP_KINDS

PLACEMENTS = [json.loads(line) for line in open(REFERENCE / "placements.jsonl")]


def _row_id(r):
    return (f"{r['model']}-{'x'.join(map(str, r['input_shape']))}-{r['distribution']}"
            f"-{r['num_ee']}")


def _row_args(r):
    return dict(model=r["model"], num_classes=r["num_classes"],
                input_shape=tuple(r["input_shape"]), num_ee=r["num_ee"],
                distribution=r["distribution"])


# ----------------------------------------------------------------------------------------
# placements.jsonl: every row
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("row", PLACEMENTS, ids=[_row_id(r) for r in PLACEMENTS])
def test_placement_row(row):
    args = _row_args(row)
    if not row["fits"]:
        with pytest.raises(ValueError, match=r"num_ee=\d+ early exits do not fit.*at most \d+ fit"):
            build_spec(**args, exit_type="pool")
        return
    spec = build_spec(**args, exit_type=row["exit_type"])
    early = spec.exits[:-1]
    assert len(early) == row["num_ee"] == spec.num_ee
    assert [e.after_block for e in early] == row["exit_after_block"]
    assert spec.total_blocks == row["total_blocks"]
    assert [round(e.cost, 6) for e in early] == pytest.approx(row["cost"], abs=1e-12)
    assert [e.flops for e in spec.exits] == row["flops"]
    assert [e.num_params for e in spec.exits] == row["params"]
    assert spec.total_flops == row["flops"][-1]
    assert spec.exits[-1].cost == 1.0 and spec.costs[-1] == 1.0
    assert spec.flop_costs == [e.cost for e in spec.exits]
    # the plain counterpart's totals are the last entries
    plain = build_spec(row["model"].replace("eenet", "resnet"), row["num_classes"],
                       tuple(row["input_shape"]))
    assert plain.total_flops == row["flops"][-1]
    assert plain.param_count() == row["params"][-1]


def test_too_many_exits_message_says_how_many_fit():
    for r in PLACEMENTS:
        if r["fits"]:
            continue
        with pytest.raises(ValueError) as info:
            build_spec(**_row_args(r))
        fit = int(re.search(r"at most (\d+) fit", str(info.value)).group(1))
        assert 0 <= fit < r["num_ee"]
        build_spec(**{**_row_args(r), "num_ee": fit})          # that many do fit
        for n in range(fit + 1, r["num_ee"]):                  # and no more
            with pytest.raises(ValueError):
                build_spec(**{**_row_args(r), "num_ee": n})


def test_exit_type_does_not_move_exits_and_costs_per_readme():
    """README: eenet20 3x32x32, 2 exits, fine: pool and bnpool costs 0.128205, 0.244535;
    plain 0.132553, 0.248883 with 185,371 and 190,043 parameters up to the exits."""
    specs = {t: build_spec("eenet20", 10, (3, 32, 32), 2, "fine", t) for t in EXIT_TYPES}
    after = {t: [e.after_block for e in s.exits] for t, s in specs.items()}
    assert after["plain"] == after["pool"] == after["bnpool"]
    assert [round(c, 6) for c in specs["pool"].costs[:-1]] == [0.128205, 0.244535]
    assert specs["bnpool"].costs == specs["pool"].costs
    assert [round(c, 6) for c in specs["plain"].costs[:-1]] == [0.132553, 0.248883]
    assert [e.num_params for e in specs["plain"].exits[:-1]] == [185371, 190043]
    assert ([e.num_params for e in specs["bnpool"].exits]
            == [e.num_params for e in specs["pool"].exits])


# ----------------------------------------------------------------------------------------
# authors' state_dict names and shapes
# ----------------------------------------------------------------------------------------

def _reference_sections():
    """[(header, {name: shape}, [names in order])] from authors_state_dict_keys.txt."""
    sections = []
    for line in open(REFERENCE / "authors_state_dict_keys.txt"):
        line = line.rstrip("\n")
        if line.startswith("## "):
            sections.append((line[3:], {}, []))
        elif line.strip():
            name, shape = line.split(" ", 1)
            sections[-1][1][name] = tuple(int(v) for v in re.findall(r"\d+", shape))
            sections[-1][2].append(name)
    return sections


def _args_from_header(header, previous):
    args = dict(previous) if header.split()[1].startswith("(same") else {}
    args["model"] = header.split()[0]
    m = re.search(r"input (\d+)x(\d+)x(\d+)", header)
    if m:
        args["input_shape"] = tuple(int(v) for v in m.groups())
    for key, pattern, conv in (("num_classes", r"(\d+) classes", int),
                               ("num_ee", r"num_ee=(\d+)", int),
                               ("exit_type", r"exit_type=(\w+)", str),
                               ("filters", r"filters=(\d+)", int)):
        m = re.search(pattern, header)
        if m:
            args[key] = conv(m.group(1))
    for d in DISTRIBUTIONS:
        if re.search(rf"\b{d}\b", header):
            args["distribution"] = d
    return args


def _reference_cases():
    cases, previous = [], {}
    for header, shapes, order in _reference_sections():
        args = _args_from_header(header, previous)
        previous = args
        cases.append(pytest.param(args, shapes, order, id=header.split(" (")[0] + "-"
                                  + args.get("exit_type", "plain-resnet")))
    return cases


REFERENCE_CASES = _reference_cases()


def _is_own_exit_bn(name):
    """eenet's names for the bnpool batch norm, absent from the authors' state_dict."""
    return re.match(r"^(exits\.\d+\.bn|exit\d+_bn)\.", name) is not None


def test_reference_sections_cover_the_listed_models():
    models = [c.values[0]["model"] for c in REFERENCE_CASES]
    assert {"eenet8", "eenet20", "eenet18", "resnet20"} <= set(models)
    assert any(c.values[0].get("exit_type") == "bnpool" for c in REFERENCE_CASES)


@pytest.mark.parametrize("args,shapes,order", REFERENCE_CASES)
def test_state_dict_names_and_shapes(args, shapes, order):
    spec = build_spec(**args)
    aliases = authors_aliases(spec)
    ours = [(p.name, tuple(p.shape)) for p in spec.params if not _is_own_exit_bn(p.name)]
    theirs = [(n, shapes[n]) for n in order if n not in aliases]
    assert ours == theirs                                # names, shapes and order
    # every alias is an authors' key with the same shape as the tensor it names
    for alias, name in aliases.items():
        assert alias in shapes and shapes[alias] == shapes[name]
    assert set(aliases) | {n for n, _ in ours} == set(shapes)
    bn = [p.name for p in spec.params if _is_own_exit_bn(p.name)]
    if spec.exit_type == "bnpool":
        assert len(bn) == 5 * spec.num_ee
    else:
        assert bn == []


def test_bnpool_exit_bn_names():
    spec = build_spec("eenet20", exit_type="bnpool")
    for i, e in enumerate(spec.exits[:-1]):
        assert [op.kind for op in e.ops] == ["batchnorm2d", "global_avgpool"]
        assert e.ops[0].params == tuple(f"exits.{i}.bn.{k}" for k in
                                        ("weight", "bias", "running_mean", "running_var",
                                         "num_batches_tracked"))
        assert all(op.flops == 0 for op in e.ops)        # invisible to the authors' counter


# ----------------------------------------------------------------------------------------
# a shape checker for the op program
# ----------------------------------------------------------------------------------------

def _out_hw(h, w, k, s, p):
    return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


def _check_op(spec, op, defined, used):
    params = {p.name: p for p in spec.params}
    assert op.kind in OP_KINDS
    for t in op.inputs:
        assert t in defined, f"{op.kind} reads tensor {t} before it is written"
    assert op.output not in defined, f"tensor {op.output} written twice"
    ins = [spec.tensors[t] for t in op.inputs]
    out = spec.tensors[op.output]
    ps = [params[n].shape for n in op.params]
    for n in op.params:
        assert n not in used, f"parameter {n} used twice"
        used.add(n)
    a = op.attrs
    if op.kind == "conv2d":
        (c, h, w), = ins
        k, s, p = a["kernel"], a["stride"], a["padding"]
        assert out == (a["out_channels"],) + _out_hw(h, w, k, s, p)
        assert ps[0] == (a["out_channels"], c, k, k)
        assert len(ps) == (2 if a["bias"] else 1)
        if a["bias"]:
            assert ps[1] == (a["out_channels"],)
    elif op.kind == "batchnorm2d":
        (x,), c = ins, ins[0][0]
        assert out == x and ps == [(c,)] * 4 + [()]
        assert op.params[2].endswith("running_mean") and op.params[4].endswith("num_batches_tracked")
    elif op.kind in ("relu",):
        assert out == ins[0] and not ps
    elif op.kind == "add":
        assert len(ins) == 2 and ins[0] == ins[1] == out and not ps
    elif op.kind == "maxpool2d":
        (c, h, w), = ins
        assert out == (c,) + _out_hw(h, w, a["kernel"], a["stride"], a["padding"])
    elif op.kind == "global_avgpool":
        assert len(ins[0]) == 3 and out == (ins[0][0],)
    elif op.kind == "linear":
        n_in = 1
        for d in ins[0]:
            n_in *= d
        assert out == (a["out_features"],)
        assert ps == [(a["out_features"], n_in), (a["out_features"],)]
    assert all(d >= 1 for d in out)
    defined.add(op.output)


def check_spec(spec):
    """Walk the program in execution order checking every tensor shape, parameter shape and
    the stage/exit wiring; every parameter is used exactly once."""
    assert spec.tensors[0] == tuple(spec.input_shape)
    assert len(spec.stages) == len(spec.exits) == spec.num_ee + 1
    defined, used = {0}, set()
    current = 0
    for stage, ex in zip(spec.stages, spec.exits):
        for op in stage:
            assert op.inputs[0] in defined
            _check_op(spec, op, defined, used)
        if stage:
            current = stage[-1].output
        assert ex.input == current, "an exit must read the feature map at its stage boundary"
        feats = ex.input
        for op in ex.ops:
            assert op.inputs == (feats,)
            _check_op(spec, op, defined, used)
            feats = op.output
        assert ex.features == feats
        assert ex.classifier.inputs == (feats,)
        _check_op(spec, ex.classifier, defined, used)
        assert ex.classifier.attrs["out_features"] == spec.num_classes
        if ex.confidence is not None:
            assert ex.confidence.inputs == (feats,)
            _check_op(spec, ex.confidence, defined, used)
            assert ex.confidence.attrs["out_features"] == 1
    assert used == {p.name for p in spec.params}
    assert len(defined) == len(spec.tensors)
    assert len({p.name for p in spec.params}) == len(spec.params)
    for p in spec.params:
        assert p.init in INIT_KINDS
    # costs end at 1 and increase along the exits (not always with ``plain`` exits, whose
    # heads on the flattened map can outweigh the blocks between two exits)
    assert spec.costs[-1] == 1.0 and spec.flop_costs[-1] == 1.0
    if spec.exit_type != "plain":
        assert all(a < b for a, b in zip(spec.flop_costs, spec.flop_costs[1:]))
    assert [e.after_block for e in spec.exits] == sorted(e.after_block for e in spec.exits)
    assert spec.exits[-1].after_block == spec.total_blocks


SHAPE_CASES = ([(m, t, (3, 32, 32), 10) for m in model_names() for t in EXIT_TYPES
                if not m.endswith(("18", "34", "50", "101", "152"))]
               + [(m, t, (3, 64, 64), 200) for m in model_names() for t in ("pool", "bnpool")
                  if m.endswith(("18", "34", "50", "101", "152"))]
               + [("eenet20", "plain", (1, 28, 28), 10), ("eenet32", "bnpool", (2, 17, 23), 3),
                  ("eenet18", "plain", (3, 64, 64), 200), ("eenet50", "plain", (3, 37, 45), 7),
                  ("eenet8", "pool", (1, 28, 28), 10), ("eenet8", "bnpool", (3, 9, 31), 4),
                  ("resnet50", "pool", (3, 1, 1), 5)])


@pytest.mark.parametrize("model,exit_type,shape,classes", SHAPE_CASES,
                         ids=[f"{c[0]}-{c[1]}-{'x'.join(map(str, c[2]))}" for c in SHAPE_CASES])
def test_shapes_consistent(model, exit_type, shape, classes):
    num_ee = 2
    spec = build_spec(model, classes, shape, num_ee, "fine", exit_type, filters=4)
    check_spec(spec)
    if model.startswith("resnet"):
        assert spec.num_ee == 0 and spec.exits[0].confidence is None
        assert spec.exits[0].classifier.params[0] == "fully_connected.weight"
    elif model == "eenet8":
        assert spec.exits[-1].confidence is None
    else:
        assert spec.exits[-1].confidence.params[0] == "confidence.0.weight"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("model,shape,exit_type", [("eenet20", (3, 32, 32), "bnpool"),
                                                   ("eenet110", (1, 28, 28), "plain"),
                                                   ("eenet34", (3, 64, 64), "pool")])
def test_shapes_most_exits(distribution, model, shape, exit_type):
    """The most exits that fit; an exit right after the last block leaves an empty last
    stage (then there is no ``layers`` alias)."""
    blocks = build_spec(model, 10, shape, 0).total_blocks
    with pytest.raises(ValueError) as info:          # one exit more than there are blocks
        build_spec(model, 10, shape, blocks + 1, distribution, exit_type)
    n = int(re.search(r"at most (\d+) fit", str(info.value)).group(1))
    spec = build_spec(model, 10, shape, n, distribution, exit_type)
    assert n >= 1 and len({e.after_block for e in spec.exits[:-1]}) == n
    check_spec(spec)
    if spec.exits[-2].after_block == spec.total_blocks:
        assert spec.stages[-1] == [] and authors_aliases(spec) == {}


# ----------------------------------------------------------------------------------------
# initialisation kinds
# ----------------------------------------------------------------------------------------

def test_init_kinds_resnet():
    spec = build_spec("eenet50", 200, (3, 64, 64), 2, "fine", "bnpool")
    params = {p.name: p for p in spec.params}
    ops = [op for st in spec.stages for op in st] + [op for e in spec.exits for op in e.ops]
    heads = [h for e in spec.exits for h in (e.confidence, e.classifier) if h is not None]
    for op in ops + heads:
        ps = [params[n] for n in op.params]
        if op.kind == "conv2d":
            w, = ps
            k = w.shape[2]
            assert w.init == "kaiming_normal_fan_out" and w.fan_out == w.shape[0] * k * k
            assert w.trainable
        elif op.kind == "batchnorm2d":
            assert [p.init for p in ps] == ["ones", "zeros", "zeros", "ones", "zeros"]
            assert [p.trainable for p in ps] == [True, True, False, False, False]
        elif op.kind == "linear":
            n_in = ps[0].shape[1]
            assert [p.init for p in ps] == ["uniform_fan_in"] * 2
            assert [p.fan_in for p in ps] == [n_in, n_in]


def test_init_kinds_eenet8():
    spec = build_spec("eenet8", 10, (1, 28, 28), filters=4)
    params = {p.name: p for p in spec.params}
    for st in spec.stages:
        for op in st:
            if op.kind == "conv2d":
                w, b = (params[n] for n in op.params)
                fan_in = w.shape[1] * w.shape[2] * w.shape[3]
                assert (w.init, b.init) == ("uniform_fan_in", "uniform_fan_in")
                assert w.fan_in == b.fan_in == fan_in


# ----------------------------------------------------------------------------------------
# EENet-8
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("filters,approx", [(2, (0.45, 0.74)), (4, (0.43, 0.72))])
def test_eenet8_costs(filters, approx):
    """Fixed costs 0.08/0.26 in ``cost``; the measured FLOP ratios (README: the authors'
    counter gives about 0.45/0.74 for f=2 and 0.43/0.72 for f=4) in ``flop_costs``."""
    spec = build_spec("eenet8", 10, (1, 28, 28), filters=filters)
    assert spec.costs == [0.08, 0.26, 1.0]
    assert spec.flop_costs[:2] == pytest.approx(approx, abs=0.005)
    assert [e.after_block for e in spec.exits] == [1, 2, 3] and spec.total_blocks == 3
    assert spec.exits[-1].num_params == spec.param_count()
    assert spec.filters == filters
    widths = [p.shape[0] for p in spec.params if p.name.endswith(".weight") and len(p.shape) == 4]
    assert sorted(set(widths)) == [filters, 2 * filters, 4 * filters]


def test_eenet8_ignores_num_ee_with_warning():
    with pytest.warns(UserWarning, match="eenet8 always has 2 early exits"):
        spec = build_spec("eenet8", 10, (1, 28, 28), num_ee=5)
    assert spec.num_ee == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_spec("eenet8", 10, (1, 28, 28), num_ee=2)


# ----------------------------------------------------------------------------------------
# arguments, helpers
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,argname", [
    (dict(model="eenet21"), "model"),
    (dict(model="EENet20"), "model"),
    (dict(model="eenet20", exit_type="avg"), "exit_type"),
    (dict(model="eenet20", distribution="uniform"), "distribution"),
    (dict(model="eenet20", num_ee=-1), "num_ee"),
    (dict(model="eenet20", num_ee=1.5), "num_ee"),
    (dict(model="eenet20", num_classes=0), "num_classes"),
    (dict(model="eenet20", num_classes=True), "num_classes"),
    (dict(model="eenet20", input_shape=(32, 32)), "input_shape"),
    (dict(model="eenet20", input_shape=(3, 0, 32)), r"input_shape\[1\]"),
    (dict(model="eenet20", input_shape=5), "input_shape"),
    (dict(model="eenet8", filters=0), "filters"),
    (dict(model="resnet20", exit_type="nope"), "exit_type"),
])
def test_bad_arguments(kwargs, argname):
    with pytest.raises(ValueError, match=argname):
        build_spec(**kwargs)


def test_model_names_and_plain_resnets():
    names = model_names()
    for d in (20, 32, 44, 56, 110, 18, 34, 50, 101, 152):
        assert f"eenet{d}" in names and f"resnet{d}" in names
    assert "eenet8" in names
    spec = build_spec("resnet20", 10, (3, 32, 32), num_ee=3)        # num_ee ignored
    assert spec.num_ee == 0 and len(spec.exits) == 1 and spec.total_blocks == 9
    assert authors_aliases(spec) == {}


@pytest.mark.parametrize("model", model_names())
def test_spec_fields_rebuild_the_spec(model):
    """A checkpoint can store the spec's build fields and rebuild the same architecture."""
    spec = build_spec(model, 7, (3, 40, 36), 2, "linear", "bnpool", filters=3)
    again = build_spec(spec.model, spec.num_classes, spec.input_shape, spec.num_ee,
                       spec.distribution, spec.exit_type, spec.filters)
    assert again == spec


def test_param_count_and_aliases():
    spec = build_spec("eenet20", exit_type="pool")
    n_all = spec.param_count(trainable_only=False)
    n_bn_buffers = sum(p.shape[0] if p.shape else 1 for p in spec.params if not p.trainable)
    assert n_all == spec.param_count() + n_bn_buffers
    aliases = authors_aliases(spec)
    assert aliases["layers.0.conv1.weight"] == "stages.2.0.conv1.weight"
    names = {p.name for p in spec.params}
    assert set(aliases.values()) <= names and not set(aliases) & names


def test_describe():
    spec = build_spec("eenet20", 10, (3, 32, 32), 2, "fine", "bnpool")
    text = describe(spec)
    assert "eenet20" in text and "stages.1.0.conv1" in text and "exits.0.bn" in text
    assert f"{spec.exits[0].cost:.6f}" in text and f"{spec.total_flops:,}" in text
    lines = text.splitlines()
    n_ops = (sum(len(st) for st in spec.stages) + sum(len(e.ops) for e in spec.exits)
             + sum((e.confidence is not None) + 1 for e in spec.exits))
    assert sum(1 for ln in lines if ln.startswith(("stage", "exit ", "final "))) >= n_ops
    assert "fixed constants" in describe(build_spec("eenet8", 10, (1, 28, 28)))
