"""Targets on dense outputs: the explained quantity sum(M * output) per sample for a mask M shaped like the explained
output (a map (N, C, H, W), a detection tensor (N, C, A) or (N, A, C), ...), and the convenience forms built on it.

In the compiled graph the optional float input `lrp_target_mask` holds M (any shape that broadcasts to the output;
its default, one NaN, means "no mask": lrp_target decides). The seed is M * output (init "logit") or M (init
"one"), so the total is sum(M * output) and the identity total = inputs + biases + stabilizer keeps holding.
In Python, `region=`, `channel=` and `anchor=` build M from the output's shape.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from onnx import helper, numpy_helper

from .builder import GraphBuilder
from .errors import InputError, OnnxLrpError

MASK_INPUT = "lrp_target_mask"


# ---------------------------------------------------------------------------------------------------------- graph
def masked_seed(b: GraphBuilder, explained: str, value: str, seed_flat: str, rank: Optional[int]) -> str:
    """seed_flat (N, K) replaced by M * value, flattened the same way, where the graph input lrp_target_mask holds
    a mask M (Expand broadcasts it to the explained output's shape); its default, NaN, keeps seed_flat."""
    if MASK_INPUT in b._taken:
        raise OnnxLrpError(f"the model already has a value named {MASK_INPUT!r}; rename it before compiling")
    b._taken.add(MASK_INPUT)
    default = np.full((1,) * max(rank or 1, 1), np.nan, dtype=b.dtype)
    b.initializers.append(numpy_helper.from_array(default, MASK_INPUT))
    full = b.op("Expand", [MASK_INPUT, b.op("Shape", [explained], "explained_shape")], "mask_full")
    mask_flat = b.op("Reshape", [full, b.ints([0, -1])], "mask_flat")
    first = b.op("Gather", [b.op("Reshape", [MASK_INPUT, b.ints([-1])], "mask_values"), b.const(0, dtype=np.int64)],
                 "mask_first")
    given = b.op("Not", [b.op("IsNaN", [first], "mask_is_default")], "mask_given")
    masked = b.op("Mul", [mask_flat, value], "seed_masked")
    return b.op("Where", [given, masked, seed_flat], "seed_flat_or_mask")


def mask_input_info(elem_type: int, rank: Optional[int]):
    """The value info of the lrp_target_mask graph input: every dim free (a mask may broadcast)."""
    return helper.make_tensor_value_info(MASK_INPUT, elem_type, [None] * max(rank or 1, 1))


# --------------------------------------------------------------------------------------------------------- Python
def check_mask(mask, output_shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A user's mask as an array that broadcasts to the explained output's shape (N, ...): the output's shape, or it
    without the batch axis (the same mask for every sample), or anything numpy broadcasts to it."""
    try:
        array = np.asarray(mask)
    except (ValueError, TypeError):
        raise InputError("target_mask cannot be read as an array") from None
    if array.dtype == bool:
        array = array.astype(dtype)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"target_mask must hold numbers, got dtype {array.dtype}")
    array = array.astype(dtype)
    if not np.all(np.isfinite(array)):
        raise InputError("target_mask contains NaN or Inf")
    if array.ndim == len(output_shape) - 1:
        array = array[None]
    try:
        if np.broadcast_shapes(array.shape, output_shape) != tuple(output_shape):
            raise ValueError
    except ValueError:
        raise InputError(f"target_mask has shape {array.shape}, which does not fit the explained output's shape "
                         f"{tuple(output_shape)} (give that shape, or it without the batch axis)") from None
    return np.ascontiguousarray(array)


def region_mask(output_shape: tuple, region: Optional[Sequence[int]], channel: Optional[int],
                dtype: np.dtype) -> np.ndarray:
    """The mask of a rectangle (y0, y1, x0, x1) of the last two axes, and/or one channel (axis 1), of a map
    (N, C, H, W) or (N, H, W): ones inside, zeros elsewhere; (1, ...) shaped, the same for every sample."""
    rank = len(output_shape)
    mask = np.ones((1,) + tuple(output_shape[1:]), dtype=dtype)
    if channel is not None:
        if rank < 2:
            raise InputError(f"channel= needs an output with a channel axis; it has shape {tuple(output_shape)}")
        count = output_shape[1]
        k = _index(channel, "channel")
        if not 0 <= k < count:
            raise InputError(f"channel {k} is out of range: the output has {count} channels (axis 1)")
        keep = np.zeros(count, dtype=bool)
        keep[k] = True
        mask[:, ~keep] = 0
    if region is not None:
        if rank < 3:
            raise InputError(f"region= needs a map output (N, H, W) or (N, C, H, W); it has shape "
                             f"{tuple(output_shape)}")
        bounds = _ints(region, "region", 4)
        y0, y1, x0, x1 = bounds
        height, width = output_shape[-2], output_shape[-1]
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise InputError(f"region (y0, y1, x0, x1) = {tuple(bounds)} does not lie in the {height}x{width} map "
                             f"(0 <= y0 < y1 <= {height}, 0 <= x0 < x1 <= {width})")
        inside = np.zeros((height, width), dtype=bool)
        inside[y0:y1, x0:x1] = True
        mask[..., ~inside] = 0
    return mask


def anchor_axis(output_shape: tuple) -> int:
    """The anchor axis of a detection tensor (N, C, A) or (N, A, C): the longer of axes 1 and 2."""
    if len(output_shape) != 3:
        raise InputError(f"anchor= needs a detection output (N, C, A) or (N, A, C); it has shape "
                         f"{tuple(output_shape)}")
    if output_shape[1] == output_shape[2]:
        raise InputError(f"anchor= cannot tell anchors from classes in an output of shape {tuple(output_shape)} "
                         f"(axes 1 and 2 are equally long): pass target_mask= instead")
    return 1 if output_shape[1] > output_shape[2] else 2


def anchor_mask(output_shape: tuple, anchor, dtype: np.dtype) -> np.ndarray:
    """One (anchor, class) pair for every sample, or one pair per sample: the mask with a one at that anchor's
    entry `class` (an index along the other axis, as the tensor lays it out: YOLOv8's class k is entry 4 + k)."""
    axis = anchor_axis(output_shape)
    n = output_shape[0]
    pairs = np.asarray(anchor, dtype=object)
    if pairs.ndim == 1:
        pairs = np.asarray([anchor] * n, dtype=object)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise InputError("anchor must be an (anchor, class) pair, or one pair per sample")
    if pairs.shape[0] != n:
        raise InputError(f"got {pairs.shape[0]} (anchor, class) pairs for a batch of {n}")
    anchors, classes = output_shape[axis], output_shape[3 - axis]
    mask = np.zeros(output_shape, dtype=dtype)
    for i, (a, c) in enumerate(pairs):
        a, c = _index(a, "anchor"), _index(c, "class")
        if not 0 <= a < anchors:
            raise InputError(f"anchor {a} is out of range: the output has {anchors} anchors (axis {axis})")
        if not 0 <= c < classes:
            raise InputError(f"class {c} is out of range: the output has {classes} entries per anchor "
                             f"(axis {3 - axis})")
        if axis == 2:
            mask[i, c, a] = 1
        else:
            mask[i, a, c] = 1
    return mask


def _index(value, what: str) -> int:
    """An int (numpy ints too), or an InputError naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an int, got {value!r}")
    return int(value)


def _ints(values, what: str, count: int) -> list:
    """`count` ints, or an InputError naming the argument."""
    try:
        items = list(values)
    except TypeError:
        raise InputError(f"{what} must be {count} ints, got {values!r}") from None
    if len(items) != count:
        raise InputError(f"{what} must be {count} ints, got {len(items)}")
    return [_index(v, what) for v in items]


def build_mask(output_shape: tuple, dtype: np.dtype, target_mask=None, region=None, channel=None,
               anchor=None) -> Optional[np.ndarray]:
    """The mask the arguments of explain() ask for (None when none of them is given); forms that cannot be
    combined raise InputError."""
    forms = [name for name, value in (("target_mask", target_mask), ("region", region), ("channel", channel),
                                      ("anchor", anchor)) if value is not None]
    if not forms:
        return None
    if target_mask is not None and len(forms) > 1:
        raise InputError(f"target_mask= cannot be combined with {', '.join(f + '=' for f in forms[1:])}")
    if anchor is not None and len(forms) > 1:
        raise InputError("anchor= cannot be combined with region= or channel=")
    if target_mask is not None:
        return check_mask(target_mask, output_shape, dtype)
    if anchor is not None:
        return anchor_mask(output_shape, anchor, dtype)
    return region_mask(output_shape, region, channel, dtype)


MaskArgument = Union[None, np.ndarray, Sequence]
