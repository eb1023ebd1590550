"""Helpers for tests on PyTorch models: export with either exporter, Zennit reference relevance, errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

EXPORTERS = ("legacy", "dynamo")


def export(model, example, path: Path, exporter: str, opset: int = 17, input_name: str = "input",
           dynamic_spatial: bool = False) -> Path:
    """Export a torch model to ONNX with the legacy (dynamo=False) or dynamo exporter, batch dim dynamic (and, with
    dynamic_spatial, every axis after the channels: height, width)."""
    import torch
    model.eval()
    path = Path(path)
    spatial = range(2, example.dim()) if dynamic_spatial else ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            axes = {0: "batch", **{a: f"d{a}" for a in spatial}}
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=["logits"],
                              dynamic_axes={input_name: axes, "logits": {0: "batch"}})
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            dims = {0: batch, **{a: torch.export.Dim.AUTO for a in spatial}}
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=max(opset, 18),
                                        input_names=[input_name], output_names=["logits"],
                                        dynamic_shapes=(dims,), verbose=False)
            program.save(str(path), external_data=True)
    proto = onnx.load(str(path), load_external_data=False)
    if proto.ir_version > 10:  # onnxruntime 1.31 reads at most IR 13; keep a safe, widely read version
        proto.ir_version = 10
        onnx.save(proto, str(path))
    return path


def zennit_relevance(zennit, model, x: np.ndarray, target, composite) -> np.ndarray:
    """Zennit's relevance of the input with attr_output = output * one_hot(target)."""
    import torch
    from zennit.attribution import Gradient
    xt = torch.tensor(x, dtype=torch.float32)
    target = np.broadcast_to(np.asarray(target), (x.shape[0],))

    def attr_output(output):
        onehot = torch.zeros_like(output)
        onehot[torch.arange(output.shape[0]), torch.tensor(target)] = 1.0
        return output * onehot

    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(xt, attr_output)
    return relevance.detach().numpy()


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
