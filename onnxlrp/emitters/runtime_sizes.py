"""Sizes that only the run time knows: int64 shape arithmetic in the graph that sizes a transposed op's result to
the tensor it maps relevance back to (a shape-generic compiled graph needs no static spatial size)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..builder import GraphBuilder
from ..specialise import StaticSizeError

# Pad and Slice take their amounts as inputs from opset 11 and 10
MIN_OPSET = 11


def require_opset(b: GraphBuilder, what: str) -> None:
    """Run-time sizes need Pad/Slice with input amounts (opset >= 11); below, the model must be specialised."""
    if b.opset < MIN_OPSET:
        raise StaticSizeError(f"{what} is not known at compile time, and opset {b.opset} < {MIN_OPSET} has no Pad "
                              f"with run-time amounts")


def dims(b: GraphBuilder, x: str, start: int, stop: int, hint: str = "dims") -> str:
    """Shape(x)[start:stop] as an int64 vector."""
    return b.op("Slice", [b.op("Shape", [x], f"{hint}_shape"), b.ints([start]), b.ints([stop])], hint)


def pad_tail_to(b: GraphBuilder, value: str, like: str, first: int, rank: int) -> str:
    """value zero-padded (or, where it is longer, cut: a negative pad) at the end of axes first..rank-1 to like's
    sizes there."""
    gap = b.op("Sub", [dims(b, like, first, rank, "like_dims"), dims(b, value, first, rank, "value_dims")], "gap")
    pads = b.op("Concat", [b.ints([0] * (rank + first)), gap], "pads", axis=0)
    return b.op("Pad", [value, pads], "fit")


def crop_centre_to(b: GraphBuilder, full: str, like: str, first: int, rank: int, upper: bool) -> str:
    """The window of `full` that a SAME-padded window op reads for `like`: full has length F >= like's L + total
    along each axis, the window starts at total // 2 (SAME_UPPER: the odd pad at the end) or total - total // 2
    (SAME_LOWER), total = max(F - L, 0); where F < L, zeros are padded at the end."""
    size = dims(b, like, first, rank, "like_dims")
    total = int_max(b, b.op("Sub", [dims(b, full, first, rank, "full_dims"), size], "excess"),
                    b.ints([0] * (rank - first)), "total_pad")
    half = b.op("Div", [total, b.ints([2] * (rank - first))], "half_pad")
    head = half if upper else b.op("Sub", [total, half], "head_pad")
    window = b.op("Slice", [full, head, b.op("Add", [head, size], "window_end"), b.ints(range(first, rank))],
                  "window")
    return pad_tail_to(b, window, like, first, rank)


def int_max(b: GraphBuilder, a: str, c: str, hint: str = "max") -> str:
    """Elementwise max of two int64 tensors (Max takes integers only from opset 12)."""
    return b.op("Where", [b.op("Less", [a, c], f"{hint}_less"), c, a], hint)


def int_min(b: GraphBuilder, a: str, c: str, hint: str = "min") -> str:
    """Elementwise min of two int64 tensors (Min takes integers only from opset 12)."""
    return b.op("Where", [b.op("Less", [a, c], f"{hint}_less"), a, c], hint)


def cut_tail(b: GraphBuilder, value: str, cuts: Sequence[int], first: int) -> str:
    """value without its last cuts[i] positions along axis first + i (a static count, any run-time size)."""
    if not any(cuts):
        return value
    ends = [-c if c else np.iinfo(np.int64).max for c in cuts]
    return b.op("Slice", [value, b.ints([0] * len(cuts)), b.ints(ends), b.ints(range(first, first + len(cuts)))],
                "cut")


def known(values: Optional[Sequence]) -> bool:
    """True when a shape (or part of one) is fully static."""
    return values is not None and all(isinstance(d, int) and d > 0 for d in values)
