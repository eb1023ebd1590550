"""Shape ops: relevance is moved back exactly as the gradient would move it (reshape back, inverse permutation,
slice back, scatter back, sum over copies). Every map here is linear and R_x = J^T R, so what arrives is what
leaves, except where an output holds no input at all (a constant pad), whose relevance is reported as dropped."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..builder import GraphBuilder
from ..errors import CompileError
from ..rules import Pass, Rule
from ..specialise import NeedsStaticSize, StaticSizeError
from . import Emitted, NodeView, register
from .embedding import check_embedding, emit_embedding, is_embedding
from .interpolation import resize_matrix
from .resize_dynamic import block_sum, is_block_copy, matrix_transpose_along, runtime_matrix
from .runtime_sizes import dims, int_max, int_min, known, require_opset


def _reshape_back(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = Reshape(R_y, Shape(x)) for ops that only reinterpret the shape."""
    x = view.inputs[0]
    back = b.op("Reshape", [R[0], b.op("Shape", [x], "x_shape")], "R_reshaped")
    return Emitted([back] + [None] * (len(view.inputs) - 1))


register(("Reshape", "Flatten", "Squeeze", "Unsqueeze"), group="shape", rules=(Pass,))(_reshape_back)


@register("Transpose", group="shape", rules=(Pass,))
def emit_transpose(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = Transpose(R_y, inverse permutation)."""
    perm = view.attr("perm")
    if perm is None:
        rank = len(view.shape(view.inputs[0]))
        perm = list(reversed(range(rank)))
    inverse = list(np.argsort(perm))
    return Emitted([b.op("Transpose", [R[0]], "R_T", perm=[int(i) for i in inverse])])


# ---------------------------------------------------------------------------------------------------------------
# moving relevance back along one axis
def _static_dims(view: NodeView, name: str, axes: Sequence[int], why: str) -> tuple:
    """x's static shape, raising CompileError naming the tensor when the rank or a needed axis is unknown."""
    shape = view.shape(name)
    if shape is None:
        raise CompileError(f"the rank of {name!r} is not known at compile time ({why})")
    for a in axes:
        if shape[a] is None:
            raise StaticSizeError(f"axis {a} of {name!r} is not known at compile time ({why})")
    return shape


def axis_matmul(b: GraphBuilder, R: str, axis: int, rank: int, A: np.ndarray) -> str:
    """R_x[.., i, ..] = sum_j A[j, i] R[.., j, ..] along one axis (A: (out, in)) as a MatMul."""
    if axis == rank - 1:
        return b.op("MatMul", [R, b.const(A, hint="axis_map")], "R_axis")
    if axis == rank - 2:
        return b.op("MatMul", [b.const(np.ascontiguousarray(A.T), hint="axis_mapT"), R], "R_axis")
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = b.op("Transpose", [R], "R_T", perm=perm)
    back = b.op("MatMul", [moved, b.const(A, hint="axis_map")], "R_axis")
    return b.op("Transpose", [back], "R_axis_T", perm=[int(i) for i in np.argsort(perm)])


def move_back(b: GraphBuilder, R: str, axis: int, rank: int, index: np.ndarray, in_len: int,
              where: str = "") -> str:
    """R_x[i] = sum of R[j] over the outputs j with index[j] == i (index[j] = -1: output j holds no input).

    A contiguous run of outputs reading a contiguous run of inputs is a Slice and a Pad; another injective map a
    Gather from R with one zero slot appended; a map that copies inputs (index repeats) a one-hot MatMul that sums
    the copies. The last two build constants sized by in_len, checked against the compile budget first (`where`
    names the axis and its declared shape)."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    valid = np.flatnonzero(index >= 0)
    used = index[valid]
    if used.size and np.array_equal(valid, np.arange(valid[0], valid[0] + valid.size)) and \
            np.array_equal(used, np.arange(used[0], used[0] + used.size)):
        if valid.size < index.size:
            R = b.op("Slice", [R, b.ints([int(valid[0])]), b.ints([int(valid[-1]) + 1]), b.ints([axis])], "R_kept")
        if used[0] == 0 and used.size == in_len:
            return R
        pads = [0] * (2 * rank)
        pads[axis], pads[axis + rank] = int(used[0]), int(in_len - used[0] - used.size)
        return b.op("Pad", [R, b.ints(pads, "pads")], "R_unslice")
    if np.unique(used).size == used.size:
        b.check_budget(in_len, 8, f"the inverse index map of {where or f'axis {axis}'}")
        pads = [0] * (2 * rank)
        pads[axis + rank] = 1
        slot = b.op("Pad", [R, b.ints(pads, "pads")], "R_slot")
        inverse = np.full(in_len, index.size, dtype=np.int64)
        inverse[used] = np.flatnonzero(index >= 0)
        return b.op("Gather", [slot, b.const(inverse, dtype=np.int64, hint="inverse")], "R_back", axis=axis)
    b.check_budget(index.size * in_len, 8, f"the one-hot copy matrix ({index.size} x {in_len}) of "
                                           f"{where or f'axis {axis}'}")
    A = np.zeros((index.size, in_len))
    A[np.flatnonzero(index >= 0), used] = 1.0
    return axis_matmul(b, R, axis, rank, A)


def along(view: NodeView, name: str, axis: int) -> str:
    """'axis k of 'x' (declared shape (?, 3, 1000000000))' for budget messages."""
    from ..builder import shape_text
    info = view.info(name)
    return f"axis {axis} of {name!r} (declared shape {shape_text(info.shape if info else None, info and info.symbols)})"


def _merged_shape(b: GraphBuilder, R: str, axis: int, rank: int) -> str:
    """R's run-time shape with `axis` replaced by -1 (the target of a Reshape that merges axis and axis + 1)."""
    shape = b.op("Shape", [R], "R_shape")
    parts = []
    if axis > 0:
        parts.append(b.op("Slice", [shape, b.ints([0]), b.ints([axis])], "dims_before"))
    parts.append(b.ints([-1], "minus_one"))
    if axis < rank - 1:
        parts.append(b.op("Slice", [shape, b.ints([axis + 1]), b.ints([rank])], "dims_after"))
    return parts[0] if len(parts) == 1 else b.op("Concat", parts, "merged_shape", axis=0)


def reverse(b: GraphBuilder, R: str, axis: int) -> str:
    """R reversed along one axis (a Slice with step -1)."""
    return b.op("Slice", [R, b.ints([-1]), b.ints([-(2 ** 63)]), b.ints([axis]), b.ints([-1])], "R_reversed")


def spread_back(b: GraphBuilder, R: str, axis: int, rank: int, start: int, step: int, count: int, dim: int) -> str:
    """R_x for an output axis whose count positions read the inputs start, start + step, ... (step >= 1) of an
    axis of length dim: R interleaved with step - 1 zeros (Unsqueeze, Pad, Reshape), then padded to dim.

    Every constant is a handful of integers, whatever dim is (an axis declared 10^9 long costs nothing)."""
    back, length = R, count
    if step > 1:
        pads = [0] * (2 * (rank + 1))
        pads[axis + 1 + rank + 1] = step - 1
        spread = b.op("Pad", [b.unsqueeze(R, [axis + 1], "R_u"), b.ints(pads, "pads")], "R_spread")
        back = b.op("Reshape", [spread, _merged_shape(b, R, axis, rank)], "R_interleaved")
        length = count * step
    if length > dim - start:  # the zeros after the last position run past the axis' end
        back = b.op("Slice", [back, b.ints([0]), b.ints([dim - start]), b.ints([axis])], "R_cut")
        length = dim - start
    if start == 0 and length == dim:
        return back
    pads = [0] * (2 * rank)
    pads[axis], pads[axis + rank] = start, dim - start - length
    return b.op("Pad", [back, b.ints(pads, "pads")], "R_unslice")


def scatter_back(b: GraphBuilder, R: str, x: str, axis: int, rank: int, index: np.ndarray, where: str) -> str:
    """R_x[.., i, ..] = sum of R[.., j, ..] over the j with index[j] == i: ScatterElements into zeros shaped like x,
    adding up repeated indices (reduction 'add' from opset 16; below, the copies are first summed by a one-hot
    MatMul over the distinct indices). The constants are sized by the index list, never by x's axis."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    distinct = np.unique(index)
    repeated = distinct.size < index.size
    if repeated and b.opset < 16:
        b.check_budget(index.size * distinct.size, 8, f"the one-hot sum of repeated indices "
                                                      f"({index.size} x {distinct.size}) along {where}")
        R = axis_matmul(b, R, axis, rank, (index[:, None] == distinct[None, :]).astype(np.float64))
        index, repeated = distinct, False
    positions = b.const(index.reshape((1,) * axis + (index.size,) + (1,) * (rank - axis - 1)), dtype=np.int64,
                        hint="indices")
    full = b.op("Expand", [positions, b.op("Shape", [R], "R_shape")], "indices_full")
    attrs = {"reduction": "add"} if repeated else {}
    return b.op("ScatterElements", [b.zeros_like(x, "R_x0"), full, R], "R_back", axis=axis, **attrs)


def unbroadcast(b: GraphBuilder, R: str, x: str, x_shape: tuple, out_rank: int) -> str:
    """Sum R (the broadcast output's shape) back to x's shape: over leading axes x lacks and over its size-1 axes."""
    lead = out_rank - len(x_shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(x_shape) if d == 1]
    if not axes:
        return R
    summed = b.reduce("ReduceSum", R, axes, keepdims=True, hint="R_unbroadcast")
    if lead == 0:
        return summed
    return b.op("Reshape", [summed, b.op("Shape", [x], "x_shape")], "R_unbroadcast_shaped")


def dropped_share(b: GraphBuilder, R: str, R_x: str) -> str:
    """(N,) relevance that reached outputs holding no input: sum(R) - sum(R_x) per sample."""
    return b.op("Sub", [b.per_sample_sum(R, "R_sum"), b.per_sample_sum(R_x, "R_x_sum")], "dropped")


# ---------------------------------------------------------------------------------------------------------------
# Concat, Split
def _check_concat(view: NodeView) -> Optional[str]:
    """Concat needs the rank of its output (to resolve a negative axis)."""
    if view.shape(view.outputs[0]) is None and all(view.shape(i) is None for i in view.inputs):
        return f"the rank of {view.outputs[0]!r} is not known at compile time"
    return None


@register("Concat", group="shape", rules=(Pass,), check=_check_concat)
def emit_concat(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x_i = the slice of R_y that input i filled: one Split when sizes are static, Slices from Shape otherwise;
    the slices of inputs without relevance (a ViT's cls token) are reported as the node's absorbed relevance."""
    rank = len(view.shape(view.outputs[0]) or view.shape(next(i for i in view.inputs if view.shape(i))))
    axis = view.attr("axis") % rank
    sizes = [(view.shape(i) or (None,) * rank)[axis] for i in view.inputs]
    if all(s is not None for s in sizes):
        if b.opset >= 13:
            parts = b.op("Split", [R[0], b.ints(sizes, "split")], "R_part", n_out=len(sizes), axis=axis)
        else:
            parts = b.op("Split", [R[0]], "R_part", n_out=len(sizes), axis=axis, split=sizes)
        parts = [parts] if isinstance(parts, str) else parts
    else:
        parts, start = [], b.ints([0], "start")
        for name in view.inputs:
            size = b.op("Slice", [b.op("Shape", [name], "x_shape"), b.ints([axis]), b.ints([axis + 1])], "size")
            end = b.op("Add", [start, size], "end")
            parts.append(b.op("Slice", [R[0], start, end, b.ints([axis])], "R_part"))
            start = end
    kept = [p for p, n in zip(parts, view.inputs) if not view.is_relevant(n)]  # a cls token, a constant pad
    bias = None
    if kept:
        from .arithmetic import absorbed_row
        bias = absorbed_row(b, b.op("Concat", kept, "R_const", axis=axis) if len(kept) > 1 else kept[0], rank)
    return Emitted([p if view.is_relevant(n) else None for p, n in zip(parts, view.inputs)], bias)


@register("Split", group="shape", rules=(Pass,))
def emit_split(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = Concat(R_y_1, ..., R_y_k) along the split axis (outputs without relevance arrive as zeros)."""
    rank = len(_static_dims(view, view.inputs[0], (), "Split needs the rank"))
    axis = view.attr("axis", 0) % rank
    back = R[0] if len(R) == 1 else b.op("Concat", list(R), "R_concat", axis=axis)
    return Emitted([back] + [None] * (len(view.inputs) - 1))


# ---------------------------------------------------------------------------------------------------------------
# Slice, Gather, Pad, Expand
def _check_const_inputs(view: NodeView, first: int = 1) -> Optional[str]:
    """Every input after the data must be a constant (or omitted)."""
    for name in view.inputs[first:]:
        if name and view.const(name) is None and not view.is_relevant(name):
            return view.not_constant("its input", name)
    return None


def _known(view: NodeView, name: str) -> Optional[list]:
    """An int input's values when they are known at compile time: a constant, or shape arithmetic on static
    sizes (the legacy exporter's rotary half: Shape(q)[-1] // 2)."""
    values = known_ints(view, name)
    return values if values is not None and all(v is not None for v in values) else None


def _check_slice(view: NodeView) -> Optional[str]:
    """Slice: starts, ends, axes, steps known at compile time."""
    for name in view.inputs[1:]:
        if name and _known(view, name) is None:
            from ..fold import READS_DYNAMIC_AXIS, why_not_constant
            why = why_not_constant(view.index, name)
            text = f"its input {name!r} is not known at compile time ({why})"
            return NeedsStaticSize(text) if why.startswith(READS_DYNAMIC_AXIS) else text
    return None


@register("Slice", group="shape", rules=(Pass,), check=_check_slice)
def emit_slice(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x: R_y put back where Slice took it from (a Pad for unit steps, a Gather with a zero slot otherwise)."""
    x = view.inputs[0]
    rank = len(_static_dims(view, x, (), "Slice needs the rank"))
    starts, ends = (_known(view, n) for n in view.inputs[1:3])
    axes = _known(view, view.inputs[3]) if len(view.inputs) > 3 and view.inputs[3] else list(range(len(starts)))
    steps = _known(view, view.inputs[4]) if len(view.inputs) > 4 and view.inputs[4] else [1] * len(starts)
    back = R[0]
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % rank
        dim = view.shape(x)[axis]
        if dim is None:
            if step == 1 and start == 0 and end >= 2 ** 31:
                continue  # the whole axis
            if step != 1:
                raise StaticSizeError(f"axis {axis} of {x!r} is not known at compile time (a Slice with step "
                                      f"{step} moves relevance back along it)")
            back = _unslice_dynamic(b, back, x, axis, rank, int(start), int(end))
            continue
        first, stop, stride = slice(int(start), int(end), int(step)).indices(dim)  # Slice clamps as Python does
        count = len(range(first, stop, stride))
        if count == 0:  # an empty slice: its (zero) relevance spread over the axis
            back = move_back(b, back, axis, rank, np.zeros(0, dtype=np.int64), dim, along(view, x, axis))
            continue
        if stride < 0:  # the same positions in increasing order
            back, first, stride = reverse(b, back, axis), first + (count - 1) * stride, -stride
        back = spread_back(b, back, axis, rank, first, stride, count, dim)
    return Emitted([back] + [None] * (len(view.inputs) - 1))


def _unslice_dynamic(b: GraphBuilder, R: str, x: str, axis: int, rank: int, start: int, end: int) -> str:
    """R (x[start:end] along axis, unit step) padded with zeros back to x's run-time size there: start and end
    resolved against the size d as Slice does (negative: from the end; clamped to [0, d])."""
    require_opset(b, f"axis {axis} of {x!r}")
    d = dims(b, x, axis, axis + 1, "axis_size")
    zero = b.ints([0])

    def resolve(value: int) -> str:
        if value >= 0:
            return int_min(b, b.ints([min(value, 2 ** 62)]), d, "bound")
        return int_max(b, b.op("Add", [d, b.ints([value])], "from_end"), zero, "bound")

    first = resolve(start)
    last = int_max(b, resolve(end), first, "bound_end")
    pads = [zero] * (2 * rank)
    pads[axis], pads[rank + axis] = first, b.op("Sub", [d, last], "tail")
    return b.op("Pad", [R, b.op("Concat", pads, "pads", axis=0)], "R_unslice")


def _check_gather(view: NodeView) -> Optional[str]:
    """Gather moves relevance back when its indices are constant, along any axis but the batch axis (a static one,
    or one of run-time length: the sequence); a Gather of embedding rows by token ids is an embedding lookup
    (embedding.py)."""
    if is_embedding(view):
        return check_embedding(view)
    shape = view.shape(view.inputs[0])
    if view.const(view.inputs[1]) is None:
        from ..fold import computed_from_shapes_only
        if not computed_from_shapes_only(view.index, view.inputs[1]):
            return view.not_constant("its indices", view.inputs[1])
        if shape is None or view.shape(view.inputs[1]) is None:
            return f"the rank of its input {view.inputs[0]!r} or of its indices is not known at compile time"
        return None  # indices computed from the input's sizes alone (a layout change): moved back at run time
    if shape is None:
        return f"the rank of its input {view.inputs[0]!r} is not known at compile time"
    axis = view.attr("axis", 0) % len(shape)
    if axis == view.index.batch_axis(view.inputs[0]):
        return f"it gathers along the batch axis {axis} of {view.inputs[0]!r} (relevance would mix samples)"
    return None


@register("Gather", group="shape", rules=(Pass,), check=_check_gather)
def emit_gather(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x[.., i, ..] = sum of R_y over the positions whose index is i (repeated indices add up), along any axis
    (the other axes may be dynamic): the index axes of R_y are flattened into one, then moved back; an embedding
    lookup sends the rows' relevance, summed over each row, to its token ids."""
    if is_embedding(view):
        return emit_embedding(b, view, rule, R)
    x = view.inputs[0]
    shape = view.shape(x)
    rank = len(shape)
    axis = view.attr("axis", 0) % rank
    if view.const(view.inputs[1]) is None:
        return Emitted([_gather_back_runtime(b, x, R[0], axis, rank, view.inputs[1], len(view.shape(view.inputs[1]))),
                        None])
    indices = view.const(view.inputs[1]).astype(np.int64)
    flat = (np.where(indices < 0, indices + shape[axis], indices) if shape[axis] is not None else indices).reshape(-1)
    if indices.ndim == 1:
        R_flat = R[0]
    elif indices.ndim == 0:
        R_flat = b.unsqueeze(R[0], [axis], "R_flat")
    else:
        rest = shape[axis + 1:]
        if all(d is not None for d in rest):
            target = b.ints([0] * axis + [flat.size] + [int(d) for d in rest])
        else:  # copy the dims after the index axes from R_y itself
            r_shape = b.op("Shape", [R[0]], "R_shape")
            tail = b.op("Slice", [r_shape, b.ints([axis + indices.ndim]), b.ints([rank - 1 + indices.ndim])],
                        "R_tail")
            target = b.op("Concat", [b.ints([0] * axis + [flat.size]), tail], "R_target", axis=0)
        R_flat = b.op("Reshape", [R[0], target], "R_flat")
    if shape[axis] is None:  # an axis of run-time length (the sequence): a one-hot matrix built at run time
        return Emitted([_gather_back_dynamic(b, x, R_flat, axis, rank, flat), None])
    if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):  # a contiguous run: Pad back
        return Emitted([spread_back(b, R_flat, axis, rank, int(flat[0]), 1, flat.size, shape[axis]), None])
    return Emitted([scatter_back(b, R_flat, x, axis, rank, flat, along(view, x, axis)), None])


def _gather_back_runtime(b: GraphBuilder, x: str, R: str, axis: int, rank: int, indices: str, k: int) -> str:
    """R_x[.., i, ..] = sum of R_y over the positions whose index is i, for indices computed at run time from the
    input's sizes (k of them axes): R_y's index axes flattened into one, negative indices wrapped, then
    ScatterElements with reduction 'add' into zeros shaped like x (opset >= 16) or R @ OneHot(indices, length)."""
    r_shape = b.op("Shape", [R], "R_shape")
    parts = [b.op("Slice", [r_shape, b.ints([0]), b.ints([axis])], "R_head")] if axis else []
    parts.append(b.ints([-1]))
    if axis + 1 < rank:
        parts.append(b.op("Slice", [r_shape, b.ints([axis + k]), b.ints([rank - 1 + k])], "R_tail"))
    R_flat = b.op("Reshape", [R, b.op("Concat", parts, "R_target", axis=0) if len(parts) > 1 else parts[0]],
                  "R_flat")
    length = b.op("Slice", [b.op("Shape", [x], "x_shape"), b.ints([axis]), b.ints([axis + 1])], "axis_len")
    flat = b.op("Reshape", [indices, b.ints([-1])], "indices_flat")
    negative = b.op("Cast", [b.op("Less", [flat, b.const(0, dtype=np.int64)], "negative")], "neg_i", to=7)
    flat = b.op("Add", [flat, b.op("Mul", [negative, length], "shift")], "indices_wrapped")
    if b.opset >= 16:
        shape = [1] * axis + [-1] + [1] * (rank - axis - 1)
        positions = b.op("Expand", [b.op("Reshape", [flat, b.ints(shape)], "positions"),
                                    b.op("Shape", [R_flat], "R_flat_shape")], "indices_full")
        return b.op("ScatterElements", [b.zeros_like(x, "R_x0"), positions, R_flat], "R_back", axis=axis,
                    reduction="add")
    return _one_hot_back(b, R_flat, flat, length, axis, rank)


def _one_hot_back(b: GraphBuilder, R: str, index: str, length: str, axis: int, rank: int) -> str:
    """R_x = R @ OneHot(index, length) along `axis` (R's index axis flattened, index (M,) int64, no negatives)."""
    one_hot = b.op("OneHot", [index, length, b.const([0.0, 1.0], hint="off_on")], "one_hot", axis=-1)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = R if axis == rank - 1 else b.op("Transpose", [R], "R_T", perm=perm)
    back = b.op("MatMul", [moved, one_hot], "R_axis")
    return back if axis == rank - 1 else b.op("Transpose", [back], "R_back", perm=[int(i) for i in np.argsort(perm)])


def _gather_back_dynamic(b: GraphBuilder, x: str, R: str, axis: int, rank: int, indices: np.ndarray) -> str:
    """R_x = R @ OneHot(indices, length) along `axis` when its length is known only at run time (repeated indices
    add up; negative ones count from the end)."""
    length = b.op("Slice", [b.op("Shape", [x], "x_shape"), b.ints([axis]), b.ints([axis + 1])], "axis_len")
    index = b.const(indices, dtype=np.int64, hint="indices")
    if np.any(indices < 0):
        index = b.op("Add", [index, b.op("Mul", [b.op("Cast", [b.op("Less", [index, b.const(0, dtype=np.int64)],
                                                                     "negative")], "neg_i", to=7), length],
                                         "shift")], "indices_wrapped")
    return _one_hot_back(b, R, index, length, axis, rank)


def _pad_amounts(view: NodeView, rank: int) -> list:
    """Pad's pads per axis as (begin, end) pairs, from the attribute (opset < 11) or the constant input."""
    pads = view.attr("pads")
    if pads is None:
        pads = view.const(view.inputs[1]).reshape(-1).tolist()
    axes = list(range(rank))
    if len(view.inputs) > 3 and view.inputs[3]:
        axes = [int(a) % rank for a in view.const(view.inputs[3]).reshape(-1)]
    result = [(0, 0)] * rank
    for k, a in enumerate(axes):
        result[a] = (int(pads[k]), int(pads[k + len(axes)]))
    return result


def _fold_pad(b: GraphBuilder, R: str, axis: int, rank: int, begin: int, end: int, dim: int,
              mode: str) -> Optional[str]:
    """R_x along one padded axis from slices of R, with no constant sized by dim: the kept part of a constant pad
    or crop; for reflect, edge and wrap (pads >= 0 and, for reflect and wrap, no longer than the axis) the middle
    part plus each pad's relevance folded onto the inputs it copies (reversed for reflect, summed onto the edge
    value for edge). None where another case needs the general index map."""
    def part(lo: int, hi: int) -> str:
        return b.op("Slice", [R, b.ints([lo]), b.ints([hi]), b.ints([axis])], "R_part")

    def placed(value: str, before: int, after: int) -> str:
        if before == 0 and after == 0:
            return value
        pads = [0] * (2 * rank)
        pads[axis], pads[axis + rank] = before, after
        return b.op("Pad", [value, b.ints(pads, "pads")], "R_placed")

    if mode == "constant" or (begin <= 0 and end <= 0):
        kept = dim - max(-begin, 0) - max(-end, 0)
        middle = part(max(begin, 0), max(begin, 0) + kept) if begin > 0 or end > 0 else R
        return placed(middle, max(-begin, 0), max(-end, 0))
    if begin < 0 or end < 0 or (mode == "reflect" and max(begin, end) > dim - 1) or \
            (mode == "wrap" and max(begin, end) > dim):
        return None
    pieces = [part(begin, begin + dim)]
    if begin > 0:
        left = part(0, begin)
        if mode == "edge":  # every left pad copies x[0]
            pieces.append(placed(b.reduce("ReduceSum", left, [axis], keepdims=True, hint="R_edge"), 0, dim - 1))
        elif mode == "reflect":  # pad position p copies x[begin - p]
            pieces.append(placed(reverse(b, left, axis), 1, dim - 1 - begin))
        else:  # wrap: pad position p copies x[dim - begin + p]
            pieces.append(placed(left, dim - begin, 0))
    if end > 0:
        right = part(begin + dim, begin + dim + end)
        if mode == "edge":  # every right pad copies x[dim - 1]
            pieces.append(placed(b.reduce("ReduceSum", right, [axis], keepdims=True, hint="R_edge"), dim - 1, 0))
        elif mode == "reflect":  # pad position q after the end copies x[dim - 2 - q]
            pieces.append(placed(reverse(b, right, axis), dim - 1 - end, 1))
        else:  # wrap: pad position q copies x[q]
            pieces.append(placed(right, 0, dim - end))
    return b.add_all(pieces, "R_folded")


@register("Pad", group="shape", rules=(Pass,), check=_check_const_inputs)
def emit_pad(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x: R_y cut back to x (constant mode; relevance that reached the pad constants is reported as dropped) or
    folded back onto the inputs each padded position copies (reflect, edge, wrap)."""
    x = view.inputs[0]
    rank = len(_static_dims(view, x, (), "Pad needs the rank"))
    mode = view.attr("mode", "constant")
    back = R[0]
    for axis, (begin, end) in enumerate(_pad_amounts(view, rank)):
        if begin == 0 and end == 0:
            continue
        if view.shape(x)[axis] is None:
            if mode != "constant":
                raise StaticSizeError(f"axis {axis} of {x!r} is not known at compile time (a {mode} Pad moves "
                                      f"relevance back along it)")
            back = _unpad_dynamic(b, back, axis, rank, begin, end)
            continue
        dim = _static_dims(view, x, (axis,), "Pad moves relevance back along it")[axis]
        folded = _fold_pad(b, back, axis, rank, begin, end, dim, mode)
        if folded is not None:
            back = folded
            continue
        index = np.arange(dim)[max(-begin, 0): dim - max(-end, 0)]
        widths = (max(begin, 0), max(end, 0))
        index = np.pad(index, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
        back = move_back(b, back, axis, rank, index, dim, along(view, x, axis))
    pads = _pad_amounts(view, rank)
    stab = dropped_share(b, R[0], back) if mode == "constant" and any(p > 0 for pair in pads for p in pair) else None
    return Emitted([back] + [None] * (len(view.inputs) - 1), None, stab)


def _unpad_dynamic(b: GraphBuilder, R: str, axis: int, rank: int, begin: int, end: int) -> str:
    """R of a constant Pad cut back to its input along one axis of any size: the padded positions dropped, a
    negative amount (a crop) restored as zeros."""
    require_opset(b, f"axis {axis} of the Pad's input")
    if begin > 0 or end > 0:
        stop = -max(end, 0) if end > 0 else np.iinfo(np.int64).max
        R = b.op("Slice", [R, b.ints([max(begin, 0)]), b.ints([stop]), b.ints([axis])], "R_unpad")
    if begin < 0 or end < 0:
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = max(-begin, 0), max(-end, 0)
        R = b.op("Pad", [R, b.ints(pads, "pads")], "R_uncrop")
    return R


@register("Expand", group="shape", rules=(Pass,))
def emit_expand(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = R_y summed over the axes Expand broadcast (the copies' relevance adds up)."""
    x = view.inputs[0]
    x_shape = _static_dims(view, x, (), "Expand needs the rank")
    out = view.shape(view.outputs[0])
    if out is None:
        raise CompileError(f"the rank of {view.outputs[0]!r} is not known at compile time (Expand needs it)")
    return Emitted([unbroadcast(b, R[0], x, x_shape, len(out)), None])


# ---------------------------------------------------------------------------------------------------------------
# Resize
def _check_resize(view: NodeView) -> Optional[str]:
    """Resize: nearest or linear, constant scales/sizes, no crop-and-resize, static shapes, batch axis kept."""
    mode = view.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"mode {mode!r} is not supported (nearest and linear are)"
    if view.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        return "coordinate_transformation_mode 'tf_crop_and_resize' is not supported"
    if view.attr("antialias", 0):
        return "antialias=1 is not supported"
    if view.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "keep_aspect_ratio_policy other than 'stretch' is not supported"
    scales = _scales_input(view)
    if scales and view.const(scales) is None:
        return view.not_constant("its scales", scales)
    x, y = view.shape(view.inputs[0]), resize_output_shape(view)
    for name, shape in ((view.inputs[0], x), (view.outputs[0], y)):
        if shape is None:
            return f"the rank of {name!r} is not known at compile time"
    given = _given_scales(view, len(x))
    if given is not None and given[0] != 1.0:
        return "it resizes the batch axis (relevance would mix samples)"
    return None


def known_ints(view: NodeView, name: str, depth: int = 0) -> Optional[list]:
    """Entries of a small int tensor known at compile time (None where not), following constants and the
    Shape -> Slice/Gather -> Unsqueeze -> Concat arithmetic exporters write; None if it cannot be followed."""
    const = view.const(name)
    if const is not None:
        return [int(v) for v in np.asarray(const).reshape(-1)]
    node = view.index.producer.get(name)
    if node is None or depth > 8:
        return None
    sub = NodeView(node, view.index, frozenset())
    if node.op_type == "Shape":
        shape = view.shape(node.input[0])
        if shape is None:
            return None
        dims = list(shape)
        return dims[slice(sub.attr("start", 0), sub.attr("end", None))]
    if node.op_type in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape"):
        return known_ints(view, node.input[0], depth + 1)
    if node.op_type in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:  # shape arithmetic (x.size(-1) // 2)
        a, c = (known_ints(view, i, depth + 1) for i in node.input)
        if a is None or c is None or (len(a) != len(c) and 1 not in (len(a), len(c))):
            return None
        a, c = (a * len(c) if len(a) == 1 else a), (c * len(a) if len(c) == 1 else c)
        ops = {"Add": lambda u, v: u + v, "Sub": lambda u, v: u - v, "Mul": lambda u, v: u * v,
               "Div": lambda u, v: int(u / v) if v else None}
        return [None if u is None or v is None else ops[node.op_type](u, v) for u, v in zip(a, c)]
    if node.op_type == "Concat":
        parts = [known_ints(view, i, depth + 1) for i in node.input]
        return None if any(p is None for p in parts) else [v for p in parts for v in p]
    if node.op_type == "Gather":
        data, idx = known_ints(view, node.input[0], depth + 1), view.const(node.input[1])
        return None if data is None or idx is None else [data[int(i)] for i in np.asarray(idx).reshape(-1)]
    if node.op_type == "Slice":
        data = known_ints(view, node.input[0], depth + 1)
        bounds = [view.const(i) for i in node.input[1:3]]
        steps = view.const(node.input[4]) if len(node.input) > 4 and node.input[4] else np.array([1])
        if data is None or any(v is None for v in bounds) or steps is None:
            return None
        return data[slice(int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0]), int(steps.reshape(-1)[0]))]
    return None


def resize_output_shape(view: NodeView) -> Optional[tuple]:
    """Resize's output shape: from shape inference, unknown dims filled from a sizes input computed from shapes."""
    shape = view.shape(view.outputs[0])
    if shape is not None and all(d is not None for d in shape[1:]):
        return shape
    sizes = view.inputs[3] if view.op_type == "Resize" and len(view.inputs) > 3 and view.inputs[3] else ""
    known = known_ints(view, sizes) if sizes else None
    axes = view.attr("axes")
    x = view.shape(view.inputs[0])
    if known is None or x is None:
        return shape
    if axes is not None:
        full = list(x)
        for a, v in zip(axes, known):
            full[a % len(x)] = v
        known = full
    if shape is None:
        return tuple(known)
    return tuple(s if s is not None else k for s, k in zip(shape, known))


def _scales_input(view: NodeView) -> str:
    """The name of the scales input: (X, scales) for Upsample and Resize-10, (X, roi, scales, sizes) from 11."""
    from ..graph import opset_version
    position = 1 if (view.op_type == "Upsample" or opset_version(view.index.model) < 11) else 2
    return view.inputs[position] if len(view.inputs) > position else ""


def _given_scales(view: NodeView, rank: int) -> Optional[list]:
    """Per-axis scales given as a constant (input or attribute), None where the sizes decide."""
    name = _scales_input(view)
    scales = view.const(name) if name else None
    if scales is None and view.attr("scales") is not None:
        scales = np.asarray(view.attr("scales"))
    if scales is None or scales.size == 0:
        return None
    scales = scales.astype(np.float64).reshape(-1).tolist()
    axes = view.attr("axes")
    if axes is None:
        return scales
    full = [1.0] * rank
    for a, value in zip(axes, scales):
        full[a % rank] = value
    return full


def _resize_scales(view: NodeView, x_shape: tuple, y_shape: tuple) -> list:
    """Per-axis scale as the coordinate transform uses it: the given scales (input or attribute), else out / in."""
    given = _given_scales(view, len(x_shape))
    if given is None:
        return [(o / i) if (i and o) else 1.0 for i, o in zip(x_shape, y_shape)]
    return given


@register(("Resize", "Upsample"), group="shape", rules=(Pass,), check=_check_resize)
def emit_resize(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Resize as the linear map it is, moved back by its exact transpose: R_x = J^T R_y, per axis
    R_x = A^T R with A (out, in) the interpolation matrix (nearest: one-hot rows, a nearest upsample's transpose sums
    the copies; linear: two weights per row). Chosen over Norm because each row of A sums to one, so the transpose
    conserves exactly without a stabilizer, and it is what Zennit does with an Upsample layer (its gradient)."""
    x = view.inputs[0]
    x_shape, y_shape = view.shape(x), resize_output_shape(view)
    if not (known(x_shape[1:]) and known(y_shape[1:])):
        return _resize_dynamic(b, view, R)
    rank = len(x_shape)
    scales = _resize_scales(view, x_shape, y_shape)
    if scales[0] != 1.0:
        raise CompileError(f"Resize of {x!r} changes the batch axis")
    mode = view.attr("mode", "nearest")
    default_ctm = "half_pixel" if b.opset >= 11 else "asymmetric"
    ctm = view.attr("coordinate_transformation_mode", default_ctm)
    nearest_mode = view.attr("nearest_mode", "round_prefer_floor" if b.opset >= 11 else "simple")
    back = R[0]
    block_axes, block_shape = [], []
    for axis in range(1, rank):
        n_in, n_out = x_shape[axis], y_shape[axis]
        if n_in == n_out and scales[axis] == 1.0:  # an axis Resize leaves alone (onnxruntime copies it)
            block_shape.append(n_in)
            continue
        b.check_budget(n_out * n_in, 8, f"the interpolation matrix ({n_out} x {n_in}) of {along(view, x, axis)}")
        A = resize_matrix(n_in, n_out, scales[axis], mode, ctm, nearest_mode)
        if n_in == n_out and np.array_equal(A, np.eye(n_in)):
            block_shape.append(n_in)
            continue
        factor = n_out // n_in
        if n_out == factor * n_in and np.array_equal(A, np.kron(np.eye(n_in), np.ones((factor, 1)))):
            block_shape += [n_in, factor]  # a nearest upsample by an integer factor: sum each block of copies
            block_axes.append(len(block_shape))
            continue
        back = axis_matmul(b, back, axis, rank, A)
        block_shape.append(n_in)
    if block_axes:
        split = b.op("Reshape", [back, b.ints([0] + block_shape, "blocks")], "R_blocks")
        back = b.reduce("ReduceSum", split, block_axes, keepdims=False, hint="R_x")
    return Emitted([back] + [None] * (len(view.inputs) - 1))


def _resize_dynamic(b: GraphBuilder, view: NodeView, R: list) -> Emitted:
    """Resize's exact transpose where a size is known only at run time (see resize_dynamic): axes that keep their
    size pass, nearest upsamples by an integer factor sum their blocks, other axes multiply by a run-time A^T."""
    x = view.inputs[0]
    x_shape, y_shape = view.shape(x), resize_output_shape(view)
    rank = len(x_shape)
    given = _given_scales(view, rank)
    mode = view.attr("mode", "nearest")
    ctm = view.attr("coordinate_transformation_mode", "half_pixel" if b.opset >= 11 else "asymmetric")
    nearest_mode = view.attr("nearest_mode", "round_prefer_floor" if b.opset >= 11 else "simple")
    back, factors = R[0], {}
    for axis in range(1, rank):
        n_in, n_out = x_shape[axis], y_shape[axis]
        scale = given[axis] if given is not None else None
        if scale is None and n_in is not None and n_in == n_out and \
                np.array_equal(resize_matrix(n_in, n_out, 1.0, mode, ctm, nearest_mode), np.eye(n_in)):
            continue  # an axis Resize leaves alone
        if scale is not None and is_block_copy(scale, mode, ctm, nearest_mode):
            if scale != 1.0:  # a nearest upsample by an integer factor: sum each block of copies
                factors[axis] = scale
            continue
        A = runtime_matrix(b, dims(b, x, axis, axis + 1, "n_in"), dims(b, view.outputs[0], axis, axis + 1, "n_out"),
                           scale, mode, ctm, nearest_mode)
        back = matrix_transpose_along(b, back, axis, rank, A)
    if factors:
        back = block_sum(b, back, x, rank, factors)
    return Emitted([back] + [None] * (len(view.inputs) - 1))


# ---------------------------------------------------------------------------------------------------------------
# Tile, GatherND
def _check_tile(view: NodeView) -> Optional[str]:
    """Tile: constant repeats, the batch axis not repeated, static sizes where it repeats (one unknown size kept)."""
    x, repeats = view.inputs[0], view.inputs[1]
    if view.const(repeats) is None:
        return view.not_constant("its repeats", repeats)
    shape = view.shape(x)
    if shape is None:
        return f"the rank of its input {x!r} is not known at compile time"
    reps = view.const(repeats).reshape(-1).tolist()
    batch = view.index.batch_axis(x)
    if batch is not None and reps[batch] != 1:
        return f"it repeats the batch axis {batch} of {x!r} (relevance would mix samples)"
    unknown = [a for a, d in enumerate(shape) if d is None]
    if any(reps[a] != 1 for a in unknown) or len(unknown) > 1:
        return f"axis {unknown[-1]} of its input {x!r} is not known at compile time"
    return None


@register("Tile", group="shape", rules=(Pass,), check=_check_tile)
def emit_tile(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = the sum of R_y over the copies: each repeated axis of size r * d is split into (r, d) and the r
    copies are summed (the transpose of copying)."""
    x = view.inputs[0]
    shape = view.shape(x)
    reps = [int(r) for r in view.const(view.inputs[1]).reshape(-1)]
    target, copies = [], []
    for axis, (d, r) in enumerate(zip(shape, reps)):
        if r != 1:
            copies.append(len(target))
            target.append(r)
        target.append(-1 if d is None else int(d))
    if not copies:
        return Emitted([R[0], None])
    split = b.op("Reshape", [R[0], b.ints(target, "tiles")], "R_tiles")
    return Emitted([b.reduce("ReduceSum", split, copies, keepdims=False, hint="R_x"), None])


def _check_gather_nd(view: NodeView) -> Optional[str]:
    """GatherND: constant indices, static batch and indexed axes, not indexing the batch axis itself."""
    x, indices = view.inputs[0], view.inputs[1]
    if view.const(indices) is None:
        return view.not_constant("its indices", indices)
    shape = view.shape(x)
    if shape is None:
        return f"the rank of its input {x!r} is not known at compile time"
    batch_dims = view.attr("batch_dims", 0)
    depth = view.const(indices).shape[-1]
    if batch_dims == 0 and view.index.batch_axis(x) == 0:
        return f"it indexes the batch axis 0 of {x!r} (batch_dims=0: relevance would mix samples)"
    unknown = [a for a in range(batch_dims + depth) if shape[a] is None]
    if unknown:
        return f"axis {unknown[0]} of its input {x!r} is not known at compile time"
    if sum(d is None for d in shape[batch_dims + depth:]) > 1:
        return f"more than one axis of {x!r} after the indexed ones is unknown at compile time"
    return None


@register("GatherND", group="shape", rules=(Pass,), check=_check_gather_nd)
def emit_gather_nd(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = J^T R_y with J the selection: per batch entry B, R_x[B, p, ...] = sum over the gathered slices m with
    position p of R_y[B, m, ...] (repeated positions add up), as one batched MatMul with a one-hot (B, P, M) matrix
    built at compile time."""
    x = view.inputs[0]
    shape = view.shape(x)
    indices = view.const(view.inputs[1]).astype(np.int64)
    batch_dims = view.attr("batch_dims", 0)
    depth = indices.shape[-1]
    lead = [int(d) for d in shape[:batch_dims]]
    indexed = [int(d) for d in shape[batch_dims: batch_dims + depth]]
    n_batch, n_pos = int(np.prod(lead)), int(np.prod(indexed))
    picks = indices.reshape(n_batch, -1, depth)  # (B, M, depth)
    positions = np.ravel_multi_index(tuple(np.mod(picks[..., k], indexed[k]) for k in range(depth)), indexed)
    one_hot = np.zeros((n_batch, n_pos, picks.shape[1]))
    for batch in range(n_batch):
        np.add.at(one_hot[batch], (positions[batch], np.arange(picks.shape[1])), 1.0)
    rest = shape[batch_dims + depth:]
    rest_size = -1 if any(d is None for d in rest) else int(np.prod([int(d) for d in rest]))
    R_rows = b.op("Reshape", [R[0], b.ints([n_batch, picks.shape[1], rest_size])], "R_rows")
    back = b.op("MatMul", [b.const(one_hot, hint="gather_nd_T"), R_rows], "R_back")
    return Emitted([b.op("Reshape", [back, b.op("Shape", [x], "x_shape")], "R_x"), None])
