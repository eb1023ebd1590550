"""The explanation's own numbers as tables: the bias table and the layer-by-layer conservation profile."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import OnnxLrpError
from .runtime import Explanation


@dataclass
class TableRow:
    """One row of the bias table: per-sample values (N,) plus the mean, share of the total and largest units."""

    kind: str                  # "bias", "input", "stabilizer" or "total"
    name: str
    op: str
    rule: str
    values: np.ndarray         # (N,) float64, relevance per sample
    share: Optional[float]     # sum over the batch / total over the batch (None when the total is 0)
    top: list = field(default_factory=list)   # [(unit label, mean relevance)], largest |relevance| first

    @property
    def mean(self) -> float:
        """Mean over the batch."""
        return float(self.values.mean())


@dataclass
class ProfileRow:
    """One tensor of the conservation profile; every field but the names is (N,) float64."""

    tensor: str
    node: str                  # the producing node ("" for a graph input)
    op: str                    # its op type ("input" for a graph input)
    relevance: np.ndarray      # relevance arriving at this tensor
    elsewhere: np.ndarray      # relevance crossing the same cut on parallel branches (skip connections)
    bias: np.ndarray           # bias relevance taken by the nodes between the output and this tensor
    stabilizer: np.ndarray     # stabilizer share taken by those nodes
    total: np.ndarray          # the relevance put in at the output

    @property
    def sum(self) -> np.ndarray:
        """relevance + elsewhere + bias + stabilizer: equals the total at every layer."""
        return self.relevance + self.elsewhere + self.bias + self.stabilizer

    @property
    def relative_error(self) -> np.ndarray:
        """|sum - total| / |total| per sample."""
        return np.abs(self.sum - self.total) / np.maximum(np.abs(self.total), 1e-30)


def _per_sample(value: np.ndarray, n: int) -> np.ndarray:
    """(N, ...) -> (N,) float64 sums."""
    return np.asarray(value, dtype=np.float64).reshape(n, -1).sum(axis=1)


def _share(values: np.ndarray, total: np.ndarray) -> Optional[float]:
    """Share of the batch's total, None when the total is zero."""
    denom = float(total.sum())
    return float(values.sum()) / denom if denom != 0.0 else None


def _top_units(per_unit: np.ndarray, k: int, label) -> list:
    """The k entries of largest |value| as (label(index), value)."""
    flat = per_unit.reshape(-1)
    order = np.argsort(-np.abs(flat), kind="stable")[:max(k, 0)]
    return [(label(int(j)), float(flat[j])) for j in order]


def _ops(exp: Explanation) -> dict:
    """Node name -> op type, from the compiled graph's metadata."""
    return {entry[0]: entry[1] for entry in exp.graph}


def bias_table(exp: Explanation, top: int = 3) -> list:
    """Rows: every biased node in graph order, the inputs, the stabilizer, then the totals row (sum of rows)."""
    n = exp.total.shape[0]
    total = exp.total.astype(np.float64)
    ops = _ops(exp)
    order = [entry[0] for entry in exp.graph] + list(exp.rules) + list(exp.bias)
    seen, rows = set(), []
    for name in order:
        if name in seen or name not in exp.bias:
            continue
        seen.add(name)
        units = np.asarray(exp.bias[name], dtype=np.float64).reshape(n, -1)
        values = units.sum(axis=1)
        rows.append(TableRow("bias", name, ops.get(name, "?"), exp.rules.get(name, "?"), values,
                             _share(values, total), _top_units(units.mean(axis=0), top, str)))
    for name, rel in exp.relevance.items():
        values = _per_sample(rel, n)
        mean = np.asarray(rel, dtype=np.float64).mean(axis=0)
        label = (lambda j, shape=mean.shape: str(tuple(int(v) for v in np.unravel_index(j, shape)))
                 if len(shape) > 1 else str(j))
        rows.append(TableRow("input", name, "input", "-", values, _share(values, total), _top_units(mean, top, label)))
    stab = exp.stabilizer.astype(np.float64)
    names = list(exp.node_stabilizer)
    per_node = np.array([float(np.mean(exp.node_stabilizer[k])) for k in names]) if names else np.zeros(0)
    rows.append(TableRow("stabilizer", "stabilizer", "-", "-", stab, _share(stab, total),
                         _top_units(per_node, top, lambda j: names[j])))
    summed = np.sum([r.values for r in rows], axis=0)
    rows.append(TableRow("total", "total", "-", "-", summed, _share(summed, total)))
    return rows


def profile(exp: Explanation) -> list:
    """The conservation profile: one row per relevance-carrying tensor in graph order (needs node_relevance='sums')."""
    if not exp.graph or not any(np.ndim(v) == 1 for v in exp.nodes.values()):
        raise OnnxLrpError("the conservation profile needs per-tensor relevance sums: compile with "
                           "node_relevance='sums' (onnxlrp compile --node-relevance sums)")
    n = exp.total.shape[0]
    total = exp.total.astype(np.float64)
    zero = np.zeros(n)
    position, producer, readers = {}, {}, {}
    for i, (name, op, inputs, outputs) in enumerate(exp.graph):
        position[name] = i
        for out in outputs:
            producer[out] = (name, op)
        for inp in dict.fromkeys(inputs):
            readers.setdefault(inp, []).append(name)
    sums = {t: _per_sample(v, n) for t, v in exp.nodes.items()}
    if any(len(readers.get(t, [])) > 1 and t not in exp.edges for t in sums):
        raise OnnxLrpError("the conservation profile needs the per-edge sums that node_relevance='sums' adds: "
                           "compile with node_relevance='sums' (onnxlrp compile --node-relevance sums)")
    bias = [_per_sample(exp.bias[entry[0]], n) if entry[0] in exp.bias else zero for entry in exp.graph]
    stab = [np.asarray(exp.node_stabilizer.get(entry[0], zero), dtype=np.float64) for entry in exp.graph]
    tensors = [t for t in sums if t in readers or t in producer]
    tensors.sort(key=lambda t: (position[producer[t][0]] if t in producer else -1))
    rows = []
    for tensor in tensors:
        cut = min((position[r] for r in readers.get(tensor, [])), default=len(exp.graph))
        elsewhere = zero.copy()
        for name, _, inputs, _ in exp.graph[cut:]:
            for inp in dict.fromkeys(inputs):
                if inp == tensor or (inp in producer and position[producer[inp][0]] >= cut):
                    continue
                elsewhere += _edge(exp, sums, inp, name, n)
        node, op = producer.get(tensor, ("", "input"))
        rows.append(ProfileRow(tensor, node, op, sums[tensor], elsewhere,
                               np.sum(bias[cut:], axis=0) if cut < len(bias) else zero.copy(),
                               np.sum(stab[cut:], axis=0) if cut < len(stab) else zero.copy(), total))
    return rows


def _edge(exp: Explanation, sums: dict, tensor: str, node: str, n: int) -> np.ndarray:
    """Relevance that node sent back to tensor: its edge sum where the tensor has several readers, else all of it."""
    if tensor in exp.edges:
        return np.asarray(exp.edges[tensor].get(node, np.zeros(n)), dtype=np.float64)
    return sums.get(tensor, np.zeros(n))
