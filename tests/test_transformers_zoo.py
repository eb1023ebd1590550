"""A representative subset of benchmarks/transformers_zoo.py: real exports of Hugging Face, timm and torch
transformers compile with AttnLRP and conserve (total = inputs + absorbed + stabilizer within 1e-4)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxlrp
from conftest import _install_torchvision_stub
from transformer_zoo_models import export_zoo

# one of each family the LXT parity tests do not cover: an encoder without token types, an MLP-Mixer, and
# nn.MultiheadAttention's packed q/k/v (the whole table with both exporters: benchmarks/transformers_zoo.py)
SUBSET = [("hf_distilbert", "legacy"), ("timm_mixer", "legacy"), ("torch_transformer_encoder", "legacy")]


@pytest.mark.parametrize("name,exporter", SUBSET, ids=[f"{n}-{e}" for n, e in SUBSET])
def test_export_conserves(name, exporter, tmp_path):
    """The export compiles and every sample's identity holds; relevance and absorbed rows are finite."""
    _install_torchvision_stub()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, inputs = export_zoo(name, tmp_path / f"{name}.onnx", exporter == "dynamo")
    exp = onnxlrp.Explainer(path, "attnlrp").explain(inputs)
    for value in (*exp.relevance.values(), *exp.bias.values(), exp.stabilizer):
        assert np.all(np.isfinite(value))
    assert exp.conservation()["relative_error"].max() < 1e-4
