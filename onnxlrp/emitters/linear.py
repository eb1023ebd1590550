"""The linear ops that plug into the one generic linear emitter (generic_linear.emit_linear, driven by the rule's
groups), and their registrations.

Each linear op contributes two small pieces: forward(x, W') = "apply the op with these weights, no bias" and
transpose(s, W') = "apply the transposed op" (shaped like x). W itself is the model's own initializer; a large
modified weight (W+, W-, gamma's) is derived from it by constant-only graph ops that onnxruntime folds when the
session starts (the file does not grow), a small one is computed in NumPy and stored. Input modifications
(x+, x-, ones, bounds) become graph nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..builder import GraphBuilder
from ..rules import LINEAR_RULES, Epsilon, Norm, Pass, Rule
from ..specialise import NeedsStaticSize
from . import Emitted, NodeView, register
from .generic_linear import basis, emit_linear, weight_value
from .geometry import explicit_pads
from .runtime_sizes import crop_centre_to, cut_tail, known, pad_tail_to, require_opset
from .subpixel import subpixel_plan, subpixel_transpose

# weights smaller than this are stored modified (NumPy); larger ones are derived in the graph from W
DERIVE_MIN_SIZE = 4096


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
    source: Optional[str] = None  # the model's tensor that holds exactly W in this op's layout(), if one does

    def stored(self, b: GraphBuilder, key: str) -> str:
        """The weight modified by key, in this op's layout, cached per op. W itself is the model's own initializer
        (the builder shares identical constants); a*W + c*W+ (W+, W-, gamma's) of a large weight is derived from it
        in the graph, which onnxruntime folds once when the session starts, so the file does not grow."""
        if key not in self._weights:
            ac = basis(key)
            if ac == (1.0, 0.0):
                named = b.model_weight(self.source) if self.source else None
                self._weights[key] = named or b.const(self.layout(self.weight), hint="w")
            elif ac is None or self.weight.size < DERIVE_MIN_SIZE:
                self._weights[key] = b.const(self.layout(weight_value(key, self.weight)), hint="w")
            else:
                self._weights[key] = self._derived(b, *ac)
        return self._weights[key]

    def _derived(self, b: GraphBuilder, a: float, c: float) -> str:
        """a*W + c*W+ from the stored W with constant-only ops, one rounding per element: W * (W > 0 ? a+c : a)."""
        base = self.stored(b, "W")
        if c == 0.0:
            return b.op("Mul", [base, b.const(a)], "w_scaled")
        if a == 0.0:
            positive = b.op("Relu", [base], "w_pos")
            return positive if c == 1.0 else b.op("Mul", [positive, b.const(c)], "w_scaled")
        factor = b.op("Where", [b.op("Greater", [base, b.const(0.0)], "w_is_pos"), b.const(a + c), b.const(a)],
                      "w_factor")
        return b.op("Mul", [base, factor], "w_mod")

    def layout(self, w: np.ndarray) -> np.ndarray:
        """How a modified weight is stored (default: as is)."""
        return w

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """op(x, W_key) without bias."""
        raise NotImplementedError

    def forward_bias(self, b: GraphBuilder, x: str, key: str, bias: Optional[np.ndarray]) -> str:
        """op(x, W_key) + bias (bias broadcasts against z; None for none): one op where the op takes a bias."""
        y = self.forward(b, x, key)
        return y if bias is None else b.op("Add", [y, b.const(bias, hint="b")], "z_mod")

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """W_key^T s, shaped like x."""
        raise NotImplementedError

    def const_input_shape(self, view: NodeView) -> Optional[list]:
        """x's shape with batch 1 when it is static (a constant input's forward is then folded), else None."""
        shape = view.shape(self.x)
        if shape is None or len(shape) < 1 or any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
            return None
        return [1] + list(shape[1:])


@dataclass
class DenseOp(LinearOp):
    """x (..., K) @ W (K, M). W is kept in the layout the model already stores ((M, K) for Gemm with transB=1, as
    torch exports Linear; (K, M) for MatMul), so that W itself costs nothing; forward and transpose are one Gemm or
    MatMul either way (a transposed copy, where one is needed, is folded by onnxruntime)."""

    store_km: Optional[bool] = None  # True: stored (K, M); decided on first use from the model's initializers
    source_km: Optional[bool] = None  # how `source` holds W: (K, M) (MatMul, Gemm transB=0) or (M, K) (transB=1)

    def _layout_for(self, b: GraphBuilder) -> bool:
        """Store (K, M) when the model holds W that way (and not as (M, K))."""
        if self.store_km is None:
            w = self.weight
            if self.source_km is not None and b.model_weight(self.source or "") is not None:
                self.store_km = self.source_km
            else:
                self.store_km = b.existing(w) is not None and b.existing(np.ascontiguousarray(w.T)) is None
        return self.store_km

    def layout(self, w: np.ndarray) -> np.ndarray:
        """(K, M) or (M, K), see store_km."""
        return w if self.store_km else np.ascontiguousarray(w.T)

    def _transposed(self, b: GraphBuilder, key: str) -> str:
        """The stored weight in the other layout (a constant-only Transpose, folded)."""
        if ("T", key) not in self._weights:
            self._weights[("T", key)] = b.op("Transpose", [self.stored(b, key)], "w_T", perm=[1, 0])
        return self._weights[("T", key)]

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """x @ W'."""
        return self.forward_bias(b, x, key, None)

    def forward_bias(self, b: GraphBuilder, x: str, key: str, bias: Optional[np.ndarray]) -> str:
        """x @ W' (+ bias): Gemm for rank 2 (bias as C when it is per unit), MatMul otherwise."""
        km = self._layout_for(b)
        w = self.stored(b, key)
        m = self.weight.shape[1]
        if self.x_rank == 2 and (bias is None or (bias.size == m and bias.shape[-1] == m)):
            inputs = [x, w] if bias is None else [x, w, b.const(bias.reshape(-1), hint="b")]
            return b.op("Gemm", inputs, "fwd", transB=0 if km else 1)
        y = b.op("MatMul", [x, w if km else self._transposed(b, key)], "fwd")
        return y if bias is None else b.op("Add", [y, b.const(bias, hint="b")], "z_mod")

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """s @ W'^T: one MatMul on (M, K), or Gemm(transB=1) on (K, M) for rank 2, any leading dims otherwise."""
        if not self._layout_for(b):
            return b.op("MatMul", [s, self.stored(b, key)], "bwd")
        if self.z_rank == 2:
            return b.op("Gemm", [s, self.stored(b, key)], "bwd", transB=1)
        return b.op("MatMul", [s, self._transposed(b, key)], "bwd")


@dataclass
class LeftDenseOp(LinearOp):
    """W (M, K) @ x (..., K, N): the constant is the left operand."""

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """W' @ x."""
        return b.op("MatMul", [self.stored(b, key), x], "fwd")

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """W'^T @ s (the transposed weight is a constant-only Transpose, folded)."""
        if ("T", key) not in self._weights:
            self._weights[("T", key)] = b.op("Transpose", [self.stored(b, key)], "w_T", perm=[1, 0])
        return b.op("MatMul", [self._weights[("T", key)], s], "bwd")

    def const_input_shape(self, view: NodeView) -> Optional[list]:
        """x's leading axis is not a batch axis here: constant inputs stay shaped like x."""
        return None


@dataclass
class ConvOp(LinearOp):
    """Conv(x, W) with explicit pads; the transpose is ConvTranspose with the same weights, sized back to x."""

    attrs: dict = field(default_factory=dict)
    output_padding: tuple = ()
    # sizes known only at run time (strides > 1): "tail" pads (or cuts) the transposed result at the end to x's
    # size; a SAME auto_pad also crops its window there (see runtime_sizes); "" for static sizes
    fit: str = ""
    x_spatial: tuple = ()  # x's spatial size where it is static

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """Conv(x, W') without bias."""
        return b.op("Conv", [x, self.stored(b, key)], "fwd", **self.attrs)

    def forward_bias(self, b: GraphBuilder, x: str, key: str, bias: Optional[np.ndarray]) -> str:
        """Conv(x, W', B) when the bias is per output channel (one op, fusable), else Conv + Add."""
        cout, rank = self.weight.shape[0], len(self.weight.shape)
        full = None if bias is None or bias.ndim > rank else bias.reshape((1,) * (rank - bias.ndim) + bias.shape)
        if full is None or not (full.size == 1 or full.shape == (1, cout) + (1,) * (rank - 2)):
            return super().forward_bias(b, x, key, bias)
        per_channel = np.broadcast_to(full.reshape(-1), (cout,))
        return b.op("Conv", [x, self.stored(b, key), b.const(per_channel, hint="b")], "fwd", **self.attrs)

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """W'^T s sized like x: for stride 1 a Conv with the flipped, in/out-swapped kernel (onnxruntime runs it
        faster than ConvTranspose and in its blocked layout), else ConvTranspose with output_padding."""
        pads = self._flipped_pads()
        if pads is not None:
            return b.op("Conv", [s, self._flipped(b, key)], "bwd", **dict(self.attrs, pads=pads))
        return self._conv_transpose(b, s, self.stored(b, key), self.weight.shape[1])

    def transpose_concat(self, b: GraphBuilder, concat, keys: list) -> Optional[str]:
        """sum_i W_i^T s_i as one op over concat() = Concat(s_1, s_2, ...) along the channels (see
        transpose_blocks)."""
        return self.transpose_blocks(b, concat, [keys])

    def transpose_blocks(self, b: GraphBuilder, concat, rows: list) -> Optional[str]:
        """Concat over r of (sum_i W_{r,i}^T s_i) along the channels, as one op over concat() = Concat(s_1, ...):
        the transposed weights laid out as blocks, rows along its output channels and the s_i along its input
        channels (constant-only ops, folded); None for grouped convolutions (a group's channels would have to be
        interleaved)."""
        if self.attrs.get("group", 1) != 1:
            return None
        pads = self._flipped_pads()
        tag = ("blocks", pads is not None) + tuple(tuple(keys) for keys in rows)
        if tag not in self._weights:
            if pads is not None:  # flipped kernels (Cin, Cout, ...): s along axis 1, rows along axis 0
                blocks = [self._stack(b, [self._flipped(b, k) for k in keys], 1) for keys in rows]
                self._weights[tag] = self._stack(b, blocks, 0)
            else:  # ConvTranspose weights (Cout, Cin, ...): s along axis 0, rows along axis 1
                blocks = [self._stack(b, [self.stored(b, k) for k in keys], 0) for keys in rows]
                self._weights[tag] = self._stack(b, blocks, 1)
        if pads is not None:
            return b.op("Conv", [concat(), self._weights[tag]], "bwd", **dict(self.attrs, pads=pads))
        return self._conv_transpose(b, concat(), self._weights[tag], len(rows) * self.weight.shape[1])

    def forward_concat(self, b: GraphBuilder, concat, keys: list, bias: Optional[np.ndarray]) -> Optional[str]:
        """sum_i Conv(x_i, W_i) (+ bias) as one Conv over concat() = Concat(x_1, ...) with [W_1 | W_2 | ...]
        along the input channels; None for grouped convolutions."""
        if self.attrs.get("group", 1) != 1:
            return None
        tag = ("fwd_cat",) + tuple(keys)  # a weight key of its own: stored() finds it cached
        if tag not in self._weights:
            self._weights[tag] = self._stack(b, [self.stored(b, k) for k in keys], 1)
        return self.forward_bias(b, concat(), tag, bias)

    @staticmethod
    def _stack(b: GraphBuilder, names: list, axis: int) -> str:
        """Concat of constant weights along axis (itself for one)."""
        return names[0] if len(names) == 1 else b.op("Concat", names, "w_cat", axis=axis)

    def _conv_transpose(self, b: GraphBuilder, s: str, weight: str, channels: int) -> str:
        """ConvTranspose(s, weight) with this op's geometry, sized like x (`channels` output channels); a large
        strided kernel: sub-pixel (subpixel.py)."""
        plan = subpixel_plan(self) if not self.fit else None
        if plan is not None:
            return subpixel_transpose(b, s, weight, plan, channels)
        attrs = dict(self.attrs)
        attrs.pop("kernel_shape", None)
        if any(self.output_padding):
            attrs["output_padding"] = list(self.output_padding)
        nd = len(self.weight.shape) - 2
        if self.fit in ("SAME_UPPER", "SAME_LOWER"):  # the full transposed grid, then the window the pads cut
            attrs.pop("auto_pad")
            full = b.op("ConvTranspose", [s, weight], "bwd_full", **attrs, pads=[0] * (2 * nd))
            return crop_centre_to(b, full, self.x, 2, nd + 2, upper=self.fit == "SAME_UPPER")
        if self.fit == "tail":  # the grid from the first input position on; its end is fitted to x's size
            pads = list(attrs["pads"])
            attrs["pads"] = pads[:nd] + [0] * nd
            return pad_tail_to(b, b.op("ConvTranspose", [s, weight], "bwd", **attrs), self.x, 2, nd + 2)
        return b.op("ConvTranspose", [s, weight], "bwd", **attrs)

    def _flipped_pads(self) -> Optional[list]:
        """Pads of the flipped-kernel Conv that equals the transpose (stride 1 only), None where there is none."""
        nd = len(self.weight.shape) - 2
        strides = self.attrs.get("strides", [1] * nd)
        dilations = self.attrs.get("dilations", [1] * nd)
        pads = self.attrs.get("pads", [0] * (2 * nd))
        if any(st != 1 for st in strides) or any(self.output_padding) or "auto_pad" in self.attrs:
            return None
        eff = [(k - 1) * d for k, d in zip(self.weight.shape[2:], dilations)]
        flipped = [eff[i % nd] - p for i, p in enumerate(pads)]
        return flipped if all(p >= 0 for p in flipped) else None

    def _flipped(self, b: GraphBuilder, key: str) -> str:
        """W' with input/output channels swapped per group and the kernel reversed: constant-only ops, folded."""
        if ("flip", key) not in self._weights:
            w = self.stored(b, key)
            shape = self.weight.shape
            cout, cin_g, kernel, nd = shape[0], shape[1], list(shape[2:]), len(shape) - 2
            group = self.attrs.get("group", 1)
            if group == 1:
                w = b.op("Transpose", [w], "w_swap", perm=[1, 0] + list(range(2, nd + 2)))
            elif cout // group > 1:
                w = b.op("Reshape", [w, b.ints([group, cout // group, cin_g] + kernel)], "w_groups")
                w = b.op("Transpose", [w], "w_swap", perm=[0, 2, 1] + list(range(3, nd + 3)))
                w = b.op("Reshape", [w, b.ints([group * cin_g, cout // group] + kernel)], "w_swapped")
            elif cin_g > 1:  # one output per group: (group, cin_g) -> (group * cin_g, 1) is a reshape
                w = b.op("Reshape", [w, b.ints([group * cin_g, 1] + kernel)], "w_swapped")
            axes = list(range(2, nd + 2))
            flipped = b.op("Slice", [w, b.ints([-1] * nd), b.ints([-(2 ** 63)] * nd), b.ints(axes), b.ints([-1] * nd)],
                           "w_flip")
            self._weights[("flip", key)] = flipped
        return self._weights[("flip", key)]


@dataclass
class ConvTransposeOp(LinearOp):
    """ConvTranspose(x, W) as a forward layer; its transpose is a Conv with the same weights, strides, dilations and
    groups whose pads place s back on the full (uncropped) output grid, sized back to x."""

    attrs: dict = field(default_factory=dict)        # the node's own attributes (forward is the node itself)
    conv_attrs: dict = field(default_factory=dict)   # the transposed Conv's attributes
    cuts: tuple = ()                                 # per spatial axis: trailing output positions no input reaches

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """ConvTranspose(x, W') with the node's own attributes, without bias."""
        return b.op("ConvTranspose", [x, self.stored(b, key)], "fwd", **self.attrs)

    def forward_bias(self, b: GraphBuilder, x: str, key: str, bias: Optional[np.ndarray]) -> str:
        """ConvTranspose(x, W', B) when the bias is per output channel (one op), else ConvTranspose + Add."""
        cout, rank = self.weight.shape[1] * self.attrs.get("group", 1), len(self.weight.shape)
        full = None if bias is None or bias.ndim > rank else bias.reshape((1,) * (rank - bias.ndim) + bias.shape)
        if full is None or not (full.size == 1 or full.shape == (1, cout) + (1,) * (rank - 2)):
            return super().forward_bias(b, x, key, bias)
        per_channel = np.broadcast_to(full.reshape(-1), (cout,))
        return b.op("ConvTranspose", [x, self.stored(b, key), b.const(per_channel, hint="b")], "fwd", **self.attrs)

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """Conv(s, W'): output positions that no input reaches (output_padding, a large output_shape) are cut."""
        s = cut_tail(b, s, self.cuts, 2)
        return b.op("Conv", [s, self.stored(b, key)], "bwd", **self.conv_attrs)


@dataclass
class ElementwiseOp(LinearOp):
    """z = x * w + bias with a constant w that broadcasts to x's shape (scale, folded BN, Add/Sub/Mul/Div constants)."""

    def forward(self, b: GraphBuilder, x: str, key: str) -> str:
        """x * w'."""
        w = weight_value(key, self.weight)
        if w.size == 1 and float(w.reshape(-1)[0]) == 1.0:
            return x
        return b.op("Mul", [x, b.const(w, hint="w")], "fwd")

    def transpose(self, b: GraphBuilder, s: str, key: str) -> str:
        """s * w' (a diagonal map is its own transpose)."""
        return self.forward(b, s, key)


# ---------------------------------------------------------------------------------------------------------------
# registrations
def _rank(view: NodeView, name: str) -> Optional[int]:
    """Static rank of a value, None if unknown."""
    shape = view.shape(name)
    return len(shape) if shape is not None else None


def gemm_op(view: NodeView) -> LinearOp:
    """Gemm(A, B, C) with constant B (or A): alpha, beta, transA, transB folded into W and bias."""
    a, bname = view.inputs[0], view.inputs[1]
    c = view.inputs[2] if len(view.inputs) > 2 else ""
    alpha, beta = view.attr("alpha", 1.0), view.attr("beta", 1.0)
    bias = view.const(c)
    bias = None if bias is None else beta * bias.astype(np.float64)
    if view.is_relevant(a):
        w = view.const(bname).astype(np.float64) * alpha
        w = w.T if view.attr("transB", 0) else w
        return DenseOp(x=a, z=view.outputs[0], weight=w, bias=bias, z_rank=2, x_rank=2,
                       source=bname if alpha == 1.0 else None, source_km=not view.attr("transB", 0))
    w = view.const(a).astype(np.float64) * alpha
    w = w.T if view.attr("transA", 0) else w
    return LeftDenseOp(x=bname, z=view.outputs[0], weight=w, bias=bias, z_rank=2, x_rank=2)


def _check_gemm(view: NodeView) -> Optional[str]:
    """Gemm is linear when exactly one of A, B is data (not transposed) and the other and C are constant."""
    a, bname = view.inputs[0], view.inputs[1]
    c = view.inputs[2] if len(view.inputs) > 2 else ""
    if c and view.const(c) is None:
        return view.not_constant("its bias C", c)
    if view.is_relevant(a) and view.const(bname) is not None:
        units = view.const(bname).shape[0 if view.attr("transB", 0) else -1]
        if c and view.const(c).ndim and view.const(c).shape[-1] not in (1, units):  # the checker lets it through
            return f"its bias C has shape {list(view.const(c).shape)} for {units} outputs (a broken model)"
        return "transA=1 on the data operand is not supported" if view.attr("transA", 0) else None
    if view.is_relevant(bname) and view.const(a) is not None:
        return "transB=1 on the data operand is not supported" if view.attr("transB", 0) else None
    return "both operands carry data (a product of two activations is not linear)"


@register("Gemm", group="dense", rules=LINEAR_RULES, check=_check_gemm)
def emit_gemm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Gemm as a dense linear node: z = x W + b under the rule's groups."""
    op = gemm_op(view)
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    rel = [R_x, None, None] if op.x == view.inputs[0] else [None, R_x, None]
    return Emitted(rel[: len(view.inputs)], R_b, stab)


def check_matmul_constant(view: NodeView) -> Optional[str]:
    """MatMul is linear when one operand is a 2-D constant (products.py registers MatMul and dispatches here)."""
    a, w = view.inputs
    if view.is_relevant(a) and view.const(w) is not None:
        return None if view.const(w).ndim == 2 else "its constant operand is not 2-D"
    if view.is_relevant(w) and view.const(a) is not None:
        return None if view.const(a).ndim == 2 else "its constant operand is not 2-D"
    return "both operands carry data (a product of two activations is not linear)"


def emit_matmul(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """MatMul with a constant operand as a dense linear node without bias."""
    op = matmul_op(view)
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    return Emitted([R_x, None] if op.x == view.inputs[0] else [None, R_x], R_b, stab)


def matmul_op(view: NodeView) -> LinearOp:
    """MatMul with a constant 2-D operand: x @ W (DenseOp) or W @ x (LeftDenseOp), no bias."""
    a, w = view.inputs
    z = view.outputs[0]
    if view.is_relevant(a):
        return DenseOp(x=a, z=z, weight=view.const(w).astype(np.float64), bias=None,
                       z_rank=_rank(view, z), x_rank=_rank(view, a), source=w, source_km=True)
    return LeftDenseOp(x=w, z=z, weight=view.const(a).astype(np.float64), bias=None,
                       z_rank=_rank(view, z), x_rank=_rank(view, w))


def conv_geometry(view: NodeView, x_shape: tuple, w_shape: tuple) -> tuple:
    """Explicit (kernel, strides, pads, dilations, output_padding) of a Conv, resolving auto_pad from static
    shapes."""
    nd = len(w_shape) - 2
    kernel = list(view.attr("kernel_shape", w_shape[2:]))
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    pads = list(view.attr("pads", [0] * (2 * nd)))
    auto_pad = view.attr("auto_pad", "NOTSET")
    spatial = x_shape[2:]
    pads = explicit_pads(auto_pad, pads, spatial, kernel, strides, dilations)
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
        return view.not_constant("its weight", view.inputs[1])
    if len(view.inputs) > 2 and view.inputs[2] and view.const(view.inputs[2]) is None:
        return view.not_constant("its bias", view.inputs[2])
    kernel = list(view.const(view.inputs[1]).shape[2:])
    if list(view.attr("kernel_shape", kernel)) != kernel:  # ONNX shape inference lets this through
        return f"its kernel_shape {list(view.attr('kernel_shape'))} contradicts its weight's {kernel} (a broken model)"
    shape = view.shape(view.inputs[0])
    if shape is None:
        return f"the rank of its input {view.inputs[0]!r} is not known at compile time"
    return None


def dynamic_conv_geometry(view: NodeView, w_shape: tuple) -> tuple:
    """(forward attributes, fit) of a Conv whose input's spatial size only the run time knows: explicit pads where
    they do not depend on it (NOTSET, VALID, SAME with stride 1), else the node's SAME auto_pad; fit says how the
    transposed result is sized back to the input (see ConvOp.fit)."""
    nd = len(w_shape) - 2
    kernel = list(view.attr("kernel_shape", w_shape[2:]))
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    auto_pad = view.attr("auto_pad", "NOTSET")
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=view.attr("group", 1))
    strided = any(st != 1 for st in strides)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and strided:
        return dict(attrs, auto_pad=auto_pad), auto_pad
    # stride 1: SAME pads are (eff - 1) split, whatever the size (any size stands for all of them)
    attrs["pads"] = explicit_pads(auto_pad, list(view.attr("pads", [0] * (2 * nd))), [1] * nd, kernel, strides,
                                  dilations)
    return attrs, "tail" if strided else ""


@register("Conv", group="convolution", rules=LINEAR_RULES, check=_check_conv)
def emit_conv(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Conv as a linear node; its transpose is ConvTranspose with the same weights, strides, pads and groups
    (stride 1: a Conv with the flipped kernel), sized to the input from its run-time shape where that is dynamic."""
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], conv_op(view, b))
    return Emitted([R_x] + [None] * (len(view.inputs) - 1), R_b, stab)


def conv_op(view: NodeView, b: Optional[GraphBuilder] = None) -> ConvOp:
    """Conv(x, W) + B as a ConvOp: explicit geometry where the spatial size is static, else sized at run time
    (b, when given, checks that its opset can do that)."""
    x = view.inputs[0]
    w = view.const(view.inputs[1]).astype(np.float64)
    bias = view.const(view.inputs[2]) if len(view.inputs) > 2 and view.inputs[2] else None
    x_shape = view.shape(x)
    nd = len(w.shape) - 2
    if known(x_shape[2:]):
        kernel, strides, pads, dilations, output_padding = conv_geometry(view, x_shape, w.shape)
        attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                     group=view.attr("group", 1))
        fit = ""
    else:
        attrs, fit = dynamic_conv_geometry(view, w.shape)
        output_padding = [0] * nd
        if fit:
            if b is not None:
                require_opset(b, f"the spatial size of {x!r}")
    bias_arr = None if bias is None else bias.astype(np.float64).reshape((-1,) + (1,) * nd)
    return ConvOp(x=x, z=view.outputs[0], weight=w, bias=bias_arr, z_rank=nd + 2, x_rank=nd + 2,
                  attrs=attrs, output_padding=tuple(output_padding), source=view.inputs[1], fit=fit,
                  x_spatial=tuple(x_shape[2:]) if known(x_shape[2:]) else ())


def conv_transpose_geometry(view: NodeView, spatial: tuple, w_shape: tuple) -> tuple:
    """(head pads, tail pads, cuts) of a ConvTranspose as the ONNX spec (and onnxruntime) define it.

    The taps of input i land on the full grid at i*s + k*d (full span F = s*(in-1) + eff); output o is full
    position o + head. With output_shape: total = max(F + output_padding - out, 0), head = total//2 for
    SAME_UPPER, total - total//2 otherwise; else head = pads_begin. SAME_* aims at out = in*s, but the pads
    cannot be negative: total = max(eff - s + output_padding, 0) and out = F + output_padding - total
    (= min(in*s, F + output_padding): a kernel shorter than the stride gives a shorter output, as onnxruntime and
    ONNX shape inference have it). The transposed Conv pads s by head in front and F - out - head behind; where
    that is negative the output extends past every tap and its last `cut` positions are dropped. Only output_shape
    makes these depend on the input's size (SAME: F - out = total - output_padding), so `spatial` may hold None
    elsewhere."""
    nd = len(spatial)
    kernel = list(view.attr("kernel_shape", w_shape[2:]))
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    pads = list(view.attr("pads", [0] * (2 * nd)))
    out_pad = list(view.attr("output_padding", [0] * nd))
    out_shape = list(view.attr("output_shape", []))[-nd:] if view.attr("output_shape") else None
    auto_pad = view.attr("auto_pad", "NOTSET")
    heads, tails, cuts = [], [], []
    for i in range(nd):
        eff = (kernel[i] - 1) * dilations[i] + 1
        if out_shape is not None:
            full = strides[i] * (spatial[i] - 1) + eff
            total = max(full + out_pad[i] - out_shape[i], 0)
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            tail = full - out_shape[i] - head
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(eff - strides[i] + out_pad[i], 0)  # out = F + out_pad - total, never past in*s
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            tail = total - out_pad[i] - head
        elif auto_pad == "VALID":
            head, tail = 0, -out_pad[i]
        else:
            head, tail = pads[i], pads[i + nd] - out_pad[i]
        heads.append(head)
        tails.append(max(tail, 0))
        cuts.append(max(-tail, 0))
    return heads, tails, tuple(cuts)


def _check_conv_transpose(view: NodeView) -> Optional[str]:
    """ConvTranspose is linear with constant weights; with an output_shape its input's spatial size must be
    static."""
    reason = _check_conv(view)
    if reason:
        return reason
    shape = view.shape(view.inputs[0])
    if view.attr("output_shape") and not known(shape[2:]):
        return NeedsStaticSize(f"the spatial size of its input {view.inputs[0]!r} is not known at compile time "
                               f"(it has an output_shape)")
    return None


@register("ConvTranspose", group="convolution", rules=LINEAR_RULES, check=_check_conv_transpose)
def emit_conv_transpose(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """ConvTranspose as a forward linear node: z = ConvTranspose(x, W) + b; W^T s = Conv(s, W) with the same
    strides, dilations and groups and the pads that undo the crop (see conv_transpose_geometry)."""
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], conv_transpose_op(view))
    return Emitted([R_x] + [None] * (len(view.inputs) - 1), R_b, stab)


def conv_transpose_op(view: NodeView) -> ConvTransposeOp:
    """ConvTranspose(x, W) + B as a ConvTransposeOp (its transpose a Conv, see conv_transpose_geometry)."""
    x = view.inputs[0]
    w = view.const(view.inputs[1]).astype(np.float64)
    bias = view.const(view.inputs[2]) if len(view.inputs) > 2 and view.inputs[2] else None
    spatial = tuple(view.shape(x)[2:])
    nd = len(spatial)
    heads, tails, cuts = conv_transpose_geometry(view, spatial, w.shape)
    group = view.attr("group", 1)
    conv_attrs = dict(kernel_shape=list(w.shape[2:]), strides=list(view.attr("strides", [1] * nd)),
                      dilations=list(view.attr("dilations", [1] * nd)), pads=heads + tails, group=group)
    attrs = {a.name: view.attr(a.name) for a in view.node.attribute}
    bias_arr = None if bias is None else bias.astype(np.float64).reshape((-1,) + (1,) * nd)
    return ConvTransposeOp(x=x, z=view.outputs[0], weight=w, bias=bias_arr, z_rank=nd + 2, x_rank=nd + 2,
                           attrs=attrs, conv_attrs=conv_attrs, cuts=cuts)


def _check_batchnorm(view: NodeView) -> Optional[str]:
    """An unfolded BatchNormalization is a per-channel linear node when its statistics are constant."""
    computed = [n for n in view.inputs[1:5] if view.const(n) is None]
    if computed:
        return view.not_constant("its scale, bias, mean or variance", computed[0])
    if len(view.outputs) > 1 and any(view.outputs[1:]):
        return "training mode (running statistics as outputs) is not supported"
    return None


# group "batchnorm" (not "linear"): the built-in composites give an unfolded BatchNormalization the pass rule as
# Zennit does (base.toml); under "linear" no built-in entry matched it and every such model was refused
@register("BatchNormalization", group="batchnorm", rules=LINEAR_RULES + (Pass,), check=_check_batchnorm)
def emit_batchnorm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """BatchNormalization as z = x * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps)) per channel;
    under the pass rule relevance goes through unchanged."""
    if isinstance(rule, Pass):
        return Emitted([R[0]] + [None] * (len(view.inputs) - 1))
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], batchnorm_op(view))
    return Emitted([R_x] + [None] * (len(view.inputs) - 1), R_b, stab)


def batchnorm_op(view: NodeView) -> ElementwiseOp:
    """An unfolded BatchNormalization as x * k + (beta - mean * k), k = scale / sqrt(var + epsilon), per channel."""
    x = view.inputs[0]
    scale, beta, mean, var = (view.const(n).astype(np.float64) for n in view.inputs[1:5])
    k = scale / np.sqrt(var + view.attr("epsilon", 1e-5))
    rank = _rank(view, x) or 2
    shape = (-1,) + (1,) * (rank - 2)
    return ElementwiseOp(x=x, z=view.outputs[0], weight=k.reshape(shape), bias=(beta - mean * k).reshape(shape),
                         z_rank=rank, x_rank=rank)


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
    """An activation combined with a constant (bias add, scaling) as an elementwise linear node. A scale under
    LRP-0 (epsilon 0) is the identity, R_x = x * w * R / (x * w) = R: no division."""
    op = affine_op(view)
    if op.bias is None and isinstance(rule, (Epsilon, Norm)) and rule.groups()[0].eps == 0.0 and \
            np.all(op.weight != 0):
        return Emitted([R[0], None] if op.x == view.inputs[0] else [None, R[0]])
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    rel = [R_x, None] if op.x == view.inputs[0] else [None, R_x]
    return Emitted(rel, R_b, stab)
