"""Pooling and reductions: average pools, means and sums under the Norm rule, max pools winner-takes-all.

Norm (s = R / stab(y), R_x = x * J^T s) needs J^T, the transposed pooling map: a grouped ConvTranspose with a kernel
of ones, each window's s divided by that window's divisor. Winner-takes-all sends each window's relevance to the
position of its maximum (the first one on ties, as onnxruntime's MaxPool Indices and PyTorch's gradient pick).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from onnx import helper, numpy_helper

from ..builder import GraphBuilder
from ..graph import opset_version
from ..rules import Epsilon, Norm, Rule, WinnerTakesAll
from ..specialise import NeedsStaticSize, StaticSizeError
from . import Emitted, NodeView, register
from .geometry import explicit_pads
from .positive import positive_normalize
from .runtime_sizes import dims, known, pad_tail_to, require_opset


def _known_rank(view: NodeView) -> Optional[str]:
    """Pools need the rank of their input at compile time (any size may be dynamic)."""
    if view.shape(view.inputs[0]) is None:
        return f"the rank of its input {view.inputs[0]!r} is not known at compile time"
    return None


def _known_channels(view: NodeView) -> Optional[str]:
    """Average pools also need the channel count (their transpose is a grouped convolution, one group each); with
    a dynamic spatial size, ceil_mode needs that size (the last window's divisor depends on it)."""
    reason = _known_rank(view)
    if reason:
        return reason
    shape = view.shape(view.inputs[0])
    if shape[1] is None:
        return f"axis 1 (channels) of its input {view.inputs[0]!r} is not known at compile time"
    if not known(shape[2:]) and view.attr("ceil_mode", 0):
        return NeedsStaticSize(f"the spatial size of its input {view.inputs[0]!r} is not known at compile time "
                               f"(ceil_mode windows are sized from it)")
    return None


def _overlapping(view: NodeView) -> bool:
    """True when a pool's windows overlap (a position can win several windows)."""
    kernel = list(view.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    return any((k - 1) * d + 1 > s for k, s, d in zip(kernel, strides, dilations))


def pool_geometry(view: NodeView, spatial: tuple) -> tuple:
    """(kernel, strides, pads, dilations, out_spatial) of a pool, auto_pad resolved; with ceil_mode the output is
    ceil((in + pads - eff) / s) + 1, less a last window that would start in the end padding (the ONNX spec and
    onnxruntime; ONNX shape inference does not drop that window, so the shape is computed here)."""
    nd = len(spatial)
    kernel = list(view.attr("kernel_shape"))
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    pads = list(view.attr("pads", [0] * (2 * nd)))
    auto_pad = view.attr("auto_pad", "NOTSET")
    ceil_mode = view.attr("ceil_mode", 0)
    pads = explicit_pads(auto_pad, pads, spatial, kernel, strides, dilations)
    out_spatial = []
    for i in range(nd):
        eff = (kernel[i] - 1) * dilations[i] + 1
        span = spatial[i] + pads[i] + pads[i + nd] - eff
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-spatial[i] // strides[i])
        elif ceil_mode:
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= spatial[i] + pads[i]:
                out -= 1
        else:
            out = span // strides[i] + 1
        out_spatial.append(out)
    return kernel, strides, pads, dilations, tuple(out_spatial)


def _back_attrs(spatial: tuple, out_spatial: tuple, kernel, strides, pads, dilations) -> dict:
    """ConvTranspose attributes that map a pooled (out_spatial) tensor back onto the input grid (spatial):
    the begin pads as in the pool; end pads (or output_padding) chosen so that the result is exactly `spatial`."""
    nd = len(spatial)
    ends, extra = [], []
    for i in range(nd):
        eff = (kernel[i] - 1) * dilations[i] + 1
        end = strides[i] * (out_spatial[i] - 1) + eff - pads[i] - spatial[i]
        ends.append(max(end, 0))
        extra.append(max(-end, 0))
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads[:nd]) + ends,
                 dilations=list(dilations))
    if any(extra):
        attrs["output_padding"] = extra
    return attrs


def axis_window_counts(spatial: tuple, out_spatial: tuple, kernel, strides, pads, dilations,
                       include_pad: bool) -> list:
    """Per spatial axis, each window's count of positions inside the input (or, include_pad, inside the padded
    input); a window's divisor is the product of its axes' counts.

    Window o covers o * stride - pad + k * dilation for k in [0, kernel); those in [low, high) are the k from
    ceil((low - start) / dilation) to floor((high - 1 - start) / dilation), clipped to the kernel: O(out) per axis
    whatever the kernel's size."""
    counts = []
    nd = len(spatial)
    for i, n in enumerate(spatial):
        low, high = (-pads[i], n + pads[i + nd]) if include_pad else (0, n)
        start = np.arange(out_spatial[i], dtype=np.int64) * strides[i] - pads[i]
        first = np.maximum(-((start - low) // dilations[i]), 0)  # ceil((low - start) / d) = -floor((start - low) / d)
        last = np.minimum((high - 1 - start) // dilations[i], kernel[i] - 1)
        counts.append(np.maximum(last - first + 1, 0).astype(np.float64))
    return counts


def window_counts(spatial: tuple, out_spatial: tuple, kernel, strides, pads, dilations,
                  include_pad: bool) -> np.ndarray:
    """Each window's divisor (out_spatial-shaped): the outer product of axis_window_counts."""
    counts = np.ones(out_spatial)
    nd = len(spatial)
    for i, c in enumerate(axis_window_counts(spatial, out_spatial, kernel, strides, pads, dilations, include_pad)):
        counts = counts * c.reshape((1,) * i + (-1,) + (1,) * (nd - i - 1))
    return counts


def _check_pool_budget(b: GraphBuilder, view: NodeView, count: int, what: str) -> None:
    """The compile budget for a pool's constant of `count` working-dtype values (the node's declared shape named)."""
    from ..builder import shape_text
    x = view.inputs[0]
    info = view.info(x)
    declared = shape_text(info.shape if info else None, info and info.symbols)
    b.check_budget(count, b.dtype.itemsize, f"{what} (input {x!r} declared {declared}, kernel "
                                            f"{list(view.attr('kernel_shape', []))})")


def fit_pooled(b: GraphBuilder, view: NodeView, value: str, out_spatial: tuple) -> str:
    """value (shaped like the pool's output) cut to the output size the runtime computes, where ONNX shape
    inference claims a larger one (a ceil_mode window that starts in the end padding): from here on the shapes
    inference derives agree with the constants sized by out_spatial. A no-op everywhere else."""
    shape = view.shape(view.outputs[0])
    if shape is None or tuple(shape[2:]) == tuple(out_spatial) or any(d is None for d in shape[2:]):
        return value
    nd = len(out_spatial)
    return b.op("Slice", [value, b.ints([0] * nd), b.ints(out_spatial), b.ints(range(2, 2 + nd))], "fit")


def _norm_stabilize(b: GraphBuilder, view: NodeView, rule: Rule, R: str) -> tuple:
    """s = R / stab(y) for the Norm rule on the node's output y; returns (s, stabilizer share (N,))."""
    eps = rule.groups()[0].eps
    positive = positive_normalize(b, view, R, view.outputs[0], eps)  # a Relu alone reads the output
    if positive is not None:
        return positive
    s, share = b.normalize(R, view.outputs[0], eps)
    return s, b.per_sample_sum(share, "stab_sum")


@register("AveragePool", group="avgpool", rules=(Norm, Epsilon), check=_known_channels)
def emit_average_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Norm: R_x = x * J^T s, J^T s = ConvTranspose(s / count, ones) per channel, count = the window's divisor
    (its positions inside the input, or inside the padded input with count_include_pad); ceil_mode and dilations
    are sized as the forward pool does."""
    s, stab = _norm_stabilize(b, view, rule, R[0])
    return Emitted([b.op("Mul", [view.inputs[0], average_pool_transpose(b, view, s)], "R_x")], None, stab)


def average_pool_transpose(b: GraphBuilder, view: NodeView, s: str) -> str:
    """J^T s of an AveragePool, shaped like its input: ConvTranspose(s / count, ones) per channel."""
    shape = view.shape(view.inputs[0])
    channels, spatial = shape[1], tuple(shape[2:])
    if not known(spatial):
        return _average_pool_transpose_dynamic(b, view, s)
    kernel, strides, pads, dilations, out_spatial = pool_geometry(view, spatial)
    _check_pool_budget(b, view, int(sum(out_spatial)), "the window counts")
    _check_pool_budget(b, view, channels * int(np.prod(kernel, dtype=np.float64)), "the kernel of ones")
    counts = axis_window_counts(spatial, out_spatial, kernel, strides, pads, dilations,
                                bool(view.attr("count_include_pad", 0)))
    scaled = s = fit_pooled(b, view, s, out_spatial)
    # s / count with count the product of per-axis counts: one factor per axis whose counts vary (constants of
    # out_i entries, not prod(out)), the axes with equal counts folded into one scalar
    uniform, nd = 1.0, len(out_spatial)
    for i, c in enumerate(counts):
        if np.all(c == c[0]):
            uniform *= c[0]
            continue
        factor = (1.0 / c).reshape((1, 1) + (1,) * i + (-1,) + (1,) * (nd - i - 1))
        scaled = b.op("Mul", [scaled, b.const(factor, hint="per_count")], "s_per_count")
    if uniform != 1.0 or scaled == s:
        scaled = b.op("Mul", [scaled, b.const(1.0 / uniform)], "s_per_count")
    attrs = _back_attrs(spatial, out_spatial, kernel, strides, pads, dilations)
    ones_kernel = b.const(np.ones((channels, 1) + tuple(kernel)), hint="ones_kernel")
    return b.op("ConvTranspose", [scaled, ones_kernel], "JTs", group=channels, **attrs)


def _average_pool_transpose_dynamic(b: GraphBuilder, view: NodeView, s: str) -> str:
    """J^T s of an AveragePool at a spatial size only the run time knows: the same transpose, divisors counted in the
    graph where they vary (pads without count_include_pad: a convolution of ones over the input's grid) and the
    transposed result padded at the end to the input's size."""
    x = view.inputs[0]
    shape = view.shape(x)
    channels, rank = shape[1], len(shape)
    nd = rank - 2
    kernel = list(view.attr("kernel_shape"))
    strides = list(view.attr("strides", [1] * nd))
    dilations = list(view.attr("dilations", [1] * nd))
    auto_pad = view.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and any(st != 1 for st in strides):
        raise StaticSizeError(f"the spatial size of {x!r} is not known at compile time (a strided SAME pool's pads "
                              f"depend on it)")
    pads = explicit_pads(auto_pad, list(view.attr("pads", [0] * (2 * nd))), [1] * nd, kernel, strides, dilations)
    require_opset(b, f"the spatial size of {x!r}")
    window = dict(strides=strides, pads=pads, dilations=dilations)
    if view.attr("count_include_pad", 0) or not any(pads):
        scaled = b.op("Mul", [s, b.const(1.0 / float(np.prod(kernel)))], "s_per_count")
    else:  # the positions of each window inside the input: ones over the grid, summed by a kernel of ones
        grid = b.op("ConstantOfShape", [b.op("Concat", [b.ints([1, 1]), dims(b, x, 2, rank)], "grid_shape", axis=0)],
                    "grid", value=numpy_helper.from_array(np.ones(1, dtype=b.dtype)))
        count = b.op("Conv", [grid, b.const(np.ones((1, 1) + tuple(kernel)), hint="ones_window")], "count",
                     kernel_shape=kernel, **window)
        scaled = b.op("Div", [s, count], "s_per_count")
    ones_kernel = b.const(np.ones((channels, 1) + tuple(kernel)), hint="ones_kernel")
    # the grid from the first input position on (begin pads cut), its end fitted to x's size
    grid_attrs = dict(window, pads=pads[:nd] + [0] * nd)
    back = b.op("ConvTranspose", [scaled, ones_kernel], "JTs_part", group=channels, kernel_shape=kernel, **grid_attrs)
    return pad_tail_to(b, back, x, 2, rank)


@register("GlobalAveragePool", group="avgpool", rules=(Norm, Epsilon), check=_known_rank)
def emit_global_average_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Norm: R_x = x * s / (number of spatial positions), s = R / stab(y) broadcast over the window."""
    x = view.inputs[0]
    shape = view.shape(x)
    s, stab = _norm_stabilize(b, view, rule, R[0])
    if known(shape[2:]):
        back = b.op("Mul", [s, b.const(1.0 / float(np.prod(shape[2:])))], "JTs")
    else:  # the number of positions from the run-time shape
        size = b.reduce("ReduceProd", dims(b, x, 2, len(shape)), None, keepdims=False, hint="positions")
        back = b.op("Div", [s, b.op("Cast", [size], "positions_f", to=helper.np_dtype_to_tensor_dtype(b.dtype))],
                    "JTs")
    return Emitted([b.op("Mul", [x, back], "R_x")], None, stab)


def _check_maxpool(view: NodeView) -> Optional[str]:
    """MaxPool needs its input's rank; below opset 16 (no ScatterElements with reduction), overlapping windows at
    a dynamic spatial size need that size (their one-hot transpose is sized from it)."""
    reason = _known_rank(view)
    if reason:
        return reason
    shape = view.shape(view.inputs[0])
    opset = opset_version(view.index.model)
    if not known(shape[1:]) and opset < 16 and _overlapping(view):
        return NeedsStaticSize(f"the size of its input {view.inputs[0]!r} is not known at compile time (overlapping "
                               f"windows below opset 16 are moved back by a transpose sized from it)")
    return None


@register("MaxPool", group="maxpool", rules=(WinnerTakesAll,), check=_check_maxpool)
def emit_max_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Winner takes all: each window's relevance goes to the position of its maximum (MaxPool's Indices: the first
    maximum on ties); a position that wins several overlapping windows collects all of their relevance.
    Opset >= 16: ScatterElements(reduction='add') on the flat indices. Below: the winner's offset inside its
    window, one-hot over the K kernel positions, put back by a grouped ConvTranspose with one-hot kernels."""
    x = view.inputs[0]
    attrs = {a.name: view.attr(a.name) for a in view.node.attribute if a.name != "storage_order"}
    _, indices = b.op("MaxPool", [x], "pool_idx", n_out=2, **attrs)
    R_y = R[0]
    static = known(view.shape(x)[1:])
    if static:
        out_spatial = pool_geometry(view, tuple(view.shape(x)[2:]))[4]
        indices, R_y = fit_pooled(b, view, indices, out_spatial), fit_pooled(b, view, R[0], out_spatial)
    if b.opset >= 16 or not (static or _overlapping(view)):
        # each window's winner gets its relevance; windows that do not overlap have distinct winners, so below
        # opset 16 a plain scatter is exact too
        flat_shape = b.ints([-1])
        zeros = b.op("Reshape", [b.zeros_like(x, "R_x0"), flat_shape], "R_x0_flat")
        add = dict(reduction="add") if b.opset >= 16 else {}
        scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, flat_shape], "idx_flat"),
                                             b.op("Reshape", [R_y, flat_shape], "R_flat")],
                         "R_scattered", axis=0, **add)
        return Emitted([b.op("Reshape", [scattered, b.op("Shape", [x], "x_shape")], "R_x")])
    return Emitted([_max_pool_one_hot(b, view, indices, R_y)])


def _max_pool_one_hot(b: GraphBuilder, view: NodeView, indices: str, R: str) -> str:
    """R_x = sum_k ConvTranspose(R * [winner offset == k], e_k): exact from opset 11 (no scatter-add needed).

    The flat index of a window's winner (N and C offsets included) gives its spatial coordinates; minus the
    window's start (o * stride - pad_begin), divided by the dilation, they give its offset k inside the kernel."""
    shape = view.shape(view.inputs[0])
    channels, spatial = shape[1], tuple(shape[2:])
    nd = len(spatial)
    kernel, strides, pads, dilations, out_spatial = pool_geometry(view, spatial)
    K = int(np.prod(kernel))
    _check_pool_budget(b, view, channels * K * K, "the one-hot kernels of the winners' offsets")
    position = b.op("Mod", [indices, b.const(int(np.prod(spatial)), dtype=np.int64)], "pos")
    offset = None
    for i in range(nd):
        coord = position
        inner = int(np.prod(spatial[i + 1:]))
        if inner > 1:
            coord = b.op("Div", [coord, b.const(inner, dtype=np.int64)], "coord")
        if i > 0:
            coord = b.op("Mod", [coord, b.const(spatial[i], dtype=np.int64)], "coord")
        starts = (np.arange(out_spatial[i]) * strides[i] - pads[i]).reshape((-1,) + (1,) * (nd - 1 - i))
        k_i = b.op("Sub", [coord, b.const(starts, dtype=np.int64)], "k_off")
        if dilations[i] > 1:
            k_i = b.op("Div", [k_i, b.const(dilations[i], dtype=np.int64)], "k_off")
        inner_k = int(np.prod(kernel[i + 1:]))
        if inner_k > 1:
            k_i = b.op("Mul", [k_i, b.const(inner_k, dtype=np.int64)], "k_off")
        offset = k_i if offset is None else b.op("Add", [offset, k_i], "k_offset")
    one_hot = b.op("Equal", [b.unsqueeze(offset, [2], "k_offset_u"),
                             b.const(np.arange(K).reshape((1, 1, K) + (1,) * nd), dtype=np.int64)], "is_winner")
    spread = b.op("Where", [one_hot, b.unsqueeze(R, [2], "R_u"), b.const(0.0)], "R_per_offset")
    stacked = b.op("Reshape", [spread, b.ints([0, channels * K] + list(out_spatial))], "R_stacked")
    kernels = np.zeros((channels * K, 1) + tuple(kernel))
    eye = np.eye(K).reshape((K,) + tuple(kernel))
    for c in range(channels):
        kernels[c * K:(c + 1) * K, 0] = eye
    attrs = _back_attrs(spatial, out_spatial, kernel, strides, pads, dilations)
    return b.op("ConvTranspose", [stacked, b.const(kernels, hint="onehot_kernel")], "R_x", group=channels, **attrs)


def reduce_axes(view: NodeView) -> Optional[list]:
    """The sorted, non-negative axes a Reduce* node reduces (attribute or constant input), None for 'all axes';
    [] for an empty axes list with noop_with_empty_axes=1 (the node is an identity)."""
    rank = len(view.shape(view.inputs[0]))
    axes = view.attr("axes")
    if axes is None and len(view.inputs) > 1 and view.inputs[1]:
        axes = view.const(view.inputs[1]).reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        return [] if view.attr("noop_with_empty_axes", 0) else None
    return sorted({int(a) % rank for a in axes})


def _check_reduce(view: NodeView) -> Optional[str]:
    """Reduce*: known rank, constant axes that leave the batch axis alone, static sizes along the reduced axes."""
    x = view.inputs[0]
    shape = view.shape(x)
    if shape is None:
        return f"the rank of its input {x!r} is not known at compile time"
    if len(view.inputs) > 1 and view.inputs[1] and view.const(view.inputs[1]) is None:
        return view.not_constant("its axes input", view.inputs[1])
    axes = reduce_axes(view)
    if axes is None or 0 in axes:
        return "it reduces over the batch axis 0 (relevance would mix samples)"
    return None


@register(("ReduceMean", "ReduceSum"), group=lambda view: "avgpool" if view.op_type == "ReduceMean" else "sum",
          rules=(Norm, Epsilon), check=_check_reduce)
def emit_reduce_norm(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Norm: s = R / stab(y), R_x = x * s (ReduceSum) or x * s / k (ReduceMean over k values), s broadcast back
    over the reduced axes."""
    x = view.inputs[0]
    axes = reduce_axes(view)
    s, stab = _norm_stabilize(b, view, rule, R[0])
    if axes and not view.attr("keepdims", 1):
        s = b.unsqueeze(s, axes, "s_keep")
    if view.op_type == "ReduceMean" and axes:
        sizes = [view.shape(x)[a] for a in axes]
        if known(sizes):
            s = b.op("Mul", [s, b.const(1.0 / float(np.prod(sizes)))], "JTs")
        else:  # the number of reduced values from the run-time shape
            shape = b.op("Shape", [x], "x_shape")
            count = b.reduce("ReduceProd", b.op("Gather", [shape, b.ints(axes)], "reduced_dims"), None,
                             keepdims=False, hint="count")
            s = b.op("Div", [s, b.op("Cast", [count], "count_f", to=helper.np_dtype_to_tensor_dtype(b.dtype))],
                     "JTs")
    rel = [b.op("Mul", [x, s], "R_x")]
    return Emitted(rel + [None] * (len(view.inputs) - 1), None, stab)


def wta_reduce(b: GraphBuilder, x: str, R_keep: str, axes: list, shape: tuple) -> str:
    """Winner takes all over `axes`: R_keep (x's shape with 1 on the axes) goes to the first maximum of x in
    row-major order over those axes (ArgMax picks the first), zero elsewhere."""
    rank = len(shape)
    kept = [i for i in range(rank) if i not in axes]
    perm = kept + list(axes)
    identity = perm == list(range(rank))
    xt = x if identity else b.op("Transpose", [x], "x_T", perm=perm)
    Rt = R_keep if identity else b.op("Transpose", [R_keep], "R_T", perm=perm)
    sizes = [shape[a] for a in axes]
    K = int(np.prod(sizes)) if known(sizes) else -1
    flat = b.op("Reshape", [xt, b.ints([0] * len(kept) + [K])], "x_flat")
    arg = b.op("ArgMax", [flat], "argmax", axis=len(kept), keepdims=1)
    if K > 0:  # 0 .. K-1 by a Range all the same: no constant of K entries (K may be a declared 10^9)
        count = b.const(K, dtype=np.int64)
    else:  # 0 .. K-1 with K from the run-time shape
        count = b.reduce("ReduceSum", dims(b, flat, len(kept), len(kept) + 1, "reduced"), None, keepdims=False)
    positions = b.op("Range", [b.const(0, dtype=np.int64), count, b.const(1, dtype=np.int64)], "positions")
    winner = b.op("Equal", [arg, positions], "is_winner")
    R_flat = b.op("Reshape", [Rt, b.ints([0] * len(kept) + [1])], "R_flat")
    placed = b.op("Where", [winner, R_flat, b.const(0.0)], "R_placed")
    placed = b.op("Reshape", [placed, b.op("Shape", [xt], "xT_shape")], "R_xT")
    if identity:
        return placed
    return b.op("Transpose", [placed], "R_x", perm=[int(i) for i in np.argsort(perm)])


@register("ReduceMax", group="maxpool", rules=(WinnerTakesAll,), check=_check_reduce)
def emit_reduce_max(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Winner takes all over the reduced axes (first maximum on ties)."""
    x = view.inputs[0]
    axes = reduce_axes(view)
    if not axes:
        return Emitted([R[0]] + [None] * (len(view.inputs) - 1))
    R_keep = R[0] if view.attr("keepdims", 1) else b.unsqueeze(R[0], axes, "R_keep")
    return Emitted([wta_reduce(b, x, R_keep, axes, view.shape(x))] + [None] * (len(view.inputs) - 1))


@register("GlobalMaxPool", group="maxpool", rules=(WinnerTakesAll,), check=_known_rank)
def emit_global_max_pool(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Winner takes all over the whole spatial extent (first maximum on ties)."""
    x = view.inputs[0]
    shape = view.shape(x)
    return Emitted([wta_reduce(b, x, R[0], list(range(2, len(shape))), shape)])


# ---- norms over axes: the share of each entry in the reduction ------------------------------------------------
@register(("ReduceL2", "ReduceL1", "ReduceSumSquare"), group="sum", rules=(Norm, Epsilon), check=_check_reduce)
def emit_reduce_share(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """y = g(sum_i t_i) with t = x^2 (ReduceL2: g = sqrt; ReduceSumSquare: g = id) or t = |x| (ReduceL1): each entry
    gets its share of the sum, R_i = t_i * R / stab(sum_j t_j) (the Norm rule on the sum of the terms; the elementwise
    t and the monotone g pass relevance as activations do). All terms are >= 0, so the shares are in [0, 1] and sum
    to 1 (a norm of zeros passes nothing: the stabilizer keeps it). For the L2 norm these are the shares LRP-0 gives
    on y = sum_i w_i x_i with w_i = x_i / y held constant (as the gate rule holds a gate constant): z_i = x_i^2 / y."""
    x = view.inputs[0]
    axes = reduce_axes(view)
    y = view.outputs[0]
    if view.op_type == "ReduceL1":
        terms = b.op("Abs", [x], "t_abs")
        total = y
    else:
        terms = b.op("Mul", [x, x], "t_square")
        total = b.op("Mul", [y, y], "y_square") if view.op_type == "ReduceL2" else y
    eps = rule.groups()[0].eps
    s, share = b.normalize(R[0], total, eps)
    if axes and not view.attr("keepdims", 1):
        s = b.unsqueeze(s, axes, "s_keep")
    rel = b.op("Mul", [terms, s], "R_x")
    return Emitted([rel] + [None] * (len(view.inputs) - 1), None, b.per_sample_sum(share, "stab_sum"))
