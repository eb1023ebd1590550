"""Explaining a large input in chunks: one onnxruntime run per batch, results gathered only where they are needed."""
from __future__ import annotations

from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import InputError
from .runtime import Explanation


def batch_length(inputs: Mapping) -> int:
    """The number of samples (the first axis, which every input must share)."""
    sizes = {name: np.shape(value)[0] if np.ndim(value) else 0 for name, value in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise InputError(f"inputs have different batch sizes: {sizes}")
    return next(iter(sizes.values()), 0)


def explain_in_batches(explainer, inputs: Mapping, target: Union[None, int, Sequence[int]],
                       batch_size: int, position: Union[None, int, Sequence[int]] = None,
                       **options) -> Iterator[tuple]:
    """(first sample, Explanation) for each consecutive chunk of batch_size samples; position (a sequence output's,
    one or one per sample) is cut like the targets; options go to explain() (check=, region=, channel=, one anchor=
    pair, a target_mask= without batch axis: the same for every chunk)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {batch_size!r}")
    n = batch_length(inputs)
    targets = None if target is None or np.isscalar(target) else np.asarray(target).reshape(-1)
    if targets is not None and targets.size not in (1, n):
        raise InputError(f"got {targets.size} targets for a batch of {n}")
    positions = None if position is None or np.isscalar(position) else np.asarray(position).reshape(-1)
    if positions is not None and positions.size not in (1, n):
        raise InputError(f"got {positions.size} positions for a batch of {n}")
    if position is not None:
        options["position"] = position if positions is None or positions.size == 1 else None
    for start in range(0, max(n, 1), batch_size):
        chunk = {name: value[start:start + batch_size] for name, value in inputs.items()}
        part = target if targets is None or targets.size == 1 else targets[start:start + batch_size].tolist()
        if positions is not None and positions.size > 1:
            options["position"] = positions[start:start + batch_size].tolist()
        yield start, explainer.explain(chunk, part, **options)


class Gatherer:
    """Copies the first `limit` samples of consecutive explanations into one Explanation (arrays allocated once)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.filled = 0
        self._fields: Optional[dict] = None
        self._first: Optional[Explanation] = None

    def add(self, start: int, exp: Explanation) -> None:
        """Take what fits of one chunk that begins at sample start."""
        take = min(exp.total.shape[0], self.limit - start)
        if take <= 0:
            return
        parts = _arrays(exp)
        if self._fields is None:
            self._first = exp
            self._fields = {key: np.empty((self.limit,) + value.shape[1:], value.dtype) for key, value in parts.items()}
        for key, value in parts.items():
            self._fields[key][start:start + take] = value[:take]
        self.filled = max(self.filled, start + take)

    def result(self) -> Explanation:
        """The gathered samples as one Explanation."""
        f = {k: v[:self.filled] for k, v in self._fields.items()}
        first = self._first
        return Explanation(output=f["output"], target=f["target"], total=f["total"], stabilizer=f["stabilizer"],
                           relevance={k[2:]: v for k, v in f.items() if k.startswith("r:")},
                           bias={k[2:]: v for k, v in f.items() if k.startswith("b:")},
                           nodes={k[2:]: v for k, v in f.items() if k.startswith("n:")},
                           node_stabilizer={k[2:]: v for k, v in f.items() if k.startswith("s:")},
                           rules=first.rules, graph=first.graph,
                           edges={}, gradient={k[2:]: v for k, v in f.items() if k.startswith("g:")},
                           target_mask=f.get("target_mask"))


def _arrays(exp: Explanation) -> dict:
    """Every per-sample array of an explanation under one flat key."""
    arrays = {"output": exp.output, "target": exp.target, "total": exp.total, "stabilizer": exp.stabilizer}
    arrays.update({f"r:{k}": v for k, v in exp.relevance.items()})
    arrays.update({f"b:{k}": v for k, v in exp.bias.items()})
    arrays.update({f"n:{k}": v for k, v in exp.nodes.items()})
    arrays.update({f"s:{k}": v for k, v in exp.node_stabilizer.items()})
    arrays.update({f"g:{k}": v for k, v in exp.gradient.items()})
    if exp.target_mask is not None:
        arrays["target_mask"] = exp.target_mask
    return arrays
