"""No NaN or Inf, and conservation, for every built-in composite on the shipped models and on variants of them:
all-zero input, tiny (1e-30) and huge (1e30, 1e35) scales where the forward pass is finite, weights with exact
zeros, and biases that kill every ReLU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxlrp.composites import builtin_names
from onnxlrp.runtime import Explainer
from test_fuzz import conservation_gap

MODELS = Path(__file__).resolve().parent.parent / "models"
COMPOSITES = [name for name in builtin_names() if name != "base"]
SCALES = (1e-30, 1e30, 1e35)  # 1e35 made s = R / stab(z) overflow to inf, and inf * 0 gave NaN, before seed scaling


def _set(model: onnx.ModelProto, name: str, fn) -> None:
    """Replace an initializer's value by fn(value)."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(tensor)).astype(np.float32), name))
            return
    raise KeyError(name)


def with_zero_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Half of every weight's entries zero, the first unit / filter of every layer all zero, the last hidden
    layer's weight entirely zero (its units then carry their bias only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(0)
    linear = [n for n in out.graph.node if n.op_type in ("Gemm", "Conv")]

    def zeroed(w: np.ndarray) -> np.ndarray:
        w = np.where(rng.random(w.shape) < 0.5, 0.0, w)
        w[0] = 0.0
        return w

    for node in linear:
        _set(out, node.input[1], zeroed)
    _set(out, linear[-2].input[1], np.zeros_like)
    return out


def with_dead_relus(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every bias that feeds a ReLU (through BatchNormalization or a residual Add) set to -1000: on inputs in [0, 1]
    every ReLU outputs 0."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    producer = {o: n for n in out.graph.node for o in n.output}

    def kill(value: str) -> None:
        node = producer[value]
        if node.op_type in ("Gemm", "Conv", "BatchNormalization"):
            _set(out, node.input[2], lambda b: np.full_like(b, -1000.0))
        elif node.op_type == "Add":
            for name in node.input:
                if name in producer and producer[name].op_type != "Relu":
                    kill(name)

    for node in out.graph.node:
        if node.op_type == "Relu":
            kill(node.input[0])
    return out


def relu_outputs(model: onnx.ModelProto, x: np.ndarray) -> list:
    """Every ReLU's output on x (run with onnxruntime)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [n.output[0] for n in probe.graph.node if n.op_type == "Relu"]
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    return ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, {"input": x})


def cases() -> list:
    """(model id, model, input batch) for both shipped models and their variants."""
    samples = np.load(MODELS / "digits_samples.npz")
    found = []
    for stem, key in (("digits_mlp", "flat"), ("digits_cnn", "images")):
        model = onnx.load(str(MODELS / f"{stem}.onnx"))
        x = samples[key][:2]
        rows = [x, np.zeros_like(x[:1])] + [scale * x[:1] for scale in SCALES]
        batch = np.concatenate(rows).astype(np.float32)
        found += [(f"{stem}", model, batch), (f"{stem}-zero-weights", with_zero_weights(model), batch),
                  (f"{stem}-dead-relus", with_dead_relus(model), batch)]
    return found


CASES = cases()


def finite_rows(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Indices of the rows whose forward output is finite."""
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return np.flatnonzero(np.all(np.isfinite(y.reshape(len(x), -1)), axis=1))


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_output_is_finite_and_conserves(case, composite):
    name, model, x = case
    rows = finite_rows(model, x)
    assert set(rows) >= {0, 1, 2, 3, 4}, "the digits, zero, 1e-30 and 1e30 rows have a finite forward pass"
    exp = Explainer(model, composite, node_relevance="all", providers=["CPUExecutionProvider"]).explain(x[rows])
    for value in [exp.output, exp.total, exp.stabilizer, *exp.relevance.values(), *exp.bias.values(),
                  *exp.nodes.values()]:
        assert np.all(np.isfinite(value))
    assert np.all(conservation_gap(exp) <= 1.0), conservation_gap(exp)
    np.testing.assert_array_equal(exp.total, exp.output[np.arange(len(rows)), exp.target])  # the seed is the logit


@pytest.mark.parametrize("stem", ["digits_mlp", "digits_cnn"])
def test_dead_relus_send_every_relevance_to_the_biases(stem):
    name, model, x = next(c for c in CASES if c[0] == f"{stem}-dead-relus")
    assert all(np.all(r == 0) for r in relu_outputs(model, x[:3]))  # the variant does kill every ReLU
    exp = Explainer(model, "epsilon", providers=["CPUExecutionProvider"]).explain(x[:3])
    assert np.all(exp.relevance["input"] == 0)
    last = [n.name for n in model.graph.node if n.op_type == "Gemm"][-1]
    fc_bias = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}[model.graph.node[-1].input[2]]
    np.testing.assert_allclose(exp.total, fc_bias[exp.target], rtol=1e-6)  # the logit is the last layer's bias
    np.testing.assert_allclose(exp.bias[last].sum(axis=1) + exp.stabilizer, exp.total, rtol=1e-5)


@pytest.mark.parametrize("composite", ["epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus"])
def test_a_bias_far_larger_than_the_weighted_input_keeps_conservation(composite):
    """A unit whose bias (1e6) dwarfs W x: a modified denominator such as W- x must not be computed as z - b - W+ x,
    where z - b cancels in float32 and loses W x entirely (the relevance then misses up to half the total)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((3, 4, 3, 3)) / 6).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([0.1, 1e6, -0.2], np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((3, 2)) / 2).astype(np.float32), "W2")]
    nodes = [helper.make_node("Relu", ["x"], ["xr"]),
             helper.make_node("Conv", ["xr", "W", "b"], ["z"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z"], ["a"]), helper.make_node("GlobalAveragePool", ["a"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "big_bias", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                 ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    exp = Explainer(model, composite, node_relevance="all", providers=["CPUExecutionProvider"]).explain(x, 0)
    assert np.all(conservation_gap(exp) <= 1.0), conservation_gap(exp)
