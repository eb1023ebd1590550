"""Timing and memory helpers: interleaved medians, onnxruntime sessions, peak resident memory of a process."""
from __future__ import annotations

from typing import Callable

from onnxlrp.bench import interleaved, session_options  # noqa: F401  (re-exported for compare.py)


def session(model, threads: int, provider="CPUExecutionProvider"):
    """An onnxruntime session for a model path or serialized model (all optimisations, `threads` threads);
    provider: one provider name, or a providers list as onnxruntime takes it."""
    import onnxruntime as ort
    return ort.InferenceSession(model, session_options(threads),
                                providers=[provider] if isinstance(provider, str) else list(provider))


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
