"""Real transformer exports through onnxlrp: Hugging Face BERT, DistilBERT, RoBERTa, GPT-2, Llama, Qwen2, ViT, DeiT
(tiny configs, perturbed random weights), timm's vit_tiny, deit_tiny, swin_tiny, convnext_atto, mixer and poolformer
(small settings), torch's nn.TransformerEncoder (fast path off), each with both torch exporters; compiled with
AttnLRP, explained on a batch of two, conservation checked (total = inputs + absorbed + stabilizer, target 1e-4).

    .venv/bin/python benchmarks/transformers_zoo.py [NAME ...] [--exporter legacy|dynamo] [--composite attnlrp]

Prints one table row per (model, exporter): nodes, compile s, explain ms, conservation error, absorbed share,
status. A subset runs in tests/test_transformers_zoo.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import _install_torchvision_stub  # noqa: E402  (timm imports torchvision: a stand-in module)
from transformer_zoo_models import LEGACY_STATIC, ZOO, export_zoo  # noqa: E402


def run_one(name: str, exporter: str, composite: str, folder: Path) -> dict:
    """Export, compile, explain one model; the row of the table."""
    import onnx
    import onnxlrp
    row = {"model": name, "exporter": exporter + (" (static)" if exporter == "legacy" and name in LEGACY_STATIC
                                                  else "")}
    try:
        t = time.perf_counter()
        path, inputs = export_zoo(name, folder / f"{name}_{exporter}.onnx", exporter == "dynamo")
        row["export s"] = time.perf_counter() - t
        row["nodes"] = len(onnx.load(str(path), load_external_data=False).graph.node)
        t = time.perf_counter()
        explainer = onnxlrp.Explainer(path, composite)
        row["compile s"] = time.perf_counter() - t
        explainer.explain(inputs)
        t = time.perf_counter()
        exp = explainer.explain(inputs)
        row["explain ms"] = 1e3 * (time.perf_counter() - t)
        check = exp.conservation()
        row["conservation"] = float(check["relative_error"].max())
        row["absorbed"] = float(np.mean(check["biases"] / check["total"]))
        row["status"] = "ok" if row["conservation"] < 1e-4 else "NOT CONSERVED"
    except Exception as exc:  # the table names what failed and why
        row["status"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:2000]}"
    return row


def main(argv=None) -> int:
    """Run the sweep and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(ZOO))
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], action="append")
    parser.add_argument("--composite", default="attnlrp")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    _install_torchvision_stub()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            for exporter in args.exporter or ["legacy", "dynamo"]:
                row = run_one(name, exporter, args.composite, Path(tmp))
                rows.append(row)
                print(_format([row], header=not rows[:-1]), flush=True)
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} conserve to 1e-4 with {args.composite}")
    return 1 if failed else 0


def _format(rows: list, header: bool) -> str:
    """Markdown table rows."""
    cols = ["model", "exporter", "nodes", "export s", "compile s", "explain ms", "conservation", "absorbed", "status"]
    fmt = {"export s": "{:.1f}", "compile s": "{:.2f}", "explain ms": "{:.1f}", "conservation": "{:.1e}",
           "absorbed": "{:+.1%}"}
    lines = []
    if header:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.get(c, "{}").format(r[c]) if c in r else "-" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
