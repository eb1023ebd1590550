"""The generic linear emitter's fast paths (onnxlrp/emitters/generic_linear.py) against the matrix-form reference:
weights derived in the graph from the model's own initializer (large weights), stride-1 transposes as flipped
convolutions, inputs known to be >= 0 (z reused, one shared W+ convolution, stabilizers whose sign is known), and
the weight-key algebra they rest on."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxlrp
import onnxlrp.compiler as compiler_module
from onnxlrp.emitters import linear
from onnxlrp.emitters.generic_linear import WeightSigns, basis, lin_key, weight_value
from onnxlrp.rules import modify_weight
from ops_harness import LINEAR_RULE_CASES, check_linear, explain_dense, rng, single

STRIDE1 = {
    "pad1": ((1, 3, 6, 6), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "groups2_dil": ((1, 4, 7, 6), (6, 2, 3, 2), dict(group=2, dilations=[2, 1], pads=[2, 0, 1, 1])),
    "depthwise_x2": ((1, 3, 5, 5), (6, 1, 3, 3), dict(group=3, pads=[0, 1, 1, 0])),
    "1d": ((1, 3, 9), (4, 3, 4), dict(pads=[2, 1])),
}


def _conv(x_shape, w_shape, big_bias: bool = False, **attrs):
    """A single Conv with random weights and bias (bias 1e20 on positive channels when big_bias)."""
    g = rng(3)
    w = g.normal(size=w_shape).astype(np.float32)
    b = g.normal(size=w_shape[0]).astype(np.float32)
    if big_bias:
        b = np.where(b > 0, 1e20, b).astype(np.float32)
    return single("Conv", x_shape, {"W": w, "B": b}, ["W", "B"], **attrs), w_shape[0]


@pytest.fixture
def derived(monkeypatch):
    """Every modified weight derived in the graph (as for large weights), not stored."""
    monkeypatch.setattr(linear, "DERIVE_MIN_SIZE", 0)


@pytest.fixture
def x_nonnegative(monkeypatch):
    """The compiler treats input 'x' as provably >= 0 (as after a Relu); the tests feed |x|."""
    original = compiler_module.nonnegative_values
    monkeypatch.setattr(compiler_module, "nonnegative_values", lambda index, path: original(index, path) | {"x"})


def _nonneg_x(x_shape, batch: int = 2) -> np.ndarray:
    """|normal| input with some exact zeros."""
    x = np.abs(rng(5).normal(size=(batch,) + tuple(x_shape[1:]))).astype(np.float32)
    x.reshape(-1)[::5] = 0.0
    return x


@pytest.mark.parametrize("rule,params", LINEAR_RULE_CASES, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("case", ["pad1", "groups2_dil"])
def test_every_rule_with_derived_weights(derived, case, rule, params):
    """Modified weights computed by graph ops from W (onnxruntime folds them) give the reference's relevance."""
    x_shape, w_shape, attrs = STRIDE1[case]
    model, units = _conv(x_shape, w_shape, **attrs)
    check_linear(model, x_shape, rule, params, "W", units)


@pytest.mark.parametrize("rule,params", LINEAR_RULE_CASES, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("case", list(STRIDE1))
def test_every_rule_on_a_nonnegative_input(derived, x_nonnegative, case, rule, params):
    """x >= 0: x- terms vanish, z is reused (gamma), W+ x is one shared conv, stabilizer signs are known."""
    x_shape, w_shape, attrs = STRIDE1[case]
    model, units = _conv(x_shape, w_shape, **attrs)
    check_linear(model, x_shape, rule, params, "W", units, x=_nonneg_x(x_shape))


@pytest.mark.parametrize("rule,params", [("alpha_beta", {"alpha": 2.0, "beta": 1.0}), ("gamma", {"gamma": 0.25}),
                                         ("zbox", {"low": -1.5, "high": 2.0})], ids=lambda v: v if isinstance(v, str) else "")
def test_a_huge_bias_does_not_cancel_away_the_small_terms(x_nonnegative, rule, params):
    """Bias 1e20 >> W x: a denominator without that bias (the negative alpha-beta group, z^B) must not be computed
    as z - b, which cancels catastrophically (relevance off by orders of magnitude, conservation lost)."""
    x_shape, w_shape, attrs = STRIDE1["pad1"]
    model, _ = _conv(x_shape, w_shape, big_bias=True, **attrs)
    x = _nonneg_x(x_shape)
    R = rng(9).normal(size=(2, w_shape[0]) + x_shape[2:]).astype(np.float32)
    res = explain_dense(model, {"x": x}, R, {"Conv": (rule, params)})
    assert res.conservation_error(R) < 1e-5
    assert np.all(np.isfinite(res.relevance["x"]))


@pytest.mark.parametrize("rule,params", LINEAR_RULE_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_dense_with_derived_weights_and_nonnegative_input(derived, x_nonnegative, rule, params):
    """Gemm (transB=1, the layout torch exports) on a non-negative input, weights derived in the graph."""
    g = rng(7)
    model = single("Gemm", (1, 5), {"B": g.normal(size=(6, 5)).astype(np.float32),
                                     "C": g.normal(size=6).astype(np.float32)}, ["B", "C"], transB=1)
    check_linear(model, (1, 5), rule, params, "B", 6, x=_nonneg_x((1, 5)))


def test_compiled_file_keeps_one_copy_of_each_weight(tmp_path):
    """W is the model's own initializer; W+, gamma's weights and the flipped kernels are graph ops (folded by
    onnxruntime), so the compiled model is barely larger than the original; stride-1 convs have no ConvTranspose."""
    g = rng(11)
    w1 = g.normal(size=(32, 16, 3, 3)).astype(np.float32)  # both >= DERIVE_MIN_SIZE elements
    w2 = g.normal(size=(32, 32, 3, 3)).astype(np.float32)
    nodes = [onnx.helper.make_node("Conv", ["x", "W1", "B1"], ["h"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", ["h"], ["r"]),
             onnx.helper.make_node("Conv", ["r", "W2", "B2"], ["y"], pads=[1, 1, 1, 1])]
    from ops_harness import make_model, tensor
    model = make_model(nodes, [tensor("x", ["N", 16, 8, 8])], [tensor("y", ["N", 32, 8, 8])],
                       {"W1": w1, "B1": g.normal(size=32).astype(np.float32), "W2": w2,
                        "B2": g.normal(size=32).astype(np.float32)})
    original = sum(t.ByteSize() for t in model.graph.initializer)
    for composite in ("epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        compiled = onnxlrp.compile(model, composite)
        stored = sum(t.ByteSize() for t in compiled.graph.initializer)
        assert stored < 1.1 * original, (composite, stored, original)
        assert not [n for n in compiled.graph.node if n.op_type == "ConvTranspose"], composite
        x = rng(12).normal(size=(2, 16, 8, 8)).astype(np.float32)
        exp = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"]).explain(x)
        assert np.all(exp.conservation()["relative_error"] < 1e-4), composite


KEYS = ["W", "W+", "W-", "Wup:0.25", "Wdn:0.25", "Wup:1.5", "Wdn:0.1"]


@pytest.mark.parametrize("key", KEYS)
def test_weight_keys_are_combinations_of_w_and_w_plus(key):
    """basis(key) = (a, c) with modify_weight(key, W) == a W + c W+; lin: keys round-trip."""
    w = rng(2).normal(size=(5, 4))
    a, c = basis(key)
    np.testing.assert_allclose(modify_weight(key, w), a * w + c * np.maximum(w, 0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(weight_value(lin_key(a, c), w), modify_weight(key, w), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(weight_value(f"np:-2.0:{key}", w), -2.0 * modify_weight(key, w))


@pytest.mark.parametrize("kind", ["mixed", "positive", "negative", "zero"])
@pytest.mark.parametrize("key", KEYS + ["W2", "ones", "lin:-1.0:0.5", "lin:0.0:-2.0"])
def test_weight_signs_match_numpy(kind, key):
    """WeightSigns predicts the sign pattern of every modified weight from two scans of W."""
    w = {"mixed": rng(4).normal(size=(6, 3)), "positive": np.abs(rng(4).normal(size=(6, 3))),
         "negative": -np.abs(rng(4).normal(size=(6, 3))), "zero": np.zeros((6, 3))}[kind]
    value = weight_value(key, w)
    want = 0 if not np.any(value) else 1 if np.all(value >= 0) else -1 if np.all(value <= 0) else None
    assert WeightSigns.of(w).sign(key, w) == want


def test_gamma_on_a_signed_input_shares_one_positive_part(tmp_path):
    """Gamma where x has both signs: both sign regions' denominators come from z and one Q = W+ x+ + W- x- (two
    convolutions, not four: z + g Q where z > 0, (1+g) z - g Q where z < 0), and the relevance still equals the
    matrix-form reference (test_every_rule_with_derived_weights checks the numbers; this checks the graph)."""
    x_shape, w_shape, attrs = STRIDE1["pad1"]
    model, _ = _conv(x_shape, w_shape, **attrs)
    composite = tmp_path / "gamma.toml"
    composite.write_text('extends = "base"\n\n[[match]]\ngroup = "convolution"\nrule = "gamma"\ngamma = 0.25\n')
    compiled = onnxlrp.compile(model, str(composite))
    convs = [n for n in compiled.graph.node if n.op_type == "Conv"]
    forward = [n for n in convs if n.input[0] in ("x",) or "x_pos" in n.input[0] or "x_neg" in n.input[0]
               or "x_signed" in n.input[0]]
    # the model's own Conv and Q = [W+ | W-] over Concat(x+, x-) (tests/test_tails.py checks that form)
    assert len(forward) == 2, [n.input[0] for n in convs]
    x = rng(13).normal(size=(2,) + x_shape[1:]).astype(np.float32)
    exp = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"]).explain(x)
    assert np.all(exp.conservation()["relative_error"] < 1e-5)
