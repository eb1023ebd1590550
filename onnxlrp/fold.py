"""The folding stage, between loading and canonicalisation: every value that depends only on initializers and on
the static part of the input shapes is computed once, at compile time, by onnxscript's constant folder.

After it, what is constant is an initializer: an `Identity` of a weight (the legacy exporter's deduplicated zero
biases), shape arithmetic (Pad and Slice sizes from `Shape`), weights computed from weights (weight
standardisation), gathered bias tables, scales computed from shapes. Dynamic axes (batch, sequence) stay dynamic:
a `Shape` is folded only where the dimensions it reads are static. The folded model is run next to the original on
a random input before anything else happens; a difference is an error, never a silently different model.

Why onnxscript's folder (onnx-ir) rather than onnxruntime's offline basic optimisation: it folds in memory on the
model itself (no file round trip, no 2 GB protobuf limit, no opset imports of onnxruntime's private domains added),
it runs constant folding only (onnxruntime's basic level also fuses Conv+Mul, Conv+Add, Conv+BatchNormalization and
removes nodes, which canonicalisation does itself, numerically checked, and which hides the model's structure from
the error messages), it keeps node and value names, tracks symbolic dimensions so that a dynamic batch stays
dynamic, and lets us choose per node what to fold (standard-domain ops only). Two gaps of its folder are closed here,
between its rounds: nodes with several outputs (a Split of a packed weight, a weight standardisation written as a
training-mode BatchNormalization) are evaluated by onnx's reference evaluator, the one the folder itself uses for
single-output nodes, and a Gather or Slice of a `Shape` that reads only static dimensions becomes a constant (the
folder's own rule takes 1-D indices only; the legacy exporter writes scalar ones). Measured on this project's legacy
exports: onnxruntime's basic level folds the Identity biases and the weight standardisation, but leaves Pad sizes
computed from a static dimension read through `Shape -> Gather` (its folder needs the whole shape static); onnxscript's
leaves the training-mode BatchNormalization and the same Gathers; with the two gaps closed, all of them fold.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Optional

import numpy as np
import onnx
from onnx import helper

from .errors import ModelLoadError, OnnxLrpError

# a folded value may be this large (elements) when it grows the model (weights computed from weights do not grow it)
OUTPUT_SIZE_LIMIT = 1 << 24
# the check run (both models on one random input) may hold tensors up to this size; beyond, the model is not folded
CHECK_MAX_BYTES = 256 * 2 ** 20
# ops whose output size follows their inputs' values (a shape, a count), not their inputs' sizes
SIZE_FROM_VALUES = ("ConstantOfShape", "Range", "Expand", "Tile", "Resize", "Upsample", "Pad", "OneHot")
# folding rounds: a folded constant can make a shape static, whose Shape then folds in the next round
MAX_ROUNDS = 8
# the folded model must give the original's outputs to this relative tolerance (of each output's largest value)
CHECK_RTOL = 1e-4
SHAPE_ONLY_INPUTS = ("Shape", "Size")
CONSTANT_OPS = ("Constant",)
CONTROL_FLOW = ("If", "Loop", "Scan")


class FoldingError(OnnxLrpError):
    """The folded model does not compute what the original computes (a bug of the folder: please report it)."""


def fold_constants(model: onnx.ModelProto, *, check: bool = True,
                   check_max_bytes: int = CHECK_MAX_BYTES) -> onnx.ModelProto:
    """Compute every value that depends only on initializers and static shapes; returns the model itself when
    nothing folds, else a folded copy that was checked against the original on a random input.

    Bounded by what the model declares, not by what it holds: a node whose folded output would be larger than
    OUTPUT_SIZE_LIMIT and than its largest input (a ConstantOfShape of a dimension declared 10^9 long) is left to
    run time, before it is computed; a model whose check run would hold a tensor beyond check_max_bytes (a random
    input of a declared 10^9-long axis) is not folded at all."""
    if not _has_foldable_nodes(model):
        return model
    if check and _check_run_bytes(model) > check_max_bytes:
        return model
    try:
        folded = _fold(model)
    except Exception:  # the folder gave up on this graph: go on unfolded; a node that needs a constant says why
        return model
    if folded is None:
        return model
    if check:
        check_same_outputs(model, folded)
    return folded


def _has_foldable_nodes(model: onnx.ModelProto) -> bool:
    """True when some node could fold: all its inputs are constants, or it reads a shape (Shape, Size)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type in CONSTANT_OPS for o in n.output}
    for node in model.graph.node:
        if node.op_type in CONSTANT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in SHAPE_ONLY_INPUTS or all(not i or i in constants for i in node.input):
            return True
    return False


def _fold(model: onnx.ModelProto) -> Optional[onnx.ModelProto]:
    """The folded model, None when the folder changed nothing."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import fold_constants_ir

    graph_model = ir.serde.deserialize_model(model)
    opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 1)
    changed = False
    with _quiet_folder():
        for _ in range(MAX_ROUNDS):
            result = fold_constants_ir(graph_model, onnx_shape_inference=True, output_size_limit=OUTPUT_SIZE_LIMIT,
                                       should_fold=_should_fold)
            static = _fold_static_dims(graph_model) | _fold_multi_output_nodes(graph_model, opset)
            changed = changed or result.modified or static
            if not (result.modified or static):
                break
        common_passes.RemoveUnusedNodesPass()(graph_model)
    if not changed:
        return None
    folded = ir.serde.serialize_model(graph_model)
    folded.ir_version = model.ir_version
    return folded


def _should_fold(node) -> Optional[bool]:
    """Fold every standard-domain op whose inputs are all constant, unless its output would be larger than
    OUTPUT_SIZE_LIMIT and than its largest input (decided before it is computed); no other domain."""
    if node.domain not in ("", "ai.onnx"):
        return False
    largest_input = max((v.const_value.size for v in node.inputs if v is not None and v.const_value is not None),
                        default=0)
    size = _output_size(node)
    return size is None or size <= max(OUTPUT_SIZE_LIMIT, largest_input)


def _output_size(node) -> Optional[int]:
    """Elements of a node's largest output: from its inferred shape where static, else for the ops whose size
    follows their inputs' values (ConstantOfShape, Range, Expand, Tile) from those values; None if unknown."""
    sizes = []
    for out in node.outputs:
        if out.shape is not None and all(isinstance(d, int) for d in out.shape):
            sizes.append(int(np.prod([max(d, 0) for d in out.shape], dtype=np.float64)))
    if sizes:
        return max(sizes)
    values = [None if v is None or v.const_value is None else np.asarray(v.const_value.numpy()) for v in node.inputs]
    try:
        if node.op_type == "ConstantOfShape" and values and values[0] is not None:
            return int(np.prod(values[0].astype(np.float64)))
        if node.op_type == "Range" and len(values) == 3 and all(v is not None for v in values):
            start, limit, delta = (float(v.reshape(-1)[0]) for v in values)
            return int(max(np.ceil((limit - start) / delta), 0)) if delta else None
        if node.op_type in ("Expand", "Tile") and len(values) == 2 and all(v is not None for v in values):
            if node.op_type == "Tile":
                return int(values[0].size * np.prod(values[1].astype(np.float64)))
            shape = np.broadcast_shapes(values[0].shape, tuple(int(d) for d in values[1].reshape(-1)))
            return int(np.prod(shape, dtype=np.float64))
    except (ValueError, OverflowError, TypeError):
        return OUTPUT_SIZE_LIMIT + 1  # a shape that does not even broadcast: leave it to run time
    return None if node.op_type not in SIZE_FROM_VALUES else OUTPUT_SIZE_LIMIT + 1


def _check_run_bytes(model: onnx.ModelProto) -> int:
    """The largest tensor (bytes) the check run would hold, from the inferred shapes (dynamic dims at the sizes
    probe_inputs gives them): the random input of an axis declared 10^9 long is never allocated."""
    from .graph import infer_shapes
    inferred = infer_shapes(model)
    largest = 0
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        tensor = vi.type.tensor_type
        count = 1
        for axis, d in enumerate(tensor.shape.dim):
            count *= d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (2 if axis == 0 else 8)
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = 8
        largest = max(largest, count * itemsize)
    return largest


@contextlib.contextmanager
def _quiet_folder():
    """onnxscript logs a warning for each multi-output node it leaves alone: not the user's business."""
    logger = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fold_multi_output_nodes(graph_model, opset: int) -> bool:
    """Evaluate standard-domain nodes with several outputs whose inputs are all constant (a Split of a packed
    weight, a training-mode BatchNormalization that standardises a weight) with onnx's reference evaluator, the
    one onnxscript's folder uses for single-output nodes; True if one was folded."""
    import onnx_ir as ir
    from onnx.reference import ReferenceEvaluator
    graph = graph_model.graph
    changed = False
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or len(node.outputs) < 2 or node.op_type in CONTROL_FLOW:
            continue
        inputs = [v for v in node.inputs if v is not None]
        if not inputs or any(v.const_value is None for v in inputs):
            continue
        proto = ir.serde.serialize_node(node)
        names = [f"in{k}" if v is not None else "" for k, v in enumerate(node.inputs)]
        outs = [f"out{k}" for k in range(len(node.outputs))]
        del proto.input[:]
        proto.input.extend(names)
        del proto.output[:]
        proto.output.extend(outs)
        single = helper.make_model(helper.make_graph([proto], "fold", [], [helper.make_empty_tensor_value_info(o)
                                                                          for o in outs]),
                                   opset_imports=[helper.make_opsetid("", opset)])
        feeds = {name: v.const_value.numpy() for name, v in zip(names, node.inputs) if v is not None}
        try:
            values = ReferenceEvaluator(single).run(None, feeds)
        except Exception:
            continue  # left as it is; the node that needs its value says so
        for out, array in zip(node.outputs, values):
            if not out.uses() and not out.is_graph_output():
                continue
            value = ir.Value(name=f"{out.name}_folded", type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                             shape=ir.Shape(list(array.shape)),
                             const_value=ir.tensor(np.asarray(array), name=f"{out.name}_folded"))
            graph.register_initializer(value)
            ir.convenience.replace_all_uses_with(out, value, replace_graph_outputs=False)
        if all(not o.uses() and not o.is_graph_output() for o in node.outputs):
            graph.remove(node, safe=True)
        changed = True
    return changed


def _fold_static_dims(graph_model) -> bool:
    """Replace Gather / Slice of a Shape that read static dimensions only by a constant; True if one changed."""
    import onnx_ir as ir
    graph = graph_model.graph
    changed = False
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gather", "Slice") or not node.inputs:
            continue
        dims = _shape_dims(node.inputs[0])
        if dims is None:
            continue
        picked = _pick(node, dims)
        if picked is None or any(not isinstance(d, int) for d in np.asarray(picked, dtype=object).reshape(-1)):
            continue
        out = node.outputs[0]
        value = ir.Value(name=f"{out.name}_static", type=ir.TensorType(ir.DataType.INT64),
                         shape=ir.Shape(list(np.shape(picked))),
                         const_value=ir.tensor(np.asarray(picked, dtype=np.int64), name=f"{out.name}_static"))
        graph.register_initializer(value)
        ir.convenience.replace_all_uses_with(out, value, replace_graph_outputs=False)
        if not out.uses() and not out.is_graph_output():
            graph.remove(node, safe=True)
        changed = True
    return changed


def _shape_dims(value) -> Optional[list]:
    """The dims a Shape node's output holds (int where static, anything else where not), None if not a Shape."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Shape" or producer.domain not in ("", "ai.onnx"):
        return None
    source = producer.inputs[0]
    if source is None or source.shape is None:
        return None
    start = producer.attributes.get_int("start", 0)
    end = producer.attributes.get_int("end", None)
    return list(source.shape.dims)[start:end]


def _pick(node, dims: list):
    """The entries of dims a Gather (axis 0, constant indices) or a Slice (constant bounds on axis 0) selects,
    as a (nested) list; None if the node cannot be resolved at compile time."""
    def constant(position: int):
        value = node.inputs[position] if position < len(node.inputs) else None
        if value is None:
            return None
        tensor = value.const_value
        return None if tensor is None else np.asarray(tensor.numpy())

    if node.op_type == "Gather":
        indices = constant(1)
        if indices is None or node.attributes.get_int("axis", 0) != 0:
            return None
        table = np.empty(len(dims), dtype=object)
        table[:] = dims
        picked = table[indices.astype(np.int64)]
        return np.asarray(picked, dtype=object).tolist() if indices.size else None
    starts, ends = constant(1), constant(2)
    axes = constant(3) if len(node.inputs) > 3 and node.inputs[3] is not None else np.array([0])
    steps = constant(4) if len(node.inputs) > 4 and node.inputs[4] is not None else np.array([1])
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or int(axes.reshape(-1)[0]) not in (0, -1):
        return None
    bound = lambda v: int(np.clip(v.reshape(-1)[0], -(2 ** 62), 2 ** 62))  # noqa: E731 (INT64_MAX ends)
    return dims[slice(bound(starts), bound(ends), bound(steps))]


# ---------------------------------------------------------------------------------------------------------------
# the check: the folded model computes what the original computes
def probe_inputs(model: onnx.ModelProto, seed: int = 0) -> dict:
    """A random feed for a model's inputs: normal floats, zero integers (valid indices), false booleans; unknown
    dims are 2 on the first axis and 8 elsewhere (the same symbolic name gets the same size)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    named: dict = {}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in initializers or not vi.type.HasField("tensor_type"):
            continue
        dims = []
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                size = 2 if axis == 0 else 8
                dims.append(named.setdefault(d.dim_param, size) if d.dim_param else size)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(dims, dtype=dtype)
    return feeds


def check_same_outputs(original: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """Run both models in onnxruntime on one random input; raise FoldingError naming the first output that
    differs (ModelLoadError when onnxruntime cannot run the original on that input)."""
    feeds = probe_inputs(original)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
    try:
        expected = _run(original, feeds)
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot run the model itself on a random input ({shapes}), needed to "
                             f"check its constant folding: {_one_line(exc)}") from None
    try:
        got = _run(folded, feeds)
    except Exception as exc:
        raise FoldingError(f"the model with its constants folded does not run in onnxruntime (please report "
                           f"this): {_one_line(exc)}") from None
    for vi, want, have in zip(original.graph.output, expected, got):
        want, have = np.asarray(want), np.asarray(have)
        if want.shape != have.shape:
            raise FoldingError(f"folding constants changed the shape of output {vi.name!r} from {want.shape} to "
                               f"{have.shape} (please report this)")
        if want.dtype.kind not in "fc":
            same = np.array_equal(want, have)
        else:
            scale = float(np.nanmax(np.abs(want))) if want.size and np.isfinite(want).any() else 0.0
            same = np.allclose(have, want, rtol=CHECK_RTOL, atol=CHECK_RTOL * scale + 1e-30, equal_nan=True)
        if not same:
            raise FoldingError(f"folding constants changed output {vi.name!r} on a random input ({shapes}) "
                               f"(please report this)")


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    """All outputs of a model in a CPU onnxruntime session (through a file with external data beyond 2 GB)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if model.ByteSize() < 2 ** 31 - 2 ** 24:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        return session.run(None, feeds)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(model, path, save_as_external_data=True, location="model.data")
        session = ort.InferenceSession(path, options, providers=providers)
        return session.run(None, feeds)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line of at most limit characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# what could not be folded, for the error messages
READS_DYNAMIC_AXIS = "it reads the dynamic axis"  # why_not_constant's reason that a static input size removes


def computed_from_shapes_only(index, name: str) -> bool:
    """True when a value that is not constant depends on no model input's data: every path back from it ends in a
    constant or in a Shape/Size node (index arithmetic on the input's sizes, as torch's as_strided writes it)."""
    reasons = _run_time_reasons(index, name)
    return reasons["data"] is None and reasons["orphan"] is None


def why_not_constant(index, name: str) -> str:
    """Why a value the compiler needs as a constant is computed at run time, after folding: the model input whose
    data it is computed from, else the node that could not be folded, else the dynamic axis it reads through a Shape
    (the one reason a static input size removes, so it is given only when it is the whole reason)."""
    reasons = _run_time_reasons(index, name)
    return (reasons["data"] or reasons["orphan"] or reasons["unfolded"] or reasons["sizes"]
            or "it is computed at run time")


def _run_time_reasons(index, name: str) -> dict:
    """The first reason of each kind found walking back from a value to constants: 'data' (a model input),
    'orphan' (a value no node produces), 'unfolded' (a node whose inputs are constant or a Shape of unknown rank)
    and 'sizes' (a Shape reading a dynamic axis); None where there is none."""
    reasons: dict = dict.fromkeys(("data", "orphan", "unfolded", "sizes"))

    def note(kind: str, text: str) -> None:
        reasons[kind] = reasons[kind] or text

    seen, stack = set(), [name]
    while stack:
        value = stack.pop()
        if value in seen or not value or value in index.constants:
            continue
        seen.add(value)
        if value in index.graph_inputs:
            note("data", f"it is computed from the model input {value!r}")
            continue
        node = index.producer.get(value)
        if node is None:
            note("orphan", f"{value!r} has no producer")
            continue
        if node.op_type in SHAPE_ONLY_INPUTS:
            source = node.input[0]
            info = index.info(source)
            if info is None or info.shape is None:
                note("unfolded", f"it reads the shape of {source!r} (node {node.name!r}), whose rank is unknown")
                continue
            start, end = _slice_attrs(node, len(info.shape))
            dynamic = [a for a in range(start, end) if info.shape[a] is None]
            if dynamic:
                note("sizes", f"{READS_DYNAMIC_AXIS} {', '.join(map(str, dynamic))} of {source!r} (node {node.name!r})")
            continue
        pending = [i for i in node.input if i and i not in index.constants]
        if not pending:
            where = "" if node.domain in ("", "ai.onnx") else f" of domain {node.domain!r}"
            note("unfolded", f"node {node.name!r} ({node.op_type}{where}) could not be folded")
        stack.extend(reversed(pending))
    return reasons


def _slice_attrs(node: onnx.NodeProto, rank: int) -> tuple:
    """The [start, end) axis range a Shape node reads (all axes for Size)."""
    if node.op_type != "Shape":
        return 0, rank
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start = start + rank if start < 0 else start
    end = end + rank if end < 0 else end
    return max(0, min(start, rank)), max(0, min(end, rank))
