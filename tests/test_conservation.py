"""Property: total == sum(relevance) + sum(bias) + stabilizer, on random MLPs, for every composite (hypothesis)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxlrp
from onnxlrp.composites import builtin_names
from mlp_models import random_mlp

COMPOSITES = [c for c in builtin_names() if c != "base"]


def _conservation_error(exp) -> np.ndarray:
    """|inputs + biases + stabilizer - total| relative to the larger of |total| and the terms' magnitudes."""
    n = exp.total.shape[0]
    inputs = exp.relevance["input"].reshape(n, -1).astype(np.float64).sum(axis=1)
    biases = sum((b.astype(np.float64).sum(axis=1) for b in exp.bias.values()), np.zeros(n))
    stab = exp.stabilizer.astype(np.float64)
    scale = np.maximum.reduce([np.abs(exp.total), np.abs(inputs) + np.abs(biases) + np.abs(stab),
                               np.full(n, 1e-12)])
    return np.abs(inputs + biases + stab - exp.total) / scale


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(widths=st.lists(st.integers(1, 12), min_size=2, max_size=5),
       seed=st.integers(0, 2 ** 16), bias=st.booleans(), composite=st.sampled_from(COMPOSITES),
       activation=st.sampled_from(["Relu", "LeakyRelu", "Tanh", "Sigmoid"]),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), batch=st.integers(1, 4), init=st.sampled_from(["logit", "one"]))
def test_random_mlps_conserve(widths, seed, bias, composite, activation, scale, batch, init):
    """Every composite conserves exactly what it takes: inputs + biases + stabilizer == total (1e-5 relative)."""
    model = random_mlp(widths, seed=seed, bias=bias, activation=activation)
    x = (np.random.default_rng(seed).normal(size=(batch, widths[0])) * scale).astype(np.float32)
    exp = onnxlrp.Explainer(model, composite, init=init).explain(x)
    for value in (exp.total, exp.stabilizer, exp.relevance["input"], *exp.bias.values()):
        assert np.all(np.isfinite(value))
    assert np.all(_conservation_error(exp) < 1e-5), _conservation_error(exp)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(widths=st.lists(st.integers(1, 10), min_size=2, max_size=4), seed=st.integers(0, 2 ** 16))
def test_lrp0_on_bias_free_relu_network_is_exact_taylor(widths, seed):
    """LRP-0 on a bias-free ReLU network puts exactly the gradient x input on the input (a known identity)."""
    model = random_mlp(widths, seed=seed, bias=False)
    x = np.random.default_rng(seed).normal(size=(2, widths[0])).astype(np.float32)
    exp = onnxlrp.Explainer(model, "zero").explain(x, target=0)
    from onnx import numpy_helper
    weights = [numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer]  # W0, W1, ... (out, in)
    for i in range(2):
        acts, masks = x[i].astype(np.float64), []
        for k, w in enumerate(weights):
            z = w @ acts
            if k < len(weights) - 1:
                masks.append(z > 0)
                acts = np.maximum(z, 0)
        grad = np.eye(weights[-1].shape[0])[0]
        for k in reversed(range(len(weights))):
            grad = weights[k].T @ grad
            if k > 0:
                grad = grad * masks[k - 1]
        want = x[i] * grad
        np.testing.assert_allclose(exp.relevance["input"][i], want, rtol=1e-4, atol=1e-5 * np.abs(want).sum())
