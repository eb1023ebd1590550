"""The Ray Data engine: the shards to do become a Ray data set, `map_batches` hands them to a pool of actors (each
holding one Explainer with an explicit onnxruntime thread count and a fractional CPU share), and the driver writes
what they send back with the local engine's writer (same files, manifest and resume)."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from ..errors import OnnxLrpError
from .output import OutputFolder
from .rows import RowLayout

CPU_SHARE = 0.9   # of a CPU per onnxruntime thread: the rest stays free for Ray's own tasks (no deadlock)
STALL_SECONDS = 900.0


def require_ray():
    """The ray module, or one clear line on how to get it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise OnnxLrpError("--engine ray needs Ray Data: pip install 'onnxlrp[ray]'") from None
    return ray


@dataclass(frozen=True)
class ActorPlan:
    """Resources of each actor and how many the cluster can hold."""

    num_cpus: float
    num_gpus: float
    fits: int


def actor_plan(nodes: Sequence[dict], workers: int, threads: int, gpus_per_worker: Optional[float]) -> ActorPlan:
    """Fractional CPUs (threads x CPU_SHARE, at most what one node has) and GPUs per actor, and how many such actors
    the alive nodes can place (each node: floor of its free CPUs / num_cpus, likewise for GPUs)."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    gpus = sum(r.get("GPU", 0) for r in alive)
    if gpus_per_worker is None:
        gpus_per_worker = min(1.0, gpus / workers) if gpus else 0.0
    largest = max((r.get("CPU", 0) for r in alive), default=0)
    num_cpus = round(min(threads * CPU_SHARE, max(largest * CPU_SHARE, 0.01)), 3)
    fits = 0
    for r in alive:
        by_cpu = math.floor(r.get("CPU", 0) / num_cpus + 1e-9)
        by_gpu = math.floor(r.get("GPU", 0) / gpus_per_worker + 1e-9) if gpus_per_worker else by_cpu
        fits += min(by_cpu, by_gpu)
    return ActorPlan(num_cpus=num_cpus, num_gpus=float(gpus_per_worker), fits=fits)


class ShardActor:
    """A Ray actor: one Explainer; explains the shards it is handed, batch by batch, and streams the rows back."""

    def __init__(self, model, specs, source, layout: RowLayout, target, batch_size: int, threads: int,
                 cuda: bool) -> None:
        import onnx
        import ray
        from ..runtime import Explainer
        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        self.explainer = Explainer(onnx.load_from_string(data), threads=threads, providers=providers)
        if cuda and self.explainer.provider != "CUDAExecutionProvider":
            raise OnnxLrpError(f"a Ray worker with a GPU could not start onnxruntime's CUDA provider "
                               f"(it runs {self.explainer.provider})")
        self.specs, self.source, self.layout = specs, source, layout
        self.target, self.batch_size = target, batch_size
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, shards: dict):
        """For each shard handed in: one message per explained batch, then one that closes the shard."""
        import numpy as np
        from .samples import prepare
        from .shard_work import explain_batch
        for shard, first, stop in zip(shards["shard"], shards["first"], shards["stop"]):
            count = 0
            for number, raw in enumerate(self.source.batches(int(first), int(stop), self.batch_size)):
                batch = prepare(raw, self.specs, int(shard), number)
                table, failures = explain_batch(self.explainer, self.layout, batch, self.target)
                yield _message(int(shard), number, False, table, failures, self.node, np)
                count = number + 1
            yield _message(int(shard), count, True, None, [], self.node, np)


def _message(shard: int, number: int, last: bool, table, failures: list, node: str, np) -> dict:
    """One row for the driver: shard, batch number (the batch count when last), rows as Arrow IPC, failures, and
    the node that did the work."""
    payload = b""
    if table is not None:
        import pyarrow as pa
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
        payload = sink.getvalue().to_pybytes()
    return {"shard": np.array([shard]), "number": np.array([number]), "last": np.array([last]),
            "rows": np.array([payload], dtype=object), "failures": np.array([json.dumps(failures)], dtype=object),
            "node": np.array([node], dtype=object)}


def _table(payload: bytes):
    """Arrow IPC bytes back into a table."""
    import pyarrow as pa
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all() if payload else None


def check_reachable(address: Optional[str], timeout: float = 10.0) -> None:
    """A HOST:PORT address must accept a connection (ray.init would retry for minutes before giving up)."""
    if not address or "://" in address or address in ("auto", "local") or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except ValueError:
        raise OnnxLrpError(f"--ray-address expects HOST:PORT (e.g. 10.0.0.1:6379), got {address!r}") from None
    except OSError as exc:
        raise OnnxLrpError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start "
                           f"--head` running there?)") from None


@contextlib.contextmanager
def ray_session(address: Optional[str]):
    """Attach to the cluster at address, or use the Ray this process already runs, or start a local one."""
    from ..runtime import _quiet_stderr
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        # "local": a Ray of our own; ray.init(address=None) would join any Ray another process started on this
        # machine (/tmp/ray/ray_current_cluster), e.g. a concurrent job's or test suite's
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        check_reachable(address)
        # Ray's C++ core logs a harmless error line per actor pool of Ray Data (ray-project/ray#53727) and its
        # Python side a few info lines: keep the driver's terminal for the progress bar and the summary
        saved = os.environ.get("RAY_BACKEND_LOG_LEVEL")
        os.environ["RAY_BACKEND_LOG_LEVEL"] = saved or "fatal"
        try:
            with _quiet_stderr():
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=True)
        except ConnectionError as exc:
            raise OnnxLrpError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
        finally:
            if saved is None:
                os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
        started = True
    quiet = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        if started:
            ray.shutdown()


def run_ray(model_bytes: bytes, specs, source, layout: RowLayout, plan: Sequence[tuple], batch_size: int,
            target: Union[str, int], workers: int, threads: int, sink: OutputFolder, address: Optional[str] = None,
            gpus_per_worker: Optional[float] = None, stall_seconds: float = STALL_SECONDS) -> dict:
    """Explain the planned shards on Ray; returns what ran where ({"nodes", "num_cpus", "num_gpus"})."""
    with ray_session(address) as ray:
        resources = actor_plan(ray.nodes(), workers, threads, gpus_per_worker)
        if resources.fits < workers:
            cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive", True)]
            raise OnnxLrpError(f"the Ray cluster ({len(cpus)} node(s) with {', '.join(f'{c:g}' for c in cpus)} CPUs) "
                               f"holds {resources.fits} worker(s) of {threads} onnxruntime thread(s) "
                               f"({resources.num_cpus:g} CPU each), not {workers}: use --workers "
                               f"{max(resources.fits, 1)} or fewer threads")
        import ray.data
        context = ray.data.DataContext.get_current()
        saved = (context.target_max_block_size, context.enable_progress_bars)
        context.target_max_block_size = 1      # every message its own block: progress per batch, not per shard
        context.enable_progress_bars = False
        try:
            model = ray.put(model_bytes)
            shards = ray.data.from_items([{"shard": k, "first": a, "stop": b} for k, a, b in plan],
                                         override_num_blocks=max(1, len(plan)))
            explained = shards.map_batches(
                ShardActor, batch_size=1, batch_format="numpy", zero_copy_batch=True,
                fn_constructor_kwargs={"model": model, "specs": list(specs), "source": source, "layout": layout,
                                       "target": target, "batch_size": batch_size, "threads": threads,
                                       "cuda": resources.num_gpus > 0},
                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=resources.num_cpus,
                num_gpus=resources.num_gpus or None, scheduling_strategy="SPREAD")  # actors on as many nodes as can
            workers_on, first_result_s = _drain(explained, sink, stall_seconds)
        finally:
            context.target_max_block_size, context.enable_progress_bars = saved
        alive = [n for n in ray.nodes() if n.get("Alive", True)]
        return {"cluster_nodes": len(alive), "worker_nodes": sorted(workers_on), "num_cpus": resources.num_cpus,
                "num_gpus": resources.num_gpus, "first_result_s": first_result_s}


def _drain(dataset, sink: OutputFolder, stall_seconds: float) -> tuple:
    """Hand every message to the sink (a thread iterates, so that a cluster that stops answering is noticed);
    returns the ids of the nodes that did the work and the seconds until the first result (actors starting)."""
    messages: queue.Queue = queue.Queue(maxsize=64)
    done = object()
    stop = threading.Event()

    def hand_over(item) -> bool:
        """Queue an item for the driver; False once the driver stopped listening."""
        while not stop.is_set():
            try:
                messages.put(item, timeout=0.5)
                return True
            except queue.Full:
                pass
        return False

    def pump() -> None:
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                for i in range(len(block["shard"])):
                    if not hand_over((int(block["shard"][i]), int(block["number"][i]), bool(block["last"][i]),
                                      block["rows"][i], block["failures"][i], str(block["node"][i]))):
                        return   # leaving the loop closes the iterator, which stops the Ray Data execution
            hand_over(done)
        except BaseException as exc:
            hand_over(exc)

    thread = threading.Thread(target=pump, name="onnxlrp-ray-results", daemon=True)
    thread.start()
    try:
        return _receive(messages, done, sink, stall_seconds)
    finally:
        stop.set()
        thread.join(timeout=2)


def _receive(messages: queue.Queue, done, sink: OutputFolder, stall_seconds: float) -> tuple:
    """The driver's loop: messages to the sink until the end marker; (nodes, seconds to the first result)."""
    nodes = set()
    started = time.perf_counter()
    while True:
        try:
            item = messages.get(timeout=stall_seconds)
        except queue.Empty:
            raise OnnxLrpError(f"the Ray workers sent nothing for {stall_seconds:g} s (are the workers placed? "
                               f"`ray status` shows the cluster's resources)") from None
        if item is done:
            return nodes, (first_result_s if nodes else None)
        if isinstance(item, BaseException):
            raise _ray_error(item)
        shard, number, last, payload, failures, node = item
        if not nodes:
            first_result_s = time.perf_counter() - started
        nodes.add(node)
        if last:
            sink.end(shard, number)
        else:
            sink.add(shard, number, _table(payload), json.loads(failures))


def _ray_error(exc: BaseException) -> BaseException:
    """An OnnxLrpError raised inside an actor comes back wrapped by Ray: unwrap it into its own one line."""
    cause = exc
    for _ in range(8):
        if isinstance(cause, OnnxLrpError):
            return cause
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    for line in reversed(str(exc).splitlines()):
        if "onnxlrp.errors." in line:   # 'onnxlrp.errors.ModelLoadError: <message>' in Ray's traceback text
            return OnnxLrpError(line.split(": ", 1)[-1].strip())
    return exc
