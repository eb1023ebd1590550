"""Shapes that ONNX shape inference leaves unknown, completed by following the shape arithmetic exporters write.

paddle2onnx and others compute a Reshape's target shape at run time (Shape -> Cast -> Slice -> Cast -> Concat with a
constant); ONNX's data propagation loses it at the Casts and then knows not even the rank of the result, nor of
anything after it. Here such small int tensors are evaluated entry by entry (None for an entry only known at run
time, e.g. the batch size), the Reshape's output shape is derived from them, and inference runs again from there.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
Dims = Optional[list]  # entries: int, or None where only the run time knows it; None: not even the length is known
MAX_ROUNDS = 4
MAX_DEPTH = 12


class ShapeValues:
    """Entry-wise values of small int tensors of one graph, from its constants and its inferred shapes."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict) -> None:
        self.shapes = shapes  # value name -> tuple of int | None (or None when the rank is unknown)
        self.producer = {o: n for n in graph.node for o in n.output if o}
        # small int tensors, converted when first read
        self._tensors = {t.name: t for t in graph.initializer if t.data_type in INT_TYPES and _small(t)}
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type in INT_TYPES and _small(attr.t):
                        self._tensors[node.output[0]] = attr.t
                    elif attr.name in ("value_int", "value_ints"):
                        self._tensors[node.output[0]] = numpy_helper.from_array(
                            np.asarray(helper.get_attribute_value(attr), np.int64))
        self._values: dict = {}

    def constant(self, name: str) -> Optional[np.ndarray]:
        """A small int constant's values, None if `name` is none."""
        if name not in self._values:
            tensor = self._tensors.get(name)
            self._values[name] = None if tensor is None else numpy_helper.to_array(tensor)
        return self._values[name]

    def ints(self, name: str, depth: int = 0) -> Dims:
        """The entries of a 0-D/1-D int tensor (None entries where unknown), None when its length is unknown."""
        const = self.constant(name)
        if const is not None:
            return [int(v) for v in np.asarray(const).reshape(-1)]
        node = self.producer.get(name)
        if node is None or depth > MAX_DEPTH:
            return self._unknown(name)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Shape":
            shape = self.shapes.get(node.input[0])
            return None if shape is None else list(shape)[slice(attrs.get("start", 0), attrs.get("end"))]
        if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
            return self.ints(node.input[0], depth + 1)
        if op == "Concat":
            parts = [self.ints(i, depth + 1) for i in node.input]
            return None if any(p is None for p in parts) else [v for p in parts for v in p]
        if op == "Gather":
            data, index = self.ints(node.input[0], depth + 1), self.ints(node.input[1], depth + 1)
            if data is None or index is None or any(i is None or not -len(data) <= i < len(data) for i in index):
                return self._unknown(name)
            return [data[i] for i in index]
        if op == "Slice":
            return self._slice(node, attrs, depth)
        if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:
            return self._arithmetic(op, node, depth)
        return self._unknown(name)

    def _unknown(self, name: str) -> Dims:
        """Every entry unknown, but the length where the inferred shape gives it."""
        shape = self.shapes.get(name)
        if shape is None or len(shape) > 1 or any(d is None for d in shape) or (shape and shape[0] > 64):
            return None  # longer than any shape vector: a declared 10^9-long index list is not spelled out
        return [None] * (shape[0] if shape else 1)

    def _slice(self, node, attrs: dict, depth: int) -> Dims:
        """Slice of a 1-D tensor along axis 0 with constant bounds (opset >= 10 inputs, or attributes)."""
        data = self.ints(node.input[0], depth + 1)
        if data is None:
            return self._unknown(node.output[0])
        if len(node.input) > 1:
            bounds = [self.ints(i, depth + 1) if i else None for i in list(node.input[1:5]) + [""] * 3][:4]
            starts, ends, axes, steps = bounds
        else:
            starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None
        known = [b for b in (starts, ends, axes, steps) if b is not None]
        if starts is None or ends is None or any(len(b) != 1 or b[0] is None for b in known) or \
                (axes is not None and axes[0] not in (0, -1)):
            return self._unknown(node.output[0])
        step = steps[0] if steps else 1
        return data[slice(starts[0], ends[0], step)]

    def _arithmetic(self, op: str, node, depth: int) -> Dims:
        """Entry-wise integer arithmetic with broadcasting of a single entry."""
        a, b = (self.ints(i, depth + 1) for i in node.input)
        if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
            return self._unknown(node.output[0])
        n = max(len(a), len(b))
        a, b = (v * n if len(v) == 1 else v for v in (a, b))
        functions = {"Add": lambda u, v: u + v, "Sub": lambda u, v: u - v, "Mul": lambda u, v: u * v,
                     "Div": lambda u, v: int(u / v) if v else None}
        return [None if u is None or v is None else functions[op](u, v) for u, v in zip(a, b)]


def _small(tensor: onnx.TensorProto) -> bool:
    """True for a tensor of at most 64 values (a shape or index vector, not a weight)."""
    return int(np.prod(tensor.dims)) <= 64


def reshape_output(values: ShapeValues, node: onnx.NodeProto) -> Optional[tuple]:
    """The output shape of a Reshape from its input's shape and its (partly known) target shape."""
    target = values.ints(node.input[1])
    if target is None:
        return None
    source = values.shapes.get(node.input[0])
    allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
    dims = []
    for axis, d in enumerate(target):
        if d == 0 and not allowzero:
            d = source[axis] if source is not None and axis < len(source) else None
        dims.append(d)
    if -1 in dims:
        rest = [d for d in dims if d != -1]
        if source is not None and all(d is not None for d in list(source) + rest) and int(np.prod(rest)) > 0:
            dims[dims.index(-1)] = int(np.prod(source)) // int(np.prod(rest))
        else:
            dims[dims.index(-1)] = None
    return tuple(None if d is None or d < 0 else d for d in dims)


def _shape_of(vi: onnx.ValueInfoProto) -> Optional[tuple]:
    """A value info's shape (None entries for unknown dims), None if the rank is unknown."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                 for d in vi.type.tensor_type.shape.dim)


# ai.onnx.ml ops whose output is shaped like their input; ONNX shape inference leaves their outputs unshaped, and so
# everything after them (skl2onnx's StandardScaler before an MLP: the MatMuls' ranks unknown). Scaler and Normalizer
# always write float, the others their input's type.
ML_SHAPE_KEEPING = ("Scaler", "Normalizer", "Binarizer", "Imputer")
ML_FLOAT_OUTPUT = onnx.TensorProto.FLOAT


def complete_shapes(light: onnx.ModelProto, inferred: onnx.ModelProto, infer) -> onnx.ModelProto:
    """Reshape outputs whose rank inference left unknown get the shape their target tensor gives, shape-keeping
    ai.onnx.ml ops (ML_SHAPE_KEEPING) their input's shape; `infer` (model -> inferred model) runs again from there,
    a few rounds at most. Returns the last inferred model."""
    for _ in range(MAX_ROUNDS):
        graph = inferred.graph
        shapes = {vi.name: _shape_of(vi) for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
        shapes.update({t.name: tuple(t.dims) for t in graph.initializer})
        values = ShapeValues(graph, shapes)
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(graph.value_info) + list(graph.input)}
        added = []
        for node in graph.node:
            if not node.output or shapes.get(node.output[0]) is not None:
                continue
            if node.op_type == "Reshape" and node.domain in ("", "ai.onnx"):
                shape = reshape_output(values, node)
            elif node.op_type in ML_SHAPE_KEEPING and node.domain == "ai.onnx.ml":
                shape = shapes.get(node.input[0])
            else:
                continue
            elem = ML_FLOAT_OUTPUT if node.op_type in ("Scaler", "Normalizer") else types.get(node.input[0])
            if shape is not None and elem:
                added.append(helper.make_tensor_value_info(node.output[0], elem, list(shape)))
        if not added:
            return inferred
        names = {vi.name for vi in added}
        kept = [vi for vi in light.graph.value_info if vi.name not in names]
        del light.graph.value_info[:]
        light.graph.value_info.extend(kept + added)
        inferred = infer(light)
    return inferred
