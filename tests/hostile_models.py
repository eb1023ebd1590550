"""Small hostile models for the tests of issue 18: declared-shape bombs (a few nodes over axes declared 10^9 long),
odd layouts and names. Run as a script, it compiles the bombs named on its command line under a memory limit and
prints one JSON line per bomb (tests/test_hostile.py runs it in a subprocess)."""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HUGE = 10 ** 9


def vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A tensor value info (a str in shape is a symbolic dim)."""
    return helper.make_tensor_value_info(name, elem, shape)


def const(name: str, array, dtype=np.float32) -> onnx.TensorProto:
    """An initializer."""
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def model_of(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    """A model at IR 10 (what onnxruntime reads)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _head(value: str, width: int, classes: int = 2) -> tuple:
    """A Gemm from a (N, width) value to the output y: (node, weight initializer)."""
    return helper.make_node("Gemm", [value, "w"], ["y"], name="head"), const("w", np.ones((width, classes)))


def gather(indices, dim: int = HUGE, opset: int = 17) -> onnx.ModelProto:
    """Gather of constant indices along axis 1 of x (N, dim), then a dense head."""
    head, w = _head("g", len(indices))
    return model_of([helper.make_node("Gather", ["x", "idx"], ["g"], axis=1, name="pick"), head],
                    [vi("x", ["N", dim])], [vi("y", ["N", 2])], [const("idx", indices, np.int64), w], opset)


def strided_slice(dim: int = HUGE) -> onnx.ModelProto:
    """x[:, 5:21:4] of x (N, dim) (4 positions), then a dense head."""
    head, w = _head("s", 4)
    inits = [const("s0", [5], np.int64), const("s1", [21], np.int64), const("ax", [1], np.int64),
             const("st", [4], np.int64), w]
    return model_of([helper.make_node("Slice", ["x", "s0", "s1", "ax", "st"], ["s"], name="cut"), head],
                    [vi("x", ["N", dim])], [vi("y", ["N", 2])], inits)


def reflect_pad(dim: int = HUGE) -> onnx.ModelProto:
    """Pad (reflect, 2 before and 3 after) along axis 1 of x (N, dim), then a sum to (N, 1)."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect", name="mirror"),
             helper.make_node("ReduceSum", ["p", "ax"], ["y"], keepdims=1, name="total")]
    return model_of(nodes, [vi("x", ["N", dim])], [vi("y", ["N", 1])],
                    [const("pads", [0, 2, 0, 3], np.int64), const("ax", [1], np.int64)])


def reduce_max(dim: int = HUGE) -> onnx.ModelProto:
    """ReduceMax over axis 2 of x (N, 2, dim) (winner takes all over 10^9 positions), keepdims=0."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["y"], axes=[2], keepdims=0, name="peak")]
    return model_of(nodes, [vi("x", ["N", 2, dim])], [vi("y", ["N", 2])], opset=17)


def resize_up(side: int = 20000) -> onnx.ModelProto:
    """Resize x2 (nearest) of x (N, 1, side, side), then a sum to (N, 1)."""
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest", name="upsample"),
             helper.make_node("ReduceSum", ["r", "ax"], ["y"], keepdims=0, name="total")]
    return model_of(nodes, [vi("x", ["N", 1, side, side])], [vi("y", ["N", 1])],
                    [const("scales", [1, 1, 2, 2]), const("ax", [2, 3], np.int64)])


def average_pool(width: int = 50000, side: int = 1) -> onnx.ModelProto:
    """AveragePool with a (1, width) window, stride 1, pads (0, 1) on x (N, 1, side, 2 * width), flattened."""
    out = 2 * width + 2 - width + 1
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[1, width], pads=[0, 1, 0, 1],
                              name="smooth"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    return model_of(nodes, [vi("x", ["N", 1, side, 2 * width])], [vi("y", ["N", side * out])])


def max_pool_opset13(channels: int = 64, kernel: int = 100, side: int = 200) -> onnx.ModelProto:
    """MaxPool (kernel x kernel) at opset 13: winners put back by one-hot kernels of channels * K^2 entries."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[kernel, kernel], name="pool"),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    out = side - kernel + 1
    return model_of(nodes, [vi("x", ["N", channels, side, side])], [vi("y", ["N", channels * out * out])], opset=13)


def add_chain(n: int, width: int = 4) -> onnx.ModelProto:
    """x (N, width) -> n Adds of a constant -> y."""
    nodes, inits, value = [], [], "x"
    for i in range(n):
        inits.append(const(f"c{i}", np.full(width, 0.01 * (i % 5))))
        nodes.append(helper.make_node("Add", [value, f"c{i}"], [f"a{i}"], name=f"add{i}"))
        value = f"a{i}"
    nodes[-1].output[0] = "y"
    return model_of(nodes, [vi("x", ["N", width])], [vi("y", ["N", width])], inits)


BOMBS = {
    "gather_unique": lambda: gather([0, 2, 1]),
    "gather_repeated": lambda: gather([3, 0, 3, 3]),
    "gather_repeated_opset13": lambda: gather([3, 0, 3, 3], opset=13),
    "strided_slice": strided_slice,
    "reflect_pad": reflect_pad,
    "reduce_max": reduce_max,
    "resize_up": resize_up,
    "average_pool": average_pool,
    "max_pool_opset13": max_pool_opset13,
}


def main(names: list, limit_bytes: int) -> None:
    """Compile each named bomb under RLIMIT_AS = limit_bytes; one JSON line each: outcome, message, file size,
    seconds, and the process's peak resident memory so far (MiB)."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    import onnxlrp
    for name in names:
        start = time.perf_counter()
        try:
            compiled = onnxlrp.compile(BOMBS[name]())
            outcome, message, size = "compiled", "", len(compiled.SerializeToString())
        except onnxlrp.OnnxLrpError as exc:
            outcome, message, size = type(exc).__name__, str(exc), 0
        except MemoryError:
            outcome, message, size = "MemoryError", "", 0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"name": name, "outcome": outcome, "message": message, "bytes": size,
                          "seconds": time.perf_counter() - start, "peak_mib": peak}), flush=True)


if __name__ == "__main__":
    main(sys.argv[2:], int(sys.argv[1]))
