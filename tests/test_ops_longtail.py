"""The long tail of CNN ops, each against a dense float64 NumPy reference: ReduceL2 / ReduceL1 / ReduceSumSquare
(each entry's share of the sum), Tile and GatherND (moved back exactly: R_x = J^T R with J linearised by
onnxruntime), and the per-channel Mul / Add after a Conv folded into it (same outputs; the rules on the original's
affine map)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxlrp.canonicalize import canonicalize
from ops_harness import (LINEAR_RULE_CASES, NEWEST_OPSET, assert_close, check_linear, explain_dense, forward,
                         linearise, make_model, rng, single, tensor)

EPS = 1e-6  # the base composite's Norm stabilizer


def _ints(values):
    """An int64 initializer array."""
    return np.asarray(values, dtype=np.int64)


# ---- ReduceL2 / ReduceL1 / ReduceSumSquare --------------------------------------------------------------------
REDUCE_CASES = {  # op, axes, keepdims
    "l2_spatial": ("ReduceL2", [2, 3], 1),
    "l2_channels_dropped": ("ReduceL2", [1], 0),
    "l1_last": ("ReduceL1", [-1], 1),
    "sumsquare_two": ("ReduceSumSquare", [1, 3], 0),
}


def _share_reference(op: str, x: np.ndarray, R: np.ndarray, axes: list, keepdims: int) -> tuple:
    """R_i = t_i R / (sum t + eps) with t = x^2 (L2, SumSquare) or |x| (L1); (R_x, stabilizer per sample)."""
    x = x.astype(np.float64)
    t = np.abs(x) if op == "ReduceL1" else x * x
    axes = tuple(a % x.ndim for a in axes)
    total = t.sum(axis=axes, keepdims=True)
    R_keep = R.astype(np.float64) if keepdims else np.expand_dims(R.astype(np.float64), axes)
    s = R_keep / (total + EPS)
    stab = (s * EPS).reshape(x.shape[0], -1).sum(1)
    return t * s, stab


@pytest.mark.parametrize("case", list(REDUCE_CASES))
@pytest.mark.parametrize("opset", [13, NEWEST_OPSET])
def test_norm_reductions_share_by_entry(case, opset):
    """Each entry gets t_i / sum t of the relevance; conservation with the stabilizer's share."""
    op, axes, keepdims = REDUCE_CASES[case]
    g = rng(5)
    shape = (2, 3, 4, 5)
    if opset >= 18:
        model = single(op, shape, {"axes": _ints(axes)}, ["axes"], opset=opset, keepdims=keepdims,
                       y_rank=4 if keepdims else 4 - len(axes))
    else:
        model = single(op, shape, opset=opset, axes=axes, keepdims=keepdims, y_rank=4 if keepdims else 4 - len(axes))
    x = g.normal(size=shape).astype(np.float32)
    x[1, 0] = 0.0  # a zero entry gets nothing
    y = forward(model, {"x": x})[0]
    R = g.normal(size=y.shape).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    want, stab = _share_reference(op, x, R, axes, keepdims)
    assert_close(res.relevance["x"], want, 1e-5)
    np.testing.assert_allclose(res.stabilizer, stab, rtol=1e-3, atol=1e-9)
    assert res.conservation_error(R) < 1e-5


# ---- Tile, GatherND: exact transposes -------------------------------------------------------------------------
def _check_moved_back(model, x_shape, seed=0):
    """R_x == J^T R for a random dense R (J: the op linearised by onnxruntime); nothing dropped."""
    g = rng(seed)
    J, _ = linearise(model, "x", x_shape)
    x = g.normal(size=(2,) + tuple(x_shape[1:])).astype(np.float32)
    R = g.normal(size=forward(model, {"x": x})[0].shape).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    assert_close(res.relevance["x"], (R.reshape(2, -1).astype(np.float64) @ J).reshape(x.shape), 1e-6)
    assert res.conservation_error(R) < 1e-6 and np.allclose(res.stabilizer, 0.0)


@pytest.mark.parametrize("repeats", [[1, 2, 1, 3], [1, 1, 2, 1], [1, 1, 1, 1]])
def test_tile_sums_the_copies(repeats):
    """Tile copies along static axes (the batch stays dynamic): R_x sums the copies' relevance."""
    model = single("Tile", (1, 2, 3, 2), {"r": _ints(repeats)}, ["r"])
    _check_moved_back(model, (1, 2, 3, 2))


def test_tile_of_the_batch_axis_is_refused():
    """Repeating the samples would mix them: named."""
    from onnxlrp.errors import UnsupportedModelError
    model = single("Tile", (1, 3), {"r": _ints([2, 1])}, ["r"])
    with pytest.raises(UnsupportedModelError, match=r"the_tile\): it repeats the batch axis 0 of 'x'"):
        explain_dense(model, {"x": np.ones((2, 3))}, np.ones((4, 3), np.float32))


def _gather_nd_model(indices: np.ndarray, batch_dims: int, x_shape: tuple, transpose: bool):
    """GatherND on x (N, ...) or, with transpose, on x moved to (A, N, ...) (axis 0 is not the batch)."""
    nodes, src = [], "x"
    if transpose:
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0] + list(range(2, len(x_shape)))))
        src = "xt"
    nodes.append(helper.make_node("GatherND", [src, "i"], ["g"], batch_dims=batch_dims, name="the_gathernd"))
    g_rank = len(x_shape) + indices.ndim - indices.shape[-1] - 1 - batch_dims
    if transpose:  # the output keeps the batch on the axis after the gathered slices: bring it first again
        batch_at = indices.ndim - 1
        perm = [batch_at] + [a for a in range(g_rank) if a != batch_at]
        nodes.append(helper.make_node("Transpose", ["g"], ["y"], perm=perm))
    else:
        nodes.append(helper.make_node("Identity", ["g"], ["y"]))
    return make_model(nodes, [tensor("x", ["N"] + list(x_shape[1:]))], [tensor("y", [None] * g_rank)],
                      {"i": indices.astype(np.int64)})


def test_gather_nd_on_a_non_batch_leading_axis():
    """x (N, 3, 4) -> (3, N, 4): GatherND picks rows 2, 0, 2 of axis 0 (repeated: copies add up)."""
    model = _gather_nd_model(np.array([[2], [0], [2]]), 0, (1, 3, 4), transpose=True)
    _check_moved_back(model, (1, 3, 4))


@pytest.mark.parametrize("batch_dims", [1, 2])
def test_gather_nd_with_batch_dims(batch_dims):
    """Per-sample (and per-channel) picks with batch_dims >= 1 on a static batch of 2; repeated and negative
    indices."""
    x_shape = (2, 3, 4, 2)
    g = rng(9)
    depth = 2 if batch_dims == 1 else 1
    lead = x_shape[:batch_dims]
    indices = np.stack([g.integers(-x_shape[batch_dims + k], x_shape[batch_dims + k], size=lead + (3,))
                        for k in range(depth)], axis=-1)
    indices[(0,) * batch_dims + (1,)] = indices[(0,) * batch_dims + (0,)]  # a repeated pick
    nodes = [helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims, name="the_gathernd")]
    y_rank = batch_dims + 1 + (4 - batch_dims - depth)
    model = make_model(nodes, [tensor("x", list(x_shape))], [tensor("y", [None] * y_rank)],
                       {"i": indices.astype(np.int64)})
    J, _ = linearise_static(model, x_shape)
    x = g.normal(size=x_shape).astype(np.float32)
    R = g.normal(size=forward(model, {"x": x})[0].shape).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    assert_close(res.relevance["x"], (J.T @ R.reshape(-1).astype(np.float64)).reshape(x_shape), 1e-6)
    assert abs(float(res.stabilizer.sum())) < 1e-6


def linearise_static(model, x_shape):
    """(J, f(0)) of a model whose batch is static (mixing of samples allowed): one onnxruntime run per basis
    vector of the whole input."""
    size = int(np.prod(x_shape))
    zero = forward(model, {"x": np.zeros(x_shape)})[0].reshape(-1).astype(np.float64)
    cols = [forward(model, {"x": e.reshape(x_shape)})[0].reshape(-1).astype(np.float64) - zero for e in np.eye(size)]
    return np.stack(cols, axis=1), zero


def test_gather_nd_of_the_batch_axis_is_refused():
    """batch_dims=0 indexes axis 0, the samples: named."""
    from onnxlrp.errors import UnsupportedModelError
    model = _gather_nd_model(np.array([[0, 1]]), 0, (1, 3, 4), transpose=False)
    with pytest.raises(UnsupportedModelError, match=r"the_gathernd\): it indexes the batch axis 0 of 'x'"):
        explain_dense(model, {"x": np.ones((2, 3, 4))}, np.ones((1, 4), np.float32))


# ---- per-channel Mul / Add after a Conv -----------------------------------------------------------------------
def _conv_affine(kind: str, opset: int = 17):
    """A bias-less (or biased) Conv followed by per-channel constant arithmetic, as tf2onnx writes a depthwise
    convolution's BatchNorm."""
    g = rng(12)
    k = g.uniform(-2, 2, size=(1, 4, 1, 1)).astype(np.float32)
    c = g.normal(size=(4, 1, 1)).astype(np.float32)
    inits = {"W": g.normal(size=(4, 1, 3, 3)).astype(np.float32), "k": k, "c": c,
             "B": g.normal(size=4).astype(np.float32), "s": np.array(0.5, np.float32)}
    conv = helper.make_node("Conv", ["x", "W"] + (["B"] if kind == "biased" else []), ["z"], name="conv", group=4,
                            pads=[1, 1, 1, 1])
    chains = {
        "mul_add": [helper.make_node("Mul", ["z", "k"], ["m"]), helper.make_node("Add", ["c", "m"], ["y"])],
        "biased": [helper.make_node("Mul", ["k", "z"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])],
        "div_sub_scalar": [helper.make_node("Div", ["z", "k"], ["m"]), helper.make_node("Sub", ["m", "c"], ["a"]),
                           helper.make_node("Mul", ["a", "s"], ["y"])],
    }
    return make_model([conv] + chains[kind], [tensor("x", ["N", 4, 5, 5])], [tensor("y", [None] * 4)], inits, opset)


AFFINE_KINDS = ["mul_add", "biased", "div_sub_scalar"]


@pytest.mark.parametrize("kind", AFFINE_KINDS)
def test_per_channel_affine_folds_into_the_conv(kind):
    """Only the Conv is left and it computes the same outputs."""
    model = _conv_affine(kind)
    canon = canonicalize(model)
    assert [n.op_type for n in canon.graph.node] == ["Conv"]
    x = rng(1).normal(size=(3, 4, 5, 5)).astype(np.float32)
    want, got = forward(model, {"x": x})[0], forward(canon, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("kind", AFFINE_KINDS)
@pytest.mark.parametrize("rule,params", [LINEAR_RULE_CASES[i] for i in (0, 2, 4)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_folded_affine_rules(kind, rule, params):
    """The folded Conv's relevance, bias row and stabilizer equal the rule on the original model's affine map
    (so the Mul+Add's constant is a bias of the convolution, reported as such, not a stabilizer loss)."""
    check_linear(_conv_affine(kind), (1, 4, 5, 5), rule, params, "W", 4, op_key="Conv")


def test_a_conv_output_read_twice_keeps_its_mul():
    """The Conv's output also feeds another node: the Mul is not folded (it would change that reader)."""
    g = rng(3)
    nodes = [helper.make_node("Conv", ["x", "W"], ["z"]), helper.make_node("Mul", ["z", "k"], ["m"]),
             helper.make_node("Add", ["m", "z"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], [tensor("y", [None] * 4)],
                       {"W": g.normal(size=(2, 2, 1, 1)).astype(np.float32),
                        "k": g.normal(size=(2, 1, 1)).astype(np.float32)})
    assert [n.op_type for n in canonicalize(model).graph.node] == ["Conv", "Mul", "Add"]
