"""Small CNNs, where per-layer work other than the convolutions weighs most: explanation / forward and the floor.

    .venv/bin/python benchmarks/small_models.py                       # every model, 64x64 and 224x224, batch 1
    .venv/bin/python benchmarks/small_models.py --batches 1,8           # and batch 8 (floor target: every model)
    .venv/bin/python benchmarks/small_models.py --sizes 64 --models mobilenet_v2,resnet18 --profile

The models are tests/zoo.py's (torchvision layouts at 1/8-1/16 width: VGG-16-BN, ResNet-18/50, a DenseNet,
MobileNetV2, MobileNetV3) and benchmarks/models.py's full-width ResNet-18 and MobileNetV2, exported with the legacy
exporter (dynamic batch), compiled with `epsilon_plus` and `epsilon_gamma_box` (low -3, high 3). Times are medians
of interleaved rounds of the forward pass and the compiled graph's session.run, batch 1, one intra-op thread per
session, measured as the calling thread's CPU time (onnxruntime runs the kernels on it): on a machine shared with
other jobs, wall-clock time also counts the time the core is taken away, and a 10 ms explanation loses far more
to that than a 0.6 ms forward pass (wall-clock ratios, settled interleaved rounds, are printed beside). The floor is the multiply-accumulates of the compiled
graph's convolutions and matrix products over the forward pass's (benchmarks/deployed_models.macs); measured /
floor is what the rest (element-wise passes, layout changes) costs on top. --profile prints, per model, the
onnxruntime profiler's per-op-type totals of one explanation.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

COMPOSITES = ("epsilon_plus", "epsilon_gamma_box")
TARGETS = {"epsilon_plus": (4.0, 8.0), "epsilon_gamma_box": (5.5, 11.0)}  # (median, every model)
PARAMS = {"epsilon_gamma_box": {"low": -3.0, "high": 3.0}}
ZOO_MODELS = ("vgg16_bn", "resnet18", "resnet50", "densenet", "mobilenet_v2", "mobilenet_v3")
FULL_MODELS = ("resnet18", "mobilenetv2")  # benchmarks/models.py, full width
ALL = tuple(f"zoo:{m}" for m in ZOO_MODELS) + tuple(f"full:{m}" for m in FULL_MODELS)


def build(name: str):
    """The torch model of 'zoo:<name>' (tests/zoo.py) or 'full:<name>' (benchmarks/models.py)."""
    kind, model = name.split(":")
    if kind == "zoo":
        import zoo
        return zoo.build(model)
    import models
    return models.build(model)[0]


def export(name: str, size: int, folder: Path) -> Path:
    """Legacy export at size x size, dynamic batch."""
    import torch
    path = folder / f"{name.replace(':', '_')}_{size}.onnx"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(build(name), (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def floor(path: Path, compiled, size: int) -> float:
    """MACs of the compiled graph's convolutions and matrix products over the forward pass's (static shapes)."""
    import onnx

    import onnxlrp
    from deployed_models import _specialised, macs
    forward = macs(_specialised(onnx.load(str(path)), "input", (1, 3, size, size)))
    return macs(onnxlrp.compile(str(path), compiled, params=PARAMS.get(compiled),
                                shapes={"input": (1, 3, size, size)})) / forward


def profile(session, feeds: dict, runs: int = 20) -> collections.Counter:
    """Per-op-type kernel microseconds of one run (onnxruntime's profiler), relevance nodes marked 'lrp': each
    node's fastest run (the others include the time other processes took the core away)."""
    for _ in range(runs):
        session.run(None, feeds)
    events = json.load(open(session.end_profiling()))
    fastest: dict = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"], e["args"]["op_name"])
            fastest[key] = min(fastest.get(key, float("inf")), e["dur"])
    totals: collections.Counter = collections.Counter()
    for (name, op), us in fastest.items():
        totals[("lrp" if "lrp/" in name else "fwd", op)] += us
    return totals


def cpu_medians(calls: dict, warmup: int, repeats: int) -> dict:
    """Median thread CPU seconds per call, interleaved rounds (one intra-op thread: onnxruntime runs the kernels on
    the calling thread, so this is the work itself, without the time other processes hold the core)."""
    import time
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict = {name: [] for name in calls}
    for r in range(repeats):
        order = list(calls.items())
        for name, fn in order[r % len(order):] + order[:r % len(order)]:
            start = time.thread_time()
            fn()
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    """Print one row per model, size and composite, then the medians against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ALL))
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes (the targets are for batch 1)")
    parser.add_argument("--composites", default=",".join(COMPOSITES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--profile", action="store_true", help="per-op-type totals of each explanation")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    import onnxlrp
    from onnxlrp.bench import interleaved, session_options
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="onnxlrp-small-"))
    folder.mkdir(parents=True, exist_ok=True)
    composites = args.composites.split(",")
    ratios: dict = {}
    above_floor: dict = {}
    print("| model | size | batch | forward ms (CPU) | composite | explanation ms (CPU) | x forward (CPU) | floor "
          "| x floor | x forward (wall) | nodes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, batch, name in [(int(s), int(b), m) for s in args.sizes.split(",") for b in args.batches.split(",")
                              for m in args.models.split(",")]:
        path = export(name, size, folder)
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32).clip(-3, 3)
        forward = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        calls = {"forward": lambda f=forward: f.run(None, {"input": x})}
        sessions, nodes = {}, {}
        for composite in composites:
            model = onnxlrp.compile(str(path), composite, params=PARAMS.get(composite))
            nodes[composite] = len(model.graph.node)
            s = ort.InferenceSession(model.SerializeToString(), session_options(1),
                                     providers=["CPUExecutionProvider"])
            feeds = {"input": x, "lrp_target": np.full(batch, -1, dtype=np.int64)}
            if args.profile:  # a session of its own: profiling adds several microseconds to every node
                options = session_options(1)
                options.enable_profiling = True
                options.profile_file_prefix = str(folder / f"profile_{composite}")  # not in the working folder
                sessions[composite] = (ort.InferenceSession(model.SerializeToString(), options,
                                                            providers=["CPUExecutionProvider"]), feeds)
            calls[composite] = lambda s=s, feeds=feeds: s.run(None, feeds)
        cpu = cpu_medians(calls, 2, args.repeats)
        wall, _ = interleaved(calls, 1, args.repeats, budget_s=60, min_s=args.min_seconds, settle=True)
        for composite in composites:
            ratio = cpu[composite] / cpu["forward"]
            ratios.setdefault((composite, size, batch), []).append(ratio)
            lower = floor(path, composite, size)
            above_floor.setdefault((composite, batch), []).append(ratio / lower)
            print(f"| {name} | {size} | {batch} | {cpu['forward'] * 1e3:.2f} | {composite} | {cpu[composite] * 1e3:.2f} | "
                  f"{ratio:.2f}x | {lower:.2f}x | {ratio / lower:.2f} | {wall[composite] / wall['forward']:.2f}x | "
                  f"{nodes[composite]} |", flush=True)
            if args.profile:
                totals = profile(*sessions[composite])
                top = ", ".join(f"{k}:{op} {us / 1e3:.2f}" for (k, op), us in totals.most_common(12))
                print(f"|  | profile ms | {sum(totals.values()) / 1e3:.2f} | {top} ||||||", flush=True)
    print()
    for (composite, size, batch), values in ratios.items():
        median_target, max_target = TARGETS.get(composite, (None, None))
        print(f"{composite} {size}x{size} batch {batch}: explanation / forward median {statistics.median(values):.2f}x "
              f"(target <= {median_target}), max {max(values):.2f}x (target <= {max_target})")
    for (composite, batch), values in above_floor.items():
        print(f"{composite} batch {batch}: x floor median {statistics.median(values):.2f}, max {max(values):.2f} "
              f"(target <= 1.25 on every model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
