"""Sums and affine arithmetic: Add/Sub of an activation and a constant (linear, any rule), sums of activations
(Add, Sub, Sum: Norm rule, R_i = x_i * J_i^T (R / stab(y)), broadcasting allowed), and Add/Sub of an activation and
a run-time value without relevance (an attention mask, a position embedding gathered at run time), which absorbs
its share like a bias. Mul/Div (constants, gates, products) live in products.py, the one product emitter."""
from __future__ import annotations

from typing import Optional

from ..builder import GraphBuilder
from ..rules import LINEAR_RULES, Epsilon, Norm, Rule
from . import Emitted, NodeView, register
from .linear import emit_affine
from .shape import unbroadcast


def _constant_operand(view: NodeView) -> bool:
    """True when exactly one operand carries relevance and the other is a constant."""
    data = [n for n in view.inputs if view.is_relevant(n)]
    consts = [n for n in view.inputs if view.const(n) is not None]
    return len(view.inputs) == 2 and len(data) == 1 and len(consts) == 1


def _group(view: NodeView) -> str:
    """'affine' for an activation with a constant or a run-time addend, 'sum' for a sum of activations."""
    return "affine" if _constant_operand(view) or _runtime_addend(view) else "sum"


def _runtime_addend(view: NodeView) -> bool:
    """True when one operand carries relevance and the other is computed at run time without any (a mask)."""
    return len(view.inputs) == 2 and [view.is_relevant(n) for n in view.inputs].count(True) == 1 and \
        not any(view.const(n) is not None for n in view.inputs)


def _check_add(view: NodeView) -> Optional[str]:
    """Add/Sub: a constant operand, or operands whose ranks are known (they may broadcast)."""
    if _constant_operand(view):
        return _check_broadcast(view)
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
    s, share = b.normalize(R[0], y, eps)
    out_shape = view.shape(y)
    rel = []
    for name, sign in zip(view.inputs, signs):
        x_shape = view.shape(name)
        s_x = s if x_shape == out_shape else unbroadcast(b, s, name, x_shape, len(out_shape))
        r = b.op("Mul", [name, s_x], "r_in")
        rel.append(r if sign == 1 else b.op("Neg", [r], "r_in_neg"))
    stab = b.per_sample_sum(share, "stab_sum", len(out_shape))
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
    c's share R - R_x - stabilizer share (computed so, it stays finite where c is -inf) reported as absorbed."""
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
    """Any linear rule with a constant operand; Epsilon/Norm for a run-time addend and a sum of activations."""
    if _constant_operand(view):
        return LINEAR_RULES
    return (Epsilon, Norm) if _runtime_addend(view) else _norm_rules()


@register(("Add", "Sub"), group=_group, rules=_add_rules, check=_check_add)
def emit_add(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Add/Sub of a constant: affine linear node; of a run-time value without relevance: absorbed like a bias;
    of two activations: the Norm rule."""
    if _constant_operand(view):
        return emit_affine(b, view, rule, R)
    if _runtime_addend(view):
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
