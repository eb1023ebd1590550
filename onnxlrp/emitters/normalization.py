"""Normalisations with their statistics held constant (AttnLRP; LXT's layer_norm_forward / rms_norm_forward):
LayerNormalization (opset 17), RMSNormalization (opset 23), InstanceNormalization, GroupNormalization.

With the standard deviation held constant, y = w * (x - mean(x)) / sigma + b is linear in x: the centering is a
linear map (I - 1/n) and 1/sigma, w are constant factors. Under the gate (or epsilon) rule with s = R / stab(y):

    g = w * s,   R_x = x * (g - mean(g)) / sigma,   R_b = b * s,   stabilizer share = s * eps * sgn0(y)

so sum R_x = sum (y - b) * s: the centering conserves, the bias b keeps its share (reported as the node's bias).
RMSNorm has no centering and no bias: R_x = y * s (= R at eps 0, the identity rule). The decomposed forms
(ReduceMean, Sub, Pow, Sqrt, Div / Reciprocal, Mul) are explained op by op: the Div or Mul by the statistic is a
product whose statistic factor is held constant (products.py), the centering's ReduceMean and Sub are sums.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..builder import GraphBuilder
from ..rules import Epsilon, Gate, Rule
from . import Emitted, NodeView, register

NORM_RULES = (Gate, Epsilon)


def _eps(rule: Rule) -> float:
    """The rule's stabilizer."""
    return float(getattr(rule, "epsilon", 0.0))


def _check_params(view: NodeView, first: int = 1) -> Optional[str]:
    """Known rank, and scale / bias inputs that are constants (or omitted)."""
    x = view.inputs[0]
    if view.shape(x) is None:
        return f"the rank of its input {x!r} is not known at compile time"
    for name in view.inputs[first:]:
        if name and view.const(name) is None:
            return f"its parameter {name!r} is not a constant"
    return None


def _axes_from(axis: int, rank: int) -> list:
    """Axes [axis, rank) of a normalisation over the trailing axes."""
    return list(range(axis % rank, rank))


def _param(view: NodeView, index: int, rank: int, lead: int) -> Optional[np.ndarray]:
    """A scale / bias input broadcast against the input of the given rank (left-padded), None if omitted."""
    name = view.inputs[index] if len(view.inputs) > index else ""
    value = view.const(name) if name else None
    if value is None:
        return None
    value = value.astype(np.float64)
    if lead:  # per-channel (C,) parameters of Instance/GroupNorm along axis 1
        return value.reshape((1, -1) + (1,) * (rank - 2))
    return value.reshape((1,) * (rank - value.ndim) + value.shape)


def _inv_std(b: GraphBuilder, x: str, axes: list, eps: float) -> str:
    """1 / sqrt(mean((x - mean x)^2) + eps) over axes (keepdims): the statistic the forward pass held."""
    centred = b.op("Sub", [x, b.reduce("ReduceMean", x, axes, keepdims=True, hint="mean")], "centred")
    var = b.reduce("ReduceMean", b.op("Mul", [centred, centred], "sq"), axes, keepdims=True, hint="var")
    return b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps)], "var_eps")], "std")], "inv_std")


def _centred_backward(b: GraphBuilder, x: str, g: str, axes: list, inv: str) -> str:
    """R_x = x * (g - mean(g)) * inv_std over the normalised axes."""
    g_c = b.op("Sub", [g, b.reduce("ReduceMean", g, axes, keepdims=True, hint="g_mean")], "g_centred")
    return b.op("Mul", [x, b.op("Mul", [g_c, inv], "JT_s")], "R_x")


def _bias_row(b: GraphBuilder, s: str, bias: Optional[np.ndarray], rank: int, keep: list) -> Optional[str]:
    """R_b = b * s summed to (N, units), units = the bias's own axes `keep` (flattened)."""
    if bias is None or not np.any(bias):
        return None
    full = b.op("Mul", [s, b.const(bias, hint="beta")], "r_beta")
    axes = b.batch_axes_but(rank, keep)
    reduced = b.reduce("ReduceSum", full, axes, keepdims=True, hint="r_beta_sum") if axes else full
    return b.to_rows(reduced, rank, "R_beta")


def _stab(b: GraphBuilder, share: str, rank: int) -> str:
    """(N,) stabilizer share."""
    return b.per_sample_sum(share, "stab_sum", rank)


@register("LayerNormalization", group="normalization", rules=NORM_RULES, check=_check_params)
def emit_layer_norm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """LayerNormalization with sigma held constant: g = w * s, R_x = x * (g - mean g) / sigma, R_b = b * s."""
    x, y = view.inputs[0], view.outputs[0]
    rank = len(view.shape(x))
    axes = _axes_from(view.attr("axis", -1), rank)
    s, share = b.normalize(R[0], y, _eps(rule))
    w = _param(view, 1, rank, 0)
    g = b.op("Mul", [s, b.const(w, hint="gamma")], "g") if w is not None else s
    stats = view.outputs[2] if len(view.outputs) > 2 and view.outputs[2] else ""  # see layer_norm_statistics
    inv = stats or _inv_std(b, x, axes, float(view.attr("epsilon", 1e-5)))
    R_x = _centred_backward(b, x, g, axes, inv)
    R_b = _bias_row(b, s, _param(view, 2, rank, 0), rank, axes)
    return Emitted([R_x] + [None] * (len(view.inputs) - 1), R_b, _stab(b, share, rank))


@register("RMSNormalization", group="normalization", rules=NORM_RULES, check=_check_params)
def emit_rms_norm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """RMSNormalization with the root mean square held constant: R_x = y * s (= R at eps 0, no bias)."""
    eps = _eps(rule)
    if eps == 0.0:
        return Emitted([R[0]] + [None] * (len(view.inputs) - 1))
    y = view.outputs[0]
    s, share = b.normalize(R[0], y, eps)
    rank = len(view.shape(y))
    return Emitted([b.op("Mul", [y, s], "R_x")] + [None] * (len(view.inputs) - 1), None, _stab(b, share, rank))


def _check_channels(view: NodeView) -> Optional[str]:
    """Instance/GroupNormalization: constant parameters, a static channel axis and rank >= 3."""
    problem = _check_params(view)
    if problem:
        return problem
    shape = view.shape(view.inputs[0])
    if len(shape) < 3:
        return f"its input {view.inputs[0]!r} has rank {len(shape)}, expected (N, C, ...)"
    if shape[1] is None:
        return f"the channel axis of {view.inputs[0]!r} is not known at compile time"
    return None


@register("InstanceNormalization", group="normalization", rules=NORM_RULES, check=_check_channels)
def emit_instance_norm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """InstanceNormalization (per sample and channel over the spatial axes), sigma held constant."""
    x, y = view.inputs[0], view.outputs[0]
    rank = len(view.shape(x))
    axes = list(range(2, rank))
    s, share = b.normalize(R[0], y, _eps(rule))
    g = b.op("Mul", [s, b.const(_param(view, 1, rank, 1), hint="gamma")], "g")
    R_x = _centred_backward(b, x, g, axes, _inv_std(b, x, axes, float(view.attr("epsilon", 1e-5))))
    R_b = _bias_row(b, s, _param(view, 2, rank, 1), rank, [1])
    return Emitted([R_x, None, None], R_b, _stab(b, share, rank))


def _group_params(view: NodeView, channels: int, rank: int) -> tuple:
    """Scale and bias per channel (opset 21; opset 18's per-group form is deprecated and fails the checker),
    shaped (1, C, 1, ...)."""
    return tuple(view.const(view.inputs[i]).astype(np.float64).reshape((1, channels) + (1,) * (rank - 2))
                 for i in (1, 2))


def _check_group_norm(view: NodeView) -> Optional[str]:
    """GroupNormalization: as Instance, and channels divisible by num_groups."""
    problem = _check_channels(view)
    if problem:
        return problem
    channels, groups = view.shape(view.inputs[0])[1], int(view.attr("num_groups"))
    if channels % groups:
        return f"{channels} channels are not divisible into {groups} groups"
    return None


@register("GroupNormalization", group="normalization", rules=NORM_RULES, check=_check_group_norm)
def emit_group_norm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """GroupNormalization: the centering and sigma per (sample, group), sigma held constant."""
    x, y = view.inputs[0], view.outputs[0]
    shape = view.shape(x)
    rank, channels, groups = len(shape), shape[1], int(view.attr("num_groups"))
    w, bias = _group_params(view, channels, rank)
    s, share = b.normalize(R[0], y, _eps(rule))
    g = b.op("Mul", [s, b.const(w, hint="gamma")], "g")
    grouped = b.ints([0, groups, -1])
    xg = b.op("Reshape", [x, grouped], "x_groups")
    gg = b.op("Reshape", [g, grouped], "g_groups")
    inv = _inv_std(b, xg, [2], float(view.attr("epsilon", 1e-5)))
    R_xg = _centred_backward(b, xg, gg, [2], inv)
    R_x = b.op("Reshape", [R_xg, b.op("Shape", [x], "x_shape")], "R_x")
    R_b = _bias_row(b, s, bias, rank, [1])
    return Emitted([R_x, None, None], R_b, _stab(b, share, rank))

