"""Parquet shards written whole or not at all: rows buffered into row groups, a hidden file renamed at the end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ROW_GROUP_BYTES = 32 * 2 ** 20   # buffer this much before writing a row group: bounded memory, readable files


def shard_name(shard: int) -> str:
    """part-00007.parquet."""
    return f"part-{shard:05d}.parquet"


class ShardWriter:
    """Writes one shard: batches in order into '.part-K.parquet.tmp', renamed to 'part-K.parquet' on commit."""

    def __init__(self, folder: Path, shard: int, schema, compression: str = "snappy") -> None:
        self.folder = Path(folder)
        self.shard = shard
        self.schema = schema
        self.compression = compression
        self.path = self.folder / shard_name(shard)
        self.tmp = self.folder / f".{shard_name(shard)}.tmp"
        self._writer = None
        self._buffer: list = []
        self._buffered = 0
        self.rows = 0

    def write(self, table) -> None:
        """Add an explained batch's rows (flushed as a row group once enough are buffered)."""
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered += table.nbytes
        self.rows += table.num_rows
        if self._buffered >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Write the buffered rows as one row group."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = self._open()
        table = pa.concat_tables(self._buffer)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._buffer, self._buffered = [], 0

    def _open(self):
        """The Parquet writer of the temporary file. No dictionary encoding: relevance values and sample ids are
        (nearly) all distinct, so it only costs time (3x the write time of the digits' rows) and size."""
        import pyarrow.parquet as pq
        return pq.ParquetWriter(str(self.tmp), self.schema, compression=self.compression, use_dictionary=False)

    def commit(self) -> str:
        """Finish the file and move it into place; returns its name."""
        self._flush()
        if self._writer is None:   # every sample of the shard failed: an empty file keeps the schema
            self._writer = self._open()
        self._writer.close()
        self._writer = None
        os.replace(self.tmp, self.path)
        return self.path.name

    def abort(self) -> None:
        """Drop a shard that will not be finished (interrupted run): nothing half-written stays behind."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
            self._writer = None
        self._buffer = []
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def remove_leftovers(folder: Path, keep: Optional[set] = None) -> None:
    """Delete temporary shard files of an interrupted run, and shard files the manifest does not list."""
    for path in Path(folder).glob(".part-*.parquet.tmp"):
        path.unlink(missing_ok=True)
    if keep is not None:
        for path in Path(folder).glob("part-*.parquet"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
