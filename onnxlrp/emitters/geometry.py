"""Sliding-window geometry shared by convolutions and pools: auto_pad resolved into explicit pads."""
from __future__ import annotations

from typing import Sequence


def explicit_pads(auto_pad: str, pads: Sequence[int], spatial: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int]) -> list:
    """The explicit [begins..., ends...] pads of a window op: SAME_* pads total = max(0, (ceil(in/s) - 1)*s +
    (k-1)*d + 1 - in), the odd one at the end (SAME_UPPER) or the start (SAME_LOWER); VALID none; NOTSET as given."""
    nd = len(spatial)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return list(pads)
    result = [0] * (2 * nd)
    for i in range(nd):
        out = -(-spatial[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
        small, big = total // 2, total - total // 2
        result[i], result[i + nd] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    return result
