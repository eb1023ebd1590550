"""Loading ONNX models and a read-only index of their graph: producers, consumers, constants, shapes, order."""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from .errors import ModelLoadError

ModelLike = Union[str, os.PathLike, onnx.ModelProto]

PROTOBUF_LIMIT = 2 ** 31 - 1  # bytes: the largest message protobuf parses (external data files do not count)
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _check_external_locations(model: onnx.ModelProto, folder: Path) -> None:
    """Refuse external-data locations that point outside the model's folder (nothing is read)."""
    base = folder.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        try:
            target = (base / location).resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
            raise ModelLoadError(f"external data of tensor {tensor.name!r} has an invalid location {location!r}")
        if os.path.isabs(location):
            raise ModelLoadError(f"external data of tensor {tensor.name!r} has an absolute location {location!r} "
                                 f"(refused: external data must lie in the model's folder)")
        if base != target and base not in target.parents:
            raise ModelLoadError(
                f"external data of tensor {tensor.name!r} points outside the model's folder: {location!r} (refused)")
        if not target.is_file():
            raise ModelLoadError(f"external data file {location!r} of tensor {tensor.name!r} is missing in {base}")


def _all_tensors(model: onnx.ModelProto):
    """Every TensorProto that may point to external data: initializers (sparse too) and tensor attributes of the
    main graph, of every subgraph (If/Loop/Scan bodies) and of local functions, a superset of what onnx loads."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto):
    """The tensors of one graph and its subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    """The tensors in node attributes, recursing into subgraphs."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graph_tensors(graph)


def subgraph_inputs(node: onnx.NodeProto) -> list:
    """Outer-scope values that a node's subgraphs (If/Loop/Scan bodies) read without listing them as inputs."""
    names: list = []
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            defined |= {t.values.name for t in graph.sparse_initializer}
            for inner in graph.node:
                names.extend(n for n in list(inner.input) + subgraph_inputs(inner) if n and n not in defined)
                defined.update(inner.output)
    return list(dict.fromkeys(names))


_GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def all_inputs(node: onnx.NodeProto) -> list:
    """A node's inputs followed by the outer-scope values its subgraphs read (its implicit inputs)."""
    explicit = list(node.input)
    if not any(a.type in _GRAPH_ATTRIBUTES for a in node.attribute):  # the common case: no subgraph to search
        return explicit
    return explicit + [n for n in subgraph_inputs(node) if n not in explicit]


def topological_order(nodes, producer: dict) -> list:
    """Positions of nodes in topological order, the smallest ready position first (the file's order wherever it is
    already topological): Kahn's algorithm with a heap, O(E + V log V). Raises ModelLoadError on a cycle."""
    position = {id(n): i for i, n in enumerate(nodes)}
    successors: list = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        parents = {position[id(producer[name])] for name in all_inputs(node) if name in producer}
        for parent in parents:
            successors[parent].append(i)
        waiting[i] = len(parents)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in successors[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ModelLoadError("the graph has a cycle")
    return order


def load_model(model: ModelLike, *, check: bool = True) -> onnx.ModelProto:
    """Load a model from a path (external data too) or copy a ModelProto; check it; raise ModelLoadError."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        _check_text(proto, "the model")
        external = next((t.name for t in _all_tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL), None)
        if external is not None:  # its location is relative to a folder an in-memory model does not know
            raise ModelLoadError(f"tensor {external!r} of this in-memory model keeps its data in an external file: "
                                 f"pass the model's path instead, or load it with onnx.load(path)")
    else:
        path = Path(model)
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        if not path.is_file():
            raise ModelLoadError(f"model path is not a file: {path}")
        if path.stat().st_size == 0:
            raise ModelLoadError(f"model file is empty: {path}")
        if path.stat().st_size > PROTOBUF_LIMIT:  # nothing is read: protobuf could not parse it anyway
            raise ModelLoadError(f"{path} is {path.stat().st_size / 2 ** 30:.3g} GB, beyond protobuf's 2 GB limit "
                                 f"for one message: an ONNX model that large keeps its weights in external data "
                                 f"files (onnx.save_model(..., save_as_external_data=True)); refused unread")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise ModelLoadError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})")
        if not proto.graph.node and not proto.graph.output:
            raise ModelLoadError(f"{path} is not an ONNX model (no graph in it)")
        _check_text(proto, str(path))
        _check_external_locations(proto, path.parent)
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:
            raise ModelLoadError(f"cannot read the external data of {path}: {_first_line(exc)}")
    if check:
        from .shapes import check_model
        try:
            check_model(proto)
        except Exception as exc:
            raise ModelLoadError(f"the model fails the ONNX checker: {_first_line(exc)}")
    _check_tensor_data(proto)
    return proto


def inconsistency(model: ModelLike) -> str | None:
    """Why strict ONNX shape inference rejects a model (types or shapes that contradict each other), else None."""
    try:
        proto = load_model(model)
    except ModelLoadError as exc:
        return str(exc)
    try:
        from .shapes import data_propagation_is_safe, weightless  # dims and types only, bounded propagation
        shape_inference.infer_shapes(weightless(proto), check_type=True, strict_mode=True,
                                     data_prop=data_propagation_is_safe(proto))
    except Exception as exc:
        return f"the model is inconsistent: {_first_line(exc)}"
    return None


def _invalid_text(message) -> bytes | None:
    """The first string field that is not valid UTF-8 (protobuf hands such strings back as bytes), else None."""
    if isinstance(message, onnx.TensorProto):  # skip the (possibly huge) data fields
        fields = [message.name, message.doc_string] + [v for e in message.external_data for v in (e.key, e.value)]
        return next((v for v in fields if isinstance(v, bytes)), None)
    for descriptor, value in message.ListFields():
        values = value if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else [value]
        if descriptor.type == descriptor.TYPE_STRING:
            bad = next((v for v in values if isinstance(v, bytes)), None)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            bad = next((b for b in map(_invalid_text, values) if b is not None), None)
        else:
            continue
        if bad is not None:
            return bad
    return None


def _check_text(proto: onnx.ModelProto, what: str) -> None:
    """Refuse a model whose names or strings are not valid UTF-8 (a corrupt file)."""
    bad = _invalid_text(proto)
    if bad is not None:
        raise ModelLoadError(f"{what} holds a name that is not valid UTF-8 ({bytes(bad[:40])!r}): the file is corrupt")


def _check_tensor_data(proto: onnx.ModelProto) -> None:
    """Every tensor (initializers, Constant values, subgraphs) must hold exactly as many values as its shape says."""
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type == onnx.TensorProto.STRING:
            continue
        try:
            numpy_helper.to_array(tensor)
        except Exception as exc:
            raise ModelLoadError(f"tensor {tensor.name!r} is malformed (shape {list(tensor.dims)}): "
                                 f"{_first_line(exc, 120)}") from None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line: lines joined, whitespace collapsed, at most limit characters."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or type(exc).__name__


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference (data propagation on); fall back to the model unchanged if it fails.
    The result carries the inferred value infos; large weights are left out of it (see shapes.weightless)."""
    from .shape_values import complete_shapes
    from .shapes import data_propagation_is_safe, weightless
    data_prop = data_propagation_is_safe(model)  # ONNX's data propagation can materialise huge vectors

    def infer(light: onnx.ModelProto) -> onnx.ModelProto:
        return shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=data_prop)

    try:
        light = weightless(model)
        return complete_shapes(light, infer(light), infer)
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
    symbols: tuple | None = None  # the symbolic name (dim_param) of each axis, None where it has none

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
        for node in graph.node:
            for out in node.output:
                if out:
                    index.producer[out] = node
            for inp in all_inputs(node):
                if inp:
                    index.consumers.setdefault(inp, []).append(node)
        order = topological_order(graph.node, index.producer)
        index.order = [graph.node[i] for i in order]
        return index

    def info(self, name: str) -> TensorInfo | None:
        """Type and shape of a value, None if unknown."""
        return self.infos.get(name)

    def batch_axis(self, name: str) -> int | None:
        """The axis of a value that holds the batch, None where none does: the axis carrying the symbolic batch dim
        of the graph inputs (shape inference carries it through transposes and reshapes); without a symbolic batch,
        axis 0 when its size is the inputs' batch size or unknown."""
        inputs = [self.infos.get(n) for n in self.graph_inputs]
        inputs = [i for i in inputs if i is not None and i.shape]
        batch_symbols = {i.symbols[0] for i in inputs if i.symbols and i.symbols[0]}
        info = self.infos.get(name)
        if info is None or info.shape is None or not info.shape:
            return None
        if batch_symbols:
            hits = [a for a, s in enumerate(info.symbols or ()) if s in batch_symbols]
            if hits:
                return hits[0]
            return 0 if info.shape[0] is None else None  # a static axis is never a symbolic batch
        sizes = {i.shape[0] for i in inputs}
        return 0 if info.shape[0] is None or info.shape[0] in sizes else None

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
    shape = symbols = None
    if tt.HasField("shape"):
        # a negative dim_value (paddle2onnx writes -1 for the batch) is a dynamic dim
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tt.shape.dim)
        symbols = tuple(d.dim_param or None for d in tt.shape.dim)
    return TensorInfo(tt.elem_type, shape, symbols)
