"""The records that travel through a data-set run: what a reader yields, what is explained, what failed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

NO_LABEL = -1   # labels are class indices >= 0; -1 marks a sample without one (null in the Parquet rows)


@dataclass(frozen=True)
class InputSpec:
    """One model input as a data set must fill it: name, NumPy dtype, per-sample shape (None: dynamic axis)."""

    name: str
    dtype: np.dtype
    shape: tuple

    @property
    def static(self) -> bool:
        """True when every per-sample axis has a fixed size."""
        return all(isinstance(d, int) for d in self.shape)

    @property
    def size(self) -> Optional[int]:
        """Values per sample when static, else None."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.static else None


@dataclass(frozen=True)
class Failure:
    """A sample that could not be explained, and why (one line)."""

    index: int
    sample_id: str
    reason: str

    def record(self, shard: int) -> dict:
        """The JSON line written to _failed.jsonl."""
        return {"index": self.index, "sample_id": self.sample_id, "shard": shard, "reason": self.reason}


# one input's values in a raw batch: an array with the batch on axis 0, or one item per sample where an item is an
# array or the reason (str) why that sample could not be read
Values = Union[np.ndarray, Sequence[Union[np.ndarray, str]]]


@dataclass
class RawBatch:
    """Samples as a reader yields them: global positions, ids, labels and each input's values."""

    index: np.ndarray                 # (B,) int64 positions in the data set (reading order)
    ids: list                         # B sample ids (relative path, 'file.parquet#row', or the position)
    labels: np.ndarray                # (B,) int64, NO_LABEL where unknown
    values: dict                      # input name -> Values


@dataclass
class PreparedBatch:
    """The samples of one batch that can be fed to the model, stacked, and the ones that cannot."""

    shard: int
    number: int                       # batch number inside the shard
    index: np.ndarray                 # (b,) of the good samples
    ids: list
    labels: np.ndarray
    arrays: dict                      # input name -> (b, ...) array
    failures: list = field(default_factory=list)

    @property
    def size(self) -> int:
        """Samples read for this batch, good and failed."""
        return len(self.index) + len(self.failures)
