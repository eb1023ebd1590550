"""The GPU check (benchmarks/gpu_check.sh runs it): CUDA is the provider onnxlrp picks, CUDA and CPU relevance agree
to 1e-4, and compare.py's table on the GPU with IO binding.

    .venv/bin/python benchmarks/gpu_check.py            # on a machine with one NVIDIA GPU
    .venv/bin/python benchmarks/gpu_check.py --cpu      # the same steps on the CPU: tests this script without a GPU

Steps, each printing what it found, exit status 1 when a check fails:
1. `Explainer(model).provider` with providers left out is CUDAExecutionProvider (--cpu: CPUExecutionProvider);
2. the relevance, bias, stabilizer and total of the MLP and ResNet-18 of benchmarks/models.py (batch 4, random
   inputs, epsilon_plus and epsilon_gamma_box) on CUDA (TF32 off) against the CPU provider's: largest relative L2
   distance at most 1e-4 (--cpu: the CPU provider with all graph optimisations against none, which exercises the
   same comparison);
3. benchmarks/compare.py with --provider cuda --io-binding for ResNet-50 and VGG-16 at batch 1, 8 and 32 (the
   BERT-base-shaped encoder joins once the transformer work is in main), Zennit on torch's CUDA device where torch
   has one (--cpu: MLP and ResNet-18 at batch 1, --io-binding on the CPU).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TOLERANCE = 1e-4
CUDA = ("CUDAExecutionProvider", {"use_tf32": 0})  # TF32 would round convolutions to 10-bit mantissas
CHECK_MODELS = ("mlp", "resnet18")
COMPOSITES = ("epsilon_plus", "epsilon_gamma_box")


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 distance of a from b (float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def largest_difference(mine, reference) -> tuple:
    """(largest relative L2 distance, the term it is in) over relevance, bias, stabilizer and total of two
    Explanations of the same batch."""
    terms = {f"relevance[{k}]": (v, reference.relevance[k]) for k, v in mine.relevance.items()}
    terms.update({f"bias[{k}]": (v, reference.bias[k]) for k, v in mine.bias.items()})
    terms["stabilizer"] = (mine.stabilizer, reference.stabilizer)
    terms["total"] = (mine.total, reference.total)
    distances = {name: relative(a, b) for name, (a, b) in terms.items()}
    worst = max(distances, key=distances.get)
    return distances[worst], worst


def check_provider(path: Path, expected: str) -> bool:
    """Step 1: the provider onnxlrp chooses by itself."""
    import onnxlrp
    provider = onnxlrp.Explainer(str(path)).provider
    ok = provider == expected
    print(f"[1] Explainer.provider = {provider} (expected {expected}): {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def check_relevance(workdir: Path, cpu_only: bool) -> bool:
    """Step 2: the device's relevance against the CPU provider's, every term, every model and composite."""
    import onnxruntime as ort

    import onnxlrp
    from compare import export, params, sample
    import models
    label = "CPU (all optimisations) vs CPU (none)" if cpu_only else "CUDA (TF32 off) vs CPU"
    print(f"[2] relevance, {label}, tolerance {TOLERANCE:g} (relative L2 per term)")
    print("| model | composite | largest distance | in | ok |")
    print("|---|---|---|---|---|")
    ok = True
    for name in CHECK_MODELS:
        model, shape = models.build(name)
        source = export(model, shape, workdir / f"{name}.onnx")
        x = sample(shape, 4)
        for composite in COMPOSITES:
            compiled = onnxlrp.compile(str(source), composite, params=params(composite))
            reference = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"]).explain(x)
            if cpu_only:
                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                device = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"], session_options=options)
            else:
                device = onnxlrp.Explainer(compiled, providers=[CUDA, "CPUExecutionProvider"])
            distance, where = largest_difference(device.explain(x), reference)
            good = distance <= TOLERANCE
            ok &= good
            print(f"| {name} | {composite} | {distance:.2e} | {where} | {'yes' if good else 'NO'} |", flush=True)
    return ok


def run_compare(workdir: Path, cpu_only: bool, zennit: bool) -> int:
    """Step 3: compare.py on the device with IO binding."""
    import compare
    if cpu_only:
        argv = ["--provider", "cpu", "--models", "mlp,resnet18", "--batches", "1"]
    else:
        argv = ["--provider", "cuda", "--models", "resnet50,vgg16", "--batches", "1,8,32"]
    argv += ["--io-binding", "--no-memory", "--no-depth", "--repeats", "5", "--warmup", "2", "--budget", "10",
             "--min-seconds", "1", "--workdir", str(workdir)]
    if not zennit:
        argv.append("--no-zennit")
    print(f"[3] benchmarks/compare.py {' '.join(argv)}", flush=True)
    return compare.main(argv)


def main(argv=None) -> int:
    """Run the three steps; 0 when every check passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU (tests the script)")
    parser.add_argument("--no-zennit", action="store_true", help="leave Zennit out of the comparison table")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import torch
    start = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="onnxlrp-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}; torch "
          f"{torch.__version__} (CUDA: {torch.cuda.is_available()}); mode: {'CPU dry run' if args.cpu else 'GPU'}",
          flush=True)
    import models
    from compare import export
    mlp, shape = models.build("mlp")
    ok = check_provider(export(mlp, shape, workdir / "mlp.onnx"),
                        "CPUExecutionProvider" if args.cpu else "CUDAExecutionProvider")
    if not ok and not args.cpu:
        print("CUDA does not initialise: onnxruntime-gpu, the CUDA/cuDNN libraries ('.[cuda]') or the driver are "
              "missing; stopping here")
        return 1
    ok &= check_relevance(workdir, args.cpu)
    zennit = not args.no_zennit and (args.cpu or torch.cuda.is_available())
    if not args.no_zennit and not zennit:
        print("torch has no CUDA here: Zennit is left out of the table (a CPU Zennit at batch 32 would take minutes)")
    ok &= run_compare(workdir, args.cpu, zennit) == 0
    print(f"gpu check {'passed' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
