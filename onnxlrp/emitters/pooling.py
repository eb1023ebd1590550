"""Pooling and reductions: average pools and means under the Norm rule, max pools winner-takes-all."""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import numpy_helper

from ..builder import GraphBuilder
from ..errors import CompileError
from ..rules import Epsilon, Norm, Rule, WinnerTakesAll
from . import Emitted, NodeView, register


def _static_spatial(view: NodeView) -> Optional[str]:
    """Pools need the input's shape at compile time (batch may stay dynamic)."""
    shape = view.shape(view.inputs[0])
    if shape is None or any(d is None for d in shape[1:]):
        return f"the shape of its input {view.inputs[0]!r} is not known at compile time"
    return None


def pool_geometry(view: NodeView, spatial: tuple) -> tuple:
    """(kernel, strides, pads, dilations) of a pool with explicit pads (auto_pad resolved)."""
    nd = len(spatial)
    kernel = list(view.attr("kernel_shape"))
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    pads = list(view.attr("pads", [0] * (2 * nd)))
    auto_pad = view.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    return kernel, strides, pads, dilations


def _norm_stabilize(b: GraphBuilder, view: NodeView, rule: Rule, R: str) -> tuple:
    """s = R / stab(y) for the Norm rule on the node's output y; returns (s, stabilizer share (N,))."""
    eps = rule.groups()[0].eps
    s, share = b.normalize(R, view.outputs[0], eps)
    return s, b.per_sample_sum(share, "stab_sum")


@register("AveragePool", group="avgpool", rules=(Norm, Epsilon), check=_static_spatial)
def emit_average_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Norm: R_x = x * J^T s, J^T s = ConvTranspose(s / count, ones) per channel (count = the window's divisor)."""
    x = view.inputs[0]
    shape = view.shape(x)
    channels, spatial = shape[1], tuple(shape[2:])
    nd = len(spatial)
    if view.attr("ceil_mode", 0):
        raise CompileError("AveragePool with ceil_mode=1 is not supported yet")
    kernel, strides, pads, dilations = pool_geometry(view, spatial)
    count_pad = view.attr("count_include_pad", 0)
    s, stab = _norm_stabilize(b, view, rule, R[0])
    ones_kernel = np.ones((channels, 1) + tuple(kernel))
    out_spatial = tuple((spatial[i] + pads[i] + pads[i + nd] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1
                        for i in range(nd))
    if count_pad:
        count = np.full(out_spatial, float(np.prod(kernel)))
    else:
        count = _valid_counts(spatial, kernel, strides, pads, dilations, out_spatial)
    scaled = b.op("Div", [s, b.const(count.reshape((1, 1) + out_spatial))], "s_per_count")
    output_padding = []
    for i in range(nd):
        eff = (kernel[i] - 1) * dilations[i] + 1
        output_padding.append(spatial[i] - (strides[i] * (out_spatial[i] - 1) + eff - pads[i] - pads[i + nd]))
    attrs = dict(strides=strides, pads=pads, dilations=dilations, group=channels)
    if any(output_padding):
        attrs["output_padding"] = output_padding
    back = b.op("ConvTranspose", [scaled, b.const(ones_kernel, hint="ones_kernel")], "JTs", **attrs)
    return Emitted([b.op("Mul", [x, back], "R_x")], None, stab)


def _valid_counts(spatial, kernel, strides, pads, dilations, out_spatial) -> np.ndarray:
    """How many non-padding positions each pooling window covers."""
    counts = np.ones(out_spatial)
    for i, n in enumerate(spatial):
        c = np.zeros(out_spatial[i])
        for o in range(out_spatial[i]):
            start = o * strides[i] - pads[i]
            c[o] = sum(1 for k in range(kernel[i]) if 0 <= start + k * dilations[i] < n)
        counts = counts * c.reshape((1,) * i + (-1,) + (1,) * (len(spatial) - i - 1))
    return counts


@register("GlobalAveragePool", group="avgpool", rules=(Norm, Epsilon), check=_static_spatial)
def emit_global_average_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Norm: R_x = x * s / (number of spatial positions)."""
    x = view.inputs[0]
    size = float(np.prod(view.shape(x)[2:]))
    s, stab = _norm_stabilize(b, view, rule, R[0])
    back = b.op("Mul", [s, b.const(1.0 / size)], "JTs")
    return Emitted([b.op("Mul", [x, back], "R_x")], None, stab)


def _check_maxpool(view: NodeView) -> Optional[str]:
    """MaxPool needs ScatterElements with reduction=add (opset 16) and a static input shape."""
    if len(view.outputs) > 1 and view.outputs[1]:
        return "a MaxPool that already outputs indices is not supported"
    if view.index.model is not None:
        from ..graph import opset_version
        if opset_version(view.index.model) < 16:
            return "winner-takes-all needs opset >= 16 (ScatterElements with reduction=add)"
    return _static_spatial(view)


@register("MaxPool", group="maxpool", rules=(WinnerTakesAll,), check=_check_maxpool)
def emit_max_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Winner takes all: scatter-add each window's relevance to its argmax (MaxPool's Indices output)."""
    x = view.inputs[0]
    attrs = {a.name: numpy_helper.helper.get_attribute_value(a) for a in view.node.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    attrs.pop("storage_order", None)
    _, indices = b.op("MaxPool", [x], "pool_idx", n_out=2, **attrs)
    flat_shape = b.ints([-1])
    zeros = b.op("Reshape", [b.zeros_like(x, "R_x0"), flat_shape], "R_x0_flat")
    scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, flat_shape], "idx_flat"),
                                         b.op("Reshape", [R[0], flat_shape], "R_flat")],
                     "R_scattered", axis=0, reduction="add")
    return Emitted([b.op("Reshape", [scattered, b.op("Shape", [x], "x_shape")], "R_x")])


@register("GlobalMaxPool", group="maxpool", rules=(WinnerTakesAll,), check=_static_spatial)
def emit_global_max_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Winner takes all over the whole spatial extent (first maximum on ties)."""
    x = view.inputs[0]
    shape = view.shape(x)
    flat = b.op("Reshape", [x, b.ints([0, shape[1], -1])], "x_flat")
    arg = b.op("ArgMax", [flat], "argmax", axis=2, keepdims=1)
    r_flat = b.op("Reshape", [R[0], b.ints([0, shape[1], 1])], "R_flat")
    zeros = b.zeros_like(flat, "R_x0")
    scattered = b.op("ScatterElements", [zeros, arg, r_flat], "R_scattered", axis=2)
    return Emitted([b.op("Reshape", [scattered, b.op("Shape", [x], "x_shape")], "R_x")])
