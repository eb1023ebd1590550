"""Property tests (hypothesis, derandomized): random Conv / ConvTranspose / pool / Slice geometries agree with their
dense references and conserve, so that no combination of strides, pads, dilations and modes slips between the
hand-picked cases."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops_harness import check_linear, rng, single
from test_ops_pooling import _check_maxpool, _check_norm
from test_ops_shape import _check_transpose

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_geometry(draw, transpose: bool = False):
    """(x_shape, w_shape, attrs) of a valid 1-D or 2-D Conv / ConvTranspose."""
    nd = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2]))
    cin = group * draw(st.integers(1, 2))
    cout = group * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    dilations = [draw(st.integers(1, 2)) for _ in range(nd)]
    spatial = [draw(st.integers((k - 1) * d + 1, 7)) for k, d in zip(kernel, dilations)]
    attrs = dict(strides=strides, dilations=dilations, group=group)
    mode = draw(st.sampled_from(["pads", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if mode == "pads":
        attrs["pads"] = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    elif mode != "VALID" and all(d == 1 for d in dilations):  # onnxruntime: no dilation with SAME
        attrs["auto_pad"] = mode
    if transpose:
        if draw(st.booleans()) and "auto_pad" not in attrs:
            attrs["output_padding"] = [draw(st.integers(0, s - 1)) for s in strides]  # onnxruntime: below the stride
        w_shape = (cin, cout // group) + tuple(kernel)
    else:
        w_shape = (cout, cin // group) + tuple(kernel)
    return (1, cin) + tuple(spatial), w_shape, attrs


def _conv_model(x_shape, w_shape, attrs, op):
    """The node with random weights and a per-channel bias."""
    g = rng(3)
    cout = w_shape[0] if op == "Conv" else w_shape[1] * attrs["group"]
    inits = {"W": g.normal(size=w_shape).astype(np.float32), "B": g.normal(size=cout).astype(np.float32)}
    return single(op, x_shape, inits, ["W", "B"], **attrs), cout


@SETTINGS
@given(conv_geometry(), st.sampled_from([("epsilon", {"epsilon": 1e-6}), ("zplus", {}), ("gamma", {"gamma": 0.5})]))
def test_random_conv(geometry, rule):
    """Conv: any geometry, three rules, against the matrix form."""
    x_shape, w_shape, attrs = geometry
    model, units = _conv_model(x_shape, w_shape, attrs, "Conv")
    check_linear(model, x_shape, rule[0], rule[1], "W", units)


@SETTINGS
@given(conv_geometry(transpose=True), st.sampled_from([("epsilon", {"epsilon": 1e-6}), ("zplus", {})]))
def test_random_conv_transpose(geometry, rule):
    """ConvTranspose: any geometry (output_padding too), against the matrix form."""
    x_shape, w_shape, attrs = geometry
    model, units = _conv_model(x_shape, w_shape, attrs, "ConvTranspose")
    check_linear(model, x_shape, rule[0], rule[1], "W", units)


@st.composite
def pool_geometry(draw):
    """(x_shape, attrs, explicit pads) of a valid 2-D pool (pads smaller than the kernel, as onnxruntime wants)."""
    kernel = [draw(st.integers(1, 3)) for _ in range(2)]
    strides = [draw(st.integers(1, 3)) for _ in range(2)]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    spatial = [draw(st.integers(k, 7)) for k in kernel]
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=draw(st.sampled_from([0, 1])))
    return (1, 2) + tuple(spatial), attrs, pads


@SETTINGS
@given(pool_geometry(), st.sampled_from([11, 17]))
def test_random_max_pool(geometry, opset):
    """MaxPool: any geometry, ceil_mode both ways, both backward formulations, against the window enumeration."""
    x_shape, attrs, pads = geometry
    _check_maxpool(x_shape, attrs, pads, opset)


@SETTINGS
@given(pool_geometry(), st.sampled_from([0, 1]))
def test_random_average_pool(geometry, include_pad):
    """AveragePool: any geometry, count_include_pad both ways, under Norm against the linearised pool."""
    x_shape, attrs, _ = geometry
    _check_norm(single("AveragePool", x_shape, count_include_pad=include_pad, **attrs), x_shape)


@SETTINGS
@given(st.lists(st.tuples(st.integers(-7, 7), st.integers(-8, 8), st.sampled_from([-3, -2, -1, 1, 2, 3])),
                min_size=1, max_size=3, unique_by=lambda t: 0))
def test_random_slice(bounds):
    """Slice with any starts / ends / steps on the last axis: R_x = J^T R (conservation by construction)."""
    start, end, step = bounds[0]
    x_shape = (1, 2, 7)
    index = np.arange(7)[slice(start, end, step)]
    if index.size == 0:
        return
    inits = {"s": np.array([start], np.int64), "e": np.array([end], np.int64), "a": np.array([2], np.int64),
             "t": np.array([step], np.int64)}
    _check_transpose(single("Slice", x_shape, inits, ["s", "e", "a", "t"], opset=13), x_shape)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([("nearest", "round_prefer_floor"), ("nearest", "round_prefer_ceil"), ("nearest", "floor"),
                        ("nearest", "ceil"), ("linear", None)]),
       st.sampled_from(["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                        "half_pixel_symmetric"]))
def test_random_resize(h, w, out_h, out_w, mode, coordinate_mode):
    """Resize to any size, every mode and coordinate transform: R_x = J^T R against the linearised Resize."""
    from onnx import helper
    from ops_harness import make_model, tensor
    if mode[0] == "linear" and coordinate_mode == "tf_half_pixel_for_nn":
        return  # a nearest-only transform
    attrs = {"mode": mode[0], "coordinate_transformation_mode": coordinate_mode}
    if mode[1]:
        attrs["nearest_mode"] = mode[1]
    inits = {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
             "sizes": np.array([1, 2, out_h, out_w], np.int64)}
    node = helper.make_node("Resize", ["x", "roi", "scales", "sizes"], ["y"], **attrs)
    model = make_model([node], [tensor("x", [1, 2, h, w])], [tensor("y", [None] * 4)], inits, 19)
    _check_transpose_one(model, (1, 2, h, w))


def _check_transpose_one(model, x_shape):
    """R_x == J^T R for one sample (sizes fix the batch at 1)."""
    from ops_harness import assert_close, explain_dense, forward
    J = linearise_fixed_batch(model, x_shape)
    x = rng(0).normal(size=x_shape).astype(np.float32)
    R = rng(1).normal(size=forward(model, {"x": x})[0].shape).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    assert_close(res.relevance["x"].reshape(-1), R.reshape(-1).astype(np.float64) @ J, 1e-6)
    assert res.conservation_error(R) < 1e-6


def linearise_fixed_batch(model, x_shape):
    """J of a model whose batch is fixed at 1: one forward run per basis vector."""
    from ops_harness import forward
    size = int(np.prod(x_shape))
    columns = [forward(model, {"x": e.reshape(x_shape)})[0].reshape(-1) for e in np.eye(size)]
    return np.stack(columns, axis=1).astype(np.float64)
