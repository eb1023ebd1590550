"""One Parquet row per explained sample: the schema, and an explained batch turned into an Arrow table."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import OnnxLrpError
from .batch import NO_LABEL, InputSpec, PreparedBatch

STORES = ("full", "float16", "sum")
SCALARS = ("index", "sample_id", "label", "target", "predicted", "logit", "total", "inputs", "biases", "stabilizer")
_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float32}


def column_name(prefix: str, name: str) -> str:
    """'bias/<node>' with the characters Spark refuses in Parquet column names (' ,;{}()=' and controls) as '_'."""
    return prefix + re.sub(r"[ ,;{}()=\n\t\r]", "_", name)


@dataclass(frozen=True)
class RowLayout:
    """What the rows hold: the columns, where each relevance and bias column comes from, how relevance is stored."""

    store: str
    relevance: dict     # column -> (input name, per-sample shape, dtype name)
    bias: dict          # column -> node name, graph order
    nodes: dict         # node name -> {"op", "rule", "units"}

    def schema(self):
        """The Arrow schema of every shard."""
        import pyarrow as pa
        fields = [pa.field("index", pa.int64(), nullable=False), pa.field("sample_id", pa.string()),
                  pa.field("label", pa.int64()), pa.field("target", pa.int64()), pa.field("predicted", pa.int64())]
        fields += [pa.field(name, pa.float64()) for name in ("logit", "total", "inputs", "biases", "stabilizer")]
        for column, (_, shape, dtype) in self.relevance.items():
            if self.store == "sum":
                kind = pa.float64()
            else:
                value = pa.float16() if self.store == "float16" else pa.from_numpy_dtype(np.dtype(dtype))
                size = int(np.prod(shape)) if all(isinstance(d, int) for d in shape) else None
                kind = pa.list_(value, size) if size is not None else pa.list_(value)
            fields.append(pa.field(column, kind))
        fields += [pa.field(column, pa.float64()) for column in self.bias]
        return pa.schema(fields)

    def manifest(self) -> dict:
        """The columns entry of the manifest."""
        return {"store": self.store,
                "relevance": {c: {"input": n, "shape": list(s), "dtype": d} for c, (n, s, d) in self.relevance.items()},
                "bias": {c: {"node": n, **self.nodes.get(n, {})} for c, n in self.bias.items()}}


def row_layout(explainer, specs: Sequence[InputSpec], store: str) -> RowLayout:
    """The row layout of an explainer's results: one relevance column per explained input, one bias column per
    node whose bias takes relevance, in graph order."""
    if store not in STORES:
        raise OnnxLrpError(f"store must be one of {', '.join(STORES)}, got {store!r}")
    meta = explainer.meta
    types = {o.name: o for o in explainer.session.get_outputs()}
    shapes = {s.name: s.shape for s in specs}
    relevance, used = {}, set()
    for name, output in meta["relevance"].items():
        column = _unique(column_name("relevance/", name), used)
        dtype = np.dtype(_ORT_FLOATS.get(types[output].type, np.float32)).name
        relevance[column] = (name, tuple(shapes.get(name, ())), dtype)
    order = [entry[0] for entry in meta.get("graph", [])]
    ops = {entry[0]: entry[1] for entry in meta.get("graph", [])}
    nodes = sorted(meta["bias"], key=lambda n: order.index(n) if n in order else len(order))
    bias, info = {}, {}
    for node in nodes:
        shape = types[meta["bias"][node]].shape
        units = int(np.prod(shape[1:])) if all(isinstance(d, int) for d in shape[1:]) else None
        bias[_unique(column_name("bias/", node), used)] = node
        info[node] = {"op": ops.get(node, ""), "rule": meta.get("rules", {}).get(node, ""), "units": units}
    return RowLayout(store=store, relevance=relevance, bias=bias, nodes=info)


def _unique(column: str, used: set) -> str:
    """column, or column~2, ~3 ... when two names sanitise to the same text."""
    name, k = column, 1
    while name in used or name in SCALARS:
        k += 1
        name = f"{column}~{k}"
    used.add(name)
    return name


def _numbers(values: np.ndarray, valid: Optional[np.ndarray] = None):
    """A NumPy vector as an Arrow array over the same memory (pa.array would import pandas, 0.5-2 s, on first use)."""
    import pyarrow as pa
    values = np.ascontiguousarray(values)
    kind = pa.from_numpy_dtype(values.dtype)
    if valid is None or valid.all():
        return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(kind, len(values), [bitmap, pa.py_buffer(values)], null_count=int((~valid).sum()))


def _strings(values: Sequence[str]):
    """Python strings as an Arrow string array (built from its buffers, see _numbers)."""
    import pyarrow as pa
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    data = pa.py_buffer(b"".join(encoded))
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets), data])


def batch_table(layout: RowLayout, batch: PreparedBatch, exp):
    """The rows of one explained batch, in the layout's schema."""
    import pyarrow as pa
    n = len(batch.index)
    flat = exp.output.reshape(n, -1)
    target = exp.target.astype(np.int64)
    inputs = sum((r.reshape(n, -1).sum(axis=1, dtype=np.float64) for r in exp.relevance.values()), np.zeros(n))
    sums = {c: exp.bias[node].reshape(n, -1).sum(axis=1, dtype=np.float64) for c, node in layout.bias.items()}
    columns = {
        "index": _numbers(batch.index.astype(np.int64)),
        "sample_id": _strings(batch.ids),
        "label": _numbers(batch.labels.astype(np.int64), valid=batch.labels != NO_LABEL),
        "target": _numbers(target),
        "predicted": _numbers(flat.argmax(axis=1).astype(np.int64)),
        "logit": _numbers(flat[np.arange(n), target].astype(np.float64)),
        "total": _numbers(exp.total.astype(np.float64)),
        "inputs": _numbers(inputs),
        "biases": _numbers(sum(sums.values(), np.zeros(n))),
        "stabilizer": _numbers(exp.stabilizer.astype(np.float64)),
    }
    schema = layout.schema()
    for column, (name, _, dtype) in layout.relevance.items():
        rel = exp.relevance[name].reshape(n, -1)
        if layout.store == "sum":
            columns[column] = _numbers(rel.sum(axis=1, dtype=np.float64))
            continue
        values = _numbers(rel.astype(np.float16 if layout.store == "float16" else np.dtype(dtype), copy=False)
                          .reshape(-1))
        kind = schema.field(column).type
        if pa.types.is_fixed_size_list(kind):
            columns[column] = pa.FixedSizeListArray.from_arrays(values, kind.list_size)
        else:
            offsets = _numbers(np.arange(0, len(values) + 1, max(rel.shape[1], 1), dtype=np.int32))
            columns[column] = pa.ListArray.from_arrays(offsets, values)
    for column, value in sums.items():
        columns[column] = _numbers(value)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
