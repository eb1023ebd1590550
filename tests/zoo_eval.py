"""Measure one zoo model: export, compile (timed), explain, conservation error, and the error against Zennit.

Shared by tests/test_models_zoo.py (which asserts on the numbers) and tests/zoo_table.py (which prints them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

import onnxlrp
from torch_utils import export, relative_l2
from zoo import ZOO, ZooModel, build

COMPOSITES = ("epsilon_plus", "epsilon_gamma_box")
LOW, HIGH = -2.5, 2.5  # input bounds of epsilon_gamma_box's z^B rule; the inputs are clipped to them
BATCH = 2
CLASS_TARGETS = [1, 3]


@dataclass
class Row:
    """One model, exporter and composite: sizes, compile time and the two errors."""

    model: str
    exporter: str
    composite: str
    nodes: int                 # nodes in the exported ONNX graph
    compiled_nodes: int        # nodes in the compiled (augmented) graph
    compile_s: float
    conservation: float        # max over samples of |inputs + biases + stabilizer - total| / scale
    parity: Optional[float]    # relative L2 error against Zennit (float64) (None: no Zennit reference)


def inputs(entry: ZooModel, seed: int = 7) -> np.ndarray:
    """A batch of standard normal inputs clipped to [LOW, HIGH]."""
    x = np.random.default_rng(seed).normal(size=(BATCH,) + tuple(entry.shape))
    return np.clip(x, LOW, HIGH).astype(np.float32)


def targets(entry: ZooModel, model) -> list:
    """Class targets, or for a per-pixel map flat indices (class, row, column) into (C, H, W)."""
    if not entry.flat_targets:
        return CLASS_TARGETS
    import torch
    with torch.no_grad():
        out = model(torch.zeros((1,) + tuple(entry.shape)))
    c, h, w = out.shape[1:]
    return [int(np.ravel_multi_index((1, h // 2, w // 3), (c, h, w))),
            int(np.ravel_multi_index((c - 1, 1, w - 2), (c, h, w)))]


def export_model(name: str, exporter: str, folder: Path, model=None, dtype=np.float32) -> Path:
    """Export the zoo model (built with its seed unless given; a float64 copy for dtype float64) with the given
    torch exporter."""
    import copy

    import torch
    entry = ZOO[name]
    model = build(name) if model is None else model
    example = torch.tensor(inputs(entry).astype(dtype))
    suffix = ""
    if np.dtype(dtype) == np.float64:
        model, suffix = copy.deepcopy(model).double(), "_f64"
    return export(model, example, Path(folder) / f"{name}_{exporter}{suffix}.onnx", exporter)


def zennit_composite(entry: ZooModel, model, composite: str):
    """Zennit's composite with the model's canonizers."""
    import torch
    from zennit import composites as zc
    canonizers = entry.canonizers(model)
    if composite == "epsilon_plus":
        return zc.EpsilonPlus(canonizers=canonizers)
    if composite == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=torch.tensor(LOW), high=torch.tensor(HIGH), canonizers=canonizers)
    raise ValueError(composite)


def zennit_reference(zennit, name: str, model, composite: str, dtype=np.float64) -> np.ndarray:
    """Zennit's relevance of the input with attr_output = output * one_hot(target) (as torch_utils.zennit_relevance;
    a flat one-hot over (C, H, W) for a per-pixel map), computed in `dtype` on a copy of the model.

    The float32 parity reference is Zennit in float64: the exact value of Zennit's rules, free of Zennit's own
    float32 rounding. On well-conditioned nets that changes nothing (Zennit float32 vs float64: ~1e-6), but on the
    DenseNet a transition's average pool has a window whose mean is ~1/800 of its entries, and the Norm rule
    R_i = x_i R / (k mean) amplifies rounding: Zennit's float32 result is 1.7e-4 away from its own float64 one."""
    import copy

    import torch
    from zennit.attribution import Gradient
    entry = ZOO[name]
    x, target = inputs(entry), targets(entry, model)
    tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    model = copy.deepcopy(model).to(tdtype)
    comp = zennit_composite(entry, model, composite)

    def attr_output(output: torch.Tensor) -> torch.Tensor:
        """The output times a one-hot over the flattened output (the class, or the (C, H, W) map position)."""
        onehot = torch.zeros_like(output).reshape(output.shape[0], -1)
        onehot[torch.arange(output.shape[0]), torch.tensor(target)] = 1.0
        return output * onehot.reshape(output.shape)

    with Gradient(model=model, composite=comp) as attributor:
        _, relevance = attributor(torch.tensor(x, dtype=tdtype), attr_output)
    return relevance.detach().numpy()


def conservation_error(exp) -> float:
    """max over samples of |inputs + biases + stabilizer - total| / max(|total|, |inputs| + sum |bias_node| + |stab|)."""
    n = exp.total.shape[0]
    inputs_sum = sum(r.reshape(n, -1).sum(axis=1, dtype=np.float64) for r in exp.relevance.values())
    bias_terms = [v.reshape(n, -1).sum(axis=1, dtype=np.float64) for v in exp.bias.values()]
    stab = exp.stabilizer.astype(np.float64)
    explained = inputs_sum + sum(bias_terms, np.zeros(n)) + stab
    magnitude = np.abs(inputs_sum) + sum((np.abs(t) for t in bias_terms), np.zeros(n)) + np.abs(stab)
    total = exp.total.astype(np.float64)
    scale = np.maximum(np.maximum(np.abs(total), magnitude), 1e-30)
    return float(np.max(np.abs(explained - total) / scale))


def measure(name: str, exporter: str, path: Path, composite: str, model, reference: Optional[np.ndarray]) -> tuple:
    """Compile (timed) and explain the exported model; returns (Row, Explanation)."""
    entry = ZOO[name]
    source = onnx.load(str(path))
    params = {"low": LOW, "high": HIGH} if composite == "epsilon_gamma_box" else None
    start = time.perf_counter()
    compiled = onnxlrp.compile(str(path), composite, params=params)
    seconds = time.perf_counter() - start
    exp = onnxlrp.Explainer(compiled).explain(inputs(entry), target=targets(entry, model))
    parity = None if reference is None else relative_l2(exp.relevance["input"], reference)
    row = Row(name, exporter, composite, len(source.graph.node), len(compiled.graph.node), seconds,
              conservation_error(exp), parity)
    return row, exp


def measure_float64(name: str, exporter: str, path: Path, composite: str, model, reference: np.ndarray) -> tuple:
    """The float64 export compiled and run in onnx.reference.ReferenceEvaluator (onnxruntime's CPU provider has no
    float64 Conv): (relative L2 error against Zennit in float64, conservation error). With both sides in float64,
    rounding is ~1e-16, so this checks that onnxlrp's rules are Zennit's exactly, not to float32 precision."""
    from onnx.reference import ReferenceEvaluator

    from onnxlrp.compiler import compiled_metadata
    from onnxlrp.runtime import Explanation
    entry = ZOO[name]
    params = {"low": LOW, "high": HIGH} if composite == "epsilon_gamma_box" else None
    compiled = onnxlrp.compile(str(path), composite, params=params)
    meta = compiled_metadata(compiled)
    feeds = {"input": inputs(entry).astype(np.float64),
             meta["target_input"]: np.asarray(targets(entry, model), dtype=np.int64)}
    names = [meta["total"], meta["stabilizer"], meta["relevance"]["input"], *meta["bias"].values()]
    values = dict(zip(names, ReferenceEvaluator(compiled).run(names, feeds)))
    exp = Explanation(output=np.empty(0), target=feeds[meta["target_input"]], total=values[meta["total"]],
                      relevance={"input": values[meta["relevance"]["input"]]},
                      bias={k: values[v] for k, v in meta["bias"].items()}, stabilizer=values[meta["stabilizer"]])
    return relative_l2(exp.relevance["input"], reference), conservation_error(exp)
