"""Sums and products: Add / Sub / Sum of activations under Norm (broadcasting included) against the matrix form
on the linearised sum; Add / Sub / Mul / Div by a constant as linear nodes; signal * gate (swish, hard-swish,
GELU via Erf, squeeze-excitation) sends all relevance to the signal."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import reference as ref
from ops_harness import (LINEAR_RULE_CASES, NEWEST_OPSET, assert_close, check_linear, explain_dense, forward,
                         linearise, make_model, rng, seed_like, tensor)


def _sum_model(op, shapes, opset=17, out_rank=None):
    """One Add/Sub/Sum node over graph inputs a, b[, c] with the given (batch-symbolic) shapes."""
    names = "abc"[: len(shapes)]
    rank = out_rank or max(len(s) for s in shapes)
    node = helper.make_node(op, list(names), ["y"], name=f"the_{op.lower()}")
    return make_model([node], [tensor(n, ["N"] + list(s[1:])) for n, s in zip(names, shapes)],
                      [tensor("y", [None] * rank)], opset=opset)


SUM_CASES = {
    "add_same": ("Add", [(1, 3, 4), (1, 3, 4)]),
    "add_channel_broadcast": ("Add", [(1, 3, 2, 2), (1, 3, 1, 1)]),
    "add_both_broadcast": ("Add", [(1, 3, 1), (1, 1, 4)]),
    "sub_broadcast": ("Sub", [(1, 2, 3), (1, 1, 3)]),
    "sum_three": ("Sum", [(1, 2, 3), (1, 2, 3), (1, 2, 3)]),
    "sum_broadcast": ("Sum", [(1, 2, 3), (1, 2, 1), (1, 1, 3)]),
}


@pytest.mark.parametrize("case", list(SUM_CASES))
@pytest.mark.parametrize("rule", [("norm", {"stabilizer": 1e-6}), ("epsilon", {"epsilon": 0.1})],
                         ids=["norm", "epsilon0.1"])
def test_sum_of_activations(case, rule):
    """Norm: R_i = x_i * J_i^T (R / stab(y)), J_i the map from operand i (broadcasts sum back); the matrix form
    on the stacked operands, and conservation."""
    op, shapes = SUM_CASES[case]
    model = _sum_model(op, shapes)
    g = rng(2)
    names = "abc"[: len(shapes)]
    xs = {n: g.normal(size=(2,) + s[1:]).astype(np.float32) for n, s in zip(names, shapes)}
    y = forward(model, xs)[0]
    R = seed_like(y, g)
    res = explain_dense(model, xs, R, {op: rule})
    eps = rule[1].get("stabilizer", rule[1].get("epsilon"))
    # stack the operands into one input vector: y = [J_a J_b ...] [a; b; ...]
    blocks = []
    for n, s in zip(names, shapes):
        others = {m: np.zeros((1,) + t[1:]) for m, t in zip(names, shapes) if m != n}
        blocks.append(linearise(model, n, s, others)[0])
    J = np.concatenate(blocks, axis=1)
    for i in range(2):
        x = np.concatenate([xs[n][i].reshape(-1) for n in names]).astype(np.float64)
        Rx, _, stab = ref.epsilon(J, np.zeros(J.shape[0]), x, R[i].reshape(-1).astype(np.float64), eps)
        got = np.concatenate([res.relevance[n][i].reshape(-1) for n in names])
        assert_close(got, Rx, 1e-5, f"sample {i}")
        assert abs(res.stabilizer[i] - stab) <= 1e-5 * np.abs(R[i]).sum()
    assert res.conservation_error(R) < 1e-5


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_residual_add(opset):
    """A residual block x + relu(x * w): the two paths' relevance adds up at x, and conserves."""
    nodes = [helper.make_node("Mul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["x", "r"], ["y"])]
    g = rng(4)
    w = g.normal(size=(1, 3, 1)).astype(np.float32)
    model = make_model(nodes, [tensor("x", ["N", 3, 4])], [tensor("y", [None] * 3)], {"w": w}, opset)
    x = g.normal(size=(2, 3, 4)).astype(np.float32)
    y = forward(model, {"x": x})[0]
    R = seed_like(y, g)
    res = explain_dense(model, {"x": x}, R, {"Mul": ("epsilon", {"epsilon": 1e-6})})
    x64, R64, y64 = x.astype(np.float64), R.astype(np.float64), y.astype(np.float64)
    s = R64 / (y64 + 1e-6 * np.where(y64 < 0, -1.0, 1.0))
    r = np.maximum(x64 * w, 0)
    R_r = r * s                               # Norm at the Add: the relu branch's share
    h = x64 * w
    R_h = h * R_r / (h + 1e-6 * np.where(h < 0, -1.0, 1.0))  # epsilon on the diagonal Mul: x * w * s_h
    want = x64 * s + R_h
    assert_close(res.relevance["x"], want, 1e-5)
    assert res.conservation_error(R) < 1e-5


CONST_CASES = {
    "add_bias": ("Add", np.array([0.5, -1.0, 2.0], dtype=np.float32).reshape(1, 3, 1), True),
    "sub_from_const": ("Sub", np.array(1.5, dtype=np.float32), False),
    "mul_scale": ("Mul", np.array([2.0, -0.5, 1.5], dtype=np.float32).reshape(1, 3, 1), True),
    "div_scale": ("Div", np.array([2.0, -4.0, 0.5, 1.0], dtype=np.float32), True),
}


@pytest.mark.parametrize("case", list(CONST_CASES))
@pytest.mark.parametrize("rule,params", [LINEAR_RULE_CASES[i] for i in (0, 2, 4)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_arithmetic_with_constant(case, rule, params):
    """Add / Sub / Mul / Div by a constant as a diagonal linear node (bias row for Add/Sub)."""
    op, const, data_first = CONST_CASES[case]
    inputs = ["x", "c"] if data_first else ["c", "x"]
    node = helper.make_node(op, inputs, ["y"], name="the_op")
    model = make_model([node], [tensor("x", ["N", 3, 4])], [tensor("y", [None] * 3)], {"c": const})
    units = 3 if case == "add_bias" else (1 if case == "sub_from_const" else None)
    check_linear(model, (1, 3, 4), rule, params, "c", units, op_key=op)


def _gate_model(pattern: str, opset: int):
    """x (after a Conv so that the signal is a real feature) times a gate of x, in the ways exporters write it."""
    g = rng(6)
    w = g.normal(size=(3, 2, 3, 3)).astype(np.float32)
    inits = {"W": w}
    nodes = [helper.make_node("Conv", ["x", "W"], ["f"], pads=[1, 1, 1, 1])]
    if pattern == "swish":
        nodes += [helper.make_node("Sigmoid", ["f"], ["g"]), helper.make_node("Mul", ["f", "g"], ["y"])]
    elif pattern == "hardswish_as_mul":
        nodes += [helper.make_node("HardSigmoid", ["f"], ["g"], alpha=1 / 6), helper.make_node("Mul", ["g", "f"], ["y"])]
    elif pattern == "gelu_erf":
        inits.update(sqrt2=np.array(1.4142135, dtype=np.float32), one=np.array(1.0, dtype=np.float32),
                     half=np.array(0.5, dtype=np.float32))
        nodes += [helper.make_node("Div", ["f", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["f", "e1"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["y"])]
    elif pattern == "squeeze_excitation":
        inits.update(W1=g.normal(size=(2, 3, 1, 1)).astype(np.float32), W2=g.normal(size=(3, 2, 1, 1)).astype(np.float32),
                     shape=np.array([0, 3, 1, 1], dtype=np.int64))
        nodes += [helper.make_node("GlobalAveragePool", ["f"], ["p"]), helper.make_node("Conv", ["p", "W1"], ["q"]),
                  helper.make_node("Relu", ["q"], ["r"]), helper.make_node("Conv", ["r", "W2"], ["t"]),
                  helper.make_node("HardSigmoid", ["t"], ["h"], alpha=1 / 6),
                  helper.make_node("Reshape", ["h", "shape"], ["hs"]), helper.make_node("Mul", ["hs", "f"], ["y"])]
    else:
        nodes += _exporter_gate(pattern, inits, opset)
    return make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", [None] * 4)], inits, opset)


def _exporter_gate(pattern: str, inits: dict, opset: int) -> list:
    """f times a gate of f as other exporters spell it (paddle2onnx, tf2onnx, a sigmoid written out), or f scaled
    by a run-time weight that carries no relevance."""
    f32 = lambda v: np.array(v, dtype=np.float32)  # noqa: E731
    inits.update(three=f32(3.0), zero=f32(0.0), six=f32(6.0), sixth=f32(1 / 6), half=f32(0.5), one=f32(1.0))
    mk = helper.make_node
    if pattern == "hardswish_clip_paddle":  # x * Clip(x + 3, 0, 6) / 6
        clip = (mk("Clip", ["a", "zero", "six"], ["g"]) if opset >= 11 else mk("Clip", ["a"], ["g"], min=0.0, max=6.0))
        return [mk("Add", ["f", "three"], ["a"]), clip, mk("Mul", ["f", "g"], ["m"]), mk("Div", ["m", "six"], ["y"])]
    if pattern == "hardsigmoid_clip_tf2onnx":  # x * Clip(x / 6 + 0.5, 0, 1)
        return [mk("Mul", ["f", "sixth"], ["a"]), mk("Add", ["a", "half"], ["b"]),
                mk("Clip", ["b", "zero", "one"], ["g"]), mk("Mul", ["g", "f"], ["y"])]
    if pattern == "relu6_as_min":  # x * Min(Relu(x + 3), 6) / 6, the gate scaled inside
        return [mk("Add", ["f", "three"], ["a"]), mk("Relu", ["a"], ["r"]), mk("Min", ["r", "six"], ["c"]),
                mk("Mul", ["c", "sixth"], ["g"]), mk("Mul", ["f", "g"], ["y"])]
    if pattern == "relu6_as_max_min":  # x * Max(Min(x + 3, 6), 0) * (1/6)
        return [mk("Add", ["f", "three"], ["a"]), mk("Min", ["a", "six"], ["c"]), mk("Max", ["c", "zero"], ["d"]),
                mk("Mul", ["f", "d"], ["m"]), mk("Mul", ["m", "sixth"], ["y"])]
    if pattern == "sigmoid_reciprocal":  # x * 1 / (1 + exp(-x))
        return [mk("Neg", ["f"], ["n"]), mk("Exp", ["n"], ["e"]), mk("Add", ["e", "one"], ["d"]),
                mk("Reciprocal", ["d"], ["g"]), mk("Mul", ["f", "g"], ["y"])]
    if pattern == "sigmoid_div":  # x * (1 / (1 + exp(-1 * x)))
        inits.update(minus=f32(-1.0))
        return [mk("Mul", ["f", "minus"], ["n"]), mk("Exp", ["n"], ["e"]), mk("Add", ["one", "e"], ["d"]),
                mk("Div", ["one", "d"], ["g"]), mk("Mul", ["g", "f"], ["y"])]
    if pattern == "swish_as_div":  # x / (1 + exp(-x))
        return [mk("Neg", ["f"], ["n"]), mk("Exp", ["n"], ["e"]), mk("Add", ["e", "one"], ["d"]),
                mk("Div", ["f", "d"], ["y"])]
    if pattern == "runtime_weight":  # x * (a scale computed from x's shape: carries no relevance)
        inits.update(ax=np.array([3], dtype=np.int64))
        return [mk("Shape", ["f"], ["s"]), mk("Gather", ["s", "ax"], ["w"]), mk("Cast", ["w"], ["wf"], to=1),
                mk("Mul", ["f", "wf"], ["y"])]
    raise ValueError(pattern)


GATE_PATTERNS = ["swish", "hardswish_as_mul", "gelu_erf", "squeeze_excitation", "hardswish_clip_paddle",
                 "hardsigmoid_clip_tf2onnx", "relu6_as_min", "relu6_as_max_min", "sigmoid_reciprocal", "sigmoid_div",
                 "swish_as_div", "runtime_weight"]
TRAILING_SCALE = ("gelu_erf", "hardswish_clip_paddle", "relu6_as_max_min")  # a constant scale after the product


@pytest.mark.parametrize("pattern", GATE_PATTERNS)
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_signal_times_gate(pattern, opset):
    """signal * gate: the Conv output f receives R_y exactly (the gate is a constant weight; the gate branch gets
    nothing), checked against the Conv's matrix-form epsilon rule seeded with R_y."""
    model = _gate_model(pattern, opset)
    g = rng(8)
    x = g.normal(size=(2, 2, 4, 4)).astype(np.float32)
    y = forward(model, {"x": x})[0]
    R = seed_like(y, g)
    res = explain_dense(model, {"x": x}, R, {"Conv": ("epsilon", {"epsilon": 1e-6})})
    J, _ = linearise(make_model([model.graph.node[0]], [tensor("x", ["N", 2, 4, 4])], [tensor("f", [None] * 4)],
                                {"W": _weight(model, "W")}, opset), "x", (1, 2, 4, 4))
    R_f = R.astype(np.float64)
    if pattern in TRAILING_SCALE:  # the trailing constant scale is an affine node under epsilon: R * y / stab(y)
        yd = y.astype(np.float64)
        R_f = R_f * yd / (yd + 1e-6 * np.where(yd < 0, -1.0, 1.0))
    for i in range(2):
        Rx, _, _ = ref.epsilon(J, np.zeros(J.shape[0]), x[i].reshape(-1).astype(np.float64), R_f[i].reshape(-1), 1e-6)
        assert_close(res.relevance["x"][i].reshape(-1), Rx, 1e-5, f"{pattern} sample {i}")
    assert res.conservation_error(R) < 1e-5


def _weight(model, name):
    """An initializer of the model as an array."""
    from onnx import numpy_helper
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_gate_broadcasting_the_signal():
    """A (N, C, 1, 1) signal times a (N, C, H, W) gate: the signal receives R summed over the copies."""
    nodes = [helper.make_node("Sigmoid", ["g"], ["gate"]), helper.make_node("Mul", ["s", "gate"], ["y"])]
    model = make_model(nodes, [tensor("s", ["N", 3, 1, 1]), tensor("g", ["N", 3, 2, 2])], [tensor("y", [None] * 4)])
    g = rng(12)
    feeds = {"s": g.normal(size=(2, 3, 1, 1)).astype(np.float32), "g": g.normal(size=(2, 3, 2, 2)).astype(np.float32)}
    R = g.normal(size=(2, 3, 2, 2)).astype(np.float32)
    res = explain_dense(model, feeds, R)
    assert_close(res.relevance["s"], R.astype(np.float64).sum(axis=(2, 3), keepdims=True), 1e-6)
    assert np.all(res.relevance["g"] == 0)
    assert res.conservation_error(R) < 1e-6


@pytest.mark.parametrize("op", ["Add", "Sub"])
@pytest.mark.parametrize("offset_first", [False, True])
def test_runtime_offset_is_a_bias(op, offset_first):
    """x + o and x - o (or o - x) with o computed at run time from shapes (a detector's anchor grid): the epsilon
    rule with o as the bias, R_x = +-x * s, R_o = +-o * s (reported as the node's bias relevance, summed over all axes
    but the batch and the last one as every absorbed share), s = R / stab(y)."""
    mk = helper.make_node
    inits = {"one": np.array(1, np.int64), "zero": np.array(0, np.int64), "ax": np.array([2], np.int64)}
    nodes = [mk("Shape", ["x"], ["s"]), mk("Gather", ["s", "ax"], ["w"]), mk("Squeeze", ["w"], ["wn"]),
             mk("Range", ["zero", "wn", "one"], ["r"]), mk("Cast", ["r"], ["o"], to=1),
             mk(op, ["o", "x"] if offset_first else ["x", "o"], ["y"], name="offset_op")]
    model = make_model(nodes, [tensor("x", ["N", 3, "W"])], [tensor("y", [None] * 3)], inits)  # W: not foldable
    g = rng(14)
    x = g.normal(size=(2, 3, 5)).astype(np.float32)
    y = forward(model, {"x": x})[0].astype(np.float64)
    R = seed_like(y, g)
    res = explain_dense(model, {"x": x}, R, {"affine": ("epsilon", {"epsilon": 1e-6})})
    s = R.astype(np.float64) / (y + 1e-6 * np.where(y < 0, -1.0, 1.0))
    o = np.arange(5, dtype=np.float64)
    sign_x = -1.0 if (op == "Sub" and offset_first) else 1.0
    sign_o = -1.0 if (op == "Sub" and not offset_first) else 1.0
    assert_close(res.relevance["x"], sign_x * x * s, 1e-5)
    assert_close(res.bias["offset_op"], (sign_o * o * s).sum(axis=1), 1e-5)  # rows (N, last axis), see absorbed_row
    assert res.conservation_error(R) < 1e-5
