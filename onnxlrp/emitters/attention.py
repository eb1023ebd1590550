"""Attention: Softmax by its Taylor (gradient x input) form, Where masks, and opset 23's Attention and
RotaryEmbedding ops.

Softmax y = softmax(x) (AttnLRP Prop. 3.1, LXT's plain gradient): R_x = x * (R - y * sum R) along the softmax
axis; where y == 0 (a masked score, possibly -inf) R_x = 0. The remainder sum R - sum R_x is the node's absorbed
relevance, reported like a bias. A mask adds nothing: an additive mask is a run-time addend (arithmetic.py) whose
share is 0 because R_x = 0 where it masks, and Where(mask, scores, fill) sends R to the scores where the mask holds,
the fill's share (0 after a Softmax) being reported as absorbed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import TensorProto, numpy_helper

from ..builder import GraphBuilder
from ..rules import Epsilon, Gate, Norm, Pass, Rule, Taylor, Uniform
from . import Emitted, NodeView, register
from .arithmetic import absorbed_row
from .shape import unbroadcast

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------------------
# Softmax
def softmax_axes(opset: int, axis: Optional[int], rank: int) -> list:
    """The axes a Softmax normalises over: [axis] from opset 13 (default -1), axis..rank-1 before (default 1)."""
    if opset >= 13:
        return [(-1 if axis is None else axis) % rank]
    return list(range((1 if axis is None else axis) % rank, rank))


def taylor_softmax(b: GraphBuilder, x: str, y: str, R: str, axes: list) -> tuple:
    """(R_x, R - R_x): R_x = x * (R - y * sum_axes R), 0 where y == 0 (masked scores, -inf included)."""
    total = b.reduce("ReduceSum", R, axes, keepdims=True, hint="R_row")
    inner = b.op("Sub", [R, b.op("Mul", [y, total], "y_R_row")], "R_centred")
    raw = b.op("Mul", [x, inner], "R_x_raw")
    masked = b.op("Equal", [y, b.const(0.0)], "y_is_zero")
    R_x = b.op("Where", [masked, b.const(0.0), raw], "R_x")
    return R_x, b.op("Sub", [R, R_x], "R_rest")


def _check_softmax(view: NodeView) -> Optional[str]:
    """Softmax needs the rank of its input."""
    if view.shape(view.inputs[0]) is None:
        return f"the rank of its input {view.inputs[0]!r} is not known at compile time"
    return None


@register("Softmax", group="softmax", rules=(Taylor,), check=_check_softmax)
def emit_softmax(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Softmax inside the model: R_x = x * (R - y * sum R); the remainder is reported as absorbed."""
    from ..graph import opset_version
    x, y = view.inputs[0], view.outputs[0]
    rank = len(view.shape(x))
    axes = softmax_axes(opset_version(view.index.model), view.attr("axis"), rank)
    R_x, rest = taylor_softmax(b, x, y, R[0], axes)
    return Emitted([R_x], absorbed_row(b, rest, rank))


# ---------------------------------------------------------------------------------------------------------------
# Where
def _check_where(view: NodeView) -> Optional[str]:
    """Where: a condition without relevance, known ranks."""
    cond = view.inputs[0]
    if view.is_relevant(cond):
        return f"its condition {cond!r} carries relevance"
    for name in view.inputs[1:] + view.outputs:
        if view.shape(name) is None:
            return f"the rank of {name!r} is not known at compile time"
    return None


@register("Where", group="shape", rules=(Pass,), check=_check_where)
def emit_where(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Where(c, a, b): R_a = R where c holds, R_b = R elsewhere (summed back over broadcast axes); the share of an
    operand without relevance (a mask's fill value) is reported as absorbed."""
    cond, a, other = view.inputs
    out = view.shape(view.outputs[0])
    zero = b.const(0.0)
    parts = {a: b.op("Where", [cond, R[0], zero], "R_true"), other: b.op("Where", [cond, zero, R[0]], "R_false")}
    rel: list = [None, None, None]
    kept = []
    for k, name in ((1, a), (2, other)):
        if view.is_relevant(name):
            shape = view.shape(name)
            rel[k] = parts[name] if tuple(shape) == tuple(out) else unbroadcast(b, parts[name], name, shape, len(out))
        else:
            kept.append(parts[name])
    if a == other and view.is_relevant(a):  # Where(c, x, x): both parts go to x
        rel[1] = b.op("Add", [rel[1], rel[2]], "R_both")
        rel[2] = None
    bias = absorbed_row(b, b.add_all(kept, "R_fill"), len(out)) if kept else None
    return Emitted(rel, bias)


# ---------------------------------------------------------------------------------------------------------------
# opset 23 RotaryEmbedding: linear in X with cos / sin held constant; its transpose is the rotation by -theta
def _check_rotary(view: NodeView) -> Optional[str]:
    """RotaryEmbedding: only X carries relevance, its rank is known."""
    if any(view.is_relevant(n) for n in view.inputs[1:] if n):
        return "its cos / sin caches or positions carry relevance"
    if view.shape(view.inputs[0]) is None:
        return f"the rank of {view.inputs[0]!r} is not known at compile time"
    return None


@register("RotaryEmbedding", group="affine", rules=(Epsilon, Norm, Gate), check=_check_rotary)
def emit_rotary(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """y = rotate(x, theta) is linear in x: R_x = x * J^T s with s = R / stab(y), J^T = rotation by -theta (the same
    op with sin negated)."""
    eps = float(getattr(rule, "epsilon", getattr(rule, "stabilizer", 0.0)))
    y = view.outputs[0]
    s, share = b.normalize(R[0], y, eps)
    inputs = list(view.inputs)
    inputs[2] = b.op("Neg", [inputs[2]], "minus_sin")
    attrs = {k: view.attr(k) for k in ("interleaved", "num_heads", "rotary_embedding_dim") if view.attr(k) is not None}
    back = b.op("RotaryEmbedding", [s] + inputs[1:], "JT_s", **attrs)
    rank = len(view.shape(y))
    R_x = b.op("Mul", [view.inputs[0], back], "R_x")
    return Emitted([R_x] + [None] * (len(view.inputs) - 1), None, b.per_sample_sum(share, "stab_sum", rank))


# ---------------------------------------------------------------------------------------------------------------
# opset 23 Attention: recomputed in the relevance graph, then explained op by op
def _check_attention(view: NodeView) -> Optional[str]:
    """Attention: Q, K, V of known rank 3 or 4, no KV cache, a mask without relevance, the default output mode."""
    names = view.inputs
    if len(names) > 4 and any(names[4:]):
        return "past_key / past_value (a KV cache) are not supported: explain the model without the cache"
    if len(names) > 3 and names[3] and view.is_relevant(names[3]):
        return f"its attention mask {names[3]!r} carries relevance"
    for name in names[:3]:
        shape = view.shape(name)
        if shape is None or len(shape) not in (3, 4):
            return f"the rank of {name!r} is not known (3 or 4 expected)"
        if shape[-1] is None:
            return f"the last axis of {name!r} is not known at compile time"
    if len(view.shape(names[0])) == 3 and not (view.attr("q_num_heads") and view.attr("kv_num_heads")):
        return "3-D inputs need q_num_heads and kv_num_heads"
    if any(o for o in view.outputs[1:]):
        return "its present_key / present_value / qk_matmul_output outputs are not supported"
    return None


def _heads(b: GraphBuilder, view: NodeView, name: str, heads: Optional[int]) -> str:
    """(B, S, heads * d) -> (B, heads, S, d); 4-D inputs unchanged."""
    if len(view.shape(name)) == 4:
        return name
    d = view.shape(name)[-1] // heads
    split = b.op("Reshape", [name, b.ints([0, 0, heads, d])], "heads")
    return b.op("Transpose", [split], "heads_T", perm=[0, 2, 1, 3])


def _unheads(b: GraphBuilder, value: str, like: str) -> str:
    """(B, heads, S, d) -> (B, S, heads * d), shaped like `like`."""
    moved = b.op("Transpose", [value], "unheads_T", perm=[0, 2, 1, 3])
    return b.op("Reshape", [moved, b.op("Shape", [like], "like_shape")], "unheads")


def _repeat_kv(b: GraphBuilder, value: str, groups: int) -> str:
    """(B, kvh, S, d) -> (B, kvh * groups, S, d), each kv head repeated groups times (GQA)."""
    if groups == 1:
        return value
    wide = b.op("Unsqueeze", [value, b.ints([2])], "kv_wide")
    shape = b.op("Shape", [value], "kv_shape")
    head, tail = (b.op("Slice", [shape, b.ints([lo]), b.ints([hi])], "dims") for lo, hi in ((0, 2), (2, 4)))
    expanded = b.op("Expand", [wide, b.op("Concat", [head, b.ints([groups]), tail], "kv_target", axis=0)],
                    "kv_expanded")
    batch = b.op("Slice", [shape, b.ints([0]), b.ints([1])], "dims")
    return b.op("Reshape", [expanded, b.op("Concat", [batch, b.ints([-1]), tail], "kv_flat", axis=0)], "kv_repeated")


def _sum_groups(b: GraphBuilder, value: str, groups: int) -> str:
    """The transpose of _repeat_kv: (B, kvh * groups, S, d) -> (B, kvh, S, d), summing each head's copies."""
    if groups == 1:
        return value
    shape = b.op("Shape", [value], "rep_shape")
    batch, tail = (b.op("Slice", [shape, b.ints([lo]), b.ints([hi])], "dims") for lo, hi in ((0, 1), (2, 4)))
    split = b.op("Reshape", [value, b.op("Concat", [batch, b.ints([-1, groups]), tail], "kv_groups", axis=0)],
                 "kv_split")
    return b.reduce("ReduceSum", split, [2], keepdims=False, hint="kv_sum")


def _swap(b: GraphBuilder, value: str) -> str:
    """The last two axes of a 4-D tensor swapped."""
    return b.op("Transpose", [value], "swap", perm=[0, 1, 3, 2])


@register("Attention", group="product", rules=(Uniform, Gate), check=_check_attention)
def emit_attention(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Y = softmax(scale * Q K^T + mask) V recomputed, then: uniform (half to A and V, half of the scores' share to
    Q and K) or gate (CP-LRP: A constant, all to V); softmax by its Taylor form; scale, softcap and masks pass; the
    softmax remainder (and a float mask's share) is reported as the node's absorbed relevance."""
    from ..batch import Layout
    b.layout = Layout()  # the recomputed (B, heads, S, d) tensors hold the batch on axis 0
    q_in, k_in, v_in = view.inputs[:3]
    mask = view.inputs[3] if len(view.inputs) > 3 and view.inputs[3] else ""
    q_heads, kv_heads = view.attr("q_num_heads"), view.attr("kv_num_heads")
    q, k, v = _heads(b, view, q_in, q_heads), _heads(b, view, k_in, kv_heads), _heads(b, view, v_in, kv_heads)
    if len(view.shape(q_in)) == 4:
        q_heads, kv_heads = view.shape(q_in)[1], view.shape(k_in)[1]
    groups = (q_heads // kv_heads) if (q_heads and kv_heads) else 1
    k_r, v_r = _repeat_kv(b, k, groups), _repeat_kv(b, v, groups)
    d = view.shape(q_in)[-1] // (q_heads if len(view.shape(q_in)) == 3 else 1)
    scale = view.attr("scale") or 1.0 / np.sqrt(d)
    qk = b.op("MatMul", [q, _swap(b, k_r)], "qk")
    scores = b.op("Mul", [qk, b.const(scale)], "scores")
    softcap = view.attr("softcap") or 0.0
    if softcap > 0:  # softcap * tanh(scores / softcap): an elementwise non-linearity, relevance passes (identity)
        scores = b.op("Mul", [b.op("Tanh", [b.op("Mul", [scores, b.const(1.0 / softcap)], "capped_in")], "capped"),
                              b.const(softcap)], "scores_capped")
    x, float_mask = scores, False
    if mask:
        info = view.info(mask)
        if info is not None and info.elem_type == TensorProto.BOOL:
            x = b.op("Where", [mask, x, b.const(NEG_INF)], "masked")
        else:
            float_mask = True
            x = b.op("Add", [x, mask], "masked")
    if view.attr("is_causal", 0):
        ones = b.op("ConstantOfShape", [b.op("Shape", [x], "x_shape")], "ones",
                    value=numpy_helper.from_array(np.ones(1, dtype=np.int64)))
        causal = b.op("Cast", [b.op("Trilu", [ones], "tril", upper=0)], "causal", to=TensorProto.BOOL)
        x = b.op("Where", [causal, x, b.const(NEG_INF)], "causal_masked")
    A = b.op("Softmax", [x], "A", axis=-1)
    Y4 = b.op("MatMul", [A, v_r], "Y4")
    R4 = R[0] if len(view.shape(q_in)) == 4 else _heads(b, view, R[0], q_heads)
    eps = float(getattr(rule, "epsilon", 0.0))
    s, share = b.normalize(R4, Y4, eps)
    stabs = [b.per_sample_sum(share, "stab_sum", 4)]
    uniform = isinstance(rule, Uniform)
    s_v = b.op("Mul", [s, b.const(0.5)], "s_half") if uniform else s
    R_v = b.op("Mul", [v_r, b.op("MatMul", [_swap(b, A), s_v], "AT_s")], "R_v_rep")
    rel: list = [None] * len(view.inputs)
    rel[2] = _sum_groups(b, R_v, groups)
    absorbed = []
    if uniform:
        R_A = b.op("Mul", [A, b.op("MatMul", [s_v, _swap(b, v_r)], "s_vT")], "R_A")
        R_x, rest = taylor_softmax(b, x, A, R_A, [3])
        absorbed.append(rest)
        if float_mask:  # scores + mask: the scores' share is scores * R_x / x (LRP-0), the rest is the mask's
            s_x, share_x = b.normalize(R_x, x, 0.0)
            R_scores = b.op("Mul", [scores, s_x], "R_scores")
            absorbed.append(b.op("Sub", [b.op("Sub", [R_x, R_scores], "R_mask"), share_x], "R_mask_kept"))
        else:
            R_scores = R_x  # Where masks: R_x is 0 where they mask
        s_qk, share_qk = b.normalize(R_scores, qk, eps)  # the scale and the softcap pass relevance unchanged
        stabs.append(b.per_sample_sum(share_qk, "stab_sum", 4))
        s_qk = b.op("Mul", [s_qk, b.const(0.5)], "s_qk_half")
        rel[0] = b.op("Mul", [q, b.op("MatMul", [s_qk, k_r], "s_k")], "R_q")
        R_k = b.op("Mul", [k_r, b.op("MatMul", [_swap(b, s_qk), q], "sT_q")], "R_k_rep")
        rel[1] = _sum_groups(b, R_k, groups)
        if len(view.shape(q_in)) == 3:
            rel[0], rel[1] = _unheads(b, rel[0], q_in), _unheads(b, rel[1], k_in)
    if len(view.shape(q_in)) == 3:
        rel[2] = _unheads(b, rel[2], v_in)
    bias = b.reduce("ReduceSum", b.add_all(absorbed, "R_absorbed"), [1, 2], keepdims=False, hint="absorbed") \
        if absorbed else None
    return Emitted(rel, bias, b.add_all(stabs, "stab_all"))
