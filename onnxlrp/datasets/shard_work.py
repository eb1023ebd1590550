"""Explaining one prepared batch: the whole batch in one run, or sample by sample when the batch is refused."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from ..errors import OnnxLrpError
from .batch import NO_LABEL, Failure, PreparedBatch
from .rows import RowLayout, batch_table


def batch_targets(batch: PreparedBatch, target: Union[str, int]):
    """Targets for the explainer: None (argmax), one int, or the labels; samples without a label fail."""
    if target == "argmax":
        return None, []
    if target == "label":
        missing = np.flatnonzero(batch.labels == NO_LABEL)
        return batch.labels, [(int(i), "no label (--target label)") for i in missing]
    return int(target), []


def _subset(batch: PreparedBatch, keep: np.ndarray) -> PreparedBatch:
    """The samples of a batch where keep is True."""
    return PreparedBatch(shard=batch.shard, number=batch.number, index=batch.index[keep],
                         ids=[i for i, k in zip(batch.ids, keep) if k], labels=batch.labels[keep],
                         arrays={k: v[keep] for k, v in batch.arrays.items()}, failures=batch.failures)


def explain_batch(explainer, layout: RowLayout, batch: PreparedBatch, target: Union[str, int]) -> tuple:
    """(Arrow table of the explained samples or None, failure records) for one batch."""
    failures = [f.record(batch.shard) for f in batch.failures]
    targets, unlabeled = batch_targets(batch, target)
    if unlabeled:
        keep = np.ones(len(batch.index), dtype=bool)
        for i, reason in unlabeled:
            keep[i] = False
            failures.append(Failure(int(batch.index[i]), batch.ids[i], reason).record(batch.shard))
        batch = _subset(batch, keep)
        targets = batch.labels
    if len(batch.index) == 0:
        return None, _sorted(failures)
    try:
        return batch_table(layout, batch, explainer.explain(batch.arrays, targets)), _sorted(failures)
    except OnnxLrpError:
        pass
    tables = []   # one sample at a time: only the samples the model refuses fail
    for i in range(len(batch.index)):
        single = {k: v[i:i + 1] for k, v in batch.arrays.items()}
        one = _subset(batch, np.arange(len(batch.index)) == i)
        try:
            tables.append(batch_table(layout, one, explainer.explain(single, None if targets is None else (
                targets if np.isscalar(targets) else targets[i:i + 1]))))
        except OnnxLrpError as exc:
            failures.append(Failure(int(batch.index[i]), batch.ids[i], str(exc)).record(batch.shard))
    return _concat(tables), _sorted(failures)


def _concat(tables: list) -> Optional[object]:
    """One table from several (None when there are none)."""
    if not tables:
        return None
    import pyarrow as pa
    return pa.concat_tables(tables)


def _sorted(records: list) -> list:
    """Failure records in data-set order."""
    return sorted(records, key=lambda r: r["index"])
