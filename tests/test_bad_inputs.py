"""Bad input gets one clear error line and nothing else: broken files, graphs onnxlrp cannot explain, data that does
not fit the model (API: an onnxlrp error type; CLI: one line on stderr and exit code 2). Models in float16 and
float64 and models with integer inputs are not errors."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxlrp.cli import main
from onnxlrp.compiler import compile as compile_model
from onnxlrp.errors import InputError, ModelLoadError, OnnxLrpError, UnsupportedModelError
from onnxlrp.runtime import Explainer
from mlp_models import random_mlp

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP = MODELS / "digits_mlp.onnx"


def vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A tensor value info."""
    return helper.make_tensor_value_info(name, elem, shape)


def const(name: str, array, dtype=np.float32) -> onnx.TensorProto:
    """An initializer."""
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def model_of(nodes, inputs, outputs, inits=(), opsets=(("", 17),)) -> onnx.ModelProto:
    """A model at IR 10 (what onnxruntime reads) from nodes, value infos and initializers."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=10)


def weights(*shape, seed: int = 0) -> np.ndarray:
    """Random float32 weights."""
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def one_line_cli_error(*args) -> str:
    """Run the CLI, require exit code 2 and exactly one 'error: ' line on stderr, return that line."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# files
def _external(folder: Path, name: str = "m.onnx", location: str = "m.data") -> Path:
    """The digits MLP saved with every tensor in an external file at location (relative to the model's folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(MLP))
    onnx.save_model(model, str(folder / name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    if location != "m.data":
        proto = onnx.load(str(folder / name), load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(proto, str(folder / name))
    return folder / name


def _bad_files(root: Path) -> dict:
    """name -> (path, expected message start) for every broken-file case."""
    raw = MLP.read_bytes()
    files = {}
    files["missing"] = (root / "nothere.onnx", "model file not found: ")
    (root / "empty.onnx").write_bytes(b"")
    files["empty"] = (root / "empty.onnx", "model file is empty: ")
    (root / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = (root / "truncated.onnx", "is not a readable ONNX model (DecodeError")
    (root / "text.onnx").write_text("this is a text file, not a model\n")
    files["not onnx"] = (root / "text.onnx", "is not a readable ONNX model (DecodeError")
    files["a folder"] = (root, "model path is not a file: ")
    ext = _external(root / "ext_missing")
    os.remove(ext.parent / "m.data")
    files["external data missing"] = (ext, "external data file 'm.data' of tensor 'net.0.weight' is missing in ")
    outside = _external(root / "outer" / "inner", location="../m.data")
    (outside.parent / "m.data").rename(outside.parent.parent / "m.data")
    files["external data outside (../)"] = (
        outside, "external data of tensor 'net.0.weight' points outside the model's folder: '../m.data' (refused)")
    absolute = _external(root / "abs", location=str(root / "abs" / "m.data"))
    files["external data at an absolute path"] = (
        absolute, f"external data of tensor 'net.0.weight' has an absolute location '{root / 'abs' / 'm.data'}' "
                  f"(refused: external data must lie in the model's folder)")
    linked = _external(root / "link" / "inner")
    (linked.parent / "m.data").rename(root / "link" / "real.data")
    (linked.parent / "m.data").symlink_to(root / "link" / "real.data")
    files["external data through a symlink"] = (linked, "points outside the model's folder: 'm.data' (refused)")
    bad = model_of([helper.make_node("Relu", ["nope"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    onnx.save(bad, str(root / "checker.onnx"))
    files["fails the checker"] = (
        root / "checker.onnx", "the model fails the ONNX checker: Nodes in a graph must be topologically sorted")
    named = model_of([helper.make_node("Relu", ["x"], ["y"], name="relu_AB")], [vi("x", ["N", 4])], [vi("y", ["N", 4])])
    (root / "utf8.onnx").write_bytes(named.SerializeToString().replace(b"relu_AB", b"relu_\xff\xfe"))
    files["a name that is not UTF-8"] = (root / "utf8.onnx",
                                         "holds a name that is not valid UTF-8 (b'relu_\\xff\\xfe')")
    short = model_of([helper.make_node("Gemm", ["x", "w"], ["y"])], [vi("x", ["N", 4])], [vi("y", ["N", 3])],
                     [const("w", weights(4, 3))])
    short.graph.initializer[0].dims[:] = [4, 5]  # 12 values stored, 20 declared
    onnx.save(short, str(root / "short.onnx"))
    files["tensor data shorter than its shape"] = (
        root / "short.onnx", "the model fails the ONNX checker: TensorProto (tensor name: w) raw_data size (48 bytes) "
                             "is too small for the declared shape and type (80 bytes required).")
    short.graph.initializer[0].dims[:] = [2, 3]  # 12 values stored, 6 declared: the checker lets it through
    onnx.save(short, str(root / "long.onnx"))
    files["tensor data longer than its shape"] = (
        root / "long.onnx", "tensor 'w' is malformed (shape [2, 3]): cannot reshape array of size 12 into shape (2,3)")
    return files


BAD_FILES = ["missing", "empty", "truncated", "not onnx", "a folder", "external data missing",
             "external data outside (../)", "external data at an absolute path", "external data through a symlink",
             "fails the checker", "a name that is not UTF-8", "tensor data shorter than its shape",
             "tensor data longer than its shape"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_broken_files_raise_model_load_error(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    with pytest.raises(ModelLoadError) as info:
        Explainer(path)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", BAD_FILES)
def test_broken_files_give_one_cli_line(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    assert message in one_line_cli_error("compile", path, "-o", tmp_path / "out.onnx")


def test_external_data_outside_the_folder_is_never_read(tmp_path, monkeypatch):
    path, _ = _bad_files(tmp_path)["external data outside (../)"]
    reads = []
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", lambda *a: reads.append(a))
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor", lambda *a: reads.append(a))
    with pytest.raises(ModelLoadError, match="points outside the model's folder"):
        compile_model(path)
    assert reads == []


def test_external_data_inside_the_folder_loads(tmp_path):
    exp = Explainer(_external(tmp_path / "ok"), "epsilon").explain(np.load(MODELS / "digits_samples.npz")["flat"][:2])
    assert np.all(exp.conservation()["relative_error"] < 1e-5)


def test_external_data_in_a_subgraph_outside_the_folder_is_refused(tmp_path):
    """Tensors inside If/Loop bodies may point to external data too: they are checked like initializers."""
    hidden = const("hidden", np.ones(4))
    hidden.data_location = TensorProto.EXTERNAL
    hidden.ClearField("raw_data")
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        hidden.external_data.add(key=key, value=value)
    then_branch = helper.make_graph([helper.make_node("Add", ["x", "hidden"], ["t"])], "then", [],
                                    [vi("t", ["N", 4])], [hidden])
    else_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["e"])], "else", [], [vi("e", ["N", 4])])
    model = model_of([helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
                     [vi("x", ["N", 4]), vi("c", [], TensorProto.BOOL)], [vi("y", ["N", 4])])
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "m.onnx"))
    with pytest.raises(ModelLoadError, match=r"tensor 'hidden' points outside the model's folder: '\.\./secret\.bin'"):
        compile_model(tmp_path / "m" / "m.onnx")


def test_in_memory_model_with_external_data_is_refused(tmp_path):
    proto = onnx.load(str(_external(tmp_path / "mem")), load_external_data=False)
    with pytest.raises(ModelLoadError, match="keeps its data in an external file: pass the model's path instead"):
        compile_model(proto)


def test_model_whose_attributes_contradict_its_weights():
    """kernel_shape 5x5 on a 3x3 weight passes the checker and shape inference; onnxlrp names it."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc")]
    model = model_of(nodes, [vi("x", ["N", 1, 6, 6])], [vi("y", ["N", 2])],
                     [const("w", weights(2, 1, 3, 3)), const("w2", weights(72, 2))])
    with pytest.raises(UnsupportedModelError, match=r"^cannot explain this model, 1 unsupported node\(s\): Conv x1 "
                                                    r"\(conv\): its kernel_shape \[5, 5\] contradicts its weight's "
                                                    r"\[3, 3\] \(a broken model\)$"):
        compile_model(model)


# ---------------------------------------------------------------------------------------------------------------
# graphs
def _dense_around(middle: list, width: int = 5, extra_inits=(), opsets=(("", 17),)) -> onnx.ModelProto:
    """x (N, 4) -> Gemm 'fc1' -> h -> middle nodes (h -> m) -> Gemm 'fc2' -> y (N, 3)."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1")] + middle
    nodes.append(helper.make_node("Gemm", ["m", "w2"], ["y"], name="fc2"))
    inits = [const("w1", weights(4, width)), const("w2", weights(width, 3))] + list(extra_inits)
    return model_of(nodes, [vi("x", ["N", 4])], [vi("y", ["N", 3])], inits, opsets)


def test_every_unsupported_node_is_listed_at_once_with_counts_and_hints():
    middle = [helper.make_node("Hardmax", ["h"], ["n1"], name="hm1", axis=-1),
              helper.make_node("LogSoftmax", ["n1"], ["n2"], name="logsoftmax_mid", axis=-1),
              helper.make_node("Hardmax", ["n2"], ["n3"], name="hm2", axis=-1),
              helper.make_node("Einsum", ["n3"], ["m"], name="einsum", equation="ij->ij")]
    model = _dense_around(middle)
    with pytest.raises(UnsupportedModelError) as info:
        compile_model(model)
    message = str(info.value)
    assert message.startswith("cannot explain this model, 4 unsupported node(s): ")
    assert "Hardmax x2 (hm1, hm2): no relevance rule for this op" in message
    assert ("LogSoftmax x1 (logsoftmax_mid): no relevance rule for this op [only a LogSoftmax on the explained "
            "output") in message
    assert "Einsum x1 (einsum): no relevance rule for this op [rewrite the contraction as MatMul or Gemm" in message
    assert [p.name for p in info.value.problems] == ["hm1", "logsoftmax_mid", "hm2", "einsum"]
    assert "\n" not in message


def test_long_lists_of_one_op_are_shortened():
    middle = [helper.make_node("Einsum", [f"e{i}" if i else "h"], [f"e{i + 1}" if i < 6 else "m"], name=f"ein{i}",
                               equation="ij->ij") for i in range(7)]
    with pytest.raises(UnsupportedModelError, match=r"Einsum x7 \(ein0, ein1, ein2, ein3, ein4, \.\.\. \(2 more\)\)"):
        compile_model(_dense_around(middle))


def test_custom_domains_are_named_with_a_hint():
    middle = [helper.make_node("FancyAct", ["h"], ["g"], name="fancy", domain="com.acme"),
              helper.make_node("Gelu", ["g"], ["m"], name="gelu", domain="com.microsoft")]
    model = _dense_around(middle, opsets=(("", 17), ("com.acme", 1), ("com.microsoft", 1)))
    with pytest.raises(UnsupportedModelError) as info:
        compile_model(model)
    message = str(info.value)
    assert ("FancyAct x1 (fancy): custom domain 'com.acme' [custom ops cannot be explained: export with standard "
            "ONNX ops]") in message
    assert "Gelu x1 (gelu): custom domain 'com.microsoft' [an onnxruntime contrib op" in message


def _if_model() -> onnx.ModelProto:
    """An If whose branches read h from the outer graph (no explicit input carries it)."""
    then_branch = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [], [vi("t", ["N", 5])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [vi("e", ["N", 5])])
    middle = [helper.make_node("ReduceSum", ["h"], ["total"], name="sum", keepdims=0),
              helper.make_node("Greater", ["total", "zero"], ["c"], name="positive"),
              helper.make_node("If", ["c"], ["m"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    return _dense_around(middle, extra_inits=[const("zero", 0.0)])


def _loop_model() -> onnx.ModelProto:
    """A Loop that applies Relu to h three times (h is loop-carried)."""
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Relu", ["v_in"], ["v_out"])], "body",
                             [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL),
                              vi("v_in", ["N", 5])],
                             [vi("cond_out", [], TensorProto.BOOL), vi("v_out", ["N", 5])])
    middle = [helper.make_node("Loop", ["trips", "", "h"], ["m"], name="loop", body=body)]
    return _dense_around(middle, extra_inits=[const("trips", 3, np.int64)])


def _scan_model() -> onnx.ModelProto:
    """A Scan applying Relu to each row of h."""
    body = helper.make_graph([helper.make_node("Relu", ["row"], ["row_out"])], "body", [vi("row", [5])],
                             [vi("row_out", [5])])
    middle = [helper.make_node("Scan", ["h"], ["m"], name="scan", body=body, num_scan_inputs=1)]
    return _dense_around(middle)


@pytest.mark.parametrize("build, op, name, hint", [
    (_if_model, "If", "branch", "control flow is not supported: export with static control flow"),
    (_loop_model, "Loop", "loop", "control flow is not supported: unroll the loop at export time"),
    (_scan_model, "Scan", "scan", "control flow is not supported: unroll the scan at export time"),
])
def test_control_flow_is_listed_with_a_hint(build, op, name, hint):
    model = build()
    onnx.checker.check_model(model)
    with pytest.raises(UnsupportedModelError) as info:
        compile_model(model)
    assert f"{op} x1 ({name}): no relevance rule for this op [{hint}" in str(info.value)


def test_a_composite_that_leaves_nodes_without_a_rule():
    with pytest.raises(UnsupportedModelError) as info:
        compile_model(MLP, "base")
    assert str(info.value) == ("cannot explain this model, 3 unsupported node(s): Gemm x3 (/net/net.0/Gemm, "
                               "/net/net.2/Gemm, /net/net.4/Gemm): no entry of composite 'base' matches it "
                               "(group 'dense')")


def test_an_output_that_depends_on_no_float_input():
    nodes = [helper.make_node("Gemm", ["c", "w"], ["y"], name="fc"), helper.make_node("Relu", ["x"], ["z"])]
    model = model_of(nodes, [vi("x", ["N", 4])], [vi("y", [2, 3]), vi("z", ["N", 4])],
                     [const("c", weights(2, 5)), const("w", weights(5, 3))])
    with pytest.raises(OnnxLrpError, match="^output 'y' does not depend on any floating-point input: nothing to "
                                           "explain$"):
        compile_model(model)


def test_a_requested_output_that_does_not_exist_lists_the_ones_that_do():
    model = model_of([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["z"])],
                     [vi("x", ["N", 4])], [vi("y", ["N", 4]), vi("z", ["N", 4])])
    with pytest.raises(OnnxLrpError, match=r"^the model has no output 'logits' \(outputs: y, z\)$"):
        compile_model(model, output="logits")
    assert "error: the model has no output 'nope' (outputs: logits)" == one_line_cli_error(
        "compile", MLP, "-o", "unused.onnx", "--output", "nope")


def test_an_integer_output_cannot_be_explained():
    model = model_of([helper.make_node("ArgMax", ["x"], ["y"], axis=1), helper.make_node("Relu", ["x"], ["z"])],
                     [vi("x", ["N", 4])], [vi("y", ["N"], TensorProto.INT64), vi("z", ["N", 4])])
    with pytest.raises(OnnxLrpError, match="^output 'y' is not a floating-point tensor and cannot be explained$"):
        compile_model(model, output="y")


def test_weights_holding_nan_are_refused():
    model = _dense_around([helper.make_node("Relu", ["h"], ["m"])])
    w2 = numpy_helper.to_array(model.graph.initializer[1]).copy()
    w2[1, 2] = np.nan
    model.graph.initializer[1].CopyFrom(const("w2", w2))
    with pytest.raises(UnsupportedModelError, match=r"Gemm x1 \(fc2\): its constant input 'w2' holds NaN or Inf"):
        compile_model(model)


def test_a_gemm_bias_that_fits_no_output_is_named(tmp_path):
    """A bias of 7 values on a 2-output Gemm passes the checker and fails only when onnxruntime runs it."""
    model = model_of([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], [vi("x", ["N", 3])],
                     [vi("y", ["N", 2])], [const("w", weights(3, 2)), const("b", np.ones(7))])
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert one_line_cli_error("compile", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx") == (
        "error: cannot explain this model, 1 unsupported node(s): Gemm x1 (fc): its bias C has shape [7] for 2 "
        "outputs (a broken model)")


def test_a_negative_variance_is_refused_without_numpy_warnings():
    """Folding BatchNormalization takes sqrt(var + eps): a broken variance must give the one error, no warnings."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "o", "mu", "var"], ["n"], name="bn"),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc")]
    inits = [const("w", weights(2, 1, 3, 3)), const("s", np.ones(2)), const("o", np.zeros(2)), const("mu", np.zeros(2)),
             const("var", [1.0, -1.0]), const("w2", weights(32, 2))]
    model = model_of(nodes, [vi("x", ["N", 1, 6, 6])], [vi("y", ["N", 2])], inits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnsupportedModelError, match=r"Conv x1 \(conv\): its constant input 'w_lrpfold' holds NaN"):
            compile_model(model)


# ---------------------------------------------------------------------------------------------------------------
# data
@pytest.fixture(scope="module")
def mlp():
    """The digits MLP's explainer."""
    return Explainer(MLP, "epsilon")


@pytest.fixture(scope="module")
def masked():
    """x float (N, 2, 8) and ids int64 (N, 16): x is reshaped to ids' shape, then a dense layer; a second output
    counts the mask (N, 3) int64 by Cast + ReduceSum; neither integer input carries relevance."""
    nodes = [helper.make_node("Shape", ["ids"], ["ids_shape"]),
             helper.make_node("Reshape", ["x", "ids_shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2"], ["logits"], name="fc2"),
             helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["mask_f"], ["count"], keepdims=0)]
    model = model_of(nodes, [vi("x", ["N", 2, 8]), vi("ids", ["N", 16], TensorProto.INT64),
                             vi("mask", ["N", 3], TensorProto.INT64)],
                     [vi("logits", ["N", 3]), vi("count", [])],
                     [const("w", weights(16, 6)), const("b", np.full(6, 0.1)), const("w2", weights(6, 3, seed=1))])
    return Explainer(model, "epsilon")


def _masked_feeds(n: int = 3) -> dict:
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, 2, 8)).astype(np.float32), "ids": np.zeros((n, 16), np.int64),
            "mask": rng.integers(0, 2, (n, 3))}


def test_integer_inputs_carry_no_relevance_and_are_no_error(masked):
    feeds = _masked_feeds()
    exp = masked.explain(feeds)
    assert set(exp.relevance) == {"x"} and exp.relevance["x"].shape == (3, 2, 8)
    assert np.all(exp.conservation()["relative_error"] < 1e-5)
    w = numpy_helper.to_array(masked.model.graph.initializer[0]).astype(np.float64)  # reference: LRP-eps by hand
    b = np.full(6, 0.1)
    w2 = weights(6, 3, seed=1).astype(np.float64)
    x = feeds["x"].reshape(3, 16).astype(np.float64)
    h = x @ w + b
    a = np.maximum(h, 0)
    y = a @ w2
    t = y.argmax(1)
    R2 = np.zeros_like(y)
    R2[np.arange(3), t] = y[np.arange(3), t]
    s2 = R2 / (y + 1e-6 * np.where(y < 0, -1, 1))
    Ra = a * (s2 @ w2.T)
    s1 = Ra / (h + 1e-6 * np.where(h < 0, -1, 1))
    Rx = x * (s1 @ w.T)
    np.testing.assert_allclose(exp.relevance["x"].reshape(3, 16), Rx, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("data, message", [
    ({"inp": 0}, "inputs do not match the model: missing ['input'], unknown ['inp'] (expected: input)"),
    ({"input": np.zeros((2, 64), np.float32), "extra": 0},
     "inputs do not match the model: missing none, unknown ['extra'] (expected: input)"),
    (np.zeros(64, np.float32), "input 'input' has shape (64,), expected rank 2 ((batch, 64))"),
    (np.zeros((2, 8, 8), np.float32), "input 'input' has shape (2, 8, 8), expected rank 2 ((batch, 64))"),
    (np.zeros((2, 63), np.float32), "input 'input' has shape (2, 63), expected (batch, 64) (axis 1 must be 64)"),
    (np.zeros((2, 64), np.int64), "input 'input' has dtype int64, expected float32"),
    (np.zeros((2, 64), bool), "input 'input' has dtype bool, expected float32"),
    (np.full((2, 64), "a"), "input 'input' has dtype <U1, expected float32"),
    ([[0.0] * 64, [0.0] * 63], "input 'input' cannot be read as an array: setting an array element with a sequence"),
    (np.zeros((0, 64), np.float32), "the batch is empty"),
    (np.full((2, 64), 1e300), "input 'input' has values up to 1e+300, beyond the range of the model's float32"),
])
def test_data_that_does_not_fit_the_model(mlp, data, message):
    with pytest.raises(InputError) as info:
        mlp.explain(data)
    assert message in str(info.value)


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_nan_or_inf_in_the_input_is_refused_with_its_position(mlp, bad, what):
    x = np.zeros((2, 64), np.float32)
    x[1, 5] = x[1, 7] = bad
    with pytest.raises(InputError, match=rf"^input 'input' contains {what} \(2 non-finite value\(s\), the first at "
                                         rf"index \(1, 5\)\): replace them before explaining$"):
        mlp.explain(x)


def test_inputs_of_a_multi_input_model(masked):
    feeds = _masked_feeds()
    with pytest.raises(InputError, match=r"^the model has 3 inputs \(x, ids, mask\): pass a dict name -> array$"):
        masked.explain(feeds["x"])
    with pytest.raises(InputError, match=r"missing \['mask'\], unknown none"):
        masked.explain({"x": feeds["x"], "ids": feeds["ids"]})
    with pytest.raises(InputError, match="^input 'ids' has dtype float32, expected int64$"):
        masked.explain({**feeds, "ids": feeds["ids"].astype(np.float32)})
    with pytest.raises(InputError, match="^input 'mask' has batch size 2, other inputs have 3$"):
        masked.explain({**feeds, "mask": feeds["mask"][:2]})


@pytest.mark.parametrize("target, message", [
    (10, "target 10 is out of range: output 'logits' has 10 classes"),
    ([1, 2, 10], "target 10 is out of range: output 'logits' has 10 classes"),
    (-1, "target -1 is negative"),
    ([1, 2], "got 2 targets for a batch of 3"),
    ([], "got 0 targets for a batch of 3"),
    ([[1], [2], [3]], "target must be one int or a flat list of ints, one per sample; got shape (3, 1)"),
    (1.5, "target must be integers, got float64"),
    (True, "target must be integers, got bool"),
    ("3", "target must be integers, got <U1"),
    (np.uint64(2 ** 63 + 5), "target 9223372036854775813 is out of range"),
])
def test_bad_targets(mlp, target, message):
    x = np.load(MODELS / "digits_samples.npz")["flat"][:3]
    with pytest.raises(InputError) as info:
        mlp.explain(x, target)
    assert str(info.value) == message


def test_cli_reports_data_errors_in_one_line(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((2, 64), np.nan, np.float32))
    line = one_line_cli_error("explain", MLP, "--input", tmp_path / "nan.npy")
    assert line == ("error: input 'input' contains NaN (128 non-finite value(s), the first at index (0, 0)): "
                    "replace them before explaining")
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    assert "target 12 is out of range" in one_line_cli_error("explain", MLP, "-i", tmp_path / "x.npy", "-t", 12)


# ---------------------------------------------------------------------------------------------------------------
# float16 and float64 models
def _lrp_epsilon_mlp(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Reference LRP-epsilon (1e-6) for random_mlp's Gemm(transB) -> Relu chain, in float64 NumPy."""
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    layers = [(inits[n.input[1]], inits[n.input[2]]) for n in model.graph.node if n.op_type == "Gemm"]
    acts = [x.astype(np.float64)]
    for i, (w, b) in enumerate(layers):
        z = acts[-1] @ w.T + b
        acts.append(np.maximum(z, 0) if i < len(layers) - 1 else z)
    y = acts[-1]
    R = np.zeros_like(y)
    rows = np.arange(len(y))
    R[rows, y.argmax(1)] = y[rows, y.argmax(1)]
    for (w, b), a in zip(reversed(layers), reversed(acts[:-1])):
        z = a @ w.T + b
        R = a * ((R / (z + 1e-6 * np.where(z < 0, -1, 1))) @ w)
    return R


def test_float64_model_explains_in_float64_like_the_reference():
    model = random_mlp([6, 8, 4], seed=3, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((4, 6))
    exp = Explainer(model, "epsilon").explain(x)
    assert exp.relevance["input"].dtype == np.float64 and exp.total.dtype == np.float64
    np.testing.assert_allclose(exp.relevance["input"], _lrp_epsilon_mlp(model, x), rtol=1e-10, atol=1e-12)
    assert np.all(exp.conservation()["relative_error"] < 1e-12)


def test_float16_model_explains_in_float32():
    """float16 cannot hold s = R / stab(z) (stabilizer 1e-6 below its normal range, overflow past 65504):
    relevance is computed and reported in float32 while the model's own forward pass stays in float16."""
    model = random_mlp([6, 8, 4], seed=3, dtype=np.float16)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float16)
    explainer = Explainer(model, "epsilon")
    exp = explainer.explain(x)
    assert exp.relevance["input"].dtype == np.float32 and exp.total.dtype == np.float32
    assert exp.output.dtype == np.float32
    assert {o.name: o.type for o in explainer.session.get_outputs()}["logits"] == "tensor(float16)"
    assert np.all(exp.conservation()["relative_error"] < 1e-5)
    np.testing.assert_allclose(exp.relevance["input"], _lrp_epsilon_mlp(model, x.astype(np.float64)),
                               rtol=2e-2, atol=2e-3 * np.abs(exp.relevance["input"]).max())


def test_float16_cnn_with_max_pooling_explains():
    """onnxruntime's CPU provider has no float16 ScatterElements(add): the float32 relevance graph needs none."""
    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    x = np.load(MODELS / "digits_samples.npz")["images"][:4]
    exp16 = Explainer(model, "epsilon_plus").explain(x.astype(np.float16))
    exp32 = Explainer(MODELS / "digits_cnn.onnx", "epsilon_plus").explain(x)
    assert np.all(exp16.conservation()["relative_error"] < 1e-5)
    np.testing.assert_array_equal(exp16.target, exp32.target)
    scale = np.abs(exp32.relevance["input"]).max()
    np.testing.assert_allclose(exp16.relevance["input"], exp32.relevance["input"], atol=0.05 * scale)


def test_float16_input_out_of_range_is_refused():
    model = random_mlp([6, 8, 4], seed=3, dtype=np.float16)
    with pytest.raises(InputError, match="beyond the range of the model's float16 \\(max 6.55e\\+04\\)"):
        Explainer(model).explain(np.full((2, 6), 1e30, np.float32))
