"""Random transformer graphs written with onnx.helper: pre-norm blocks of multi-head attention (with masks and
rotary embeddings) and MLPs (GELU, ReLU or a gated SiLU), in the spellings the exporters use (fused or decomposed
LayerNorm, decomposed RMSNorm, Where or additive masks), pooled and classified. For the conservation property."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass
class Block:
    """What one random transformer looks like."""

    hidden: int = 8
    heads: int = 2
    layers: int = 1
    norm: str = "layernorm"        # layernorm | layernorm_decomposed | rmsnorm
    mlp: str = "gelu"              # gelu | relu | gated
    mask: str = "none"             # none | causal | additive
    rotary: bool = False
    classes: int = 3


@dataclass
class Graph:
    """Nodes and initializers under construction."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0

    def name(self, kind: str) -> str:
        """A fresh value name."""
        self.count += 1
        return f"{kind}_{self.count}"

    def const(self, array, dtype=np.float32) -> str:
        """An initializer."""
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list, **attrs) -> str:
        """One node, its output's name."""
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out + "_node", **attrs))
        return out

    def linear(self, x: str, fan_in: int, fan_out: int) -> str:
        """x @ W + b with random W and b."""
        w = self.const(self.rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in))
        return self.op("Add", [self.op("MatMul", [x, w]), self.const(0.1 * self.rng.normal(size=fan_out))])

    def norm(self, x: str, kind: str, size: int) -> str:
        """LayerNorm (fused or decomposed) or RMSNorm (decomposed), with random scale (and bias)."""
        w = self.const(1 + 0.2 * self.rng.normal(size=size))
        b = self.const(0.1 * self.rng.normal(size=size))
        if kind == "layernorm":
            return self.op("LayerNormalization", [x, w, b], axis=-1, epsilon=1e-5)
        axes = self.const([-1], np.int64)
        if kind == "layernorm_decomposed":
            d = self.op("Sub", [x, self.op("ReduceMean", [x], axes=[-1])])
            var = self.op("ReduceMean", [self.op("Pow", [d, self.const(2.0)])], axes=[-1])
            std = self.op("Sqrt", [self.op("Add", [var, self.const(1e-5)])])
            return self.op("Add", [self.op("Mul", [self.op("Div", [d, std]), w]), b])
        del axes
        ms = self.op("ReduceMean", [self.op("Mul", [x, x])], axes=[-1])
        inv = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [ms, self.const(1e-5)])])])
        return self.op("Mul", [w, self.op("Mul", [x, inv])])


def _heads(g: Graph, x: str, spec: Block, seq: int) -> str:
    """(N, T, H) -> (N, heads, T, d)."""
    d = spec.hidden // spec.heads
    return g.op("Transpose", [g.op("Reshape", [x, g.const([0, seq, spec.heads, d], np.int64)])], perm=[0, 2, 1, 3])


def _rotary(g: Graph, x: str, spec: Block, seq: int) -> str:
    """q * cos + rotate_half(q) * sin with constant tables (N, heads, T, d)."""
    d = spec.hidden // spec.heads
    theta = g.rng.normal(size=(seq, d // 2))
    cos, sin = (g.const(np.concatenate([f(theta)] * 2, -1)[None, None]) for f in (np.cos, np.sin))
    half = [g.const([v], np.int64) for v in (0, d // 2, d)]
    axis = g.const([-1], np.int64)
    x1, x2 = g.op("Slice", [x, half[0], half[1], axis]), g.op("Slice", [x, half[1], half[2], axis])
    rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])])


def _attention(g: Graph, x: str, spec: Block, seq: int, mask: str) -> str:
    """Multi-head self-attention with a mask and optional rotary embeddings; the output projection."""
    q, k, v = (_heads(g, g.linear(x, spec.hidden, spec.hidden), spec, seq) for _ in range(3))
    if spec.rotary:
        q, k = _rotary(g, q, spec, seq), _rotary(g, k, spec, seq)
    scores = g.op("Div", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                          g.const(np.sqrt(spec.hidden // spec.heads))])
    if spec.mask == "causal":
        tril = g.const(np.tril(np.ones((seq, seq), bool)), np.bool_)
        scores = g.op("Where", [tril, scores, g.const(np.finfo(np.float32).min)])
    elif spec.mask == "additive":
        scores = g.op("Add", [scores, mask])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    merged = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.const([0, seq, spec.hidden], np.int64)])
    return g.linear(merged, spec.hidden, spec.hidden)


def _mlp(g: Graph, x: str, spec: Block) -> str:
    """GELU (erf form, decomposed), ReLU or gated SiLU MLP."""
    inner = 2 * spec.hidden
    h = g.linear(x, spec.hidden, inner)
    if spec.mlp == "gelu":
        erf = g.op("Erf", [g.op("Div", [h, g.const(np.sqrt(2.0))])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, g.const(1.0)])]), g.const(0.5)])
    elif spec.mlp == "relu":
        h = g.op("Relu", [h])
    else:
        up = g.linear(x, spec.hidden, inner)
        h = g.op("Mul", [g.op("Mul", [h, g.op("Sigmoid", [h])]), up])
    return g.linear(h, inner, spec.hidden)


def transformer(spec: Block, seq: int, seed: int) -> onnx.ModelProto:
    """x (N, T, H) [+ mask (N, T) int64] -> blocks -> mean over T -> classifier (N, classes)."""
    g = Graph(np.random.default_rng(seed))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, spec.hidden])]
    mask = ""
    if spec.mask == "additive":
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", seq]))
        m = g.op("Cast", [g.op("Unsqueeze", ["mask", g.const([1, 2], np.int64)])], to=TensorProto.FLOAT)
        mask = g.op("Mul", [g.op("Sub", [g.const(1.0), m]), g.const(np.finfo(np.float32).min)])
    h = "x"
    for _ in range(spec.layers):
        h = g.op("Add", [h, _attention(g, g.norm(h, spec.norm, spec.hidden), spec, seq, mask)])
        h = g.op("Add", [h, _mlp(g, g.norm(h, spec.norm, spec.hidden), spec)])
    pooled = g.op("ReduceMean", [g.norm(h, spec.norm, spec.hidden)], axes=[1], keepdims=0)
    w = g.const(g.rng.normal(size=(spec.hidden, spec.classes)))
    g.nodes.append(helper.make_node("Gemm", [pooled, w, g.const(0.1 * g.rng.normal(size=spec.classes))], ["y"],
                                    name="classifier"))
    graph = helper.make_graph(g.nodes, "transformer", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", spec.classes])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    onnx.checker.check_model(model)
    return model
