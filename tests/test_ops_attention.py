"""Attention's ops against dense float64 NumPy references: Softmax by its Taylor form (explicit Jacobians, every
axis convention), masks (a run-time additive mask, Where), constants added to or concatenated with the signal
(absorbed, reported), embedding lookups, rotary embeddings (decomposed and opset 23, against their
linearisation), and opset 23's Attention (the AttnLRP computation written out, and the same graph decomposed)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from ops_harness import (NEWEST_OPSET, assert_close, explain_dense, forward, linearise, make_model, rng, seed_like,
                         tensor)

F32 = np.float32


def _softmax(x, axes):
    """Softmax over the given axes (float64)."""
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    return e / e.sum(axis=axes, keepdims=True)


def _taylor_reference(x, R, axes):
    """R_x = x * J^T (R / y), J = diag(y) - y y^T of each softmax row, built explicitly."""
    x, R = np.asarray(x, np.float64), np.asarray(R, np.float64)
    moved = [a for a in range(x.ndim) if a not in axes] + list(axes)
    xt, Rt = np.transpose(x, moved), np.transpose(R, moved)
    rows = int(np.prod([x.shape[a] for a in axes]))
    xf, Rf = xt.reshape(-1, rows), Rt.reshape(-1, rows)
    out = np.zeros_like(xf)
    for i in range(len(xf)):
        y = _softmax(xf[i], (0,))
        J = np.diag(y) - np.outer(y, y)
        out[i] = xf[i] * (J.T @ (Rf[i] / y))
    return np.transpose(out.reshape(xt.shape), np.argsort(moved))


SOFTMAX = {"last": (17, -1, [3]), "middle": (17, 1, [1]), "coerced_old": (11, 1, [1, 2, 3]),
           "old_default": (11, None, [1, 2, 3])}


@pytest.mark.parametrize("case", list(SOFTMAX))
def test_softmax_taylor(case):
    """R_x = x * (R - y * sum R) along the softmax axis (opset < 13: every axis from `axis` on); the remainder
    is the node's absorbed relevance, so the identity holds."""
    opset, axis, axes = SOFTMAX[case]
    attrs = {} if axis is None else {"axis": axis}
    model = make_model([helper.make_node("Softmax", ["x"], ["p"], name="sm", **attrs),
                        helper.make_node("Mul", ["p", "two"], ["y"])],  # inside the model: not bypassed
                       [tensor("x", ["N", 3, 4, 5])], [tensor("y", [None] * 4)], {"two": np.array(2.0, F32)},
                       opset=opset)
    g = rng(1)
    x = g.normal(size=(2, 3, 4, 5)).astype(F32)
    R = seed_like(forward(model, {"x": x})[0], g)
    res = explain_dense(model, {"x": x}, R, {"affine": ("epsilon", {"epsilon": 0.0})})
    want = _taylor_reference(x, R, axes)
    assert_close(res.relevance["x"], want)
    absorbed = res.bias["sm"].sum(1).astype(np.float64)
    assert np.allclose(absorbed, (R.astype(np.float64) - want).reshape(2, -1).sum(1), atol=1e-6)
    assert res.conservation_error(R) < 1e-5


def _masked_attention_scores(kind: str):
    """scores (N, 1, T, T) -> masked -> Softmax -> y, the mask built at run time from an int input (as HF does)."""
    nodes = []
    if kind == "additive":
        nodes += [helper.make_node("Unsqueeze", ["mask", "axes12"], ["m4"]), helper.make_node("Cast", ["m4"], ["mf"],
                                                                                               to=1),
                  helper.make_node("Sub", ["one", "mf"], ["inv"]), helper.make_node("Mul", ["inv", "fmin"], ["bias"]),
                  helper.make_node("Add", ["s", "bias"], ["x"], name="mask_add")]
    else:  # causal Where with a constant fill
        nodes += [helper.make_node("Where", ["causal", "s", "fmin"], ["x"], name="mask_where")]
    nodes += [helper.make_node("Softmax", ["x"], ["p"], name="sm", axis=-1), helper.make_node("Mul", ["p", "two"], ["y"])]
    inits = {"axes12": np.array([1, 2], np.int64), "one": np.array(1.0, F32), "two": np.array(2.0, F32),
             "fmin": np.array(np.finfo(np.float32).min, F32), "causal": np.tril(np.ones((4, 4), bool))}
    inputs = [tensor("s", ["N", 1, 4, 4])]
    if kind == "additive":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 4]))
    return make_model(nodes, inputs, [tensor("y", [None] * 4)], inits)


@pytest.mark.parametrize("kind", ["additive", "where"])
def test_masks_absorb_nothing(kind):
    """Masked scores get no relevance (R_x = 0 where the softmax output is 0); the mask's share is 0; the
    unmasked scores get the Taylor form of the softmax restricted to them."""
    model = _masked_attention_scores(kind)
    g = rng(2)
    s = g.normal(size=(2, 1, 4, 4)).astype(F32)
    feeds = {"s": s}
    keep = np.tril(np.ones((4, 4), bool))[None, None].repeat(2, 0)
    if kind == "additive":
        mask = np.ones((2, 4), np.int64)
        mask[1, -1] = 0
        feeds["mask"] = mask
        keep = np.broadcast_to(mask[:, None, None, :].astype(bool), (2, 1, 4, 4))
    y = forward(model, feeds)[0]
    R = seed_like(y, g)
    res = explain_dense(model, feeds, R, {"affine": ("epsilon", {"epsilon": 0.0})})
    x = np.where(keep, s.astype(np.float64), -np.inf)
    want = np.zeros_like(x)
    for n in range(2):
        for r in range(4):
            cols = keep[n, 0, r]
            want[n, 0, r, cols] = _taylor_reference(x[n, 0, r, cols][None], R[n, 0, r, cols][None], [1])[0]
    assert_close(res.relevance["s"], want)
    node = "mask_add" if kind == "additive" else "mask_where"
    assert np.allclose(res.bias[node], 0.0, atol=1e-7)
    assert np.all(np.isfinite(res.relevance["s"]))
    assert res.conservation_error(R) < 1e-5


def test_runtime_addend_is_absorbed_like_a_bias():
    """x + p with p computed at run time without relevance (a position embedding gathered by Range(T)): LRP-0
    gives R_x = x * R / (x + p), p keeps the rest, reported per unit of the last axis."""
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "one_i"], ["t"], axis=0),
             helper.make_node("Range", ["zero_i", "t", "one_i"], ["pos"]),
             helper.make_node("Gather", ["table", "pos"], ["p"], axis=0),
             helper.make_node("Add", ["x", "p"], ["y"], name="add_pos")]
    g = rng(3)
    table = g.normal(size=(8, 5)).astype(F32)
    model = make_model(nodes, [tensor("x", ["N", "T", 5])], [tensor("y", [None] * 3)],
                       {"one_i": np.array(1, np.int64), "zero_i": np.array(0, np.int64), "table": table})
    x = g.normal(size=(2, 4, 5)).astype(F32)
    y = forward(model, {"x": x})[0].astype(np.float64)
    R = seed_like(y, g)
    res = explain_dense(model, {"x": x}, R, {"affine": ("epsilon", {"epsilon": 0.0})})
    R64 = R.astype(np.float64)
    assert_close(res.relevance["x"], x * R64 / y)
    assert_close(res.bias["add_pos"], (table[:4] * R64 / y).sum(axis=1), 1e-5, "absorbed")
    assert res.conservation_error(R) < 1e-5


def test_cls_token_concat_is_absorbed():
    """Concat(cls constant, x) along the sequence: x gets its slice, the cls token's slice is reported."""
    cls = rng(4).normal(size=(1, 1, 5)).astype(F32)
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Slice", ["shp", "z", "o"], ["n"]),
             helper.make_node("Concat", ["n", "one_one"], ["tgt"], axis=0),
             helper.make_node("Expand", ["cls", "tgt"], ["clsn"]),
             helper.make_node("Concat", ["clsn", "x"], ["y"], name="cat", axis=1)]
    model = make_model(nodes, [tensor("x", ["N", 3, 5])], [tensor("y", [None] * 3)],
                       {"cls": cls, "z": np.array([0], np.int64), "o": np.array([1], np.int64),
                        "one_one": np.array([1, 5], np.int64)})
    g = rng(5)
    x = g.normal(size=(2, 3, 5)).astype(F32)
    R = g.normal(size=(2, 4, 5)).astype(F32)
    res = explain_dense(model, {"x": x}, R)
    assert_close(res.relevance["x"], R[:, 1:])
    assert_close(res.bias["cat"], R[:, 0], 1e-6, "cls")
    assert res.conservation_error(R) < 1e-6


def test_embedding_lookup_gives_token_relevance():
    """Gather(table, ids): R_ids = the gathered rows' relevance summed over the row (through a Cast of the ids)."""
    from onnxlrp.compiler import compile as compile_model
    import onnxruntime as ort
    g = rng(6)
    table = g.normal(size=(10, 4)).astype(F32)
    w = g.normal(size=(4, 3)).astype(F32)
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "ids64"], ["e"], axis=0),
             helper.make_node("MatMul", ["e", "w"], ["h"]), helper.make_node("ReduceSum", ["h", "ax"], ["y"],
                                                                              keepdims=0)]
    model = make_model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", 5])],
                       [tensor("y", [None, 3])], {"table": table, "w": w, "ax": np.array([1], np.int64)})
    compiled = compile_model(model, "zero")
    ids = g.integers(0, 10, size=(2, 5)).astype(np.int32)
    out = dict(zip([o.name for o in compiled.graph.output],
                   ort.InferenceSession(compiled.SerializeToString()).run(None, {"ids": ids, "lrp_target": [1, 2]})))
    h = table[ids].astype(np.float64) @ w  # LRP-0: R_h = h at the target (sum), R_e = e * w[:, t], summed: h
    want = np.stack([h[n, :, t] for n, t in enumerate([1, 2])])
    assert out["lrp/relevance/ids"].shape == (2, 5)
    assert np.allclose(out["lrp/relevance/ids"], want, rtol=1e-4, atol=1e-6)


def _rotate_half():
    """q * cos + rotate_half(q) * sin, rotate_half(q) = concat(-q[..., d/2:], q[..., :d/2]) (HF's rotary)."""
    return [helper.make_node("Mul", ["x", "cos"], ["a"]),
            helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["x1"]),
            helper.make_node("Slice", ["x", "s1", "s2", "ax"], ["x2"]),
            helper.make_node("Neg", ["x2"], ["nx2"]), helper.make_node("Concat", ["nx2", "x1"], ["rot"], axis=-1),
            helper.make_node("Mul", ["rot", "sin"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])]


@pytest.mark.parametrize("form", ["decomposed", "opset23"])
def test_rotary_embedding(form):
    """y = R(theta) x is linear in x: LRP-0 gives R_x = x * J^T (R / y), J the op's own linearisation (from
    onnxruntime on basis vectors)."""
    g = rng(7)
    theta = g.normal(size=(3, 2))  # (T, d / 2)
    cos, sin = np.cos(theta), np.sin(theta)
    if form == "decomposed":
        full_cos = np.concatenate([cos, cos], -1)[None, None].astype(F32)
        full_sin = np.concatenate([sin, sin], -1)[None, None].astype(F32)
        model = make_model(_rotate_half(), [tensor("x", ["N", 2, 3, 4])], [tensor("y", [None] * 4)],
                           {"cos": full_cos, "sin": full_sin, "s0": np.array([0], np.int64),
                            "s1": np.array([2], np.int64), "s2": np.array([4], np.int64),
                            "ax": np.array([-1], np.int64)})
    else:
        model = _rotary23(cos, sin)
    x = g.normal(size=(2, 2, 3, 4)).astype(F32)
    y = forward(model, {"x": x})[0].astype(np.float64)
    R = seed_like(y, g)
    res = explain_dense(model, {"x": x}, R, {"affine": ("epsilon", {"epsilon": 0.0}),
                                            "sum": ("norm", {"stabilizer": 0.0})})
    J, _ = linearise(model, "x", (1, 2, 3, 4))
    for n in range(2):
        s = R[n].reshape(-1).astype(np.float64) / y[n].reshape(-1)
        assert_close(res.relevance["x"][n].reshape(-1), x[n].reshape(-1) * (J.T @ s), 1e-4, f"sample {n}")
    assert res.conservation_error(R) < 1e-5


def _rotary23(cos, sin):
    """RotaryEmbedding (opset 23) on (N, heads, T, d) with position ids 0..T-1 for every sample (N, T)."""
    return make_model([helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Slice", ["shp", "z", "o"], ["n"]),
                       helper.make_node("Concat", ["n", "t"], ["pshape"], axis=0),
                       helper.make_node("Expand", ["pos1", "pshape"], ["pos"]),
                       helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"])],
                      [tensor("x", ["N", 2, 3, 4])], [tensor("y", [None] * 4)],
                      {"cos": cos.astype(F32), "sin": sin.astype(F32), "pos1": np.arange(3, dtype=np.int64)[None],
                       "z": np.array([0], np.int64), "o": np.array([1], np.int64), "t": np.array([3], np.int64)},
                      opset=NEWEST_OPSET)


def _attention_reference(q, k, v, R, scale, mask=None, causal=False, rule="uniform"):
    """AttnLRP (uniform) / CP-LRP (gate) through softmax(scale * q k^T + mask) v, written out in float64."""
    q, k, v, R = (np.asarray(a, np.float64) for a in (q, k, v, R))
    groups = q.shape[1] // k.shape[1]
    kr, vr = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    qk = q @ np.swapaxes(kr, -1, -2)
    scores = qk * scale
    x = scores + (0.0 if mask is None else mask)
    if causal:
        x = np.where(np.tril(np.ones(x.shape[-2:], bool)), x, -np.inf)
    A = _softmax(x, (-1,))
    Y = A @ vr
    s = R / Y
    half = 0.5 if rule == "uniform" else 1.0
    R_v = (vr * (np.swapaxes(A, -1, -2) @ (s * half))).reshape(v.shape[:2] + (groups,) + v.shape[2:])
    out = {"v": R_v.sum(axis=2) if groups > 1 else R_v[:, :, 0]}
    if rule == "uniform":
        R_A = A * ((s * half) @ np.swapaxes(vr, -1, -2))
        R_x = np.where(A == 0, 0.0, np.where(np.isinf(x), 0.0, x) * (R_A - A * R_A.sum(-1, keepdims=True)))
        R_scores = R_x if mask is None else np.where(R_x == 0, 0.0, scores * R_x / np.where(x == 0, 1, x))
        s2 = R_scores / qk * 0.5
        out["q"] = q * (s2 @ kr)
        R_k = kr * (np.swapaxes(s2, -1, -2) @ q)
        out["k"] = R_k.reshape(k.shape[:2] + (groups,) + k.shape[2:]).sum(axis=2)
    return out


ATTENTION = {"plain": {}, "causal": {"is_causal": 1}, "mask": {}, "gqa": {}}


@pytest.mark.parametrize("case", list(ATTENTION))
@pytest.mark.parametrize("rule", ["uniform", "gate"])
def test_attention_op(case, rule):
    """Attention (opset 23), 4-D inputs: the written-out AttnLRP / CP-LRP, and the identity."""
    g = rng(8)
    kv_heads = 1 if case == "gqa" else 2
    q = g.normal(size=(2, 2, 3, 4)).astype(F32)
    k = g.normal(size=(2, kv_heads, 3, 4)).astype(F32)
    v = g.normal(size=(2, kv_heads, 3, 4)).astype(F32)
    inputs = [tensor("q", ["N", 2, 3, 4]), tensor("k", ["N", kv_heads, 3, 4]), tensor("v", ["N", kv_heads, 3, 4])]
    names, inits = ["q", "k", "v"], {}
    mask = None
    if case == "mask":
        mask = g.normal(size=(3, 3)).astype(F32)
        names.append("m")
        inits["m"] = mask
    node = helper.make_node("Attention", names, ["y"], name="attn", **ATTENTION[case])
    model = make_model([node], inputs, [tensor("y", [None] * 4)], inits, opset=NEWEST_OPSET)
    feeds = {"q": q, "k": k, "v": v}
    y = forward(model, feeds)[0]
    R = seed_like(y, g)
    res = explain_dense(model, feeds, R, {"product": (rule, {"epsilon": 0.0})})
    want = _attention_reference(q, k, v, R, 0.5, mask, case == "causal", rule)
    for name, value in want.items():
        assert_close(res.relevance[name], value, 1e-4, name)
    if rule == "gate":
        assert np.all(res.relevance["q"] == 0) and np.all(res.relevance["k"] == 0)
    assert res.conservation_error(R) < 1e-5
