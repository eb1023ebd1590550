"""Throughput of explain-dataset on a ResNet-18-shaped model at 224x224: the plain loop, the local engine and the
Ray Data engine with 1 and 2 workers, one onnxruntime thread each (target: Ray's overhead on 2 workers under 20 %
against the local engine on the same 2 cores).

    .venv/bin/python benchmarks/datasets_ray.py [--samples 128] [--batch-size 8] [--rounds 1]

The model is benchmarks/models.py's ResNet-18 (random weights, fixed seed), exported with the legacy exporter and
compiled once (epsilon_plus); the data are seeded standard-normal images in an .npy. Every configuration runs in a
fresh process; Ray is started in that process before the clock starts (as a running cluster would be), so the Ray
times include the actors' start (the model sent to each, sessions built) and the first-result time is shown too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CONFIGS = [  # name, kind, workers, threads per worker
    ("plain loop, 1 thread", "loop", 1, 1),
    ("plain loop, 2 threads", "loop", 1, 2),
    ("local engine, 1 worker x 1 thread", "local", 1, 1),
    ("local engine, 2 workers x 1 thread", "local", 2, 1),
    ("local engine, 1 worker x 2 threads", "local", 1, 2),
    ("Ray Data, 1 worker x 1 thread", "ray", 1, 1),
    ("Ray Data, 2 workers x 1 thread", "ray", 2, 1),
]


def prepare(work: Path, samples: int) -> tuple:
    """The compiled ResNet-18 and the images (built once, reused)."""
    import numpy as np
    sys.path.insert(0, str(HERE))
    compiled = work / "resnet18.epsilon_plus.onnx"
    data = work / f"images_{samples}.npy"
    if not compiled.exists():
        import models
        from compare import export
        import onnxlrp
        from onnxlrp.io import save_model
        model, shape = models.build("resnet18")
        source = export(model, shape, work / "resnet18.onnx")
        save_model(onnxlrp.compile(str(source), "epsilon_plus"), str(compiled))
    if not data.exists():
        rng = np.random.default_rng(0)
        np.save(data, rng.standard_normal((samples, 3, 224, 224)).astype(np.float32))
    return compiled, data


def child(kind: str, workers: int, threads: int, model: str, data: str, out: str, batch_size: int) -> None:
    """One configuration in this process: print {"seconds", "first_result_s"}."""
    import numpy as np
    details = {}
    if kind == "ray":
        import ray
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    if kind == "loop":
        from onnxlrp import Explainer
        explainer = Explainer(model, threads=threads)
        x = np.load(data, mmap_mode="r")
        for first in range(0, len(x), batch_size):
            explainer.explain(np.asarray(x[first:first + batch_size]))
    else:
        from onnxlrp.datasets import run_dataset
        run = run_dataset(model, data, out, batch_size=batch_size, workers=workers, threads=threads, engine=kind,
                          progress=False)
        details = run.details
    print(json.dumps({"seconds": time.perf_counter() - started, "first_result_s": details.get("first_result_s")}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workdir", default="/tmp/onnxlrp-bench-datasets")
    p.add_argument("--only", default=None, help="comma-separated kinds to run (loop,local,ray)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, workers, threads = args.child
        child(kind, int(workers), int(threads), args.model, args.data, args.out, args.batch_size)
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model, data = prepare(work, args.samples)
    kinds = set(args.only.split(",")) if args.only else {"loop", "local", "ray"}
    configs = [c for c in CONFIGS if c[1] in kinds]
    times: dict = {c[0]: [] for c in configs}
    firsts: dict = {c[0]: [] for c in configs}
    for _ in range(args.rounds):
        for name, kind, workers, threads in configs:
            out = work / "out_ray_bench"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            result = subprocess.run([sys.executable, __file__, "--child", kind, str(workers), str(threads),
                                     "--model", str(model), "--data", str(data), "--out", str(out),
                                     "--batch-size", str(args.batch_size)], capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            times[name].append(measured["seconds"])
            if measured["first_result_s"] is not None:
                firsts[name].append(measured["first_result_s"])
            print(f"  {name}: {measured['seconds']:.1f} s", file=sys.stderr)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"ResNet-18 (epsilon_plus) at 224x224, {args.samples} samples, batch {args.batch_size}, "
          f"{os.cpu_count()} cores, medians of {args.rounds} round(s)")
    print("| configuration | cores | seconds | samples/s | first result s |")
    print("|---|---|---|---|---|")
    for name, kind, workers, threads in configs:
        first = f"{statistics.median(firsts[name]):.1f}" if firsts[name] else "-"
        print(f"| {name} | {workers * threads} | {median[name]:.1f} | {args.samples / median[name]:.2f} | {first} |")
    local2, ray2 = "local engine, 2 workers x 1 thread", "Ray Data, 2 workers x 1 thread"
    if local2 in median and ray2 in median:
        overhead = median[ray2] / median[local2] - 1
        steady = (median[ray2] - statistics.median(firsts[ray2])) / median[local2] - 1 if firsts[ray2] else None
        print(f"Ray overhead on 2 workers against the local engine on the same 2 cores: {100 * overhead:+.1f} % "
              f"(target < 20 %: {'met' if overhead < 0.2 else 'MISSED'})"
              + (f"; after the first result (actors started): {100 * steady:+.1f} %" if steady is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
