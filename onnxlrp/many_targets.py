"""Many targets per run: a compiled graph rewritten so that one session.run explains K targets of every sample.

The forward pass, every denominator, mask and gate of the rules depend on the inputs alone; only the nodes downstream
of the seed (the `lrp_target` / `lrp_target_mask` inputs) differ between targets. `many_targets(compiled, K)` keeps
the first part once and moves the second into the body of a Loop of K iterations, iteration k reading column k of
`lrp_target` (N, K) and the forward values from the outer scope. Every output that depends on the target is stacked
on a new axis 0: relevance (K, N, ...), bias (K, N, units), stabilizer and total (K, N). Iteration k computes
exactly the nodes of a single-target run on the same forward values. (A first version copied those nodes K times:
onnxruntime's session start grows faster than linearly with the node count, 30 s for 4 copies of MobileNetV2's
gamma graph against 2 s for one; the Loop keeps one copy.)

In `lrp_target` (N, K), a value t >= 0 is a class; a negative value -(r + 1) is the sample's class of rank r by
output value (-1: the argmax, as in a single-target graph; -2: the runner-up; ...), resolved in the graph with TopK
(ties: the lower index first, as ArgMax).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .compiler import TARGET_INPUT
from .errors import OnnxLrpError
from .graph import opset_version
from .targets import MASK_INPUT


def _dependent(graph: onnx.GraphProto, roots: set) -> list:
    """Flags, per node in graph order, whether the node reads (transitively) one of the roots."""
    names, flags = set(roots), []
    for node in graph.node:
        hit = any(i in names for i in node.input)
        if hit and any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise OnnxLrpError(f"node {node.name!r} ({node.op_type}) has a subgraph on the relevance path: explain "
                               f"one target per call for this model")
        if hit:
            names.update(o for o in node.output if o)
        flags.append(hit)
    return flags


class _Names:
    """Fresh names that collide with none of the graph's."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = {i.name for i in graph.input} | {t.name for t in graph.initializer}
        self.taken |= {o for n in graph.node for o in list(n.output) + list(n.input)}
        self.taken |= {n.name for n in graph.node}

    def fresh(self, base: str) -> str:
        """base, or base with underscores appended until it is free."""
        name = base
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name


def many_targets(compiled: onnx.ModelProto, k: int, explained: str) -> tuple:
    """(the compiled model rewritten for K targets per sample, the names of the outputs stacked on a new axis 0);
    explained is the explained value (metadata 'explained'), whose ranking resolves negative targets."""
    if k < 1:
        raise OnnxLrpError(f"the number of targets must be at least 1, got {k}")
    model = onnx.ModelProto()
    model.CopyFrom(compiled)
    graph = model.graph
    flags = _dependent(graph, {TARGET_INPUT, MASK_INPUT})
    dependent = {o for node, hit in zip(graph.node, flags) if hit for o in node.output if o}
    stacked = [o for o in graph.output if o.name in dependent]
    names = _Names(graph)
    opset = opset_version(model)
    new_inits: list = []
    head: list = []  # the ranking of the classes, once, before the loop
    body: list = []  # one target's part of the graph, the loop's body
    emit = head

    def const(values, dtype=np.int64) -> str:
        """An int64 initializer with a fresh name (outer scope: the body reads it too)."""
        name = names.fresh("lrp/targets/const")
        new_inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(op_type: str, inputs: list, hint: str, outputs: int = 1, **attrs) -> list:
        """A node with fresh output names; returns them."""
        outs = [names.fresh(f"lrp/targets/{hint}") for _ in range(outputs)]
        emit.append(helper.make_node(op_type, inputs, outs, name=names.fresh(f"lrp/targets/{hint}_node"), **attrs))
        return outs

    def unsqueeze(value: str, axis: int, hint: str) -> str:
        """Unsqueeze at one axis (axes as input from opset 13, as attribute before)."""
        if opset >= 13:
            return op("Unsqueeze", [value, const([axis])], hint)[0]
        return op("Unsqueeze", [value], hint, axes=[axis])[0]

    # the classes ranked by output value, as deep as the most negative target asks (TopK, once per run)
    flat = op("Reshape", [explained, const([0, -1])], "flat")[0]
    depth = op("Gather", [op("Shape", [flat], "flat_shape")[0], const(1)], "depth")[0]
    deepest = op("ReduceMax", [op("Neg", [TARGET_INPUT], "negated")[0]], "deepest", keepdims=0)[0]
    count = op("Min", [op("Max", [deepest, const(1)], "at_least_one")[0], depth], "rank_count")[0]
    ranked = op("TopK", [flat, unsqueeze(count, 0, "rank_count_1d")], "ranked", outputs=2, axis=1)[1]

    # the body, iteration j: column j's target (t >= 0 as given, -(r + 1) the class of rank r), then every node
    # downstream of the seed, reading the forward values from the outer scope
    emit = body
    step, cond_in = names.fresh("lrp/targets/step"), names.fresh("lrp/targets/cond_in")
    column = op("Gather", [TARGET_INPUT, step], "column", axis=1)[0]
    rank = op("Max", [op("Sub", [const(-1), column], "rank")[0], const(0)], "rank_clipped")[0]
    by_rank = op("GatherElements", [ranked, unsqueeze(rank, 1, "rank_col")], "by_rank", axis=1)[0]
    by_rank = op("Squeeze", [by_rank, const([1])] if opset >= 13 else [by_rank], "by_rank_flat",
                 **({} if opset >= 13 else {"axes": [1]}))[0]
    chosen = op("Where", [op("Less", [column, const(0)], "column_negative")[0], by_rank, column], "target")[0]
    mapping = {TARGET_INPUT: chosen}
    mapping.update({o.name: names.fresh(f"{o.name}/one_target") for o in stacked})  # no shadowing of the outputs
    for node, hit in zip(graph.node, flags):
        if hit:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [mapping.get(i, i) for i in node.input]
            copy.output[:] = [mapping.get(o, o) for o in node.output]
            body.append(copy)
    cond_out = op("Identity", [cond_in], "cond_out")[0]
    body_graph = helper.make_graph(
        body, "lrp_one_target",
        [helper.make_tensor_value_info(step, onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(cond_out, onnx.TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(mapping[o.name], o.type.tensor_type.elem_type, None) for o in stacked])
    loop = helper.make_node("Loop", [const(k), ""], [o.name for o in stacked], name=names.fresh("lrp/targets/loop"),
                            body=body_graph)
    for out in stacked:
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims.insert(0, onnx.TensorShapeProto.Dimension(dim_value=k))
    kept = [node for node, hit in zip(graph.node, flags) if not hit]
    graph.ClearField("node")
    graph.node.extend(kept + head + [loop])
    graph.initializer.extend(new_inits)
    keep_info = [vi for vi in graph.value_info if vi.name not in dependent]
    graph.ClearField("value_info")
    graph.value_info.extend(keep_info)
    for vi in graph.input:
        if vi.name == TARGET_INPUT:
            vi.type.tensor_type.shape.dim.add().dim_value = k
    return model, {o.name for o in stacked}
