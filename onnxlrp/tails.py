"""Per-layer tails batched across layers: the bias relevance rows and the stabilizer shares of every linear layer
in a handful of nodes instead of a few per layer.

A linear layer with one bias per channel ends in small (N, C) work: its bias relevance is sum_g s_red_g * f_g
(s_red_g the per-channel sums of group g's s, f_g its bias factors), unscaled by the per-sample seed scale, and its
stabilizer share is s_red_g @ (eps_g, ..., eps_g) (N,). On small models each of those nodes costs as much as a
convolution; emit_linear records them here (Tails) and the compiler computes all layers at once:
- bias: Concat of every layer's s_red (N, sum C), one Mul by the concatenated factors, one Mul by the seed scale,
  one Split into the layers' (N, C) blocks (a layer with several groups adds its blocks);
- stabilizer: Concat of every such s_red and one MatMul by the concatenated eps vector, plus the shares that are not
  of that form.
The numbers are the same products (the bias rows bit for bit where a layer has one group; with several, the scale
multiplies each group's product before they are added) and the same sums in another order (float32 rounding).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
from onnx import helper

if TYPE_CHECKING:
    from .builder import GraphBuilder


@dataclass
class Tails:
    """What emit_linear recorded: bias rows and stabilizer shares as products of (N, C) sums."""

    bias: dict = field(default_factory=dict)   # R_b name -> (C, [(s_red (N, k C), factor (k C,))])
    stab: dict = field(default_factory=dict)   # stab name -> [("dot", s_red (N, C), vector (C,)) | ("value", name)]

    def add_bias(self, value: str, width: int, terms: list) -> None:
        """Record that `value` (N, width) is the sum of the width-wide column blocks of every term's product
        tensor * factor (a term (N, k width) holds k groups side by side)."""
        self.bias[value] = (int(width), list(terms))

    def add_stab(self, value: str, terms: list) -> None:
        """Record that `value` (N,) == sum of the terms (dot products and plain (N,) values)."""
        self.stab[value] = list(terms)


def stabilizer_dot(b: "GraphBuilder", reduced: str, vector: np.ndarray) -> str:
    """A layer's stabilizer share reduced @ vector (N,) (reduced: per-channel sums of s (N, C), vector: each
    channel's sign * eps), recorded so that stabilizer_total computes every layer's in one MatMul."""
    stab = b.op("MatMul", [reduced, b.const(vector)], "stab")
    b.tails.add_stab(stab, [("dot", reduced, vector)])
    return stab


def stabilizer_total(b: "GraphBuilder", values: list) -> Optional[str]:
    """The sum of the stabilizer shares `values` with every recorded dot product in one Concat + MatMul."""
    tails: Tails = b.tails
    dots, plain = [], []
    for value in values:
        for term in tails.stab.get(value, [("value", value)]):
            (dots.append(term[1:]) if term[0] == "dot" else plain.append(term[1]))
    if len(dots) > 1:
        rows = b.op("Concat", [t for t, _ in dots], "s_red_all", axis=1)
        plain.append(b.op("MatMul", [rows, b.const(np.concatenate([v for _, v in dots]))], "stab_dots"))
    elif dots:
        plain.append(b.op("MatMul", [dots[0][0], b.const(dots[0][1])], "stab_dots"))
    return b.add_all(plain, "stab_total") if plain else None


def batched_bias(b: "GraphBuilder", wanted: list, scale_col: Optional[str]) -> list:
    """Write every (output name, value) of `wanted` whose value is recorded in b.tails from one Concat, Mul (by the
    factors), Mul (by scale_col (N, 1), if given) and Split (plus an Add per layer with several groups); returns the
    output names written."""
    tails: Tails = b.tails
    entries = [(out, tails.bias[value]) for out, value in wanted if value in tails.bias]
    if len(entries) < 2:
        return []
    terms = [term for _, (_, layer_terms) in entries for term in layer_terms]
    rows = b.op("Concat", [t for t, _ in terms], "s_red_bias", axis=1)
    factors = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1) for _, f in terms])
    product = b.op("Mul", [rows, b.const(factors)], "r_bias_all")
    if scale_col is not None:
        product = b.op("Mul", [product, scale_col], "r_bias_scaled")
    sizes, names, layers = [], [], []
    for out, (width, layer_terms) in entries:
        count = sum(np.asarray(f).size // width for _, f in layer_terms)
        mine = [out] if count == 1 else [b.fresh("r_bias_part") for _ in range(count)]
        sizes += [width] * count
        names += mine
        layers.append((out, mine))
    split = [product, b.ints(sizes, "split")] if b.opset >= 13 else [product]
    attrs = {"axis": 1} if b.opset >= 13 else {"axis": 1, "split": sizes}
    b.nodes.append(helper.make_node("Split", split, names, name=b.fresh("Split_node"), **attrs))
    for out, mine in layers:
        if len(mine) > 1:
            b.nodes.append(helper.make_node("Add" if len(mine) == 2 else "Sum", mine, [out], name=b.fresh("Add_node")))
    return [out for out, _ in layers]
