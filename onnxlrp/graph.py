"""Loading ONNX models and a read-only index of their graph: producers, consumers, constants, shapes, order."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import ModelLoadError

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _check_external_locations(model: onnx.ModelProto, folder: Path) -> None:
    """Refuse external-data locations that point outside the model's folder (nothing is read)."""
    base = folder.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or (base != target and base not in target.parents):
            raise ModelLoadError(
                f"external data of tensor {tensor.name!r} points outside the model's folder: {location!r} (refused)")
        if not target.is_file():
            raise ModelLoadError(f"external data file {location!r} of tensor {tensor.name!r} is missing in {base}")


def _all_tensors(model: onnx.ModelProto):
    """Every TensorProto of the main graph: initializers and Constant node values."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def load_model(model: ModelLike, *, check: bool = True) -> onnx.ModelProto:
    """Load a model from a path (external data too) or copy a ModelProto; check it; raise ModelLoadError."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        path = Path(model)
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        if not path.is_file():
            raise ModelLoadError(f"model path is not a file: {path}")
        if path.stat().st_size == 0:
            raise ModelLoadError(f"model file is empty: {path}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise ModelLoadError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})")
        if not proto.graph.node and not proto.graph.output:
            raise ModelLoadError(f"{path} is not an ONNX model (no graph in it)")
        _check_external_locations(proto, path.parent)
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:
            raise ModelLoadError(f"cannot read the external data of {path}: {_first_line(exc)}")
    if check:
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ModelLoadError(f"the model fails the ONNX checker: {_first_line(exc)}")
    return proto


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference (data propagation on); fall back to the model unchanged if it fails."""
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return model


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset version for a domain ('' is the default ONNX domain)."""
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return entry.version
    return 0


@dataclass(frozen=True)
class TensorInfo:
    """Static facts about one value: element type and shape (None for an unknown dimension)."""

    elem_type: int
    shape: tuple | None  # tuple of int | None, or None when even the rank is unknown

    @property
    def is_float(self) -> bool:
        """True for floating-point element types."""
        return self.elem_type in FLOAT_TYPES


@dataclass
class GraphIndex:
    """A read-only index of a model's main graph."""

    model: onnx.ModelProto
    producer: dict = field(default_factory=dict)      # value name -> node
    consumers: dict = field(default_factory=dict)     # value name -> [node]
    constants: dict = field(default_factory=dict)     # value name -> np.ndarray (initializers, Constant nodes)
    infos: dict = field(default_factory=dict)         # value name -> TensorInfo
    order: list = field(default_factory=list)         # nodes in topological order
    graph_inputs: list = field(default_factory=list)  # names of real inputs (initializers excluded)

    @classmethod
    def build(cls, model: onnx.ModelProto) -> "GraphIndex":
        """Index a model: producers, consumers, constant arrays, inferred types/shapes, topological order."""
        index = cls(model=model)
        graph = model.graph
        init_names = {t.name for t in graph.initializer}
        for tensor in graph.initializer:
            index.constants[tensor.name] = numpy_helper.to_array(tensor)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_node_value(node)
                if value is not None:
                    index.constants[node.output[0]] = value
        index.graph_inputs = [i.name for i in graph.input if i.name not in init_names]
        inferred = infer_shapes(model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            info = _tensor_info(vi)
            if info is not None:
                index.infos[vi.name] = info
        for name, array in index.constants.items():
            index.infos[name] = TensorInfo(onnx.helper.np_dtype_to_tensor_dtype(array.dtype), tuple(array.shape))
        dag = nx.DiGraph()
        for i, node in enumerate(graph.node):
            dag.add_node(i)
            for out in node.output:
                if out:
                    index.producer[out] = node
            for inp in node.input:
                if inp:
                    index.consumers.setdefault(inp, []).append(node)
        position = {id(n): i for i, n in enumerate(graph.node)}
        for i, node in enumerate(graph.node):
            for inp in node.input:
                if inp in index.producer:
                    dag.add_edge(position[id(index.producer[inp])], i)
        try:
            order = list(nx.lexicographical_topological_sort(dag))
        except nx.NetworkXUnfeasible:
            raise ModelLoadError("the graph has a cycle")
        index.order = [graph.node[i] for i in order]
        return index

    def info(self, name: str) -> TensorInfo | None:
        """Type and shape of a value, None if unknown."""
        return self.infos.get(name)

    def is_constant(self, name: str) -> bool:
        """True if the value is an initializer or Constant output."""
        return name in self.constants


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The array a Constant node produces (value, value_float(s), value_int(s)), None if unsupported."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo | None:
    """TensorInfo from a ValueInfoProto, None for non-tensor types."""
    if not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return TensorInfo(tt.elem_type, shape)
