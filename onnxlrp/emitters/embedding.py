"""Embedding lookups: a Gather of rows of a constant float table by token ids that carry relevance.

The ids are an int graph input (compiler.token_values); their relevance is the relevance of the rows they selected,
summed over the row: for table (V, H) and ids (N, T), out (N, T, H) and R_ids = sum_h R_out (N, T). Summed this way,
the identity total = inputs + biases + stabilizer keeps holding with the ids as inputs.
"""
from __future__ import annotations

from typing import Optional

from ..builder import GraphBuilder
from ..rules import Rule
from . import Emitted, NodeView


def is_embedding(view: NodeView) -> bool:
    """True for Gather(constant float table, ids that carry relevance)."""
    table = view.const(view.inputs[0])
    return table is not None and table.dtype.kind == "f" and view.is_relevant(view.inputs[1])


def check_embedding(view: NodeView) -> Optional[str]:
    """The rows must be gathered along axis 0, and the rank of the ids known."""
    if view.attr("axis", 0) % view.const(view.inputs[0]).ndim != 0:
        return "an embedding lookup must gather rows (axis 0)"
    if view.shape(view.inputs[1]) is None:
        return f"the rank of its ids {view.inputs[1]!r} is not known at compile time"
    return None


def emit_embedding(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_ids = R_rows summed over the row's axes (the hidden axis of a (V, H) table)."""
    rank_ids = len(view.shape(view.inputs[1]))
    row_axes = list(range(rank_ids, rank_ids + view.const(view.inputs[0]).ndim - 1))
    R_ids = b.reduce("ReduceSum", R[0], row_axes, keepdims=False, hint="R_ids") if row_axes else R[0]
    return Emitted([None, R_ids])
