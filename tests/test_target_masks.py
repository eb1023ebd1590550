"""Targets on dense outputs: explain(x, target_mask=M) explains sum(M * output) per sample. Its relevance equals the
emitters run on the dense seed M * output (ops_harness.explain_dense, the op tests' reference pipeline), the total is
sum(M * output) and the identity holds; region=, channel= and anchor= equal the masks written out in NumPy; the
compiled graph's optional lrp_target_mask input works from onnxruntime directly; every misuse is one clear error."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import onnxlrp
from onnxlrp.errors import InputError
from ops_harness import assert_close, composite_text, explain_dense, forward, make_model, rng, tensor

mk = helper.make_node


def _map_model(dims=("H", "W")):
    """x (N, 3, H, W) -> Conv 3x3 -> Relu -> Conv 1x1 (2 channels): a per-pixel map (N, 2, H, W) with biases."""
    g = rng(21)
    inits = {"W1": g.normal(size=(4, 3, 3, 3)).astype(np.float32), "B1": g.normal(size=4).astype(np.float32),
             "W2": g.normal(size=(2, 4, 1, 1)).astype(np.float32), "B2": g.normal(size=2).astype(np.float32)}
    nodes = [mk("Conv", ["x", "W1", "B1"], ["c"], pads=[1, 1, 1, 1]), mk("Relu", ["c"], ["r"]),
             mk("Conv", ["r", "W2", "B2"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", 3, *dims])], [tensor("y", [None] * 4)], inits)


def _detection_model(layout: str):
    """x (N, 6) -> Gemm -> Reshape to a detection tensor (N, 4, 7) ('CA') or (N, 7, 4) ('AC')."""
    g = rng(22)
    inits = {"W": g.normal(size=(6, 28)).astype(np.float32), "B": g.normal(size=28).astype(np.float32),
             "shape": np.array([0, 4, 7] if layout == "CA" else [0, 7, 4], np.int64)}
    nodes = [mk("Gemm", ["x", "W", "B"], ["z"]), mk("Reshape", ["z", "shape"], ["y"])]
    return make_model(nodes, [tensor("x", ["N", 6])], [tensor("y", [None] * 3)], inits)


@pytest.fixture(scope="module")
def epsilon_everywhere(tmp_path_factory):
    """The composite explain_dense uses (base, epsilon on every linear node), as a file for Explainer."""
    path = tmp_path_factory.mktemp("composite") / "eps.toml"
    path.write_text(composite_text({}))
    return str(path)


@pytest.mark.parametrize("hw", [(6, 5), (9, 11)])
def test_mask_equals_the_dense_seed(epsilon_everywhere, hw):
    """One dynamic-size compiled graph, two sizes: relevance == the emitters on the seed M * y, total ==
    sum(M * y) per sample, and inputs + biases + stabilizer == total."""
    model = _map_model()
    explainer = onnxlrp.Explainer(model, epsilon_everywhere)
    g = rng(hw[0])
    x = g.normal(size=(2, 3) + hw).astype(np.float32)
    y = forward(model, {"x": x})[0].astype(np.float64)
    mask = (g.random(size=y.shape) < 0.3) * g.uniform(0.5, 2.0, size=y.shape)
    exp = explainer.explain(x, target_mask=mask)
    reference = explain_dense(model, {"x": x}, (mask * y).astype(np.float32))
    assert_close(exp.relevance["x"], reference.relevance["x"], 1e-5)
    np.testing.assert_allclose(exp.total, (mask * y).reshape(2, -1).sum(1), rtol=1e-5)
    assert np.all(exp.conservation()["relative_error"] < 1e-5)
    assert np.all(exp.target == -1) and exp.target_mask.shape == y.shape


def test_region_and_channel_are_masks(epsilon_everywhere):
    """region=(y0, y1, x0, x1) and channel=k equal the masks written out (same mask for every sample)."""
    explainer = onnxlrp.Explainer(_map_model(), epsilon_everywhere)
    x = rng(2).normal(size=(2, 3, 8, 10)).astype(np.float32)
    mask = np.zeros((2, 2, 8, 10))
    mask[:, :, 2:5, 3:9] = 1
    by_region = explainer.explain(x, region=(2, 5, 3, 9))
    np.testing.assert_array_equal(by_region.relevance["x"], explainer.explain(x, target_mask=mask).relevance["x"])
    mask[:, 0] = 0
    both = explainer.explain(x, region=(2, 5, 3, 9), channel=1)
    assert_close(both.relevance["x"], explainer.explain(x, target_mask=mask[0]).relevance["x"], 1e-6)
    whole = np.zeros((2, 8, 10))
    whole[1] = 1
    np.testing.assert_allclose(explainer.explain(x, channel=1).total,
                               (by_region.output * whole).reshape(2, -1).sum(1), rtol=1e-5)


@pytest.mark.parametrize("layout", ["CA", "AC"])
def test_anchor_class_pairs(epsilon_everywhere, layout):
    """anchor=(a, c) of a detection tensor (N, C, A) or (N, A, C): the anchor axis is the longer one; one pair
    for every sample, or one per sample; equals the one-hot mask and the plain flat target."""
    explainer = onnxlrp.Explainer(_detection_model(layout), epsilon_everywhere)
    x = rng(3).normal(size=(2, 6)).astype(np.float32)
    exp = explainer.explain(x, anchor=[(5, 2), (1, 3)])
    flat = [2 * 7 + 5, 3 * 7 + 1] if layout == "CA" else [5 * 4 + 2, 1 * 4 + 3]
    plain = explainer.explain(x, target=flat)
    assert_close(exp.relevance["x"], plain.relevance["x"], 1e-6)
    np.testing.assert_allclose(exp.total, plain.total, rtol=1e-6)
    one = explainer.explain(x, anchor=(5, 2))
    assert_close(one.relevance["x"][0], exp.relevance["x"][0], 1e-6)


def test_mask_input_in_onnxruntime_directly(epsilon_everywhere):
    """The compiled file from any runtime: feeding lrp_target_mask explains sum(M * y); leaving it out explains
    lrp_target as before; init='one' explains sum(M)."""
    model = _map_model((5, 6))
    x = rng(4).normal(size=(1, 3, 5, 6)).astype(np.float32)
    y = forward(model, {"x": x})[0].astype(np.float64)
    mask = np.zeros((1, 2, 5, 6), np.float32)
    mask[0, 1, 1:3, 2:5] = 1
    for init, want in (("logit", (mask * y).sum()), ("one", mask.sum())):
        compiled = onnxlrp.compile(model, epsilon_everywhere, init=init)
        session = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
        target = np.array([7], np.int64)
        total = session.run(["lrp/total"], {"x": x, "lrp_target": target, "lrp_target_mask": mask})[0]
        np.testing.assert_allclose(total, [want], rtol=1e-5)
        plain = session.run(["lrp/total"], {"x": x, "lrp_target": target})[0]
        np.testing.assert_allclose(plain, [y.reshape(-1)[7] if init == "logit" else 1.0], rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(target=1, region=(0, 2, 0, 2)), r"target= and a mask .* are exclusive"),
    (dict(region=(0, 9, 0, 2)), r"region \(y0, y1, x0, x1\) = \(0, 9, 0, 2\) does not lie in the 8x10 map"),
    (dict(region=(0, 2, 0)), r"region must be 4 ints, got 3"),
    (dict(channel=2), r"channel 2 is out of range: the output has 2 channels"),
    (dict(anchor=(1, 2)), r"anchor= needs a detection output \(N, C, A\) or \(N, A, C\)"),
    (dict(target_mask=np.ones((2, 3, 8, 10))), r"target_mask has shape \(2, 3, 8, 10\), which does not fit"),
    (dict(target_mask=np.full((2, 8, 10), np.nan)), r"target_mask contains NaN or Inf"),
    (dict(target_mask=np.ones((2, 8, 10)), channel=0), r"target_mask= cannot be combined with channel="),
])
def test_bad_targets_are_one_clear_error(epsilon_everywhere, kwargs, message):
    """Each misuse of the mask forms names what is wrong."""
    explainer = onnxlrp.Explainer(_map_model(), epsilon_everywhere)
    x = rng(5).normal(size=(2, 3, 8, 10)).astype(np.float32)
    with pytest.raises(InputError, match=message):
        explainer.explain(x, **kwargs)


def test_square_detection_tensor_is_ambiguous(epsilon_everywhere):
    """(N, 4, 4): anchors cannot be told from classes."""
    model = make_model([mk("Reshape", ["x", "shape"], ["y"])], [tensor("x", ["N", 16])], [tensor("y", [None] * 3)],
                       {"shape": np.array([0, 4, 4], np.int64)})
    with pytest.raises(InputError, match=r"cannot tell anchors from classes"):
        onnxlrp.Explainer(model, epsilon_everywhere).explain(np.ones((1, 16), np.float32), anchor=(0, 0))
