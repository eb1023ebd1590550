"""Shape-generic compiled graphs: one compiled graph, built for inputs whose height and width are dynamic, explains
every size the model accepts, and at each size equals the graph compiled for that size alone (whose emitters the op
tests check against dense float64 references). Every op whose transpose depends on the spatial size, at the oldest
and newest opsets; ops that truly need a static size are refused with the --shape hint, and compiling with
shapes= (--shape) specialises the model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxlrp.errors import OnnxLrpError, UnsupportedModelError
from onnxlrp.specialise import specialise
from ops_harness import (NEWEST_OPSET, SEED_INPUT, DenseResult, assert_close, explain_dense, forward, make_model,
                         rng, tensor)

SIZES = [(8, 8), (9, 7), (13, 10)]
ROI = np.zeros(0, np.float32)  # Resize's roi input, required up to opset 12
mk = helper.make_node


def _conv_w(cout: int, cin: int, k: tuple) -> np.ndarray:
    """A seeded conv weight."""
    return rng(cout * 7 + cin).normal(size=(cout, cin) + k).astype(np.float32)


def _head(out: str = "h") -> list:
    """A Relu after the op, so that the op's output feeds a further node (the seed is dense anyway)."""
    return [mk("Relu", [out], ["y"])]


# name -> (nodes, initializers, opsets); the input x is (N, 3, H, W)
CASES = {
    "conv_s2_pads": ([mk("Conv", ["x", "W"], ["h"], strides=[2, 2], pads=[1, 1, 1, 1])] + _head(),
                     {"W": _conv_w(4, 3, (3, 3))}, (11, NEWEST_OPSET)),
    "conv_s21_k5": ([mk("Conv", ["x", "W"], ["h"], strides=[2, 1], pads=[2, 2, 2, 2], group=3)] + _head(),
                    {"W": _conv_w(3, 1, (5, 5))}, (11, NEWEST_OPSET)),
    "conv_s3_dilated": ([mk("Conv", ["x", "W"], ["h"], strides=[3, 2], dilations=[2, 1])] + _head(),
                        {"W": _conv_w(4, 3, (2, 3))}, (NEWEST_OPSET,)),
    "conv_same_upper_s2": ([mk("Conv", ["x", "W"], ["h"], strides=[2, 2], auto_pad="SAME_UPPER")] + _head(),
                           {"W": _conv_w(4, 3, (3, 4))}, (11, NEWEST_OPSET)),
    "conv_same_lower_s2": ([mk("Conv", ["x", "W"], ["h"], strides=[2, 3], auto_pad="SAME_LOWER")] + _head(),
                           {"W": _conv_w(4, 3, (4, 3))}, (NEWEST_OPSET,)),
    "conv_same_s1": ([mk("Conv", ["x", "W"], ["h"], auto_pad="SAME_UPPER")] + _head(),
                     {"W": _conv_w(4, 3, (4, 3))}, (NEWEST_OPSET,)),
    "conv_valid_s2": ([mk("Conv", ["x", "W"], ["h"], strides=[2, 2], auto_pad="VALID")] + _head(),
                      {"W": _conv_w(4, 3, (3, 3))}, (NEWEST_OPSET,)),
    "convtranspose_pads_outpad": ([mk("ConvTranspose", ["x", "W"], ["h"], strides=[2, 2], pads=[1, 0, 0, 1],
                                      output_padding=[1, 0])] + _head(),
                                  {"W": _conv_w(3, 2, (3, 3))}, (11, NEWEST_OPSET)),
    "convtranspose_same": ([mk("ConvTranspose", ["x", "W"], ["h"], strides=[2, 2], auto_pad="SAME_UPPER")]
                           + _head(), {"W": _conv_w(3, 2, (3, 2))}, (NEWEST_OPSET,)),
    "convtranspose_same_k_lt_s": ([mk("ConvTranspose", ["x", "W"], ["h"], strides=[3, 2], output_padding=[1, 1],
                                      auto_pad="SAME_LOWER")] + _head(), {"W": _conv_w(3, 2, (1, 2))},
                                  (11, NEWEST_OPSET)),
    "avgpool_pads_exclude": ([mk("AveragePool", ["x"], ["h"], kernel_shape=[3, 3], strides=[2, 2],
                                 pads=[1, 1, 1, 1])] + _head(), {}, (11, NEWEST_OPSET)),
    "avgpool_pads_include": ([mk("AveragePool", ["x"], ["h"], kernel_shape=[3, 2], strides=[2, 1],
                                 pads=[1, 0, 1, 1], count_include_pad=1)] + _head(), {}, (NEWEST_OPSET,)),
    "avgpool_k2s2": ([mk("AveragePool", ["x"], ["h"], kernel_shape=[2, 2], strides=[2, 2])] + _head(), {},
                     (NEWEST_OPSET,)),
    "global_avgpool": ([mk("GlobalAveragePool", ["x"], ["h"]), mk("Flatten", ["h"], ["y"])], {}, (11, NEWEST_OPSET)),
    "maxpool_k2s2": ([mk("MaxPool", ["x"], ["h"], kernel_shape=[2, 2], strides=[2, 2])] + _head(), {},
                     (11, NEWEST_OPSET)),
    "maxpool_overlapping": ([mk("MaxPool", ["x"], ["h"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
                            + _head(), {}, (NEWEST_OPSET,)),
    "global_maxpool": ([mk("GlobalMaxPool", ["x"], ["h"]), mk("Flatten", ["h"], ["y"])], {}, (11, NEWEST_OPSET)),
    "reduce_mean_spatial": ([mk("ReduceMean", ["x"], ["y"], axes=[3], keepdims=0)], {}, (11,)),
    "reduce_max_spatial": ([mk("ReduceMax", ["x"], ["y"], axes=[2, 3], keepdims=1)], {}, (11,)),
    "resize_nearest_x2": ([mk("Resize", ["x", "roi", "scales"], ["h"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")] + _head(),
                          {"scales": np.array([1, 1, 2, 2], np.float32), "roi": ROI}, (11, NEWEST_OPSET)),
    "resize_linear_x2": ([mk("Resize", ["x", "roi", "scales"], ["h"], mode="linear")] + _head(),
                         {"scales": np.array([1, 1, 2, 3], np.float32), "roi": ROI}, (11, NEWEST_OPSET)),
    "resize_linear_align_sizes": ([mk("Shape", ["x"], ["s"]), mk("Mul", ["s", "two"], ["sizes"]),
                                   mk("Resize", ["x", "roi", "", "sizes"], ["h"], mode="linear",
                                      coordinate_transformation_mode="align_corners")] + _head(),
                                  {"two": np.array([1, 1, 2, 2], np.int64), "roi": ROI}, (NEWEST_OPSET,)),
    "resize_nearest_down_half_pixel": ([mk("Resize", ["x", "roi", "scales"], ["h"], mode="nearest")] + _head(),
                                       {"scales": np.array([1, 1, 0.5, 1.5], np.float32), "roi": ROI}, (NEWEST_OPSET,)),
    "slice_dynamic_axis": ([mk("Slice", ["x", "starts", "ends", "axes"], ["y"])],
                           {"starts": np.array([1, -4], np.int64), "ends": np.array([-1, 1000], np.int64),
                            "axes": np.array([2, 3], np.int64)}, (11, NEWEST_OPSET)),
    "pad_constant_dynamic_axis": ([mk("Pad", ["x", "pads"], ["y"])],
                                  {"pads": np.array([0, 0, 2, -1, 0, 0, -1, 3], np.int64)}, (11, NEWEST_OPSET)),
}


def _model(case: str, opset: int, dims=("H", "W")) -> onnx.ModelProto:
    """The case's model with input x (N, 3, H, W); H and W symbolic unless dims says otherwise."""
    nodes, inits, _ = CASES[case]
    rank = 2 if case.startswith("global_") else (3 if case == "reduce_mean_spatial" else 4)
    return make_model(nodes, [tensor("x", ["N", 3, *dims])], [tensor("y", [None] * rank)], inits, opset)


def rerun(res: DenseResult, n_outputs: int, feeds: dict, R: np.ndarray) -> DenseResult:
    """The compiled graph of an explain_dense result run again on other inputs and seed."""
    values = forward(res.compiled, {**feeds, SEED_INPUT: R})
    k = len(res.relevance)
    return DenseResult(dict(zip(res.relevance, values[n_outputs: n_outputs + k])),
                       dict(zip(res.bias, values[n_outputs + k: -1])), values[-1], values[:n_outputs], res.compiled)


def _specialised(model: onnx.ModelProto, hw: tuple) -> onnx.ModelProto:
    """A copy of the model compiled for one size (what shapes= / --shape do)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return specialise(copy, {"x": (-1, 3) + tuple(hw)})


@pytest.mark.parametrize("case,opset", [(c, o) for c in CASES for o in CASES[c][2]])
def test_one_graph_explains_every_size(case, opset):
    """The graph compiled once for symbolic H, W equals, at three sizes, the graph compiled for each size, and
    conserves."""
    model = _model(case, opset)
    g = rng(3)
    dynamic = None
    for hw in SIZES:
        x = g.normal(size=(2, 3) + hw).astype(np.float32)
        y = forward(model, {"x": x})[0]
        R = (g.normal(size=y.shape) * np.abs(y)).astype(np.float32)
        static = explain_dense(_specialised(model, hw), {"x": x}, R)
        if dynamic is None:
            dynamic = explain_dense(model, {"x": x}, R)
            got = dynamic
        else:
            got = rerun(dynamic, 1, {"x": x}, R)
        assert_close(got.relevance["x"], static.relevance["x"], 1e-6, f"{case} at {hw}")
        assert got.conservation_error(R) < 1e-5, (case, hw)


def test_specialised_graph_has_static_sizes():
    """shapes= fixes the input's dims, so the compiled graph's relevance output is declared at that size."""
    import onnxlrp
    compiled = onnxlrp.compile(_model("conv_s2_pads", NEWEST_OPSET), "epsilon", shapes={"x": (2, 3, 9, 7)})
    out = next(o for o in compiled.graph.output if o.name == "lrp/relevance/x")
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [2, 3, 9, 7]


@pytest.mark.parametrize("shapes,message", [
    ({"z": (1, 3, 8, 8)}, r"shapes names an unknown input 'z' \(inputs: x\)"),
    ({"x": (1, 3, 8)}, r"the shape given for input 'x' has 3 dims, the input has rank 4"),
    ({"x": (1, 4, 8, 8)}, r"axis 1 of input 'x' is 3, the shape given says 4"),
    ({"x": (1, 3, 0, 8)}, r"must hold positive ints \(or -1 to keep an axis dynamic\)"),
])
def test_bad_shapes_are_one_clear_error(shapes, message):
    """Every bad shapes= value names the input and what is wrong."""
    import onnxlrp
    with pytest.raises(OnnxLrpError, match=message):
        onnxlrp.compile(_model("conv_s2_pads", NEWEST_OPSET), "epsilon", shapes=shapes)


def test_op_that_needs_a_static_size_says_how_to_specialise():
    """Overlapping max-pool windows below opset 16 at a dynamic size: refused with the --shape hint; compiling with
    that shape works."""
    import onnxlrp
    nodes = [mk("MaxPool", ["x"], ["h"], kernel_shape=[3, 3], strides=[2, 2], name="pool"), mk("Flatten", ["h"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 3, "H", "W"])], [tensor("y", [None, None])], opset=11)
    with pytest.raises(UnsupportedModelError, match=r"MaxPool x1 \(pool\): the size of its input 'x' is not known "
                                                    r"at compile time .*\[compile for one input size: --shape "
                                                    r"x=1,3,H,W \(Python: shapes=\{'x': \(1, 3, H, W\)\}\)\]"):
        onnxlrp.compile(model, "epsilon")
    compiled = onnxlrp.compile(model, "epsilon", shapes={"x": (1, 3, 9, 9)})
    x = rng(5).normal(size=(1, 3, 9, 9)).astype(np.float32)
    exp = onnxlrp.Explainer(compiled).explain(x, target=4)
    assert exp.conservation()["relative_error"][0] < 1e-5


def test_reshape_rank_through_cast_chain():
    """paddle2onnx's Reshape(x, Concat(Cast(Slice(Cast(Shape(x)))), Cast(const))): ONNX inference loses the rank at
    the Casts; it is completed, so the MatMul after it compiles, and explains every batch size."""
    import onnxlrp
    w = rng(6).normal(size=(12, 5)).astype(np.float32)
    nodes = [mk("Shape", ["x"], ["s"]), mk("Cast", ["s"], ["s32"], to=6),
             mk("Slice", ["s32", "zero", "one", "axis0"], ["n"]), mk("Cast", ["n"], ["n64"], to=7),
             mk("Cast", ["width"], ["w64"], to=7), mk("Concat", ["n64", "w64"], ["shape"], axis=0),
             mk("Reshape", ["x", "shape"], ["flat"]), mk("MatMul", ["flat", "W"], ["y"])]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "axis0": np.array([0], np.int64),
             "width": np.array([12], np.int32), "W": w}
    model = make_model(nodes, [tensor("x", ["N", 3, 2, 2])], [tensor("y", [None, None])], inits, 11)
    explainer = onnxlrp.Explainer(model, "epsilon")
    for n in (1, 3):
        x = rng(n).normal(size=(n, 3, 2, 2)).astype(np.float32)
        exp = explainer.explain(x, target=2)
        flat = x.reshape(n, 12).astype(np.float64)
        y = flat @ w
        want = flat * w[:, 2] * (y[:, 2:3] / (y[:, 2:3] + 1e-6 * np.sign(y[:, 2:3])))
        assert_close(exp.relevance["x"].reshape(n, 12), want, 1e-5)


def test_sizes_read_from_a_dynamic_axis_say_how_to_specialise():
    """A Swin-like window padding (pads = (2 - W % 2) % 2, read from Shape(x)) and a Slice whose end is Shape(x)[1]:
    refused in one line naming both nodes and the axis they read, ending with the --shape hint; compiled with that
    shape, R_x equals the dense float64 epsilon rule of the MatMul after the padding (the pad column gets nothing)."""
    import onnxlrp
    w = rng(8).normal(size=(6, 3)).astype(np.float32)
    consts = {"two": np.array([2], np.int64), "zeros3": np.zeros(3, np.int64), "zero": np.array([0], np.int64),
              "one": np.array([1], np.int64), "W": w}
    nodes = [mk("Shape", ["x"], ["s"]), mk("Slice", ["s", "one", "two"], ["width"]),
             mk("Mod", ["width", "two"], ["rem"]), mk("Sub", ["two", "rem"], ["gap"]), mk("Mod", ["gap", "two"], ["pad"]),
             mk("Concat", ["zeros3", "pad"], ["pads"], axis=0), mk("Pad", ["x", "pads"], ["xp"], name="window_pad"),
             mk("Shape", ["xp"], ["sp"]), mk("Slice", ["sp", "one", "two"], ["end"]),
             mk("Slice", ["xp", "zero", "end", "one"], ["xs"], name="crop"), mk("MatMul", ["xs", "W"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", "W"])], [tensor("y", [None, 3])], consts, opset=17)
    hint = r"for 2 of these nodes: compile for one input size: --shape x=1,H \(Python: shapes=\{'x': \(1, H\)\}\)$"
    with pytest.raises(UnsupportedModelError, match=r"Pad x1 \(window_pad\): its input 'pads' is not a constant \(it "
                                                    r"reads the dynamic axis 0, 1 of 'x' .*Slice x1 \(crop\): .*" + hint):
        onnxlrp.compile(model, "epsilon")
    x = rng(9).normal(size=(2, 5)).astype(np.float32)
    compiled = onnxlrp.compile(model, "epsilon", params={"epsilon": 0.25}, shapes={"x": (2, 5)})
    exp = onnxlrp.Explainer(compiled).explain(x, target=1)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)[:5]
    z = x64 @ w64[:, 1]
    want = x64 * w64[:, 1] * (z / (z + 0.25 * np.where(z < 0, -1.0, 1.0)))[:, None]  # R = z_1 (logit seed)
    assert_close(exp.relevance["x"], want)


@pytest.mark.parametrize("opset", [13, 17])
def test_gather_with_indices_computed_from_the_batch_size_moves_relevance_back(opset):
    """torch's dynamo exporter writes as_strided as a Gather of the flattened tensor whose indices are arithmetic on
    Shape(x) (the batch size): a layout change computed at run time. Here the indices reverse each sample's 6 units
    (n * 6 + 5 - j); R_x equals the dense float64 epsilon rule of MatMul -> reversal -> MatMul (ScatterElements with
    reduction 'add' from opset 16, a one-hot MatMul below). Indices computed from data are still refused."""
    import onnxlrp
    w1 = rng(10).normal(size=(4, 6)).astype(np.float32)
    w2 = rng(11).normal(size=(6, 3)).astype(np.float32)
    consts = {"W1": w1, "W2": w2, "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
              "first": np.array([0], np.int64), "second": np.array([1], np.int64), "six": np.array(6, np.int64),
              "five": np.array(5, np.int64), "six1": np.array([6], np.int64), "flat": np.array([-1], np.int64)}
    nodes = [mk("MatMul", ["x", "W1"], ["y"]), mk("Reshape", ["y", "flat"], ["y_flat"]),
             mk("Shape", ["y"], ["s"]), mk("Slice", ["s", "first", "second"], ["n1"]),
             mk("Squeeze", ["n1", "first"], ["n"]), mk("Mul", ["n", "six"], ["total"]),
             mk("Range", ["zero", "total", "one"], ["r"]), mk("Concat", ["n1", "six1"], ["grid"], axis=0),
             mk("Reshape", ["r", "grid"], ["r2"]), mk("Div", ["r2", "six"], ["row"]), mk("Mod", ["r2", "six"], ["col"]),
             mk("Mul", ["row", "six"], ["base"]), mk("Sub", ["five", "col"], ["rev"]), mk("Add", ["base", "rev"], ["idx"]),
             mk("Gather", ["y_flat", "idx"], ["p"], axis=0, name="as_strided"), mk("MatMul", ["p", "W2"], ["out"])]
    model = make_model(nodes, [tensor("x", ["N", 4])], [tensor("out", [None, 3])], consts, opset=opset)
    x = rng(12).normal(size=(3, 4)).astype(np.float32)
    compiled = onnxlrp.compile(model, "epsilon", params={"epsilon": 0.25})
    exp = onnxlrp.Explainer(compiled).explain(x, target=2)

    def stab(z):
        return z + 0.25 * np.where(z < 0, -1.0, 1.0)

    x64, w1_64, w2_64 = x.astype(np.float64), w1.astype(np.float64), w2.astype(np.float64)
    y = x64 @ w1_64
    p = y[:, ::-1]
    z = p @ w2_64[:, 2]
    r_p = p * w2_64[:, 2] * (z / stab(z))[:, None]
    r_y = r_p[:, ::-1]
    want = x64 * ((r_y / stab(y)) @ w1_64.T)
    assert_close(exp.output, y[:, ::-1] @ w2_64, 1e-5)
    assert_close(exp.relevance["x"], want, 1e-5)

    data_nodes = nodes[:-2] + [mk("Cast", ["x"], ["xi"], to=7), mk("ReduceMax", ["xi"], ["m"], keepdims=0),
                               mk("Add", ["idx", "m"], ["idx_data"]),
                               mk("Gather", ["y_flat", "idx_data"], ["p"], axis=0, name="as_strided"),
                               mk("MatMul", ["p", "W2"], ["out"])]
    with pytest.raises(UnsupportedModelError, match=r"Gather x1 \(as_strided\): its indices 'idx_data' is not a "
                                                    r"constant \(it is computed from the model input 'x'\)"):
        onnxlrp.compile(make_model(data_nodes, [tensor("x", ["N", 4])], [tensor("out", [None, 3])], consts,
                                   opset=opset), "epsilon")


def test_batch_merged_by_a_reshape_of_unknown_sizes_is_summed_per_sample():
    """A Reshape whose target is computed from Shape (N, C, 3) -> (N * C, 3, 1), as MobileViT's legacy export
    unfolds patches into the batch axis: per-sample sums (stabilizer, bias rows) group the merged axis by sample.
    R_x equals the dense float64 epsilon rule of MatMul -> reshape -> MatMul -> reshape -> Gemm, and every sample
    conserves (before, the stabilizer sum was (N * 2,) and onnxruntime failed)."""
    import onnxlrp
    w1, w2, w3 = (rng(20 + i).normal(size=s).astype(np.float32) for i, s in enumerate([(4, 3), (1, 5), (30, 2)]))
    consts = {"W1": w1, "W2": w2, "W3": w3, "first": np.array([0], np.int64), "second": np.array([1], np.int64),
              "two": np.array([2], np.int64), "tail": np.array([3, 1], np.int64), "width": np.array([30], np.int64)}
    nodes = [mk("MatMul", ["x", "W1"], ["y1"]), mk("Shape", ["y1"], ["s"]), mk("Slice", ["s", "first", "second"], ["n"]),
             mk("Slice", ["s", "second", "two"], ["c"]), mk("Mul", ["n", "c"], ["n2"]),
             mk("Concat", ["n2", "tail"], ["t1"], axis=0),
             mk("Reshape", ["y1", "t1"], ["y1r"]), mk("MatMul", ["y1r", "W2"], ["y2"]),
             mk("Concat", ["n", "width"], ["t2"], axis=0), mk("Reshape", ["y2", "t2"], ["y2r"]),
             mk("Gemm", ["y2r", "W3"], ["out"])]
    model = make_model(nodes, [tensor("x", ["N", "C", 4])], [tensor("out", [None, 2])], consts, opset=17)
    x = rng(23).normal(size=(3, 2, 4)).astype(np.float32)
    exp = onnxlrp.Explainer(onnxlrp.compile(model, "epsilon", params={"epsilon": 0.25})).explain(x, target=1)

    def stab(z):
        return z + 0.25 * np.where(z < 0, -1.0, 1.0)

    x64, w1_64, w2_64, w3_64 = (a.astype(np.float64) for a in (x, w1, w2, w3))
    y1 = x64 @ w1_64                                   # (N, 2, 3)
    y2 = y1.reshape(6, 3, 1) @ w2_64                   # (N * 2, 3, 5)
    flat = y2.reshape(3, 30)
    z = flat @ w3_64[:, 1]
    r2 = (flat * w3_64[:, 1] * (z / stab(z))[:, None]).reshape(6, 3, 5)
    r1 = y1.reshape(6, 3, 1) * ((r2 / stab(y2)) @ w2_64.T)
    want = x64 * ((r1.reshape(3, 2, 3) / stab(y1)) @ w1_64.T)
    assert_close(exp.relevance["x"], want, 1e-5)
    assert np.max(exp.conservation()["relative_error"]) < 1e-5
