"""Print the largest relative-L2 error against Zennit per composite (MLP and CNN, both torch exporters).

Run: .venv/bin/python benchmarks/parity.py   (needs the test extras: make test installs them)
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import _install_torchvision_stub  # noqa: E402

_install_torchvision_stub()

import torch  # noqa: E402
import zennit  # noqa: E402

import onnxlrp  # noqa: E402
from test_zennit_parity import COMPOSITES, _cnn, _mlp, _zennit_composite  # noqa: E402
from torch_utils import EXPORTERS, export, relative_l2, zennit_relevance  # noqa: E402


def main() -> None:
    """Export both models with both exporters, explain with every composite, print the worst error."""
    folder = Path(tempfile.mkdtemp())
    rows = []
    for composite in COMPOSITES:
        worst = 0.0
        for label, make, shape in (("mlp", _mlp, (4, 20)), ("cnn", _cnn, (3, 3, 8, 8))):
            model = make().eval()
            x = np.clip(np.random.default_rng(7).normal(size=shape), -2.5, 2.5).astype(np.float32)
            for exporter in EXPORTERS:
                path = export(model, torch.tensor(x), folder / f"{label}_{exporter}.onnx", exporter)
                params = {"low": -2.5, "high": 2.5} if composite == "epsilon_gamma_box" else None
                exp = onnxlrp.Explainer(str(path), composite, params=params).explain(x, target=1)
                want = zennit_relevance(zennit, model, x, 1, _zennit_composite(zennit, composite, -2.5, 2.5))
                worst = max(worst, relative_l2(exp.relevance["input"], want))
        rows.append((composite, worst))
    print(f"{'composite':28s} largest relative L2 error vs Zennit (MLP + CNN, legacy + dynamo exporters)")
    for composite, worst in rows:
        print(f"{composite:28s} {worst:.2e}")


if __name__ == "__main__":
    main()
