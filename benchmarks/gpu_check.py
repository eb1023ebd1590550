"""The GPU check (benchmarks/gpu_check.sh runs it): CUDA is the provider onnxlrp picks, CUDA and CPU relevance agree
to 1e-4, and compare.py's table (ResNet-50) and transformers_bench.py's (BERT-base-shaped encoder) on the GPU with
IO binding.

    .venv/bin/python benchmarks/gpu_check.py            # on a machine with one NVIDIA GPU
    .venv/bin/python benchmarks/gpu_check.py --cpu      # the same steps on the CPU: tests this script without a GPU

Steps, each printing what it found, exit status 1 when a check fails:
1. `Explainer(model).provider` with providers left out is CUDAExecutionProvider (--cpu: CPUExecutionProvider);
2. the relevance, bias, stabilizer and total of the MLP and ResNet-18 of benchmarks/models.py (batch 4, random
   inputs, epsilon_plus and epsilon_gamma_box) and of a 2-layer BERT-shaped encoder (hidden 768, sequence 128,
   batch 2, attnlrp: the transformer emitters) on CUDA (TF32 off) against the CPU provider's: largest relative L2
   distance at most 1e-4 (--cpu: the CPU provider with all graph optimisations against none, which exercises the
   same comparison; encoder hidden 256, sequence 32);
3. benchmarks/compare.py with --provider cuda --io-binding for ResNet-50 at batch 1, 8 and 32, Zennit on torch's
   CUDA device where torch has one (--cpu: ResNet-18 at batch 1, --io-binding on the CPU);
4. benchmarks/transformers_bench.py with --provider cuda --io-binding for the BERT-base-shaped encoder (12 layers,
   hidden 768, sequence 128) at batch 1, 8 and 32: onnxruntime forward and onnxlrp's AttnLRP explanation on bound
   device values, LXT's forward + backward on torch's CUDA device (on the CPU where torch has no CUDA, said in the
   table), relevance of onnxlrp against LXT per batch (--cpu: 2 layers, hidden 256, batch 1 and 2).
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
# a term whose norm is under this share of the total relevance's is compared on that scale: AttnLRP gives a key
# projection's bias (analytically) zero relevance, the softmax being shift-invariant, so its value is float32
# rounding (~1e-9, which differs between kernels by ~100 % of itself)
FLOOR = 1e-3
CUDA = ("CUDAExecutionProvider", {"use_tf32": 0})  # TF32 would round convolutions to 10-bit mantissas
CHECK_MODELS = ("mlp", "resnet18")
COMPOSITES = ("epsilon_plus", "epsilon_gamma_box")
# the encoder of steps 2 and 4: (layers, hidden, sequence, batches)
ENCODER_CHECK = {"gpu": (2, 768, 128, (2,)), "cpu": (2, 256, 32, (2,))}
ENCODER_BENCH = {"gpu": (12, 768, 128, (1, 8, 32)), "cpu": (2, 256, 128, (1, 2))}


def relative(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> float:
    """Relative L2 distance of a from b (float64): ||a - b|| / max(||b||, floor)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), floor, 1e-30))


def largest_difference(mine, reference) -> tuple:
    """(largest relative L2 distance, the term it is in) over relevance, bias, stabilizer and total of two
    Explanations of the same batch; terms under FLOOR x the total's norm are measured on that scale."""
    terms = {f"relevance[{k}]": (v, reference.relevance[k]) for k, v in mine.relevance.items()}
    terms.update({f"bias[{k}]": (v, reference.bias[k]) for k, v in mine.bias.items()})
    terms["stabilizer"] = (mine.stabilizer, reference.stabilizer)
    terms["total"] = (mine.total, reference.total)
    floor = FLOOR * float(np.linalg.norm(np.asarray(reference.total, dtype=np.float64)))
    distances = {name: relative(a, b, floor) for name, (a, b) in terms.items()}
    worst = max(distances, key=distances.get)
    return distances[worst], worst


def check_provider(path: Path, expected: str) -> bool:
    """Step 1: the provider onnxlrp chooses by itself."""
    import onnxlrp
    provider = onnxlrp.Explainer(str(path)).provider
    ok = provider == expected
    print(f"[1] Explainer.provider = {provider} (expected {expected}): {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def relevance_cases(workdir: Path, cpu_only: bool):
    """(model, composite, compiled model, inputs, target) of step 2: the CNNs with both composites, the encoder with
    attnlrp."""
    import onnxlrp
    from compare import export, params, sample
    import models
    import transformers_bench
    for name in CHECK_MODELS:
        model, shape = models.build(name)
        source = export(model, shape, workdir / f"{name}.onnx")
        for composite in COMPOSITES:
            yield name, composite, onnxlrp.compile(str(source), composite, params=params(composite)), \
                sample(shape, 4), None
    layers, hidden, seq, (batch,) = ENCODER_CHECK["cpu" if cpu_only else "gpu"]
    folder = workdir / "encoder_check"
    folder.mkdir(exist_ok=True)
    transformers_bench.prepare(argparse.Namespace(layers=layers, hidden=hidden, seq=seq), folder)
    yield (f"encoder {layers}x{hidden}, T={seq}", "attnlrp", onnxlrp.compile(folder / "bert.onnx", "attnlrp"),
           transformers_bench.token_inputs(batch, seq), transformers_bench.TARGET)


def check_relevance(workdir: Path, cpu_only: bool) -> bool:
    """Step 2: the device's relevance against the CPU provider's, every term, every model and composite."""
    import onnxruntime as ort

    import onnxlrp
    label = "CPU (all optimisations) vs CPU (none)" if cpu_only else "CUDA (TF32 off) vs CPU"
    print(f"[2] relevance, {label}, tolerance {TOLERANCE:g} (relative L2 per term; a term under {FLOOR:g} of "
          f"the total's norm on that scale)")
    print("| model | composite | largest distance | in | ok |")
    print("|---|---|---|---|---|")
    ok = True
    for name, composite, compiled, x, target in relevance_cases(workdir, cpu_only):
        reference = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"]).explain(x, target=target)
        if cpu_only:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            device = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"], session_options=options)
        else:
            device = onnxlrp.Explainer(compiled, providers=[CUDA, "CPUExecutionProvider"])
        distance, where = largest_difference(device.explain(x, target=target), reference)
        good = distance <= TOLERANCE
        ok &= good
        print(f"| {name} | {composite} | {distance:.2e} | {where} | {'yes' if good else 'NO'} |", flush=True)
    return ok


def run_compare(workdir: Path, cpu_only: bool, zennit: bool) -> int:
    """Step 3: compare.py on the device with IO binding."""
    import compare
    if cpu_only:
        argv = ["--provider", "cpu", "--models", "resnet18", "--batches", "1"]
    else:
        argv = ["--provider", "cuda", "--models", "resnet50", "--batches", "1,8,32"]
    argv += ["--io-binding", "--no-memory", "--no-depth", "--repeats", "5", "--warmup", "2", "--budget", "10",
             "--min-seconds", "1", "--workdir", str(workdir)]
    if not zennit:
        argv.append("--no-zennit")
    print(f"[3] benchmarks/compare.py {' '.join(argv)}", flush=True)
    return compare.main(argv)


def run_encoder(cpu_only: bool, torch_cuda: bool) -> bool:
    """Step 4: transformers_bench.py on the device with IO binding (LXT on torch's CUDA device where it has one)."""
    import transformers_bench
    layers, hidden, seq, batches = ENCODER_BENCH["cpu" if cpu_only else "gpu"]
    warmup = 2 if torch_cuda and not cpu_only else 1  # one where LXT runs on the CPU: seconds a call at batch 32
    argv = [f"--layers={layers}", f"--hidden={hidden}", f"--seq={seq}", "--batch", *map(str, batches),
            f"--provider={'cpu' if cpu_only else 'cuda'}", "--io-binding", "--no-memory", "--repeats=5",
            f"--warmup={warmup}", "--budget=10", "--min-seconds=1"]
    print(f"\n[4] benchmarks/transformers_bench.py {' '.join(argv)}", flush=True)
    try:
        return transformers_bench.main(argv) == 0
    except RuntimeError as error:  # a worker process failed: its stderr's tail is in the message
        print(f"encoder benchmark FAILED: {error}")
        return False


def main(argv=None) -> int:
    """Run the four steps; 0 when every check passed."""
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
    ok &= run_encoder(args.cpu, torch.cuda.is_available())
    print(f"gpu check {'passed' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
