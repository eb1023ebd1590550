"""The one generic linear emitter, driven by the rule's groups, and the linear ops that plug into it.

Each linear op contributes two small pieces: forward(x, W') = "apply the op with these weights, no bias" and
transpose(s, W') = "apply the transposed op" (shaped like x). Modified weights are computed in NumPy at compile
time and stored as initializers; input modifications (x+, x-, ones, bounds) become graph nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..builder import GraphBuilder
from ..errors import CompileError
from ..rules import LINEAR_RULES, Rule, ZBox, modify_weight
from . import Emitted, NodeView, register


# ---------------------------------------------------------------------------------------------------------------
# linear ops
@dataclass
class LinearOp:
    """z = op(x, W) + bias, with forward/transpose emitters; bias broadcasts against z (or is None)."""

    x: str
    z: str
    weight: np.ndarray
    bias: Optional[np.ndarray]
    z_rank: Optional[int]
    x_rank: Optional[int]
    _weights: dict = field(default_factory=dict)

    def stored(self, b: GraphBuilder, key: str) -> str:
        """The initializer holding the weight modified by key, cached per op."""
        if key not in self._weights:
            self._weights[key] = b.const(self.layout(modify_weight(key, self.weight)), hint="w")
        return self._weights[key]

    def layout(self, w: np.ndarray) -> np.ndarray:
        """How a modified weight is stored (default: as is)."""
        return w

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """op(x, W_key) without bias."""
        raise NotImplementedError

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """W_key^T s, shaped like x."""
        raise NotImplementedError


@dataclass
class DenseOp(LinearOp):
    """x (..., K) @ W (K, M); W is stored transposed (M, K) so forward is Gemm(transB=1) and backward a plain product."""

    def layout(self, w: np.ndarray) -> np.ndarray:
        """Stored as (M, K)."""
        return np.ascontiguousarray(w.T)

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """x @ W' (Gemm with transB for rank 2, MatMul with the transposed layout otherwise)."""
        w = self.stored(b, key)
        if self.x_rank == 2:
            return b.op("Gemm", [x, w], "fwd", transB=1)
        wt = b.const(np.ascontiguousarray(modify_weight(key, self.weight)), hint="w")
        return b.op("MatMul", [x, wt], "fwd")

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """s @ W'^T: one MatMul with the stored (M, K) layout, any leading dims."""
        return b.op("MatMul", [s, self.stored(b, key)], "bwd")


@dataclass
class LeftDenseOp(LinearOp):
    """W (M, K) @ x (..., K, N): the constant is the left operand."""

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """W' @ x."""
        return b.op("MatMul", [self.stored(b, key), x], "fwd")

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """W'^T @ s."""
        wt = b.const(np.ascontiguousarray(modify_weight(key, self.weight).T), hint="wT")
        return b.op("MatMul", [wt, s], "bwd")


@dataclass
class ConvOp(LinearOp):
    """Conv(x, W) with explicit pads; the transpose is ConvTranspose with the same weights, sized back to x."""

    attrs: dict = field(default_factory=dict)
    output_padding: tuple = ()

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """Conv(x, W') without bias."""
        return b.op("Conv", [x, self.stored(b, key)], "fwd", **self.attrs)

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """ConvTranspose(s, W') with output_padding so that the result has x's spatial shape."""
        attrs = dict(self.attrs)
        attrs.pop("kernel_shape", None)
        if any(self.output_padding):
            attrs["output_padding"] = list(self.output_padding)
        return b.op("ConvTranspose", [s, self.stored(b, key)], "bwd", **attrs)


@dataclass
class ElementwiseOp(LinearOp):
    """z = x * w + bias with a constant w that broadcasts to x's shape (scale, folded BN, Add/Sub/Mul/Div constants)."""

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """x * w'."""
        w = modify_weight(key, self.weight)
        if w.size == 1 and float(w.reshape(-1)[0]) == 1.0:
            return x
        return b.op("Mul", [x, b.const(w, hint="w")], "fwd")

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """s * w' (a diagonal map is its own transpose)."""
        return self.forward(b, s, key)


# ---------------------------------------------------------------------------------------------------------------
# the generic emitter
def _pad_rank(array: np.ndarray, rank: Optional[int]) -> np.ndarray:
    """Left-pad an array's shape with ones up to rank."""
    if rank is None or array.ndim >= rank:
        return array
    return array.reshape((1,) * (rank - array.ndim) + array.shape)


def _bound_tensor(b: GraphBuilder, view: NodeView, op: LinearOp, value, x: str) -> str:
    """A bound (scalar or per-channel along axis 1) expanded to x's shape."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 1 and array.size > 1:
        shape = view.shape(op.x)
        if shape is None or len(shape) < 2:
            raise CompileError(f"per-channel bounds need a known channel axis on {op.x!r}")
        if shape[1] is not None and shape[1] != array.size:
            raise CompileError(
                f"per-channel bounds have {array.size} values but input {op.x!r} has {shape[1]} channels")
        array = array.reshape((1, array.size) + (1,) * (len(shape) - 2))
    return b.op("Expand", [b.const(array), b.op("Shape", [x], "x_shape")], "bound")


def emit_linear(b: GraphBuilder, view: NodeView, rule: Rule, R: str, op: LinearOp) -> tuple:
    """Generic linear rule: returns (R_x, R_bias (N, units) or None, stabilizer share (N,))."""
    if not isinstance(rule, LINEAR_RULES):
        raise CompileError(f"rule {rule.name!r} does not apply to a linear node")
    cache: dict = {}
    x_nonneg = op.x in view.nonnegative

    def modified_input(kind: str) -> Optional[str]:
        """x, x+, x-, ones or a bound, built once per emit; None where it is identically zero."""
        if kind in cache:
            return cache[kind]
        if kind == "x":
            value = op.x
        elif kind == "pos":
            value = op.x if x_nonneg else b.op("Relu", [op.x], "x_pos")
        elif kind == "neg":
            value = None if x_nonneg else b.op("Min", [op.x, b.const(0.0)], "x_neg")
        elif kind == "ones":
            value = b.ones_like(op.x, "x_ones")
        elif kind in ("low", "high"):
            assert isinstance(rule, ZBox)
            value = _bound_tensor(b, view, op, getattr(rule, kind), op.x)
        else:
            raise KeyError(kind)
        cache[kind] = value
        return value

    x_parts, bias_parts, stab_parts = [], [], []
    for group in rule.groups():
        # which terms contribute: skip an all-zero weight or an identically zero input
        terms = []
        for term in group.terms:
            w_mod = modify_weight(term.weight, op.weight)
            inp = modified_input(term.input)
            terms.append((term, inp if (inp is not None and np.any(w_mod)) else None))
        bias_total = None
        if op.bias is not None:
            bias_total = sum(term.sign * modify_weight(term.bias, op.bias) for term, _ in terms)
            if not np.any(bias_total):
                bias_total = None
        if group.is_plain:
            z_g = op.z
        else:
            pieces = []
            for term, inp in terms:
                if inp is None:
                    continue
                y = op.forward(b, inp, term.weight)
                pieces.append(y if term.sign == 1.0 else b.op("Mul", [y, b.const(term.sign)], "neg_term"))
            if not pieces:  # every weight modified to zero: the denominator is the bias alone
                pieces.append(b.zeros_like(op.z, "z0"))
            if bias_total is not None:
                pieces.append(b.const(_pad_rank(bias_total, op.z_rank), hint="b"))
            z_g = pieces[0] if len(pieces) == 1 else b.op("Sum" if len(pieces) > 2 else "Add", pieces, "z_mod")
        # relevance that may flow through this group
        R_g = R
        if group.mask is not None:
            cond = b.op("Greater" if group.mask == "pos" else "Less", [op.z, b.const(0.0)], "mask")
            R_g = b.op("Where", [cond, R, b.const(0.0)], "R_masked")
        s, share = b.normalize(R_g, z_g, group.eps)
        for term, inp in terms:
            if inp is None:
                continue
            back = op.transpose(b, s, term.weight)
            contrib = back if term.input == "ones" else b.op("Mul", [inp, back], "r_in")
            factor = group.coeff * term.sign
            if factor != 1.0:
                contrib = b.op("Mul", [contrib, b.const(factor)], "r_in_scaled")
            x_parts.append(contrib)
        if bias_total is not None:
            bias_parts.append(b.op("Mul", [s, b.const(_pad_rank(group.coeff * bias_total, op.z_rank))], "r_bias"))
        if group.coeff != 1.0:
            share = b.op("Mul", [share, b.const(group.coeff)], "stab_scaled")
        stab_parts.append(share)
    if any(g.mask is not None for g in rule.groups()):  # relevance at units with z == 0 flows nowhere: report it
        is_zero = b.op("Equal", [op.z, b.const(0.0)], "z_is_zero")
        stab_parts.append(b.op("Where", [is_zero, R, b.const(0.0)], "R_dropped"))

    R_x = b.add_all(x_parts, "R_x") if x_parts else b.zeros_like(op.x, "R_x0")
    R_b = None
    if bias_parts:
        full = b.add_all(bias_parts, "R_b_full")
        R_b = _bias_units(b, full, op)
    stab = b.per_sample_sum(b.add_all(stab_parts, "stab_all"), "stab_sum") if stab_parts else None
    return R_x, R_b, stab


def _bias_units(b: GraphBuilder, full: str, op: LinearOp) -> str:
    """Reduce a full-size bias relevance to (N, units): sum over the axes along which the bias is constant."""
    bias = _pad_rank(op.bias, op.z_rank)
    rank = op.z_rank if op.z_rank is not None else bias.ndim
    axes = [i for i in range(1, rank) if i >= rank - bias.ndim and bias.shape[i - (rank - bias.ndim)] == 1]
    axes += [i for i in range(1, rank - bias.ndim)]
    reduced = b.reduce("ReduceSum", full, sorted(set(axes)), keepdims=False, hint="R_b_red") if axes else full
    return b.op("Reshape", [reduced, b.ints([0, -1])], "R_b")


# ---------------------------------------------------------------------------------------------------------------
# registrations
def _rank(view: NodeView, name: str) -> Optional[int]:
    """Static rank of a value, None if unknown."""
    shape = view.shape(name)
    return len(shape) if shape is not None else None


def _gemm_op(view: NodeView) -> LinearOp:
    """Gemm(A, B, C) with constant B (or A): alpha, beta, transA, transB folded into W and bias."""
    a, bname = view.inputs[0], view.inputs[1]
    c = view.inputs[2] if len(view.inputs) > 2 else ""
    alpha, beta = view.attr("alpha", 1.0), view.attr("beta", 1.0)
    bias = view.const(c)
    bias = None if bias is None else beta * bias.astype(np.float64)
    if view.is_relevant(a):
        w = view.const(bname).astype(np.float64) * alpha
        w = w.T if view.attr("transB", 0) else w
        return DenseOp(x=a, z=view.outputs[0], weight=w, bias=bias, z_rank=2, x_rank=2)
    w = view.const(a).astype(np.float64) * alpha
    w = w.T if view.attr("transA", 0) else w
    return LeftDenseOp(x=bname, z=view.outputs[0], weight=w, bias=bias, z_rank=2, x_rank=2)


def _check_gemm(view: NodeView) -> Optional[str]:
    """Gemm is linear when exactly one of A, B is data (not transposed) and the other and C are constant."""
    a, bname = view.inputs[0], view.inputs[1]
    c = view.inputs[2] if len(view.inputs) > 2 else ""
    if c and view.const(c) is None:
        return "its bias C is not a constant"
    if view.is_relevant(a) and view.const(bname) is not None:
        return "transA=1 on the data operand is not supported" if view.attr("transA", 0) else None
    if view.is_relevant(bname) and view.const(a) is not None:
        return "transB=1 on the data operand is not supported" if view.attr("transB", 0) else None
    return "both operands carry data (a product of two activations is not linear)"


@register("Gemm", group="dense", rules=LINEAR_RULES, check=_check_gemm)
def emit_gemm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Gemm as a dense linear node: z = x W + b under the rule's groups."""
    op = _gemm_op(view)
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    rel = [R_x, None, None] if op.x == view.inputs[0] else [None, R_x, None]
    return Emitted(rel[: len(view.inputs)], R_b, stab)


def _check_matmul(view: NodeView) -> Optional[str]:
    """MatMul is linear when one operand is a 2-D constant."""
    a, w = view.inputs
    if view.is_relevant(a) and view.const(w) is not None:
        return None if view.const(w).ndim == 2 else "its constant operand is not 2-D"
    if view.is_relevant(w) and view.const(a) is not None:
        return None if view.const(a).ndim == 2 else "its constant operand is not 2-D"
    return "both operands carry data (a product of two activations is not linear)"


@register("MatMul", group="dense", rules=LINEAR_RULES, check=_check_matmul)
def emit_matmul(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """MatMul with a constant operand as a dense linear node without bias."""
    a, w = view.inputs
    z = view.outputs[0]
    if view.is_relevant(a):
        op = DenseOp(x=a, z=z, weight=view.const(w).astype(np.float64), bias=None,
                     z_rank=_rank(view, z), x_rank=_rank(view, a))
        R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
        return Emitted([R_x, None], R_b, stab)
    op = LeftDenseOp(x=w, z=z, weight=view.const(a).astype(np.float64), bias=None,
                     z_rank=_rank(view, z), x_rank=_rank(view, w))
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    return Emitted([None, R_x], R_b, stab)


def conv_geometry(view: NodeView, x_shape: tuple, w_shape: tuple) -> tuple:
    """Explicit (strides, pads, dilations, output_padding) of a Conv, resolving auto_pad from static shapes."""
    nd = len(w_shape) - 2
    kernel = list(view.attr("kernel_shape", w_shape[2:]))
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    pads = list(view.attr("pads", [0] * (2 * nd)))
    auto_pad = view.attr("auto_pad", "NOTSET")
    spatial = x_shape[2:]
    if any(d is None for d in spatial):
        raise CompileError(f"the spatial shape of {view.inputs[0]!r} is not known at compile time "
                           f"(needed to size the transposed convolution); give the model static spatial dims")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    output_padding = []
    for i in range(nd):
        eff = (kernel[i] - 1) * dilations[i] + 1
        out = (spatial[i] + pads[i] + pads[i + nd] - eff) // strides[i] + 1
        back = strides[i] * (out - 1) + eff - pads[i] - pads[i + nd]
        output_padding.append(spatial[i] - back)
    return kernel, strides, pads, dilations, output_padding


def _check_conv(view: NodeView) -> Optional[str]:
    """Conv is linear when the weight (and bias) are constant and the input's spatial shape is static."""
    if view.const(view.inputs[1]) is None:
        return "its weight is not a constant"
    if len(view.inputs) > 2 and view.inputs[2] and view.const(view.inputs[2]) is None:
        return "its bias is not a constant"
    shape = view.shape(view.inputs[0])
    if shape is None or any(d is None for d in shape[2:]):
        return f"the spatial shape of its input {view.inputs[0]!r} is not known at compile time"
    return None


@register("Conv", group="convolution", rules=LINEAR_RULES, check=_check_conv)
def emit_conv(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Conv as a linear node; its transpose is ConvTranspose with the same weights, strides, pads and groups."""
    x = view.inputs[0]
    w = view.const(view.inputs[1]).astype(np.float64)
    bias = view.const(view.inputs[2]) if len(view.inputs) > 2 and view.inputs[2] else None
    x_shape = view.shape(x)
    kernel, strides, pads, dilations, output_padding = conv_geometry(view, x_shape, w.shape)
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations, group=view.attr("group", 1))
    nd = len(w.shape) - 2
    bias_arr = None if bias is None else bias.astype(np.float64).reshape((-1,) + (1,) * nd)
    op = ConvOp(x=x, z=view.outputs[0], weight=w, bias=bias_arr, z_rank=nd + 2, x_rank=nd + 2,
                attrs=attrs, output_padding=tuple(output_padding))
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    return Emitted([R_x] + [None] * (len(view.inputs) - 1), R_b, stab)


def _check_batchnorm(view: NodeView) -> Optional[str]:
    """An unfolded BatchNormalization is a per-channel linear node when its statistics are constant."""
    if any(view.const(n) is None for n in view.inputs[1:5]):
        return "its scale, bias, mean or variance is not a constant"
    if len(view.outputs) > 1 and any(view.outputs[1:]):
        return "training mode (running statistics as outputs) is not supported"
    return None


@register("BatchNormalization", group="linear", rules=LINEAR_RULES, check=_check_batchnorm)
def emit_batchnorm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """BatchNormalization as z = x * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps)) per channel."""
    x = view.inputs[0]
    scale, beta, mean, var = (view.const(n).astype(np.float64) for n in view.inputs[1:5])
    k = scale / np.sqrt(var + view.attr("epsilon", 1e-5))
    rank = _rank(view, x) or 2
    shape = (-1,) + (1,) * (rank - 2)
    op = ElementwiseOp(x=x, z=view.outputs[0], weight=k.reshape(shape), bias=(beta - mean * k).reshape(shape),
                       z_rank=rank, x_rank=rank)
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    return Emitted([R_x] + [None] * (len(view.inputs) - 1), R_b, stab)


def affine_op(view: NodeView) -> LinearOp:
    """Add/Sub/Mul/Div of one activation and one constant as z = x * w + bias."""
    a, c = view.inputs
    data_first = view.is_relevant(a)
    x, k = (a, view.const(c)) if data_first else (c, view.const(a))
    k = k.astype(np.float64)
    one = np.ones((1,) * k.ndim)
    op_type = view.op_type
    if op_type == "Add":
        w, bias = one, k
    elif op_type == "Sub":
        w, bias = (one, -k) if data_first else (-one, k)
    elif op_type == "Mul":
        w, bias = k, None
    else:  # Div by a constant
        w, bias = 1.0 / k, None
    rank = _rank(view, view.outputs[0])
    return ElementwiseOp(x=x, z=view.outputs[0], weight=w, bias=bias, z_rank=rank, x_rank=_rank(view, x))


def emit_affine(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """An activation combined with a constant (bias add, scaling) as an elementwise linear node."""
    op = affine_op(view)
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    rel = [R_x, None] if op.x == view.inputs[0] else [None, R_x]
    return Emitted(rel, R_b, stab)
