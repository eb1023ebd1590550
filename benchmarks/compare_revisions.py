"""Explanation / forward of the small CNNs, compiled by an older revision of onnxlrp and by this checkout, timed in
the same process in interleaved rounds (the fair comparison on a shared machine: both see the same load).

    .venv/bin/python benchmarks/compare_revisions.py --old main                 # every small_models.py model, 64x64
    .venv/bin/python benchmarks/compare_revisions.py --old HEAD~3 --models zoo:mobilenet_v2 --repeats 61

The old revision's onnxlrp/ and rules/ are taken with `git archive` into a temporary folder and compile in a
subprocess (PYTHONPATH pointing there); both compiled graphs must pass onnx.checker's full check. Times: medians of
the calling thread's CPU time (one intra-op thread, as small_models.py), forward, old and new explanation in rotating
order each round. `maxreldiff` is the largest difference between the old and new outputs relative to each output's
largest magnitude (float32 rounding where the summation order changed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from small_models import ALL, export  # noqa: E402

COMPILE = """
import sys, onnx, onnxlrp
params = {"epsilon_gamma_box": {"low": -3.0, "high": 3.0}}
src, composite, out = sys.argv[1:4]
model = onnxlrp.compile(src, composite, params=params.get(composite))
onnx.checker.check_model(model, full_check=True)
onnx.save(model, out)
print(onnxlrp.__file__, len(model.graph.node))
"""


def checkout(revision: str, folder: Path) -> Path:
    """onnxlrp/ and rules/ of a git revision under folder."""
    archive = folder / "old.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "archive", revision, "onnxlrp", "rules"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "old", filter="data")
    return folder / "old"


def compile_with(root: Path, src: Path, composite: str, out: Path) -> int:
    """Compile src with the onnxlrp found under root (a subprocess); returns the compiled node count."""
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", COMPILE, str(src), composite, str(out)], env=env, cwd=out.parent,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: compiling {src.name} with {root}: {done.stderr.strip().splitlines()[-1]}")
    where, nodes = done.stdout.split()
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"error: {root} did not provide onnxlrp ({where})")
    return int(nodes)


def main(argv=None) -> int:
    """Print one row per model and composite, then the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="main", help="git revision to compare with (default main)")
    parser.add_argument("--models", default=",".join(ALL))
    parser.add_argument("--composites", default="epsilon_plus,epsilon_gamma_box")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from onnxlrp.bench import session_options
    folder = Path(tempfile.mkdtemp(prefix="onnxlrp-revisions-"))
    roots = {"old": checkout(args.old, folder), "new": ROOT}
    composites = args.composites.split(",")
    ratios: dict = {c: {"old": [], "new": []} for c in composites}
    print(f"| model | composite | forward ms (CPU) | old x forward | new x forward | new / old | nodes old -> new "
          f"| maxreldiff |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        path = export(name, args.size, folder)
        x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32).clip(-3, 3)
        feeds = {"input": x, "lrp_target": np.full(1, -1, dtype=np.int64)}
        forward = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        calls = {"forward": lambda f=forward: f.run(None, {"input": x})}
        nodes, outputs = {}, {}
        for composite in composites:
            for tag, root in roots.items():
                out = folder / f"{name.replace(':', '_')}_{composite}_{tag}.onnx"
                nodes[(composite, tag)] = compile_with(root, path, composite, out)
                session = ort.InferenceSession(str(out), session_options(1), providers=["CPUExecutionProvider"])
                calls[(composite, tag)] = lambda s=session: s.run(None, feeds)
                outputs[(composite, tag)] = session.run(None, feeds)
        for _ in range(3):
            for fn in calls.values():
                fn()
        times: dict = {key: [] for key in calls}
        order = list(calls.items())
        for r in range(args.repeats):
            for key, fn in order[r % len(order):] + order[:r % len(order)]:
                start = time.thread_time()
                fn()
                times[key].append(time.thread_time() - start)
        median = {key: statistics.median(values) for key, values in times.items()}
        for composite in composites:
            old, new = (median[(composite, tag)] / median["forward"] for tag in ("old", "new"))
            ratios[composite]["old"].append(old)
            ratios[composite]["new"].append(new)
            diff = max(float(np.max(np.abs(u - v)) / (np.max(np.abs(u)) + 1e-30))
                       for u, v in zip(outputs[(composite, "old")], outputs[(composite, "new")]) if u.size)
            print(f"| {name} | {composite} | {median['forward'] * 1e3:.2f} | {old:.2f}x | {new:.2f}x | {new / old:.3f} "
                  f"| {nodes[(composite, 'old')]} -> {nodes[(composite, 'new')]} | {diff:.1e} |", flush=True)
    print()
    for composite, values in ratios.items():
        print(f"{composite}: median {statistics.median(values['old']):.2f}x -> {statistics.median(values['new']):.2f}x"
              f", max {max(values['old']):.2f}x -> {max(values['new']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
