"""Light copies of a model for the ONNX tools that do not need its weights (shape inference, the checker), and the
shape annotations of the compiled graph, so that onnxruntime's optimiser sees a graph it can lay out well."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import shape_inference

# float initializers at least this large are passed to shape inference without their data (only dims matter)
STUB_MIN_ELEMENTS = 1024
FLOAT_STUBS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's main graph with large float initializers reduced to their type and dims: all that shape
    inference needs from them (shape tensors are int64 and kept), without copying or serializing the weights."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_STUBS and math.prod(tensor.dims) >= STUB_MIN_ELEMENTS:
            stub = graph.initializer.add()
            stub.name, stub.data_type = tensor.name, tensor.data_type
            stub.dims.extend(tensor.dims)
        else:
            graph.initializer.append(tensor)
    return light


# ONNX's data propagation computes the values of generator ops (ConstantOfShape, Expand, Range, Tile) from shape
# values, ~70 bytes per element whatever their size: a ConstantOfShape of a dimension declared 10^9 long took 70 GB
# inside shape inference. Shape values are short in any real model; beyond this many elements, no data propagation.
DATA_PROPAGATION_MAX = 1 << 22
GENERATOR_OPS = ("ConstantOfShape", "Expand", "Range", "Tile", "OneHot")


def data_propagation_is_safe(model: onnx.ModelProto) -> bool:
    """False when ONNX's data propagation could materialise a huge vector: the graph holds a generator op and some
    declared tensor has more than DATA_PROPAGATION_MAX elements, or an integer initializer is that long or holds a
    value that large (shape inference then runs without data propagation). A value read only as a Slice's starts,
    ends, axes or steps (the exporters' 'to the end' INT64_MAX) materialises nothing: a slice is never larger than
    its input."""
    graph = model.graph
    if not any(n.op_type in GENERATOR_OPS for n in graph.node):
        return True
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if math.prod(dims) > DATA_PROPAGATION_MAX:
            return False
    bounds_only = _slice_bounds_only(graph)
    for tensor in graph.initializer:
        if tensor.data_type in FLOAT_STUBS or tensor.name in bounds_only:
            continue
        if math.prod(tensor.dims) > DATA_PROPAGATION_MAX:
            return False
        try:
            values = onnx.numpy_helper.to_array(tensor)
        except Exception:
            return False
        if values.size and values.dtype.kind in "iu" and np.abs(values.astype(np.float64)).max() > DATA_PROPAGATION_MAX:
            return False
    return True


def _slice_bounds_only(graph: onnx.GraphProto) -> set:
    """Names of the values that every consumer reads as a Slice's starts / ends / axes / steps (inputs 1-4)."""
    uses: dict = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            uses.setdefault(name, []).append(node.op_type == "Slice" and k >= 1)
    return {name for name, bound in uses.items() if all(bound)}


def annotate_shapes(model: onnx.ModelProto) -> None:
    """Add the inferred shape (symbolic batch included) of every value that has none, in place.

    Relevance values are computed from reshapes whose target shape is a runtime value (Shape of a forward tensor),
    which onnxruntime's own inference cannot see through. Without shapes it cannot prove that two tensors of the
    backward pass match, so it leaves its blocked (NCHWc) convolution layout for every product and sum between them
    and cannot fuse the sum of two transposed convolutions into one. ONNX inference with data propagation can; it
    runs on weightless(model) (fast, no large copy). Any failure leaves the model as is."""
    try:
        inferred = shape_inference.infer_shapes(weightless(model), check_type=False, strict_mode=False,
                                                data_prop=data_propagation_is_safe(model))
    except Exception:
        return
    known = {v.name for v in model.graph.value_info} | {v.name for v in model.graph.input}
    known |= {v.name for v in model.graph.output} | {t.name for t in model.graph.initializer}
    model.graph.value_info.extend(v for v in inferred.graph.value_info
                                  if v.name not in known and v.type.tensor_type.HasField("shape"))


def _copy_fields(src, dst, skip: str) -> None:
    """Every set field of message src into dst, but the one named skip (repeated fields extended, not deep-copied
    twice)."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if (field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED):
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _size_problem(tensor: onnx.TensorProto) -> str | None:
    """What the ONNX checker would say of a large dense tensor's data size, None if it is consistent."""
    count = math.prod(tensor.dims)
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    if tensor.HasField("raw_data"):
        if len(tensor.raw_data) != count * itemsize:
            return (f"TensorProto (tensor name: {tensor.name}) raw_data size ({len(tensor.raw_data)} bytes) does not "
                    f"match the declared shape and type ({count * itemsize} bytes required)")
        return None
    field = {onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data"}.get(tensor.data_type,
                                                                                              "int32_data")
    held = len(getattr(tensor, field))
    if held != count:
        return f"TensorProto (tensor name: {tensor.name}) holds {held} values, its shape needs {count}"
    return None


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker.check_model without serializing the large weights (the checker's one slow part: 2 s per call on
    VGG-16): their data sizes are checked here, and the checker sees a copy holding one element of each."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if (tensor.data_type in FLOAT_STUBS and tensor.data_location != onnx.TensorProto.EXTERNAL
                and math.prod(tensor.dims) >= STUB_MIN_ELEMENTS):
            problem = _size_problem(tensor)
            if problem is not None:
                raise onnx.checker.ValidationError(problem)
            stub = light.graph.initializer.add()
            stub.name, stub.data_type = tensor.name, tensor.data_type
            stub.dims.extend([1] * len(tensor.dims))
            stub.raw_data = bytes(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize)
        else:
            light.graph.initializer.append(tensor)
    onnx.checker.check_model(light)
