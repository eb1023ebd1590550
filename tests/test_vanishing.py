"""Relevance at units whose pre-activation is exactly 0 (onnxlrp/vanishing.py): a gamma layer drops the term that
reports it (Equal / Where / ReduceSum) only where the graph proves that relevance is 0, and keeps it where it is not.
Input relevance and stabilizer against the dense float64 chain of tests/reference.py, with one channel of the
first convolution exactly 0 (zero weights and bias) so that the dropped relevance is really there in the kept cases.
Where a Relu alone reads the layer's output, its z < 0 group (which then carries nothing) is left out as well."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxlrp
import reference as ref
from ops_harness import composite_text, forward, linearise, make_model, rng, single, tensor

X_SHAPE = (1, 2, 4, 4)
ACTIVATIONS = {"Relu": lambda z: np.maximum(z, 0.0), "Clip": lambda z: np.clip(z, 0.0, 6.0),
               "Sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z))}


def _weights() -> tuple:
    """Conv (3, 2, 3, 3) with channel 1 all zero (weights and bias), Gemm (5, 48)."""
    g = rng(7)
    w0, b0 = g.normal(size=(3, 2, 3, 3)).astype(np.float32), g.normal(size=3).astype(np.float32) * 0.3
    w0[1], b0[1] = 0.0, 0.0
    w1, b1 = g.normal(size=(5, 48)).astype(np.float32) * 0.3, g.normal(size=5).astype(np.float32) * 0.3
    return w0, b0, w1, b1


def _model(act: str) -> onnx.ModelProto:
    """x -> Conv -> act -> Flatten -> Gemm -> y."""
    w0, b0, w1, b1 = _weights()
    inits = {"W0": w0, "B0": b0, "W1": w1, "B1": b1}
    act_inputs = ["z0"]
    if act == "Clip":
        inits["lo"], inits["hi"] = np.array(0.0, np.float32), np.array(6.0, np.float32)
        act_inputs += ["lo", "hi"]
    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["z0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node(act, act_inputs, ["a0"], name="act0"),
             helper.make_node("Flatten", ["a0"], ["f0"], name="flat0"),
             helper.make_node("Gemm", ["f0", "W1", "B1"], ["y"], name="dense1", transB=1)]
    return make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 5])], inits)


def _reference(act: str, dense_rule: str, x: np.ndarray) -> tuple:
    """(R_x, stabilizer, relevance dropped at z0 == 0) of one sample in float64, seed the argmax logit."""
    w0, b0, w1, b1 = _weights()
    M0, c0 = linearise(single("Conv", X_SHAPE, {"W": w0, "B": b0}, ["W", "B"], pads=[1, 1, 1, 1]), "x", X_SHAPE)
    x64 = x.reshape(-1).astype(np.float64)
    z0 = M0 @ x64 + c0
    a0 = ACTIVATIONS[act](z0)
    W1, B1 = w1.astype(np.float64), b1.astype(np.float64)
    y = W1 @ a0 + B1
    R = np.zeros_like(y)
    R[np.argmax(y)] = y[np.argmax(y)]
    if dense_rule == "gamma":
        R_a, _, stab1 = ref.gamma(W1, B1, a0, R)
    else:
        R_a, _, stab1 = ref.zbox(W1, B1, a0, R, np.full_like(a0, -3.0), np.full_like(a0, 3.0))
    R_x, _, stab0 = ref.gamma(M0, c0, x64, R_a)
    return R_x, stab0 + stab1, float(np.where(z0 == 0, R_a, 0.0).sum())


@pytest.mark.parametrize("act,dense_rule,skipped", [
    ("Relu", "gamma", True),      # z0 == 0 -> a0 == 0 -> R_a0 = a0 * (...) == 0: the term is provably 0
    ("Clip", "gamma", True),      # Clip(0, 6) keeps 0
    ("Sigmoid", "gamma", False),  # Sigmoid(0) = 0.5: relevance does reach z0 == 0
    ("Relu", "zbox", False),      # z^B's bounds terms send relevance to a0 == 0
])
def test_zero_preactivation_term_only_where_provably_zero(tmp_path, act, dense_rule, skipped):
    """The first layer's z == 0 term is left out exactly where it is provably 0; R_x and the stabilizer equal the
    dense chain's either way (the stabilizer holds the dropped relevance in the kept cases)."""
    params = {"gamma": 0.25} if dense_rule == "gamma" else {"low": -3.0, "high": 3.0}
    path = tmp_path / "c.toml"
    path.write_text(composite_text({"Conv": ("gamma", {"gamma": 0.25}), "Gemm": (dense_rule, params)}))
    compiled = onnxlrp.compile(_model(act), str(path))
    onnx.checker.check_model(compiled, full_check=True)
    zero_tests = [n for n in compiled.graph.node if n.op_type == "Equal" and "z_is_zero" in n.output[0]]
    conv_tests = [n for n in zero_tests if "conv0" in n.name]
    assert len(conv_tests) == (0 if skipped else 1)
    # a Relu (Clip from 0) that alone reads z0 zeroes its relevance wherever z0 <= 0: no z < 0 group either
    negative_masks = [n for n in compiled.graph.node if n.op_type == "Less" and "conv0" in n.name]
    assert len(negative_masks) == (0 if skipped else 1)
    assert len(zero_tests) - len(conv_tests) == (1 if dense_rule == "gamma" else 0)  # y is explained: always kept
    x = rng(3).normal(size=(3, 2, 4, 4)).astype(np.float32)
    names = [o.name for o in compiled.graph.output]
    out = dict(zip(names, forward(compiled, {"x": x, "lrp_target": np.full(3, -1, np.int64)})))
    dropped_total = 0.0
    for i in range(3):
        R_x, stab, dropped = _reference(act, dense_rule, x[i])
        dropped_total += abs(dropped)
        scale = np.abs(R_x).sum() + abs(stab)
        assert np.allclose(out["lrp/relevance/x"][i].reshape(-1), R_x, rtol=1e-4, atol=1e-6 * scale)
        assert abs(float(out["lrp/stabilizer"][i]) - stab) <= 1e-5 * scale
    if skipped:
        assert dropped_total == 0.0
    else:  # the kept term carries real relevance: leaving it out would break conservation
        assert dropped_total > 1e-3
