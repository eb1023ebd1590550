"""Denominators of values a Relu alone reads (onnxlrp/emitters/positive.py): relu(z) + eps instead of
z + eps * sgn0(z) (no Less / Where, the stabilizer share eps * sum(s)) on a residual block,
x -> Conv -> Relu -> a0 -> Conv -> Relu -> Conv -> Add(., a0) -> act -> Flatten -> Gemm, with a large epsilon so
that the stabilizer weighs. Input relevance, bias rows and the stabilizer against the dense float64 chain of
tests/reference.py; with act = Sigmoid the sum keeps the general form."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxlrp
import reference as ref
from ops_harness import forward, linearise, make_model, rng, single, tensor

X_SHAPE = (1, 2, 4, 4)
EPS = 0.1
ACTIVATIONS = {"Relu": lambda z: np.maximum(z, 0.0), "Sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z))}
COMPOSITE = f"""extends = "base"
[[match]]
group = "sum"
rule = "norm"
stabilizer = {EPS}
[[match]]
group = ["dense", "convolution"]
rule = "epsilon"
epsilon = {EPS}
"""


def _weights() -> list:
    """Conv (3, 2, 3, 3), two Conv (3, 3, 3, 3), Gemm (5, 48), each with a bias."""
    g = rng(11)
    return [(g.normal(size=(3, 2, 3, 3)).astype(np.float32), g.normal(size=3).astype(np.float32) * 0.3),
            (g.normal(size=(3, 3, 3, 3)).astype(np.float32) * 0.5, g.normal(size=3).astype(np.float32) * 0.3),
            (g.normal(size=(3, 3, 3, 3)).astype(np.float32) * 0.5, g.normal(size=3).astype(np.float32) * 0.3),
            (g.normal(size=(5, 48)).astype(np.float32) * 0.3, g.normal(size=5).astype(np.float32) * 0.3)]


def _model(act: str) -> onnx.ModelProto:
    """The residual block with `act` after the sum."""
    (w0, b0), (w1, b1), (w2, b2), (w3, b3) = _weights()
    inits = {"W0": w0, "B0": b0, "W1": w1, "B1": b1, "W2": w2, "B2": b2, "W3": w3, "B3": b3}
    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["z0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z0"], ["a0"], name="relu0"),
             helper.make_node("Conv", ["a0", "W1", "B1"], ["z1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z1"], ["h1"], name="relu1"),
             helper.make_node("Conv", ["h1", "W2", "B2"], ["z2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["z2", "a0"], ["s1"], name="add1"),
             helper.make_node(act, ["s1"], ["a1"], name="act1"),
             helper.make_node("Flatten", ["a1"], ["f1"], name="flat1"),
             helper.make_node("Gemm", ["f1", "W3", "B3"], ["y"], name="dense2", transB=1)]
    return make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 5])], inits)


def _reference(act: str, x: np.ndarray) -> tuple:
    """(R_x, {layer: bias row per channel}, stabilizer) of one sample in float64, seed the argmax logit."""
    (w0, b0), (w1, b1), (w2, b2), (w3, b3) = _weights()
    conv = lambda w, b, shape: linearise(single("Conv", shape, {"W": w, "B": b}, ["W", "B"], pads=[1, 1, 1, 1]),  # noqa
                                         "x", shape)
    M0, c0 = conv(w0, b0, X_SHAPE)
    M1, c1 = conv(w1, b1, (1, 3, 4, 4))
    M2, c2 = conv(w2, b2, (1, 3, 4, 4))
    W3, B3 = w3.astype(np.float64), b3.astype(np.float64)
    x64 = x.reshape(-1).astype(np.float64)
    a0 = np.maximum(M0 @ x64 + c0, 0.0)
    h1 = np.maximum(M1 @ a0 + c1, 0.0)
    z2 = M2 @ h1 + c2
    s1 = z2 + a0
    a1 = ACTIVATIONS[act](s1)
    y = W3 @ a1 + B3
    R = np.zeros_like(y)
    R[np.argmax(y)] = y[np.argmax(y)]
    R_a1, _, stab3 = ref.epsilon(W3, B3, a1, R, EPS)
    s = R_a1 / ref.stab(s1, EPS)  # Norm on the sum: R_i = x_i * s
    stab_add = float((s * EPS * ref.sgn0(s1)).sum())
    R_h1, Rb2, stab2 = ref.epsilon(M2, c2, h1, z2 * s, EPS)
    R_a0_c, Rb1, stab1 = ref.epsilon(M1, c1, a0, R_h1, EPS)
    R_x, Rb0, stab0 = ref.epsilon(M0, c0, x64, a0 * s + R_a0_c, EPS)
    bias = {f"conv{i}": Rb.reshape(3, -1).sum(axis=1) for i, Rb in enumerate((Rb0, Rb1, Rb2))}
    return R_x, bias, stab0 + stab1 + stab2 + stab3 + stab_add


def _ops_under(compiled: onnx.ModelProto, node: str) -> set:
    """Op types of the relevance nodes emitted for one source node."""
    return {n.op_type for n in compiled.graph.node if n.name.startswith(f"lrp/_/{node}/")}


@pytest.mark.parametrize("act", ["Relu", "Sigmoid"])
def test_relu_read_denominators_match_reference(tmp_path, act):
    """Where a Relu alone reads a sum's or a layer's output its denominator has no sign test; the numbers are the
    reference's either way."""
    path = tmp_path / "c.toml"
    path.write_text(COMPOSITE)
    compiled = onnxlrp.compile(_model(act), str(path))
    onnx.checker.check_model(compiled, full_check=True)
    # conv0 and conv1 feed a Relu alone; conv2 feeds the sum (general form); the sum feeds act1
    assert not {"Less", "Where"} & (_ops_under(compiled, "conv0") | _ops_under(compiled, "conv1"))
    assert "Less" in _ops_under(compiled, "conv2")
    assert ("Less" in _ops_under(compiled, "add1")) == (act != "Relu")
    x = rng(5).normal(size=(3, 2, 4, 4)).astype(np.float32)
    names = [o.name for o in compiled.graph.output]
    out = dict(zip(names, forward(compiled, {"x": x, "lrp_target": np.full(3, -1, np.int64)})))
    for i in range(3):
        R_x, bias, stab = _reference(act, x[i])
        scale = np.abs(R_x).sum() + abs(stab)
        assert np.allclose(out["lrp/relevance/x"][i].reshape(-1), R_x, rtol=1e-4, atol=1e-6 * scale)
        for layer, want in bias.items():
            assert np.allclose(out[f"lrp/bias/{layer}"][i], want, rtol=1e-4, atol=1e-6 * scale), layer
        assert abs(float(out["lrp/stabilizer"][i]) - stab) <= 1e-5 * scale
        assert abs(float(out["lrp/stabilizer"][i])) > 1e-3 * scale  # the stabilizer weighs in this test
