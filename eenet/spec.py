"""The model description shared by :mod:`eenet.models` (which builds it) and the
C engine (which runs it).

A :class:`ModelSpec` is a flat, ordered program over numbered tensors.  Tensor 0
is the input image batch; every :class:`Op` reads ``inputs`` (tensor ids) and
writes one new tensor ``output``.  Shapes are per sample, ``(C, H, W)`` for
feature maps and ``(F,)`` for vectors; the batch dimension is implicit.

The program is cut into *stages*: ``stages[i]`` are the backbone ops computed
before early exit ``i`` reads its feature map; ``stages[E]`` (E = number of
early exits) are the ops between the last early exit and the final exit.  Only
the feature map at a stage boundary (``exits[i].input``) crosses from one stage
to the next, which is what lets batched early-exit inference compact the batch
between stages.

``exits`` has E + 1 entries; the last one is the final exit.  Each exit has its
own ops (batch norm / ReLU / pooling before the heads) and two linear heads:
``confidence`` (features -> 1, followed by a sigmoid; ``None`` for a final exit
without one, as in EENet-8) and ``classifier`` (features -> K, followed by a
softmax).  A ``plain`` exit's heads read the flattened feature map: linear ops
accept a (C, H, W) input and treat it as C*H*W features.

Op kinds and their ``attrs``/``params`` (params are names in ``ModelSpec.params``,
in this order):

=================  ======================================  ==========================================
kind               attrs                                    params
=================  ======================================  ==========================================
``conv2d``         out_channels, kernel, stride, padding,   weight (K, C, k, k)[, bias (K,)]
                   bias (bool)
``batchnorm2d``    eps=1e-5, momentum=0.1                   weight, bias, running_mean, running_var,
                                                            num_batches_tracked   (all (C,) but the
                                                            last, shape ())
``relu``           --                                       --
``add``            -- (two inputs, same shape)              --
``maxpool2d``      kernel, stride, padding                  --
``global_avgpool`` -- ((C,H,W) -> (C,))                     --
``linear``         out_features                             weight (out, in), bias (out,)
=================  ======================================  ==========================================

Parameter names are the authors' PyTorch ``state_dict`` names
(``../shared/reference/authors_state_dict_keys.txt``), so weights move between
the implementations by name (the authors' duplicate ``layers.*`` names of the
last stage are not listed: ``eenet.models.authors_aliases(spec)`` maps them).

A stage may be empty (an early exit right after the last residual block): the
final exit then reads the same tensor as the last early exit.  ``Op.flops`` of
an early exit's own ops (pooling, batch norm) are 0 in the ResNet EENets, as the
authors' counter never sees them.  ``ModelSpec.param_count()`` counts the
parameters (added for models.py; trainable only unless asked otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

OP_KINDS = ("conv2d", "batchnorm2d", "relu", "add", "maxpool2d", "global_avgpool", "linear")
INIT_KINDS = ("kaiming_normal_fan_out", "uniform_fan_in", "ones", "zeros")


@dataclass(frozen=True)
class Param:
    """One named array of the model.

    ``trainable`` is False for batch-norm buffers (running_mean, running_var,
    num_batches_tracked).  ``init`` is how it is initialised:
    ``kaiming_normal_fan_out`` (std = sqrt(2 / fan_out), fan_out = K*k*k),
    ``uniform_fan_in`` (U(-b, b) with b = 1/sqrt(fan_in): PyTorch's default for
    Linear/Conv weights and biases), ``ones``, ``zeros``.
    """
    name: str
    shape: tuple
    init: str
    fan_in: int = 0
    fan_out: int = 0
    trainable: bool = True


@dataclass
class Op:
    kind: str
    inputs: tuple
    output: int
    attrs: dict = field(default_factory=dict)
    params: tuple = ()
    flops: int = 0          # the authors' counter's multiply-accumulates, per sample


@dataclass
class Exit:
    input: int                       # tensor id of the feature map this exit reads
    exit_type: str                   # "plain" | "pool" | "bnpool" (final exit: "pool")
    ops: list                        # ops from `input` to the heads' input tensor
    features: int                    # tensor id the two heads read
    confidence: Optional[Op]         # linear -> 1 (then sigmoid); None if absent
    classifier: Op                   # linear -> num_classes (then softmax)
    cost: float                      # c_i in the loss and in reported cost
    flops: int                       # authors' FLOPs of the network up to and including this exit
    num_params: int                  # trainable parameters up to and including this exit
    after_block: int = 0             # residual blocks preceding this exit


@dataclass
class ModelSpec:
    model: str
    num_classes: int
    input_shape: tuple               # (C, H, W)
    num_ee: int                      # early exits (the final exit is extra)
    distribution: str
    exit_type: str
    filters: int                     # starting filters (EENet-8: 2 or 4)
    tensors: list                    # per-sample shape of each tensor id; tensors[0] = input_shape
    stages: list                     # list of E+1 lists of Op
    exits: list                      # list of E+1 Exit (last is final)
    params: list                     # list of Param in state_dict order
    total_flops: int = 0             # FLOPs of the plain counterpart ResNet
    total_blocks: int = 0
    flop_costs: list = field(default_factory=list)  # measured FLOP ratios (differ from
                                                     # `cost` only for eenet8's fixed costs)

    @property
    def costs(self) -> list:
        """c_i of every exit, the last one 1.0."""
        return [e.cost for e in self.exits]

    def param_count(self, trainable_only: bool = True) -> int:
        """Number of scalars in ``params`` (trainable ones only by default; with
        ``trainable_only=False`` the batch-norm buffers count too)."""
        total = 0
        for p in self.params:
            if p.trainable or not trainable_only:
                n = 1
                for s in p.shape:
                    n *= s
                total += n
        return total
