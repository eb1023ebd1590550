"""Resize's per-axis interpolation matrices, computed in NumPy at compile time (nearest and linear, every
coordinate transformation mode but tf_crop_and_resize), as the ONNX spec and onnxruntime define them."""
from __future__ import annotations

import numpy as np

from ..errors import CompileError


def original_coordinates(n_in: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    """x_original for every output position x along one axis (the spec's coordinate_transformation_mode)."""
    x = np.arange(n_out, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        offset = n_in / 2.0 * (1.0 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise CompileError(f"coordinate_transformation_mode {mode!r} is not supported")


def _nearest(coords: np.ndarray, nearest_mode: str, scale: float) -> np.ndarray:
    """Integer source index of each output position under nearest_mode (before clamping)."""
    if nearest_mode == "simple":  # Upsample and Resize-10: floor, ceil when downsampling (onnxruntime)
        return np.floor(coords) if scale >= 1 else np.ceil(coords)
    if nearest_mode == "floor":
        return np.floor(coords)
    if nearest_mode == "ceil":
        return np.ceil(coords)
    half = np.isclose(coords - np.floor(coords), 0.5, rtol=0.0, atol=1e-9)
    if nearest_mode == "round_prefer_floor":
        return np.where(half, np.floor(coords), np.round(coords))
    if nearest_mode == "round_prefer_ceil":
        return np.where(half, np.ceil(coords), np.round(coords))
    raise CompileError(f"nearest_mode {nearest_mode!r} is not supported")


def resize_matrix(n_in: int, n_out: int, scale: float, mode: str, coordinate_mode: str,
                  nearest_mode: str = "round_prefer_floor") -> np.ndarray:
    """A (n_out, n_in): y = A x along one axis. nearest: A[j, clamp(idx_j)] = 1; linear: the source coordinate is
    clamped to [0, n_in - 1] and split between its two neighbours, (1 - f) and f. Every row sums to one."""
    coords = original_coordinates(n_in, n_out, scale, coordinate_mode)
    A = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        idx = np.clip(_nearest(coords, nearest_mode, scale), 0, n_in - 1).astype(np.int64)
        A[rows, idx] = 1.0
        return A
    if mode != "linear":
        raise CompileError(f"Resize mode {mode!r} is not supported (nearest and linear are)")
    c = np.clip(coords, 0.0, n_in - 1)
    low = np.minimum(np.floor(c).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = c - low
    np.add.at(A, (rows, low), 1.0 - frac)
    np.add.at(A, (rows, high), frac)
    return A
