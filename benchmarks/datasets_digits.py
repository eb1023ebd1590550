"""explain-dataset on 200,000 digits: peak resident memory (target < 1 GiB) and throughput against a plain Python
loop over the same batches with the same Explainer settings (target >= 90 %).

    .venv/bin/python benchmarks/datasets_digits.py [--samples 200000] [--batch-size 1024] [--rounds 3]

Every measurement runs in a fresh process, which reports its own peak resident memory (VmHWM; a child's
ru_maxrss would start from this script's size at fork); loop and engine rounds are interleaved, medians reported.
The digits are scikit-learn's 1797, drawn with replacement and jittered (seeded) into a (N, 1, 8, 8) float32 .npy
(51 MB for 200,000); the model is the shipped digits CNN.
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

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "digits_cnn.onnx"


def make_digits(path: Path, samples: int) -> None:
    """N jittered copies of scikit-learn's digits, in [0, 1]."""
    import numpy as np
    from sklearn.datasets import load_digits
    base = (load_digits().data / 16).astype(np.float32).reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(0)
    x = base[rng.integers(0, len(base), samples)] + rng.normal(0, 0.05, (samples, 1, 8, 8)).astype(np.float32)
    np.save(path, np.clip(x, 0, 1))


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def child(mode: str, data: str, out: str, batch_size: int) -> None:
    """One measurement in this process: print {"seconds", "peak_mib"}."""
    import numpy as np
    started = time.perf_counter()
    if mode == "cli":   # the command line as a user runs it
        from onnxlrp.cli import run
        code = run(["explain-dataset", str(MODEL), data, "-o", out, "-b", str(batch_size)])
        if code:
            raise SystemExit(code)
    elif mode == "loop":
        from onnxlrp import Explainer
        explainer = Explainer(str(MODEL))
        x = np.load(data, mmap_mode="r")
        for first in range(0, len(x), batch_size):
            explainer.explain(np.asarray(x[first:first + batch_size]))
    else:
        from onnxlrp.datasets import run_dataset
        run_dataset(MODEL, data, out, batch_size=batch_size, progress=False)
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_mib": peak_mib()}))


def measure(args: list) -> dict:
    """Run a child process; its JSON line (seconds, peak MiB)."""
    done = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed: {' '.join(args)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/onnxlrp-bench-datasets")
    p.add_argument("--child", choices=["loop", "engine", "cli"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.data, args.out, args.batch_size)
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"digits_{args.samples}.npy"
    if not data.exists():
        make_digits(data, args.samples)
    me = [str(Path(__file__).resolve()), "--batch-size", str(args.batch_size), "--data", str(data)]
    loop, engine = [], []
    for r in range(args.rounds):
        out = work / f"out_{r}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        loop.append(measure([*me, "--child", "loop"]))
        engine.append(measure([*me, "--child", "engine", "--out", str(out)]))
    cli_out = work / "out_cli"
    subprocess.run(["rm", "-rf", str(cli_out)], check=True)
    cli = measure([*me, "--child", "cli", "--out", str(cli_out)])
    t_loop = statistics.median(m["seconds"] for m in loop)
    t_engine = statistics.median(m["seconds"] for m in engine)
    c_loop = statistics.median(m["cpu_seconds"] for m in loop)
    c_engine = statistics.median(m["cpu_seconds"] for m in engine)
    print(f"digits CNN, {args.samples} samples ({data.stat().st_size / 2**20:.0f} MiB .npy), batch {args.batch_size}, "
          f"{os.cpu_count()} cores, onnxruntime default threads, median of {args.rounds} interleaved rounds")
    print("| run | seconds | samples/s | CPU seconds (user + system) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, t, c, runs in (("plain loop over the batches (Explainer.explain)", t_loop, c_loop, loop),
                             ("explain_dataset, local engine, Parquet out", t_engine, c_engine, engine)):
        print(f"| {name} | {t:.2f} | {args.samples / t:,.0f} | {c:.2f} | {max(m['peak_mib'] for m in runs):.0f} |")
    print(f"| `onnxlrp explain-dataset` (the command, progress off when piped) | {cli['seconds']:.2f} | "
          f"{args.samples / cli['seconds']:,.0f} | {cli['cpu_seconds']:.2f} | {cli['peak_mib']:.0f} |")
    ratio, cpu_ratio = t_loop / t_engine, c_loop / c_engine
    print(f"throughput of the engine / the plain loop: {100 * ratio:.1f} % by wall time, {100 * cpu_ratio:.1f} % by "
          f"CPU time (target >= 90 %: {'met' if ratio >= 0.9 else 'MISSED'} / "
          f"{'met' if cpu_ratio >= 0.9 else 'MISSED'}); "
          f"peak memory of the CLI run: {cli['peak_mib']:.0f} MiB (target < 1024 MiB: "
          f"{'met' if cli['peak_mib'] < 1024 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
