"""Reading Parquet (a file or a folder of files) as a data set: arrays in list columns, or encoded images."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InputError
from ..inputs import ImageOptions
from .batch import NO_LABEL, InputSpec, RawBatch
from .images import decode_image


def parquet_files(path: Path) -> list:
    """The Parquet files of a file or folder (recursively, sorted; hidden and '_' entries skipped as Spark does)."""
    if path.is_file():
        return [path]
    files = [p for p in path.rglob("*.parquet")
             if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)]
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def _is_list(kind) -> bool:
    import pyarrow as pa
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _is_binary(kind) -> bool:
    import pyarrow as pa
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)


def _image_struct(kind) -> bool:
    """A struct with a binary 'bytes' field (the Hugging Face datasets image layout)."""
    import pyarrow as pa
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 and _is_binary(kind.field("bytes").type)


def column_kind(kind) -> Optional[str]:
    """'array' for (nested) lists of numbers, 'image' for encoded image bytes, None for anything else."""
    import pyarrow as pa
    if _is_binary(kind) or _image_struct(kind):
        return "image"
    while _is_list(kind):
        kind = kind.value_type
        if not _is_list(kind):
            return "array" if pa.types.is_integer(kind) or pa.types.is_floating(kind) else None
    return None


def list_rows(column) -> tuple:
    """A (nested) list column as (leaf values, row of each leaf): any nesting, nulls as NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = np.arange(len(values))
    while _is_list(values.type):
        parents = pc.list_parent_indices(values).to_numpy()
        rows = rows[parents]
        values = pc.list_flatten(values)
    return values.to_numpy(zero_copy_only=False), rows


class ParquetSource:
    """Rows of one or more Parquet files: the sample in a list or image-bytes column, labels in an integer column."""

    kind = "parquet"

    def __init__(self, path: Union[str, Path], specs: Sequence[InputSpec], column: Union[None, str, Mapping] = None,
                 label_column: Optional[str] = None, options: Optional[ImageOptions] = None) -> None:
        import pyarrow.parquet as pq
        self.path = Path(path)
        self.specs = list(specs)
        self.files = parquet_files(self.path)
        if not self.files:
            raise InputError(f"no .parquet files under {self.path}")
        try:
            metas = [pq.ParquetFile(f).metadata for f in self.files]
            schema = pq.ParquetFile(self.files[0]).schema_arrow
        except Exception as exc:
            raise InputError(f"cannot read Parquet file: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        self.rows = [m.num_rows for m in metas]
        self.offsets = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)
        self.columns = self._choose(schema, column, label_column)
        self.label_column = label_column
        self.kinds = {name: column_kind(schema.field(col).type) for name, col in self.columns.items()}
        self.options = options or ImageOptions()
        self.has_labels = label_column is not None
        self.classes = None

    def _choose(self, schema, column, label_column) -> dict:
        """Input name -> column, checked against the file's schema."""
        names = [s.name for s in self.specs]
        usable = [f.name for f in schema if column_kind(f.type) and f.name != label_column]
        if isinstance(column, Mapping):
            chosen = dict(column)
        elif column:
            if len(names) != 1:
                raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}): give --column NAME=COLUMN "
                                 f"for each")
            chosen = {names[0]: column}
        elif set(names) <= set(usable):
            chosen = {n: n for n in names}
        elif len(names) == 1 and len(usable) == 1:
            chosen = {names[0]: usable[0]}
        else:
            raise InputError(f"{self.files[0]}: choose the sample column with --column (columns holding arrays or "
                             f"image bytes: {', '.join(usable) or 'none'})")
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise InputError(f"the model has no input {unknown[0]!r} (inputs: {', '.join(names)})")
        for name, col in chosen.items():
            if schema.get_field_index(col) < 0:
                raise InputError(f"{self.files[0]} has no column {col!r} (columns: {', '.join(schema.names)})")
            if column_kind(schema.field(col).type) is None:
                raise InputError(f"column {col!r} of {self.files[0]} holds {schema.field(col).type}: expected lists of "
                                 f"numbers or encoded image bytes")
            spec = next(s for s in self.specs if s.name == name)
            if column_kind(schema.field(col).type) == "array" and not spec.static:
                raise InputError(f"column {col!r} holds flat arrays but the model's input {name!r} has dynamic axes "
                                 f"{spec.shape}: the per-sample shape is unknown")
        if label_column is not None:
            if schema.get_field_index(label_column) < 0:
                raise InputError(f"{self.files[0]} has no column {label_column!r} (columns: {', '.join(schema.names)})")
            import pyarrow as pa
            if not pa.types.is_integer(schema.field(label_column).type):
                raise InputError(f"label column {label_column!r} holds {schema.field(label_column).type}, "
                                 f"expected integers (class indices)")
        return chosen

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> dict:
        """The data entry of the manifest."""
        return {"kind": self.kind, "path": str(self.path), "samples": len(self), "files": len(self.files),
                "columns": dict(self.columns), "labels": self.label_column}

    def _pieces(self, start: int, stop: int) -> Iterator[tuple]:
        """(first position, table slice) over [start, stop), reading one row group at a time."""
        import pyarrow.parquet as pq
        wanted = list(dict.fromkeys([*self.columns.values(), *([self.label_column] if self.label_column else [])]))
        for number, path in enumerate(self.files):
            base, end = int(self.offsets[number]), int(self.offsets[number + 1])
            if end <= start or base >= stop:
                continue
            handle = pq.ParquetFile(path)
            group_start = base
            for group in range(handle.metadata.num_row_groups):
                size = handle.metadata.row_group(group).num_rows
                lo, hi = max(start, group_start), min(stop, group_start + size)
                if lo < hi:
                    table = handle.read_row_group(group, columns=wanted)
                    yield lo, table.slice(lo - group_start, hi - lo), path
                group_start += size

    def batches(self, start: int, stop: int, size: int) -> Iterator[RawBatch]:
        """Batches of exactly size samples (the last one shorter) over [start, stop), across row groups and files."""
        import pyarrow as pa
        pending, first = [], start
        for lo, table, path in self._pieces(start, stop):
            offset = 0
            while offset < table.num_rows:
                take = min(size - sum(t.num_rows for t, _, _ in pending), table.num_rows - offset)
                pending.append((table.slice(offset, take), lo + offset, path))
                offset += take
                if sum(t.num_rows for t, _, _ in pending) == size:
                    yield self._convert(pending)
                    pending = []
        if pending:
            yield self._convert(pending)

    def _convert(self, pieces: list) -> RawBatch:
        """Table pieces into a raw batch: ids 'file#row', labels, per-sample arrays or decoded images."""
        ids, index = [], []
        for table, lo, path in pieces:
            name = path.relative_to(self.path).as_posix() if path != self.path else path.name
            row0 = lo - int(self.offsets[self.files.index(path)])
            ids += [f"{name}#{row0 + i}" for i in range(table.num_rows)]
            index.append(np.arange(lo, lo + table.num_rows, dtype=np.int64))
        import pyarrow as pa
        table = pa.concat_tables([t for t, _, _ in pieces])
        if self.label_column:
            raw = table.column(self.label_column).to_numpy(zero_copy_only=False)
            if raw.dtype.kind == "f":   # an integer column with nulls arrives as floats with NaN
                raw = np.where(np.isnan(raw), NO_LABEL, raw)
            labels = raw.astype(np.int64)
        else:
            labels = np.full(table.num_rows, NO_LABEL, dtype=np.int64)
        values = {spec.name: self._values(table.column(self.columns[spec.name]), spec) for spec in self.specs}
        return RawBatch(index=np.concatenate(index), ids=ids, labels=labels, values=values)

    def _values(self, column, spec: InputSpec) -> list:
        """One input's samples: arrays reshaped to the model's per-sample shape, or why not."""
        if self.kinds[spec.name] == "image":
            import pyarrow as pa
            if pa.types.is_struct(column.type):
                column = column.combine_chunks().field("bytes")
            return [decode_image(b, self.options) if b is not None else "no image (null)"
                    for b in column.to_pylist()]
        leaves, rows = list_rows(column)
        counts = np.bincount(rows, minlength=len(column))
        if np.all(counts == spec.size):   # the usual case: every row complete, one reshape
            return leaves.reshape((len(column), *spec.shape))
        ends = np.cumsum(counts)
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        out = []
        for i, count in enumerate(counts):
            if nulls[i]:
                out.append("no value (null)")
            elif count != spec.size:
                shape = "x".join(str(d) for d in spec.shape)
                out.append(f"wrong shape: {count} values, the model's input {spec.name!r} needs {spec.size} ({shape})")
            else:
                out.append(leaves[ends[i] - count:ends[i]].reshape(spec.shape))
        return out
