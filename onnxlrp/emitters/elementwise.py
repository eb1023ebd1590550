"""Elementwise activations and value-preserving ops: relevance passes through unchanged, R_in = R_out."""
from __future__ import annotations

from ..builder import GraphBuilder
from ..rules import Pass, Rule
from . import Emitted, NodeView, register

ACTIVATIONS = (
    "Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Mish", "Swish", "ThresholdedRelu", "Erf", "Abs", "Neg", "Sqrt", "Exp", "Log",
)
PASSTHROUGH = ("Identity", "Dropout", "Cast", "CastLike")


def _pass_first(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = R_y for the first input; constant parameters (slopes, clip bounds, ratios) get none."""
    return Emitted([R[0]] + [None] * (len(view.inputs) - 1))


register(ACTIVATIONS, group="activation", rules=(Pass,))(_pass_first)
register(PASSTHROUGH, group="shape", rules=(Pass,))(_pass_first)
