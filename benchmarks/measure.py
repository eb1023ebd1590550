"""Timing and memory helpers: interleaved medians, onnxruntime sessions, peak resident memory of a process."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional


def session_options(threads: int):
    """onnxruntime session options used for every session: all graph optimisations, `threads` intra-op threads."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def session(model, threads: int, provider: str = "CPUExecutionProvider"):
    """An onnxruntime session for a model path or serialized model."""
    import onnxruntime as ort
    return ort.InferenceSession(model, session_options(threads), providers=[provider])


def interleaved(calls: dict, warmup: int, repeats: int, budget_s: Optional[float] = None) -> dict:
    """Median seconds per call of each callable, timed in rounds (one call of each per round, after warm-up), so that
    a slow machine slows all of them alike; stops early (after at least 3 rounds) once budget_s is spent."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict = {name: [] for name in calls}
    start = time.perf_counter()
    for r in range(repeats):
        order = list(calls.items())
        order = order[r % len(order):] + order[:r % len(order)]  # rotate: no call always follows the same one
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (0 where it is not available)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset the process's peak resident set (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_during(fn: Callable[[], object], calls: int = 2) -> dict:
    """Resident memory (MiB) before `fn` runs and its peak while it runs `calls` times (whole process)."""
    import resource
    before = _status_kb("VmRSS")
    exact = reset_peak()
    for _ in range(calls):
        fn()
    peak = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"before_mb": before / 1024, "peak_mb": peak / 1024, "exact": exact}
