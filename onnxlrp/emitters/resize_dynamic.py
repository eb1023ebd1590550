"""Resize's transpose at sizes only the run time knows: per axis, a nearest upsample by an integer factor sums each
block of copies (a Reshape sized from the run-time shape and a ReduceSum), and any other axis multiplies by A^T with
A, the (out, in) interpolation matrix, built in the graph from the run-time sizes exactly as
interpolation.resize_matrix builds it in NumPy (coordinates in float64, as there)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import TensorProto, helper

from ..builder import GraphBuilder
from ..errors import CompileError
from .interpolation import resize_matrix
from .runtime_sizes import dims

DOUBLE = TensorProto.DOUBLE
HALF_TOLERANCE = 1e-9  # as interpolation._nearest: a coordinate this close to x.5 counts as a half


def is_block_copy(factor: float, mode: str, coordinate_mode: str, nearest_mode: str) -> bool:
    """True when resizing by this scale copies each input `factor` times in a row at every size (checked on the
    matrices of sizes 1 to 8): its transpose is a sum over blocks (factor 1: the identity, in any mode)."""
    f = int(factor)
    if f != factor or f < 1 or (mode != "nearest" and f != 1):
        return False
    return all(np.array_equal(resize_matrix(n, f * n, factor, mode, coordinate_mode, nearest_mode),
                              np.kron(np.eye(n), np.ones((f, 1)))) for n in range(1, 9))


def block_sum(b: GraphBuilder, R: str, x: str, rank: int, factors: dict) -> str:
    """R (x's shape with axis a scaled by factors[a]) summed over each block of copies back to x's shape."""
    pieces, axes = [b.ints([0])], []
    for axis in range(1, rank):
        pieces.append(dims(b, x, axis, axis + 1, "in_size"))
        if axis in factors:
            pieces.append(b.ints([int(factors[axis])]))
            axes.append(len(pieces) - 1)
    split = b.op("Reshape", [R, b.op("Concat", pieces, "block_shape", axis=0)], "R_blocks")
    return b.reduce("ReduceSum", split, axes, keepdims=False, hint="R_x")


def _scalar(b: GraphBuilder, vector: str, hint: str) -> str:
    """A 1-element int64 vector as a float64 scalar."""
    return b.op("Cast", [b.squeeze(vector, [0], f"{hint}_i")], hint, to=DOUBLE)


def _double(b: GraphBuilder, value: float) -> str:
    """A float64 constant."""
    return b.const(value, dtype=np.float64)


def _coordinates(b: GraphBuilder, n_in: str, n_out: str, scale: str, mode: str) -> str:
    """x_original (float64) of every output position under the coordinate transformation mode (see
    interpolation.original_coordinates), from run-time sizes."""
    count = b.squeeze(n_out, [0], "n_out_i")
    x = b.op("Cast", [b.op("Range", [b.const(0, dtype=np.int64), count, b.const(1, dtype=np.int64)], "out_pos")],
             "out_pos_f", to=DOUBLE)
    half = _double(b, 0.5)
    shifted = b.op("Div", [b.op("Add", [x, half], "x_half"), scale], "x_scaled")
    if mode in ("half_pixel", "pytorch_half_pixel"):
        coords = b.op("Sub", [shifted, half], "coords")
        if mode == "pytorch_half_pixel":
            many = b.op("Greater", [_scalar(b, n_out, "n_out_f"), _double(b, 1.0)], "many_out")
            coords = b.op("Where", [many, coords, _double(b, 0.0)], "coords")
        return coords
    if mode == "half_pixel_symmetric":
        nin, nout = _scalar(b, n_in, "n_in_f"), _scalar(b, n_out, "n_out_f")
        adjustment = b.op("Div", [nout, b.op("Mul", [scale, nin], "in_scaled")], "adjustment")
        offset = b.op("Mul", [b.op("Div", [nin, _double(b, 2.0)], "in_half"),
                              b.op("Sub", [_double(b, 1.0), adjustment], "one_minus")], "offset")
        return b.op("Add", [offset, b.op("Sub", [shifted, half], "centred")], "coords")
    if mode == "align_corners":
        nin, nout = _scalar(b, n_in, "n_in_f"), _scalar(b, n_out, "n_out_f")
        last_out = b.op("Max", [b.op("Sub", [nout, _double(b, 1.0)], "last_out"), _double(b, 1.0)], "last_out_safe")
        coords = b.op("Div", [b.op("Mul", [x, b.op("Sub", [nin, _double(b, 1.0)], "last_in")], "x_span"), last_out],
                      "coords")
        return b.op("Where", [b.op("Greater", [nout, _double(b, 1.0)], "many_out"), coords, _double(b, 0.0)], "coords")
    if mode == "asymmetric":
        return b.op("Div", [x, scale], "coords")
    if mode == "tf_half_pixel_for_nn":
        return shifted
    raise CompileError(f"coordinate_transformation_mode {mode!r} is not supported")


def _nearest_index(b: GraphBuilder, coords: str, nearest_mode: str, scale: str) -> str:
    """The source index (float64, before clamping) of every output position under nearest_mode."""
    floor, ceil = b.op("Floor", [coords], "floor"), b.op("Ceil", [coords], "ceil")
    if nearest_mode == "simple":
        return b.op("Where", [b.op("GreaterOrEqual", [scale, _double(b, 1.0)], "upsampling"), floor, ceil], "index")
    if nearest_mode in ("floor", "ceil"):
        return floor if nearest_mode == "floor" else ceil
    if nearest_mode not in ("round_prefer_floor", "round_prefer_ceil"):
        raise CompileError(f"nearest_mode {nearest_mode!r} is not supported")
    distance = b.op("Abs", [b.op("Sub", [b.op("Sub", [coords, floor], "frac"), _double(b, 0.5)], "off_half")], "dist")
    is_half = b.op("LessOrEqual", [distance, _double(b, HALF_TOLERANCE)], "is_half")
    tie = floor if nearest_mode == "round_prefer_floor" else ceil
    return b.op("Where", [is_half, tie, b.op("Round", [coords], "round")], "index")


def runtime_matrix(b: GraphBuilder, n_in: str, n_out: str, scale: Optional[float], mode: str,
                   coordinate_mode: str, nearest_mode: str) -> str:
    """A (n_out, n_in) in the working dtype, y = A x along one axis, from the run-time sizes (1-element int64
    vectors) and the given scale (None: n_out / n_in)."""
    nin = _scalar(b, n_in, "n_in_f")
    scale_value = _double(b, scale) if scale is not None else b.op("Div", [_scalar(b, n_out, "n_out_f"), nin], "scale")
    coords = _coordinates(b, n_in, n_out, scale_value, coordinate_mode)
    last = b.op("Sub", [nin, _double(b, 1.0)], "last_in")
    columns = b.op("Range", [b.const(0, dtype=np.int64), b.squeeze(n_in, [0], "n_in_i"), b.const(1, dtype=np.int64)],
                   "in_pos")
    columns = b.unsqueeze(columns, [0], "in_row")
    working = helper.np_dtype_to_tensor_dtype(b.dtype)

    def one_hot(index: str, hint: str) -> str:
        as_int = b.unsqueeze(b.op("Cast", [index], f"{hint}_i", to=TensorProto.INT64), [1], f"{hint}_col")
        return b.op("Equal", [as_int, columns], hint)

    if mode == "nearest":
        index = b.op("Min", [b.op("Max", [_nearest_index(b, coords, nearest_mode, scale_value), _double(b, 0.0)],
                                  "index_low"), last], "index")
        return b.op("Cast", [one_hot(index, "is_source")], "A", to=working)
    if mode != "linear":
        raise CompileError(f"Resize mode {mode!r} is not supported (nearest and linear are)")
    c = b.op("Min", [b.op("Max", [coords, _double(b, 0.0)], "c_low"), last], "c")
    low = b.op("Min", [b.op("Floor", [c], "low"), last], "low")
    high = b.op("Min", [b.op("Add", [low, _double(b, 1.0)], "high"), last], "high")
    frac = b.op("Cast", [b.unsqueeze(b.op("Sub", [c, low], "frac"), [1], "frac_col")], "frac_w", to=working)
    one = b.const(1.0)
    zero = b.const(0.0)
    low_part = b.op("Where", [one_hot(low, "is_low"), b.op("Sub", [one, frac], "one_minus_frac"), zero], "A_low")
    high_part = b.op("Where", [one_hot(high, "is_high"), frac, zero], "A_high")
    return b.op("Add", [low_part, high_part], "A")


def matrix_transpose_along(b: GraphBuilder, R: str, axis: int, rank: int, A: str) -> str:
    """R_x[.., i, ..] = sum_j A[j, i] R[.., j, ..] along one axis, A (out, in) a run-time matrix."""
    if axis == rank - 1:
        return b.op("MatMul", [R, A], "R_axis")
    if axis == rank - 2:
        return b.op("MatMul", [b.op("Transpose", [A], "A_T", perm=[1, 0]), R], "R_axis")
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = b.op("Transpose", [R], "R_T", perm=perm)
    back = b.op("MatMul", [moved, A], "R_axis")
    return b.op("Transpose", [back], "R_axis_T", perm=[int(i) for i in np.argsort(perm)])
