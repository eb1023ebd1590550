"""Dropping what a graph does not use: nodes no output depends on, and the initializers and value infos they leave.

Canonicalisation folds BatchNormalization into the linear node next to it and bypasses a trailing Softmax; the
source model's tensors it replaced stay in the graph until this pass removes them (onnxruntime prints one
`CleanUnusedInitializersAndNodeArgs` warning per unused initializer, and the file would carry them).
"""
from __future__ import annotations

from typing import Iterable, Set

import onnx


def _read_names(node: onnx.NodeProto) -> Set[str]:
    """Every value a node reads: its inputs and, for control flow, whatever its subgraphs read from outside."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        graphs: Iterable[onnx.GraphProto] = list(attribute.graphs)
        if attribute.HasField("g"):
            graphs = [attribute.g, *graphs]
        for graph in graphs:
            for inner in graph.node:
                names |= _read_names(inner)
    return names


def prune_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove, in place, the nodes no graph output depends on and the initializers and value infos nobody reads
    or produces any more; graph inputs stay (they are the model's interface). Returns the model."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output if name):
            kept.append(node)
            needed |= _read_names(node)
    kept.reverse()
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    produced = {name for node in kept for name in node.output if name}
    initializers = [t for t in graph.initializer if t.name in needed]
    if len(initializers) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(initializers)
    sparse = [t for t in graph.sparse_initializer if t.values.name in needed]
    if len(sparse) != len(graph.sparse_initializer):
        del graph.sparse_initializer[:]
        graph.sparse_initializer.extend(sparse)
    infos = [v for v in graph.value_info if v.name in produced or v.name in needed]
    if len(infos) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(infos)
    return model
