"""Products of two run-time tensors (products.py) against dense float64 NumPy references: the uniform rule
(elementwise and batched MatMul, broadcasting, epsilon), the gate rule (attention weights, a gated MLP's gate, a
factor without relevance, a normalisation statistic), and the factor recogniser's groups."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ops_harness import assert_close, explain_dense, forward, make_model, rng, seed_like, tensor

F32 = np.float32


def _sgn0(z):
    return np.where(z < 0, -1.0, 1.0)


def _s(R, z, eps):
    """s = R / stab(z) (eps 0: units with z == 0 pass nothing) and the stabilizer's share."""
    if eps == 0:
        zero = z == 0
        return np.where(zero, 0.0, R / np.where(zero, 1.0, z)), np.where(zero, R, 0.0)
    s = R / (z + eps * _sgn0(z))
    return s, s * eps * _sgn0(z)


def _unbroadcast(v, shape):
    """Sum v back to a broadcast operand's shape."""
    lead = v.ndim - len(shape)
    v = v.sum(axis=tuple(range(lead))) if lead else v
    return v.sum(axis=tuple(i for i, d in enumerate(shape) if d == 1), keepdims=True)


def _two_inputs(op, a_shape, b_shape, out_rank, pre=None):
    """A node op(a', b') over graph inputs a, b (pre: optional nodes making a' and b' from them)."""
    nodes = list(pre or []) + [helper.make_node(op, ["pa" if pre else "a", "pb" if pre else "b"], ["y"], name="prod")]
    return make_model(nodes, [tensor("a", ["N"] + list(a_shape[1:])), tensor("b", ["N"] + list(b_shape[1:]))],
                      [tensor("y", [None] * out_rank)])


ELEMENTWISE = {"same": ((2, 3, 4), (2, 3, 4)), "broadcast": ((2, 3, 4), (2, 1, 4)), "rank": ((2, 3, 4), (2, 1, 1))}


@pytest.mark.parametrize("case", list(ELEMENTWISE))
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_uniform_elementwise(case, eps):
    """y = a * b: R_a = unbroadcast(y * s / 2), R_b likewise (= R / 2 at eps 0); stabilizer s * eps * sgn0(y)."""
    a_shape, b_shape = ELEMENTWISE[case]
    model = _two_inputs("Mul", a_shape, b_shape, 3)
    g = rng(1)
    feeds = {"a": g.normal(size=a_shape).astype(F32), "b": g.normal(size=b_shape).astype(F32)}
    y = forward(model, feeds)[0].astype(np.float64)
    R = seed_like(y, g)
    res = explain_dense(model, feeds, R, {"product": ("uniform", {"epsilon": eps})})
    s, share = _s(R.astype(np.float64), y, eps)
    half = y * s / 2 if eps else R.astype(np.float64) / 2
    assert_close(res.relevance["a"], half)
    assert_close(res.relevance["b"], _unbroadcast(half, b_shape))
    if eps:
        assert np.allclose(res.stabilizer, share.reshape(2, -1).sum(1), rtol=1e-4, atol=1e-7)
    assert res.conservation_error(R) < 1e-5


MATMUL = {"3d": ((2, 3, 5), (2, 5, 4)), "batched": ((2, 2, 3, 5), (2, 2, 5, 4)), "broadcast": ((2, 2, 3, 5), (2, 1, 5, 4))}


def _matmul_reference(a, b, R, eps, which=(0, 1), factor=0.5):
    """R_a[..i,k] = a[..i,k] sum_j b[..k,j] s[..i,j] * factor, R_b[..k,j] = b[..k,j] sum_i a[..i,k] s[..i,j] * factor,
    written with explicit index sums (einsum) in float64."""
    z = np.matmul(a, b)
    s, share = _s(R, z, eps)
    out = {}
    if 0 in which:
        out[0] = a * np.einsum("...kj,...ij->...ik", np.broadcast_to(b, z.shape[:-2] + b.shape[-2:]), s) * factor
    if 1 in which:
        full = np.einsum("...ik,...ij->...kj", np.broadcast_to(a, z.shape[:-2] + a.shape[-2:]), s) * factor
        out[1] = b * _unbroadcast(full, b.shape) if full.shape != b.shape else b * full
    return out, share


@pytest.mark.parametrize("case", list(MATMUL))
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_uniform_matmul(case, eps):
    """Attention's q k^T and A v: each operand gets half of its x * J^T s."""
    a_shape, b_shape = MATMUL[case]
    model = _two_inputs("MatMul", a_shape, b_shape, len(b_shape))
    g = rng(2)
    feeds = {"a": g.normal(size=a_shape).astype(F32), "b": g.normal(size=b_shape).astype(F32)}
    y = forward(model, feeds)[0].astype(np.float64)
    R = seed_like(y, g)
    res = explain_dense(model, feeds, R, {"product": ("uniform", {"epsilon": eps})})
    want, share = _matmul_reference(feeds["a"].astype(np.float64), feeds["b"].astype(np.float64),
                                    R.astype(np.float64), eps)
    assert_close(res.relevance["a"], want[0])
    assert_close(res.relevance["b"], want[1])
    assert np.allclose(res.stabilizer, share.reshape(2, -1).sum(1), atol=1e-6 * np.abs(R).sum())
    assert res.conservation_error(R) < 1e-5


def _attention_model():
    """A = softmax(a), y = A @ v: the gate rule holds A constant (CP-LRP); uniform splits."""
    nodes = [helper.make_node("Softmax", ["a"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"],
                                                                                  name="prod")]
    return make_model(nodes, [tensor("a", ["N", 2, 3, 3]), tensor("v", ["N", 2, 3, 4])], [tensor("y", [None] * 4)])


@pytest.mark.parametrize("rule", ["uniform", "gate"])
def test_attention_weights_gate(rule):
    """A @ v: under gate all relevance goes to v (v * A^T s) and none into the softmax; under uniform half each,
    the softmax passing its half on by its Taylor form x * (R - y * sum R)."""
    model = _attention_model()
    g = rng(3)
    feeds = {"a": g.normal(size=(2, 2, 3, 3)).astype(F32), "v": g.normal(size=(2, 2, 3, 4)).astype(F32)}
    y = forward(model, feeds)[0].astype(np.float64)
    R = seed_like(y, g)
    res = explain_dense(model, feeds, R, {"product": (rule, {"epsilon": 0.0})})
    a = feeds["a"].astype(np.float64)
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    factor = 0.5 if rule == "uniform" else 1.0
    want, _ = _matmul_reference(p, feeds["v"].astype(np.float64), R.astype(np.float64), 0.0, factor=factor)
    assert_close(res.relevance["v"], want[1])
    if rule == "gate":
        assert np.all(res.relevance["a"] == 0)
        assert not res.bias
    else:
        R_p = want[0]
        assert_close(res.relevance["a"], a * (R_p - p * R_p.sum(-1, keepdims=True)))
    assert res.conservation_error(R) < 1e-5


def test_gated_mlp_gate():
    """silu(g) * u (Llama's MLP): uniform gives each factor R / 2 (the SiLU then passes its half to g, identity);
    the gate rule gives u everything and g nothing."""
    nodes = [helper.make_node("Sigmoid", ["a"], ["sg"]), helper.make_node("Mul", ["a", "sg"], ["silu"]),
             helper.make_node("Mul", ["silu", "b"], ["y"], name="prod")]
    model = make_model(nodes, [tensor("a", ["N", 5]), tensor("b", ["N", 5])], [tensor("y", [None, None])])
    g = rng(4)
    feeds = {"a": g.normal(size=(2, 5)).astype(F32), "b": g.normal(size=(2, 5)).astype(F32)}
    R = seed_like(forward(model, feeds)[0], g)
    uniform = explain_dense(model, feeds, R, {"product": ("uniform", {})})
    assert_close(uniform.relevance["a"], R / 2)
    assert_close(uniform.relevance["b"], R / 2)
    gate = explain_dense(model, feeds, R, {"product": ("gate", {})})
    assert_close(gate.relevance["b"], R)
    assert np.all(gate.relevance["a"] == 0)


def test_runtime_scale_without_relevance():
    """x * c with c computed at run time from shapes only (an attention scale): linear in x, R_x = R at eps 0 and
    x * c * R / stab(x * c) with eps (group 'affine')."""
    shape_nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Constant", [], ["last"],
                                                                              value_ints=[-1]),
                   helper.make_node("Gather", ["shp", "last"], ["d"]), helper.make_node("Cast", ["d"], ["df"], to=1),
                   helper.make_node("Sqrt", ["df"], ["c"]), helper.make_node("Div", ["x", "c"], ["y"], name="scale")]
    model = make_model(shape_nodes, [tensor("x", ["N", 3, 4])], [tensor("y", [None] * 3)])
    g = rng(5)
    x = g.normal(size=(2, 3, 4)).astype(F32)
    R = seed_like(forward(model, {"x": x})[0], g)
    res = explain_dense(model, {"x": x}, R, {"affine": ("epsilon", {"epsilon": 0.0})})
    assert_close(res.relevance["x"], R)
    res = explain_dense(model, {"x": x}, R, {"affine": ("epsilon", {"epsilon": 0.2})})
    y = x.astype(np.float64) / 2.0
    s, share = _s(R.astype(np.float64), y, 0.2)
    assert_close(res.relevance["x"], y * s)
    assert np.allclose(res.stabilizer, share.reshape(2, -1).sum(1), atol=1e-6)


@pytest.mark.parametrize("form", ["div_sqrt", "mul_reciprocal", "mul_pow"])
def test_statistic_is_held_constant(form):
    """x / sqrt(mean(x^2) + eps) in three spellings: the statistic branch gets nothing, x gets R (group
    'normalization', gate rule)."""
    eps = np.array(1e-5, F32)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1]),
             helper.make_node("Add", ["ms", "eps"], ["mse"])]
    if form == "div_sqrt":
        nodes += [helper.make_node("Sqrt", ["mse"], ["rms"]), helper.make_node("Div", ["x", "rms"], ["y"], name="n")]
    elif form == "mul_reciprocal":
        nodes += [helper.make_node("Sqrt", ["mse"], ["rms"]), helper.make_node("Reciprocal", ["rms"], ["inv"]),
                  helper.make_node("Mul", ["x", "inv"], ["y"], name="n")]
    else:
        nodes += [helper.make_node("Pow", ["mse", "half"], ["inv"]), helper.make_node("Mul", ["inv", "x"], ["y"],
                                                                                      name="n")]
    model = make_model(nodes, [tensor("x", ["N", 3, 4])], [tensor("y", [None] * 3)],
                       {"eps": eps, "half": np.array(-0.5, F32)}, opset=17)
    g = rng(6)
    x = g.normal(size=(2, 3, 4)).astype(F32)
    R = seed_like(forward(model, {"x": x})[0], g)
    res = explain_dense(model, {"x": x}, R)
    assert_close(res.relevance["x"], R)
    from onnxlrp.canonicalize import canonicalize
    from onnxlrp.compiler import plan_model
    from onnxlrp.composites import load_composite
    plan = plan_model(canonicalize(model), load_composite("attnlrp"), None)
    assert [n.op_type for n in plan.nodes] == [nodes[-1].op_type]  # the statistic's branch is pruned
    assert plan.rules["n"].name == "gate"


def test_recogniser_kinds():
    """held_factor names the held factor and its kind; the group follows from it."""
    from onnxlrp.canonicalize import canonicalize
    from onnxlrp.compiler import plan_model
    from onnxlrp.composites import load_composite
    from onnxlrp.emitters.products import held_factor, product_group
    nodes = [helper.make_node("Sigmoid", ["a"], ["sg"]), helper.make_node("Mul", ["b", "sg"], ["m1"], name="gate"),
             helper.make_node("Softmax", ["a"], ["p"], axis=-1), helper.make_node("Mul", ["p", "b"], ["m2"],
                                                                                  name="attn"),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Mul", ["b", "r"], ["m3"], name="glu"),
             helper.make_node("Mul", ["a", "b"], ["m4"], name="plain"),
             helper.make_node("Sum", ["m1", "m2", "m3", "m4"], ["y"])]
    model = make_model(nodes, [tensor("a", ["N", 4]), tensor("b", ["N", 4])], [tensor("y", [None, None])])
    plan = plan_model(canonicalize(model), load_composite("attnlrp"), None)
    found = {name: held_factor(plan.views[name]) for name in ("gate", "attn", "glu", "plain")}
    assert (found["gate"].index, found["gate"].kind) == (1, "gate")
    assert (found["attn"].index, found["attn"].kind) == (0, "attention")
    assert (found["glu"].index, found["glu"].kind) == (1, "activation")
    assert found["plain"] is None
    groups = {name: product_group(plan.views[name]) for name in found}
    assert groups == {"gate": "activation", "attn": "product", "glu": "product", "plain": "product"}


def test_gate_rule_without_a_gate_is_refused():
    """The gate rule on a product with no recognisable factor names the node and the rules it accepts."""
    from onnxlrp.errors import UnsupportedModelError
    model = _two_inputs("Mul", (2, 3), (2, 3), 2)
    with pytest.raises(UnsupportedModelError, match=r"Mul x1 \(prod\): rule 'gate' .* does not apply "
                                                    r"\(it accepts: uniform\)"):
        explain_dense(model, {"a": np.ones((1, 3)), "b": np.ones((1, 3))}, np.ones((1, 3), F32),
                      {"product": ("gate", {})})


def test_division_by_an_activation_is_refused():
    """a / b with b an activation that is no statistic: not linear, refused with the reason."""
    from onnxlrp.errors import UnsupportedModelError
    model = _two_inputs("Div", (2, 3), (2, 3), 2)
    with pytest.raises(UnsupportedModelError, match=r"Div x1 \(prod\): both operands carry data \(dividing by an "
                                                    r"activation is not linear"):
        explain_dense(model, {"a": np.ones((1, 3)), "b": np.ones((1, 3))}, np.ones((1, 3), F32))


@pytest.mark.parametrize("spelling", ["reduce_l2", "sqrt_of_sum"])
def test_grn_ratio_of_statistics_is_held_constant(spelling):
    """ConvNeXtV2's GRN y = x + gamma * (x * Nx) + beta, Nx = ||x||_HW / (mean_C ||x||_HW + eps): Nx (a ratio of two
    statistics) is held constant, so with LRP-0 everywhere R_x = (y - beta) / y * R and beta keeps beta / y * R
    (dense float64 NumPy); the statistic's branch (its Div included) is pruned."""
    C = 3
    gamma = np.array([0.5, -1.5, 2.0], F32).reshape(1, C, 1, 1)
    beta = np.array([0.25, -0.5, 0.75], F32).reshape(1, C, 1, 1)
    if spelling == "reduce_l2":
        norm = [helper.make_node("ReduceL2", ["x"], ["gx"], axes=[2, 3], keepdims=1)]
    else:
        norm = [helper.make_node("Mul", ["x", "x"], ["sq"]),
                helper.make_node("ReduceSum", ["sq", "hw"], ["ss"], keepdims=1),
                helper.make_node("Sqrt", ["ss"], ["gx"])]
    nodes = norm + [helper.make_node("ReduceMean", ["gx"], ["mc"], axes=[1], keepdims=1),
                    helper.make_node("Add", ["mc", "eps"], ["den"]),
                    helper.make_node("Div", ["gx", "den"], ["nx"], name="ratio"),
                    helper.make_node("Mul", ["x", "nx"], ["xn"], name="gated"),
                    helper.make_node("Mul", ["gamma", "xn"], ["gxn"]), helper.make_node("Add", ["beta", "gxn"], ["r"]),
                    helper.make_node("Add", ["x", "r"], ["y"], name="residual")]
    model = make_model(nodes, [tensor("x", ["N", C, 4, 5])], [tensor("y", [None] * 4)],
                       {"eps": np.array(1e-6, F32), "gamma": gamma, "beta": beta, "hw": np.array([2, 3], np.int64)},
                       opset=17)
    g = rng(7)
    x = g.normal(size=(2, C, 4, 5)).astype(F32)
    y = forward(model, {"x": x})[0].astype(np.float64)
    x64 = x.astype(np.float64)
    gx = np.sqrt((x64 ** 2).sum(axis=(2, 3), keepdims=True))
    nx = gx / (gx.mean(axis=1, keepdims=True) + 1e-6)
    assert_close(y, x64 + gamma * (x64 * nx) + beta, what="forward")
    R = seed_like(y, g).astype(np.float64)
    rules = {"sum": ("norm", {"stabilizer": 0.0}), "affine": ("epsilon", {"epsilon": 0.0}),
             "normalization": ("gate", {"epsilon": 0.0})}
    res = explain_dense(model, {"x": x}, R.astype(F32), rules)
    assert_close(res.relevance["x"], (y - beta) / y * R)
    assert_close(sum(res.bias.values()), (beta / y * R).sum(axis=(2, 3)), what="beta's relevance per channel")
    assert res.conservation_error(R) < 1e-5
    from onnxlrp.canonicalize import canonicalize
    from onnxlrp.compiler import plan_model
    from onnxlrp.composites import load_composite
    plan = plan_model(canonicalize(model), load_composite("epsilon_plus"), None)
    kept = {n.name for n in plan.nodes}
    assert "ratio" not in kept and plan.rules["gated"].name == "gate"
