"""Merge parallel linear branches of one tensor into one Conv, as RepVGG / MobileOne / FastViT reparameterisation
does: Conv(x, W1, b1) + Conv(x, W2, b2) + BatchNorm(x) + x = Conv(x, W, b) with W the branches' kernels summed on a
common (union) kernel grid, the identity branches as a centred diagonal tap, and b the summed biases.

Why: an Add of parallel branches splits its relevance by the norm rule in proportion to each branch's *signed*
output, and then every branch applies its own rule. Under z+ a branch with a one-tap kernel (a 1x1 depthwise
convolution, a per-channel BatchNorm) has a denominator W+ x+ + W- x- of zero wherever its single input has the
"wrong" sign, while the norm rule still hands it the relevance of its non-zero output: all of that goes to the
stabilizer (fastvit_t8 with trained-like weights: -200 % of the total). After the merge, z+ is applied once to the
linear map the block really computes, so its denominator sums the positive contributions of every branch.

The rewrite is exact (the merged Conv computes the same function) and is applied only where it is: same input
tensor, same strides, dilations and group, explicit or VALID padding, tap grids that line up (the begin pads differ
by a multiple of the dilation) and the same output length for every input length; each merged branch is read by
the Add only. Identity branches (x itself, or a constant inference BatchNormalization of x) need stride 1, as many
output as input channels and a same-size output.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import GraphIndex


@dataclass
class Branch:
    """One linear branch of `source`: a Conv (kernel W, begin pads, the length term t = pads_begin + pads_end -
    dilation * (K - 1), which fixes the output length) or an identity scaled per channel (W None, scale k)."""

    source: str
    nodes: list                      # the nodes the merge removes (Conv, BatchNormalization)
    bias: np.ndarray                 # (C_out,)
    weight: Optional[np.ndarray] = None  # (C_out, C_in / group, *K), float64
    scale: Optional[np.ndarray] = None   # identity: (C,)
    strides: tuple = ()
    dilations: tuple = ()
    pads_begin: tuple = ()
    length_terms: tuple = ()
    group: int = 1
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def is_identity(self) -> bool:
        """True for x or BatchNorm(x)."""
        return self.weight is None


def _attr(node: onnx.NodeProto, name: str, default):
    """An attribute value of a node, or default."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _conv_branch(index: GraphIndex, node: onnx.NodeProto) -> Optional[Branch]:
    """A Conv with constant weight and bias and explicit (or VALID) padding as a Branch, else None."""
    weight = index.constants.get(node.input[1]) if len(node.input) > 1 else None
    has_bias = len(node.input) > 2 and node.input[2]
    bias = index.constants.get(node.input[2]) if has_bias else None
    if weight is None or weight.ndim < 3 or (has_bias and bias is None) or weight.dtype.kind != "f":
        return None
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    spatial = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    if tuple(_attr(node, "kernel_shape", kernel)) != kernel:
        return None
    strides = tuple(_attr(node, "strides", [1] * spatial))
    dilations = tuple(_attr(node, "dilations", [1] * spatial))
    pads = tuple(_attr(node, "pads", [0] * 2 * spatial)) if auto_pad == "NOTSET" else (0,) * 2 * spatial
    begin, end = pads[:spatial], pads[spatial:]
    terms = tuple(b + e - d * (k - 1) for b, e, d, k in zip(begin, end, dilations, kernel))
    b = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
    return Branch(node.input[0], [node], b, weight.astype(np.float64), None, strides, dilations, begin, terms,
                  int(_attr(node, "group", 1)), weight.dtype)


def _batchnorm_branch(index: GraphIndex, node: onnx.NodeProto) -> Optional[Branch]:
    """A constant inference BatchNormalization as a per-channel identity branch, else None."""
    if len(node.output) > 1 and any(node.output[1:]):
        return None
    params = [index.constants.get(n) for n in node.input[1:5]]
    if any(p is None for p in params) or params[0].dtype.kind != "f":
        return None
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    k = scale / np.sqrt(var + _attr(node, "epsilon", 1e-5))
    return Branch(node.input[0], [node], beta - mean * k, scale=k, dtype=params[0].dtype)


def _merge(a: Branch, b: Branch) -> Optional[Branch]:
    """The Branch computing a + b, None where they cannot be one Conv."""
    if a.source != b.source:
        return None
    if a.is_identity and b.is_identity:
        return None  # no kernel to merge into (an affine of x: left as it is)
    if a.is_identity:
        a, b = b, a
    if b.is_identity:
        return _add_identity(a, b)
    a, b = _common_dilations(a, b), _common_dilations(b, a)
    if (a.strides, a.dilations, a.group, a.length_terms) != (b.strides, b.dilations, b.group, b.length_terms) \
            or a.weight.shape[:2] != b.weight.shape[:2]:
        return None
    starts, sizes = [], []
    for axis, d in enumerate(a.dilations):
        lo = min(-a.pads_begin[axis], -b.pads_begin[axis])  # the first input tap, relative to o * stride
        hi = max(-a.pads_begin[axis] + d * (a.weight.shape[2 + axis] - 1),
                 -b.pads_begin[axis] + d * (b.weight.shape[2 + axis] - 1))
        if (a.pads_begin[axis] - b.pads_begin[axis]) % d:
            return None  # the tap grids do not line up
        starts.append(lo)
        sizes.append((hi - lo) // d + 1)
    weight = np.zeros(a.weight.shape[:2] + tuple(sizes))
    for branch in (a, b):
        weight[_window(branch, starts)] += branch.weight
    return Branch(a.source, a.nodes + b.nodes, a.bias + b.bias, weight, None, a.strides, a.dilations,
                  tuple(-s for s in starts), a.length_terms, a.group, a.dtype)


def _common_dilations(branch: Branch, other: Branch) -> Branch:
    """The branch with the other's dilation on every axis where its own kernel has one tap (no effect there)."""
    if len(branch.dilations) != len(other.dilations):
        return branch
    dilations = tuple(o if k == 1 else d for d, o, k in zip(branch.dilations, other.dilations, branch.weight.shape[2:]))
    return replace(branch, dilations=dilations)


def _window(branch: Branch, starts: list) -> tuple:
    """The index of the branch's kernel inside a union kernel whose first taps are at `starts`."""
    offsets = [(-p - s) // d for p, s, d in zip(branch.pads_begin, starts, branch.dilations)]
    return (slice(None), slice(None)) + tuple(slice(o, o + k) for o, k in zip(offsets, branch.weight.shape[2:]))


def _add_identity(conv: Branch, identity: Branch) -> Optional[Branch]:
    """conv + k * x as one Conv: k on the tap that reads the output's own position, in each channel's group."""
    c_out, c_in_per_group = conv.weight.shape[:2]
    channels = identity.scale.shape[0] if identity.scale is not None else c_out
    if any(s != 1 for s in conv.strides) or any(t != 0 for t in conv.length_terms) or channels != c_out \
            or c_in_per_group * conv.group != c_out:
        return None
    centre = []
    for p, d, k in zip(conv.pads_begin, conv.dilations, conv.weight.shape[2:]):
        if p % d or not 0 <= p // d < k:
            return None
        centre.append(p // d)
    weight = conv.weight.copy()
    rows = np.arange(c_out)
    weight[(rows, rows % c_in_per_group) + tuple(centre)] += 1.0 if identity.scale is None else identity.scale
    bias = conv.bias + (identity.bias if identity.bias is not None else 0.0)
    return Branch(conv.source, conv.nodes + identity.nodes, bias, weight, None, conv.strides, conv.dilations,
                  conv.pads_begin, conv.length_terms, conv.group, conv.dtype)


def _describe(index: GraphIndex, value: str, merged: dict, single_use) -> list:
    """The ways one Add operand is a linear branch, as (Branch, the inner Add it comes from or None): the Conv /
    BatchNorm (or the earlier merge) that computes it when the Add is its only reader, and its own identity."""
    ways = [(Branch(value, [], np.zeros(1)), None)]
    if not single_use(value):
        return ways
    node = index.producer.get(value)
    if value in merged:
        return [(merged[value], node.name)] + ways
    if node is None or node.domain not in ("", "ai.onnx"):
        return ways
    if node.op_type == "Conv":
        branch = _conv_branch(index, node)
    elif node.op_type == "BatchNormalization":
        branch = _batchnorm_branch(index, node)
    else:
        branch = None
    return ([(branch, None)] if branch is not None else []) + ways


def merge_parallel_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every Add of parallel linear branches of one tensor (Conv, constant BatchNorm, the tensor itself;
    chains of Adds too) by one Conv with the summed kernels and biases (see the module's docstring)."""
    index = GraphIndex.build(model)
    outputs = {o.name for o in model.graph.output}
    merged: dict = {}       # Add output -> the Branch that now computes it
    replaced: dict = {}     # Add name -> its Branch
    absorbed: set = set()   # inner Adds of a chain: the outer Add's Conv computes them
    for node in index.order:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2 \
                or node.input[0] == node.input[1]:
            continue

        def single_use(value: str, add: onnx.NodeProto = node) -> bool:
            users = index.consumers.get(value, [])
            return len(users) == 1 and users[0].name == add.name and value not in outputs

        result, inner = None, []
        for left, left_inner in _describe(index, node.input[0], merged, single_use):
            for right, right_inner in _describe(index, node.input[1], merged, single_use):
                result = _merge(left, right)
                if result is not None:
                    inner = [n for n in (left_inner, right_inner) if n]
                    break
            if result is not None:
                break
        if result is None:
            continue
        merged[node.output[0]] = result
        replaced[node.name] = result
        absorbed.update(inner)
    if not replaced:
        return model
    return _rewrite(model, replaced, absorbed)


def _rewrite(model: onnx.ModelProto, replaced: dict, absorbed: set) -> onnx.ModelProto:
    """Drop the merged branches and Adds; the outermost Add of each chain becomes one Conv."""
    removed = {n.name for branch in replaced.values() for n in branch.nodes}
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    nodes = []
    for node in model.graph.node:
        if node.name in removed or node.name in absorbed:
            continue
        branch = replaced.get(node.name) if node.op_type == "Add" else None
        if branch is None:
            nodes.append(node)
            continue
        weight = _fresh(taken, f"{node.name}/merged_weight")
        bias = _fresh(taken, f"{node.name}/merged_bias")
        model.graph.initializer.extend([numpy_helper.from_array(branch.weight.astype(branch.dtype), weight),
                                        numpy_helper.from_array(branch.bias.astype(branch.dtype), bias)])
        ends = [t + d * (k - 1) - p for t, d, k, p in
                zip(branch.length_terms, branch.dilations, branch.weight.shape[2:], branch.pads_begin)]
        nodes.append(helper.make_node(
            "Conv", [branch.source, weight, bias], [node.output[0]], name=node.name,
            kernel_shape=list(branch.weight.shape[2:]), strides=list(branch.strides),
            dilations=list(branch.dilations), pads=list(branch.pads_begin) + ends, group=branch.group))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _fresh(taken: set, name: str) -> str:
    """A value name not yet used."""
    new, k = name, 1
    while new in taken:
        k += 1
        new = f"{name}{k}"
    taken.add(new)
    return new
