"""Normalisations with their statistics held constant (normalization.py) against the dense float64 NumPy
reference: per normalised group, y = w * (x - mean) / sigma + b is the linear map J = diag(w) (I - 1/n) / sigma
plus the bias b, and the rule is R_x = x * J^T s, R_b = b * s, s = R / stab(y). Decomposed forms (as older
opsets, tf2onnx and the torch exporters write LayerNorm and RMSNorm) give the same numbers as the fused ops."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ops_harness import NEWEST_OPSET, assert_close, explain_dense, forward, make_model, rng, seed_like, tensor

F32 = np.float32


def _reference(x, R, groups, w, b, ln_eps, rule_eps, centre=True):
    """R_x, R_b (per element), stabilizer (per sample) of the held-statistics rule; `groups(a)` reshapes an
    (N, ...) array to (N, G, n) normalisation groups and back with groups(a, back=True); w, b full-shape."""
    x64, R64 = x.astype(np.float64), R.astype(np.float64)
    xg = groups(x64)
    mean = xg.mean(-1, keepdims=True)
    sigma = np.sqrt(((xg - mean) ** 2).mean(-1, keepdims=True) + ln_eps)
    xhat = groups((xg - mean) / sigma if centre else xg / sigma, back=True)
    y = w * xhat + b
    if rule_eps == 0:
        s = np.where(y == 0, 0.0, R64 / np.where(y == 0, 1.0, y))
        share = np.where(y == 0, R64, 0.0)
    else:
        sign = np.where(y < 0, -1.0, 1.0)
        s = R64 / (y + rule_eps * sign)
        share = s * rule_eps * sign
    g = groups(w * s)
    n = g.shape[-1]
    back = (g - g.mean(-1, keepdims=True)) if centre else g
    R_x = x64 * groups(back / sigma, back=True) if n else None
    return R_x, b * s, share.reshape(len(x), -1).sum(1)


def _last_axes(k):
    """Groups over the last k axes."""
    def groups(a, back=False, shape=None):
        return a.reshape(groups.shape) if back else (setattr(groups, "shape", a.shape) or
                                                     a.reshape(a.shape[0], -1, int(np.prod(a.shape[-k:]))))
    return groups


def _channel_groups(num_groups):
    """(N, C, ...) -> (N, G, C / G * spatial) groups."""
    def groups(a, back=False):
        if back:
            return a.reshape(groups.shape)
        groups.shape = a.shape
        return a.reshape(a.shape[0], num_groups, -1)
    return groups


LN_CASES = {"last_axis": ((2, 3, 8), -1), "two_axes": ((2, 3, 4, 5), 2)}


@pytest.mark.parametrize("case", list(LN_CASES))
@pytest.mark.parametrize("rule_eps", [0.0, 0.05])
def test_layer_normalization(case, rule_eps):
    """LayerNormalization (opset 17): the reference on random x, scale and bias."""
    shape, axis = LN_CASES[case]
    g = rng(1)
    norm_shape = shape[axis % len(shape):]
    w = (1 + 0.3 * g.normal(size=norm_shape)).astype(F32)
    b = (0.5 * g.normal(size=norm_shape)).astype(F32)
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], name="ln", axis=axis, epsilon=1e-3)
    model = make_model([node], [tensor("x", ["N"] + list(shape[1:]))], [tensor("y", [None] * len(shape))],
                       {"w": w, "b": b})
    x = g.normal(size=shape).astype(F32)
    R = seed_like(forward(model, {"x": x})[0], g)
    res = explain_dense(model, {"x": x}, R, {"normalization": ("gate", {"epsilon": rule_eps})})
    R_x, R_b, stab = _reference(x, R, _last_axes(len(norm_shape)), w.astype(np.float64), b.astype(np.float64),
                                1e-3, rule_eps)
    assert_close(res.relevance["x"], R_x)
    lead = tuple(range(1, len(shape) - len(norm_shape)))
    assert_close(res.bias["ln"], R_b.sum(axis=lead).reshape(2, -1), 1e-5, "beta")
    assert np.allclose(res.stabilizer, stab, atol=1e-6 * np.abs(R).sum())
    assert res.conservation_error(R) < 1e-5


def _decomposed_layer_norm(with_affine: bool = True) -> list:
    """ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add: LayerNorm as opset < 17 and tf2onnx write it."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["xhat"], name="div")]
    if with_affine:
        nodes += [helper.make_node("Mul", ["xhat", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    return nodes


def test_decomposed_layer_norm_equals_the_fused_op():
    """The decomposed LayerNorm (explained op by op: the Div by the statistic held constant, the centering's
    ReduceMean and Sub by LRP-0) gives the fused op's numbers, which equal the reference."""
    g = rng(2)
    w = (1 + 0.3 * g.normal(size=8)).astype(F32)
    b = (0.5 * g.normal(size=8)).astype(F32)
    consts = {"two": np.array(2.0, F32), "eps": np.array(1e-3, F32), "w": w, "b": b}
    decomposed = make_model(_decomposed_layer_norm(), [tensor("x", ["N", 3, 8])], [tensor("y", [None] * 3)], consts,
                            opset=13)
    fused = make_model([helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], epsilon=1e-3)],
                       [tensor("x", ["N", 3, 8])], [tensor("y", [None] * 3)], {"w": w, "b": b})
    x = g.normal(size=(2, 3, 8)).astype(F32)
    R = seed_like(forward(fused, {"x": x})[0], g)
    zero = {"sum": ("norm", {"stabilizer": 0.0}), "avgpool": ("norm", {"stabilizer": 0.0}),
            "affine": ("epsilon", {"epsilon": 0.0}), "normalization": ("gate", {})}
    a = explain_dense(decomposed, {"x": x}, R, zero)
    f = explain_dense(fused, {"x": x}, R, zero)
    assert_close(a.relevance["x"], f.relevance["x"], 1e-4)
    R_x, _, _ = _reference(x, R, _last_axes(1), w.astype(np.float64), b.astype(np.float64), 1e-3, 0.0)
    assert_close(f.relevance["x"], R_x)
    assert a.conservation_error(R) < 1e-5


@pytest.mark.parametrize("form", ["decomposed", "opset23"])
@pytest.mark.parametrize("rule_eps", [0.0, 0.05])
def test_rms_norm(form, rule_eps):
    """RMSNorm: R_x = y * s (= R at eps 0, the identity rule): decomposed (Pow, ReduceMean, Add, Sqrt, Reciprocal,
    Mul, Mul) and opset 23's RMSNormalization."""
    g = rng(3)
    w = (1 + 0.3 * g.normal(size=6)).astype(F32)
    if form == "decomposed":
        nodes = [helper.make_node("Pow", ["x", "two"], ["x2"]), helper.make_node("ReduceMean", ["x2"], ["ms"],
                                                                                 axes=[-1]),
                 helper.make_node("Add", ["ms", "eps"], ["me"]), helper.make_node("Sqrt", ["me"], ["rms"]),
                 helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["xn"]),
                 helper.make_node("Mul", ["w", "xn"], ["y"])]
        model = make_model(nodes, [tensor("x", ["N", 4, 6])], [tensor("y", [None] * 3)],
                           {"two": np.array(2.0, F32), "eps": np.array(1e-5, F32), "w": w}, opset=17)
        rules = {"normalization": ("gate", {"epsilon": rule_eps}), "affine": ("epsilon", {"epsilon": rule_eps})}
    else:
        model = make_model([helper.make_node("RMSNormalization", ["x", "w"], ["y"], epsilon=1e-5)],
                           [tensor("x", ["N", 4, 6])], [tensor("y", [None] * 3)], {"w": w}, opset=NEWEST_OPSET)
        rules = {"normalization": ("gate", {"epsilon": rule_eps})}
    x = g.normal(size=(2, 4, 6)).astype(F32)
    y = forward(model, {"x": x})[0].astype(np.float64)
    R = seed_like(y, g)
    res = explain_dense(model, {"x": x}, R, rules)
    if rule_eps == 0:
        assert_close(res.relevance["x"], R)
    elif form == "opset23":
        sign = np.where(y < 0, -1.0, 1.0)
        assert_close(res.relevance["x"], y * R / (y + rule_eps * sign))
    assert res.conservation_error(R) < 1e-5


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_instance_normalization(opset):
    """InstanceNormalization: per sample and channel over the spatial axes; the bias per channel."""
    g = rng(4)
    w = (1 + 0.3 * g.normal(size=3)).astype(F32)
    b = (0.5 * g.normal(size=3)).astype(F32)
    model = make_model([helper.make_node("InstanceNormalization", ["x", "w", "b"], ["y"], name="inorm", epsilon=1e-3)],
                       [tensor("x", ["N", 3, 4, 5])], [tensor("y", [None] * 4)], {"w": w, "b": b}, opset=opset)
    x = g.normal(size=(2, 3, 4, 5)).astype(F32)
    R = seed_like(forward(model, {"x": x})[0], g)
    res = explain_dense(model, {"x": x}, R, {"normalization": ("gate", {"epsilon": 0.0})})
    wf, bf = w.reshape(1, 3, 1, 1).astype(np.float64), b.reshape(1, 3, 1, 1).astype(np.float64)
    R_x, R_b, _ = _reference(x, R, _channel_groups(3), wf, bf, 1e-3, 0.0)
    assert_close(res.relevance["x"], R_x)
    assert_close(res.bias["inorm"], R_b.sum(axis=(2, 3)), 1e-5, "bias")
    assert res.conservation_error(R) < 1e-5


@pytest.mark.parametrize("num_groups", [1, 2, 4])
def test_group_normalization(num_groups):
    """GroupNormalization (opset 21): 4 channels in 1, 2 or 4 groups; scale and bias per channel."""
    g = rng(5)
    w = (1 + 0.3 * g.normal(size=4)).astype(F32)
    b = (0.5 * g.normal(size=4)).astype(F32)
    model = make_model([helper.make_node("GroupNormalization", ["x", "w", "b"], ["y"], name="gnorm", epsilon=1e-3,
                                         num_groups=num_groups)],
                       [tensor("x", ["N", 4, 3, 3])], [tensor("y", [None] * 4)], {"w": w, "b": b}, opset=21)
    x = g.normal(size=(2, 4, 3, 3)).astype(F32)
    R = seed_like(forward(model, {"x": x})[0], g)
    res = explain_dense(model, {"x": x}, R, {"normalization": ("gate", {"epsilon": 0.0})})
    per_channel = lambda v: v.reshape(1, 4, 1, 1).astype(np.float64)  # noqa: E731
    R_x, R_b, _ = _reference(x, R, _channel_groups(num_groups), per_channel(w), per_channel(b), 1e-3, 0.0)
    assert_close(res.relevance["x"], R_x)
    assert_close(res.bias["gnorm"], R_b.sum(axis=(2, 3)), 1e-5, "bias")
    assert res.conservation_error(R) < 1e-5
