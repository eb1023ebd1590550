"""Measure the zoo: export, compile (timed), explain, conservation error, and the error against Zennit.

Shared by tests/test_models_zoo.py (which asserts on the numbers) and tests/zoo_table.py (which prints them).

Two comparisons with Zennit per model, exporter and composite:
- float32, as users run it: the float32 export compiled and run in onnxruntime, against Zennit in float64 (the exact
  value of Zennit's rules, free of Zennit's own float32 rounding);
- float64: the float64 export compiled and run in onnx.reference.ReferenceEvaluator (onnxruntime's CPU provider has no
  float64 Conv) against Zennit in float64. Rounding is then ~1e-16, so this shows the rules are Zennit's exactly:
  an error of the size of the stabilizer's effect (~1e-6 relative) would show here but hide under float32's 1e-4.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

import onnxlrp
from onnxlrp.compiler import compiled_metadata
from onnxlrp.runtime import Explanation
from torch_utils import export, relative_l2
from zoo import ZOO, ZooModel, build

COMPOSITES = ("epsilon_plus", "epsilon_gamma_box")
LOW, HIGH = -2.5, 2.5  # input bounds of epsilon_gamma_box's z^B rule; the inputs are clipped to them
BATCH = 2
CLASS_TARGETS = [1, 3]


@dataclass
class Row:
    """One model, exporter and composite: sizes, compile time and the errors."""

    model: str
    exporter: str
    composite: str
    nodes: int               # nodes in the exported (float32) ONNX graph
    compiled_nodes: int      # nodes in the compiled (augmented) graph
    compile_s: float         # onnxlrp.compile wall time, float32 export
    conservation: float      # float32: max over samples of |inputs + biases + stabilizer - total| / scale
    parity: float            # float32 onnxruntime vs Zennit float64: relative L2 of the input relevance
    parity_f64: float        # float64 ReferenceEvaluator vs Zennit float64: relative L2
    conservation_f64: float  # float64 conservation error
    zennit_f32: float        # Zennit float32 vs Zennit float64 (how well float32 can do on this net at all)


def inputs(entry: ZooModel, seed: int = 7) -> np.ndarray:
    """A batch of standard normal inputs clipped to [LOW, HIGH]."""
    x = np.random.default_rng(seed).normal(size=(BATCH,) + tuple(entry.shape))
    return np.clip(x, LOW, HIGH).astype(np.float32)


def targets(entry: ZooModel, model: "torch.nn.Module") -> list:
    """Class targets, or for a per-pixel map flat indices (class, row, column) into (C, H, W)."""
    if not entry.flat_targets:
        return CLASS_TARGETS
    import torch
    with torch.no_grad():
        out = model(torch.zeros((1,) + tuple(entry.shape)))
    c, h, w = out.shape[1:]
    return [int(np.ravel_multi_index((1, h // 2, w // 3), (c, h, w))),
            int(np.ravel_multi_index((c - 1, 1, w - 2), (c, h, w)))]


def export_model(name: str, exporter: str, folder: Path, model: "torch.nn.Module", dtype: type = np.float32) -> Path:
    """Export the zoo model (a float64 copy for dtype float64) with the given torch exporter."""
    import torch
    example = torch.tensor(inputs(ZOO[name]).astype(dtype))
    suffix = ""
    if np.dtype(dtype) == np.float64:
        model, suffix = copy.deepcopy(model).double(), "_f64"
    return export(model, example, Path(folder) / f"{name}_{exporter}{suffix}.onnx", exporter)


def zennit_composite(entry: ZooModel, model: "torch.nn.Module", composite: str) -> "zennit.core.Composite":
    """Zennit's composite with the model's canonizers."""
    import torch
    from zennit import composites as zc
    canonizers = entry.canonizers(model)
    if composite == "epsilon_plus":
        return zc.EpsilonPlus(canonizers=canonizers)
    if composite == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=torch.tensor(LOW), high=torch.tensor(HIGH), canonizers=canonizers)
    raise ValueError(f"no Zennit composite for {composite!r}")


def zennit_reference(name: str, model: "torch.nn.Module", composite: str, dtype: type = np.float64) -> np.ndarray:
    """Zennit's relevance of the input with attr_output = output * one_hot(target) (as torch_utils.zennit_relevance
    does; a flat one-hot over (C, H, W) for a per-pixel map), computed in `dtype` on a copy of the model."""
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


def conservation_error(exp: Explanation) -> float:
    """max over samples of |inputs + biases + stabilizer - total| / max(|total|, |inputs| + sum|bias_n| + |stab|)."""
    n = exp.total.shape[0]
    inputs_sum = sum(r.reshape(n, -1).sum(axis=1, dtype=np.float64) for r in exp.relevance.values())
    bias_terms = [v.reshape(n, -1).sum(axis=1, dtype=np.float64) for v in exp.bias.values()]
    stab = exp.stabilizer.astype(np.float64)
    explained = inputs_sum + sum(bias_terms, np.zeros(n)) + stab
    magnitude = np.abs(inputs_sum) + sum((np.abs(t) for t in bias_terms), np.zeros(n)) + np.abs(stab)
    total = exp.total.astype(np.float64)
    scale = np.maximum(np.maximum(np.abs(total), magnitude), 1e-300)
    return float(np.max(np.abs(explained - total) / scale))


def _params(composite: str) -> Optional[dict]:
    """The composite's parameters: z^B's bounds for epsilon_gamma_box."""
    return {"low": LOW, "high": HIGH} if composite == "epsilon_gamma_box" else None


def explain_float64(name: str, path: Path, composite: str, model: "torch.nn.Module") -> Explanation:
    """The float64 export compiled and run in onnx.reference.ReferenceEvaluator."""
    from onnx.reference import ReferenceEvaluator
    entry = ZOO[name]
    compiled = onnxlrp.compile(str(path), composite, params=_params(composite))
    meta = compiled_metadata(compiled)
    target = np.asarray(targets(entry, model), dtype=np.int64)
    names = [meta["total"], meta["stabilizer"], meta["relevance"]["input"], *meta["bias"].values()]
    feeds = {"input": inputs(entry).astype(np.float64), meta["target_input"]: target}
    values = dict(zip(names, ReferenceEvaluator(compiled).run(names, feeds)))
    return Explanation(output=np.empty(0), target=target, total=values[meta["total"]],
                       relevance={"input": values[meta["relevance"]["input"]]},
                       bias={k: values[v] for k, v in meta["bias"].items()}, stabilizer=values[meta["stabilizer"]])


class ZooRuns:
    """Builds, exports, Zennit references and measurements, each computed once."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.models, self.paths, self.references, self.results = {}, {}, {}, {}

    def model(self, name: str) -> "torch.nn.Module":
        """The seeded zoo model."""
        if name not in self.models:
            self.models[name] = build(name)
        return self.models[name]

    def path(self, name: str, exporter: str, dtype: type = np.float32) -> Path:
        """The model exported with the given exporter, in float32 or float64."""
        key = (name, exporter, np.dtype(dtype).name)
        if key not in self.paths:
            self.paths[key] = export_model(name, exporter, self.folder, self.model(name), dtype)
        return self.paths[key]

    def reference(self, name: str, composite: str, dtype: type = np.float64) -> np.ndarray:
        """Zennit's relevance in float64 or float32 (the same for both exporters)."""
        key = (name, composite, np.dtype(dtype).name)
        if key not in self.references:
            self.references[key] = zennit_reference(name, self.model(name), composite, dtype)
        return self.references[key]

    def result(self, name: str, exporter: str, composite: str) -> tuple:
        """(Row, float32 Explanation) for one model, exporter and composite."""
        key = (name, exporter, composite)
        if key not in self.results:
            self.results[key] = self._measure(name, exporter, composite)
        return self.results[key]

    def _measure(self, name: str, exporter: str, composite: str) -> tuple:
        """Compile (timed) and explain both exports; compare with Zennit."""
        entry, model = ZOO[name], self.model(name)
        path = self.path(name, exporter)
        start = time.perf_counter()
        compiled = onnxlrp.compile(str(path), composite, params=_params(composite))
        seconds = time.perf_counter() - start
        exp = onnxlrp.Explainer(compiled).explain(inputs(entry), target=targets(entry, model))
        exact = self.reference(name, composite)
        exp64 = explain_float64(name, self.path(name, exporter, np.float64), composite, model)
        row = Row(name, exporter, composite, len(onnx.load(str(path), load_external_data=False).graph.node),
                  len(compiled.graph.node), seconds, conservation_error(exp),
                  relative_l2(exp.relevance["input"], exact), relative_l2(exp64.relevance["input"], exact),
                  conservation_error(exp64), relative_l2(self.reference(name, composite, np.float32), exact))
        return row, exp
