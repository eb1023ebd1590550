"""Sums and affine arithmetic: Add/Sub/Mul/Div of an activation and a constant (linear, any rule), and sums of
activations (Add, Sub, Sum: Norm rule, R_i = x_i * R / stab(y))."""
from __future__ import annotations

from typing import Optional

from ..builder import GraphBuilder
from ..rules import LINEAR_RULES, Rule
from . import Emitted, NodeView, register
from .linear import emit_affine


def _constant_operand(view: NodeView) -> bool:
    """True when exactly one operand carries relevance and the other is a constant."""
    data = [n for n in view.inputs if view.is_relevant(n)]
    consts = [n for n in view.inputs if view.const(n) is not None]
    return len(view.inputs) == 2 and len(data) == 1 and len(consts) == 1


def _group(view: NodeView) -> str:
    """'affine' for an activation with a constant, 'sum' for a sum of activations."""
    return "affine" if _constant_operand(view) else "sum"


def _shape_known_equal(view: NodeView) -> bool:
    """True when every relevant operand has the output's static shape (no broadcasting of activations)."""
    out = view.shape(view.outputs[0])
    return out is not None and all(view.shape(n) == out for n in view.inputs if view.is_relevant(n))


def _check_add(view: NodeView) -> Optional[str]:
    """Add/Sub: a constant operand, or activations of the output's shape."""
    if _constant_operand(view):
        return _check_broadcast(view)
    if any(not view.is_relevant(n) for n in view.inputs):
        return "one operand is computed at run time but carries no relevance (fold it to a constant first)"
    if not _shape_known_equal(view):
        return "its operands broadcast against each other (shapes must match statically)"
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
    """Norm over a sum y = sum_i sign_i x_i: s = R / stab(y), R_i = sign_i * x_i * s; stabilizer share s*eps*sgn0."""
    eps = rule.groups()[0].eps
    y = view.outputs[0]
    s, share = b.normalize(R[0], y, eps)
    rel = []
    for name, sign in zip(view.inputs, signs):
        r = b.op("Mul", [name, s], "r_in")
        rel.append(r if sign == 1 else b.op("Neg", [r], "r_in_neg"))
    stab = b.per_sample_sum(share, "stab_sum")
    return Emitted(rel, None, stab)


def _norm_rules() -> tuple:
    """Rules a sum accepts: Norm and Epsilon (the same form)."""
    from ..rules import Epsilon, Norm
    return (Norm, Epsilon)


def _add_rules(view: NodeView) -> tuple:
    """Any linear rule with a constant operand; Norm/Epsilon for a sum of activations."""
    return LINEAR_RULES if _constant_operand(view) else _norm_rules()


@register(("Add", "Sub"), group=_group, rules=_add_rules, check=_check_add)
def emit_add(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Add/Sub of a constant: affine linear node; of two activations: the Norm rule."""
    if _constant_operand(view):
        return emit_affine(b, view, rule, R)
    signs = [1, -1] if view.op_type == "Sub" else [1, 1]
    return _sum_norm(b, view, rule, R, signs)


def _check_sum(view: NodeView) -> Optional[str]:
    """Sum: every operand an activation of the output's shape."""
    if any(not view.is_relevant(n) for n in view.inputs):
        return "an operand carries no relevance (constants in a Sum are not supported)"
    return None if _shape_known_equal(view) else "its operands broadcast against each other"


@register("Sum", group="sum", rules=_norm_rules(), check=_check_sum)
def emit_sum(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """n-ary Sum of activations under the Norm rule."""
    return _sum_norm(b, view, rule, R, [1] * len(view.inputs))


def _check_scale(view: NodeView) -> Optional[str]:
    """Mul/Div: by a constant only (a product of two activations is not linear)."""
    if view.op_type == "Div" and not view.is_relevant(view.inputs[0]):
        return "dividing a constant by an activation is not linear"
    if not _constant_operand(view):
        return "both operands carry data (a product of two activations is not linear)"
    return _check_broadcast(view)


@register(("Mul", "Div"), group="affine", rules=LINEAR_RULES, check=_check_scale)
def emit_scale(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Multiplication or division by a constant as an elementwise linear node."""
    return emit_affine(b, view, rule, R)
