"""The driver's side of a run: shards written in batch order, committed to the manifest one by one, failures listed."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import OnnxLrpError
from .manifest import append_failures, save_manifest
from .progress import RunProgress
from .writer import ShardWriter


class OutputFolder:
    """Receives explained batches (in any order across shards, reordered inside each) and commits whole shards."""

    def __init__(self, folder: Path, manifest: dict, schema, plan: dict, progress: RunProgress,
                 give_up_after: int) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.schema = schema
        self.plan = plan                    # shard -> (first, stop)
        self.progress = progress
        self.give_up_after = give_up_after  # this many failures before any success: the data set does not fit
        self.writers: dict = {}
        self.waiting: dict = {}             # shard -> {batch number: (table, failure records)}
        self.next: dict = {}                # shard -> next batch number to write
        self.expected: dict = {}            # shard -> number of batches, once the shard's end is known
        self.failures: dict = {}            # shard -> failure records
        self.first_failure: Optional[dict] = None

    def add(self, shard: int, number: int, table, failures: list) -> None:
        """One explained batch of a shard (table None when every sample failed)."""
        ok = table.num_rows if table is not None else 0
        self.progress.advance(ok, len(failures))
        if failures and self.first_failure is None:
            self.first_failure = failures[0]
        if self.progress.ok == 0 and self.progress.failed >= self.give_up_after:
            f = self.first_failure
            raise OnnxLrpError(f"the first {self.progress.failed} samples all failed, so the data do not fit the "
                               f"model: "
                               f"sample {f['sample_id']!r}: {f['reason']}")
        if shard not in self.writers:
            self.writers[shard] = ShardWriter(self.folder, shard, self.schema)
            self.waiting[shard], self.next[shard], self.failures[shard] = {}, 0, []
        self.waiting[shard][number] = (table, failures)
        while self.next[shard] in self.waiting[shard]:
            table, records = self.waiting[shard].pop(self.next[shard])
            if table is not None:
                self.writers[shard].write(table)
            self.failures[shard] += records
            self.next[shard] += 1
        self._commit_if_done(shard)

    def end(self, shard: int, batches: int) -> None:
        """The shard had this many batches in all."""
        self.expected[shard] = batches
        if shard not in self.writers:   # an empty shard
            self.writers[shard] = ShardWriter(self.folder, shard, self.schema)
            self.waiting[shard], self.next[shard], self.failures[shard] = {}, 0, []
        self._commit_if_done(shard)

    def _commit_if_done(self, shard: int) -> None:
        """Commit the shard once its last batch is written: file in place, failures listed, manifest updated."""
        if self.expected.get(shard) != self.next.get(shard):
            return
        writer = self.writers.pop(shard)
        name = writer.commit()
        records = self.failures.pop(shard)
        append_failures(self.folder, records)
        first, stop = self.plan[shard]
        self.manifest["shards"].append({"shard": shard, "file": name, "first": first, "stop": stop,
                                        "rows": writer.rows, "failed": len(records)})
        self.manifest["shards"].sort(key=lambda s: s["shard"])
        self.manifest["complete"] = len(self.manifest["shards"]) == self.manifest["planned_shards"]
        save_manifest(self.folder, self.manifest)
        del self.waiting[shard], self.next[shard], self.expected[shard]

    def abort(self) -> None:
        """Drop the shards still open (an interrupted or failed run): committed shards stay."""
        for writer in self.writers.values():
            writer.abort()
        self.writers.clear()
