"""Whole models as users export them (tests/zoo.py: VGG-16-BN, ResNet-18/50, DenseNet, MobileNetV2/V3, a
channels-last CNN, a U-Net), with both torch exporters, compiled with epsilon_plus and epsilon_gamma_box.

For each: the explained total equals PyTorch's output at the target; conservation including every bias and the
stabilizer (1e-4 relative); and the input relevance equals Zennit's (1e-4 relative L2) with the canonizer Zennit
needs for the architecture (see zoo.ZOO[name].canonizers and .note):
- VGG-16-BN, MobileNetV2/V3, channels-last, U-Net: SequentialMergeBatchNorm (BN folded into the conv before it,
  as onnxlrp's canonicalisation folds it).
- ResNet-18/50: ResNetCanonizer's parts (SequentialMergeBatchNorm for stem, blocks and downsample branches, and a Sum
  module per block so that Zennit applies the Norm rule to the residual add, as onnxlrp does; without it Zennit
  passes the gradient through '+'). MobileNetV2/V3's residual adds get the same Sum module.
- DenseNet: NamedMergeBatchNorm for the stem and each layer's conv1 -> norm2 (SequentialMergeBatchNorm would merge a
  block's last conv2 with the transition's BN, which normalises the concatenation); the other BNs are Pass in both.
- MobileNetV3: stock Zennit has no rule for the squeeze-excitation product and passes the gradient through it (not
  conservative), so parity with stock Zennit is not claimed; the reference is Zennit plus a canonizer giving that
  product onnxlrp's documented gate rule (all relevance to the signal). Conservation is checked as for all models.
Every merge is made exact (zoo.exact_merge): zennit 0.5.1's merged BN still divides by sqrt(1 + eps).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from torch_utils import EXPORTERS
from zoo import ZOO, build
from zoo_eval import COMPOSITES, inputs, measure, targets, zennit_reference

PARITY = 1e-4
CONSERVATION = 1e-4


class ZooRuns:
    """Builds, exports, references and measurements, each computed once per test module."""

    def __init__(self, zennit, folder: Path) -> None:
        self.zennit, self.folder = zennit, folder
        self.models, self.paths, self.references, self.results = {}, {}, {}, {}

    def model(self, name: str):
        """The seeded zoo model."""
        if name not in self.models:
            self.models[name] = build(name)
        return self.models[name]

    def path(self, name: str, exporter: str) -> Path:
        """The model exported with the given exporter."""
        key = (name, exporter)
        if key not in self.paths:
            from zoo_eval import export_model
            self.paths[key] = export_model(name, exporter, self.folder, self.model(name))
        return self.paths[key]

    def reference(self, name: str, composite: str) -> np.ndarray:
        """Zennit's relevance (the same for both exporters)."""
        key = (name, composite)
        if key not in self.references:
            self.references[key] = zennit_reference(self.zennit, name, self.model(name), composite)
        return self.references[key]

    def result(self, name: str, exporter: str, composite: str) -> tuple:
        """(Row, Explanation) for one model, exporter and composite."""
        key = (name, exporter, composite)
        if key not in self.results:
            self.results[key] = measure(name, exporter, self.path(name, exporter), composite, self.model(name),
                                        self.reference(name, composite))
        return self.results[key]


@pytest.fixture(scope="module")
def runs(zennit, tmp_path_factory) -> ZooRuns:
    """The module's shared cache of zoo runs."""
    return ZooRuns(zennit, tmp_path_factory.mktemp("zoo"))


CASES = [(name, exporter, composite) for name in ZOO for exporter in EXPORTERS for composite in COMPOSITES]


@pytest.mark.parametrize("name,exporter,composite", CASES)
def test_zoo_conserves(runs, name, exporter, composite):
    """total == PyTorch's output at the target, and total == inputs + biases + stabilizer to 1e-4 relative."""
    import torch
    row, exp = runs.result(name, exporter, composite)
    entry, model = ZOO[name], runs.model(name)
    with torch.no_grad():
        logits = model(torch.tensor(inputs(entry))).numpy().reshape(len(exp.total), -1)
    want = logits[np.arange(len(exp.total)), targets(entry, model)]
    np.testing.assert_allclose(exp.total, want, rtol=1e-4, atol=1e-5 * np.abs(logits).max())
    assert exp.bias, "every zoo model has biased linear nodes: their relevance must be reported"
    assert row.conservation < CONSERVATION, row


@pytest.mark.parametrize("name,exporter,composite", CASES)
def test_zoo_matches_zennit(runs, name, exporter, composite):
    """The input relevance equals Zennit's (with the architecture's canonizers) to 1e-4 relative L2."""
    row, exp = runs.result(name, exporter, composite)
    assert exp.relevance["input"].shape == (len(exp.total),) + ZOO[name].shape
    assert row.parity < PARITY, row
