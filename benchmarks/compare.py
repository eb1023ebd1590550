"""onnxlrp against the onnxruntime forward pass and against Zennit, on this machine, in one run.

    python benchmarks/compare.py                  # the full table (several minutes on 2 cores)
    python benchmarks/compare.py --quick          # MLP and ResNet-18 at batch 1, no memory probes (~1-2 min)
    python benchmarks/compare.py --models resnet18,vgg16 --batches 1,8 --repeats 5 --out table.md
    python benchmarks/compare.py --provider cuda --io-binding --models resnet50 --batches 1,8,32 --no-memory

Builds the models in PyTorch with random weights from a fixed seed (benchmarks/models.py), exports them with the
legacy exporter (BatchNorm in eval mode, folded), compiles them per composite, and times, interleaved in rounds
after warm-up (medians; the torch calls in a block of their own): the onnxruntime forward of the original model, the onnxlrp explanation (the compiled
graph's session.run, and Explainer.explain() with its Python-side checks), the torch forward, and Zennit with the
same composite and canonizers. Peak memory is measured in a fresh process per configuration (resident set while
explaining); compile time for a ResNet-50-sized graph at 1x, 2x and 4x depth.

--provider cuda runs every onnxruntime session on the CUDA provider (TF32 off, so that float32 means float32) and
Zennit on torch's CUDA device where torch has one (else on the CPU, said in the header line); --io-binding binds the
inputs and outputs of the timed session.run calls on the provider's device (copied there once, no copies in the
timed loop). benchmarks/gpu_check.sh runs it that way.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

COMPOSITES = ("epsilon_plus", "epsilon_gamma_box")
FLOOR_TARGET = 1.25  # explanation / forward over the arithmetic floor (issue 17)
ZENNIT_TARGET, FILE_TARGET, COMPILE_TARGET_S = 4.0, 3.0, 3.0
LOW, HIGH = -3.0, 3.0  # z^B bounds of epsilon_gamma_box (onnxlrp's defaults); inputs are clipped to them
ALL_MODELS = ("mlp", "vgg16", "resnet18", "resnet50", "mobilenetv2")
# TF32 off on the GPU: the CUDA rows then compute in float32, as the CPU ones and Zennit do
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]}


def parse_args(argv=None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="MLP and ResNet-18, batch 1, no memory or depth probes")
    p.add_argument("--models", default=None, help=f"comma-separated, from {','.join(ALL_MODELS)}")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--composites", default=",".join(COMPOSITES))
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per configuration (default 7, quick 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget", type=float, default=90.0, help="seconds of timed rounds per configuration (min 3)")
    p.add_argument("--min-seconds", type=float, default=4.0,
                   help="fast configurations get more rounds (up to 20x --repeats) until this many seconds")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for onnxruntime and torch")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu", help="onnxruntime provider (and torch "
                   "device for Zennit where torch has it)")
    p.add_argument("--io-binding", action="store_true",
                   help="bind inputs and outputs of the timed session.run calls on the provider's device")
    p.add_argument("--no-zennit", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-depth", action="store_true", help="skip the compile-time growth at 1x/2x/4x depth")
    p.add_argument("--workdir", default=None, help="where exported/compiled models go (default: a temp folder)")
    p.add_argument("--out", default=None, help="also write the tables (markdown) to this file")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: memory probe in a child process
    p.add_argument("--probe-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--probe-composite", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or "mlp,resnet18"
        args.batches = args.batches or "1"
        args.repeats = args.repeats or 5
        args.no_memory = args.no_depth = True
    args.models = [m for m in (args.models or ",".join(ALL_MODELS)).split(",") if m]
    args.batches = [int(b) for b in (args.batches or "1,8").split(",") if b]
    args.composites = [c for c in args.composites.split(",") if c]
    args.repeats = args.repeats or 7
    unknown = sorted(set(args.models) - set(ALL_MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(ALL_MODELS)}")
    return args


# ---- models -------------------------------------------------------------------------------------------------------
def export(model, shape: tuple, path: Path) -> Path:
    """Legacy torch.onnx export with a dynamic batch axis (BatchNorm in eval mode is folded into the conv)."""
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros((1,) + tuple(shape)),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def sample(shape: tuple, batch: int):
    """A seeded standard-normal batch clipped to the z^B bounds."""
    import numpy as np
    x = np.random.default_rng(1234 + batch).standard_normal((batch,) + tuple(shape))
    return np.clip(x, LOW, HIGH).astype(np.float32)


def params(composite: str):
    """The composite parameters used for both onnxlrp and Zennit."""
    return {"low": LOW, "high": HIGH} if composite == "epsilon_gamma_box" else None


def prepare(name: str, composites: list, workdir: Path) -> dict:
    """Build, export and compile one model; file sizes and compile times."""
    import models
    import onnxlrp
    from onnxlrp.io import save_model
    model, shape = models.build(name)
    original = workdir / f"{name}.onnx"
    if not original.exists():
        export(model, shape, original)
    info = {"model": model, "shape": shape, "original": original, "compiled": {}, "compile_s": {}, "size_mb": {},
            "original_mb": _file_mb(original), "floor": {}}
    forward_macs = floor_macs(original, shape)
    for composite in composites:
        start = time.perf_counter()
        compiled = onnxlrp.compile(str(original), composite, params=params(composite))
        info["compile_s"][composite] = time.perf_counter() - start
        path = workdir / f"{name}.{composite}.onnx"
        save_model(compiled, str(path))
        info["compiled"][composite] = path
        info["size_mb"][composite] = _file_mb(path)
        info["floor"][composite] = floor_macs(path, shape) / forward_macs
    return info


def floor_macs(path: Path, shape: tuple) -> int:
    """Multiply-accumulates of a model's convolutions and matrix products at batch 1: the compiled graph's over the
    original's is the arithmetic floor of explanation / forward (a pass per modified weight and direction)."""
    import onnx

    from deployed_models import _specialised, macs
    return macs(_specialised(onnx.load(str(path)), "input", (1,) + tuple(shape)))


def _file_mb(path: Path) -> float:
    """Size of a model file plus its external data, MiB."""
    data = Path(str(path) + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 2 ** 20


# ---- timing -------------------------------------------------------------------------------------------------------
def time_batch(name: str, info: dict, batch: int, args) -> dict:
    """Interleaved medians of every measured call for one model and batch, plus parity with Zennit."""
    import numpy as np
    import torch

    import onnxlrp
    from measure import interleaved, session, session_options
    x = sample(info["shape"], batch)
    providers = PROVIDERS[args.provider]
    forward = session(str(info["original"]), args.threads, providers)
    feeds = {forward.get_inputs()[0].name: x}
    calls = {"ort": bound_call(forward, feeds, args.provider) if args.io_binding
             else lambda: forward.run(None, feeds)}
    device = torch_device(args.provider)
    model = info["model"].to(device)
    xt = torch.tensor(x, device=device)

    def torch_forward():
        """The torch forward pass without autograd."""
        with torch.no_grad():
            return synchronized(model(xt))

    torch_calls = {"torch": torch_forward}  # timed in a block of their own: torch's OpenMP threads keep spinning
    explainers, results, contexts = {}, {}, []  # after each call and would slow the onnxruntime call after it
    for composite in args.composites:
        exp = onnxlrp.Explainer(str(info["compiled"][composite]), session_options=session_options(args.threads),
                                providers=providers)
        explainers[composite] = exp
        raw = {exp.inputs[0].name: x, "lrp_target": np.full(batch, -1, dtype=np.int64)}
        calls[f"run:{composite}"] = (bound_call(exp.session, raw, args.provider) if args.io_binding
                                     else lambda exp=exp, raw=raw: exp.session.run(None, raw))
        calls[f"api:{composite}"] = lambda exp=exp: exp.explain(x)
    if not args.no_zennit:
        import zennit_setup  # imports models first (the torchvision stand-in zennit needs)
        from zennit.attribution import Gradient
        for composite in args.composites:
            twin = copy.deepcopy(model)
            context = Gradient(model=twin, composite=zennit_setup.composite(name, composite, LOW, HIGH))
            attributor = context.__enter__()
            contexts.append(context)
            torch_calls[f"zennit:{composite}"] = lambda a=attributor: synchronized(a(xt, zennit_setup.attr_output))
    try:
        medians, rounds = interleaved(calls, args.warmup, args.repeats, args.budget, min_s=args.min_seconds)
        torch_medians, _ = interleaved(torch_calls, args.warmup, min(args.repeats, rounds), args.budget,
                                       min_s=args.min_seconds)
        medians.update(torch_medians)
        for composite in args.composites:
            if not args.no_zennit:
                _, ref = torch_calls[f"zennit:{composite}"]()
                mine = explainers[composite].explain(x).relevance["input"]
                ref = ref.detach().cpu().numpy()
                results[composite] = (_relative(mine, ref), None)
    finally:
        for context in contexts:
            context.__exit__(None, None, None)
    model.to("cpu")
    for composite, (parity, _) in list(results.items()):
        if batch == 1 and parity > 1e-4:  # float32 conditioning or a real difference? ask Zennit in float64
            results[composite] = (parity, _relative(explainers[composite].explain(x).relevance["input"],
                                                    zennit_float64(name, model, composite, x)))
    return {"medians": medians, "parity": results, "rounds": rounds}


def bound_call(session, feeds: dict, provider: str):
    """session.run with IO binding: the inputs copied to the provider's device once, the outputs left there."""
    import onnxruntime as ort
    device = "cuda" if provider == "cuda" else "cpu"
    binding = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(value, device, 0) for value in feeds.values()]
    for name, value in zip(feeds, values):
        binding.bind_ortvalue_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name, device)

    def call():
        """One run on the bound device values (onnxruntime waits for the device before it returns)."""
        return session.run_with_iobinding(binding)
    call.values = values  # the bound inputs live as long as the call
    return call


def torch_device(provider: str) -> str:
    """torch's device for the Zennit rows: CUDA where the provider is CUDA and torch has it, else the CPU."""
    import torch
    return "cuda" if provider == "cuda" and torch.cuda.is_available() else "cpu"


def synchronized(value):
    """value, after torch's CUDA work has finished (a no-op on the CPU)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return value


def _relative(a, b) -> float:
    """Relative L2 distance of a from b."""
    import numpy as np
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def zennit_float64(name: str, model, composite: str, x):
    """Zennit's relevance computed in float64 (the reference when float32 rounding dominates the difference)."""
    import torch
    from zennit.attribution import Gradient

    import zennit_setup
    twin = copy.deepcopy(model).double()
    with Gradient(model=twin, composite=zennit_setup.composite(name, composite, LOW, HIGH)) as attributor:
        _, ref = attributor(torch.tensor(x, dtype=torch.float64), zennit_setup.attr_output)
    return ref.detach().numpy()


# ---- memory (a fresh process per configuration) ------------------------------------------------------------------
def probe(args) -> None:
    """Child process: set up one thing, then print its resident memory before and while it runs (JSON)."""
    from measure import peak_during, session, session_options
    name, batch, composite, workdir = args.probe_model, args.probe_batch, args.probe_composite, Path(args.workdir)
    if args.probe == "ort":  # no torch in this process: its peak is onnxruntime's alone
        sess = session(str(workdir / f"{name}.onnx"), args.threads)
        x = sample(tuple(sess.get_inputs()[0].shape[1:]), batch)
        feeds = {sess.get_inputs()[0].name: x}
        result = peak_during(lambda: sess.run(None, feeds))
    elif args.probe == "onnxlrp":
        import onnxlrp
        exp = onnxlrp.Explainer(str(workdir / f"{name}.{composite}.onnx"), providers=["CPUExecutionProvider"],
                                session_options=session_options(args.threads))
        x = sample(tuple(exp.inputs[0].shape[1:]), batch)
        result = peak_during(lambda: exp.explain(x))
    else:
        import torch

        import models  # before zennit: it installs the torchvision stand-in zennit imports
        import zennit_setup
        from zennit.attribution import Gradient
        torch.set_num_threads(args.threads)
        model, shape = models.build(name)
        xt = torch.tensor(sample(shape, batch))
        with Gradient(model=model, composite=zennit_setup.composite(name, composite, LOW, HIGH)) as attributor:
            result = peak_during(lambda: attributor(xt, zennit_setup.attr_output))
    print(json.dumps(result))


def memory(name: str, batch: int, composites: list, args, workdir: Path) -> dict:
    """Peak resident MiB per configuration, each in its own process."""
    kinds = [("ort", None)] + [("onnxlrp", c) for c in composites]
    if not args.no_zennit:
        kinds += [("zennit", c) for c in composites]
    out = {}
    for kind, composite in kinds:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", kind, "--probe-model", name,
               "--probe-batch", str(batch), "--workdir", str(workdir), "--threads", str(args.threads)]
        if composite:
            cmd += ["--probe-composite", composite]
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        out[(kind, composite)] = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    return out


# ---- compile time growth ------------------------------------------------------------------------------------------
def depth_growth(workdir: Path, depths=(1, 2, 4)) -> list:
    """Compile time (epsilon_plus) and node counts of ResNet-50 with every stage's blocks repeated 1x, 2x, 4x."""
    import onnx
    import torch

    import models
    import onnxlrp
    rows = []
    for depth in depths:
        torch.manual_seed(0)
        model = models.resnet50(depth).eval()
        # distinct BN statistics: with identical ones the exporter shares one folded bias through Identity nodes
        models.randomize_batchnorm(model, torch.Generator().manual_seed(1))
        path = workdir / f"resnet50_x{depth}.onnx"
        if not path.exists():
            export(model, (3, 224, 224), path)
        source = onnx.load(str(path))
        start = time.perf_counter()
        compiled = onnxlrp.compile(source, "epsilon_plus")
        seconds = time.perf_counter() - start
        rows.append({"depth": depth, "nodes": len(source.graph.node), "compiled_nodes": len(compiled.graph.node),
                     "compile_s": seconds})
    return rows


# ---- tables -------------------------------------------------------------------------------------------------------
def _ms(seconds) -> str:
    """Milliseconds, 3 significant digits."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _mark(ok: bool) -> str:
    """Target met or not."""
    return "yes" if ok else "NO"


def _parity(parity, parity64) -> str:
    """Relative L2 distance to Zennit (float32), and to Zennit in float64 where that was asked."""
    if parity is None:
        return "-"
    return f"{parity:.1e}" + (f" (f64: {parity64:.1e})" if parity64 is not None else "")


def main_table(rows: list) -> list:
    """The ratio table, markdown lines. 'at floor' is Zennit / (floor x ORT fwd): the speed-up over Zennit of an
    explanation that took exactly its arithmetic floor, the most any implementation of these passes reaches here."""
    head = ("| model | batch | ORT fwd ms | torch fwd ms | composite | onnxlrp ms | x ORT fwd | floor "
            f"| x floor (<= {FLOOR_TARGET:g}) | explain() ms | Zennit ms | Zennit / onnxlrp (>= {ZENNIT_TARGET:g}) "
            "| at floor | peak MiB (working) onnxlrp / Zennit / ORT fwd | parity | rounds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        med = r["medians"]
        for composite in r["composites"]:
            run = med[f"run:{composite}"]
            ratio = run / med["ort"]
            floor = r["floor"][composite]
            zen = med.get(f"zennit:{composite}")
            speedup = f"{zen / run:.1f}x {_mark(zen / run >= ZENNIT_TARGET)}" if zen else "-"
            at_floor = f"{zen / (floor * med['ort']):.1f}x" if zen else "-"
            mem = r.get("memory") or {}
            peaks = [mem.get(k) for k in (("onnxlrp", composite), ("zennit", composite), ("ort", None))]
            peak_text = " / ".join(f"{p['peak_mb']:.0f} ({p['peak_mb'] - p['before_mb']:.0f})" if p else "-"
                                   for p in peaks)
            if peaks[0] and peaks[1]:
                peak_text += f" {_mark(peaks[0]['peak_mb'] <= peaks[1]['peak_mb'])}"
            parity, parity64 = r["parity"].get(composite, (None, None))
            lines.append(f"| {r['model']} | {r['batch']} | {_ms(med['ort'])} | {_ms(med['torch'])} | {composite} "
                         f"| {_ms(run)} | {ratio:.2f}x | {floor:.2f}x | {ratio / floor:.2f} "
                         f"{_mark(ratio / floor <= FLOOR_TARGET)} "
                         f"| {_ms(med[f'api:{composite}'])} | {_ms(zen)} | {speedup} | {at_floor} | {peak_text} "
                         f"| {_parity(parity, parity64)} | {r['rounds']} |")
    return lines


def size_table(infos: dict) -> list:
    """Compile time and file size per model and composite, markdown lines."""
    lines = ["| model | composite | compile s | original MiB | compiled MiB | x original (<= 3) |", "|---|---|---|---|---|---|"]
    for name, info in infos.items():
        for composite, size in info["size_mb"].items():
            factor = size / info["original_mb"]
            lines.append(f"| {name} | {composite} | {info['compile_s'][composite]:.2f} | {info['original_mb']:.1f} "
                         f"| {size:.1f} | {factor:.2f}x {_mark(factor <= FILE_TARGET)} |")
    return lines


def depth_table(rows: list) -> list:
    """Compile-time growth, markdown lines."""
    lines = ["| ResNet-50 depth | nodes | compiled nodes | compile s (< 3 s at 1x) | s per 1x |", "|---|---|---|---|---|"]
    base = rows[0]["compile_s"] if rows else 1.0
    for r in rows:
        ok = f" {_mark(r['compile_s'] < COMPILE_TARGET_S)}" if r["depth"] == 1 else ""
        lines.append(f"| {r['depth']}x | {r['nodes']} | {r['compiled_nodes']} | {r['compile_s']:.2f}{ok} "
                     f"| {r['compile_s'] / base / r['depth']:.2f} |")
    return lines


def main(argv=None) -> int:
    """Run the benchmark and print the tables."""
    args = parse_args(argv)
    if args.probe:
        probe(args)
        return 0
    import onnxruntime
    import torch

    from onnxlrp.bench import shared_thread_pool
    shared_thread_pool(args.threads)  # before the first session: all sessions share one pool (see its docstring)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32, as onnxruntime's
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="onnxlrp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    binding = ", IO binding" if args.io_binding else ""
    print(f"onnxruntime {onnxruntime.__version__} ({args.provider.upper()}{binding}), torch {torch.__version__} "
          f"(Zennit on {torch_device(args.provider).upper()}), {args.threads} threads, {os.cpu_count()} CPUs; "
          f"models in {workdir}", flush=True)
    infos, rows = {}, []
    for name in args.models:
        print(f"[{name}] export + compile ...", flush=True)
        info = prepare(name, args.composites, workdir)
        infos[name] = info
        for batch in args.batches:
            print(f"[{name}] batch {batch}: timing ...", flush=True)
            row = {"model": name, "batch": batch, "composites": args.composites, "floor": info["floor"]}
            row.update(time_batch(name, info, batch, args))
            if not args.no_memory:
                print(f"[{name}] batch {batch}: memory ...", flush=True)
                row["memory"] = memory(name, batch, args.composites, args, workdir)
            rows.append(row)
            print("\n".join(main_table([row])[2:]), flush=True)
        info.pop("model")
    depth = [] if args.no_depth else depth_growth(workdir)
    text = ["## Explanation vs forward vs Zennit", "", *main_table(rows), "", "## Compile time and file size", "",
            *size_table(infos)]
    if depth:
        text += ["", "## Compile-time growth (epsilon_plus)", "", *depth_table(depth)]
    print("\n" + "\n".join(text))
    if args.out:
        Path(args.out).write_text("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
