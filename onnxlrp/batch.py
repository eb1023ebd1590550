"""Where the batch axis lies in every value of the explained path (static analysis, before emitting).

Per-sample numbers (a node's stabilizer share, its bias row) must be summed over everything but the samples. Most
values keep the batch on axis 0, but exported transformers move it: nn.MultiheadAttention works on (T, N, E) and
on (N * heads, T, d), GPT-2's Conv1D on (N * T, H), Swin's windows on (N * windows, ...). A Layout says, for one
value, which axis holds the batch and whether that axis also holds other things, batch-major (N * m rows).

The layouts are followed forward from the graph inputs (batch on axis 0) through each op's effect on the axes;
where an op's effect cannot be followed (a Reshape whose sizes are unknown at compile time) the batch is assumed
to stay where it was when the leading size is carried over, and is unknown otherwise (per-sample sums then assume
axis 0, as before).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from .graph import GraphIndex

SAME_AXES = ("Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
             "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Swish", "Erf", "Abs", "Neg", "Sqrt", "Exp", "Log",
             "Identity", "Dropout", "Cast", "CastLike", "Softmax", "LogSoftmax", "LayerNormalization",
             "RMSNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Conv",
             "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Split",
             "Slice", "Pad", "Resize", "Upsample", "Reciprocal", "Pow", "RotaryEmbedding", "Where", "Expand",
             "Attention", "LpNormalization", "Trilu")
BROADCASTING = ("Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Where")
REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceSumSquare",
              "ReduceProd", "ReduceLogSumExp")


@dataclass(frozen=True)
class Layout:
    """The batch lies on `axis`; that axis holds outer * N * inner entries, the batch in the middle (outer = 1 and
    inner = 1 when the axis is the batch alone). inner None: a batch-major merge of unknown size."""

    axis: int = 0
    outer: int = 1
    inner: Optional[int] = 1

    @property
    def merged(self) -> bool:
        """True when the batch axis holds more than the batch."""
        return self.outer != 1 or self.inner != 1

    def moved(self, axis: int) -> "Layout":
        """The same layout on another axis."""
        return Layout(axis, self.outer, self.inner)


DEFAULT = Layout()


def _shape(index: GraphIndex, name: str) -> Optional[tuple]:
    """Static shape (None entries unknown), None when the rank is unknown."""
    info = index.info(name)
    return info.shape if info is not None else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute value."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _ints(index: GraphIndex, node: onnx.NodeProto, position: int, attr: str) -> Optional[list]:
    """Axes of Squeeze/Unsqueeze/Reduce*: the attribute or the constant input."""
    value = _attr(node, attr)
    if value is None and len(node.input) > position and node.input[position]:
        const = index.constants.get(node.input[position])
        value = None if const is None else const.reshape(-1).tolist()
    return None if value is None else [int(v) for v in value]


def _prod(dims) -> Optional[int]:
    """Product of static dims, None when one is unknown."""
    return None if any(d is None for d in dims) else int(np.prod(dims)) if dims else 1


def _copies_batch(index: GraphIndex, node: onnx.NodeProto, k: int, layouts: dict, depth: int = 0) -> bool:
    """True when entry k of a Reshape's target shape is 0 (copy) or the batch size read off a value whose axis
    holds the batch alone (Gather / Slice of Shape(v), as the legacy exporter writes x.view(x.size(0), ...) and
    x.flatten(2))."""
    target = node.input[1] if node.op_type == "Reshape" and len(node.input) > 1 else ""
    const = index.constants.get(target)
    if const is not None:
        flat = const.reshape(-1)
        return k < flat.size and int(flat[k]) == 0
    producer = index.producer.get(target)
    parts = list(producer.input) if producer is not None and producer.op_type == "Concat" else [target]
    offset = 0
    for part in parts:  # find the Concat input that holds entry k
        shape = _shape(index, part)
        size = shape[0] if shape and len(shape) == 1 else None
        if size is None:
            return False
        if offset + size > k:
            return _is_batch_size(index, part, k - offset, layouts, 0)
        offset += size
    return False


def _is_batch_size(index: GraphIndex, name: str, entry: int, layouts: dict, depth: int) -> bool:
    """True when entry `entry` of an int value is Shape(v)[a] for a value v whose axis a holds the batch alone."""
    node = index.producer.get(name)
    if node is None or depth > 6:
        return False
    if node.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape"):
        return _is_batch_size(index, node.input[0], entry, layouts, depth + 1)
    if node.op_type == "Shape":
        layout = layouts.get(node.input[0])
        start = _attr(node, "start", 0)
        return layout is not None and not layout.merged and start >= 0 and start + entry == layout.axis
    if node.op_type in ("Gather", "Slice"):
        source = index.producer.get(node.input[0])
        if source is None or source.op_type != "Shape" or _attr(source, "start", 0):
            return False
        layout = layouts.get(source.input[0])
        where = index.constants.get(node.input[1])
        if layout is None or layout.merged or where is None or where.size != 1:
            return False
        first = int(where.reshape(-1)[0])
        if node.op_type == "Gather":
            return entry == 0 and first == layout.axis
        steps = index.constants.get(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        return (steps is None or int(steps.reshape(-1)[0]) == 1) and first >= 0 and first + entry == layout.axis
    return False


def _reshape(index: GraphIndex, node: onnx.NodeProto, layout: Layout, batch: Optional[int],
             layouts: Optional[dict] = None) -> Optional[Layout]:
    """The batch's place after a Reshape / Flatten. A reshape keeps the flat order: the batch index stays a digit
    of the flat index with P entries of more significant digits before it and stride S. With static sizes the
    output axis holding that digit is found from P, its outer / inner parts from P and S; where sizes are unknown,
    the leading sizes are assumed carried over position by position (the exporters' x.view(N, T, h, d))."""
    x, y = _shape(index, node.input[0]), _shape(index, node.output[0])
    if x is None or y is None or layout.axis >= len(x):
        return None
    k = layout.axis
    before, after = _prod(x[:k]), _prod(x[k + 1:])
    if before is not None and after is not None and layout.inner is not None:
        P, S = before * layout.outer, after * layout.inner  # elements before / per step of the batch digit
        for j in range(len(y)):
            pre, suf = _prod(y[:j]), _prod(y[j + 1:])
            if pre is None or suf is None or P % pre or S % suf:
                continue
            outer, inner = P // pre, S // suf
            size = y[j]
            if size is not None and (size % (outer * inner) or (batch is not None and size != outer * batch * inner)):
                continue
            return Layout(j, outer, inner)
        if all(d is not None for d in y):
            return None
    if layout.outer != 1:
        return None
    # unknown sizes: the leading axes before the batch must be carried over one by one
    if len(y) <= k or any(a != b for a, b in zip(x[:k], y[:k])):
        return None
    px, py = after, _prod(y[k + 1:])
    if px is not None and py is not None and layout.inner == 1:
        if px == py:
            return layout.moved(k)
        return Layout(k, 1, px // py) if px % py == 0 else None
    if py is not None and px is None:  # unknown sizes behind the batch were folded into it: (N, T, H) -> (-1, H)
        return Layout(k, 1, None)
    if px is not None and py is None and layout.merged:  # a merged axis split again: (N * T, H) -> (N, T, H)
        return Layout(k)
    if not layout.merged and _copies_batch(index, node, k, layouts or {}):
        return layout.moved(k)
    if len(y) < len(x) and _target_entry(index, node, k) == -1:  # x.view(-1, H): what followed the batch joins it
        return Layout(k, layout.outer, None)
    # not proven: the batch stays the leading part of axis k (the axes before it are carried over and a reshape keeps
    # the flat order), possibly merged with what follows it (MobileViT's (N, C, H, W) -> (N * C * h, ...)):
    # per-sample sums then group axis k's entries by sample at run time
    return Layout(k, 1, None)


def _target_entry(index: GraphIndex, node: onnx.NodeProto, k: int) -> Optional[int]:
    """Entry k of a Reshape's target shape when it is known at compile time."""
    if node.op_type != "Reshape":
        return None
    from .emitters import NodeView
    from .emitters.shape import known_ints
    known = known_ints(NodeView(node, index, frozenset()), node.input[1])
    return known[k] if known is not None and k < len(known) else None


def _next(index: GraphIndex, node: onnx.NodeProto, name: str, layout: Layout, batch: Optional[int],
          layouts: Optional[dict] = None, out: Optional[str] = None) -> Optional[Layout]:
    """The layout of node's output `out` (default its first) given the layout of its input `name`."""
    op = node.op_type
    x, y = _shape(index, name), _shape(index, out or node.output[0])
    k = layout.axis
    if op == "Transpose":
        perm = _attr(node, "perm")
        if perm is None:
            return layout.moved(len(x) - 1 - k) if x is not None else None
        return layout.moved(list(perm).index(k))
    if op in ("Reshape", "Flatten"):
        return _reshape(index, node, layout, batch, layouts)
    if op == "Unsqueeze":
        axes, rank = _ints(index, node, 1, "axes"), len(y) if y is not None else None
        if axes is None or rank is None:
            return None
        axes = sorted(a % rank for a in axes)
        kept = [i for i in range(rank) if i not in axes]
        return layout.moved(kept[k]) if k < len(kept) else None
    if op == "Squeeze":
        axes = _ints(index, node, 1, "axes")
        if axes is None or x is None:
            return None
        axes = [a % len(x) for a in axes]
        return None if k in axes else layout.moved(k - sum(1 for a in axes if a < k))
    if op == "Gather" and name == node.input[1]:  # an embedding lookup: the ids' axes replace the table's axis
        table = _shape(index, node.input[0])
        return layout.moved(_attr(node, "axis", 0) % len(table) + k) if table is not None else None
    if op == "Gather":
        axis = _attr(node, "axis", 0) % len(x) if x is not None else None
        idx = _shape(index, node.input[1])
        if axis is None or idx is None or axis == k:
            return None
        return layout.moved(k if k < axis else k + len(idx) - 1)
    if op in REDUCTIONS:
        axes = _ints(index, node, 1, "axes")
        if x is None:
            return None
        if axes is None:
            return None if not _attr(node, "keepdims", 1) else layout
        axes = [a % len(x) for a in axes]
        if k in axes:
            return None
        return layout if _attr(node, "keepdims", 1) else layout.moved(k - sum(1 for a in axes if a < k))
    if op in ("MatMul", "Gemm"):
        if x is None or y is None:
            return None
        first = name == node.input[0]
        if op == "Gemm":  # the rows of A become the output's rows, the columns of B its columns
            if first:
                rows = 1 if _attr(node, "transA", 0) else 0
                return layout.moved(0) if k == rows else None
            cols = 0 if _attr(node, "transB", 0) else 1
            return layout.moved(1) if k == cols else None
        if first and k <= len(x) - 2 or (not first and k < len(x) - 2):
            return layout.moved(k + len(y) - len(x))
        return layout.moved(len(y) - 1) if not first and k == len(x) - 1 else None
    if op in BROADCASTING or op in SAME_AXES:
        if x is None or y is None:
            return layout if op in SAME_AXES else None
        return layout.moved(k + len(y) - len(x))
    if x is not None and y is not None and len(x) == len(y):
        return layout
    return None


def batch_layouts(index: GraphIndex, path: set, inputs: list) -> dict:
    """value -> Layout for every value whose batch axis can be followed from the graph inputs (the path's values
    first among a node's outputs; values off the path too, since exporters read the batch size off them)."""
    layouts = {name: DEFAULT for name in inputs}
    batch = next((s[0] for s in (_shape(index, i) for i in inputs) if s and s[0] is not None), None)
    for node in index.order:
        out = next((o for o in node.output if o in path), next((o for o in node.output if o), None))
        source = next((i for i in node.input if i in path and i in layouts),
                      next((i for i in node.input if i in layouts), None))
        if out is None or source is None:
            continue
        layout = _next(index, node, source, layouts[source], batch, layouts, out)
        if layout is not None:
            for name in node.output:  # every output: Split's siblings off the path give the batch size too
                if name:
                    layouts[name] = layout
    return layouts
