"""Appends nodes and initializers to a graph under unique names (lrp/<node>/...), caching constants.

Emitters use only this. It also hides the opset differences of the few ops whose signature changed
(ReduceSum/Squeeze/Unsqueeze take axes as an input from opset 13, the other reductions from 18).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .batch import Layout
from .errors import CompileBudgetError, CompileError
from .tails import Tails

DEFAULT_MAX_CONSTANT_BYTES = 256 * 2 ** 20


def megabytes(nbytes: float) -> str:
    """A byte count as '12.3 MB' or '23.8 GB' (binary units, as the budget option counts)."""
    if nbytes >= 2 ** 30:
        return f"{nbytes / 2 ** 30:.3g} GB"
    return f"{nbytes / 2 ** 20:.3g} MB"


def shape_text(shape, symbols=None) -> str:
    """A declared shape as '(N, 3, 224, 224)': symbolic dims by name (symbols: per axis a name or None), unknown
    ones as '?'."""
    if shape is None:
        return "(unknown rank)"
    symbols = symbols or (None,) * len(shape)
    return "(" + ", ".join(str(d) if d is not None else (s or "?") for d, s in zip(shape, symbols)) + ")"


class GraphBuilder:
    """Collects new nodes and initializers; every name it creates is unique in the model."""

    def __init__(self, model: onnx.ModelProto, opset: int, dtype: np.dtype,
                 max_constant_bytes: int = DEFAULT_MAX_CONSTANT_BYTES) -> None:
        self.opset = opset
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.max_constant_bytes = int(max_constant_bytes)
        # constants derived from the model's own weights (W+, gamma's W, a layout copy) are as large as the weights
        # the file holds; anything beyond twice the largest of them and the budget is sized by declared dimensions
        largest = max((_tensor_bytes(t) for t in model.graph.initializer), default=0)
        self._constant_limit = max(self.max_constant_bytes, 2 * largest)
        self._counters: dict[str, int] = {}
        self._taken = {v.name for v in model.graph.value_info}
        self._taken |= {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
        self._taken |= {t.name for t in model.graph.initializer}
        for node in model.graph.node:
            self._taken.update(node.output)
            self._taken.add(node.name)
        self._const_cache: dict[tuple, str] = {}
        # the model's own initializers by (type, shape): a constant identical to one of them reuses it (the file
        # does not grow by a weight the model already holds); graph inputs are not reused, a caller may override them
        overridable = {v.name for v in model.graph.input}
        self._model_tensors: dict[tuple, list] = {}
        self._model_digests: dict[tuple, dict] = {}
        self._model_by_name: dict[str, onnx.TensorProto] = {}
        for t in model.graph.initializer:
            if t.name not in overridable:
                self._model_tensors.setdefault((t.data_type, tuple(t.dims)), []).append(t)
                self._model_by_name[t.name] = t
        self.scope = "lrp/_"
        # forward float values stored in another float type than the working dtype (a float16 model explained in
        # float32, a float64 island in a float32 model): every builder op reads them through one cached Cast
        self.foreign: set[str] = set()
        self._as_working: dict[str, str] = {}
        # where the batch lies in the output of the node being emitted (set by the compiler, see batch.py), and a
        # graph input whose axis 0 is the batch (for the run-time batch size of a merged batch axis)
        self.layout = Layout()
        self.batch_input: str | None = None
        self._batch_size: str | None = None
        # per-layer bias rows and stabilizer shares the compiler computes for all layers at once (see tails.py)
        self.tails = Tails()

    def fresh(self, hint: str) -> str:
        """A new unique value name under the current scope: base, base_2, base_3, ... A counter per base remembers
        where the last search ended, so n names from one base cost O(n) in all, not O(n^2)."""
        base = f"{self.scope}/{hint}"
        k = self._counters.get(base, 0)
        while True:
            k += 1
            name = base if k == 1 else f"{base}_{k}"
            if name not in self._taken:
                break
        self._counters[base] = k
        self._taken.add(name)
        return name

    def unused(self, name: str) -> str:
        """name itself when no value of the model or the builder has it yet, else name_2, name_3, ..."""
        candidate, k = name, 1
        while candidate in self._taken:
            k += 1
            candidate = f"{name}_{k}"
        return candidate

    def check_budget(self, count: int, itemsize: int, what: str) -> None:
        """Refuse (CompileBudgetError) a constant of count items of itemsize bytes beyond max_constant_bytes, before
        it is built; `what` says what the constant is for and from which declared shape (the compiler adds the
        node)."""
        nbytes = int(count) * int(itemsize)
        if nbytes > self.max_constant_bytes:
            raise CompileBudgetError(f"{what} needs a constant of {megabytes(nbytes)}, beyond the compile budget of "
                                     f"{megabytes(self.max_constant_bytes)} (raise it with max_constant_bytes= / "
                                     f"--max-constant-mb if the model really is that large)")

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, n_out: int = 1, **attrs):
        """Append one node; returns its output name (or a list of names when n_out > 1)."""
        outputs = [self.fresh(f"{hint or op_type.lower()}") for _ in range(n_out)]
        inputs = [self.working(i) for i in inputs]
        self.nodes.append(_node(op_type, inputs, outputs, self.fresh(f"{op_type}_node"), attrs))
        return outputs[0] if n_out == 1 else outputs

    def op_named(self, op_type: str, inputs: Sequence[str], output: str, **attrs) -> str:
        """Append one node whose output gets an exact, caller-chosen name (graph outputs)."""
        if output in self._taken:
            raise CompileError(f"the model already uses the name {output!r}, which onnxlrp gives one of its outputs: "
                               f"rename that value (or node) in the model")
        self._taken.add(output)
        inputs = [self.working(i) for i in inputs]
        self.nodes.append(_node(op_type, inputs, [output], self.fresh(f"{op_type}_node"), attrs))
        return output

    def working(self, name: str) -> str:
        """The value itself, or for a forward value of another float type its (cached) Cast to the working dtype."""
        if name not in self.foreign:
            return name
        if name not in self._as_working:
            cast = self.fresh("as_working")
            self.nodes.append(helper.make_node("Cast", [name], [cast], name=self.fresh("Cast_node"),
                                               to=helper.np_dtype_to_tensor_dtype(self.dtype)))
            self._as_working[name] = cast
        return self._as_working[name]

    def const(self, value, dtype=None, hint: str = "const") -> str:
        """An initializer holding value (cast to dtype, default the working float dtype); identical ones are shared."""
        array = np.asarray(value, dtype=dtype if dtype is not None else self.dtype)
        if array.nbytes > self._constant_limit:  # the last line of defence: emitters check before they build
            raise CompileBudgetError(f"a constant {hint!r} of shape {array.shape} ({megabytes(array.nbytes)}) is "
                                     f"beyond the compile budget of {megabytes(self.max_constant_bytes)} "
                                     f"(max_constant_bytes= / --max-constant-mb)")
        key = (array.dtype.str, array.shape, hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest())
        if key not in self._const_cache:
            name = self.existing(array) if array.size >= 16 else None
            if name is None:
                name = self.fresh(hint)
                self.initializers.append(numpy_helper.from_array(array, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def model_weight(self, name: str) -> str | None:
        """name, when it is one of the model's own initializers (not an overridable graph input) stored in the
        working dtype: an emitter that knows its weight is exactly that tensor reads it by name, with no copy and
        no search (see existing())."""
        tensor = self._model_by_name.get(name)
        if tensor is None or tensor.data_type != helper.np_dtype_to_tensor_dtype(self.dtype):
            return None
        return name

    def existing(self, array: np.ndarray) -> str | None:
        """The name of a model initializer holding exactly array (same type, shape and values), None if none does."""
        array = np.asarray(array)
        try:
            elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        except (KeyError, ValueError, TypeError):
            return None
        key = (elem, array.shape)
        if key not in self._model_digests:  # each model tensor of this type and shape is read and hashed once
            digests = self._model_digests[key] = {}
            for tensor in self._model_tensors.get(key, []):
                if tensor.data_location != onnx.TensorProto.EXTERNAL:
                    data = numpy_helper.to_array(tensor).astype(array.dtype.newbyteorder("<"), copy=False)
                    digests.setdefault(hashlib.sha1(np.ascontiguousarray(data).tobytes()).digest(), tensor)
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        tensor = self._model_digests[key].get(hashlib.sha1(data).digest())
        return tensor.name if tensor is not None and np.array_equal(numpy_helper.to_array(tensor), array) else None

    def ints(self, values: Iterable[int], hint: str = "ints") -> str:
        """An int64 1-D initializer (shapes, axes, indices)."""
        return self.const(np.asarray(list(values), dtype=np.int64), dtype=np.int64, hint=hint)

    # ---- opset-dependent helpers -------------------------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool, hint: str | None = None) -> str:
        """ReduceSum/ReduceMean/ReduceMax over axes (all if None), axes as attribute or input as the opset wants."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes is None:
            return self.op(op_type, [x], hint, keepdims=int(keepdims))
        if axes_as_input:
            return self.op(op_type, [x, self.ints(axes, "axes")], hint, keepdims=int(keepdims))
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int], hint: str | None = None) -> str:
        """Unsqueeze with axes as attribute (opset < 13) or input."""
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes, "axes")], hint)
        return self.op("Unsqueeze", [x], hint, axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int], hint: str | None = None) -> str:
        """Squeeze with axes as attribute (opset < 13) or input."""
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(axes, "axes")], hint)
        return self.op("Squeeze", [x], hint, axes=list(axes))

    # ---- small compositions every emitter needs -------------------------------------------------------------
    def per_sample_sum(self, x: str, hint: str = "sum", rank: int | None = None) -> str:
        """(N, ...) -> (N,): the sum over every axis but the batch axis (self.layout; axis 0 by default; a merged
        batch axis outer * N * inner is summed over outer and inner too). One ReduceSum when the rank is known."""
        k = self.layout.axis
        if rank is None or (k == 0 and not self.layout.merged):
            if rank is not None and rank >= 2:
                return self.reduce("ReduceSum", x, list(range(1, rank)), keepdims=False, hint=hint)
            if rank == 1:
                return x
            flat = self.op("Reshape", [x, self.ints([0, -1], "shape")], f"{hint}_flat")
            return self.reduce("ReduceSum", flat, [1], keepdims=False, hint=hint)
        axes = [a for a in range(rank) if a != k]
        rows = self.reduce("ReduceSum", x, axes, keepdims=False, hint=hint) if axes else x
        if not self.layout.merged:
            return rows
        grouped = self.op("Reshape", [rows, self._groups([], hint)], f"{hint}_grouped")
        return self.reduce("ReduceSum", grouped, [0, 2], keepdims=False, hint=hint)

    def batch_axes_but(self, rank: int, keep=()) -> list:
        """The axes of a value of this rank other than the batch axis (self.layout) and `keep`."""
        return [a for a in range(rank) if a != self.layout.axis and a not in keep]

    def to_rows(self, x: str, rank: int, hint: str = "rows") -> str:
        """A value whose batch lies on self.layout's axis -> (N, units): the batch axis first, the rest flattened,
        a merged batch axis (outer * N * inner) summed over its outer and inner entries."""
        k = self.layout.axis
        if k != 0:
            x = self.op("Transpose", [x], f"{hint}_T", perm=[k] + [a for a in range(rank) if a != k])
        flat = self.op("Reshape", [x, self.ints([0, -1], "shape")], f"{hint}_flat")
        if not self.layout.merged:
            return flat
        units = self.op("Slice", [self.op("Shape", [flat], f"{hint}_shape"), self.ints([1]), self.ints([2])],
                        f"{hint}_units")
        grouped = self.op("Reshape", [flat, self._groups([units], hint)], f"{hint}_grouped")
        return self.reduce("ReduceSum", grouped, [0, 2], keepdims=False, hint=hint)

    def _groups(self, tail: list, hint: str) -> str:
        """The shape (outer, N, -1, *tail) that splits a merged batch axis into its parts."""
        parts = [self.ints([self.layout.outer]), self.batch_size(), self.ints([-1])] + tail
        return self.op("Concat", parts, f"{hint}_groups", axis=0)

    def batch_size(self) -> str:
        """The run-time batch size N as an int64 (1,) tensor, read from a graph input's axis 0 (cached)."""
        if self._batch_size is None:
            if self.batch_input is None:
                raise ValueError("the batch size is needed but no graph input gives it")
            scope, self.scope = self.scope, "lrp/_"
            self._batch_size = self.op("Slice", [self.op("Shape", [self.batch_input], "input_shape"), self.ints([0]),
                                                 self.ints([1])], "batch_size")
            self.scope = scope
        return self._batch_size

    def zeros_like(self, x: str, hint: str = "zeros") -> str:
        """A zero tensor shaped like x in the working dtype (no arithmetic on x, so NaN/Inf in x cannot leak)."""
        shape = self.op("Shape", [x], f"{hint}_shape")
        tensor = numpy_helper.from_array(np.zeros(1, dtype=self.dtype))
        return self.op("ConstantOfShape", [shape], hint, value=tensor)

    def ones_like(self, x: str, hint: str = "ones") -> str:
        """A tensor of ones shaped like x in the working dtype."""
        shape = self.op("Shape", [x], f"{hint}_shape")
        tensor = numpy_helper.from_array(np.ones(1, dtype=self.dtype))
        return self.op("ConstantOfShape", [shape], hint, value=tensor)

    def stabilize(self, z: str, eps: float, hint: str = "den") -> tuple[str, str]:
        """stab(z) = z + eps * sgn0(z), sgn0(0) = +1; returns (stab(z), eps * sgn0(z))."""
        negative = self.op("Less", [z, self.const(0.0)], "is_neg")
        shift = self.op("Where", [negative, self.const(-eps), self.const(eps)], "eps_shift")
        return self.op("Add", [z, shift], hint), shift

    def normalize(self, R: str, z: str, eps: float) -> tuple[str, str]:
        """s = R / stab(z) and the elementwise share the stabilizer takes, s * eps * sgn0(z).

        With eps = 0 (LRP-0) a unit with z == 0 exactly cannot pass relevance on: s = 0 there and its whole
        relevance is returned as the share taken, so that conservation still balances."""
        if eps == 0.0:  # s = R / inf = 0 where z == 0 (R is finite: the seed is scaled to one)
            is_zero = self.op("Equal", [z, self.const(0.0)], "z_is_zero")
            den = self.op("Where", [is_zero, self.const(np.inf), z], "den")
            dropped = self.op("Where", [is_zero, R, self.const(0.0)], "R_dropped")
            return self.op("Div", [R, den], "s"), dropped
        den, shift = self.stabilize(z, eps)
        s = self.op("Div", [R, den], "s")
        return s, self.op("Mul", [s, shift], "stab")

    def add_all(self, names: Sequence[str], hint: str = "acc") -> str:
        """Sum of one or more tensors of the same shape (Sum for many, the name itself for one)."""
        names = list(names)
        if len(names) == 1:
            return names[0]
        if len(names) == 2:
            return self.op("Add", names, hint)
        return self.op("Sum", names, hint)


def _node(op_type: str, inputs: list, outputs: list, name: str, attrs: dict) -> onnx.NodeProto:
    """A NodeProto as helper.make_node builds it (attributes sorted by name), without its per-call overhead (a
    compile builds about ten nodes per source node)."""
    node = onnx.NodeProto(op_type=op_type, input=inputs, output=outputs, name=name)
    if attrs:
        node.attribute.extend(helper.make_attribute(key, value) for key, value in sorted(attrs.items()))
    return node


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes a tensor's values take (its declared dims times its element size; 1 per element when unknown)."""
    count = 1
    for d in tensor.dims:
        count *= max(int(d), 0)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 1
    return count * itemsize
