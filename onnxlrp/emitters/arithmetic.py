"""Sums and affine arithmetic: Add/Sub of an activation and a constant (linear, any rule), sums of activations
(Add, Sub, Sum: Norm rule, R_i = x_i * J_i^T (R / stab(y)), broadcasting allowed), and Add/Sub of an activation and
a run-time value without relevance (an attention mask, a position embedding gathered at run time), which absorbs
its share like a bias. Mul/Div (constants, gates, products) live in products.py, the one product emitter."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..builder import GraphBuilder
from ..rules import LINEAR_RULES, Epsilon, Norm, Rule
from . import Emitted, NodeView, register
from .linear import emit_affine
from .positive import positive_normalize
from .shape import unbroadcast


def _constant_operand(view: NodeView) -> bool:
    """True when exactly one operand carries relevance and the other is a constant."""
    data = [n for n in view.inputs if view.is_relevant(n)]
    consts = [n for n in view.inputs if view.const(n) is not None]
    return len(view.inputs) == 2 and len(data) == 1 and len(consts) == 1


def runtime_offset(view: NodeView) -> Optional[int]:
    """Position of the operand of a binary Add/Sub that is computed at run time but carries no relevance (an offset
    computed from shapes, such as a detector's anchor grid) when the other operand carries it; None otherwise."""
    if len(view.inputs) != 2:
        return None
    relevant = [view.is_relevant(n) for n in view.inputs]
    if relevant.count(True) != 1:
        return None
    k = relevant.index(False)
    return k if view.const(view.inputs[k]) is None else None


def _group(view: NodeView) -> str:
    """'affine' for an activation with a constant or a run-time offset, 'sum' for a sum of activations."""
    return "affine" if _constant_operand(view) or runtime_offset(view) is not None else "sum"


def _check_add(view: NodeView) -> Optional[str]:
    """Add/Sub: a constant operand, or activations (and at most one run-time offset) of known ranks (they may
    broadcast)."""
    if _constant_operand(view):
        return _check_broadcast(view)
    silent = [n for n in view.inputs if not view.is_relevant(n)]
    if silent and runtime_offset(view) is None:
        from ..fold import why_not_constant
        return (f"its operand {silent[0]!r} is computed at run time but carries no relevance "
                f"({why_not_constant(view.index, silent[0])})")
    return _check_ranks(view)


def _check_ranks(view: NodeView) -> Optional[str]:
    """Operands of a sum of activations need a known rank (to sum relevance back over broadcast axes)."""
    for name in list(view.inputs) + list(view.outputs):
        if view.shape(name) is None:
            return f"the rank of {name!r} is not known at compile time"
    return None


def _check_broadcast(view: NodeView) -> Optional[str]:
    """The constant must broadcast to the activation's shape without enlarging it."""
    data = next(n for n in view.inputs if view.is_relevant(n))
    const = next(n for n in view.inputs if view.const(n) is not None)
    x_shape, c_shape = view.shape(data), view.const(const).shape
    if x_shape is None:
        return f"the rank of {data!r} is unknown"
    if len(c_shape) > len(x_shape):
        return "the constant operand has a higher rank than the activation"
    for dx, dc in zip(reversed(x_shape), reversed(c_shape)):
        if dc != 1 and dx is not None and dx != dc:
            return "the constant operand broadcasts the activation to a larger shape"
    return None


def _sum_norm(b: GraphBuilder, view: NodeView, rule: Rule, R: list, signs: list) -> Emitted:
    """Norm over a sum y = sum_i sign_i x_i: s = R / stab(y), R_i = sign_i * x_i * J_i^T s (J_i^T sums s over the
    axes x_i was broadcast along); stabilizer share s * eps * sgn0(y)."""
    eps = rule.groups()[0].eps
    y = view.outputs[0]
    out_shape = view.shape(y)
    positive = positive_normalize(b, view, R[0], y, eps)  # a Relu alone reads y (ResNet's residual sums)
    if positive is not None:
        s, stab = positive
    else:
        s, share = b.normalize(R[0], y, eps)
        stab = b.per_sample_sum(share, "stab_sum", len(out_shape))
    rel = []
    for name, sign in zip(view.inputs, signs):
        x_shape = view.shape(name)
        s_x = s if x_shape == out_shape else unbroadcast(b, s, name, x_shape, len(out_shape))
        r = b.op("Mul", [name, s_x], "r_in")
        rel.append(r if sign == 1 else b.op("Neg", [r], "r_in_neg"))
    return Emitted(rel, None, stab)


def _norm_rules() -> tuple:
    """Rules a sum accepts: Norm and Epsilon (the same form)."""
    return (Norm, Epsilon)


def absorbed_row(b: GraphBuilder, value: str, rank: int, hint: str = "absorbed") -> str:
    """(N, ...) relevance a node keeps -> its (N, units) report row: summed over every axis but the batch axis and
    the last one (rank 1: one unit)."""
    if rank == 1:
        return b.unsqueeze(b.per_sample_sum(value, hint, 1), [1], hint)
    axes = b.batch_axes_but(rank, (rank - 1,))
    if b.layout.axis == rank - 1:  # the batch is the last axis: one unit
        axes = b.batch_axes_but(rank)
    reduced = b.reduce("ReduceSum", value, axes, keepdims=True, hint=hint) if axes else value
    return b.to_rows(reduced, rank, hint)


def _absorbing_sum(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """y = x +- c with c computed at run time without relevance: R_x = x * J^T (R / stab(y)) as for a bias, and
    c's share R - R_x - stabilizer share (= +-c * s, computed so it stays finite where c is -inf) reported as the
    node's bias, summed to (N, last axis) rows as every absorbed share is (absorbed_row)."""
    eps = rule.groups()[0].eps
    y = view.outputs[0]
    s, share = b.normalize(R[0], y, eps)
    x = next(n for n in view.inputs if view.is_relevant(n))
    sign = -1 if view.op_type == "Sub" and x == view.inputs[1] else 1
    out_shape = view.shape(y)
    r_full = b.op("Mul", [x, s], "r_in")
    if sign == -1:
        r_full = b.op("Neg", [r_full], "r_in_neg")
    kept = b.op("Sub", [b.op("Sub", [R[0], r_full], "R_rest"), share], "R_absorbed")
    x_shape = view.shape(x)
    r_x = r_full if tuple(x_shape) == tuple(out_shape) else unbroadcast(b, r_full, x, x_shape, len(out_shape))
    rel = [r_x if n == x else None for n in view.inputs]
    return Emitted(rel, absorbed_row(b, kept, len(out_shape)), b.per_sample_sum(share, "stab_sum", len(out_shape)))


def _add_rules(view: NodeView) -> tuple:
    """Any linear rule with a constant operand; Norm/Epsilon for a sum of activations or a run-time offset."""
    return LINEAR_RULES if _constant_operand(view) else _norm_rules()


@register(("Add", "Sub"), group=_group, rules=_add_rules, check=_check_add)
def emit_add(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Add/Sub of a constant: affine linear node; of two activations: the Norm rule; of an activation and a
    run-time offset without relevance (a detector's anchor grid, an attention mask): the epsilon rule with the
    offset as the bias, R_x = x * s, R_offset = offset * s (summed over all axes but the batch and the last)."""
    if _constant_operand(view):
        return emit_affine(b, view, rule, R)
    if runtime_offset(view) is not None:
        return _absorbing_sum(b, view, rule, R)
    signs = [1, -1] if view.op_type == "Sub" else [1, 1]
    return _sum_norm(b, view, rule, R, signs)


def _check_sum(view: NodeView) -> Optional[str]:
    """Sum: every operand an activation of known rank (they may broadcast)."""
    if any(not view.is_relevant(n) for n in view.inputs):
        return "an operand carries no relevance (constants in a Sum are not supported)"
    return _check_ranks(view)


@register("Sum", group="sum", rules=_norm_rules(), check=_check_sum)
def emit_sum(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """n-ary Sum of activations under the Norm rule."""
    return _sum_norm(b, view, rule, R, [1] * len(view.inputs))


def check_constant_scale(view: NodeView) -> Optional[str]:
    """Mul/Div by a constant: the constant must broadcast to the activation's shape without enlarging it."""
    if view.op_type == "Div" and not view.is_relevant(view.inputs[0]):
        return "dividing a constant by an activation is not linear"
    return _check_broadcast(view)


# ---- gates ----------------------------------------------------------------------------------------------------
# One recogniser for every spelling of a gate that exporters write: the ops themselves (Sigmoid, HardSigmoid), a
# hard-sigmoid as clip(a x + b, 0, c) (paddle2onnx: Clip(x + 3, 0, 6), followed by / 6 after the product; tf2onnx:
# Clip(x / 6 + 0.5, 0, 1), or ReLU6 as Min(Relu(.), 6) / Max(Min(., 6), 0)), a sigmoid written out as
# 1 / (1 + exp(-x)) (Reciprocal or Div), and GELU's 1 + erf(.) / 1 + tanh(.).
GATES = ("Sigmoid", "HardSigmoid")
GELU_GATES = ("Erf", "Tanh")  # 1 + erf(x / sqrt 2), 1 + tanh(...): a gate once a constant was added
SHAPE_ONLY = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast", "Transpose", "Tile")
GATE_DEPTH = 16


def _through_constants(view: NodeView, name: str, depth: int = 0) -> tuple:
    """Follow `name` back through shape-only ops and arithmetic with one constant operand: (the value reached,
    whether an Add/Sub of a constant was passed)."""
    shifted = False
    while depth <= GATE_DEPTH:
        node = view.index.producer.get(name)
        if node is None:
            break
        if node.op_type in SHAPE_ONLY:
            name, depth = node.input[0], depth + 1
            continue
        data = _with_one_constant(view, node)
        if data is None:
            break
        shifted = shifted or node.op_type in ("Add", "Sub")
        name, depth = data, depth + 1
    return name, shifted


def _with_one_constant(view: NodeView, node) -> Optional[str]:
    """The data operand of an Add/Sub/Mul/Div whose other operand is a constant, else None."""
    if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2:
        return None
    consts = [view.const(i) is not None for i in node.input]
    if consts.count(True) != 1:
        return None
    return node.input[consts.index(False)]


def _scalar(view: NodeView, name: str) -> Optional[float]:
    """The value of a constant holding one number (any shape of size 1), None otherwise."""
    value = view.const(name) if name else None
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _clip_bounds(view: NodeView, node) -> tuple:
    """(min, max) of a Clip node (attributes below opset 11, constant inputs from 11); None where unbounded/unknown."""
    low = node.input[1] if len(node.input) > 1 else ""
    high = node.input[2] if len(node.input) > 2 else ""
    attrs = {a.name: a.f for a in node.attribute if a.name in ("min", "max")}
    lo = _scalar(view, low) if low else attrs.get("min")
    hi = _scalar(view, high) if high else attrs.get("max")
    return lo, hi


def _bounded_below_zero(view: NodeView, node) -> Optional[str]:
    """The input of a ReLU6-like node bounded to [0, c]: Clip(u, 0, c), Min(Relu(u), c), Min(Max(u, 0), c),
    Max(Min(u, c), 0) (c finite); None for anything else."""
    if node.op_type == "Clip":
        lo, hi = _clip_bounds(view, node)
        ok = lo is not None and hi is not None and lo >= 0 and np.isfinite(hi)
        return node.input[0] if ok else None
    if node.op_type not in ("Min", "Max") or len(node.input) != 2:
        return None
    data = _with_one_constant_any(view, node)
    if data is None:
        return None
    value, inner_name = data
    inner = view.index.producer.get(inner_name)
    if node.op_type == "Min" and np.isfinite(value):
        if inner is not None and inner.op_type == "Relu":
            return inner.input[0]
        if inner is not None and inner.op_type == "Max":
            lower = _with_one_constant_any(view, inner)
            return lower[1] if lower is not None and lower[0] >= 0 else None
    if node.op_type == "Max" and value >= 0 and inner is not None and inner.op_type == "Min":
        upper = _with_one_constant_any(view, inner)
        return upper[1] if upper is not None and np.isfinite(upper[0]) else None
    return None


def _with_one_constant_any(view: NodeView, node) -> Optional[tuple]:
    """(the scalar constant, the data operand) of a binary node with one scalar constant operand, else None."""
    if len(node.input) != 2:
        return None
    values = [_scalar(view, i) for i in node.input]
    if (values[0] is None) == (values[1] is None):
        return None
    k = 0 if values[0] is not None else 1
    return values[k], node.input[1 - k]


def one_plus_exp_neg(view: NodeView, name: str) -> bool:
    """True for 1 + exp(-u) (the denominator of a sigmoid written out): Add(Exp(Neg(u) or -1 * u), 1)."""
    node = view.index.producer.get(name)
    if node is None or node.op_type != "Add" or len(node.input) != 2:
        return False
    found = _with_one_constant_any(view, node)
    if found is None or found[0] != 1.0:
        return False
    exp = view.index.producer.get(found[1])
    if exp is None or exp.op_type != "Exp":
        return False
    neg = view.index.producer.get(exp.input[0])
    if neg is None:
        return False
    if neg.op_type == "Neg":
        return True
    scaled = _with_one_constant_any(view, neg) if neg.op_type == "Mul" else None
    return scaled is not None and scaled[0] < 0


def gate_of(view: NodeView, name: str, depth: int = 0) -> Optional[str]:
    """The op that makes `name` a gate, None if it is not one. Gates, followed back through shape-only ops and
    arithmetic with constants: Sigmoid, HardSigmoid, a hard-sigmoid written as a shifted clip (Clip / Min / Max of
    a u + b to [0, c]), a sigmoid written out (1 / (1 + exp(-u))), GELU's Erf / Tanh once a constant was added."""
    shifted = False
    while depth <= GATE_DEPTH:
        node = view.index.producer.get(name)
        if node is None:
            return None
        kind = _gate_node(view, node, shifted)
        if kind is not None:
            return kind
        if node.op_type in SHAPE_ONLY:
            name, depth = node.input[0], depth + 1
            continue
        data = _with_one_constant(view, node)
        if data is None:
            return None
        shifted = shifted or node.op_type in ("Add", "Sub")
        name, depth = data, depth + 1
    return None


def _gate_node(view: NodeView, node, shifted: bool) -> Optional[str]:
    """The gate kind of one node (see gate_of), None if the node itself is no gate."""
    if node.op_type in GATES or (node.op_type in GELU_GATES and shifted):
        return node.op_type
    inner = _bounded_below_zero(view, node)
    if inner is not None and _through_constants(view, inner)[1]:
        return "HardSigmoid"  # clip(a u + b, 0, c): a hard-sigmoid up to the constant scale c
    if node.op_type == "Reciprocal" and one_plus_exp_neg(view, node.input[0]):
        return "Sigmoid"
    numerator = _scalar(view, node.input[0]) if node.op_type == "Div" else None
    if numerator is not None and numerator > 0 and one_plus_exp_neg(view, node.input[1]):
        return "Sigmoid"
    return None
