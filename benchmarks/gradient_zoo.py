"""The gradient composite against torch autograd on every zoo model (tests/zoo.py), both torch exporters.

    .venv/bin/python benchmarks/gradient_zoo.py

Prints, per model and exporter, the relative L2 error of df/dx and of x * df/dx against torch autograd, the
remainder f - sum(x df/dx) - sum(b df/db) relative to the logit (zero for piecewise-linear networks), and the
export and compile times. tests/test_gradient.py asserts a subset (U-Net and the channels-last CNN, legacy exporter).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import _install_torchvision_stub  # noqa: E402

_install_torchvision_stub()

import torch  # noqa: E402

import onnxlrp  # noqa: E402
from torch_utils import export, relative_l2  # noqa: E402
from zoo import ZOO, build  # noqa: E402


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gradient_zoo_"))
    print("| model | exporter | df/dx rel. L2 | x df/dx rel. L2 | max remainder / |logit| | export s | compile s |")
    print("|---|---|---|---|---|---|---|")
    for name, entry in ZOO.items():
        model = build(name)
        x = np.clip(np.random.default_rng(7).normal(size=(2,) + entry.shape), -2.5, 2.5).astype(np.float32)
        targets = [1, 3] if not entry.flat_targets else [40, 700]
        xt = torch.tensor(x, requires_grad=True)
        out = model(xt).reshape(2, -1)
        out[torch.arange(2), torch.tensor(targets)].sum().backward()
        g = xt.grad.numpy().astype(np.float64)
        for exporter in ("legacy", "dynamo"):
            start = time.perf_counter()
            path = export(model, torch.tensor(x), folder / f"{name}_{exporter}.onnx", exporter)
            exported = time.perf_counter() - start
            start = time.perf_counter()
            explainer = onnxlrp.Explainer(str(path), "gradient")
            compiled = time.perf_counter() - start
            exp = explainer.explain(x, targets)
            remainder = float(np.max(np.abs(exp.stabilizer) / np.abs(exp.total)))
            print(f"| {name} | {exporter} | {relative_l2(exp.gradient['input'], g):.1e} | "
                  f"{relative_l2(exp.relevance['input'], x * g):.1e} | {remainder:.1e} | {exported:.1f} | "
                  f"{compiled:.1f} |", flush=True)


if __name__ == "__main__":
    main()
