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


def constant_of_shape(dim: int = HUGE) -> onnx.ModelProto:
    """x (N, dim) * ConstantOfShape(Shape(x)[1:]) summed: folding and ONNX's data propagation would materialise
    the dim-long constant (was: 2.4 GB and 'the model is inconsistent: std::bad_alloc')."""
    ones = numpy_helper.from_array(np.array([1.0], np.float32))
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1, name="shape"),
             helper.make_node("ConstantOfShape", ["s"], ["c"], value=ones, name="fill"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="scale"),
             helper.make_node("ReduceSum", ["m", "ax"], ["y"], keepdims=1, name="total")]
    return model_of(nodes, [vi("x", ["N", dim])], [vi("y", ["N", 1])], [const("ax", [1], np.int64)])


def constant_range(dim: int = HUGE) -> onnx.ModelProto:
    """x (N, dim) * Cast(Range(0, dim, 1)) summed: a constant-only Range of dim entries."""
    nodes = [helper.make_node("Range", ["zero", "limit", "one"], ["r"], name="range"),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["x", "rf"], ["m"], name="scale"),
             helper.make_node("ReduceSum", ["m", "ax"], ["y"], keepdims=1, name="total")]
    inits = [const("ax", [1], np.int64), const("zero", 0, np.int64), const("limit", dim, np.int64),
             const("one", 1, np.int64)]
    return model_of(nodes, [vi("x", ["N", dim])], [vi("y", ["N", 1])], inits)


def reshape_to_own_shape(dim: int = HUGE) -> onnx.ModelProto:
    """Reshape(x, Shape(x)) summed: foldable, and the folded model's check would run on a random (2, dim) input."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
             helper.make_node("ReduceSum", ["r", "ax"], ["y"], keepdims=1, name="total")]
    return model_of(nodes, [vi("x", ["N", dim])], [vi("y", ["N", 1])], [const("ax", [1], np.int64)])


def add_chain(n: int, width: int = 4) -> onnx.ModelProto:
    """x (N, width) -> n Adds of a constant -> y."""
    nodes, inits, value = [], [], "x"
    for i in range(n):
        inits.append(const(f"c{i}", np.full(width, 0.01 * (i % 5))))
        nodes.append(helper.make_node("Add", [value, f"c{i}"], [f"a{i}"], name=f"add{i}"))
        value = f"a{i}"
    nodes[-1].output[0] = "y"
    return model_of(nodes, [vi("x", ["N", width])], [vi("y", ["N", width])], inits)


# ---------------------------------------------------------------------------------------------------------------
# fuzzing: random shape-op chains on axes declared small or huge, hostile names on random graphs
GRADIENT_EXACT = {"Slice", "Gather", "Pad", "Transpose", "ReduceMax", "Resize", "MaxPool"}  # pass/wta = the gradient


def random_shape_chain(seed: int, huge: bool) -> tuple:
    """(model, x shape, ops): x (N, d1, .., dk) through 1-3 random shape ops (Slice, Gather, Pad, Transpose,
    ReduceMax, Resize, MaxPool, AveragePool) and a Flatten. With huge, each axis is declared 10^9 (or 10^12) long
    at random: the compile must stay small or refuse; otherwise axes are 2..6 long and the model runs."""
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(2, 5))
    shape = [int(rng.choice([HUGE, 10 ** 12])) if huge and rng.random() < 0.6 else int(rng.integers(2, 7))
             for _ in range(rank - 1)]
    x_shape = list(shape)
    nodes, inits, ops, x = [], [], [], "x"
    for k in range(int(rng.integers(1, 4))):
        options = ["Slice", "Gather", "Pad", "Transpose", "ReduceMax"]
        if len(shape) == 3:
            options += ["Resize", "MaxPool", "AveragePool"]
        op = str(rng.choice(options))
        out, name = f"v{k}", f"op{k}"
        axis = int(rng.integers(1, len(shape) + 1))
        d = shape[axis - 1]
        if op == "Slice":
            step = int(rng.choice([-3, -2, -1, 1, 2, 3]))
            start, end = (int(v) for v in rng.integers(-min(d, 8) - 2, min(d, 8) + 2, 2))
            length = len(range(*slice(start, end, step).indices(d)))
            if length == 0:
                start, end, step, length = 0, 1, 1, 1
            inits += [const(f"{name}_{t}", [v], np.int64) for t, v in
                      (("s", start), ("e", end), ("a", axis), ("t", step))]
            nodes.append(helper.make_node("Slice", [x] + [f"{name}_{t}" for t in "seat"], [out], name=name))
            shape[axis - 1] = length
        elif op == "Gather":
            indices = rng.integers(-min(d, 6), min(d, 6), int(rng.integers(1, 5)))
            inits.append(const(f"{name}_i", indices, np.int64))
            nodes.append(helper.make_node("Gather", [x, f"{name}_i"], [out], axis=axis, name=name))
            shape[axis - 1] = len(indices)
        elif op == "Pad":
            mode = str(rng.choice(["constant", "reflect", "edge", "wrap"]))
            limit = min(d - 1, 3) if mode in ("reflect", "wrap") else 3
            pads = [0] * (2 * (len(shape) + 1))
            low = -min(d - 1, 2) if mode == "constant" else 0
            pads[axis], pads[axis + len(shape) + 1] = (int(v) for v in rng.integers(low, max(limit, 0) + 1, 2))
            if d + pads[axis] + pads[axis + len(shape) + 1] < 1:  # a crop that leaves nothing
                pads = [0] * len(pads)
            inits.append(const(f"{name}_p", pads, np.int64))
            nodes.append(helper.make_node("Pad", [x, f"{name}_p"], [out], mode=mode, name=name))
            shape[axis - 1] = d + pads[axis] + pads[axis + len(shape) + 1]
        elif op == "Transpose":
            perm = [0] + [int(v) + 1 for v in rng.permutation(len(shape))]
            nodes.append(helper.make_node("Transpose", [x], [out], perm=perm, name=name))
            shape = [shape[i - 1] for i in perm[1:]]
        elif op == "ReduceMax":
            nodes.append(helper.make_node("ReduceMax", [x], [out], axes=[axis], keepdims=1, name=name))
            shape[axis - 1] = 1
        elif op == "Resize":
            scales = [1.0, 1.0] + [float(v) for v in rng.integers(1, 3, 2)]
            inits.append(const(f"{name}_sc", scales))
            nodes.append(helper.make_node("Resize", [x, "", f"{name}_sc"], [out], mode="nearest", name=name))
            shape = shape[:1] + [int(a * b) for a, b in zip(shape[1:], scales[2:])]
        else:  # MaxPool, AveragePool
            kernel = [int(rng.integers(1, min(dim, 3) + 1)) for dim in shape[1:]]
            nodes.append(helper.make_node(op, [x], [out], kernel_shape=kernel, name=name))
            shape = shape[:1] + [dim - k + 1 for dim, k in zip(shape[1:], kernel)]
        ops.append(op)
        x = out
    if huge:  # a Flatten's size would overflow int64: sum everything per sample instead
        inits.append(const("all_axes", list(range(1, len(shape) + 1)), np.int64))
        nodes.append(helper.make_node("ReduceSum", [x, "all_axes"], ["y"], keepdims=0, name="total"))
        outputs = [vi("y", ["N"])]
    else:
        nodes.append(helper.make_node("Flatten", [x], ["y"], axis=1, name="flatten"))
        outputs = [vi("y", ["N", int(np.prod(shape))])]
    return model_of(nodes, [vi("x", ["N"] + x_shape)], outputs, inits), tuple(x_shape), ops


HOSTILE_NAMES = ("lrp/_/R_sum", "lrp/_/s", "lrp/_/s_2", "lrp/_", "lrp", "a/b", "b/c", "a", "x/../y", "\u540d\u524d",
                 "tab\there", "new\nline", "Traceback (most recent call last):", "lrp/_/Add_node", "lrp/_/x_shape")
RESERVED_NAMES = ("lrp/total", "lrp/sum/x", "lrp_target", "lrp/relevance/x")


def renamed(model: onnx.ModelProto, rng: np.random.Generator, reserved: bool) -> tuple:
    """(copy of model with its inner values and nodes renamed to hostile names, whether a reserved name was used):
    values get distinct names drawn from HOSTILE_NAMES (a counter appended on reuse), nodes any of them (duplicates
    and empty names included); with reserved, one value takes a name onnxlrp reserves."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    inner = [o for node in graph.node for o in node.output if o not in keep] + [t.name for t in graph.initializer]
    mapping, used = {}, set()
    for name in inner:
        new = str(rng.choice(HOSTILE_NAMES))
        k = 1
        while new in used:
            k += 1
            new = f"{new.rsplit('#', 1)[0]}#{k}"
        used.add(new)
        mapping[name] = new
    took_reserved = bool(reserved and inner)
    if took_reserved:
        mapping[inner[int(rng.integers(len(inner)))]] = str(rng.choice(RESERVED_NAMES))
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
        node.name = str(rng.choice(HOSTILE_NAMES + ("",)))
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    return out, took_reserved


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
    "constant_of_shape": constant_of_shape,
    "constant_range": constant_range,
    "reshape_to_own_shape": reshape_to_own_shape,
}


def peak_resident_mib() -> float:
    """This process's peak resident memory (VmHWM; getrusage's ru_maxrss would count the forking parent's pages)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def main(names: list, limit_bytes: int) -> None:
    """Compile each named bomb under RLIMIT_AS = limit_bytes; one JSON line each: outcome, message, file size,
    seconds, and the process's peak resident memory so far (MiB, VmHWM)."""
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
        peak = peak_resident_mib()
        print(json.dumps({"name": name, "outcome": outcome, "message": message, "bytes": size,
                          "seconds": time.perf_counter() - start, "peak_mib": peak}), flush=True)


if __name__ == "__main__":
    main(sys.argv[2:], int(sys.argv[1]))
