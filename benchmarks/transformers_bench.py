"""AttnLRP on a BERT-base-shaped encoder (12 layers, hidden 768, 12 heads, sequence 128): onnxlrp's explanation
against onnxruntime's forward pass (target: at most 3x) and against LXT 2.1 on torch CPU (target: faster), peak
memory against LXT's, and the relevance of both (relative L2).

    .venv/bin/python benchmarks/transformers_bench.py [--layers 12] [--hidden 768] [--seq 128] [--batch 1 8]
    .venv/bin/python benchmarks/transformers_bench.py --provider cuda --io-binding --no-memory --batch 1 8 32

The model is Hugging Face's BertForSequenceClassification with random, perturbed weights, exported by the legacy
torch exporter (dynamic batch and sequence axes). Every measurement runs in a fresh process: timing (onnxruntime
forward and onnxlrp explanation interleaved in one process sharing one thread pool; LXT's forward + backward in
its own), and peak resident memory (VmHWM) of a process that only loads and explains (or only runs LXT, or only
the forward pass). Working memory = peak - resident memory once the model is loaded.

--provider cuda runs both onnxruntime sessions on the CUDA provider (TF32 off) and LXT on torch's CUDA device where
torch has one (else on the CPU, said in the header line); --io-binding also times the compiled graph's session.run
with its inputs and outputs bound on the provider's device (copied there once, no copies in the timed loop; the
forward pass likewise) and takes that as the explanation's time; LXT's inputs are then on its device beforehand.
The memory probes stay on the CPU (host resident memory). benchmarks/gpu_check.py runs it that way.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TARGET = 1  # the class explained
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def _config(args):
    """BERT-base's shape, eager attention, 2 labels."""
    import transformers as tr
    return tr.BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         intermediate_size=4 * args.hidden, num_labels=2, attn_implementation="eager")


def token_inputs(batch: int, seq: int) -> dict:
    """Token ids and an attention mask with some padding."""
    g = np.random.default_rng(batch)
    ids = g.integers(1000, 30000, size=(batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[:, seq - seq // 8:] = 0 if batch > 1 else 1
    return {"input_ids": ids, "attention_mask": mask}


def prepare(args, folder: Path) -> None:
    """The model's weights (for LXT), its legacy export and its compiled AttnLRP graph, into folder."""
    import torch
    import transformers as tr
    from transformer_models import Logits, perturb
    torch.manual_seed(0)
    model = tr.BertForSequenceClassification(_config(args)).eval()
    perturb(model, 0)
    torch.save(model.state_dict(), folder / "weights.pt")
    example = token_inputs(1, args.seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model, "bert"), tuple(torch.from_numpy(v) for v in example.values()),
                          str(folder / "bert.onnx"), input_names=list(example), output_names=["logits"],
                          dynamo=False, opset_version=17, dynamic_axes={n: {0: "N", 1: "T"} for n in example})


def _memory() -> dict:
    """Resident and peak resident memory of this process (MiB)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(line.split()[1]) / 1024
    return values


def worker(kind: str, args, folder: Path) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    from measure import reset_peak
    import onnxlrp
    from onnxlrp.bench import interleaved, session_options, shared_thread_pool
    out: dict = {}
    if kind == "timing":
        from compare import PROVIDERS, bound_call
        from measure import session
        from onnxlrp.io import save_model
        start = time.perf_counter()
        save_model(onnxlrp.compile(folder / "bert.onnx", "attnlrp"), folder / "bert_attnlrp.onnx")
        out["compile_s"] = time.perf_counter() - start
        shared_thread_pool(args.threads)  # after compiling: its folding check runs a session of its own
        providers = PROVIDERS[args.provider]
        explainer = onnxlrp.Explainer(folder / "bert_attnlrp.onnx", session_options=session_options(args.threads),
                                      providers=providers)
        forward = session(str(folder / "bert.onnx"), args.threads, providers)
        for batch in args.batch:
            feeds = token_inputs(batch, args.seq)
            calls = {"forward": lambda: forward.run(None, feeds),
                     "explain": lambda: explainer.explain(feeds, target=TARGET)}
            if args.io_binding:
                raw = {**feeds, "lrp_target": np.full(batch, TARGET, np.int64)}
                calls["forward"] = bound_call(forward, feeds, args.provider)
                calls["run"] = bound_call(explainer.session, raw, args.provider)
            times, rounds = interleaved(calls, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget,
                                        min_s=args.min_seconds, settle=True)
            exp = explainer.explain(feeds, target=TARGET)
            np.save(folder / f"onnxlrp_{batch}.npy", exp.relevance["input_ids"])
            out[f"batch{batch}"] = {**times, "rounds": rounds,
                                    "conservation": float(exp.conservation()["relative_error"].max())}
        return out
    if kind in ("explain_memory", "forward_memory"):
        import onnxruntime as ort
        feeds = token_inputs(max(args.batch), args.seq)
        if kind == "explain_memory":
            explainer = onnxlrp.Explainer(folder / "bert_attnlrp.onnx", session_options=session_options(args.threads),
                                          providers=["CPUExecutionProvider"])
            run = lambda: explainer.explain(feeds, target=1)  # noqa: E731
        else:
            session = ort.InferenceSession(str(folder / "bert.onnx"), session_options(args.threads),
                                           providers=["CPUExecutionProvider"])
            run = lambda: session.run(None, feeds)  # noqa: E731
        loaded = _memory()["VmRSS"]
        reset_peak()
        run()
        run()
        return {"loaded_mb": loaded, "peak_mb": _memory()["VmHWM"]}
    if kind in ("lxt", "lxt_memory"):
        from compare import torch_device
        device = "cpu" if kind == "lxt_memory" else torch_device(args.provider)
        explain = _lxt(args, folder, device)
        if kind == "lxt_memory":
            feeds = _torch_inputs(token_inputs(max(args.batch), args.seq), device)
            loaded = _memory()["VmRSS"]
            reset_peak()
            explain(feeds)
            explain(feeds)
            return {"loaded_mb": loaded, "peak_mb": _memory()["VmHWM"]}
        out["device"] = device
        for batch in args.batch:
            feeds = _torch_inputs(token_inputs(batch, args.seq), device)
            times, rounds = interleaved({"lxt": lambda: explain(feeds)}, warmup=args.warmup, repeats=args.repeats,
                                        budget_s=args.budget, min_s=args.min_seconds)
            np.save(folder / f"lxt_{batch}.npy", explain(feeds).cpu().numpy())
            out[f"batch{batch}"] = {**times, "rounds": rounds}
        return out
    raise ValueError(kind)


def _torch_inputs(feeds: dict, device: str) -> dict:
    """The inputs as torch tensors on device (copied once, before any timed call)."""
    import torch
    return {name: torch.from_numpy(value).to(device) for name, value in feeds.items()}


def _lxt(args, folder: Path, device: str = "cpu"):
    """LXT's AttnLRP for the saved model on torch's device: a function (torch inputs on that device) -> token
    relevance (N, T) on the device, inputs_embeds x grad, returned once the device has finished."""
    import torch
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32, as onnxruntime's
    from compare import synchronized
    from lxt_reference import _patch
    _patch("bert", False)
    import transformers as tr
    model = tr.BertForSequenceClassification(_config(args)).eval()
    model.load_state_dict(torch.load(folder / "weights.pt"))
    model.to(device)
    embed = model.get_input_embeddings()

    def explain(feeds):
        leaf = embed(feeds["input_ids"]).detach().requires_grad_()
        logits = model(inputs_embeds=leaf, attention_mask=feeds["attention_mask"], return_dict=False)[0]
        logits[:, TARGET].sum().backward()
        return synchronized((leaf * leaf.grad).sum(-1).detach())
    return explain


def _spawn(kind: str, argv: list, folder: Path) -> dict:
    """Run one worker in a fresh process; its JSON result."""
    result = subprocess.run([sys.executable, __file__, "--worker", kind, "--folder", str(folder), *argv],
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"worker {kind} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=None,
                        help="stop timing a batch after this many seconds of timed rounds (at least 3 rounds)")
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="fast batches get more rounds (up to 20x --repeats) until this many seconds")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu",
                        help="onnxruntime provider, and torch's device for LXT where torch has it")
    parser.add_argument("--io-binding", action="store_true",
                        help="time the compiled graph's session.run on inputs and outputs bound on the device")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads == 0:
        import os
        args.threads = os.cpu_count() or 1
    return args


def _forwarded(args) -> list:
    """The command line of a worker process."""
    argv = [f"--layers={args.layers}", f"--hidden={args.hidden}", f"--seq={args.seq}", "--batch",
            *map(str, args.batch), f"--threads={args.threads}", f"--repeats={args.repeats}",
            f"--warmup={args.warmup}", f"--min-seconds={args.min_seconds}", f"--provider={args.provider}"]
    if args.budget is not None:
        argv.append(f"--budget={args.budget}")
    return argv + (["--io-binding"] if args.io_binding else [])


def table(args, timing: dict, lxt: dict, folder: Path) -> list:
    """The timing table (markdown lines): onnxruntime forward, onnxlrp, LXT, relevance parity per batch."""
    from compare import _ms, _relative
    model = f"encoder {args.layers}x{args.hidden}, T={args.seq}"
    device = lxt["device"].upper()
    bound = args.io_binding
    head = (f"| model | batch | ORT fwd ms | onnxlrp ms{' (IO binding)' if bound else ' (explain())'} "
            f"| x ORT fwd (<= 3) |{' explain() ms |' if bound else ''} LXT ms (torch {device}) "
            f"| LXT / onnxlrp (> 1) | relative L2 vs LXT | conservation | rounds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for batch in args.batch:
        t, x = timing[f"batch{batch}"], lxt[f"batch{batch}"]
        ours = t["run"] if bound else t["explain"]
        api = f" {_ms(t['explain'])} |" if bound else ""
        l2 = _relative(np.load(folder / f"onnxlrp_{batch}.npy"), np.load(folder / f"lxt_{batch}.npy"))
        lines.append(f"| {model} | {batch} | {_ms(t['forward'])} | {_ms(ours)} | {ours / t['forward']:.2f}x |{api} "
                     f"{_ms(x['lxt'])} | {x['lxt'] / ours:.2f}x | {l2:.1e} | {t['conservation']:.1e} "
                     f"| {min(t['rounds'], x['rounds'])} |")
    return lines


def main(argv=None) -> int:
    """Prepare, measure in fresh processes, print the table."""
    args = parse_args(argv)
    from conftest import _install_torchvision_stub
    _install_torchvision_stub()
    if args.worker:
        print(json.dumps(worker(args.worker, args, Path(args.folder))))
        return 0
    forwarded = _forwarded(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        prepare(args, folder)
        print(f"BERT-base-shaped encoder: {args.layers} layers, hidden {args.hidden}, sequence {args.seq}, "
              f"{args.threads} threads; exported in {time.perf_counter() - start:.0f} s", flush=True)
        timing = _spawn("timing", forwarded, folder)
        lxt = _spawn("lxt", forwarded, folder)
        binding = ", IO binding" if args.io_binding else ""
        print(f"compile {timing['compile_s']:.1f} s; onnxruntime on {args.provider.upper()}{binding}, LXT on torch "
              f"{lxt['device'].upper()}{'' if lxt['device'] == args.provider else ' (torch has no CUDA here)'}\n")
        print("\n".join(table(args, timing, lxt, folder)), flush=True)
        if not args.no_memory:
            memory = {k: _spawn(k, forwarded, folder) for k in ("explain_memory", "forward_memory", "lxt_memory")}
            b = max(args.batch)
            print(f"\npeak memory at batch {b} (MiB, working = peak - loaded; CPU): "
                  + ", ".join(f"{name} {memory[k]['peak_mb']:.0f} ({memory[k]['peak_mb'] - memory[k]['loaded_mb']:.0f})"
                              for name, k in (("onnxlrp", "explain_memory"), ("LXT", "lxt_memory"),
                                              ("ORT forward", "forward_memory"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
