"""One row of the zoo sweep: export (or load) a model, compile it, explain a batch, and classify the outcome.

Shared by benchmarks/zoo_sweep.py (the table) and tests/test_zoo_sweep.py (its subset, asserting on the rows).
A row's status is one of
- "ok": compiles, the compiled model's logits equal the source's (1e-4 relative) and relevance is conserved to
  CONSERVATION (total = inputs + biases + stabilizer);
- "NOT CONSERVED" / "WRONG OUTPUT": compiled, but one of the checks above fails (a bug to fix);
- "ill-conditioned source": conserves, but the source model itself is not reproducible in float32 (torch's float32
  logits differ from its float64 logits by more than OUTPUT, as when trained-like statistics let activations grow
  to 1e5 over many layers), so no float32 output can be checked against it; the row gives both errors;
- "refused: <message>": onnxlrp's one-line error (an OnnxLrpError) naming what it cannot explain;
- "export failed: <message>": the exporter could not export the model (not onnxlrp's business);
- "internal error: <type>: <message>": any other exception (a bug to fix).
"""
from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

CONSERVATION = 1e-4
OUTPUT = 1e-4
COMPOSITE = "epsilon_plus"


def one_line(exc: BaseException) -> str:
    """The exception's message (kept as it is: a newline in an onnxlrp error is a defect the tests catch)."""
    return str(exc)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float64."""
    z = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def explain_row(row: dict, path, x, reference: Optional[np.ndarray], composite: str = COMPOSITE,
                to_reference: Callable[[np.ndarray], np.ndarray] = np.asarray) -> dict:
    """Compile `path`, explain `x` (an array or a dict of arrays) and fill the row's measured fields and status;
    `reference` is the source framework's output for x: to_reference(explained logits) must equal it (softmax
    where the source model ends with a Softmax that onnxlrp bypasses)."""
    import onnxlrp
    from onnxlrp.errors import OnnxLrpError
    try:
        t = time.perf_counter()
        compiled = onnxlrp.compile(path, composite)
        row["compile s"] = time.perf_counter() - t
        explainer = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"])
        exp = explainer.explain(x)
    except OnnxLrpError as exc:
        row["status"] = "refused: " + one_line(exc)
        return row
    except Exception as exc:  # a bug of onnxlrp: named in the table, fixed in the code
        row["status"] = f"internal error: {type(exc).__name__}: {one_line(exc)}"
        return row
    check = exp.conservation()
    row["conservation"] = float(np.max(check["relative_error"]))
    total = np.where(np.abs(check["total"]) > 0, check["total"], 1.0)
    row["stabilizer"] = float(np.mean(check["stabilizer"] / total))
    row["bias"] = float(np.mean(check["biases"] / total))
    if reference is not None:
        got = to_reference(exp.output.astype(np.float64))
        ref = np.asarray(reference, np.float64).reshape(got.shape)
        row["output error"] = float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))
    if row.get("source float32 error", 0.0) > OUTPUT and row["conservation"] <= CONSERVATION:
        row["status"] = "ill-conditioned source"
    elif row.get("output error", 0.0) > OUTPUT:
        row["status"] = "WRONG OUTPUT"
    elif not row["conservation"] <= CONSERVATION:
        row["status"] = "NOT CONSERVED"
    else:
        row["status"] = "ok"
    return row


def timm_row(name: str, weights: str, exporter: str, folder: Path, composite: Optional[str] = None) -> dict:
    """Build, export and explain one timm zoo model (timm_zoo.ZOO) with one exporter and one weight state (with
    the entry's composite unless one is given)."""
    import torch
    from timm_zoo import ZOO, build, inputs
    from torch_utils import export
    row = {"model": name, "family": ZOO[name].family, "exporter": exporter, "weights": weights}
    model = build(name, weights)
    x = inputs(name)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
        exact = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    row["source float32 error"] = float(np.max(np.abs(reference - exact)) / max(np.max(np.abs(exact)), 1e-30))
    try:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = export(model, torch.from_numpy(x), Path(folder) / f"{name}_{weights}_{exporter}.onnx", exporter)
        row["export s"] = time.perf_counter() - t
    except Exception as exc:
        row["status"] = f"export failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return row
    return explain_row(row, path, x, reference, composite or ZOO[name].composite)

