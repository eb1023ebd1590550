"""The transpose of a strided convolution with a large kernel as a stride-1 convolution (sub-pixel) and an interleave.

ConvTranspose(s, W) with stride t writes output position o = t * i - pad + k; splitting o = t * p + r (phase r),
out[t p + r] = sum_d W[t d + r + pad] s[p - d]: for each of the t^2 phases (per 2-D axis pair) a stride-1
correlation of s with the taps k = t d + r + pad that fall inside the kernel. One Conv computes all phases as
output channels with a kernel of ceil(k / t) taps per axis, and a ConvTranspose with one-hot t x t kernels and
stride t (windows that do not overlap) interleaves them. The same products and sums as the ConvTranspose (float32
rounding aside).

onnxruntime's ConvTranspose scatters its columns back (col2im) at about three times a Conv's cost; for a ResNet's
7x7 stride-2 stem at 64x64 the sub-pixel form costs 0.54x (ResNet-18 at 1/8 width: 277 us -> 95 + 54 us).
For 3x3 and 1x1 kernels it does not pay (the README's Performance section, round three): only kernels of at least
2 t + 1 taps on both axes take it. The phase kernel is gathered from W with constant-only ops (Reshape, Gather, Mul
by a 0/1 mask, Transpose, Flatten, Reshape) that onnxruntime folds when the session starts, so W is read from the
model and the file does not grow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..builder import GraphBuilder


@dataclass(frozen=True)
class SubpixelPlan:
    """Geometry of one sub-pixel transpose."""

    stride: int
    kernel: tuple        # the phase kernel (Kh, Kw)
    pads: list           # the stride-1 Conv's pads (begin h, begin w, end h, end w)
    index: np.ndarray    # (t^2, Kh * Kw): flat index into W's kernel of each phase tap (0 where none)
    mask: np.ndarray     # (1, 1, t^2, Kh * Kw): 1 where the tap exists, 0 elsewhere


def _axis_taps(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> Optional[tuple]:
    """(first d, last d) of the taps over every phase of one axis, None where the sub-pixel form does not apply
    (the transposed grid t * out is not exactly the input's size, or a pad would be negative)."""
    out = (size + pad_begin + pad_end - kernel) // stride + 1
    if out <= 0 or stride * out != size:
        return None
    ds = [d for r in range(stride) for d in range(-kernel, kernel + 1) if 0 <= stride * d + r + pad_begin < kernel]
    lo, hi = min(ds), max(ds)
    return (lo, hi) if lo <= 0 <= hi else None


def subpixel_plan(op) -> Optional[SubpixelPlan]:
    """The sub-pixel geometry of a ConvOp's transpose, None where it does not apply: 2-D, one group, no dilation,
    one stride t >= 2 on both axes, a kernel of at least 2 t + 1 taps per axis, a static input size t times the
    output's."""
    attrs = op.attrs
    kernel = list(op.weight.shape[2:])
    if len(kernel) != 2 or len(op.x_spatial) != 2 or attrs.get("group", 1) != 1 or "auto_pad" in attrs:
        return None
    strides, pads = list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0] * 4))
    if any(d != 1 for d in attrs.get("dilations", [1, 1])) or len(set(strides)) != 1:
        return None
    t = int(strides[0])
    if t < 2 or any(k < 2 * t + 1 for k in kernel):
        return None
    taps = [_axis_taps(op.x_spatial[a], kernel[a], t, pads[a], pads[a + 2]) for a in range(2)]
    if any(tap is None for tap in taps):
        return None
    phase_kernel = tuple(hi - lo + 1 for lo, hi in taps)
    index = np.zeros((t * t, phase_kernel[0] * phase_kernel[1]), dtype=np.int64)
    mask = np.zeros((1, 1) + index.shape)
    for ry in range(t):
        for rx in range(t):
            for jy in range(phase_kernel[0]):
                for jx in range(phase_kernel[1]):
                    ky = t * (taps[0][1] - jy) + ry + pads[0]
                    kx = t * (taps[1][1] - jx) + rx + pads[1]
                    if 0 <= ky < kernel[0] and 0 <= kx < kernel[1]:
                        index[ry * t + rx, jy * phase_kernel[1] + jx] = ky * kernel[1] + kx
                        mask[0, 0, ry * t + rx, jy * phase_kernel[1] + jx] = 1.0
    conv_pads = [taps[0][1], taps[1][1], -taps[0][0], -taps[1][0]]
    return SubpixelPlan(t, phase_kernel, conv_pads, index, mask)


def subpixel_transpose(b: GraphBuilder, s: str, weight: str, plan: SubpixelPlan, channels: int) -> str:
    """ConvTranspose(s, weight) (weight (C_s, channels, kh, kw)) as Conv(s, W_phase), the phases of output channel c
    in channels c t^2 .. c t^2 + t^2 - 1, interleaved by a ConvTranspose with one-hot t x t kernels and stride t
    (its windows do not overlap: each output takes one value, times 1; onnxruntime runs it in half DepthToSpace's
    time; a grouped one, faster still, trips onnx's reference evaluator, which the float64 checks run on)."""
    kh, kw, t = plan.kernel[0], plan.kernel[1], plan.stride
    flat = b.op("Reshape", [weight, b.ints([0, 0, -1])], "w_taps")                      # (C_s, C_out, k k)
    gathered = b.op("Gather", [flat, b.const(plan.index, dtype=np.int64)], "w_phase_taps", axis=2)
    kept = b.op("Mul", [gathered, b.const(plan.mask, hint="tap_mask")], "w_phase_kept")  # (C_s, C_out, t^2, K K)
    ordered = b.op("Transpose", [kept], "w_phase_order", perm=[1, 2, 0, 3])            # (C_out, t^2, C_s, K K)
    rows = b.op("Flatten", [ordered], "w_phase_rows", axis=2)                           # (C_out t^2, C_s K K)
    w_phase = b.op("Reshape", [rows, b.ints([0, -1, kh, kw])], "w_phase")
    phases = b.op("Conv", [s, w_phase], "bwd_phases", kernel_shape=[kh, kw], pads=list(plan.pads))
    one_hot = np.zeros((channels * t * t, channels, t, t))
    for c in range(channels):
        for p in range(t * t):
            one_hot[c * t * t + p, c, p // t, p % t] = 1.0
    return b.op("ConvTranspose", [phases, b.const(one_hot, hint="phase_kernel")], "bwd", kernel_shape=[t, t],
                strides=[t, t])
