"""Small MLPs built directly with onnx.helper (no exporter in the way) for API, CLI and property tests."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


def random_mlp(widths: Sequence[int], seed: int = 0, bias: bool = True, softmax: bool = False,
               ir_version: int = 8, opset: int = 17, dtype=np.float32, activation: str = "Relu") -> onnx.ModelProto:
    """Gemm -> activation -> ... -> Gemm (logits), optionally followed by Softmax; batch dimension dynamic."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, value = [], [], "input"
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = (rng.normal(size=(fan_out, fan_in)) / np.sqrt(fan_in)).astype(dtype)
        inputs = [value, f"W{i}"]
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        if bias:
            inits.append(numpy_helper.from_array((0.1 * rng.normal(size=fan_out)).astype(dtype), f"b{i}"))
            inputs.append(f"b{i}")
        last = i == len(widths) - 2
        out = "logits" if last and not softmax else f"h{i}"
        nodes.append(helper.make_node("Gemm", inputs, [out], name=f"dense{i}", transB=1))
        if not last:
            nodes.append(helper.make_node(activation, [out], [f"a{i}"], name=f"act{i}"))
            value = f"a{i}"
        else:
            value = out
    outputs = [helper.make_tensor_value_info(value, elem, ["N", widths[-1]])]
    if softmax:
        nodes.append(helper.make_node("Softmax", [value], ["probs"], name="softmax", axis=1))
        outputs = [helper.make_tensor_value_info("probs", elem, ["N", widths[-1]])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", elem, ["N", widths[0]])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model)
    return model
