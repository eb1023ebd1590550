"""Shape ops move relevance back exactly: R_x = J^T R_y with J the op's linearisation (evaluated by onnxruntime),
so that each is checked against an independent dense float64 reference, and conservation holds exactly (a constant
pad's share is reported as dropped)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ops_harness import (NEWEST_OPSET, assert_close, explain_dense, forward, linearise, make_model, rng, single,
                         tensor)


def _check_transpose(model, x_shape, seed=0, dropped=False):
    """R_x == J^T R for a random dense R; conservation (and the dropped share if the op pads constants)."""
    g = rng(seed)
    J, _ = linearise(model, "x", x_shape)
    x = g.normal(size=(2,) + tuple(x_shape[1:])).astype(np.float32)
    y = forward(model, {"x": x})[0]
    R = g.normal(size=y.shape).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    want = (R.reshape(2, -1).astype(np.float64) @ J).reshape(x.shape)
    assert_close(res.relevance["x"], want, 1e-6)
    assert res.conservation_error(R) < 1e-6
    if dropped:
        lost = R.reshape(2, -1).sum(1) - want.reshape(2, -1).sum(1)
        assert np.abs(lost).max() > 1e-3 and np.allclose(res.stabilizer, lost, atol=1e-5)
    else:
        assert np.allclose(res.stabilizer, 0.0)
    return res


def _ints(values):
    """An int64 initializer array."""
    return np.asarray(values, dtype=np.int64)


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_reshape_flatten_transpose(opset):
    """Reshape (constant shape with 0 and -1), Flatten, Transpose, chained."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Flatten", ["t"], ["y"], axis=1)]
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 4])], [tensor("y", [None, None])],
                       {"shape": _ints([0, 6, 2, -1])}, opset)
    _check_transpose(model, (1, 2, 3, 4))


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_reshape_to_shape_computed_from_shape_subgraph(opset):
    """Reshape whose target comes from Shape -> Gather -> Unsqueeze -> Concat (as torch exports x.view(n, -1)):
    the int subgraph carries no relevance and needs no rule; the batch stays dynamic."""
    unsq = (helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]) if opset < 13 else
            helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]))
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0), unsq,
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    inits = {"zero": np.array(0, dtype=np.int64), "minus1": _ints([-1]), "ax0": _ints([0])}
    if opset < 13:
        del inits["ax0"]
    model = make_model(nodes, [tensor("x", ["N", 3, 2, 2])], [tensor("y", [None, None])], inits, opset)
    _check_transpose(model, (1, 3, 2, 2))


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_squeeze_unsqueeze(opset):
    """Squeeze and Unsqueeze with axes as attribute (opset < 13) or input."""
    if opset < 13:
        nodes = [helper.make_node("Squeeze", ["x"], ["s"], axes=[2]),
                 helper.make_node("Unsqueeze", ["s"], ["y"], axes=[1, 4])]
        inits = {}
    else:
        nodes = [helper.make_node("Squeeze", ["x", "a2"], ["s"]), helper.make_node("Unsqueeze", ["s", "a14"], ["y"])]
        inits = {"a2": _ints([2]), "a14": _ints([1, 4])}
    model = make_model(nodes, [tensor("x", ["N", 3, 1, 4])], [tensor("y", [None] * 5)], inits, opset)
    _check_transpose(model, (1, 3, 1, 4))


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
@pytest.mark.parametrize("dynamic", [False, True])
def test_concat(opset, dynamic):
    """Concat of two activations and a constant along the channels: each activation gets its own slice of R
    (static sizes: one Split; a size unknown at compile time: Slices from Shape)."""
    g = rng(1)
    mid = "k" if dynamic else 3
    node = helper.make_node("Concat", ["a", "c", "b"], ["y"], axis=1)
    model = make_model([node], [tensor("a", ["N", 2, 4]), tensor("b", ["N", mid, 4])], [tensor("y", [None] * 3)],
                       {"c": g.normal(size=(1, 1, 4)).astype(np.float32)}, opset)
    # Concat does not broadcast: the constant has batch 1, so the model is run on one sample
    a = g.normal(size=(1, 2, 4)).astype(np.float32)
    b = g.normal(size=(1, 3, 4)).astype(np.float32)
    R = g.normal(size=(1, 6, 4)).astype(np.float32)
    res = explain_dense(model, {"a": a, "b": b}, R)
    assert_close(res.relevance["a"], R[:, :2], 1e-7)
    assert_close(res.relevance["b"], R[:, 3:], 1e-7)


@pytest.mark.parametrize("opset", [11, 13, NEWEST_OPSET])
def test_split_then_concat(opset):
    """Split (sizes as attribute, input, or num_outputs at opset 18+) into parts that a Concat joins in another
    order: the whole map is a permutation and R_x = J^T R."""
    if opset < 13:
        split = helper.make_node("Split", ["x"], ["p0", "p1", "p2"], axis=2, split=[1, 2, 3])
        inits = {}
    elif opset < 18:
        split = helper.make_node("Split", ["x", "sizes"], ["p0", "p1", "p2"], axis=2)
        inits = {"sizes": _ints([1, 2, 3])}
    else:
        split = helper.make_node("Split", ["x"], ["p0", "p1", "p2"], axis=2, num_outputs=3)
        inits = {}
    nodes = [split, helper.make_node("Concat", ["p2", "p0", "p1"], ["y"], axis=2)]
    model = make_model(nodes, [tensor("x", ["N", 2, 6])], [tensor("y", [None] * 3)], inits, opset)
    _check_transpose(model, (1, 2, 6))


def test_split_unused_output():
    """A Split output nobody reads gets no relevance; the others are put back in place."""
    nodes = [helper.make_node("Split", ["x", "sizes"], ["p0", "p1"], axis=1),
             helper.make_node("Relu", ["p1"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 5])], [tensor("y", [None, None])], {"sizes": _ints([2, 3])}, 13)
    _check_transpose(model, (1, 5))


SLICE_CASES = {
    "unit_step": ([1, 0], [3, 100], [1, 3], [1, 1]),
    "step2": ([0], [5], [2], [2]),
    "negative_step": ([-1], [-100], [3], [-1]),
    "two_axes_negative_start": ([-3, 1], [2 ** 62, -1], [2, 3], [2, 2]),
    "reverse_step2": ([4, 3], [0, -100], [2, 3], [-2, -3]),
}


@pytest.mark.parametrize("case", list(SLICE_CASES))
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_slice(case, opset):
    """Slice with unit steps (Pad back), other steps, negative steps and starts, huge ends."""
    starts, ends, axes, steps = SLICE_CASES[case]
    inits = {"starts": _ints(starts), "ends": _ints(ends), "axes": _ints(axes), "steps": _ints(steps)}
    model = single("Slice", (1, 3, 5, 6), inits, ["starts", "ends", "axes", "steps"], opset=opset)
    _check_transpose(model, (1, 3, 5, 6))


GATHER_CASES = {
    "unique": (np.array([3, 0, 2]), 2),
    "repeated": (np.array([[1, 1], [0, -1]]), 1),
    "scalar": (np.array(2), 1),
    "last_axis_negative": (np.array([-1, 0, -1]), -1),
}


@pytest.mark.parametrize("case", list(GATHER_CASES))
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_gather_constant_indices(case, opset):
    """Gather with constant indices: unique (Gather back), repeated (copies add up), scalar (axis removed)."""
    indices, axis = GATHER_CASES[case]
    rank = 4 - 1 + indices.ndim
    model = single("Gather", (1, 3, 4, 5), {"i": indices.astype(np.int64)}, ["i"], opset=opset, y_rank=rank,
                   axis=axis)
    _check_transpose(model, (1, 3, 4, 5))


def test_gather_along_batch_is_refused():
    """A Gather along the batch axis would mix samples: reported with the node's name."""
    from onnxlrp.errors import UnsupportedModelError
    model = single("Gather", (1, 3), {"i": np.array([0], dtype=np.int64)}, ["i"], opset=13, axis=0)
    with pytest.raises(UnsupportedModelError, match=r"Gather x1 \(the_gather\): it gathers along the batch axis"):
        explain_dense(model, {"x": np.ones((2, 3))}, np.ones((1, 3), np.float32))


def _packed(indices: np.ndarray, tail_nodes: list, out_rank: int, opset: int = 17):
    """x (N, 4, 6) -> Reshape (N, 4, 3, 2) -> Transpose (3, N, 4, 2): the packed axis 0 is not the batch axis
    (as a packed qkv projection is split into q, k, v); then Gather along axis 0 and tail_nodes."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["packed"], perm=[2, 0, 1, 3]),
             helper.make_node("Gather", ["packed", "i"], ["g"], axis=0, name="the_gather")] + tail_nodes
    inits = {"shape": _ints([0, 4, 3, 2]), "i": _ints(indices), "ax": _ints([0])}
    return make_model(nodes, [tensor("x", ["N", 4, 6])], [tensor("y", [None] * out_rank)], inits, opset)


GATHER_PACKED_CASES = {  # indices, nodes after the Gather (reading 'g', writing 'y'), output rank
    "one_index": (np.array(1), [helper.make_node("Identity", ["g"], ["y"])], 3),
    "repeated": (np.array([2, 0, 2]), [helper.make_node("Transpose", ["g"], ["y"], perm=[1, 0, 2, 3])], 4),
    "two_dims_dynamic_tail": (np.array([[0, 2], [2, 2]]),
                              [helper.make_node("Transpose", ["g"], ["y"], perm=[2, 0, 1, 3, 4])], 5),
}


@pytest.mark.parametrize("case", list(GATHER_PACKED_CASES))
def test_gather_along_a_packed_axis_that_is_not_the_batch(case):
    """Gather along axis 0 of a tensor whose batch is on axis 1 (a packed projection): relevance moves back exactly,
    repeated indices add up (R_x = J^T R), and the batch stays dynamic (the output is brought back batch-first for
    the reference)."""
    indices, tail, rank = GATHER_PACKED_CASES[case]
    _check_transpose(_packed(indices, tail, rank), (1, 4, 6))


def test_split_of_a_packed_axis_that_is_not_the_batch():
    """q, k, v = packed.unbind(0) (Split along axis 0 of (3, N, 4, 2), then Squeeze) joined in another order."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["packed"], perm=[2, 0, 1, 3]),
             helper.make_node("Split", ["packed"], ["q", "k", "v"], axis=0, num_outputs=3)]
    nodes += [helper.make_node("Squeeze", [p, "ax"], [p + "s"]) for p in "qkv"]
    nodes += [helper.make_node("Concat", ["vs", "qs", "ks"], ["y"], axis=2)]
    model = make_model(nodes, [tensor("x", ["N", 4, 6])], [tensor("y", [None] * 3)],
                       {"shape": _ints([0, 4, 3, 2]), "ax": _ints([0])}, 18)
    _check_transpose(model, (1, 4, 6))


def test_gather_along_a_moved_batch_axis_is_refused():
    """After the Transpose the batch is on axis 1: a Gather along axis 1 mixes samples and is named so."""
    from onnxlrp.errors import UnsupportedModelError
    model = _packed(np.array([0]), [helper.make_node("Identity", ["g"], ["y"])], 4)
    gather = model.graph.node[2]
    gather.attribute[0].i = 1
    with pytest.raises(UnsupportedModelError, match=r"the_gather\): it gathers along the batch axis 1 of 'packed'"):
        explain_dense(model, {"x": np.ones((2, 4, 6))}, np.ones((3, 1, 4, 2), np.float32))


PAD_CASES = {
    "constant": ([0, 0, 1, 2, 0, 0, 2, 0], "constant", 0.0, True),
    "constant_value": ([0, 1, 0, 1, 0, 0, 1, 1], "constant", 1.5, True),
    "crop": ([0, 0, -1, 0, 0, 0, 0, -2], "constant", 0.0, False),
    "reflect": ([0, 0, 2, 1, 0, 0, 1, 3], "reflect", None, False),
    "edge": ([0, 0, 2, 0, 0, 0, 1, 3], "edge", None, False),
}


@pytest.mark.parametrize("case", list(PAD_CASES))
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_pad(case, opset):
    """Pad: constant (relevance at the pad constants reported as dropped), crop, reflect and edge (copies add up)."""
    pads, mode, value, dropped = PAD_CASES[case]
    inits = {"pads": _ints(pads)}
    names = ["pads"]
    if value is not None:
        inits["value"] = np.array(value, dtype=np.float32)
        names.append("value")
    model = single("Pad", (1, 2, 4, 5), inits, names, opset=opset, mode=mode)
    _check_transpose(model, (1, 2, 4, 5), dropped=dropped)


def test_pad_wrap_with_axes():
    """Pad mode 'wrap' with an axes input (opset 19+)."""
    inits = {"pads": _ints([1, 2, 0, 3]), "value": np.array(0.0, dtype=np.float32), "axes": _ints([2, -1])}
    model = single("Pad", (1, 2, 4, 5), inits, ["pads", "value", "axes"], opset=NEWEST_OPSET, mode="wrap")
    _check_transpose(model, (1, 2, 4, 5))


@pytest.mark.parametrize("x_shape,target", [((1, 1, 3), [1, 4, 3]), ((1, 3, 1, 1), [1, 3, 2, 4])])
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_expand(x_shape, target, opset):
    """Expand: the copies' relevance adds up (sum over the broadcast axes)."""
    model = single("Expand", x_shape, {"shape": _ints(target)}, ["shape"], opset=opset, y_rank=len(target))
    _check_transpose(model, x_shape)


def test_expand_to_higher_rank():
    """Expand that adds a leading axis: R summed over it and over the size-1 axes (NumPy reference)."""
    model = single("Expand", (1, 2, 1), {"shape": _ints([3, 1, 2, 5])}, ["shape"], opset=13, y_rank=4)
    x = np.array([[[1.0], [2.0]]], dtype=np.float32)
    R = rng(1).normal(size=(3, 1, 2, 5)).astype(np.float32)
    res = explain_dense(model, {"x": x}, R)
    assert_close(res.relevance["x"], R.astype(np.float64).sum(axis=(0, 3)).reshape(1, 2, 1), 1e-6)


def _resize(x_shape, opset, mode, ctm=None, scales=None, sizes=None, nearest_mode=None, axes=None):
    """A Resize node (opset 11+ signature, empty roi) with constant scales, or with sizes for the spatial axes
    computed from Shape(x) as torch's exporter writes them (Shape -> Slice -> Concat)."""
    attrs = {"mode": mode}
    if ctm:
        attrs["coordinate_transformation_mode"] = ctm
    if nearest_mode:
        attrs["nearest_mode"] = nearest_mode
    if axes is not None:
        attrs["axes"] = axes
    inits = {"roi": np.zeros(0, dtype=np.float32)}
    nodes = []
    if scales is not None:
        inits["scales"] = np.asarray(scales, dtype=np.float32)
        names = ["x", "roi", "scales"]
    else:
        inits.update(noscales=np.zeros(0, dtype=np.float32), s0=_ints([0]), s2=_ints([2]), hw=_ints(sizes))
        nodes += [helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Slice", ["shape", "s0", "s2"], ["nc"]),
                  helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0)]
        names = ["x", "roi", "noscales", "sizes"]
    nodes.append(helper.make_node("Resize", names, ["y"], name="the_resize", **attrs))
    return make_model(nodes, [tensor("x", ["N"] + list(x_shape[1:]))], [tensor("y", [None] * len(x_shape))],
                      inits, opset)


RESIZE_CASES = {
    "nearest_x2_asymmetric_floor": dict(mode="nearest", ctm="asymmetric", nearest_mode="floor",
                                         scales=[1, 1, 2, 2]),
    "nearest_x2_half_pixel": dict(mode="nearest", scales=[1, 1, 2, 2]),
    "nearest_x1.5_round_ceil": dict(mode="nearest", scales=[1, 1, 1.5, 1.5], nearest_mode="round_prefer_ceil"),
    "nearest_down_sizes": dict(mode="nearest", sizes=[2, 3]),
    "linear_x2_half_pixel": dict(mode="linear", scales=[1, 1, 2, 2]),
    "linear_x2_align_corners": dict(mode="linear", ctm="align_corners", scales=[1, 1, 2, 2]),
    "linear_pytorch_half_pixel_sizes": dict(mode="linear", ctm="pytorch_half_pixel", sizes=[7, 1]),
    "linear_asymmetric_x3": dict(mode="linear", ctm="asymmetric", scales=[1, 1, 3, 1]),
    "linear_down_half": dict(mode="linear", scales=[1, 1, 0.5, 0.5]),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_resize(case, opset):
    """Resize nearest/linear, up and down, every common coordinate mode: exact transpose of the interpolation,
    which conserves (each output is a convex combination of inputs)."""
    _check_transpose(_resize((1, 2, 4, 5), opset, **RESIZE_CASES[case]), (1, 2, 4, 5))


def test_resize_axes_attribute():
    """Resize with the axes attribute (opset 18+): scales only for the named axes."""
    _check_transpose(_resize((1, 2, 3, 4), NEWEST_OPSET, "linear", scales=[2, 1.5], axes=[2, 3]), (1, 2, 3, 4))


def test_resize_cubic_is_refused():
    """An unsupported Resize mode is reported with the node's name."""
    from onnxlrp.errors import UnsupportedModelError
    model = _resize((1, 1, 2, 2), 13, "cubic", scales=[1, 1, 2, 2])
    with pytest.raises(UnsupportedModelError, match=r"Resize x1 \(the_resize\): mode 'cubic' is not supported"):
        explain_dense(model, {"x": np.ones((1, 1, 2, 2))}, np.ones((1, 1, 4, 4), np.float32))


@pytest.mark.parametrize("op,opset", [("Upsample", 9), ("Resize", 10)])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_and_resize10(op, opset, mode):
    """Upsample (opset 9) and Resize-10 take (X, scales) with asymmetric coordinates: the same exact transpose."""
    model = single(op, (1, 2, 3, 4), {"scales": np.array([1, 1, 2, 1.5], dtype=np.float32)}, ["scales"],
                   opset=opset, mode=mode)
    _check_transpose(model, (1, 2, 3, 4))


def test_resize10_nearest_downsampling():
    """Resize-10 nearest downsampling picks ceil(x / scale), as onnxruntime's opset-10 nearest does."""
    model = single("Resize", (1, 2, 6, 5), {"scales": np.array([1, 1, 0.5, 0.75], dtype=np.float32)}, ["scales"],
                   opset=10, mode="nearest")
    _check_transpose(model, (1, 2, 6, 5))
