"""Forward pass vs explanation on the user's own model and hardware (`onnxlrp bench`, benchmarks/compare.py).

Times are medians of interleaved rounds (one forward, one explanation per round, after warm-up), so that a busy
machine slows both alike and the ratio stays meaningful. run_bench measures in a fresh process whose onnxruntime
sessions share one thread pool (shared_thread_pool), as benchmarks/compare.py does.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from . import errors
from .errors import InputError, OnnxLrpError

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
                "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


_SHARED_POOL: dict = {}  # {"threads": n} once shared_thread_pool() has set the process-wide pool up


def shared_thread_pool(threads: int = 0) -> bool:
    """Run every later session of this process on one onnxruntime thread pool of `threads` threads (0: one per
    CPU); call before the first session. True when it is in effect. Process-wide and for good: every later session
    must then be built with session_options() (onnxruntime refuses one with a pool of its own), so only a
    benchmark's own process (benchmarks/compare.py) calls it.

    Sessions timed side by side with a pool each slow each other down: on 2 cores a ResNet-18 forward took 36 ms
    next to an explanation session and 18 ms alone, which would flatter every ratio. One shared pool measures each
    session as it runs alone."""
    import os

    from onnxruntime.capi import _pybind_state
    if not _SHARED_POOL:
        try:
            _pybind_state.set_global_thread_pool_sizes(threads or os.cpu_count() or 1, 1)
        except Exception:  # an onnxruntime build without global pools: sessions keep a pool each
            return False
        _SHARED_POOL["threads"] = threads or os.cpu_count() or 1
    return True


def session_options(threads: int = 0):
    """onnxruntime session options: all graph optimisations; `threads` intra-op threads (0: onnxruntime's choice),
    or the process's shared pool when shared_thread_pool() set one up."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if _SHARED_POOL:
        options.use_per_session_threads = False
    elif threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def interleaved(calls: Mapping[str, Callable[[], object]], warmup: int, repeats: int,
                budget_s: Optional[float] = None, min_s: float = 0.0, settle: bool = False) -> tuple:
    """(median seconds per call of each callable, rounds timed): `repeats` rounds after `warmup` untimed ones,
    stopping early (after at least 3) once budget_s seconds of timed rounds are spent, and going on (up to 20x
    repeats) until min_s seconds are spent, so that fast calls get many rounds. The order rotates per round.
    settle: each timed call comes right after an untimed call of the same callable. Sessions with a thread pool
    each slow down the first run after another session's run (a ResNet-18 forward: 36 ms instead of 18 on 2
    cores), which would flatter the ratio; shared_thread_pool() is the cheaper cure where a process may use it."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict = {name: [] for name in calls}
    start = time.perf_counter()
    for r in range(20 * repeats):
        if r >= repeats and time.perf_counter() - start >= min_s:
            break
        order = list(calls.items())
        order = order[r % len(order):] + order[:r % len(order)]
        for name, fn in order:
            if settle:
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(values) for name, values in times.items()}, len(next(iter(times.values()), []))


def parse_shapes(values: Sequence[str], names: Sequence[str]) -> dict:
    """--shape values ('1,3,224,224' for a single input, or 'name=1,3,224,224') into {input name: shape}."""
    shapes = {}
    for item in values:
        name, _, dims = item.rpartition("=")
        if not name:
            if len(names) != 1:
                raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}): use --shape NAME=DIMS")
            name = names[0]
        if name not in names:
            raise InputError(f"--shape names an unknown input {name!r} (inputs: {', '.join(names)})")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InputError(f"--shape expects comma-separated integers, got {dims!r}") from None
        if not shapes[name] or any(d <= 0 for d in shapes[name]):
            raise InputError(f"--shape for {name!r} must be positive integers, got {dims!r}")
    return shapes


def random_feeds(inputs, batch: int, shapes: Optional[dict] = None, seed: int = 0) -> dict:
    """Random inputs for onnxruntime session inputs: standard normal floats, zeros for integers; a dynamic first
    axis is `batch`; other dynamic axes need `shapes`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        dtype = _NUMPY_TYPES.get(spec.type)
        if dtype is None:
            raise InputError(f"input {spec.name!r} has a type the benchmark cannot fill: {spec.type}")
        shape = (shapes or {}).get(spec.name)
        if shape is None:
            dims = list(spec.shape)
            if dims and not isinstance(dims[0], int):
                dims[0] = batch
            unknown = [i for i, d in enumerate(dims) if not isinstance(d, int) or d <= 0]
            if unknown:
                raise InputError(f"input {spec.name!r} has dynamic axes {unknown} besides the batch: give its shape "
                                 f"with --shape {spec.name}=D0,D1,...")
            shape = tuple(dims)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


@dataclass
class BenchResult:
    """One benchmark: medians in seconds, what was measured, and the derived rates."""

    composite: str
    provider: str
    batch: int
    compile_s: float
    nodes: int
    compiled_nodes: int
    forward_s: float
    explanation_s: float     # the compiled graph's session.run
    explain_api_s: float     # Explainer.explain(): the same plus input checks and result packing
    rounds: int

    @property
    def ratio(self) -> float:
        """Explanation time over forward time."""
        return self.explanation_s / self.forward_s

    @property
    def samples_per_second(self) -> float:
        """Explained samples per second through Explainer.explain(): batch / explain() time."""
        return self.batch / self.explain_api_s

    @property
    def batches_per_second(self) -> float:
        """Explainer.explain() calls (of `batch` samples each) per second."""
        return 1.0 / self.explain_api_s


def run_bench(model, composite: str = "epsilon_plus", *, params: Optional[dict] = None, batch: int = 1,
              providers: Optional[Sequence[str]] = None, repeats: int = 10, warmup: int = 2, threads: int = 0,
              shapes: Optional[dict] = None, budget_s: Optional[float] = 120.0,
              min_s: float = 1.0, isolated: bool = True) -> BenchResult:
    """Compile MODEL, then time its forward pass (the original model) against the explanation, same provider,
    threads and inputs. isolated: in a fresh Python process whose sessions share one thread pool (see
    shared_thread_pool); in a process that keeps a pool per session the two slow each other down (MobileNetV2's
    forward: 15.7 ms instead of 4.2) and the ratio comes out flattered."""
    if isolated:
        from .runtime import choose_providers
        choose_providers(providers)  # an unknown or unusable provider fails here, before the child process starts
        options = dict(params=params, batch=batch, providers=list(providers) if providers else None,
                       repeats=repeats, warmup=warmup, threads=threads, budget_s=budget_s, min_s=min_s,
                       shapes={k: list(v) for k, v in (shapes or {}).items()})
        return _run_isolated(model, composite, options)
    import onnxruntime as ort

    from .compiler import TARGET_INPUT, compile as compile_model, compiled_metadata
    from .graph import load_model
    from .runtime import Explainer, choose_providers, refuse_fallback
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    source = load_model(model)
    if compiled_metadata(source) is not None:
        raise OnnxLrpError("this model is already compiled by onnxlrp: benchmark the original model (its forward "
                           "pass is the reference)")
    start = time.perf_counter()
    compiled = compile_model(source, composite, params=params)
    compile_s = time.perf_counter() - start
    chosen = choose_providers(providers)
    try:
        forward = ort.InferenceSession(source.SerializeToString(), session_options(threads), providers=chosen)
    except Exception as exc:
        raise OnnxLrpError(f"onnxruntime cannot run the model: {str(exc).splitlines()[0]}") from None
    refuse_fallback(forward, chosen)
    explainer = Explainer(compiled, providers=chosen, session_options=session_options(threads))
    feeds = random_feeds(forward.get_inputs(), batch, shapes)
    n = next(iter(feeds.values())).shape[0] if feeds else batch
    raw = dict(feeds, **{TARGET_INPUT: np.full(n, -1, dtype=np.int64)})
    calls = {"forward": lambda: forward.run(None, feeds), "explanation": lambda: explainer.session.run(None, raw),
             "explain": lambda: explainer.explain(feeds)}
    # fast models get more rounds (up to 20x repeats, min_s in all)
    medians, rounds = interleaved(calls, warmup, repeats, budget_s, min_s=min_s, settle=not _SHARED_POOL)
    return BenchResult(composite=explainer.composite, provider=explainer.provider, batch=n, compile_s=compile_s,
                       nodes=len(source.graph.node), compiled_nodes=len(compiled.graph.node),
                       forward_s=medians["forward"], explanation_s=medians["explanation"],
                       explain_api_s=medians["explain"], rounds=rounds)


# the child process: the current folder leaves sys.path first, so that a folder named onnxlrp in it (a clone of the
# repository, say) cannot shadow the installed package (`python -m` would import that folder)
_WORKER = ("import os, sys\n"
           "if sys.path and sys.path[0] in ('', os.getcwd()):\n"
           "    sys.path.pop(0)\n"
           "from onnxlrp.bench import _worker\n"
           "sys.exit(_worker(sys.argv[1:]))\n")


def _run_isolated(model, composite: str, options: dict) -> BenchResult:
    """run_bench in a child process (see _WORKER), its result or its one-line error back."""
    import onnx
    with tempfile.TemporaryDirectory(prefix="onnxlrp-bench-") as folder:
        path = model
        if isinstance(model, onnx.ModelProto):
            path = os.path.join(folder, "model.onnx")
            onnx.save_model(model, path, save_as_external_data=model.ByteSize() > 2 ** 30)
        spec = dict(options, model=os.fspath(path), composite=composite)
        done = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(spec)], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise OnnxLrpError(f"the benchmark process failed (exit {done.returncode}): {tail}") from None
    if "error" in reply:
        kind = getattr(errors, reply.get("kind", ""), OnnxLrpError)
        raise (kind if isinstance(kind, type) and issubclass(kind, OnnxLrpError) else OnnxLrpError)(reply["error"])
    return BenchResult(**reply["result"])


def _worker(argv: Sequence[str]) -> int:
    """Child process of _run_isolated: one shared thread pool, run_bench, one JSON line (result or error)."""
    spec = json.loads(argv[0])
    shared_thread_pool(spec["threads"])
    try:
        result = run_bench(spec.pop("model"), spec.pop("composite"), isolated=False, **spec)
        print(json.dumps({"result": dataclasses.asdict(result)}))
    except OnnxLrpError as exc:
        print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
