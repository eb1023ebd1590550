"""LRP rules as data: which modified inputs, weights and biases each needs, and how its terms combine.

A linear node computes z = W x + b. A rule is a list of *groups*; each group has terms (input modifier, weight
modifier, bias modifier, sign) whose forward sum is the group's denominator z_g, a coefficient, and an optional
mask on the sign of the unmodified z. With s_g = mask * R / stab(z_g):

    R_x = sum_g coeff_g * sum_t sign_t * in_t(x) * (W_t^T s_g)
    R_b = sum_g coeff_g * sum_t sign_t * b_t * s_g
    stabilizer share = sum_g coeff_g * s_g * eps * sgn0(z_g)

so that sum(R_x) + sum(R_b) + stabilizer == sum(R) wherever a group's mask is 1. Rules know nothing of ONNX.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .errors import RuleParameterError

Bound = Union[float, tuple]


@dataclass(frozen=True)
class Term:
    """One summand of a group: sign * (W_mod in_mod(x) + b_mod)."""

    input: str    # "x", "pos", "neg", "ones", "low", "high"
    weight: str   # key understood by modify_weight
    bias: str     # key understood by modify_weight, or "zero"
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms sharing one stabilized denominator; mask 'pos'/'neg' keeps units where the unmodified z is >0 / <0."""

    terms: tuple
    coeff: float = 1.0
    mask: str | None = None
    eps: float = 1e-6

    @property
    def is_plain(self) -> bool:
        """True if the group's denominator is the unmodified forward output z = W x + b."""
        return self.terms == (Term("x", "W", "b"),) and self.mask is None


class Rule:
    """Base of all rules; `name` is the rule's name in composites."""

    name = "rule"

    def groups(self) -> tuple:
        """The rule's groups (empty for rules that are not linear, e.g. Pass)."""
        return ()

    def describe(self) -> str:
        """Name and parameters as one short string, e.g. 'gamma(gamma=0.25, stabilizer=1e-06)'."""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.__dict__.items())
        return f"{self.name}({params})" if params else self.name


def _fmt(value) -> str:
    """Compact formatting of a parameter value."""
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_eps(value: float, what: str) -> None:
    """Stabilizers must be finite and non-negative."""
    if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
        raise RuleParameterError(f"{what} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon: z = W x + b, R_x = x * W^T (R / stab(z)), R_b = b * R / stab(z); epsilon = 0 is LRP-0."""

    epsilon: float = 1e-6
    name = "epsilon"

    def __post_init__(self) -> None:
        _check_eps(self.epsilon, "epsilon")

    def groups(self) -> tuple:
        """One plain group stabilized by epsilon."""
        return (Group((Term("x", "W", "b"),), eps=self.epsilon),)


@dataclass(frozen=True)
class Norm(Rule):
    """Norm for sums and average pools: s = R / stab(y), R_x = x * J^T s (Epsilon form with a fixed stabilizer)."""

    stabilizer: float = 1e-6
    name = "norm"

    def __post_init__(self) -> None:
        _check_eps(self.stabilizer, "stabilizer")

    def groups(self) -> tuple:
        """One plain group stabilized by the stabilizer."""
        return (Group((Term("x", "W", "b"),), eps=self.stabilizer),)


@dataclass(frozen=True)
class ZPlus(Rule):
    """z+: z = W+ x+ + W- x- + b+, R_x = x+ * W+^T s + x- * W-^T s, R_b = b+ * s, s = R / stab(z)."""

    stabilizer: float = 1e-6
    name = "zplus"

    def __post_init__(self) -> None:
        _check_eps(self.stabilizer, "stabilizer")

    def groups(self) -> tuple:
        """One group with the positive contributions."""
        return (Group((Term("pos", "W+", "b+"), Term("neg", "W-", "zero")), eps=self.stabilizer),)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """alpha-beta: R = alpha * R[z_a = W+ x+ + W- x- + b+] - beta * R[z_b = W- x+ + W+ x- + b-], alpha - beta = 1."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    name = "alpha_beta"

    def __post_init__(self) -> None:
        _check_eps(self.stabilizer, "stabilizer")
        if not (np.isfinite(self.alpha) and np.isfinite(self.beta)) or self.alpha < 0 or self.beta < 0:
            raise RuleParameterError(f"alpha and beta must be >= 0, got alpha={self.alpha}, beta={self.beta}")
        if abs((self.alpha - self.beta) - 1.0) > 1e-12:
            raise RuleParameterError(
                f"alpha - beta must equal 1 for conservation, got alpha={self.alpha}, beta={self.beta}")

    def groups(self) -> tuple:
        """A positive group weighted alpha and a negative group weighted -beta."""
        pos = Group((Term("pos", "W+", "b+"), Term("neg", "W-", "zero")), coeff=self.alpha, eps=self.stabilizer)
        if self.beta == 0:
            return (pos,)
        neg = Group((Term("pos", "W-", "b-"), Term("neg", "W+", "zero")), coeff=-self.beta, eps=self.stabilizer)
        return (pos, neg)


@dataclass(frozen=True)
class Gamma(Rule):
    """gamma: where z > 0, z_p = W_up x+ + W_dn x- + b_up; where z < 0, z_n = W_dn x+ + W_up x- + b_dn;
    W_up = W + gamma W+, W_dn = W + gamma W-; R_x = x+ * W_up^T s_p + x- * W_dn^T s_p (+ the mirror for z < 0)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6
    name = "gamma"

    def __post_init__(self) -> None:
        _check_eps(self.stabilizer, "stabilizer")
        if not (isinstance(self.gamma, (int, float)) and np.isfinite(self.gamma) and self.gamma >= 0):
            raise RuleParameterError(f"gamma must be a finite number >= 0, got {self.gamma!r}")

    def groups(self) -> tuple:
        """A group for units with z > 0 and one for units with z < 0."""
        up, dn = f"Wup:{self.gamma!r}", f"Wdn:{self.gamma!r}"
        bup, bdn = f"bup:{self.gamma!r}", f"bdn:{self.gamma!r}"
        return (
            Group((Term("pos", up, bup), Term("neg", dn, "zero")), mask="pos", eps=self.stabilizer),
            Group((Term("pos", dn, bdn), Term("neg", up, "zero")), mask="neg", eps=self.stabilizer),
        )


@dataclass(frozen=True)
class ZBox(Rule):
    """z^B: z = W x - W+ low - W- high (biases cancel), R_x = x * W^T s - low * W+^T s - high * W-^T s."""

    low: Bound = -1.0
    high: Bound = 1.0
    stabilizer: float = 1e-6
    name = "zbox"

    def __post_init__(self) -> None:
        _check_eps(self.stabilizer, "stabilizer")
        lo, hi = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        for label, value in (("low", lo), ("high", hi)):
            if value.ndim > 1 or value.size == 0 or not np.all(np.isfinite(value)):
                raise RuleParameterError(f"{label} must be a finite number or a list of numbers, got {value.tolist()!r}")
        if lo.ndim == 1 and hi.ndim == 1 and lo.size != hi.size:
            raise RuleParameterError(f"low has {lo.size} channels but high has {hi.size}")
        if np.any(np.broadcast_to(lo, np.broadcast_shapes(lo.shape, hi.shape)) > hi):
            raise RuleParameterError(f"low must not exceed high, got low={lo.tolist()}, high={hi.tolist()}")

    def groups(self) -> tuple:
        """One group: the input term minus the low and high bound terms."""
        return (Group((Term("x", "W", "b"), Term("low", "W+", "b+", -1.0), Term("high", "W-", "b-", -1.0)),
                      eps=self.stabilizer),)

    def channels(self) -> int | None:
        """Number of channels of a per-channel bound, None when both bounds are scalars."""
        for value in (self.low, self.high):
            if isinstance(value, tuple):
                return len(value)
        return None


@dataclass(frozen=True)
class WSquare(Rule):
    """w^2: z = W^2 1 + b^2, R_x = (W^2)^T s, R_b = b^2 * s."""

    stabilizer: float = 1e-6
    name = "wsquare"

    def __post_init__(self) -> None:
        _check_eps(self.stabilizer, "stabilizer")

    def groups(self) -> tuple:
        """One group of squared weights on an input of ones."""
        return (Group((Term("ones", "W2", "b2"),), eps=self.stabilizer),)


@dataclass(frozen=True)
class Flat(Rule):
    """flat: weights replaced by ones, bias by zero: z = 1 1, R_x = 1^T s (equal share over the receptive field)."""

    stabilizer: float = 1e-6
    name = "flat"

    def __post_init__(self) -> None:
        _check_eps(self.stabilizer, "stabilizer")

    def groups(self) -> tuple:
        """One group of unit weights on an input of ones."""
        return (Group((Term("ones", "ones", "zero"),), eps=self.stabilizer),)


@dataclass(frozen=True)
class Pass(Rule):
    """pass: R_in = R_out (elementwise activations; shape ops move relevance exactly as the gradient would)."""

    name = "pass"


@dataclass(frozen=True)
class Uniform(Rule):
    """uniform (AttnLRP, Prop. 3.3) for a product of two run-time tensors z = a * b or a @ b: each factor gets half,
    R_a = a * J_a^T s / 2, R_b = b * J_b^T s / 2 with s = R / stab(z) (elementwise: R_a = R_b = R / 2 at eps 0)."""

    epsilon: float = 0.0
    name = "uniform"

    def __post_init__(self) -> None:
        _check_eps(self.epsilon, "epsilon")


@dataclass(frozen=True)
class Gate(Rule):
    """gate: one factor (a sigmoid gate, a normalisation statistic, the attention weights, a gated MLP's gate, or a
    factor without relevance) is held constant; the rest is linear: R_x = x * J^T (R / stab(z)), R_gate = 0."""

    epsilon: float = 0.0
    name = "gate"

    def __post_init__(self) -> None:
        _check_eps(self.epsilon, "epsilon")


@dataclass(frozen=True)
class Taylor(Rule):
    """taylor (Softmax, AttnLRP Prop. 3.1): gradient x input, R_x = x * (R - y * sum R) for y = softmax(x); the
    remainder sum R - sum R_x is reported as the node's absorbed (bias) relevance."""

    name = "taylor"


@dataclass(frozen=True)
class WinnerTakesAll(Rule):
    """wta (max pooling): the whole window's relevance goes to the position of its maximum (first on ties)."""

    name = "wta"


RULES: dict = {cls.name: cls for cls in (Epsilon, Norm, ZPlus, AlphaBeta, Gamma, ZBox, WSquare, Flat, Pass,
                                          WinnerTakesAll, Uniform, Gate, Taylor)}
LINEAR_RULES = (Epsilon, Norm, ZPlus, AlphaBeta, Gamma, ZBox, WSquare, Flat)


def rule_parameters(rule_cls: type) -> tuple:
    """Names of a rule class's parameters, in order."""
    return tuple(f.name for f in getattr(rule_cls, "__dataclass_fields__", {}).values())


def modify_weight(key: str, w: np.ndarray) -> np.ndarray:
    """The modified weight (or bias) for a key: W, W+, W-, W2, ones, zero, Wup:g = W + g W+, Wdn:g = W + g W-."""
    base = key.replace("b", "W", 1) if key.startswith("b") else key
    if base == "W":
        return w
    if base == "W+":
        return np.maximum(w, 0)
    if base == "W-":
        return np.minimum(w, 0)
    if base == "W2":
        return w * w
    if base == "ones":
        return np.ones_like(w)
    if key == "zero":
        return np.zeros_like(w)
    if base.startswith("Wup:"):
        return w + float(base[4:]) * np.maximum(w, 0)
    if base.startswith("Wdn:"):
        return w + float(base[4:]) * np.minimum(w, 0)
    raise KeyError(f"unknown weight modifier {key!r}")


def build_rule(name: str, params: dict) -> Rule:
    """Instantiate a rule by name from a parameter dict (unknown names/params raise RuleParameterError)."""
    if name not in RULES:
        raise RuleParameterError(f"unknown rule {name!r} (known: {', '.join(sorted(RULES))})")
    cls = RULES[name]
    allowed = rule_parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RuleParameterError(
            f"rule {name!r} has no parameter {', '.join(map(repr, unknown))} (it takes: {', '.join(allowed) or 'none'})")
    clean = {}
    for key, value in params.items():
        if isinstance(value, list):
            value = tuple(float(v) for v in value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RuleParameterError(f"parameter {key!r} of rule {name!r} must be a number, got {value!r}")
        else:
            value = float(value)
        clean[key] = value
    return cls(**clean)


def as_sequence(value: Bound) -> Sequence[float]:
    """A bound as a flat list of floats."""
    return list(value) if isinstance(value, tuple) else [float(value)]

