"""Compiled file size against the original, on the shipped models, for every built-in composite.

    .venv/bin/python benchmarks/sizes.py          # a markdown table (a few seconds)

The compiled file holds the model's own forward graph (after canonicalisation: BatchNorm folded into the Conv next
to it), the relevance graph and its constants. Modified weights (W+, W-, gamma's) of weights under
DERIVE_MIN_SIZE elements are stored; larger ones are derived in the graph from W and folded by onnxruntime when
the session starts (benchmarks/compare.py measures those models: 1.00x-1.09x). Nothing the graph does not use is
kept (the count of unused initializers is printed to show it).
"""
from __future__ import annotations

import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import onnxlrp  # noqa: E402
from onnxlrp.composites import builtin_names  # noqa: E402
from onnxlrp.emitters.linear import DERIVE_MIN_SIZE  # noqa: E402

MODELS = HERE.parent / "models"


def main() -> None:
    """Print one row per shipped model and composite."""
    print("| model | composite | original KB | compiled KB | x original | unused initializers |")
    print("|---|---|---|---|---|---|")
    for path in sorted(MODELS.glob("*.onnx")):
        original = path.stat().st_size
        for composite in builtin_names(shared=False):
            compiled = onnxlrp.compile(str(path), composite)
            read = {name for node in compiled.graph.node for name in node.input}
            unused = sum(t.name not in read for t in compiled.graph.initializer)
            size = len(compiled.SerializeToString())
            print(f"| {path.name} | {composite} | {original / 1e3:.1f} | {size / 1e3:.1f} | "
                  f"{size / original:.2f}x | {unused} |")
    print(f"\n(modified weights of fewer than {DERIVE_MIN_SIZE} elements are stored)")


if __name__ == "__main__":
    main()
