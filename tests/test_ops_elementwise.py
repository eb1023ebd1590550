"""Elementwise activations pass relevance through unchanged (R_x = R_y), with their constant parameters (PRelu
slopes, Clip bounds as attributes or inputs) receiving none; at the oldest and newest opsets each op exists in."""
from __future__ import annotations

import numpy as np
import pytest

from ops_harness import NEWEST_OPSET, explain_dense, forward, rng, single

F32 = np.float32
ACTIVATIONS = {
    "Relu": (11, {}, {}),
    "LeakyRelu": (11, {"alpha": 0.1}, {}),
    "PRelu": (11, {}, {"slope": np.array([0.1, 0.2, 0.3], F32).reshape(3, 1)}),
    "Clip_relu6_inputs": (11, {}, {"lo": np.array(0.0, F32), "hi": np.array(6.0, F32)}),
    "Clip_min_only": (11, {}, {"lo": np.array(-1.0, F32), "": None}),
    "Elu": (11, {"alpha": 0.7}, {}),
    "Selu": (11, {}, {}),
    "Sigmoid": (11, {}, {}),
    "HardSigmoid": (11, {"alpha": 1 / 6, "beta": 0.5}, {}),
    "HardSwish": (14, {}, {}),
    "Tanh": (11, {}, {}),
    "Softplus": (11, {}, {}),
    "Gelu": (20, {}, {}),
    "Gelu_tanh": (20, {"approximate": "tanh"}, {}),
    "Mish": (18, {}, {}),
    "Erf": (11, {}, {}),
    "Identity": (11, {}, {}),
    "Dropout": (12, {}, {}),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("newest", [False, True], ids=["oldest", "newest"])
def test_activation_passes_relevance(name, newest):
    """R_x equals R_y exactly; nothing goes to the parameters; no stabilizer."""
    opset, attrs, inits = ACTIVATIONS[name]
    op = name.split("_")[0]
    extra = [k for k in inits]
    inits = {k: v for k, v in inits.items() if v is not None}
    model = single(op, (1, 3, 4), inits, extra, opset=NEWEST_OPSET if newest else opset, **attrs)
    g = rng(9)
    x = (g.normal(size=(2, 3, 4)) * 4).astype(F32)
    y = forward(model, {"x": x})[0]
    R = g.normal(size=y.shape).astype(F32)
    res = explain_dense(model, {"x": x}, R)
    np.testing.assert_array_equal(res.relevance["x"], R)
    assert not res.bias and np.all(res.stabilizer == 0)

