"""The compiled file holds nothing its graph does not use (the source model's BatchNorm tensors, a bypassed
Softmax's inputs): no unused initializer, node or value info, and onnxruntime has nothing to clean up."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import onnxlrp
from onnxlrp.demo import shipped_model_dir
from onnxlrp.prune import prune_unused

CNN = shipped_model_dir() / "digits_cnn.onnx"


def _unused(model: onnx.ModelProto) -> tuple:
    """(initializers nobody reads, nodes whose outputs nobody reads and no graph output is)."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return ([t.name for t in model.graph.initializer if t.name not in read],
            [n.name for n in model.graph.node if not any(o in read for o in n.output)])


def test_compiled_cnn_keeps_no_dead_tensors(tmp_path):
    """The digits CNN's four BatchNorm layers are folded: their 24 tensors (scale, bias, mean, var; the Conv
    weights and biases they replaced) used to stay in the file, and onnxruntime warned once for each."""
    source = onnx.load(str(CNN))
    compiled = onnxlrp.compile(str(CNN), "epsilon_plus")
    assert _unused(compiled) == ([], [])
    bn_tensors = {name for n in source.graph.node if n.op_type == "BatchNormalization" for name in n.input[1:]}
    assert len(bn_tensors) == 16 and not bn_tensors & {t.name for t in compiled.graph.initializer}
    produced = {o for n in compiled.graph.node for o in n.output} | {i.name for i in compiled.graph.input}
    assert all(v.name in produced for v in compiled.graph.value_info)
    path = tmp_path / "c.onnx"
    onnx.save(compiled, str(path))
    code = (f"import onnxruntime as ort; o = ort.SessionOptions(); o.log_severity_level = 2; "
            f"ort.InferenceSession({str(path)!r}, o, providers=['CPUExecutionProvider'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # no warnings but onnxruntime's note that lrp_target_mask, an optional input (an initializer holds its default),
    # is not constant: that is how ONNX spells an optional input
    warnings = [line for line in done.stderr.splitlines() if "[W:" in line and "lrp_target_mask" not in line]
    assert "CleanUnusedInitializersAndNodeArgs" not in done.stderr and not warnings, done.stderr
    with np.load(shipped_model_dir() / "digits_samples.npz") as archive:
        images = archive["images"]
    logits = ort.InferenceSession(str(CNN), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
    exp = onnxlrp.Explainer(str(path)).explain(images)
    np.testing.assert_allclose(exp.output, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exp.conservation()["relative_error"], 0, atol=1e-5)


def test_prune_unused_keeps_what_outputs_need_and_subgraph_reads():
    """A dead branch (node and its initializer) goes; an initializer read only inside an If branch stays."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    then_out = helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2])
    branch = helper.make_graph([helper.make_node("Add", ["x", "w_inner"], ["t"])], "then", [], [then_out])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "else", [], [then_out])
    nodes = [helper.make_node("Mul", ["x", "w_dead"], ["dead"], name="dead_mul"),
             helper.make_node("Cast", ["flag"], ["cond"], to=onnx.TensorProto.BOOL),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)]
    inits = [helper.make_tensor(n, onnx.TensorProto.FLOAT, [2], [1.0, 2.0]) for n in ("w_dead", "w_inner")]
    inits.append(helper.make_tensor("flag", onnx.TensorProto.INT64, [], [1]))
    graph = helper.make_graph(nodes, "g", [x], [y], inits,
                              value_info=[helper.make_tensor_value_info("dead", onnx.TensorProto.FLOAT, [2])])
    model = prune_unused(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Cast", "If"]
    assert sorted(t.name for t in model.graph.initializer) == ["flag", "w_inner"]
    assert list(model.graph.value_info) == []
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([1.0, 1.0], np.float32)})[0]
    np.testing.assert_array_equal(out, [2.0, 3.0])
