"""Denominators of values that only a Relu reads.

Where relevance is provably 0 wherever a value y is <= 0 (vanishing.vanishing_nonpositive: every reader is a Relu or
a Clip from 0 whose output vanishes with it), the epsilon stabilizer stab(y) = y + eps * sgn0(y) may be taken as
relu(y) + eps, read from the model's own Relu: the same number wherever relevance flows (y > 0), eps > 0 elsewhere,
where R = 0 gives s = 0 as before. The stabilizer's share s * eps * sgn0(y) is then eps * s, summed per sample as
eps * sum(s): no Less, no Where, no elementwise product (and no sign: onnxruntime keeps Add in its blocked layout).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..builder import GraphBuilder
from ..tails import stabilizer_dot
from . import NodeView


def relu_of(view: NodeView, value: str, eps: float) -> Optional[str]:
    """The output of a Relu reading `value`, where the relevance of `value` is provably 0 wherever it is <= 0 and
    eps > 0; None elsewhere."""
    if eps <= 0 or value not in view.vanishing_nonpositive:
        return None
    for node in view.index.consumers.get(value, []):
        if node.op_type == "Relu" and node.domain in ("", "ai.onnx") and node.input[0] == value:
            return node.output[0]
    return None


def divide_positive(b: GraphBuilder, R: str, relu: str, eps: float) -> str:
    """s = R / (relu(y) + eps)."""
    return b.op("Div", [R, b.op("Add", [relu, b.const(eps)], "den")], "s")


def eps_share(b: GraphBuilder, s: str, eps: float, shape: Optional[tuple]) -> str:
    """The stabilizer share eps * sum(s) (N,): with the batch on axis 0 and a known channel count, the per-channel
    sums (N, C) recorded for the batched tails (tails.py: one MatMul for every layer), else summed and scaled here."""
    rank = None if shape is None else len(shape)
    if rank is not None and rank >= 3 and isinstance(shape[1], int) and b.layout.axis == 0 and not b.layout.merged:
        reduced = b.reduce("ReduceSum", s, list(range(2, rank)), keepdims=False, hint="s_red")
        return stabilizer_dot(b, reduced, np.full(shape[1], eps))
    return b.op("Mul", [b.per_sample_sum(s, "s_sum", rank), b.const(eps)], "stab")


def positive_normalize(b: GraphBuilder, view: NodeView, R: str, y: str, eps: float) -> Optional[tuple]:
    """(s = R / (relu(y) + eps), stabilizer share eps * sum(s) (N,)) for the Norm/Epsilon rule on a node's output y
    that a Relu alone reads (relu_of); None where that does not hold (the caller keeps b.normalize's form)."""
    relu = relu_of(view, y, eps)
    if relu is None:
        return None
    s = divide_positive(b, R, relu, eps)
    return s, eps_share(b, s, eps, view.shape(y))
