"""Pools and reductions: AveragePool / GlobalAveragePool / ReduceMean / ReduceSum under Norm against the matrix form
on the linearised op; MaxPool / GlobalMaxPool / ReduceMax winner-takes-all against a NumPy window enumeration
(first maximum on ties) and PyTorch's max-pool gradient."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import reference as ref
from ops_harness import NEWEST_OPSET, assert_close, explain_dense, forward, linearise, rng, seed_like, single


def _check_norm(model, x_shape, rule=("norm", {"stabilizer": 1e-6}), seed=0, batch=2, positive=False):
    """Norm (= epsilon form on the unmodified op): R_x = x * J^T (R / stab(y)), J linearised; conservation."""
    g = rng(seed)
    J, bias = linearise(model, "x", x_shape)
    assert np.allclose(bias, 0.0)
    x = g.normal(size=(batch,) + tuple(x_shape[1:])).astype(np.float32)
    if positive:
        x = np.abs(x)
    y = forward(model, {"x": x})[0]
    R = seed_like(y, g)
    res = explain_dense(model, {"x": x}, R, {model.graph.node[-1].op_type: rule})
    eps = rule[1].get("stabilizer", rule[1].get("epsilon"))
    for i in range(batch):
        Rx, _, stab = ref.epsilon(J, np.zeros(J.shape[0]), x[i].reshape(-1).astype(np.float64),
                                  R[i].reshape(-1).astype(np.float64), eps)
        assert_close(res.relevance["x"][i].reshape(-1), Rx, 1e-5, f"R_x sample {i}")
        assert abs(res.stabilizer[i] - stab) <= 1e-5 * np.abs(R[i]).sum()
    assert not res.bias
    assert res.conservation_error(R) < 1e-5
    return res


AVG_CASES = {
    "k3s2p1_include": ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    "k3s2p1_exclude": ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "k2s2": ((1, 3, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "k3s1_asym_pads": ((1, 1, 5, 6), dict(kernel_shape=[3, 2], pads=[0, 1, 2, 0], count_include_pad=1)),
    "ceil_exclude": ((1, 2, 6, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "ceil_include_pads": ((1, 1, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                              count_include_pad=1)),
    # ONNX shape inference keeps this last window, onnxruntime (and the spec) drop it
    "ceil_dropped_window": ((1, 1, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1,
                                                count_include_pad=1)),
    "same_upper": ((1, 2, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "1d": ((1, 2, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 0], count_include_pad=1)),
    "3d": ((1, 1, 4, 5, 4), dict(kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[0, 1, 0, 0, 1, 1])),
}


@pytest.mark.parametrize("case", list(AVG_CASES))
def test_average_pool_norm(case):
    """AveragePool under Norm: count_include_pad both ways, ceil_mode (incl. a dropped last window), auto_pad."""
    x_shape, attrs = AVG_CASES[case]
    check_opset = 19 if "dilations" in attrs else 17
    _check_norm(single("AveragePool", x_shape, opset=check_opset, **attrs), x_shape)


def test_average_pool_dilations_newest_opset():
    """AveragePool with dilations (opset 19+) at the newest opset, under epsilon."""
    x_shape = (1, 2, 7, 7)
    model = single("AveragePool", x_shape, opset=NEWEST_OPSET, kernel_shape=[2, 2], dilations=[2, 2],
                   strides=[1, 2], pads=[1, 0, 0, 1])
    _check_norm(model, x_shape, rule=("epsilon", {"epsilon": 1e-3}))


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_global_average_pool(opset):
    """GlobalAveragePool: R_x = x * s / HW."""
    _check_norm(single("GlobalAveragePool", (1, 3, 4, 5), opset=opset), (1, 3, 4, 5))


def _reduce(op, x_shape, axes, keepdims, opset):
    """A Reduce* node with axes as attribute (ReduceSum < 13, others < 18) or as a constant input."""
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    rank = len(x_shape) if keepdims else len(x_shape) - len(axes)
    if as_input:
        return single(op, x_shape, {"axes": np.array(axes, dtype=np.int64)}, ["axes"], opset=opset, y_rank=rank,
                      keepdims=keepdims)
    return single(op, x_shape, opset=opset, y_rank=rank, axes=axes, keepdims=keepdims)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([-1, -2], 0), ([1], 0), ([1, 3], 1)])
@pytest.mark.parametrize("opset", [11, 13, NEWEST_OPSET])
def test_reduce_norm(op, axes, keepdims, opset):
    """ReduceMean / ReduceSum under Norm, axes as attribute (old opsets) or input (new), keepdims both ways."""
    x_shape = (1, 3, 4, 2)
    _check_norm(_reduce(op, x_shape, axes, keepdims, opset), x_shape)


def test_reduce_over_batch_is_refused():
    """A reduction over the batch axis is reported, naming the node."""
    from onnxlrp.errors import UnsupportedModelError
    model = _reduce("ReduceSum", (1, 3, 4), [0, 1], 0, 13)
    with pytest.raises(UnsupportedModelError, match=r"ReduceSum x1 \(the_reducesum\): it reduces over the batch"):
        explain_dense(model, {"x": np.ones((2, 3, 4))}, np.ones((4,), np.float32))


# ---- winner takes all ---------------------------------------------------------------------------------------
def _windows(spatial, out_spatial, kernel, strides, pads, dilations):
    """For each output position (row-major), the input positions of its window (kernel order, padding skipped)."""
    nd = len(spatial)
    result = {}
    for o in itertools.product(*[range(n) for n in out_spatial]):
        cells = []
        for k in itertools.product(*[range(n) for n in kernel]):
            p = tuple(o[i] * strides[i] - pads[i] + k[i] * dilations[i] for i in range(nd))
            if all(0 <= p[i] < spatial[i] for i in range(nd)):
                cells.append(p)
        result[o] = cells
    return result


def maxpool_reference(x, R, kernel, strides, pads, dilations, out_spatial):
    """(y, R_x): y the max over each window, R_x each window's R sent to its first maximum (NumPy, float64)."""
    n, c = x.shape[:2]
    y = np.zeros((n, c) + tuple(out_spatial))
    Rx = np.zeros(x.shape)
    for o, cells in _windows(x.shape[2:], out_spatial, kernel, strides, pads, dilations).items():
        for i in range(n):
            for ch in range(c):
                values = [x[(i, ch) + p] for p in cells]
                w = int(np.argmax(values))  # first maximum
                y[(i, ch) + o] = values[w]
                Rx[(i, ch) + cells[w]] += R[(i, ch) + o]
    return y, Rx


MAX_CASES = {
    "resnet_k3s2p1": ((1, 3, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [1, 1, 1, 1]),
    "k2s2": ((1, 2, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2]), [0, 0, 0, 0]),
    "k3s1_overlap": ((1, 2, 5, 5), dict(kernel_shape=[3, 3]), [0, 0, 0, 0]),
    "ceil": ((1, 2, 6, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), [0, 0, 0, 0]),
    "ceil_dropped_window": ((1, 1, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1),
                            [0, 0, 1, 1]),
    "dilated": ((1, 2, 7, 6), dict(kernel_shape=[2, 3], dilations=[2, 1], strides=[1, 2], pads=[1, 0, 0, 1]),
                [1, 0, 0, 1]),
    "same_upper": ((1, 2, 6, 7), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), None),
    "1d": ((1, 2, 10), dict(kernel_shape=[3], strides=[2], pads=[1, 1]), [1, 1]),
    "3d": ((1, 1, 4, 5, 4), dict(kernel_shape=[2, 3, 2], strides=[2, 2, 1], pads=[0, 1, 1, 0, 1, 0]),
           [0, 1, 1, 0, 1, 0]),
}


def _check_maxpool(x_shape, attrs, pads, opset, x=None, seed=0):
    """MaxPool WTA against the NumPy window enumeration; the forward max must match too (same geometry).
    Returns (result, R)."""
    g = rng(seed)
    model = single("MaxPool", x_shape, opset=opset, **attrs)
    if x is None:
        x = g.normal(size=(2,) + tuple(x_shape[1:])).astype(np.float32)
    y = forward(model, {"x": x})[0]
    R = g.normal(size=y.shape).astype(np.float32)
    nd = len(x_shape) - 2
    if pads is None:  # SAME_UPPER: total padding split with the extra at the end
        pads = [0] * (2 * nd)
        for i in range(nd):
            out = -(-x_shape[2 + i] // attrs["strides"][i])
            total = max(0, (out - 1) * attrs["strides"][i] + attrs["kernel_shape"][i] - x_shape[2 + i])
            pads[i], pads[i + nd] = total // 2, total - total // 2
    y_ref, Rx = maxpool_reference(x.astype(np.float64), R.astype(np.float64), attrs["kernel_shape"],
                                  attrs.get("strides", [1] * nd), pads, attrs.get("dilations", [1] * nd), y.shape[2:])
    assert np.array_equal(y, y_ref.astype(np.float32)), "window enumeration does not reproduce MaxPool"
    res = explain_dense(model, {"x": x}, R)
    assert_close(res.relevance["x"], Rx, 1e-6, "WTA R_x")
    assert res.conservation_error(R) < 1e-6
    return res, R


@pytest.mark.parametrize("case", list(MAX_CASES))
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_max_pool_wta(case, opset):
    """MaxPool: overlapping windows (a position that wins several collects all), ceil_mode, dilations, auto_pad;
    opset 11 (one-hot + ConvTranspose) and the newest (ScatterElements add)."""
    x_shape, attrs, pads = MAX_CASES[case]
    _check_maxpool(x_shape, attrs, pads, opset)


@pytest.mark.parametrize("opset", [11, 17])
def test_max_pool_ties_first_index_like_torch(opset):
    """Ties go to the first index, as onnxruntime's Indices and PyTorch's max_pool2d gradient pick."""
    import torch
    g = rng(3)
    x = g.integers(0, 2, size=(2, 2, 7, 7)).astype(np.float32)  # many ties inside every window
    x[0, 0] = 0.0  # a plane where every window is all ties
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    res, R = _check_maxpool((1, 2, 7, 7), attrs, [1, 1, 1, 1], opset, x=x, seed=3)
    xt = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    y.backward(torch.tensor(R))
    # a window of ties sends relevance to its first cell: the gradient of torch does the same
    np.testing.assert_allclose(res.relevance["x"], xt.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_global_max_pool(opset):
    """GlobalMaxPool: the first maximum of each channel takes the channel's relevance (ties included)."""
    g = rng(5)
    x = g.integers(0, 3, size=(3, 2, 3, 4)).astype(np.float32)
    model = single("GlobalMaxPool", (1, 2, 3, 4), opset=opset)
    R = g.normal(size=(3, 2, 1, 1)).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    want = np.zeros(x.shape)
    for i, c in itertools.product(range(3), range(2)):
        want[(i, c) + np.unravel_index(np.argmax(x[i, c]), x.shape[2:])] = R[i, c, 0, 0]
    assert_close(res.relevance["x"], want, 1e-6)


@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([2, 3], 0), ([1, 3], 0), ([-1], 1)])
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_reduce_max_wta(axes, keepdims, opset):
    """ReduceMax: winner takes all over the reduced axes (first maximum in row-major order), axes attr or input."""
    g = rng(7)
    x_shape = (1, 3, 2, 4)
    x = g.integers(0, 3, size=(2,) + x_shape[1:]).astype(np.float32)
    model = _reduce("ReduceMax", x_shape, axes, keepdims, opset)
    y = forward(model, {"x": x})[0]
    R = g.normal(size=y.shape).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    red = sorted(a % 4 for a in axes)
    kept = [a for a in range(4) if a not in red]
    xt = np.transpose(x, kept + red).reshape([x.shape[a] for a in kept] + [-1])
    winners = xt.argmax(axis=-1)
    want = np.zeros(xt.shape)
    Rk = R.reshape(winners.shape)
    for idx in np.ndindex(winners.shape):
        want[idx + (winners[idx],)] = Rk[idx]
    want = np.transpose(want.reshape([x.shape[a] for a in kept + red]), np.argsort(kept + red))
    assert_close(res.relevance["x"], want, 1e-6)
    assert res.conservation_error(R) < 1e-6


@pytest.mark.parametrize("case", ["k3s2p1_include", "ceil_exclude", "ceil_dropped_window"])
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_average_pool_opsets(case, opset):
    """AveragePool at the oldest and newest opsets."""
    x_shape, attrs = AVG_CASES[case]
    _check_norm(single("AveragePool", x_shape, opset=opset, **attrs), x_shape)
