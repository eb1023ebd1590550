"""Per-layer tails batched across layers (onnxlrp/tails.py): the bias rows of every per-channel layer come from one
Concat / Mul / Split and the stabilizer shares from one Concat / MatMul; the compiled graph's bias relevance,
stabilizer and input relevance against the dense float64 chain of tests/reference.py, layer by layer."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxlrp
import reference as ref
from ops_harness import check_linear, composite_text, forward, linearise, make_model, rng, single, tensor

SHAPES = [((1, 3, 6, 6), (4, 3, 3, 3)), ((1, 4, 6, 6), (5, 4, 3, 3)), ((1, 5, 6, 6), (3, 5, 1, 1))]


def _layers(seed: int = 1) -> list:
    """(weight, bias) of three convolutions."""
    g = rng(seed)
    return [(g.normal(size=w).astype(np.float32) * 0.5, g.normal(size=w[0]).astype(np.float32) * 0.3)
            for _, w in SHAPES]


def _model(layers: list, opset: int) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Relu -> Conv (1x1) -> y, every Conv with a per-channel bias."""
    nodes, inits, prev = [], {}, "x"
    for i, (w, b) in enumerate(layers):
        inits[f"W{i}"], inits[f"B{i}"] = w, b
        pads = [w.shape[2] // 2] * 4
        nodes.append(helper.make_node("Conv", [prev, f"W{i}", f"B{i}"], [f"z{i}"], name=f"conv{i}", pads=pads))
        prev = f"z{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"a{i}"], name=f"relu{i}"))
            prev = f"a{i}"
    nodes[-1].output[0] = "y"
    return make_model(nodes, [tensor("x", ["N", 3, 6, 6])], [tensor("y", ["N", 3, 6, 6])], inits, opset)


def _reference(layers: list, x: np.ndarray, rule: str) -> tuple:
    """(R_x, {layer: R_bias per channel}, stabilizer) of one sample, float64, the seed the argmax logit."""
    mats, acts, a = [], [], x.reshape(-1).astype(np.float64)
    for i, ((x_shape, w_shape), (w, b)) in enumerate(zip(SHAPES, layers)):
        M, b_full = linearise(single("Conv", x_shape, {"W": w, "B": b}, ["W", "B"], pads=[w.shape[2] // 2] * 4),
                              "x", x_shape)
        mats.append((M, b_full))
        acts.append(a)
        z = M @ a + b_full
        a = np.maximum(z, 0) if i < len(layers) - 1 else z
    R = np.zeros_like(a)
    R[np.argmax(a)] = a[np.argmax(a)]
    bias, stab = {}, 0.0
    for i in reversed(range(len(layers))):
        M, b_full = mats[i]
        fn = ref.epsilon if rule == "epsilon" else ref.gamma
        R, Rb, share = fn(M, b_full, acts[i], R)
        bias[f"conv{i}"] = Rb.reshape(layers[i][0].shape[0], -1).sum(axis=1)
        stab += share
    return R, bias, stab


@pytest.mark.parametrize("opset", [17, 11])
@pytest.mark.parametrize("rule", ["epsilon", "gamma"])
def test_batched_bias_rows_and_stabilizer(tmp_path, rule, opset):
    """One Split writes every layer's bias row; the rows, the stabilizer and R_x equal the reference chain's."""
    layers = _layers()
    model = _model(layers, opset)
    rules = {} if rule == "epsilon" else {"Conv": ("gamma", {"gamma": 0.25})}
    path = tmp_path / "c.toml"
    path.write_text(composite_text(rules))
    compiled = onnxlrp.compile(model, str(path))
    onnx.checker.check_model(compiled, full_check=True)
    splits = [n for n in compiled.graph.node if n.op_type == "Split" and n.name.startswith("lrp/_/unscale/")]
    # gamma: conv0 and conv1 feed a Relu alone, so their z < 0 groups carry nothing and are left out (vanishing.py):
    # one group, one bias row each; conv2 writes y and keeps both groups (two parts summed after the Split)
    assert len(splits) == 1 and len(splits[0].output) == (3 if rule == "epsilon" else 4)
    assert sum(o.startswith("lrp/bias/") for o in splits[0].output) == (3 if rule == "epsilon" else 2)
    stab_matmuls = [n for n in compiled.graph.node if n.op_type == "MatMul" and "stab_dots" in n.output[0]]
    # conv0 and conv1 feed a Relu alone: their epsilon denominators are relu(z) + eps (emitters/positive.py) and
    # their shares eps * sum(s) join the one MatMul, as gamma's do
    assert len(stab_matmuls) == 1
    x = rng(4).normal(size=(2, 3, 6, 6)).astype(np.float32)
    names = [o.name for o in compiled.graph.output]
    out = dict(zip(names, forward(compiled, {"x": x, "lrp_target": np.full(2, -1, np.int64)})))
    for i in range(2):
        Rx, bias, stab = _reference(layers, x[i], rule)
        scale = np.abs(Rx).sum() + sum(np.abs(v).sum() for v in bias.values())
        assert np.allclose(out["lrp/relevance/x"][i].reshape(-1), Rx, rtol=1e-4, atol=1e-6 * scale)
        for layer, want in bias.items():
            assert np.allclose(out[f"lrp/bias/{layer}"][i], want, rtol=1e-4, atol=1e-6 * scale), layer
        assert abs(float(out["lrp/stabilizer"][i]) - stab) <= 1e-5 * scale


@pytest.mark.parametrize("rule,params", [("gamma", {"gamma": 0.25}), ("alpha_beta", {"alpha": 2.0, "beta": 1.0})])
@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 1, 1]), dict(pads=[1, 0, 1, 1], strides=[2, 2])],
                         ids=["stride1", "stride2"])
def test_groups_share_one_transposed_convolution(rule, params, attrs):
    """A rule's groups reach each input through one Conv / ConvTranspose over Concat(s_1, s_2) with the transposed
    weights stacked along its input channels: R_x, bias rows and stabilizer equal the dense reference's."""
    g = rng(7)
    w = g.normal(size=(4, 3, 3, 3)).astype(np.float32)
    model = single("Conv", (1, 3, 7, 7), {"W": w, "B": g.normal(size=4).astype(np.float32)}, ["W", "B"], **attrs)
    res = check_linear(model, (1, 3, 7, 7), rule, params, "W", 4)
    nodes = res.compiled.graph.node
    made_by = {o: n.op_type for n in nodes for o in n.output}
    backward = [n for n in nodes if n.op_type in ("Conv", "ConvTranspose") and "/bwd" in n.output[0]]
    # the signed input x: one transposed op over Concat(s_1, s_2) writes both x+'s and x-'s blocks
    assert len(backward) == 1 and made_by.get(backward[0].input[0]) == "Concat"
    assert backward[0].output[0] in {i for n in nodes if n.op_type == "Mul" for i in n.input}
    # and the denominators read x+ and x- through one forward op over Concat(x+, x-)
    forward_ops = [n for n in nodes if n.op_type == "Conv" and "/bwd" not in n.output[0] and n.name != "the_conv"]
    assert forward_ops and all(n.input[0].endswith("x_signed") for n in forward_ops)
