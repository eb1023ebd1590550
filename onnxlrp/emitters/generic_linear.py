"""The generic linear emitter: any LRP rule (groups of terms, see rules.py) on any linear op (see linear.py).

A rule's terms are planned before anything is emitted, so that the relevance graph does the least work that
computes the same numbers (to float32 rounding):
- inputs are resolved first: x+ is x and x- vanishes where x is provably >= 0; a scalar bound or an input of ones
  is a constant factor, folded into the weight it multiplies; a zero bound or an all-zero weight drops its term;
- modified weights are linear combinations a*W + c*W+ (W- = W - W+, gamma's W + g W+ and W + g W-), so all terms
  of a group on one input become one combined weight: one forward and one transposed op; the group coefficient and
  the term sign are folded into the transposed weight;
- a group's denominator reuses the forward output z = W x + b for its W part (no second forward op); a forward of
  a constant input (bounds, ones) is a constant that onnxruntime folds when the session starts;
- a denominator that is a sum of non-negative terms (z+, the positive alpha-beta group) needs no sign:
  stab(z) = z + eps, and eps goes into the forward op's bias;
- bias relevance and the stabilizer share are reduced from s before the bias multiplies them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..builder import GraphBuilder
from ..errors import CompileError
from ..rules import LINEAR_RULES, Rule, modify_weight
from ..tails import stabilizer_dot
from .positive import divide_positive, relu_of

DATA_INPUTS = ("x", "pos", "neg")
# a shared denominator constant left over below this fraction of the constants it came from is float64 rounding
REST_ROUNDING = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# weight keys: modify_weight's keys, plus "lin:a:c" = a*W + c*W+ and "np:f:key" = f * modify_weight(key)
def basis(key: str) -> Optional[tuple]:
    """(a, c) with weight(key) == a*W + c*W+, None for modifiers outside that span (W2, ones, np:...)."""
    if key == "W":
        return (1.0, 0.0)
    if key == "W+":
        return (0.0, 1.0)
    if key == "W-":
        return (1.0, -1.0)
    if key.startswith("lin:"):
        a, c = key[4:].split(":")
        return (float(a), float(c))
    if key.startswith("Wup:"):
        return (1.0, float(key[4:]))
    if key.startswith("Wdn:"):
        g = float(key[4:])
        return (1.0 + g, -g)
    return None


def lin_key(a: float, c: float) -> str:
    """The weight key of a*W + c*W+ (the plain key where one exists)."""
    for key, value in (("W", (1.0, 0.0)), ("W+", (0.0, 1.0)), ("W-", (1.0, -1.0))):
        if (a, c) == value:
            return key
    return f"lin:{float(a)!r}:{float(c)!r}"


def weight_value(key: str, w: np.ndarray) -> np.ndarray:
    """The modified weight of any key, in NumPy."""
    if key.startswith("np:"):
        factor, inner = key[3:].split(":", 1)
        return float(factor) * weight_value(inner, w)
    ac = basis(key) if key.startswith("lin:") else None
    if ac is not None:
        return ac[0] * w + ac[1] * np.maximum(w, 0)
    return modify_weight(key, w)


@dataclass(frozen=True)
class WeightSigns:
    """Which signs a weight has, enough to know the sign pattern of every modified weight without computing it."""

    any_pos: bool
    any_neg: bool

    @classmethod
    def of(cls, w: np.ndarray) -> "WeightSigns":
        """Scan a weight once."""
        return cls(bool(np.any(w > 0)), bool(np.any(w < 0)))

    def sign(self, key: str, w: np.ndarray) -> Optional[int]:
        """+1 if weight(key) >= 0 everywhere, -1 if <= 0, 0 if identically zero, None if mixed."""
        ac = basis(key)
        if ac is None:
            if key in ("W2", "ones"):
                return 1 if (key == "ones" or self.any_pos or self.any_neg) else 0
            value = weight_value(key, w)
            return _array_sign(value)
        a, c = ac
        signs = set()
        if self.any_pos and a + c != 0:
            signs.add(1 if a + c > 0 else -1)
        if self.any_neg and a != 0:
            signs.add(-1 if a > 0 else 1)
        if not signs:
            return 0
        return signs.pop() if len(signs) == 1 else None


def _array_sign(value) -> Optional[int]:
    """+1 / -1 / 0 / None (mixed) for an array."""
    value = np.asarray(value)
    pos, neg = bool(np.any(value > 0)), bool(np.any(value < 0))
    return 0 if not (pos or neg) else (1 if not neg else (-1 if not pos else None))


def pad_rank(array: np.ndarray, rank: Optional[int]) -> np.ndarray:
    """Left-pad an array's shape with ones up to rank."""
    if rank is None or array.ndim >= rank:
        return array
    return array.reshape((1,) * (rank - array.ndim) + array.shape)


# ---------------------------------------------------------------------------------------------------------------
# planning
@dataclass
class Part:
    """The terms of one group that read the same input: sum_t factor_t * W_t applied to it."""

    input: str                            # "x", "pos", "neg", "one" (constant 1, value in the factors), "const:k"
    keys: list = field(default_factory=list)   # [(weight key, factor)]
    array: Optional[np.ndarray] = None    # per-channel constant input values of a "const:k" part
    reuse: bool = False                   # its forward is a*z + c*(W+ x) + const (see _reuse_is_exact)

    def combined(self) -> Optional[tuple]:
        """(a, c) of the summed weight sum_t factor_t W_t = a W + c W+, None if a key lies outside that span."""
        a = c = 0.0
        for key, factor in self.keys:
            ac = basis(key)
            if ac is None:
                return None
            a, c = a + factor * ac[0], c + factor * ac[1]
        return (a, c)

    def weight_keys(self, scale: float = 1.0) -> list:
        """Keys whose ops, summed, apply scale * the part's weight."""
        ac = self.combined()
        if ac is not None:
            a, c = ac[0] * scale, ac[1] * scale
            return [] if a == 0 and c == 0 else [lin_key(a, c)]
        return [key if factor * scale == 1.0 else f"np:{factor * scale!r}:{key}" for key, factor in self.keys]


@dataclass
class GroupPlan:
    """One group after input resolution: its parts, total bias, and what is known of its denominator's sign."""

    group: object
    parts: list
    bias_total: Optional[np.ndarray]
    nonnegative: bool = False          # z_g >= 0 everywhere: stab(z_g) = z_g + eps
    region_sign: Optional[float] = None  # masked group: z_g has the mask's sign wherever the mask holds
    signed_reuse: Optional[tuple] = None  # (a, c): z_g = a*z + c*(W+ x+ + W- x-) + const (see _signed_reuse)
    through_relu: bool = False         # z_g is z, which a Relu alone reads: stab(z_g) = relu(z) + eps (positive.py)

    @property
    def eps_sign(self) -> Optional[float]:
        """The sign eps is added with wherever relevance flows, None where it must be computed per unit."""
        return 1.0 if self.nonnegative or self.through_relu else self.region_sign


def _resolve(term, rule: Rule, x_nonneg: bool) -> Optional[tuple]:
    """(input, factor, per-channel array) of a term's input after what is known about x; None if it is zero."""
    kind = term.input
    if kind == "pos" and x_nonneg:
        kind = "x"
    if kind == "neg" and x_nonneg:
        return None
    if kind == "ones":
        return ("one", term.sign, None)
    if kind in ("low", "high"):
        value = np.asarray(getattr(rule, kind), dtype=np.float64)
        if not np.any(value):
            return None
        if value.size == 1:
            return ("one", term.sign * float(value.reshape(-1)[0]), None)
        return (f"const:{kind}", term.sign, value.reshape(-1))
    return (kind, term.sign, None)


def plan_groups(rule: Rule, op, x_nonneg: bool) -> list:
    """Resolve every group's terms into parts; drop terms whose weight or input is identically zero."""
    signs = WeightSigns.of(op.weight)
    plans = []
    for group in rule.groups():
        parts: dict = {}
        for term in group.terms:
            resolved = _resolve(term, rule, x_nonneg)
            if resolved is None or signs.sign(term.weight, op.weight) == 0:
                continue
            name, factor, array = resolved
            part = parts.setdefault(name, Part(name, array=array))
            part.keys.append((term.weight, factor))
        bias_total = None
        if op.bias is not None:
            bias_total = sum(term.sign * modify_weight(term.bias, op.bias) for term in group.terms)
            if not np.any(bias_total):
                bias_total = None
        kept = [p for p in parts.values() if p.weight_keys()]
        plan = GroupPlan(group, kept, bias_total)
        for part in kept:
            part.reuse = _reuse_is_exact(plan, part, op, x_nonneg)
        plan.nonnegative = group.eps > 0 and _provably_nonnegative(plan, signs, op, x_nonneg)
        if not plan.nonnegative:
            plan.signed_reuse = _signed_reuse(plan, op)
        if group.mask is not None and group.eps > 0 and kept and (
                all(part.reuse for part in kept) or plan.signed_reuse is not None):
            plan.region_sign = 1.0 if group.mask == "pos" else -1.0  # see _reuse_is_exact: no cancellation
        plans.append(plan)
    return plans


def _reuse_is_exact(plan: GroupPlan, part: Part, op, x_nonneg: bool) -> bool:
    """May the part's forward a*W x + c*W+ x + bias be computed as a*z + c*P + (bias - a*b), P = W+ x?

    Only where nothing cancels, so that it is as exact as a forward op of its own: the plain group (it is z), or a
    masked group (gamma) whose other terms have the mask's sign: where z > 0, a*z + c*P + adj with a > 0, c >= 0,
    adj >= 0 and P >= 0 (x >= 0) is a sum of non-negative numbers (the mirror where z < 0). Elsewhere z - b would
    cancel catastrophically when |b| >> |W x| (z^B, the negative alpha-beta group)."""
    ac = part.combined()
    if part.input != "x" or ac is None or ac[0] == 0:
        return False
    a, c = ac
    if plan.group.mask is None:
        return (a, c) == (1.0, 0.0) and not np.any(_constant_left(plan, op, a)) and len(plan.parts) == 1
    return x_nonneg and _keeps_mask_sign(plan, op, a, c)


def _constant_left(plan: GroupPlan, op, a: float) -> np.ndarray:
    """The group's bias less a * the op's bias: what stays constant once a * z is reused."""
    bias = np.zeros(1) if op.bias is None else op.bias
    total = np.zeros(1) if plan.bias_total is None else plan.bias_total
    with np.errstate(all="ignore"):  # inf/NaN weights of a broken model: no reuse, and no warning
        return total - a * bias


def _keeps_mask_sign(plan: GroupPlan, op, a: float, c: float) -> bool:
    """Where a masked group's mask holds, a*z, c*(a non-negative part) and the constant left all have the mask's
    sign: a > 0, sign*c >= 0, sign*constant >= 0."""
    sign = 1.0 if plan.group.mask == "pos" else -1.0
    return a > 0 and sign * c >= 0 and bool(np.all(sign * _constant_left(plan, op, a) >= 0))


def _signed_reuse(plan: GroupPlan, op) -> Optional[tuple]:
    """(a, c) when a masked group over a signed x (parts x+ with a1 W + c1 W+, x- with a2 W + c2 W+) is
    a1*(z - b) + c1*Q + const, Q = W+ x+ + W- x- >= 0: that is when a2 - a1 == c1 and c2 == -c1 (gamma's two
    groups: (1, g | 1+g, -g) and (1+g, -g | 1, g)). Exact for the same reason as _reuse_is_exact: where the mask
    holds, a1*z, c1*Q and the constant all have the mask's sign. Both groups then share one Q (two convolutions
    instead of four)."""
    if plan.group.mask is None or plan.group.eps <= 0 or sorted(p.input for p in plan.parts) != ["neg", "pos"]:
        return None
    by_input = {part.input: part.combined() for part in plan.parts}
    if by_input["pos"] is None or by_input["neg"] is None:
        return None
    (a1, c1), (a2, c2) = by_input["pos"], by_input["neg"]
    close = lambda u, v: abs(u - v) <= 1e-12 * max(1.0, abs(u), abs(v))  # noqa: E731
    if not (close(a2 - a1, c1) and close(c2, -c1)) or not _keeps_mask_sign(plan, op, a1, c1):
        return None
    return (a1, c1)


def _provably_nonnegative(plan: GroupPlan, signs: WeightSigns, op, x_nonneg: bool) -> bool:
    """True when every term of the group's denominator is >= 0 (then sgn0 is +1 everywhere)."""
    if plan.bias_total is not None and np.any(plan.bias_total < 0):
        return False
    for part in plan.parts:
        if part.reuse:
            return False  # computed from z: keep the general stabilizer
        in_sign = {"x": 1 if x_nonneg else None, "pos": 1, "neg": -1, "one": 1}.get(part.input)
        if part.array is not None:
            in_sign = _array_sign(part.array)
        if in_sign is None:
            return False
        for key in part.weight_keys():
            w_sign = signs.sign(key, op.weight)
            if w_sign is None or w_sign * in_sign < 0:
                return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# emission
class _Inputs:
    """Input tensors of one emit, built once: x, x+, x-, constant (batch 1, folded) or x-shaped ones and bounds."""

    def __init__(self, b: GraphBuilder, view, op) -> None:
        self.b, self.view, self.op = b, view, op
        self._cache: dict = {}

    def data(self, kind: str) -> str:
        """x, Relu(x) or Min(x, 0)."""
        if kind not in self._cache:
            b, x = self.b, self.op.x
            self._cache[kind] = {"x": lambda: x, "pos": lambda: b.op("Relu", [x], "x_pos"),
                                 "neg": lambda: b.op("Min", [x, b.const(0.0)], "x_neg")}[kind]()
        return self._cache[kind]

    def signed(self) -> str:
        """Concat(x+, x-) along the channels: both signs through one op with weights stacked (op.forward_concat)."""
        if "signed" not in self._cache:
            self._cache["signed"] = self.b.op("Concat", [self.data("pos"), self.data("neg")], "x_signed", axis=1)
        return self._cache["signed"]

    def const(self, part: Part) -> str:
        """A part's constant input (ones, or per-channel bounds), batch 1 when x's shape is static."""
        key = part.input
        if key not in self._cache:
            b = self.b
            value = np.ones(1) if part.array is None else self._channel_array(part.array)
            shape = self.op.const_input_shape(self.view)
            target = b.ints(shape) if shape is not None else b.op("Shape", [self.op.x], "x_shape")
            self._cache[key] = b.op("Expand", [b.const(value), target], "const_in")
        return self._cache[key]

    def channel_scale(self, part: Part) -> str:
        """A per-channel array shaped to broadcast along x's axis 1."""
        return self.b.const(self._channel_array(part.array), hint="bound")

    def _channel_array(self, array: np.ndarray) -> np.ndarray:
        """(C,) -> (1, C, 1, ...) along axis 1 of x, checked against x's channel count."""
        shape = self.view.shape(self.op.x)
        if shape is None or len(shape) < 2:
            raise CompileError(f"per-channel bounds need a known channel axis on {self.op.x!r}")
        if shape[1] is not None and shape[1] != array.size:
            raise CompileError(
                f"per-channel bounds have {array.size} values but input {self.op.x!r} has {shape[1]} channels")
        return array.reshape((1, array.size) + (1,) * (len(shape) - 2))


def _weighted_sum(b: GraphBuilder, pieces: list, const: Optional[str], hint: str) -> str:
    """sum_i f_i * v_i (+ const): +-1 factors without a product, others with one Mul each."""
    plus = [v for v, f in pieces if f == 1.0]
    minus = [v for v, f in pieces if f == -1.0]
    plus += [b.op("Mul", [v, b.const(f)], "scaled") for v, f in pieces if f not in (1.0, -1.0)]
    if const is not None:
        plus.append(const)
    if not plus:
        plus = [b.const(0.0)]
    total = b.add_all(plus, hint)
    return b.op("Sub", [total, b.add_all(minus, "minus")], hint) if minus else total


def _denominator(b: GraphBuilder, plan: GroupPlan, op, inputs: _Inputs, shared: dict) -> str:
    """The group's denominator z_g (plus eps where its sign is known), reusing z and sharing W+ x."""
    bias = np.zeros(1) if plan.bias_total is None else pad_rank(plan.bias_total, op.z_rank)
    if plan.eps_sign is not None:
        bias = bias + plan.eps_sign * plan.group.eps
    pieces, direct = [], []
    if plan.signed_reuse is not None:
        a, c = plan.signed_reuse
        pieces.append((op.z, a))
        if op.bias is not None:
            with np.errstate(all="ignore"):
                bias = bias - a * pad_rank(op.bias, op.z_rank)
        piece, bias = _shared_positive(b, plan, op, shared, c, bias, inputs)
        pieces.append(piece)
    for part in plan.parts if plan.signed_reuse is None else ():
        ac = part.combined()
        if part.reuse:
            a, c = ac
            if a != 0:
                pieces.append((op.z, a))
                if op.bias is not None:
                    with np.errstate(all="ignore"):
                        bias = bias - a * pad_rank(op.bias, op.z_rank)
            if c != 0:
                piece, bias = _shared_positive(b, plan, op, shared, c, bias)
                pieces.append(piece)
        elif part.input in DATA_INPUTS:
            direct += [(inputs.data(part.input), key) for key in part.weight_keys()]
        else:
            pieces += [(op.forward(b, inputs.const(part), key), 1.0) for key in part.weight_keys()]
    const = bias if np.any(bias) else None
    signed = _signed_forward(b, op, inputs, direct, const)
    if signed is not None:
        pieces.insert(0, (signed, 1.0))
        const, direct = None, []
    if direct:
        x, key = direct[0]
        pieces.insert(0, (op.forward_bias(b, x, key, const), 1.0))
        const = None
        pieces[1:1] = [(op.forward(b, x2, key2), 1.0) for x2, key2 in direct[1:]]
    if len(pieces) == 1 and const is None and pieces[0][1] == 1.0:
        return pieces[0][0]
    return _weighted_sum(b, pieces, b.const(const, hint="b") if const is not None else None, "z_mod")


def _signed_forward(b: GraphBuilder, op, inputs: "_Inputs", direct: list, bias) -> Optional[str]:
    """W_1 x+ + W_2 x- (+ bias) as one op over Concat(x+, x-) with [W_1 | W_2] (op.forward_concat), None where
    `direct` is not exactly that pair or the op has no such form."""
    if len(direct) != 2 or [x for x, _ in direct] != [inputs.data("pos"), inputs.data("neg")]:
        return None
    concat = getattr(op, "forward_concat", None)
    return concat(b, inputs.signed, [key for _, key in direct], bias) if concat else None


def _shared_positive(b: GraphBuilder, plan: GroupPlan, op, shared: dict, c: float, bias: np.ndarray,
                     inputs: Optional["_Inputs"] = None) -> tuple:
    """(piece, remaining constant) for c * P + bias, P = W+ x (or W+ x+ + W- x- when `inputs` is given: a signed
    x). The first group gets Q = Conv(x, c W+, bias) (its constant goes into the op's bias); later groups reuse Q as
    (c / c1) * Q when what is left of their constant keeps their sign (gamma: it is exactly 0, both denominators
    come from one convolution), else get their own."""
    kind = "P" if inputs is None else "Q"
    if kind in shared:
        q, c1, beta = shared[kind]
        with np.errstate(all="ignore"):
            rest = bias - (c / c1) * beta
            # gamma's rest is 0 up to rounding (1e-17 either side): that is no constant at all, not a sign change
            magnitude = np.abs(bias) + np.abs((c / c1) * beta)
            if op.bias is not None:  # the constants were built from the op's bias: their rounding scales with it
                magnitude = magnitude + 4.0 * np.abs(pad_rank(op.bias, op.z_rank))
            rest = np.where(np.abs(rest) <= REST_ROUNDING * magnitude, 0.0, rest)
        if plan.region_sign is None or bool(np.all(plan.region_sign * rest >= 0)):
            return (q, c / c1), rest
    if inputs is None:
        q = op.forward_bias(b, op.x, lin_key(0.0, c), bias if np.any(bias) else None)
    else:  # c W+ x+ + c W- x-, W- = W - W+
        direct = [(inputs.data("pos"), lin_key(0.0, c)), (inputs.data("neg"), lin_key(c, -c))]
        q = _signed_forward(b, op, inputs, direct, bias if np.any(bias) else None)
        if q is None:
            q = b.op("Add", [op.forward_bias(b, direct[0][0], direct[0][1], bias if np.any(bias) else None),
                             op.forward(b, direct[1][0], direct[1][1])], "q_signed")
    shared.setdefault(kind, (q, c, bias))
    return (q, 1.0), np.zeros(1)


def _bias_axes(op, batch_axis: int = 0) -> list:
    """Axes of z (but the batch axis) along which the bias is constant: its relevance is summed over them."""
    bias = pad_rank(op.bias, op.z_rank)
    rank = op.z_rank if op.z_rank is not None else bias.ndim
    axes = [i for i in range(rank) if i >= rank - bias.ndim and bias.shape[i - (rank - bias.ndim)] == 1]
    axes += [i for i in range(rank - bias.ndim)]
    return sorted(set(axes) - {batch_axis})


def _per_channel(op) -> bool:
    """True when z has a known rank > 2 and the bias is one value per channel (axis 1), constant along every
    later axis: its relevance then reduces straight to (N, C)."""
    if op.z_rank is None or op.z_rank <= 2:
        return False
    bias = pad_rank(op.bias, op.z_rank)
    return bias.ndim == op.z_rank and bias.shape[0] == 1 and all(d == 1 for d in bias.shape[2:]) \
        and _bias_axes(op) == list(range(2, op.z_rank))


def emit_linear(b: GraphBuilder, view, rule: Rule, R: str, op) -> tuple:
    """Generic linear rule: returns (R_x, R_bias (N, units) or None, stabilizer share (N,) or None)."""
    if not isinstance(rule, LINEAR_RULES):
        raise CompileError(f"rule {rule.name!r} does not apply to a linear node")
    x_nonneg = op.x in view.nonnegative
    plans = plan_groups(rule, op, x_nonneg)
    if op.z in view.vanishing_nonpositive:  # R is 0 wherever z <= 0: a z < 0 group carries nothing
        plans = [p for p in plans if p.group.mask != "neg"]
    inputs = _Inputs(b, view, op)
    shared: dict = {}  # the one W+ x convolution the reused denominators share
    masks: dict = {}
    backs: dict = {}  # input -> [(part, s, weight key)]
    cats: dict = {}   # (s_1, s_2, ...) -> their Concat along the channels, built once
    flat_bias = op.bias is not None and _per_channel(op) and b.layout.axis == 0 and not b.layout.merged
    groups = []  # (plan, s, elementwise stabilizer share or None)
    for plan in plans:
        group = plan.group
        z_g = _denominator(b, plan, op, inputs, shared)
        if group.mask is not None and group.mask not in masks:
            masks[group.mask] = b.op("Greater" if group.mask == "pos" else "Less", [op.z, b.const(0.0)], "mask")
        if plan.region_sign is not None:  # stab(z_g) = z_g + sign * eps where the mask holds; 0 elsewhere
            s, share = b.op("Where", [masks[group.mask], b.op("Div", [R, z_g], "s_all"), b.const(0.0)], "s"), None
        elif plan.nonnegative:
            s, share = b.op("Div", [R, z_g], "s"), None
        elif group.mask is None and z_g == op.z and (relu := relu_of(view, op.z, group.eps)) is not None:
            s, share = divide_positive(b, R, relu, group.eps), None
            plan.through_relu = True
        else:
            R_g = R if group.mask is None else b.op("Where", [masks[group.mask], R, b.const(0.0)], "R_masked")
            s, share = b.normalize(R_g, z_g, group.eps)
        groups.append((plan, s, share))
        for part in plan.parts:
            for key in part.weight_keys(group.coeff):
                backs.setdefault(part.input, []).append((part, s, key))
    joint = flat_bias and len(groups) > 1 and all(p.bias_total is not None and sh is None for p, _, sh in groups) \
        and len({p.bias_total.size for p, _, _ in groups}) == 1
    if joint:
        R_b, stab_parts = _joint_tails(b, op, groups, cats)
    else:
        R_b, stab_parts = _group_tails(b, op, groups, flat_bias)
    # relevance at units with z == 0 flows nowhere: report it, unless it is provably 0 there (vanishing.py)
    if any(p.group.mask is not None for p in plans) and op.z not in view.vanishing:
        is_zero = b.op("Equal", [op.z, b.const(0.0)], "z_is_zero")
        dropped = b.per_sample_sum(b.op("Where", [is_zero, R, b.const(0.0)], "R_dropped"), "dropped", op.z_rank)
        stab_parts.append(dropped)
        b.tails.stab.setdefault(dropped, [("value", dropped)])

    x_parts = []
    signed = _signed_backward(b, op, inputs, backs, cats)
    if signed is not None:
        x_parts.append(signed)
        backs = {kind: entries for kind, entries in backs.items() if kind not in ("pos", "neg")}
    for kind, entries in backs.items():
        back = _transposed_sum(b, op, entries, cats)
        if kind in DATA_INPUTS:
            x_parts.append(b.op("Mul", [inputs.data(kind), back], "r_in"))
        elif kind == "one":
            x_parts.append(back)
        else:
            x_parts.append(b.op("Mul", [inputs.channel_scale(entries[0][0]), back], "r_in"))
    R_x = b.add_all(x_parts, "R_x") if x_parts else b.zeros_like(op.x, "R_x0")
    stab = b.add_all(stab_parts, "stab_all") if stab_parts else None
    if stab is not None:
        b.tails.add_stab(stab, [term for part in stab_parts for term in b.tails.stab.get(part, [("value", part)])])
    return R_x, R_b, stab


def _concat(b: GraphBuilder, names: list, cats: dict) -> str:
    """The channel Concat of names (one per distinct tuple)."""
    key = tuple(names)
    if key not in cats:
        cats[key] = b.op("Concat", list(names), "s_cat", axis=1)
    return cats[key]


def _transposed_sum(b: GraphBuilder, op, entries: list, cats: dict) -> str:
    """sum_i W_i^T s_i: one transposed op over the channel Concat of the s_i where the op has one
    (op.transpose_concat: the weights stacked along its input-channel axis), else one per term, added."""
    ss = [s for _, s, _ in entries]
    if len(ss) > 1 and len(set(ss)) == len(ss):
        concat = getattr(op, "transpose_concat", None)
        value = concat(b, lambda: _concat(b, ss, cats), [key for _, _, key in entries]) if concat else None
        if value is not None:
            return value
    return b.add_all([op.transpose(b, s, key) for _, s, key in entries], "back")


def _signed_backward(b: GraphBuilder, op, inputs: "_Inputs", backs: dict, cats: dict) -> Optional[str]:
    """x+ * (sum_i W_i^T s_i) + x- * (sum_i V_i^T s_i) from one transposed op over Concat(s_1, ...) whose output
    channels hold both blocks (op.transpose_blocks), one Mul by Concat(x+, x-), one Split and one Add; None where
    the two inputs do not read the same s in the same order or the op has no such form."""
    if "pos" not in backs or "neg" not in backs or not hasattr(op, "transpose_blocks"):
        return None
    ss = [s for _, s, _ in backs["pos"]]
    if ss != [s for _, s, _ in backs["neg"]] or len(set(ss)) != len(ss):
        return None
    rows = [[key for _, _, key in backs["pos"]], [key for _, _, key in backs["neg"]]]
    back = op.transpose_blocks(b, lambda: ss[0] if len(ss) == 1 else _concat(b, ss, cats), rows)
    if back is None:
        return None
    product = b.op("Mul", [inputs.signed(), back], "r_in_signed")
    width = op.weight.shape[1] * op.attrs.get("group", 1)
    if b.opset >= 13:
        halves = b.op("Split", [product, b.ints([width, width], "split")], "r_in_half", n_out=2, axis=1)
    else:
        halves = b.op("Split", [product], "r_in_half", n_out=2, axis=1, split=[width, width])
    return b.op("Add", halves, "r_in")


def _joint_tails(b: GraphBuilder, op, groups: list, cats: dict) -> tuple:
    """Bias row and stabilizer of per-channel groups whose shares are sign * eps * s: one ReduceSum over the
    Concat of their s (the one the transposed op reads), (N, k C); returns (R_b (N, C), [stabilizer (N,)])."""
    axes = _bias_axes(op, 0)
    reduced = b.reduce("ReduceSum", _concat(b, [s for _, s, _ in groups], cats), axes, keepdims=False, hint="s_red")
    factors = np.concatenate([(p.group.coeff * p.bias_total).reshape(-1) for p, _, _ in groups])
    width = factors.size // len(groups)
    vector = np.concatenate([np.full(width, p.group.coeff * p.eps_sign * p.group.eps) for p, _, _ in groups])
    rows = b.op("Mul", [reduced, b.const(factors)], "r_bias")
    stacked = b.op("Reshape", [rows, b.ints([0, len(groups), width])], "r_bias_groups")
    R_b = b.reduce("ReduceSum", stacked, [1], keepdims=False, hint="R_b_full")
    b.tails.add_bias(R_b, width, [(reduced, factors)])
    return R_b, [stabilizer_dot(b, reduced, vector)]


def _group_tails(b: GraphBuilder, op, groups: list, flat_bias: bool) -> tuple:
    """Bias row and stabilizer shares group by group; returns (R_b (N, units) or None, [stabilizer (N,), ...])."""
    bias_parts, stab_parts, bias_terms = [], [], []
    for plan, s, share in groups:
        group = plan.group
        reduced = None
        if plan.bias_total is not None:
            axes = _bias_axes(op, b.layout.axis if op.z_rank is not None else 0)
            factor = pad_rank(group.coeff * plan.bias_total, op.z_rank)
            if flat_bias:  # one bias per channel: reduce straight to (N, C), no Reshape after
                reduced = b.reduce("ReduceSum", s, axes, keepdims=False, hint="s_red")
                factor = factor.reshape(-1)
                bias_terms.append((reduced, factor))
            else:
                reduced = b.reduce("ReduceSum", s, axes, keepdims=True, hint="s_red") if axes else s
            bias_parts.append(b.op("Mul", [reduced, b.const(factor)], "r_bias"))
        if share is None:  # stab = z_g + sign * eps wherever s != 0: the share is sign * eps * sum(s)
            weight = group.coeff * plan.eps_sign * group.eps
            if flat_bias and reduced is not None and factor.size > 1:  # (N, C) @ (C,): sum and scale in one node
                stab_parts.append(stabilizer_dot(b, reduced, np.full(factor.size, weight)))
            else:
                rank = 2 if flat_bias and reduced is not None else op.z_rank  # (N, C) after a flat reduction
                total = b.per_sample_sum(reduced if reduced is not None else s, "s_sum", rank)
                stab_parts.append(b.op("Mul", [total, b.const(weight)], "stab"))
        else:
            total = b.per_sample_sum(share, "stab_sum", op.z_rank)
            stab_parts.append(total if group.coeff == 1.0 else b.op("Mul", [total, b.const(group.coeff)], "stab"))
    R_b = None
    if bias_parts:
        R_b = b.add_all(bias_parts, "R_b_full")
        if op.z_rank is not None and (b.layout.axis != 0 or b.layout.merged):  # the batch moved: (N, units)
            R_b = b.to_rows(R_b, op.z_rank, "R_b")
        elif op.z_rank != 2 and not flat_bias:  # (N, units, 1, ...) -> (N, units)
            R_b = b.op("Reshape", [R_b, b.ints([0, -1])], "R_b")
        elif flat_bias:
            b.tails.add_bias(R_b, bias_terms[0][1].size, bias_terms)
    return R_b, stab_parts
