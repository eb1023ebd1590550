"""Every linear rule on single Gemm, MatMul and Conv nodes against a dense float64 NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlrp
import reference as ref
from single_node import composite_file, linearise, make_model

RNG = np.random.default_rng(1234)


def _gemm_case(trans_b: int, alpha: float, beta: float):
    """Gemm(x, B, C) with transB/alpha/beta; a zero row in W and C makes one unit's z exactly 0."""
    w = RNG.normal(size=(6, 5)).astype(np.float32)
    w[2] = 0.0
    c = RNG.normal(size=6).astype(np.float32)
    c[2] = 0.0
    b_mat = w if trans_b else w.T
    model = make_model("Gemm", (1, 5), 2, {"B": b_mat, "C": c}, ["x", "B", "C"], transB=trans_b, alpha=alpha, beta=beta)
    return model, (1, 5), 2


def _matmul_case(left: bool):
    """MatMul with a constant right (x @ W) or left (W @ x) operand, no bias."""
    if left:
        w = RNG.normal(size=(4, 3)).astype(np.float32)
        return make_model("MatMul", (1, 3, 2), 3, {"W": w}, ["W", "x"]), (1, 3, 2), None
    w = RNG.normal(size=(5, 4)).astype(np.float32)
    return make_model("MatMul", (1, 3, 5), 3, {"W": w}, ["x", "W"]), (1, 3, 5), None


def _conv_case(group: int = 1, **attrs):
    """Conv 2-D with bias; channel 1 has zero weights and bias (z == 0 there)."""
    cin, cout = 4, 4
    w = RNG.normal(size=(cout, cin // group, 3, 3)).astype(np.float32)
    w[1] = 0.0
    bias = RNG.normal(size=cout).astype(np.float32)
    bias[1] = 0.0
    model = make_model("Conv", (1, cin, 5, 5), 4, {"W": w, "B": bias}, ["x", "W", "B"], group=group, **attrs)
    return model, (1, cin, 5, 5), cout


def _with_unit_weights(model):
    """The same node with its weight initializer (B of Gemm, W otherwise) replaced by ones: the receptive field."""
    import onnx
    from onnx import numpy_helper
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    weight = "B" if copy.graph.node[0].op_type == "Gemm" else "W"
    for i, t in enumerate(copy.graph.initializer):
        if t.name == weight:
            copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(t)), weight))
    return copy


CASES = {
    "gemm": lambda: _gemm_case(1, 1.0, 1.0),
    "gemm_notrans_alpha": lambda: _gemm_case(0, 0.7, 1.5),
    "matmul_right": lambda: _matmul_case(False),
    "matmul_left": lambda: _matmul_case(True),
    "conv": lambda: _conv_case(),
    "conv_strided_padded": lambda: _conv_case(strides=[2, 2], pads=[1, 0, 1, 2]),
    "conv_grouped": lambda: _conv_case(group=2, dilations=[2, 1], pads=[2, 1, 2, 1]),
}

RULES = [
    ("epsilon", {"epsilon": 1e-6}), ("epsilon", {"epsilon": 0.25}), ("epsilon", {"epsilon": 0.0}),
    ("zplus", {}), ("alpha_beta", {"alpha": 2.0, "beta": 1.0}), ("alpha_beta", {"alpha": 1.0, "beta": 0.0}),
    ("gamma", {"gamma": 0.25}), ("gamma", {"gamma": 1.0}), ("zbox", {"low": -1.5, "high": 2.0}),
    ("wsquare", {}), ("flat", {}), ("norm", {"stabilizer": 1e-3}),
]


def _reference(rule: str, params: dict, M, b, x, R, field, x_shape):
    """Dispatch to the dense reference of a rule."""
    eps = params.get("epsilon", params.get("stabilizer", 1e-6))
    if rule in ("epsilon", "norm"):
        return ref.epsilon(M, b, x, R, eps)
    if rule == "zplus":
        return ref.zplus(M, b, x, R)
    if rule == "alpha_beta":
        return ref.alpha_beta(M, b, x, R, params["alpha"], params["beta"])
    if rule == "gamma":
        return ref.gamma(M, b, x, R, params["gamma"])
    if rule == "zbox":
        low, high = _bounds(params, x_shape)
        return ref.zbox(M, b, x, R, low, high)
    if rule == "wsquare":
        return ref.wsquare(M, b, x, R)
    if rule == "flat":
        return ref.flat(field, b, x, R)
    raise KeyError(rule)


def _bounds(params: dict, x_shape) -> tuple:
    """Bounds expanded to x's flat shape (scalar or per channel along axis 1)."""
    out = []
    for key in ("low", "high"):
        v = np.asarray(params[key], dtype=np.float64)
        if v.ndim == 1:
            v = v.reshape((1, -1) + (1,) * (len(x_shape) - 2))
        out.append(np.broadcast_to(v, (1,) + tuple(x_shape[1:])).reshape(-1))
    return out


def _bias_units(Rb_full: np.ndarray, n_units, out_shape) -> np.ndarray:
    """Full per-output bias relevance summed to one value per unit (channel for Conv)."""
    if n_units is None:
        return None
    return Rb_full.reshape(n_units, -1).sum(axis=1) if len(out_shape) > 2 else Rb_full


def _check(tmp_path, case: str, rule: str, params: dict, init: str) -> None:
    model, x_shape, units = CASES[case]()[:3]
    M, b = linearise(model, x_shape)
    field = (linearise(_with_unit_weights(model), x_shape)[0] != 0).astype(np.float64)
    comp = composite_file(tmp_path, model.graph.node[0].op_type, rule, **params)
    explainer = onnxlrp.Explainer(model, composite=str(comp), init=init)
    n = 3
    x = RNG.normal(size=(n,) + tuple(x_shape[1:])).astype(np.float32)
    x[0].reshape(-1)[: x[0].size // 3] = 0.0  # some exact zeros in the input
    # targets: for init='one' aim at units whose z is exactly 0 where the case has them
    zero_units = np.flatnonzero(np.all(M == 0, axis=1) & (b == 0))
    targets = [int(zero_units[0]) if (init == "one" and zero_units.size) else 0, 1, M.shape[0] - 1]
    exp = explainer.explain(x, target=targets)
    out_shape = explainer.session.get_outputs()[0].shape
    for i in range(n):
        xv = x[i].reshape(-1).astype(np.float64)
        z = M @ xv + b
        R = np.zeros_like(z)
        R[targets[i]] = z[targets[i]] if init == "logit" else 1.0
        Rx, Rb, stab = _reference(rule, params, M, b, xv, R, field, x_shape)
        scale = max(np.abs(Rx).sum(), np.abs(R).sum(), 1e-12)
        np.testing.assert_allclose(exp.relevance["x"][i].reshape(-1), Rx, rtol=1e-4, atol=1e-5 * scale)
        if units is not None and exp.bias:
            got_b = exp.bias[model.graph.node[0].name][i]
            np.testing.assert_allclose(got_b, _bias_units(Rb, units, out_shape), rtol=1e-4, atol=1e-5 * scale)
        elif units is not None:
            assert np.allclose(Rb, 0.0, atol=1e-6 * scale), "reference has bias relevance but none was reported"
        assert abs(exp.stabilizer[i] - stab) <= 1e-4 * max(abs(stab), scale)
        assert abs(exp.total[i] - R.sum()) <= 1e-5 * max(1.0, abs(R.sum()))
    c = exp.conservation()
    assert np.all(c["relative_error"] < 1e-4), c["relative_error"]


@pytest.mark.parametrize("rule,params", RULES, ids=[f"{r}-{'-'.join(f'{k}{v}' for k, v in p.items())}" for r, p in RULES])
@pytest.mark.parametrize("case", list(CASES))
def test_rule_matches_dense_reference(tmp_path, case, rule, params):
    """R_x, bias relevance, stabilizer share and total equal the matrix-form rule (float64) to float32 precision."""
    _check(tmp_path, case, rule, params, "logit")


@pytest.mark.parametrize("rule,params", [r for r in RULES if r[0] in ("epsilon", "gamma", "zplus", "alpha_beta")])
@pytest.mark.parametrize("case", ["gemm", "conv"])
def test_rule_on_exactly_zero_preactivation(tmp_path, case, rule, params):
    """With a one-hot seed on a unit whose z is exactly 0, the rule still conserves (what it drops is reported)."""
    _check(tmp_path, case, rule, params, "one")


def test_zbox_per_channel_bounds(tmp_path):
    """z^B with a per-channel low/high list (one value per input channel)."""
    _check(tmp_path, "conv", "zbox", {"low": [-1.0, -2.0, -0.5, -3.0], "high": [1.0, 2.5, 0.5, 3.0]}, "logit")
