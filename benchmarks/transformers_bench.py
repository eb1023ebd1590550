"""AttnLRP on a BERT-base-shaped encoder (12 layers, hidden 768, 12 heads, sequence 128): onnxlrp's explanation
against onnxruntime's forward pass (target: at most 3x) and against LXT 2.1 on torch CPU (target: faster), peak
memory against LXT's, and the relevance of both (relative L2).

    .venv/bin/python benchmarks/transformers_bench.py [--layers 12] [--hidden 768] [--seq 128] [--batch 1 8]

The model is Hugging Face's BertForSequenceClassification with random, perturbed weights, exported by the legacy
torch exporter (dynamic batch and sequence axes). Every measurement runs in a fresh process: timing (onnxruntime
forward and onnxlrp explanation interleaved in one process sharing one thread pool; LXT's forward + backward in
its own), and peak resident memory (VmHWM) of a process that only loads and explains (or only runs LXT, or only
the forward pass). Working memory = peak - resident memory once the model is loaded.
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
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def _config(args):
    """BERT-base's shape, eager attention, 2 labels."""
    import transformers as tr
    return tr.BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         intermediate_size=4 * args.hidden, num_labels=2, attn_implementation="eager")


def _inputs(batch: int, seq: int) -> dict:
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
    example = _inputs(1, args.seq)
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
        import onnxruntime as ort
        from onnxlrp.io import save_model
        start = time.perf_counter()
        save_model(onnxlrp.compile(folder / "bert.onnx", "attnlrp"), folder / "bert_attnlrp.onnx")
        out["compile_s"] = time.perf_counter() - start
        shared_thread_pool(args.threads)  # after compiling: its folding check runs a session of its own
        explainer = onnxlrp.Explainer(folder / "bert_attnlrp.onnx", session_options=session_options(args.threads))
        forward = ort.InferenceSession(str(folder / "bert.onnx"), session_options(args.threads),
                                       providers=["CPUExecutionProvider"])
        for batch in args.batch:
            feeds = _inputs(batch, args.seq)
            times, rounds = interleaved({"forward": lambda: forward.run(None, feeds),
                                         "explain": lambda: explainer.explain(feeds, target=1)},
                                        warmup=1, repeats=args.repeats, settle=True)
            exp = explainer.explain(feeds, target=1)
            np.save(folder / f"onnxlrp_{batch}.npy", exp.relevance["input_ids"])
            out[f"batch{batch}"] = {**times, "rounds": rounds,
                                    "conservation": float(exp.conservation()["relative_error"].max())}
        return out
    if kind in ("explain_memory", "forward_memory"):
        import onnxruntime as ort
        feeds = _inputs(max(args.batch), args.seq)
        if kind == "explain_memory":
            explainer = onnxlrp.Explainer(folder / "bert_attnlrp.onnx", session_options=session_options(args.threads))
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
        explain = _lxt(args, folder)
        if kind == "lxt_memory":
            feeds = _inputs(max(args.batch), args.seq)
            loaded = _memory()["VmRSS"]
            reset_peak()
            explain(feeds)
            explain(feeds)
            return {"loaded_mb": loaded, "peak_mb": _memory()["VmHWM"]}
        for batch in args.batch:
            feeds = _inputs(batch, args.seq)
            times, rounds = interleaved({"lxt": lambda: explain(feeds)}, warmup=1, repeats=args.repeats)
            np.save(folder / f"lxt_{batch}.npy", explain(feeds))
            out[f"batch{batch}"] = {**times, "rounds": rounds}
        return out
    raise ValueError(kind)


def _lxt(args, folder: Path):
    """LXT's AttnLRP for the saved model: a function feeds -> token relevance (N, T), inputs_embeds x grad."""
    import torch
    torch.set_num_threads(args.threads)
    from lxt_reference import _patch
    _patch("bert", False)
    import transformers as tr
    model = tr.BertForSequenceClassification(_config(args)).eval()
    model.load_state_dict(torch.load(folder / "weights.pt"))
    embed = model.get_input_embeddings()

    def explain(feeds):
        leaf = embed(torch.from_numpy(feeds["input_ids"])).detach().requires_grad_()
        logits = model(inputs_embeds=leaf, attention_mask=torch.from_numpy(feeds["attention_mask"]),
                       return_dict=False)[0]
        logits[:, 1].sum().backward()
        return (leaf * leaf.grad).sum(-1).detach().numpy()
    return explain


def _spawn(kind: str, argv: list, folder: Path) -> dict:
    """Run one worker in a fresh process; its JSON result."""
    result = subprocess.run([sys.executable, __file__, "--worker", kind, "--folder", str(folder), *argv],
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"worker {kind} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Prepare, measure in fresh processes, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads == 0:
        import os
        args.threads = os.cpu_count() or 1
    from conftest import _install_torchvision_stub
    _install_torchvision_stub()
    if args.worker:
        print(json.dumps(worker(args.worker, args, Path(args.folder))))
        return 0
    forwarded = [f"--layers={args.layers}", f"--hidden={args.hidden}", f"--seq={args.seq}", "--batch",
                 *map(str, args.batch), f"--threads={args.threads}", f"--repeats={args.repeats}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        prepare(args, folder)
        print(f"BERT-base-shaped encoder: {args.layers} layers, hidden {args.hidden}, sequence {args.seq}, "
              f"{args.threads} threads; exported in {time.perf_counter() - start:.0f} s")
        timing = _spawn("timing", forwarded, folder)
        lxt = _spawn("lxt", forwarded, folder)
        memory = {k: _spawn(k, forwarded, folder) for k in ("explain_memory", "forward_memory", "lxt_memory")}
        print(f"compile {timing['compile_s']:.1f} s\n")
        print("| batch | ORT forward ms | onnxlrp explain ms | x forward (<= 3) | LXT ms | LXT / onnxlrp (> 1) | "
              "relative L2 vs LXT | conservation |")
        print("|---|---|---|---|---|---|---|---|")
        for batch in args.batch:
            t, x = timing[f"batch{batch}"], lxt[f"batch{batch}"]
            ours, theirs = np.load(folder / f"onnxlrp_{batch}.npy"), np.load(folder / f"lxt_{batch}.npy")
            l2 = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
            print(f"| {batch} | {1e3 * t['forward']:.0f} | {1e3 * t['explain']:.0f} | "
                  f"{t['explain'] / t['forward']:.2f}x | {1e3 * x['lxt']:.0f} | {x['lxt'] / t['explain']:.2f}x | "
                  f"{l2:.1e} | {t['conservation']:.1e} |")
        b = max(args.batch)
        print(f"\npeak memory at batch {b} (MiB, working = peak - loaded): onnxlrp "
              f"{memory['explain_memory']['peak_mb']:.0f} ({memory['explain_memory']['peak_mb'] - memory['explain_memory']['loaded_mb']:.0f}), "
              f"LXT {memory['lxt_memory']['peak_mb']:.0f} "
              f"({memory['lxt_memory']['peak_mb'] - memory['lxt_memory']['loaded_mb']:.0f}), "
              f"ORT forward {memory['forward_memory']['peak_mb']:.0f} "
              f"({memory['forward_memory']['peak_mb'] - memory['forward_memory']['loaded_mb']:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
