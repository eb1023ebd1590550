"""BatchNormalization: folded into the linear node after which (Conv, ConvTranspose, Gemm) or before which (Conv
without padding, Gemm, MatMul) it sits, checked numerically (same outputs) and by the rules on the linearised
original model; a BN that cannot be folded stays as its own node (pass, or a per-channel linear node)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxlrp.canonicalize import canonicalize
from ops_harness import (LINEAR_RULE_CASES, NEWEST_OPSET, check_linear, forward, make_model, rng, tensor)


def _bn_params(g, channels: int) -> dict:
    """Random inference statistics (positive variance, scales of both signs)."""
    return {"scale": g.normal(size=channels).astype(np.float32), "beta": g.normal(size=channels).astype(np.float32),
            "mean": g.normal(size=channels).astype(np.float32),
            "var": (g.uniform(0.5, 2.0, size=channels)).astype(np.float32)}


def _bn(inp: str, out: str) -> helper.NodeProto:
    """An inference BatchNormalization node."""
    return helper.make_node("BatchNormalization", [inp, "scale", "beta", "mean", "var"], [out], epsilon=1e-3)


def _model(kind: str, opset: int = 17):
    """(model, x_shape, units, op type after folding) for each folding pattern."""
    g = rng(11)
    if kind in ("conv_bn", "bn_conv", "bn_conv_grouped", "bn_conv_padded"):
        group = 2 if kind == "bn_conv_grouped" else 1
        inits = {"W": g.normal(size=(4, 4 // group, 3, 3)).astype(np.float32),
                 "B": g.normal(size=4).astype(np.float32), **_bn_params(g, 4)}
        attrs = dict(group=group, strides=[2, 1])
        if kind == "bn_conv_padded":
            attrs["pads"] = [1, 1, 1, 1]
        conv = lambda i, o: helper.make_node("Conv", [i, "W", "B"], [o], name="conv", **attrs)  # noqa: E731
        nodes = [conv("x", "c"), _bn("c", "y")] if kind == "conv_bn" else [_bn("x", "b"), conv("b", "y")]
        return make_model(nodes, [tensor("x", ["N", 4, 6, 5])], [tensor("y", [None] * 4)], inits, opset), \
            (1, 4, 6, 5), 4, "Conv"
    if kind == "convt_bn":
        inits = {"W": g.normal(size=(4, 3, 2, 2)).astype(np.float32), **_bn_params(g, 6)}
        nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["c"], name="convt", group=2, strides=[2, 2]),
                 _bn("c", "y")]
        return make_model(nodes, [tensor("x", ["N", 4, 3, 3])], [tensor("y", [None] * 4)], inits, opset), \
            (1, 4, 3, 3), 6, "ConvTranspose"
    if kind in ("gemm_bn", "bn_gemm"):
        inits = {"W": g.normal(size=(3, 5)).astype(np.float32), "C": g.normal(size=3).astype(np.float32)}
        if kind == "gemm_bn":
            inits.update(_bn_params(g, 3))
            nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["c"], name="gemm", transB=1, alpha=0.5), _bn("c", "y")]
        else:
            inits.update(_bn_params(g, 5))
            nodes = [_bn("x", "b"), helper.make_node("Gemm", ["b", "W", "C"], ["y"], name="gemm", transB=1, beta=2.0)]
        return make_model(nodes, [tensor("x", ["N", 5])], [tensor("y", [None, None])], inits, opset), (1, 5), 3, "Gemm"
    if kind == "bn_matmul":
        inits = {"W": g.normal(size=(5, 3)).astype(np.float32), **_bn_params(g, 5)}
        nodes = [_bn("x", "b"), helper.make_node("MatMul", ["b", "W"], ["y"], name="mm")]
        return make_model(nodes, [tensor("x", ["N", 5])], [tensor("y", [None, None])], inits, opset), (1, 5), 3, "Gemm"
    raise KeyError(kind)


FOLDS = ["conv_bn", "bn_conv", "bn_conv_grouped", "convt_bn", "gemm_bn", "bn_gemm", "bn_matmul"]


@pytest.mark.parametrize("kind", FOLDS)
def test_fold_keeps_outputs(kind):
    """The folded model has no BatchNormalization left and computes the same outputs."""
    model, x_shape, _, op = _model(kind)
    canon = canonicalize(model)
    assert [n.op_type for n in canon.graph.node] == [op]
    x = rng(1).normal(size=(3,) + x_shape[1:]).astype(np.float32)
    want, got = forward(model, {"x": x})[0], forward(canon, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("kind", FOLDS)
@pytest.mark.parametrize("rule,params", [LINEAR_RULE_CASES[i] for i in (0, 2, 4, 5)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_folded_node_rules(kind, rule, params):
    """The folded node's relevance, bias row and stabilizer equal the rule on the original model's affine map."""
    model, x_shape, units, op = _model(kind)
    check_linear(model, x_shape, rule, params, "W", units, op_key=op)


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_fold_opsets(opset):
    """BN folding at the oldest and newest opsets."""
    model, x_shape, units, op = _model("bn_conv", opset)
    check_linear(model, x_shape, "zplus", {}, "W", units, op_key=op)


def test_bn_before_padded_conv_is_not_folded():
    """Padding after a BN would be BN-shifted at the borders only: that BN stays, as its own node."""
    model, *_ = _model("bn_conv_padded")
    assert [n.op_type for n in canonicalize(model).graph.node] == ["BatchNormalization", "Conv"]


def test_bn_with_two_consumers_is_not_folded():
    """A BN read by two nodes is not absorbed by either."""
    g = rng(2)
    inits = {"W": g.normal(size=(2, 2, 1, 1)).astype(np.float32), **_bn_params(g, 2)}
    # the second reader is not linear (a Conv + identity-branch Add would be merged into one Conv, BN still unfolded)
    nodes = [_bn("x", "b"), helper.make_node("Conv", ["b", "W"], ["c"]), helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], [tensor("y", [None] * 4)], inits)
    assert [n.op_type for n in canonicalize(model).graph.node] == ["BatchNormalization", "Conv", "Relu", "Add"]


@pytest.mark.parametrize("rule,params", [LINEAR_RULE_CASES[i] for i in (0, 2, 4)],
                         ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_unfolded_bn_is_a_per_channel_linear_node(rule, params, opset):
    """A lone BN under a linear rule: the diagonal matrix form with its own bias row per channel."""
    g = rng(3)
    model = make_model([_bn("x", "y")], [tensor("x", ["N", 3, 2, 2])], [tensor("y", [None] * 4)],
                       _bn_params(g, 3), opset)
    check_linear(model, (1, 3, 2, 2), rule, params, "scale", 3, op_key="BatchNormalization")


def test_unfolded_bn_passes_under_builtin_composites():
    """With a built-in composite (base: batchnorm -> pass, as Zennit's unmerged BatchNorm) the seed goes through."""
    import onnxlrp
    g = rng(4)
    nodes = [_bn("x", "b"), helper.make_node("Flatten", ["b"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 3, 2])], [tensor("y", [None] * 2)], _bn_params(g, 3))
    x = g.normal(size=(2, 3, 2)).astype(np.float32)
    exp = onnxlrp.Explainer(model, "epsilon_plus", providers=["CPUExecutionProvider"]).explain(x, target=[1, 4])
    y = forward(model, {"x": x})[0]
    want = np.zeros((2, 6))
    want[0, 1], want[1, 4] = y[0, 1], y[1, 4]
    np.testing.assert_allclose(exp.relevance["x"].reshape(2, -1), want, rtol=1e-6)
    assert not exp.bias
