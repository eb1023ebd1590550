"""Where an explanation session's resident memory goes: the process after imports, after the Explainer (session) is
built, and the peak while explaining, under several onnxruntime settings, each in a fresh process; and what the
session holds: the initializers of onnxruntime's optimized graph, by the op that reads them.

    python benchmarks/session_memory.py MODEL.compiled.onnx --batch 1
    python benchmarks/session_memory.py MODEL.compiled.onnx --batch 8 --configs default,no_prepack
    python benchmarks/session_memory.py MODEL.compiled.onnx --weights      # the optimized graph's initializers
    python benchmarks/session_memory.py MODEL.compiled.onnx --time-pattern 40 --threads 1   # speed: pattern on / off

compare.py's memory column measures the same way (VmHWM reset after the session is built); MODEL is a compiled file
(compare.py --workdir DIR leaves them in DIR).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# session config entries per named setting (compare.py's sessions: all optimisations, 2 threads)
CONFIGS = {
    "default": {},
    "no_prepack": {"session.disable_prepacking": "1"},
    "no_arena": {"_arena": False},
    "no_mem_pattern": {"_mem_pattern": False},
    "arena_same_as_requested": {"_arena_extend": 1},
    "extended": {"_level": "extended"},
    "priority_order": {"_order": "PRIORITY_BASED"},
    "memory_efficient_order": {"_order": "MEMORY_EFFICIENT"},
}


def _status_mb(field: str) -> float:
    """A field of /proc/self/status in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(model: str, batch: int, config: str, threads: int) -> dict:
    """In this process: imports, the Explainer with the setting, two explanations; resident MiB at each step."""
    import numpy as np
    import onnxruntime as ort

    import onnxlrp
    from measure import peak_during
    from onnxlrp.bench import session_options
    imported = _status_mb("VmRSS")
    options = session_options(threads)
    for key, value in CONFIGS[config].items():
        if key == "_arena":
            options.enable_cpu_mem_arena = value
        elif key == "_mem_pattern":
            options.enable_mem_pattern = value
        elif key == "_arena_extend":  # an environment arena that grows by what is asked (kSameAsRequested)
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, value, -1, -1))
            options.add_session_config_entry("session.use_env_allocators", "1")
        elif key == "_order":
            options.execution_order = getattr(ort.ExecutionOrder, value)
        elif key == "_level":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        else:
            options.add_session_config_entry(key, value)
    exp = onnxlrp.Explainer(model, providers=["CPUExecutionProvider"], session_options=options)
    built_peak = _status_mb("VmHWM")
    x = np.random.default_rng(1234 + batch).standard_normal((batch,) + tuple(exp.inputs[0].shape[1:]))
    x = np.clip(x, -3, 3).astype(np.float32)
    result = peak_during(lambda: exp.explain(x))
    return {"imported_mb": imported, "session_mb": result["before_mb"], "build_peak_mb": built_peak,
            "peak_mb": result["peak_mb"]}


def weights(model: str, threads: int) -> None:
    """The optimized graph's initializers (what the session keeps folded), bytes by reading op type."""
    import onnx
    import onnxruntime as ort

    from onnxlrp.bench import session_options
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads)
        options.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        opt = onnx.load(options.optimized_model_filepath)
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in opt.graph.initializer}
    readers = collections.defaultdict(list)
    for node in opt.graph.node:
        for i, name in enumerate(node.input):
            if name in sizes:
                readers[name].append(f"{node.op_type}[{i}]")
    by_kind = collections.Counter()
    for name, size in sizes.items():
        kind = ",".join(sorted(set(readers.get(name, ["(unread)"]))))
        by_kind[kind] += size
    src = onnx.load(model, load_external_data=True)
    own = sum(onnx.numpy_helper.to_array(t).nbytes for t in src.graph.initializer)
    print(f"source file initializers: {own / 2**20:.1f} MiB; optimized graph: {len(sizes)} initializers, "
          f"{sum(sizes.values()) / 2**20:.1f} MiB")
    for kind, size in by_kind.most_common(25):
        print(f"  {size / 2**20:8.1f} MiB  read by {kind}")


def time_pattern(model: str, batch: int, rounds: int, threads: int) -> None:
    """session.run of the compiled graph with onnxruntime's memory pattern on and off: two sessions in this process,
    interleaved rounds (order alternating), medians of wall and process CPU time."""
    import statistics
    import time

    import numpy as np
    import onnxruntime as ort

    from onnxlrp.bench import session_options
    sessions = {}
    for name, pattern in (("on", True), ("off", False)):
        options = session_options(threads)
        options.enable_mem_pattern = pattern
        sessions[name] = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    first = sessions["on"].get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch] + list(first.shape[1:]))
    feeds = {first.name: np.clip(x, -3, 3).astype(np.float32), "lrp_target": np.full(batch, -1, np.int64)}
    names = {i.name for i in sessions["on"].get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for sess in sessions.values():
        for _ in range(2):
            sess.run(None, feeds)
    wall: dict = {k: [] for k in sessions}
    cpu: dict = {k: [] for k in sessions}
    for r in range(rounds):
        for name in (("on", "off") if r % 2 else ("off", "on")):
            c0, t0 = time.process_time(), time.perf_counter()
            sessions[name].run(None, feeds)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    w = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
    c = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    print(f"{Path(model).name} batch {batch}, {threads} threads, {rounds} rounds: wall ms on {w['on']:.2f} off "
          f"{w['off']:.2f} (off / on {w['off'] / w['on']:.3f}); CPU ms on {c['on']:.2f} off {c['off']:.2f} "
          f"(off / on {c['off'] / c['on']:.3f})")


def main(argv=None) -> int:
    """Parent: one fresh process per setting; print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default="default")
    p.add_argument("--weights", action="store_true")
    p.add_argument("--time-pattern", type=int, default=0, metavar="ROUNDS",
                   help="time session.run with the memory pattern on and off, interleaved")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.model, args.batch, args.child, args.threads)))
        return 0
    if args.weights:
        weights(args.model, args.threads)
        return 0
    if args.time_pattern:
        time_pattern(args.model, args.batch, args.time_pattern, args.threads)
        return 0
    print("| setting | after imports MiB | session built MiB | build peak MiB | explain peak MiB | working MiB |")
    print("|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        done = subprocess.run([sys.executable, __file__, args.model, "--batch", str(args.batch), "--threads",
                               str(args.threads), "--child", config], capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode or not lines:
            print(f"| {config} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(lines[-1])
        print(f"| {config} | {r['imported_mb']:.0f} | {r['session_mb']:.0f} | {r['build_peak_mb']:.0f} "
              f"| {r['peak_mb']:.0f} | {r['peak_mb'] - r['session_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
