"""Single-node ONNX models for rule tests, their linearisation z = M x + b, and single-rule composites."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

IR_VERSION = 8


def make_model(op_type: str, x_shape, y_rank: int, inits: dict, input_order, opset: int = 17, **attrs):
    """One node reading 'x' and the named initializers (in input_order, '' for omitted) and writing 'y'."""
    node = helper.make_node(op_type, list(input_order), ["y"], name=f"the_{op_type.lower()}", **attrs)
    x_dims = ["N"] + list(x_shape[1:])
    graph = helper.make_graph(
        [node], "single",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None] * y_rank)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def linearise(model: onnx.ModelProto, x_shape) -> tuple:
    """(M (out, in), b (out,)) with f(x) = M x + b, from f(0) and f(e_j) (exact for single linear nodes)."""
    ev = ReferenceEvaluator(model)
    size = int(np.prod(x_shape[1:]))
    basis = np.concatenate([np.zeros((1, size)), np.eye(size)]).astype(np.float32).reshape((size + 1,) + tuple(x_shape[1:]))
    out = ev.run(None, {"x": basis})[0].reshape(size + 1, -1).astype(np.float64)
    bias = out[0]
    return (out[1:] - bias).T, bias


def composite_file(folder: Path, op_type: str, rule: str, **params) -> Path:
    """A TOML composite with one entry assigning rule (with params) to op_type."""
    lines = ["[[match]]", f'op = "{op_type}"', f'rule = "{rule}"']
    for key, value in params.items():
        lines.append(f"{key} = {list(value) if isinstance(value, (list, tuple)) else value!r}")
    path = folder / f"{op_type}_{rule}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
