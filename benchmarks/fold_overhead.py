"""What the folding stage costs and does on untrained models (BatchNorm straight from its constructor: the legacy
torch exporter writes Identity nodes for the identical statistics): nodes before and after, the fold, its check
against the original on a random input, the whole compile, and the conservation error of one explanation.

    .venv/bin/python benchmarks/fold_overhead.py [--models resnet18 mobilenetv2 resnet50] [--exporters legacy dynamo]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from models import MODELS  # noqa: E402
from torch_utils import export  # noqa: E402

import onnxlrp  # noqa: E402
from onnxlrp import fold  # noqa: E402
from onnxlrp.graph import load_model  # noqa: E402


def measure(name: str, exporter: str, folder: Path) -> dict:
    """One untrained model: export, fold (timed, check apart), compile (timed), explain once."""
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()  # untrained: every BatchNorm has weight 1, bias 0, mean 0, var 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(model, torch.randn(1, *shape), folder / f"{name}_{exporter}.onnx", exporter)
    source = load_model(str(path))
    start = time.perf_counter()
    folded = fold.fold_constants(source, check=False)
    fold_s = time.perf_counter() - start
    start = time.perf_counter()
    if folded is not source:
        fold.check_same_outputs(source, folded)
    check_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = onnxlrp.compile(str(path), "epsilon_plus")
    compile_s = time.perf_counter() - start
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    exp = onnxlrp.Explainer(compiled).explain(x)
    identities = sum(n.op_type == "Identity" for n in source.graph.node)
    return {"model": name, "exporter": exporter, "nodes": len(source.graph.node), "identity": identities,
            "folded nodes": len(folded.graph.node), "fold s": fold_s, "check s": check_s, "compile s": compile_s,
            "conservation": float(np.max(exp.conservation()["relative_error"]))}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2", "resnet50"])
    parser.add_argument("--exporters", nargs="+", default=["legacy"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for exporter in args.exporters:
                rows.append(measure(name, exporter, Path(tmp)))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) and k.endswith(" s") else
                 f"{v:.1e}" if isinstance(v, float) else str(v) for k, v in row.items()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
