"""Values whose relevance is provably zero wherever the value itself is zero (so a linear layer whose output is such
a value needs no "relevance at z == 0 flows nowhere" term: that relevance is exactly 0).

A value v qualifies when every node that sends it relevance does so as
- v times something: R_v = v * J^T s (a linear op whose rule reads only x, x+ or x- (not ones or bounds), a sum of
  activations or an average pool under Norm/Epsilon), zero where v is 0; or
- R_v = R_y at the positions where y holds v's value or f(v) with f(0) = 0 (Pass through a zero-keeping activation,
  a reshape, a transpose, a concat; a max pool's winner), zero where v is 0 as soon as y qualifies.
The explained value never qualifies (its seed may be one-hot). Anything else keeps the general path.

A stronger property: v's relevance is 0 wherever v <= 0 when every consumer is a Relu (or Clip with lower bound 0)
whose output has the first property: the output is 0 there. A gamma layer writing such a v needs no z < 0 group.
"""
from __future__ import annotations

import numpy as np

from .rules import LINEAR_RULES, Epsilon, Norm

# Pass rule, R_x(i) = R_y at an output position holding f(x(i)) with f(0) = 0
ZERO_KEEPING = {"Relu", "LeakyRelu", "PRelu", "Tanh", "Gelu", "HardSwish", "Mish", "Elu", "Selu", "Celu",
                "Softsign", "Erf", "Neg", "Abs", "Sqrt", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze",
                "Unsqueeze", "Transpose", "Concat", "MaxPool", "GlobalMaxPool", "ReduceMax"}
DATA_FIRST = {"Relu", "LeakyRelu", "PRelu", "Tanh", "Gelu", "HardSwish", "Mish", "Elu", "Selu", "Celu", "Softsign",
              "Erf", "Neg", "Abs", "Sqrt", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
              "Transpose", "MaxPool", "GlobalMaxPool", "ReduceMax", "Clip"}
LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
POOLS = {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"}
PROPORTIONAL_INPUTS = {"x", "pos", "neg"}


def _clip_keeps_zero(node, constants: dict) -> bool:
    """Clip(0) == 0: its bounds (inputs or attributes) enclose 0."""
    low = high = None
    if len(node.input) > 1 and node.input[1]:
        low = constants.get(node.input[1])
        if low is None:
            return False
    if len(node.input) > 2 and node.input[2]:
        high = constants.get(node.input[2])
        if high is None:
            return False
    attrs = {a.name: a.f for a in node.attribute}
    low = attrs.get("min") if low is None else float(np.max(low))
    high = attrs.get("max") if high is None else float(np.min(high))
    return (low is None or low <= 0) and (high is None or high >= 0)


def _clip_min(node, constants: dict):
    """Clip's lower bound (input or attribute), None where there is none or it is not constant."""
    if len(node.input) > 1 and node.input[1]:
        low = constants.get(node.input[1])
        return None if low is None else float(np.max(low)) if np.size(low) else None
    return next((a.f for a in node.attribute if a.name == "min"), None)


def _proportional_rule(rule) -> bool:
    """A linear rule whose every term reads x, x+ or x- (R_x = x * ..., zero where x is 0)."""
    return isinstance(rule, LINEAR_RULES) and all(term.input in PROPORTIONAL_INPUTS
                                                 for group in rule.groups() for term in group.terms)


def _sends_zero_at_zero(node, value: str, plan, known: set) -> bool:
    """Whether the relevance node sends to value is provably 0 wherever value is 0."""
    from .emitters.arithmetic import _constant_operand, runtime_offset
    op, constants, rule = node.op_type, plan.index.constants, plan.rules.get(node.name)
    inputs = [i for i in node.input if i]
    if op in LINEAR_OPS:
        return node.input[0] == value and value not in inputs[1:] and value not in constants \
            and all(i in constants for i in inputs[1:]) and _proportional_rule(rule)
    if op in POOLS:
        return node.input[0] == value and isinstance(rule, (Norm, Epsilon))
    if op in ("Add", "Sub", "Sum"):
        view = plan.views[node.name]
        return isinstance(rule, (Norm, Epsilon)) and (op == "Sum" or (
            not _constant_operand(view) and runtime_offset(view) is None))
    zero_keeping = op in ZERO_KEEPING or (op == "Clip" and _clip_keeps_zero(node, constants))
    if not zero_keeping or (op in DATA_FIRST and (node.input[0] != value or value in inputs[1:])):
        return False
    return node.output[0] in known and not any(o for o in node.output[1:])


def _consumers(plan) -> dict:
    """The nodes of the plan that read each value on the explained path."""
    consumers: dict = {}
    for node in plan.nodes:
        for name in set(node.input):
            if name in plan.path:
                consumers.setdefault(name, []).append(node)
    return consumers


def vanishing_values(plan) -> frozenset:
    """Values of the plan whose relevance is provably 0 wherever they are 0 (see the module docstring)."""
    consumers = _consumers(plan)
    known: set = set()
    for node in reversed(plan.nodes):  # every consumer of a node's outputs is decided before the node
        for value in node.output:
            if value and value != plan.explained and value in consumers and \
                    all(_sends_zero_at_zero(c, value, plan, known) for c in consumers[value]):
                known.add(value)
    return frozenset(known)


def vanishing_nonpositive(plan, vanishing: frozenset) -> frozenset:
    """Values of the plan whose relevance is provably 0 wherever they are <= 0: every consumer is a Relu or a
    Clip with lower bound exactly 0 (both 0 there) on it, whose output is in `vanishing`."""
    consumers = _consumers(plan)
    known = set()
    for value in vanishing:
        nodes = consumers.get(value, [])
        if nodes and all(c.input[0] == value and c.output[0] in vanishing and (
                c.op_type == "Relu" or (c.op_type == "Clip" and _clip_min(c, plan.index.constants) == 0.0
                                         and value not in c.input[1:])) for c in nodes):
            known.add(value)
    return frozenset(known)
