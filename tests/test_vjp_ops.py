"""Every VJP of onnxlrp/vjp.py against central finite differences, in float64.

Each case is a small graph x (N, 6) -> the op(s) under test -> Flatten -> Gemm -> logits, run by onnx's reference
evaluator (independent of onnxruntime); the gradient composite's df/dx must equal (f(x + h e_j) - f(x - h e_j)) / 2h
of the same graph's forward pass, and its relevance x * df/dx. Inputs keep 0.05 away from every kink."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import onnxlrp

DOUBLE = TensorProto.DOUBLE
KINKS = (0.0, 1.0, -2.5, 2.5, -3.0, 3.0)


def _node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float64), name)


# (id, opset, nodes reading "x" and writing "h", initializers, size of h per sample)
CASES = [
    ("relu", 17, [_node("Relu", ["x"], ["h"])], [], 6),
    ("leaky_relu", 17, [_node("LeakyRelu", ["x"], ["h"], alpha=0.3)], [], 6),
    ("prelu", 17, [_node("PRelu", ["x", "slope"], ["h"])], [_c("slope", np.linspace(0.1, 0.6, 6))], 6),
    ("thresholded_relu", 17, [_node("ThresholdedRelu", ["x"], ["h"], alpha=1.0)], [], 6),
    ("clip", 17, [_node("Clip", ["x", "lo", "hi"], ["h"])], [_c("lo", -2.5), _c("hi", 2.5)], 6),
    ("clip_min_only", 17, [_node("Clip", ["x", "lo"], ["h"])], [_c("lo", 0.0)], 6),
    ("elu", 17, [_node("Elu", ["x"], ["h"], alpha=0.7)], [], 6),
    ("selu", 17, [_node("Selu", ["x"], ["h"])], [], 6),
    ("sigmoid", 17, [_node("Sigmoid", ["x"], ["h"])], [], 6),
    ("hard_sigmoid", 17, [_node("HardSigmoid", ["x"], ["h"], alpha=0.2, beta=0.5)], [], 6),
    ("hard_swish", 17, [_node("HardSwish", ["x"], ["h"])], [], 6),
    ("tanh", 17, [_node("Tanh", ["x"], ["h"])], [], 6),
    ("softplus", 17, [_node("Softplus", ["x"], ["h"])], [], 6),
    ("softsign", 17, [_node("Softsign", ["x"], ["h"])], [], 6),
    ("gelu_tanh", 20, [_node("Gelu", ["x"], ["h"], approximate="tanh")], [], 6),
    ("mish", 18, [_node("Mish", ["x"], ["h"])], [], 6),
    ("abs_neg", 17, [_node("Abs", ["x"], ["a"]), _node("Neg", ["a"], ["h"])], [], 6),
    ("exp_log_sqrt", 17, [_node("Exp", ["x"], ["e"]), _node("Add", ["e", "one"], ["p"]), _node("Log", ["p"], ["l"]),
                          _node("Sqrt", ["p"], ["s"]), _node("Add", ["l", "s"], ["h"])], [_c("one", 1.0)], 6),
    ("reciprocal", 17, [_node("Mul", ["x", "x"], ["sq"]), _node("Add", ["sq", "one"], ["p"]),
                        _node("Reciprocal", ["p"], ["h"])], [_c("one", 1.0)], 6),
    ("pow", 17, [_node("Pow", ["x", "three"], ["h"])], [_c("three", 3.0)], 6),
    ("product_quotient", 17, [_node("Tanh", ["x"], ["t"]), _node("Mul", ["x", "t"], ["m"]),
                              _node("Mul", ["x", "x"], ["sq"]), _node("Add", ["sq", "one"], ["p"]),
                              _node("Div", ["m", "p"], ["h"])], [_c("one", 1.0)], 6),
    ("sigmoid_gate", 17, [_node("Gemm", ["x", "w"], ["z"], transB=1), _node("Sigmoid", ["z"], ["g"]),
                          _node("Mul", ["x", "g"], ["h"])], [_c("w", np.linspace(-1, 1, 36).reshape(6, 6))], 6),
    ("broadcast_sum_sub", 17, [_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1), _node("Tanh", ["x"], ["t"]),
                               _node("Sub", ["t", "m"], ["d"]), _node("Sum", ["d", "x", "m"], ["h"])], [], 6),
    ("reduce_sum_keepdims0", 17, [_node("Tanh", ["x"], ["t"]), _node("Reshape", ["t", "shape"], ["r"]),
                                  _node("ReduceSum", ["r", "ax"], ["h"], keepdims=0)],
     [numpy_helper.from_array(np.array([0, 2, 3], dtype=np.int64), "shape"),
      numpy_helper.from_array(np.array([2], dtype=np.int64), "ax")], 2),
    ("where", 17, [_node("Greater", ["x", "one"], ["c"]), _node("Tanh", ["x"], ["t"]), _node("Sigmoid", ["x"], ["s"]),
                   _node("Where", ["c", "t", "s"], ["h"])], [_c("one", 1.0)], 6),
    ("softmax", 17, [_node("Softmax", ["x"], ["h"], axis=1)], [], 6),
    ("log_softmax", 17, [_node("LogSoftmax", ["x"], ["h"], axis=-1)], [], 6),
    ("matmul_two_activations", 17, [_node("Reshape", ["x", "s23"], ["a"]), _node("Tanh", ["x"], ["t"]),
                                    _node("Reshape", ["t", "s32"], ["c"]), _node("MatMul", ["a", "c"], ["h"])],
     [numpy_helper.from_array(np.array([0, 2, 3], dtype=np.int64), "s23"),
      numpy_helper.from_array(np.array([0, 3, 2], dtype=np.int64), "s32")], 4),
    ("layer_norm", 17, [_node("Reshape", ["x", "shape"], ["r"]),
                        _node("LayerNormalization", ["r", "scale", "bias"], ["h"], axis=-1, epsilon=1e-5)],
     [numpy_helper.from_array(np.array([0, 2, 3], dtype=np.int64), "shape"), _c("scale", [0.5, 1.5, -1.0]),
      _c("bias", [0.1, -0.2, 0.3])], 6),
    ("batchnorm_conv", 17, [_node("Reshape", ["x", "shape"], ["r"]),
                            _node("Conv", ["r", "k", "kb"], ["c"], pads=[1, 1]),
                            _node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["n"]),
                            _node("Tanh", ["n"], ["h"])],
     [numpy_helper.from_array(np.array([0, 2, 3], dtype=np.int64), "shape"),
      _c("k", np.linspace(-1, 1, 12).reshape(2, 2, 3)), _c("kb", [0.1, -0.1]), _c("s", [1.2, 0.8]),
      _c("b", [0.3, -0.2]), _c("mu", [0.05, -0.1]), _c("var", [1.5, 0.7])], 6),
    ("average_pools", 17, [_node("Reshape", ["x", "shape"], ["r"]), _node("Tanh", ["r"], ["t"]),
                           _node("AveragePool", ["t"], ["ap"], kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
                           _node("GlobalAveragePool", ["t"], ["gp"]), _node("Flatten", ["ap"], ["f2"]),
                           _node("Flatten", ["gp"], ["f3"]), _node("Concat", ["f2", "f3"], ["h"], axis=1)],
     [numpy_helper.from_array(np.array([0, 1, 2, 3], dtype=np.int64), "shape")], 12 + 1),
    ("max_pool_overlapping", 17, [_node("Reshape", ["x", "shape"], ["r"]), _node("Tanh", ["r"], ["t"]),
                                  _node("MaxPool", ["t"], ["mp"], kernel_shape=[2, 2], strides=[1, 1]),
                                  _node("Flatten", ["mp"], ["h"])],
     [numpy_helper.from_array(np.array([0, 1, 2, 3], dtype=np.int64), "shape")], 2),
]
# onnx's reference evaluator returns MaxPool Indices that onnxruntime and the ONNX spec do not (overlapping windows):
# the compiled graph of these cases runs in onnxruntime (float64 MaxPool exists there)
ORT_RUNNER = {"max_pool_overlapping"}


def _head(size: int) -> tuple:
    """The classifier after every case: W (size, 3), B (3,)."""
    return np.random.default_rng(size).normal(size=(size, 3)), np.array([0.2, -0.3, 0.1])


def _model(opset: int, nodes: list, inits: list, size: int, elem: int = DOUBLE) -> onnx.ModelProto:
    """The case's nodes, then Flatten -> Gemm (3 classes, with a bias)."""
    w, bias = _head(size)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    head = [_node("Flatten", ["h"], ["hf"]), _node("Gemm", ["hf", "W", "B"], ["y"])]
    inits = [numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype) if t.data_type == DOUBLE else
                                     numpy_helper.to_array(t), t.name) for t in inits]
    inits += [numpy_helper.from_array(w.astype(dtype), "W"), numpy_helper.from_array(bias.astype(dtype), "B")]
    graph = helper.make_graph(nodes + head, "case", [helper.make_tensor_value_info("x", elem, ["N", 6])],
                              [helper.make_tensor_value_info("y", elem, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _inputs(n: int = 3) -> np.ndarray:
    """Values in (-4, 4), every one at least 0.05 from the kinks of the cases."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 4, size=(n, 6))
    for kink in KINKS:
        near = np.abs(x - kink) < 0.05
        x[near] += 0.1
    return x


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vjp_matches_finite_differences(case) -> None:
    name, opset, nodes, inits, size = case
    model = _model(opset, nodes, inits, size)
    onnx.checker.check_model(model, full_check=True)
    forward = ReferenceEvaluator(model)
    _check(model, lambda x: forward.run(None, {"x": x})[0], _ort if name in ORT_RUNNER else ReferenceEvaluator, 1e-6)


def _check(model: onnx.ModelProto, forward, runner, tol: float) -> None:
    """The compiled gradient graph (run by runner(compiled)) against central differences of forward (float64)."""
    x, target = _inputs(), np.array([0, 1, 2])
    compiled = onnxlrp.compile(model, "gradient")
    onnx.checker.check_model(compiled, full_check=True)
    meta = onnxlrp.compiled_metadata(compiled)
    names = [o.name for o in compiled.graph.output]
    dtype = np.float64 if tol < 1e-5 else np.float32
    out = dict(zip(names, runner(compiled).run(None, {"x": x.astype(dtype), "lrp_target": target})))
    h = 1e-6
    numeric = np.zeros_like(x)
    for j in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, j] = h
        numeric[:, j] = (forward(x + step) - forward(x - step))[np.arange(3), target] / (2 * h)
    grad = out[meta["gradient"]["x"]]
    np.testing.assert_allclose(grad, numeric, rtol=tol, atol=0.1 * tol * np.abs(numeric).max())
    np.testing.assert_allclose(out[meta["relevance"]["x"]], x * numeric, rtol=tol, atol=tol)
    logits = forward(x)[np.arange(3), target]
    np.testing.assert_allclose(out["lrp/total"], logits, rtol=tol)
    biases = sum((v.reshape(3, -1).sum(axis=1) for k, v in out.items() if k.startswith("lrp/bias/")), 0.0)
    explained = (x.astype(dtype) * grad).sum(axis=1) + biases + out["lrp/stabilizer"]
    np.testing.assert_allclose(explained, out["lrp/total"], rtol=tol, atol=tol)  # the remainder closes the identity


class Erf(OpRun):
    """Erf in float64 (onnx's reference evaluator computes it in float32)."""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _softmax_flat(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ort(compiled: onnx.ModelProto):
    import onnxruntime as ort
    return ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])


# cases whose forward onnx's reference evaluator computes in float32 (Erf), by another rule (Softmax before opset
# 13 normalises over every axis from `axis` on) or that ONNX defines for float only (Celu): NumPy forward passes
NUMPY_CASES = [
    ("erf", 17, [_node("Erf", ["x"], ["h"])], _erf, "reference"),
    ("gelu_erf", 20, [_node("Gelu", ["x"], ["h"])], lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), "reference"),
    ("softmax_opset11", 11, [_node("Reshape", ["x", "shape"], ["r"]), _node("Softmax", ["r"], ["h"], axis=1)],
     _softmax_flat, "ort"),
    ("celu_float32", 17, [_node("Celu", ["x"], ["h"], alpha=1.5)],
     lambda x: np.maximum(x, 0) + np.minimum(0, 1.5 * (np.exp(x / 1.5) - 1)), "ort"),
]


@pytest.mark.parametrize("case", NUMPY_CASES, ids=[c[0] for c in NUMPY_CASES])
def test_vjp_matches_numpy_finite_differences(case) -> None:
    name, opset, nodes, np_forward, runner = case
    shape = [numpy_helper.from_array(np.array([0, 2, 3], dtype=np.int64), "shape")]
    elem = TensorProto.FLOAT if name.endswith("float32") else DOUBLE
    model = _model(opset, nodes, shape if "Reshape" in {n.op_type for n in nodes} else [], 6, elem)
    w, bias = _head(6)
    run = _ort if runner == "ort" else (lambda c: ReferenceEvaluator(c, new_ops=[Erf]))
    _check(model, lambda x: np_forward(x).reshape(len(x), -1) @ w + bias, run,
           1e-5 if elem == TensorProto.FLOAT else 1e-6)
