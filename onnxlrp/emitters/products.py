"""Products of two run-time tensors: elementwise Mul (and Div by a run-time divisor) and MatMul with two run-time
operands, the one emitter for attention's MatMuls, gated MLPs, signal * gate, normalisation statistics and the
CNN products (x * y, GRN, selective-kernel attention, gMLP).

Rules (z = a * b or z = a @ b, s = R / stab(z)):
- uniform (AttnLRP Prop. 3.3): each factor gets half, R_a = a * J_a^T s / 2, R_b = b * J_b^T s / 2; for an
  elementwise product at eps = 0 that is R_a = R_b = R / 2.
- gate: the factor `held_factor` names is a constant; the product is linear in the other, R_x = x * J_x^T s (an
  elementwise product at eps = 0: R_x = R). CP-LRP is this rule on the attention weights and a gated MLP's gate.

`held_factor` is the one recogniser of which factor a product holds constant. Its kinds, in order:
  data       the factor carries no relevance (a constant that is not a plain initializer, a scale computed from
             shapes, a mask, rotary cos/sin computed from positions): the product is linear in the other factor;
  gate       a sigmoid-type gate in any spelling arithmetic.gate_of knows (Sigmoid, HardSigmoid, a clip of a shifted
             value, 1 / (1 + exp(-u)), 1 + erf, 1 + tanh: swish, hard-swish, GELU, squeeze-excitation), or the
             divisor 1 + exp(-u) of a swish written x / (1 + exp(-u));
  statistic  a normalisation statistic (1 / sqrt(mean(x^2) + eps) and the like: decomposed LayerNorm, RMSNorm;
             arithmetic of two statistics: GRN's ||x|| / (mean_C ||x|| + eps));
  attention  the output of a Softmax (the attention weights of A @ v);
  activation the output of a non-linear activation when the other factor is not one (a gated MLP's gate).
The first two kinds are always held constant (group 'affine'/'dense' and 'activation'), a statistic under the
'normalization' group; 'attention' and 'activation' only under the gate rule (group 'product'). To teach it a new
spelling, extend the predicate of its kind in RECOGNISERS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..builder import GraphBuilder
from ..rules import LINEAR_RULES, Epsilon, Gate, Norm, Pass, Rule, Uniform
from . import Emitted, NodeView, register
from .arithmetic import absorbed_row, gate_of, one_plus_exp_neg
from .elementwise import ACTIVATIONS
from .shape import unbroadcast

SHAPE_ONLY = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast", "Transpose", "Tile",
              "Dropout")
REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare", "ReduceL1", "ReduceMax", "ReduceLogSumExp")
STATISTIC_STEPS = ("Sqrt", "Reciprocal", "Pow", "Abs", "Exp", "Log")
MAX_DEPTH = 24


# ---------------------------------------------------------------------------------------------------------------
# the recogniser
def _constant_operand(view: NodeView, name: str) -> bool:
    """True for an operand that is a constant."""
    return view.const(name) is not None


def _through(view: NodeView, name: str, depth: int, step: Callable) -> Optional[object]:
    """Follow `name` back through shape-only ops and arithmetic with constants, asking step(node) at each
    producer; step returns a result (found), False (stop) or None (keep going through this node's data input)."""
    node = view.index.producer.get(name)
    if node is None or depth > MAX_DEPTH:
        return None
    found = step(node)
    if found is not None:
        return found or None
    if node.op_type in SHAPE_ONLY:
        return _through(view, node.input[0], depth + 1, step)
    if node.op_type in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:
        consts = [_constant_operand(view, i) for i in node.input]
        if consts.count(True) == 1:
            return _through(view, node.input[consts.index(False)], depth + 1, step)
    return None


def statistic_of(view: NodeView, name: str) -> Optional[str]:
    """The reduction behind a normalisation statistic (e.g. 1 / sqrt(ReduceMean(x^2) + eps), or GRN's
    ||x|| / (mean_C ||x|| + eps)), followed back through Sqrt, Reciprocal, Pow, constant arithmetic, arithmetic of
    two statistics and shape-only ops; None if `name` is not one."""
    def step(node):
        if node.op_type in REDUCTIONS:
            return node.op_type
        if node.op_type in STATISTIC_STEPS:
            return _statistic_input(view, node.input[0])
        if node.op_type in ("Max", "Min", "Clip") and node.input:
            others = [i for i in node.input[1:] if i]
            if all(_constant_operand(view, i) for i in others):
                return _statistic_input(view, node.input[0])
        if node.op_type in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2 and \
                not any(_constant_operand(view, i) for i in node.input):  # arithmetic of two statistics (GRN)
            first = statistic_of(view, node.input[0])  # short-circuit: the second is asked only after a hit
            return first if first and statistic_of(view, node.input[1]) else False
        return None
    return _through(view, name, 0, step)


def _statistic_input(view: NodeView, name: str) -> object:
    """statistic_of for the input of a step op, False (stop) when there is none."""
    return statistic_of(view, name) or False


def softmax_of(view: NodeView, name: str) -> Optional[str]:
    """'Softmax' when `name` is a Softmax output (through shape-only ops, Cast, Dropout): attention weights."""
    return _through(view, name, 0, lambda node: "Softmax" if node.op_type == "Softmax" else None)


def activation_of(view: NodeView, name: str) -> Optional[str]:
    """The non-linear activation `name` is the output of (Relu, Gelu, Tanh, ..., or a signal * gate product such
    as x * sigmoid(x)), through shape-only ops; None otherwise."""
    def step(node):
        if node.op_type in ACTIVATIONS and node.op_type not in ("Neg", "Abs"):
            return node.op_type
        if node.op_type == "Mul" and len(node.input) == 2 and not any(_constant_operand(view, i) for i in node.input):
            if [gate_of(view, i) is None for i in node.input].count(True) == 1:
                return "Mul"
        return None
    return _through(view, name, 0, step)


RECOGNISERS: tuple = (
    ("data", lambda view, name: None if view.is_relevant(name) else "data"),
    ("gate", gate_of),
    ("statistic", statistic_of),
    ("attention", softmax_of),
    ("activation", activation_of),
)
ALWAYS_HELD = ("data", "gate", "statistic")


@dataclass(frozen=True)
class Factor:
    """The factor of a product that the gate rule holds constant: input position, kind, and what was found."""

    index: int
    kind: str
    found: str


def held_factor(view: NodeView) -> Optional[Factor]:
    """The factor a product of two run-time tensors holds constant under the gate rule, None if no factor is
    recognised (or both are, of the same kind). The first kind (RECOGNISERS order) that names exactly one wins."""
    if len(view.inputs) != 2:
        return None
    if view.op_type == "Div" and view.is_relevant(view.inputs[0]) and one_plus_exp_neg(view, view.inputs[1]):
        return Factor(1, "gate", "Sigmoid")
    relevant = [view.is_relevant(n) for n in view.inputs]
    if relevant.count(True) == 1:  # a gate times a signal computed without the inputs (a recurrent layer's bias copy)
        gate = gate_of(view, view.inputs[relevant.index(True)])
        if gate is not None:
            return Factor(relevant.index(True), "gate", gate)
    for kind, predicate in RECOGNISERS:
        found = [predicate(view, name) for name in view.inputs]
        hits = [i for i, f in enumerate(found) if f]
        if len(hits) == 1:
            return Factor(hits[0], kind, found[hits[0]])
        if len(hits) == 2 and kind in ALWAYS_HELD:
            return None
    return None


def is_runtime_product(view: NodeView) -> bool:
    """True for a two-input product whose factors are both computed at run time (neither is a constant)."""
    return len(view.inputs) == 2 and not any(_constant_operand(view, n) for n in view.inputs)


# ---------------------------------------------------------------------------------------------------------------
# groups, rules, checks
def product_group(view: NodeView) -> str:
    """'affine' / 'dense' when one factor carries no relevance, 'activation' for signal * sigmoid gate,
    'normalization' for x times a statistic, 'product' otherwise."""
    factor = held_factor(view)
    kind = factor.kind if factor is not None else None
    if kind == "data":
        return "dense" if view.op_type == "MatMul" else "affine"
    if kind == "gate":
        return "activation"
    if kind == "statistic":
        return "normalization"
    return "product"


def product_rules(view: NodeView) -> tuple:
    """Rules a run-time product accepts: see the module docstring."""
    factor = held_factor(view)
    kind = factor.kind if factor is not None else None
    if kind == "data":
        return (Epsilon, Norm, Gate) + ((Pass,) if view.op_type != "MatMul" else ())
    if kind in ("gate", "statistic"):
        return (Gate, Pass)
    if kind in ("attention", "activation"):
        return (Uniform, Gate)
    return (Uniform,)


def check_product(view: NodeView) -> Optional[str]:
    """A run-time product needs known ranks (to sum relevance back over broadcast axes); Div only by a divisor
    that is held constant (a statistic or a factor without relevance); MatMul operands of rank >= 2."""
    for name in list(view.inputs) + list(view.outputs):
        if view.shape(name) is None:
            return f"the rank of {name!r} is not known at compile time"
    factor = held_factor(view)
    if view.op_type == "Div":
        divisor_held = factor is not None and factor.index == 1 and factor.kind in ("data", "statistic", "gate")
        if not view.is_relevant(view.inputs[0]) or not divisor_held:
            return ("both operands carry data (dividing by an activation is not linear; only by a constant, a "
                    "statistic or 1 + exp(-u) is)")
    if view.op_type == "MatMul" and any(len(view.shape(n)) < 2 for n in view.inputs):
        return "a run-time MatMul operand of rank 1 is not supported"
    return None


def silent_factor(view: NodeView, rule: Optional[Rule]) -> set:
    """The input that receives no relevance: the held factor under the gate rule (and Pass), none otherwise."""
    if rule is not None and not isinstance(rule, (Gate, Pass, Epsilon, Norm)):
        return set()
    factor = held_factor(view)
    if factor is None or (rule is None and factor.kind not in ALWAYS_HELD):
        return set()
    return {view.inputs[factor.index]}


# ---------------------------------------------------------------------------------------------------------------
# emission
def _eps(rule: Rule) -> float:
    """The stabilizer of a product rule (Pass: 0)."""
    return float(getattr(rule, "epsilon", getattr(rule, "stabilizer", 0.0)))


def _fit(b: GraphBuilder, view: NodeView, value: str, name: str) -> str:
    """A relevance shaped like the output, summed back to the shape of operand `name` (broadcasting)."""
    shape, out = view.shape(name), view.shape(view.outputs[0])
    if tuple(shape) == tuple(out):
        return value
    return unbroadcast(b, value, name, shape, len(out))


def _swap_last(b: GraphBuilder, x: str, rank: int) -> str:
    """x with its last two axes swapped."""
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return b.op("Transpose", [x], "swapT", perm=perm)


def _matmul_backs(b: GraphBuilder, view: NodeView, s: str, which: tuple) -> dict:
    """J_a^T s = s @ b^T and J_b^T s = a^T @ s for z = a @ b, summed back over broadcast batch axes."""
    a, w = view.inputs
    rank = len(view.shape(view.outputs[0]))
    backs = {}
    if 0 in which:
        backs[0] = _fit(b, view, b.op("MatMul", [s, _swap_last(b, w, len(view.shape(w)))], "JaT_s"), a)
    if 1 in which:
        backs[1] = _fit(b, view, b.op("MatMul", [_swap_last(b, a, len(view.shape(a))), s], "JbT_s"), w)
    del rank
    return backs


def _stabilized(b: GraphBuilder, view: NodeView, R: str, eps: float) -> tuple:
    """s = R / stab(z) and the (N,) stabilizer share."""
    s, share = b.normalize(R, view.outputs[0], eps)
    return s, b.per_sample_sum(share, "stab_sum", len(view.shape(view.outputs[0])))


def emit_held(b: GraphBuilder, view: NodeView, rule: Rule, R: str, held: int) -> Emitted:
    """Gate rule: factor `held` is constant. Elementwise: R_x = z * s (= R at eps 0); MatMul: R_x = x * J_x^T s. A
    free factor without relevance (a gate times a bias copy) leaves R to the node: reported as absorbed."""
    free = 1 - held
    name = view.inputs[free]
    eps = _eps(rule)
    rel: list = [None, None]
    if not view.is_relevant(name):  # a gate times a signal computed without the inputs: the node keeps R (absorbed)
        return Emitted(rel, absorbed_row(b, R, len(view.shape(view.outputs[0])), "R_absorbed"))
    if view.op_type != "MatMul":
        if eps == 0.0:
            rel[free] = _fit(b, view, R, name)
            return Emitted(rel)
        s, stab = _stabilized(b, view, R, eps)
        rel[free] = _fit(b, view, b.op("Mul", [view.outputs[0], s], "zs"), name)
        return Emitted(rel, None, stab)
    s, stab = _stabilized(b, view, R, eps)
    back = _matmul_backs(b, view, s, (free,))[free]
    rel[free] = b.op("Mul", [name, back], "R_x")
    return Emitted(rel, None, stab)


def emit_uniform(b: GraphBuilder, view: NodeView, rule: Rule, R: str) -> Emitted:
    """Uniform rule: each relevant factor gets half. Elementwise: R_a = R_b = z * s / 2 (= R / 2 at eps 0);
    MatMul: R_a = a * (s @ b^T) / 2, R_b = b * (a^T @ s) / 2."""
    eps = _eps(rule)
    a, w = view.inputs
    stab = None
    if view.op_type != "MatMul":
        if eps == 0.0:
            half = b.op("Mul", [R, b.const(0.5)], "R_half")
        else:
            s, stab = _stabilized(b, view, R, eps)
            half = b.op("Mul", [b.op("Mul", [view.outputs[0], s], "zs"), b.const(0.5)], "R_half")
        return Emitted([_fit(b, view, half, n) for n in (a, w)], None, stab)
    s, stab = _stabilized(b, view, R, eps)
    s_half = b.op("Mul", [s, b.const(0.5)], "s_half")
    backs = _matmul_backs(b, view, s_half, (0, 1))
    return Emitted([b.op("Mul", [a, backs[0]], "R_a"), b.op("Mul", [w, backs[1]], "R_b")], None, stab)


def emit_product(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """A product of two run-time tensors under the uniform or the gate rule (Pass/Epsilon/Norm: gate forms)."""
    if isinstance(rule, Uniform):
        return emit_uniform(b, view, rule, R[0])
    factor = held_factor(view)
    if factor is None:  # guarded by product_rules; reached only through a bad registration
        raise ValueError("no factor of this product can be held constant")
    return emit_held(b, view, rule, R[0], factor.index)


# ---------------------------------------------------------------------------------------------------------------
# registrations: Mul, Div and MatMul dispatch between a constant operand (linear.py's linear node) and a product
def _const_case(view: NodeView) -> bool:
    """True when one operand is a constant the linear emitters handle (for MatMul: a 2-D one)."""
    if len(view.inputs) != 2:
        return False
    consts = [_constant_operand(view, n) for n in view.inputs]
    if consts.count(True) != 1 or not view.is_relevant(view.inputs[consts.index(False)]):
        return False
    if view.op_type == "MatMul":
        return view.const(view.inputs[consts.index(True)]).ndim == 2
    return True


def _group(view: NodeView) -> str:
    """The op group of a Mul / Div / MatMul node."""
    if _const_case(view):
        return "dense" if view.op_type == "MatMul" else "affine"
    return product_group(view)


def _rules(view: NodeView) -> tuple:
    """Rules of a Mul / Div / MatMul node."""
    return LINEAR_RULES if _const_case(view) else product_rules(view)


def _check(view: NodeView) -> Optional[str]:
    """Checks of a Mul / Div / MatMul node."""
    from .arithmetic import check_constant_scale
    from .linear import check_matmul_constant
    if _const_case(view):
        return check_matmul_constant(view) if view.op_type == "MatMul" else check_constant_scale(view)
    if len(view.inputs) == 2 and view.op_type != "MatMul":
        consts = [_constant_operand(view, n) for n in view.inputs]
        if view.op_type == "Div" and consts[0]:
            return "dividing a constant by an activation is not linear"
    return check_product(view)


def _silent(view: NodeView, rule: Optional[Rule] = None) -> set:
    """Inputs that never receive relevance under this node's rule."""
    return set() if _const_case(view) else silent_factor(view, rule)


@register(("Mul", "Div", "MatMul"), group=_group, rules=_rules, check=_check, silent=_silent)
def emit_mul_div_matmul(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Mul / Div / MatMul: with a constant operand a linear node (any linear rule), else a product (uniform or
    gate rule)."""
    if _const_case(view):
        from .linear import emit_affine, emit_matmul
        return emit_matmul(b, view, rule, R) if view.op_type == "MatMul" else emit_affine(b, view, rule, R)
    return emit_product(b, view, rule, R)
