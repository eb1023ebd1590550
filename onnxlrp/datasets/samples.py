"""From raw batches to what the model is fed: per-sample checks (shape, finite values), stacking, failures."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .batch import Failure, InputSpec, PreparedBatch, RawBatch


def _shape_text(shape: Sequence) -> str:
    """(1, 8, 8) / (3, ?, ?)."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _sample_problem(value, spec: InputSpec, batch_shape) -> str:
    """Why one sample cannot go into this batch ('' when it can)."""
    if isinstance(value, str):
        return value
    shape = tuple(value.shape)
    fits = len(shape) == len(spec.shape) and all(w is None or g == w for g, w in zip(shape, spec.shape))
    if not fits:
        return f"wrong shape: {shape}, the model's input {spec.name!r} needs {_shape_text(spec.shape)}"
    if batch_shape is not None and shape != batch_shape:
        return f"wrong shape: {shape}, the other samples of its batch have {batch_shape} (set a fixed size)"
    return ""


def _nonfinite(array: np.ndarray) -> np.ndarray:
    """Per sample: True where a float sample holds NaN or Inf."""
    if not np.issubdtype(array.dtype, np.floating):
        return np.zeros(len(array), dtype=bool)
    return ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)


def prepare(raw: RawBatch, specs: Sequence[InputSpec], shard: int, number: int) -> PreparedBatch:
    """Check every sample of every input; the ones that pass are stacked, the others become failures."""
    n = len(raw.index)
    reasons = [""] * n
    for spec in specs:   # readable, and shaped as the model needs
        values = raw.values[spec.name]
        if isinstance(values, np.ndarray):
            continue   # a whole array: its shape was checked when the file was opened
        batch_shape = None
        for i, value in enumerate(values):
            problem = "" if reasons[i] else _sample_problem(value, spec, batch_shape)
            if problem:
                reasons[i] = problem if len(specs) == 1 else f"input {spec.name!r}: {problem}"
            elif not reasons[i] and batch_shape is None and not spec.static:
                batch_shape = tuple(value.shape)
    readable = np.flatnonzero([not r for r in reasons])
    stacked = {}
    for spec in specs:   # stack, then look for NaN and Inf
        values = raw.values[spec.name]
        if isinstance(values, np.ndarray):
            rows, array = np.arange(n), values
        else:
            rows = readable
            array = (np.stack([values[i] for i in rows]) if rows.size
                     else np.zeros((0,) + tuple(d or 0 for d in spec.shape), dtype=spec.dtype))
        for i in rows[_nonfinite(array)]:
            if not reasons[i]:
                reasons[i] = f"input {spec.name!r} holds NaN or Inf" if len(specs) > 1 else "holds NaN or Inf"
        stacked[spec.name] = (rows, array)
    keep = np.array([not r for r in reasons], dtype=bool)
    arrays = {}
    for name, (rows, array) in stacked.items():
        chosen = keep[rows]
        arrays[name] = array if chosen.all() else array[chosen]
    failures = [Failure(int(raw.index[i]), str(raw.ids[i]), reasons[i]) for i in range(n) if reasons[i]]
    return PreparedBatch(shard=shard, number=number, index=raw.index[keep],
                         ids=[raw.ids[i] for i in np.flatnonzero(keep)], labels=raw.labels[keep],
                         arrays=arrays, failures=failures)
