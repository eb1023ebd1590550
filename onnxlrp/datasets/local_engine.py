"""The embedded engine: a reader thread decodes batches ahead, W threads explain them on one onnxruntime session,
the calling thread writes the results in order."""
from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence, Union

from .output import OutputFolder
from .rows import RowLayout
from .samples import prepare
from .shard_work import explain_batch

_END = object()


def _read_ahead(source, specs, plan: Sequence[tuple], batch_size: int, out: queue.Queue, stop: threading.Event):
    """Producer: prepared batches, then ('end', shard, count) after each shard; an exception is passed on."""
    try:
        for shard, first, last in plan:
            count = 0
            for number, raw in enumerate(source.batches(first, last, batch_size)):
                if stop.is_set():
                    return
                out.put(prepare(raw, specs, shard, number))
                count = number + 1
            out.put(("end", shard, count))
        out.put(_END)
    except BaseException as exc:  # handed to the consumer, which raises it
        out.put(exc)


def run_local(explainer, source, specs, layout: RowLayout, plan: Sequence[tuple], batch_size: int,
              target: Union[str, int], workers: int, sink: OutputFolder) -> None:
    """Explain the planned shards with `workers` concurrent runs of one session; results reach sink in order."""
    ahead = max(2, 2 * workers)
    batches: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    reader = threading.Thread(target=_read_ahead, args=(source, specs, plan, batch_size, batches, stop),
                              name="onnxlrp-reader", daemon=True)
    reader.start()
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxlrp-explain")
    try:
        finished = False
        while not finished or pending:
            while not finished and len(pending) < ahead:
                item = batches.get()
                if item is _END:
                    finished = True
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, tuple):
                    pending.append(item)
                else:
                    pending.append((item.shard, item.number,
                                    pool.submit(explain_batch, explainer, layout, item, target)))
            if not pending:
                continue
            entry = pending.popleft()
            if entry[0] == "end":
                sink.end(entry[1], entry[2])
            else:
                shard, number, future = entry
                table, failures = future.result()
                sink.add(shard, number, table, failures)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)   # batches not started are dropped, running ones finish
        while reader.is_alive():   # unblock a producer waiting on a full queue
            try:
                batches.get_nowait()
            except queue.Empty:
                reader.join(0.05)
