"""Branches that only feed a gate (tanh-GELU's x^3 polynomial, a squeeze-excitation's pooling) need no rule:
they receive no relevance, and the signal gets all of it."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlrp
import reference as ref
from torch_utils import EXPORTERS, export


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_tanh_gelu_mlp_matches_dense_reference(tmp_path, exporter):
    """x * 0.5 * (1 + tanh(c (x + 0.044715 x^3))): the x^3 products sit in the gate branch and are pruned."""
    import torch
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(approximate="tanh"),
                                torch.nn.Linear(16, 3)).eval()
    path = export(model, torch.randn(2, 8), tmp_path / "gelu.onnx", exporter)
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    exp = onnxlrp.Explainer(str(path), "epsilon").explain(x, target=[0, 1, 2])
    w1, b1 = (p.detach().double().numpy() for p in model[0].parameters())
    w2, b2 = (p.detach().double().numpy() for p in model[2].parameters())
    for i in range(3):
        h = w1 @ x[i] + b1
        a = torch.nn.functional.gelu(torch.tensor(h), approximate="tanh").numpy()
        y = w2 @ a + b2
        R = np.zeros(3)
        R[i] = y[i]
        R_a = ref.epsilon(w2, b2, a, R)[0]
        R_x = ref.epsilon(w1, b1, x[i].astype(np.float64), R_a)[0]  # GELU passes relevance on unchanged
        np.testing.assert_allclose(exp.relevance["input"][i], R_x, rtol=1e-4, atol=1e-5 * abs(y[i]))
    assert np.all(exp.conservation()["relative_error"] < 1e-5)
