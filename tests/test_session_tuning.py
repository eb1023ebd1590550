"""The session settings of onnxlrp/session_tuning.py: freed heap pages go back to the OS after a session is built."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from onnxlrp import session_tuning

# a child process (a clean heap): 96 MiB in 64 KiB blocks (below glibc's mmap threshold, so on the heap), touched,
# then all freed but the last (which keeps the heap's top in place, so glibc cannot shrink the heap by itself);
# resident MiB after the frees, then after onnxlrp's trim
CHILD = textwrap.dedent("""
    import ctypes, importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("session_tuning", sys.argv[2])  # the module alone: a light child
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)

    def rss():
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:")) / 1024

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(96 * 16)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[:-1]:
        libc.free(block)
    freed = rss()
    if sys.argv[1] == "trim":
        tuning.release_freed_memory(0)  # a small model: no garbage collection, the trim alone
    print(json.dumps({"freed": freed, "after": rss()}))
""")


def _child(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, session_tuning.__file__], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_release_freed_memory_returns_the_freed_heap_to_the_os():
    kept = _child("keep")
    trimmed = _child("trim")
    # without the trim the ~96 MiB freed stay resident; with it, at least 80 of them go back
    assert kept["after"] - kept["freed"] > -8
    assert trimmed["freed"] - trimmed["after"] > 80


def test_tune_options_turns_the_memory_pattern_off_and_keeps_the_callers_prepacking():
    import onnx
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.add_session_config_entry(session_tuning.PREPACK_KEY, "0")
    assert options.enable_mem_pattern  # onnxruntime's default
    session_tuning.tune_options(options, onnx.ModelProto())
    assert options.enable_mem_pattern is False
    assert options.get_session_config_entry(session_tuning.PREPACK_KEY) == "0"
