"""Sums and affine arithmetic: Add/Sub/Mul/Div of an activation and a constant (linear, any rule), sums of
activations (Add, Sub, Sum: Norm rule, R_i = x_i * J_i^T (R / stab(y)), broadcasting allowed), and a signal times
a gate (Mul: all relevance to the signal)."""
from __future__ import annotations

from typing import Optional

from ..builder import GraphBuilder
from ..rules import LINEAR_RULES, Pass, Rule
from . import Emitted, NodeView, register
from .linear import emit_affine
from .shape import unbroadcast


def _constant_operand(view: NodeView) -> bool:
    """True when exactly one operand carries relevance and the other is a constant."""
    data = [n for n in view.inputs if view.is_relevant(n)]
    consts = [n for n in view.inputs if view.const(n) is not None]
    return len(view.inputs) == 2 and len(data) == 1 and len(consts) == 1


def _group(view: NodeView) -> str:
    """'affine' for an activation with a constant, 'sum' for a sum of activations."""
    return "affine" if _constant_operand(view) else "sum"


def _check_add(view: NodeView) -> Optional[str]:
    """Add/Sub: a constant operand, or activations whose ranks are known (they may broadcast)."""
    if _constant_operand(view):
        return _check_broadcast(view)
    silent = [n for n in view.inputs if not view.is_relevant(n)]
    if silent:
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
    s, share = b.normalize(R[0], y, eps)
    out_shape = view.shape(y)
    rel = []
    for name, sign in zip(view.inputs, signs):
        x_shape = view.shape(name)
        s_x = s if x_shape == out_shape else unbroadcast(b, s, name, x_shape, len(out_shape))
        r = b.op("Mul", [name, s_x], "r_in")
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
    """Sum: every operand an activation of known rank (they may broadcast)."""
    if any(not view.is_relevant(n) for n in view.inputs):
        return "an operand carries no relevance (constants in a Sum are not supported)"
    return _check_ranks(view)


@register("Sum", group="sum", rules=_norm_rules(), check=_check_sum)
def emit_sum(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """n-ary Sum of activations under the Norm rule."""
    return _sum_norm(b, view, rule, R, [1] * len(view.inputs))


def _check_scale(view: NodeView) -> Optional[str]:
    """Mul/Div: by a constant, or (Mul) a signal times a gate (a product of two other activations is not linear)."""
    if view.op_type == "Div" and not view.is_relevant(view.inputs[0]):
        return "dividing a constant by an activation is not linear"
    if view.op_type == "Mul" and not _constant_operand(view):
        return _check_gate(view)
    if not _constant_operand(view):
        return "both operands carry data (a product of two activations is not linear)"
    return _check_broadcast(view)


# ---- gates ----------------------------------------------------------------------------------------------------
GATES = ("Sigmoid", "HardSigmoid")
GELU_GATES = ("Erf", "Tanh")  # 1 + erf(x / sqrt 2), 1 + tanh(...): a gate once a constant was added
SHAPE_ONLY = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast", "Transpose", "Tile")


def gate_of(view: NodeView, name: str, shifted: bool = False, depth: int = 0) -> Optional[str]:
    """The op that makes `name` a gate (Sigmoid, HardSigmoid, or the Erf / Tanh of 1 + erf(.)), followed back
    through shape-only ops and arithmetic with constants; None if `name` is not a gate."""
    node = view.index.producer.get(name)
    if node is None or depth > 16:
        return None
    if node.op_type in GATES or (node.op_type in GELU_GATES and shifted):
        return node.op_type
    if node.op_type in SHAPE_ONLY:
        return gate_of(view, node.input[0], shifted, depth + 1)
    if node.op_type in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:
        consts = [view.const(i) is not None for i in node.input]
        if consts.count(True) == 1:
            data = node.input[consts.index(False)]
            return gate_of(view, data, shifted or node.op_type in ("Add", "Sub"), depth + 1)
    return None


def gate_split(view: NodeView) -> Optional[tuple]:
    """(signal position, gate op) of a Mul of a signal and a gate, None if it is not one."""
    if view.op_type != "Mul" or len(view.inputs) != 2 or _constant_operand(view):
        return None
    gates = [gate_of(view, n) for n in view.inputs]
    if (gates[0] is None) == (gates[1] is None):
        return None
    signal = 0 if gates[0] is None else 1
    return signal, gates[1 - signal]


def _check_gate(view: NodeView) -> Optional[str]:
    """A Mul of two activations is explained only when one of them is a gate."""
    if gate_split(view) is not None:
        return None
    if all(gate_of(view, n) for n in view.inputs):
        return "both operands are gates (Sigmoid / HardSigmoid); no operand is the signal"
    return "both operands carry data (a product of two activations is not linear; only signal * gate is)"


def _mul_group(view: NodeView) -> str:
    """'activation' for signal * gate (swish, hard-swish, GELU, squeeze-excitation), else 'affine'."""
    return "activation" if gate_split(view) is not None else "affine"


def _mul_rules(view: NodeView) -> tuple:
    """Pass for signal * gate, any linear rule for a product with a constant."""
    return (Pass,) if gate_split(view) is not None else LINEAR_RULES


def _gate_branch(view: NodeView) -> set:
    """The gate operand of signal * gate: its branch receives no relevance (and needs no rule)."""
    split = gate_split(view)
    return {view.inputs[1 - split[0]]} if split is not None else set()


@register("Mul", group=_mul_group, rules=_mul_rules, check=_check_scale, silent=_gate_branch)
def emit_mul(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Mul by a constant: an elementwise linear node. Signal * gate (x * sigmoid(.), x * hardsigmoid(.), GELU's
    x * (1 + erf(x / sqrt 2)) / 2, a squeeze-excitation scale): the gate is taken as a constant weight on the
    signal, so all relevance goes to the signal, R_signal = R_y (as Pass), and none into the gate's branch. This
    keeps the conv/dense rules in charge of the features and treats gating like an activation (Zennit's choice
    for activations); the gate branch's nodes receive no relevance."""
    split = gate_split(view)
    if split is None:
        return emit_affine(b, view, rule, R)
    signal, _ = split
    rel = [None, None]
    name = view.inputs[signal]
    if view.is_relevant(name):
        x_shape, out_shape = view.shape(name), view.shape(view.outputs[0])
        broadcast = x_shape is not None and out_shape is not None and tuple(x_shape) != tuple(out_shape)
        rel[signal] = unbroadcast(b, R[0], name, x_shape, len(out_shape)) if broadcast else R[0]
    return Emitted(rel)


@register("Div", group="affine", rules=LINEAR_RULES, check=_check_scale)
def emit_div(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Division by a constant as an elementwise linear node."""
    return emit_affine(b, view, rule, R)
