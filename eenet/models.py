"""Model specs: the EENets and plain ResNets of Demir & Akbas as :class:`~eenet.spec.ModelSpec`.

Pure Python (no NumPy, no C): :func:`build_spec` writes the flat op program that the C
engine runs, names every parameter as the authors' PyTorch ``state_dict`` does, counts
FLOPs the way the authors' counter does, and places the early exits by the authors' rule.

Models (see :func:`model_names`):

* ``eenet8``: the authors' custom pre-activation MNIST net with exactly two early exits
  (after blocks 1 and 2) and the fixed costs 0.08 and 0.26 in :attr:`Exit.cost`; the
  measured FLOP ratios are in :attr:`ModelSpec.flop_costs`.  ``filters`` sets its starting
  width f (2 or 4 in the paper; any positive int works).  ``distribution`` is ignored and a
  ``num_ee`` other than 2 is ignored with a warning (as the authors' code does).
* ``eenet20/32/44/56/110``: ResNet-6n+2 (16/32/64 channels, BasicBlocks, 3x3 stem).
* ``eenet18/34`` (BasicBlock) and ``eenet50/101/152`` (Bottleneck, expansion 4): the
  ImageNet-style ResNets with the 7x7 stride-2 stem and 3x3 stride-2 max pool.
* ``resnet20 ... resnet152``: the plain counterparts (no early exits; the final exit has no
  confidence head and is named ``fully_connected`` as in the authors' ``resnet.py``).
  ``num_ee``, ``distribution``, ``exit_type`` and ``filters`` are validated but ignored.

Naming (``authors_state_dict_keys.txt``):

* EENet ResNets: ``stages.<s>.<j>.*`` where stage s holds the blocks before early exit s
  (stage 0 starts with the stem at j = 0), ``exits.<i>.confidence.0.*`` /
  ``exits.<i>.classifier.0.*``, final ``classifier.0.*`` and ``confidence.0.*``.  The
  authors register the last stage a second time as ``layers.<j>.*``; eenet exposes only the
  ``stages.<E>.*`` name and :func:`authors_aliases` maps the ``layers`` names onto it.
* ``bnpool`` exits: the authors keep the exit's BatchNorm in a plain Python list, so it is
  in neither their ``state_dict`` nor their optimiser, and it always normalises with batch
  statistics.  eenet names it ``exits.<i>.bn.*`` (``exit<i>_bn.*`` for eenet8), trains it
  and uses running statistics in eval mode.  Loading an authors' state_dict leaves these
  at their initial values (weight 1, bias 0, running mean 0, running var 1).

FLOPs (the authors' counter, multiply-accumulates per sample): conv k*k*C_in*C_out*H_out*W_out
(+ C_out*H_out*W_out with bias); linear in*out (bias not counted); batch norm 2*numel; ReLU
numel; max pool and global average pool numel of the input; add, softmax and sigmoid 0.
An early exit's own pooling and batch norm are invisible to the authors' counter: those ops
carry ``flops = 0`` here and only the two linear heads count.  ``Exit.num_params`` likewise
counts the backbone up to the exit plus that exit's two heads (earlier exits' heads and
the ``bnpool`` batch norm excluded, BN buffers never counted), as the authors' figures do.
The final exit's ``flops``/``num_params`` are the plain counterpart's totals.

EENet-8 has no plain counterpart and registers its exit pooling as a module, so the
authors' counter sees everything: ``Exit.flops`` is every op run up to and including exit i
(backbone, earlier exits, the exit's pooling and heads), ``total_flops`` the whole model's,
and ``flop_costs`` their ratio (0.452, 0.736 for f=2 and 0.426, 0.719 for f=4 at 1x28x28,
the README's "about 0.45 and 0.74 / 0.43 and 0.72").  ``Exit.num_params`` is the backbone
plus the exit's heads (137 and 407 for f=2, as in the authors' complexity table), the final
exit's the whole model's.
"""
from __future__ import annotations

import warnings

from .spec import Exit, ModelSpec, Op, Param

__all__ = ["build_spec", "model_names", "authors_aliases", "describe", "DISTRIBUTIONS",
           "EXIT_TYPES", "EENET8_COSTS"]

DISTRIBUTIONS = ("pareto", "fine", "linear", "gold_ratio")
EXIT_TYPES = ("plain", "pool", "bnpool")
EENET8_COSTS = (0.08, 0.26)
GOLD_RATE = 1.61803398875

# blocks per stage of the ResNet-6n+2 family (n = (depth - 2) / 6)
_SIX_N_PLUS_2 = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
# ImageNet-style ResNets: block kind and blocks per stage
_IMAGENET = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
             50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
             152: ("bottleneck", (3, 8, 36, 3))}


def model_names() -> list:
    """Every model name :func:`build_spec` accepts."""
    depths = sorted(list(_SIX_N_PLUS_2) + list(_IMAGENET))
    return ["eenet8"] + [f"eenet{d}" for d in depths] + [f"resnet{d}" for d in depths]


# --------------------------------------------------------------------------------------
# graph builder
# --------------------------------------------------------------------------------------

def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _Graph:
    """Appends ops to ``self.ops`` (the list currently being filled), numbering tensors and
    registering parameters.  Each op's ``flops`` is the authors' counter's figure."""

    def __init__(self, input_shape: tuple):
        self.tensors: list = [tuple(input_shape)]
        self.params: list = []
        self._names: set = set()
        self.ops: list = []

    # helpers ----------------------------------------------------------------------------
    def _tensor(self, shape: tuple) -> int:
        self.tensors.append(tuple(shape))
        return len(self.tensors) - 1

    def _param(self, p: Param) -> str:
        if p.name in self._names:
            raise AssertionError(f"duplicate parameter name {p.name}")  # internal invariant
        self._names.add(p.name)
        self.params.append(p)
        return p.name

    def _op(self, kind: str, inputs: tuple, out_shape: tuple, attrs: dict, params: tuple,
            flops: int) -> int:
        out = self._tensor(out_shape)
        self.ops.append(Op(kind=kind, inputs=tuple(inputs), output=out, attrs=attrs,
                           params=tuple(params), flops=int(flops)))
        return out

    # ops --------------------------------------------------------------------------------
    def conv(self, x: int, name: str, out_channels: int, kernel: int, stride: int = 1,
             padding: int = 0, bias: bool = False, init: str = "kaiming_normal_fan_out") -> int:
        c, h, w = self.tensors[x]
        ho = (h + 2 * padding - kernel) // stride + 1
        wo = (w + 2 * padding - kernel) // stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"input_shape is too small: {name} (kernel {kernel}, stride {stride}, "
                             f"padding {padding}) gets a {h}x{w} feature map")
        fan_in, fan_out = c * kernel * kernel, out_channels * kernel * kernel
        names = [self._param(Param(f"{name}.weight", (out_channels, c, kernel, kernel), init,
                                   fan_in=fan_in, fan_out=fan_out))]
        flops = kernel * kernel * c * out_channels * ho * wo
        if bias:
            # PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in of the weight
            names.append(self._param(Param(f"{name}.bias", (out_channels,), "uniform_fan_in",
                                           fan_in=fan_in, fan_out=fan_out)))
            flops += out_channels * ho * wo
        attrs = dict(out_channels=out_channels, kernel=kernel, stride=stride, padding=padding,
                     bias=bool(bias))
        return self._op("conv2d", (x,), (out_channels, ho, wo), attrs, names, flops)

    def bn(self, x: int, name: str, count: bool = True) -> int:
        shape = self.tensors[x]
        c = shape[0]
        names = [self._param(Param(f"{name}.weight", (c,), "ones")),
                 self._param(Param(f"{name}.bias", (c,), "zeros")),
                 self._param(Param(f"{name}.running_mean", (c,), "zeros", trainable=False)),
                 self._param(Param(f"{name}.running_var", (c,), "ones", trainable=False)),
                 self._param(Param(f"{name}.num_batches_tracked", (), "zeros", trainable=False))]
        flops = 2 * _numel(shape) if count else 0
        return self._op("batchnorm2d", (x,), shape, dict(eps=1e-5, momentum=0.1), names, flops)

    def relu(self, x: int) -> int:
        shape = self.tensors[x]
        return self._op("relu", (x,), shape, {}, (), _numel(shape))

    def add(self, a: int, b: int) -> int:
        if self.tensors[a] != self.tensors[b]:
            raise AssertionError(f"add of {self.tensors[a]} and {self.tensors[b]}")
        return self._op("add", (a, b), self.tensors[a], {}, (), 0)

    def maxpool(self, x: int, kernel: int, stride: int, padding: int) -> int:
        c, h, w = self.tensors[x]
        ho = (h + 2 * padding - kernel) // stride + 1
        wo = (w + 2 * padding - kernel) // stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"input_shape is too small: max pool gets a {h}x{w} feature map")
        return self._op("maxpool2d", (x,), (c, ho, wo),
                        dict(kernel=kernel, stride=stride, padding=padding), (),
                        c * h * w)

    def gap(self, x: int, count: bool = True) -> int:
        shape = self.tensors[x]
        return self._op("global_avgpool", (x,), (shape[0],), {}, (),
                        _numel(shape) if count else 0)

    def linear(self, x: int, name: str, out_features: int) -> Op:
        """A linear head; returns the Op (heads are held by :class:`Exit`, not by a stage)."""
        fan_in = _numel(self.tensors[x])
        names = [self._param(Param(f"{name}.weight", (out_features, fan_in), "uniform_fan_in",
                                   fan_in=fan_in, fan_out=out_features)),
                 self._param(Param(f"{name}.bias", (out_features,), "uniform_fan_in",
                                   fan_in=fan_in, fan_out=out_features))]
        saved, self.ops = self.ops, []
        self._op("linear", (x,), (out_features,), dict(out_features=out_features), names,
                 fan_in * out_features)
        op = self.ops[0]
        self.ops = saved
        return op


# --------------------------------------------------------------------------------------
# residual blocks
# --------------------------------------------------------------------------------------

def _basic_block(g: _Graph, x: int, name: str, planes: int, stride: int) -> int:
    """conv3x3(s)-BN-ReLU-conv3x3-BN (+ shortcut, conv1x1(s)-BN when the shape changes), ReLU."""
    in_ch = g.tensors[x][0]
    out = g.conv(x, f"{name}.conv1", planes, 3, stride, 1)
    out = g.bn(out, f"{name}.bn1")
    out = g.relu(out)
    out = g.conv(out, f"{name}.conv2", planes, 3, 1, 1)
    out = g.bn(out, f"{name}.bn2")
    shortcut = x
    if stride != 1 or in_ch != planes:
        shortcut = g.conv(x, f"{name}.downsample.0", planes, 1, stride, 0)
        shortcut = g.bn(shortcut, f"{name}.downsample.1")
    return g.relu(g.add(out, shortcut))


def _bottleneck(g: _Graph, x: int, name: str, planes: int, stride: int) -> int:
    """conv1x1-BN-ReLU-conv3x3(s)-BN-ReLU-conv1x1(4p)-BN (+ shortcut conv1x1(s)-BN), ReLU."""
    in_ch = g.tensors[x][0]
    out = g.conv(x, f"{name}.conv1", planes, 1, 1, 0)
    out = g.bn(out, f"{name}.bn1")
    out = g.relu(out)
    out = g.conv(out, f"{name}.conv2", planes, 3, stride, 1)
    out = g.bn(out, f"{name}.bn2")
    out = g.relu(out)
    out = g.conv(out, f"{name}.conv3", planes * 4, 1, 1, 0)
    out = g.bn(out, f"{name}.bn3")
    shortcut = x
    if stride != 1 or in_ch != planes * 4:
        shortcut = g.conv(x, f"{name}.downsample.0", planes * 4, 1, stride, 0)
        shortcut = g.bn(shortcut, f"{name}.downsample.1")
    return g.relu(g.add(out, shortcut))


def _resnet_layout(depth: int) -> tuple:
    """(imagenet_style, block function, [(planes, stride) for every block])."""
    if depth in _SIX_N_PLUS_2:
        n = _SIX_N_PLUS_2[depth]
        blocks = [(16 * 2 ** s, 1 if (s == 0 or j > 0) else 2) for s in range(3) for j in range(n)]
        return False, _basic_block, blocks
    kind, reps = _IMAGENET[depth]
    fn = _basic_block if kind == "basic" else _bottleneck
    blocks = [(64 * 2 ** s, 1 if (s == 0 or j > 0) else 2)
              for s, r in enumerate(reps) for j in range(r)]
    return True, fn, blocks


def _stem(g: _Graph, x: int, imagenet: bool, prefix_conv: str, prefix_bn: str) -> int:
    if imagenet:
        x = g.conv(x, prefix_conv, 64, 7, 2, 3)
        x = g.relu(g.bn(x, prefix_bn))
        return g.maxpool(x, 3, 2, 1)
    x = g.conv(x, prefix_conv, 16, 3, 1, 1)
    return g.relu(g.bn(x, prefix_bn))


def _trainable(params: list) -> int:
    return sum(_numel(p.shape) for p in params if p.trainable)


# --------------------------------------------------------------------------------------
# plain ResNets (also the counterpart whose FLOPs define the costs)
# --------------------------------------------------------------------------------------

def _plain_resnet(model: str, depth: int, num_classes: int, input_shape: tuple):
    """Build the plain counterpart.  Returns (spec, cumulative backbone FLOPs after each block)."""
    imagenet, block_fn, blocks = _resnet_layout(depth)
    g = _Graph(input_shape)
    stage_ops: list = []
    g.ops = stage_ops
    x = _stem(g, 0, imagenet, "conv1", "bn1")
    cum = []
    counts = _stage_counts(depth)
    b = 0
    for s, n in enumerate(counts):
        for j in range(n):
            planes, stride = blocks[b]
            prefix = f"layer{s + 1}.{j}" if imagenet else f"stage{s + 1}.{j}"
            x = block_fn(g, x, prefix, planes, stride)
            cum.append(sum(op.flops for op in stage_ops))
            b += 1
    final_ops: list = []
    g.ops = final_ops
    feats = g.gap(x)
    classifier = g.linear(feats, "fully_connected", num_classes)
    total = sum(op.flops for op in stage_ops) + final_ops[0].flops + classifier.flops
    params = list(g.params)
    final = Exit(input=x, exit_type="pool", ops=final_ops, features=feats, confidence=None,
                 classifier=classifier, cost=1.0, flops=total, num_params=_trainable(params),
                 after_block=len(blocks))
    spec = ModelSpec(model=model, num_classes=num_classes, input_shape=tuple(input_shape),
                     num_ee=0, distribution="", exit_type="pool",
                     filters=64 if imagenet else 16, tensors=g.tensors, stages=[stage_ops],
                     exits=[final], params=params, total_flops=total, total_blocks=len(blocks),
                     flop_costs=[1.0])
    return spec, cum


def _stage_counts(depth: int) -> tuple:
    if depth in _SIX_N_PLUS_2:
        return (_SIX_N_PLUS_2[depth],) * 3
    return _IMAGENET[depth][1]


# --------------------------------------------------------------------------------------
# exit placement
# --------------------------------------------------------------------------------------

def _thresholds(distribution: str, total_flops: int, num_ee: int) -> list:
    """FLOP thresholds t_i (same float expressions as the authors' code)."""
    margin = 1.0 / (num_ee + 1)
    out = []
    for i in range(num_ee):
        if distribution == "pareto":
            out.append(total_flops * (1 - (0.8 ** (i + 1))))
        elif distribution == "fine":
            out.append(total_flops * (1 - (0.95 ** (i + 1))))
        elif distribution == "linear":
            out.append(total_flops * margin * (i + 1))
        else:
            out.append(total_flops * (GOLD_RATE ** (i - num_ee)))
    return out


def _place(cum: list, thresholds: list) -> list:
    """Blocks (1-based count) after which exits go: after each block, the next exit i is placed
    if the cumulative backbone FLOPs reach t_i; at most one exit per block."""
    after = []
    for b, flops in enumerate(cum, start=1):
        i = len(after)
        if i < len(thresholds) and flops >= thresholds[i]:
            after.append(b)
    return after


def _max_fitting(cum: list, distribution: str, total: int, num_ee: int) -> int:
    for n in range(num_ee - 1, -1, -1):
        if len(_place(cum, _thresholds(distribution, total, n))) == n:
            return n
    return 0


# --------------------------------------------------------------------------------------
# exit blocks
# --------------------------------------------------------------------------------------

def _early_exit(g: _Graph, x: int, exit_type: str, num_classes: int, bn_name: str,
                conf_name: str, cls_name: str, count: bool = False):
    """Exit ops and the two heads.  The exit's pooling and batch norm carry FLOPs only when
    ``count`` (the authors' ResNet EENets hide them from their counter; EENet-8 does not)."""
    ops: list = []
    saved, g.ops = g.ops, ops
    feats = x
    if exit_type == "bnpool":
        feats = g.gap(g.bn(x, bn_name, count=count), count=count)
    elif exit_type == "pool":
        feats = g.gap(x, count=count)
    g.ops = saved
    conf = g.linear(feats, conf_name, 1)
    cls = g.linear(feats, cls_name, num_classes)
    return ops, feats, conf, cls


def _head_params(op: Op) -> int:
    out_f = op.attrs["out_features"]
    return op.flops + out_f   # weight in*out (== its FLOPs) + bias


# --------------------------------------------------------------------------------------
# EENet ResNets
# --------------------------------------------------------------------------------------

def _eenet_resnet(model: str, depth: int, num_classes: int, input_shape: tuple, num_ee: int,
                  distribution: str, exit_type: str) -> ModelSpec:
    plain, cum = _plain_resnet(f"resnet{depth}", depth, num_classes, input_shape)
    total, total_params = plain.total_flops, plain.exits[0].num_params
    after = _place(cum, _thresholds(distribution, total, num_ee))
    if len(after) < num_ee:
        fit = _max_fitting(cum, distribution, total, num_ee)
        raise ValueError(
            f"num_ee={num_ee} early exits do not fit in {model} with distribution "
            f"'{distribution}' at input_shape {tuple(input_shape)}: at most {fit} fit "
            f"({len(cum)} residual blocks, at most one exit per block)")

    imagenet, block_fn, blocks = _resnet_layout(depth)
    g = _Graph(input_shape)
    stages: list = [[]]
    g.ops = stages[0]
    x = _stem(g, 0, imagenet, "stages.0.0.0", "stages.0.0.1")
    exits: list = []
    pos = 1                                  # index of the next module in the current stage
    backbone_params: list = []
    for b, (planes, stride) in enumerate(blocks, start=1):
        s = len(exits)
        x = block_fn(g, x, f"stages.{s}.{pos}", planes, stride)
        pos += 1
        if s < num_ee and after[s] == b:
            backbone_flops = sum(op.flops for st in stages for op in st)
            backbone_params = [p for p in g.params if p.name.startswith("stages.")]
            ops, feats, conf, cls = _early_exit(g, x, exit_type, num_classes, f"exits.{s}.bn",
                                                f"exits.{s}.confidence.0",
                                                f"exits.{s}.classifier.0")
            flops = backbone_flops + conf.flops + cls.flops
            nparams = _trainable(backbone_params) + _head_params(conf) + _head_params(cls)
            exits.append(Exit(input=x, exit_type=exit_type, ops=ops, features=feats,
                              confidence=conf, classifier=cls, cost=flops / total, flops=flops,
                              num_params=nparams, after_block=b))
            stages.append([])
            g.ops = stages[-1]
            pos = 0
    final_ops: list = []
    g.ops = final_ops
    feats = g.gap(x)
    cls = g.linear(feats, "classifier.0", num_classes)
    conf = g.linear(feats, "confidence.0", 1)
    exits.append(Exit(input=x, exit_type="pool", ops=final_ops, features=feats, confidence=conf,
                      classifier=cls, cost=1.0, flops=total, num_params=total_params,
                      after_block=len(blocks)))
    # state_dict order: stages, exits, (layers: alias), classifier, confidence
    group = {"stages": 0, "exits": 1, "classifier": 2, "confidence": 3}
    params = sorted(g.params, key=lambda p: group[p.name.split(".")[0]])
    return ModelSpec(model=model, num_classes=num_classes, input_shape=tuple(input_shape),
                     num_ee=num_ee, distribution=distribution, exit_type=exit_type,
                     filters=64 if imagenet else 16, tensors=g.tensors, stages=stages,
                     exits=exits, params=params, total_flops=total, total_blocks=len(blocks),
                     flop_costs=[e.cost for e in exits])


# --------------------------------------------------------------------------------------
# EENet-8
# --------------------------------------------------------------------------------------

_EENET8_ORDER = ("initblock", "basicblock1", "basicblock2", "basicblock3", "finalblock",
                 "conv2d_6", "conv2d_9", "exit0_bn", "exit1_bn", "exit0_classifier",
                 "exit1_classifier", "exit0_confidence", "exit1_confidence", "classifier")


def _eenet8(num_classes: int, input_shape: tuple, exit_type: str, f: int) -> ModelSpec:
    g = _Graph(input_shape)
    u = "uniform_fan_in"
    stages: list = [[], [], []]
    exits: list = []

    def executed() -> int:
        """FLOPs of every op run so far: the backbone and the earlier exits (whole exits: the
        authors' EENet-8 registers its exit pooling, so their counter sees it)."""
        return (sum(op.flops for st in stages for op in st)
                + sum(op.flops for e in exits for op in e.ops)
                + sum(h.flops for e in exits for h in (e.confidence, e.classifier)))

    def preact_block(x: int, name: str, shortcut_name: str, out_ch: int) -> int:
        r = g.relu(g.bn(x, f"{name}.0"))
        r = g.conv(r, f"{name}.2", out_ch, 3, 2, 1, bias=True, init=u)
        r = g.relu(g.bn(r, f"{name}.3"))
        r = g.conv(r, f"{name}.5", out_ch, 3, 1, 1, bias=True, init=u)
        sc = g.conv(x, shortcut_name, out_ch, 1, 2, 0, bias=True, init=u)
        return g.add(r, sc)

    def early_exit(i: int, x: int, block: int) -> None:
        bparams = _trainable(p for p in g.params if not p.name.startswith("exit"))
        ops, feats, conf, cls = _early_exit(g, x, exit_type, num_classes, f"exit{i}_bn",
                                            f"exit{i}_confidence.0", f"exit{i}_classifier.0",
                                            count=True)
        exits.append(Exit(input=x, exit_type=exit_type, ops=ops, features=feats,
                          confidence=conf, classifier=cls, cost=EENET8_COSTS[i],
                          flops=executed() + sum(op.flops for op in ops) + conf.flops
                          + cls.flops,
                          num_params=bparams + _head_params(conf) + _head_params(cls),
                          after_block=block))

    g.ops = stages[0]
    x = g.conv(0, "initblock.0", f, 3, 1, 1, bias=True, init=u)
    x = g.relu(g.bn(x, "initblock.1"))
    r = g.conv(x, "basicblock1.0", f, 3, 1, 1, bias=True, init=u)
    r = g.relu(g.bn(r, "basicblock1.1"))
    r = g.conv(r, "basicblock1.3", f, 3, 1, 1, bias=True, init=u)
    x = g.add(r, x)
    early_exit(0, x, 1)
    g.ops = stages[1]
    x = preact_block(x, "basicblock2", "conv2d_6", 2 * f)
    early_exit(1, x, 2)
    g.ops = stages[2]
    x = preact_block(x, "basicblock3", "conv2d_9", 4 * f)
    x = g.relu(g.bn(x, "finalblock.0"))
    final_ops: list = []
    g.ops = final_ops
    feats = g.gap(x)
    cls = g.linear(feats, "classifier.0", num_classes)
    # EENet-8 has no plain counterpart: the authors' counter runs on the whole model
    total = executed() + final_ops[0].flops + cls.flops
    exits.append(Exit(input=x, exit_type="pool", ops=final_ops, features=feats, confidence=None,
                      classifier=cls, cost=1.0, flops=total, num_params=_trainable(g.params),
                      after_block=3))
    order = {k: i for i, k in enumerate(_EENET8_ORDER)}
    params = sorted(g.params, key=lambda p: order[p.name.split(".")[0]])
    return ModelSpec(model="eenet8", num_classes=num_classes, input_shape=tuple(input_shape),
                     num_ee=2, distribution="", exit_type=exit_type, filters=f,
                     tensors=g.tensors, stages=stages, exits=exits, params=params,
                     total_flops=total, total_blocks=3,
                     flop_costs=[e.flops / total for e in exits[:-1]] + [1.0])


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numbers
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def build_spec(model: str, num_classes: int = 10, input_shape: tuple = (3, 32, 32),
               num_ee: int = 2, distribution: str = "fine", exit_type: str = "pool",
               filters: int = 2) -> ModelSpec:
    """Build the :class:`ModelSpec` of ``model`` for inputs of ``input_shape`` (C, H, W) and
    ``num_classes`` classes.

    ``num_ee`` early exits are placed by ``distribution`` (pareto, fine, linear, gold_ratio;
    see DESIGN.md) after residual blocks, at most one per block; ``exit_type`` is ``plain``
    (heads on the flattened map), ``pool`` (global average pool) or ``bnpool`` (batch norm,
    then pool).  ``filters`` is EENet-8's starting width.  Raises ValueError naming the bad
    argument, or saying how many exits fit when ``num_ee`` is too large.
    """
    if not isinstance(model, str) or model not in model_names():
        raise ValueError(f"model must be one of {', '.join(model_names())}; got {model!r}")
    num_classes = _check_int("num_classes", num_classes, 1)
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}") from None
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W) with 3 entries, got {input_shape!r}")
    shape = tuple(_check_int(f"input_shape[{i}]", v, 1) for i, v in enumerate(shape))
    num_ee = _check_int("num_ee", num_ee, 0)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; "
                         f"got {distribution!r}")
    if exit_type not in EXIT_TYPES:
        raise ValueError(f"exit_type must be one of {', '.join(EXIT_TYPES)}; got {exit_type!r}")
    filters = _check_int("filters", filters, 1)

    if model == "eenet8":
        if num_ee != 2:
            warnings.warn(f"eenet8 always has 2 early exits; num_ee={num_ee} is ignored",
                          stacklevel=2)
        spec = _eenet8(num_classes, shape, exit_type, filters)
        spec.distribution = distribution    # ignored, kept so the spec's fields rebuild it
        return spec
    depth = int(model[len("resnet"):]) if model.startswith("resnet") else int(model[len("eenet"):])
    if model.startswith("resnet"):
        spec, _ = _plain_resnet(model, depth, num_classes, shape)
        spec.distribution = distribution
        return spec
    return _eenet_resnet(model, depth, num_classes, shape, num_ee, distribution, exit_type)


def authors_aliases(spec: ModelSpec) -> dict:
    """Second names under which the authors' modules register a tensor: ``{alias: name}``.

    The authors' EENet ResNets hold the last stage both as ``stages.<E>`` and as
    ``layers``; eenet names those tensors ``stages.<E>.<j>.*`` only.  To load an authors'
    ``state_dict``, drop (or map) every key found here; to write one, add them back.
    """
    if not spec.model.startswith("eenet") or spec.model == "eenet8":
        return {}
    last = f"stages.{len(spec.stages) - 1}."
    return {"layers." + p.name[len(last):]: p.name for p in spec.params
            if p.name.startswith(last)}


def _fmt_shape(shape: tuple) -> str:
    return "x".join(str(s) for s in shape) if shape else "()"


def describe(spec: ModelSpec) -> str:
    """A text summary: one row per op (stage/exit, kind, parameter name, output shape,
    parameters, authors' FLOPs), then a table of the exits with their costs."""
    params = {p.name: p for p in spec.params}
    rows = []

    def add(where: str, op: Op) -> None:
        n = sum(_numel(params[q].shape) for q in op.params if params[q].trainable)
        first = op.params[0].rsplit(".", 1)[0] if op.params else ""
        rows.append((where, op.kind, first, _fmt_shape(spec.tensors[op.output]), n, op.flops))

    for i, stage in enumerate(spec.stages):
        for op in stage:
            add(f"stage {i}", op)
        e = spec.exits[i]
        tag = f"exit {i}" if i < len(spec.exits) - 1 else "final"
        for op in e.ops:
            add(tag, op)
        for head in (e.confidence, e.classifier):
            if head is not None:
                add(tag, head)
    w = max(len(r[2]) for r in rows) if rows else 4
    title = (f"{spec.model}: input {_fmt_shape(spec.input_shape)}, {spec.num_classes} classes, "
             f"{spec.num_ee} early exits"
             + (f" ({spec.exit_type})" if spec.model == "eenet8"
                else (f" ({spec.distribution}, {spec.exit_type})" if spec.num_ee else "")))
    lines = [title, "",
             f"{'where':<8} {'op':<15} {'name':<{w}} {'output':>12} {'params':>10} {'FLOPs':>13}"]
    for r in rows:
        lines.append(f"{r[0]:<8} {r[1]:<15} {r[2]:<{w}} {r[3]:>12} {r[4]:>10,} {r[5]:>13,}")
    lines += ["", f"{'exit':<6} {'after block':>11} {'type':<7} {'cost':>9} {'FLOP cost':>10} "
                  f"{'FLOPs':>15} {'params':>12}"]
    for i, e in enumerate(spec.exits):
        name = str(i) if i < len(spec.exits) - 1 else "final"
        lines.append(f"{name:<6} {e.after_block:>5}/{spec.total_blocks:<5} {e.exit_type:<7} "
                     f"{e.cost:>9.6f} {spec.flop_costs[i]:>10.6f} {e.flops:>15,} "
                     f"{e.num_params:>12,}")
    lines.append("")
    base = "whole model (no plain counterpart)" if spec.model == "eenet8" else "plain counterpart"
    lines.append(f"{base}: {spec.total_flops:,} FLOPs, {spec.exits[-1].num_params:,} parameters")
    lines.append(f"this model: {spec.param_count():,} trainable parameters, "
                 f"{spec.param_count(trainable_only=False) - spec.param_count():,} "
                 f"batch-norm buffer values, {len(spec.params)} arrays")
    if spec.model == "eenet8":
        lines.append("eenet8: 'cost' are the authors' fixed constants; 'FLOP cost' is measured")
    return "\n".join(lines)
