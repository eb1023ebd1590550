"""The `gradient` composite: gradient x input from the same compiler, every node passing its plain vector-Jacobian
product (onnxlrp/vjp.py) instead of a relevance rule.

The compiled model has the same outputs as an LRP one, so that every report, the runtime and `evaluate` read it
alike, with these meanings (f = the explained logit, g = df/dx):

    lrp/relevance/<x>   x * g                                   gradient x input
    lrp/bias/<node>     b * df/db per unit                      for every constant bias of a linear node
    lrp/stabilizer      f - sum(x * g) - sum(b * df/db)         the remainder: what the first-order terms miss
    lrp/total           f
    lrp/gradient/<x>    g                                       the raw gradient (Integrated Gradients, SmoothGrad)

Gradient x input is not conservative in general; the identity total = inputs + biases + stabilizer holds by
construction, the stabilizer output carrying the remainder. For a network built of linear ops, ReLUs and max pools
(piecewise linear), f is, around x, linear in the inputs and biases together, so f = sum x df/dx + sum b df/db:
the remainder is zero to rounding, and the relevance and bias outputs equal LRP-0's (the `zero` composite).
Curved activations (tanh, GELU, SiLU, sigmoid gates) leave a non-zero remainder.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Sequence, Union

import onnx
from onnx import helper

from .builder import GraphBuilder
from .canonicalize import canonicalize, explained_tensor
from .compiler import (DOMAIN_HINTS, CUSTOM_DOMAIN_HINT, HINTS, METADATA_KEY, Plan, _assemble,
                       _blame_inconsistent_models, _non_finite, _seed, relevance_path, working_dtype)
from .emitters import NodeView
from .errors import CompileError, NodeProblem, OnnxLrpError, UnsupportedModelError
from .graph import GraphIndex, ModelLike, load_model, opset_version
from .rules import Rule
from .vjp import lookup_vjp

GRADIENT = "gradient"
DESCRIPTION = ("gradient x input: every node passes its vector-Jacobian product (a baseline, not LRP); bias outputs "
               "b * df/db, the stabilizer the remainder")
GRADIENT_OUTPUT = "lrp/gradient/"


class Gradient(Rule):
    """The plain vector-Jacobian product (not an LRP rule: the mode of the `gradient` composite)."""

    name = "gradient"


def is_gradient(composite) -> bool:
    """True for the name of the gradient composite (`gradient`)."""
    return isinstance(composite, str) and composite.strip().lower() == GRADIENT


def plan_gradient(model: onnx.ModelProto, output: Optional[str]) -> Plan:
    """Canonical model -> Plan whose every node has a VJP; UnsupportedModelError lists every node that has none."""
    index = GraphIndex.build(model)
    out_name, explained = explained_tensor(model, output)
    path = relevance_path(index, explained)
    if explained not in path:
        raise OnnxLrpError(f"output {out_name!r} does not depend on any floating-point input: nothing to explain")
    nodes = [n for n in index.order if any(o in path for o in n.output)]
    plan = Plan(index, explained, out_name, path, nodes)
    problems = []
    for node in nodes:
        view = NodeView(node, index, frozenset(i for i in node.input if i in path))
        plan.views[node.name] = view
        if node.domain not in ("", "ai.onnx"):
            problems.append(NodeProblem(node.op_type, node.name, f"custom domain {node.domain!r}",
                                        DOMAIN_HINTS.get(node.domain, CUSTOM_DOMAIN_HINT)))
            continue
        broken = [i for i in node.input if _non_finite(index.constants.get(i))]
        if broken:
            problems.append(NodeProblem(node.op_type, node.name, f"its constant input {broken[0]!r} holds NaN or Inf",
                                        "the model file is corrupt or its training diverged"))
            continue
        spec = lookup_vjp(view)
        if spec is None:
            problems.append(NodeProblem(node.op_type, node.name, "no gradient (VJP) for this op",
                                        HINTS.get(node.op_type, "")))
            continue
        reason = spec.check(view) if spec.check else None
        if reason:
            problems.append(NodeProblem(node.op_type, node.name, reason))
            continue
        plan.specs[node.name] = spec
        plan.rules[node.name] = Gradient()
    if problems:
        raise UnsupportedModelError(problems)
    return plan


@_blame_inconsistent_models
def compile_gradient(model: Union[ModelLike, onnx.ModelProto], *, params: Optional[dict] = None,
                     output: Optional[str] = None, init: str = "logit",
                     node_relevance: Union[None, str, Sequence[str]] = None) -> onnx.ModelProto:
    """Compile a model into one graph computing its outputs, gradient x input of every float input, b * df/db of
    every biased linear node, the remainder (as the stabilizer), the logit (total) and the raw gradients."""
    if init != "logit":
        raise OnnxLrpError(f"the gradient composite explains the logit: init must be 'logit', got {init!r}")
    if params:
        raise OnnxLrpError(f"the gradient composite has no parameters (got: {', '.join(sorted(params))})")
    if node_relevance is not None:
        raise OnnxLrpError("node_relevance is not available with the gradient composite")
    source = load_model(model)
    if METADATA_KEY in {p.key for p in source.metadata_props}:
        raise OnnxLrpError("this model is already compiled by onnxlrp; compile the original model instead")
    canon = canonicalize(source)
    plan = plan_gradient(canon, output)
    index = plan.index
    explained_info = index.info(plan.explained)
    if explained_info is None:
        raise OnnxLrpError(f"the type of the explained value {plan.explained!r} is unknown")
    dtype = working_dtype(explained_info.elem_type)
    b = GraphBuilder(canon, opset_version(canon), dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    b.foreign = {name for name, info in index.infos.items() if info.is_float and info.elem_type != elem}
    explained_rank = len(explained_info.shape) if explained_info.shape is not None else None
    seed, _, _, _ = _seed(b, plan.explained, "one", explained_rank)  # the one-hot (or mask) cotangent df/dy
    total = b.per_sample_sum(b.op("Mul", [seed, plan.explained], "logit_picked"), "logit")
    cotangents: dict = {plan.explained: [seed]}
    bias_values = {}
    for node in reversed(plan.nodes):
        outs = [b.add_all(cotangents[o], "g_sum") if cotangents.get(o) else None for o in node.output]
        if all(g is None for g in outs):
            continue
        outs = [g if (g is not None or not o) else b.zeros_like(o, "g_none") for g, o in zip(outs, node.output)]
        b.scope = f"lrp/_/{node.name}"
        try:
            back = plan.specs[node.name].fn(b, plan.views[node.name], outs)
        except OnnxLrpError as exc:
            raise CompileError(f"node {node.name!r} ({node.op_type}, gradient): {exc}") from None
        except Exception as exc:  # a VJP bug must still name the node
            raise CompileError(f"node {node.name!r} ({node.op_type}, gradient) failed to compile: "
                               f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        b.scope = "lrp/_"
        for inp, g in zip(node.input, back.inputs):
            if g is not None and inp in plan.path:
                cotangents.setdefault(inp, []).append(g)
        if back.bias is not None:
            bias_values[node.name] = back.bias
    contributions, gradients, parts = {}, {}, []
    for name in index.graph_inputs:
        info = index.info(name)
        if info is None or not info.is_float:
            continue
        grad = b.add_all(cotangents[name], "g_in") if cotangents.get(name) else b.zeros_like(name, "g_in0")
        gradients[name] = b.op_named("Identity", [grad], GRADIENT_OUTPUT + name)
        relevance = b.op("Mul", [name, grad], "x_times_g")
        contributions[name] = [relevance]
        parts.append(b.per_sample_sum(relevance, "x_g_sum"))
    parts += [b.per_sample_sum(value, "b_g_sum") for value in bias_values.values()]
    remainder = b.op("Sub", [total, b.add_all(parts, "first_order")], "remainder") if parts else total
    extra = [helper.make_tensor_value_info(out, elem, _shape(index.info(name).shape))
             for name, out in gradients.items()]
    composite = SimpleNamespace(name=GRADIENT, params={})
    compiled = _assemble(source, canon, plan, b, contributions, bias_values, [("remainder", remainder)], {}, total,
                         composite, init, None, extra_outputs=extra, extra_meta={"gradient": gradients})
    return compiled


def _shape(shape) -> list:
    """Declared dims of a gradient output: like its input, the batch axis left open."""
    if shape is None:
        return [None]
    return [d if isinstance(d, int) and d > 0 and i > 0 else None for i, d in enumerate(shape)]
