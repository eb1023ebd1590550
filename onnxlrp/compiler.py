"""compile(): load -> canonicalize -> assign rules -> check support (all problems at once) -> emit -> model."""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from . import __version__
from .batch import DEFAULT as DEFAULT_LAYOUT, batch_layouts
from .builder import DEFAULT_MAX_CONSTANT_BYTES, GraphBuilder
from .canonicalize import canonicalize, explained_tensor
from .composites import Composite, load_composite
from .emitters import NodeView, accepted_rules, lookup
from .errors import (ArgumentError, ArgumentTypeError, CompileError, ModelLoadError, NodeProblem, OnnxLrpError,
                     UnsupportedModelError)
from .fold import fold_constants
from .graph import FLOAT_TYPES, GraphIndex, ModelLike, all_inputs, inconsistency, load_model, opset_version
from .prune import prune_unused
from .recurrent import RECURRENT_OPS, unroll_problem
from .shapes import annotate_shapes, check_model
from .trust import CONSERVATION_KEY, DIGEST_KEY, graph_digest, parse_metadata
from .targets import MASK_INPUT, mask_input_info, masked_seed
from .specialise import NeedsStaticSize, StaticSizeError, specialise, static_size_hint
from .tails import batched_bias, stabilizer_total
from .vanishing import vanishing_nonpositive, vanishing_values

METADATA_KEY = "onnxlrp"
# graph outputs that carry forward values or the seed, not relevance: _unscale_outputs leaves them alone
UNSCALED_OUTPUTS = ("lrp/total", "lrp/output")
LOW_PRECISION_FLOATS = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
TARGET_INPUT = "lrp_target"
POSITION_INPUT = "lrp_position"  # (N,) or (1,) int64, default -1: the position of a sequence output (N, T, C)
NONNEGATIVE_OPS = {"Relu", "Sigmoid", "Softplus", "HardSigmoid", "Abs", "Exp", "Softmax"}
NONNEGATIVE_IF_INPUTS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten",
                         "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat", "Add", "Sum", "Pad",
                         "Slice", "Gather", "Expand", "Resize", "Split"}
HINTS = {
    "LogSoftmax": "only a LogSoftmax on the explained output is bypassed; export the logits",
    "If": "control flow is not supported: export with static control flow (torch.jit.trace / dynamo with fixed branches)",
    "Loop": "control flow is not supported: unroll the loop at export time",
    "Scan": "control flow is not supported: unroll the scan at export time",
    "Einsum": "rewrite the contraction as MatMul or Gemm with a constant operand",
    "Upsample": "Upsample is deprecated: re-export with opset >= 10 (Resize)",
    **{op: "quantized graphs are not supported: explain the float model before quantization"
       for op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                  "MatMulInteger", "ConvInteger")},
}
DOMAIN_HINTS = {
    "com.microsoft": "an onnxruntime contrib op (fused by graph optimisation?): explain the model as exported, "
                     "before onnxruntime's optimisations",
}
CUSTOM_DOMAIN_HINT = "custom ops cannot be explained: export with standard ONNX ops"
ML_DOMAINS = ("ai.onnx.ml",)
ML_REASON = "no relevance rule for this classical-ML op (Scaler, LinearRegressor and LinearClassifier have one)"
ML_REASONS = {
    "Normalizer": "it divides each row by its own norm, which is not a linear map: no linear LRP rule applies "
                  "(explain the estimator on normalised features, without the Normalizer)",
}


# ops that carry token ids unchanged from an int graph input to an embedding Gather
INDEX_PRESERVING = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


@dataclass(frozen=True)
class Tokens:
    """Int values that carry relevance: int graph inputs whose values select rows of a constant float table
    (an embedding Gather), the values between them and the Gather, and the nodes that carry them."""

    inputs: frozenset = frozenset()
    values: frozenset = frozenset()
    nodes: frozenset = frozenset()


@dataclass
class Plan:
    """The compile plan: path nodes in topological order, their rules and views."""

    index: GraphIndex
    explained: str
    output: str
    path: set
    nodes: list
    rules: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)
    specs: dict = field(default_factory=dict)
    senders: dict = field(default_factory=dict)  # tensor -> [(consumer node, relevance value)], filled by compile
    seed_scale: Optional[str] = None  # (N,) factor every relevance output is multiplied by (see _seed)
    tokens: Tokens = Tokens()  # int inputs (token ids) that receive relevance through embedding Gathers
    logits: Optional[str] = None  # what lrp/output reports: the explained value, or its row at lrp_position
    layouts: dict = field(default_factory=dict)  # value -> batch.Layout: where the batch axis lies


def _np_dtype(elem_type: int) -> np.dtype:
    """NumPy dtype of an ONNX element type."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def working_dtype(elem_type: int) -> np.dtype:
    """The dtype relevance is computed in: the explained output's, but float32 for float16/bfloat16 models.

    float16 cannot hold LRP's intermediate values: the default stabilizer 1e-6 lies below its smallest normal number
    (6.1e-5), s = R / stab(z) overflows its range (65504) as soon as |R| > 0.066 at a unit with z near 0, and
    onnxruntime's CPU provider has no float16 ScatterElements(add) (max pooling). The forward pass stays in
    float16; the relevance graph reads each forward value through a Cast to float32, and relevance is reported in
    float32."""
    if elem_type in LOW_PRECISION_FLOATS:
        return np.dtype(np.float32)
    return _np_dtype(elem_type)


def _non_finite(array: Optional[np.ndarray]) -> bool:
    """True for a floating-point constant holding NaN or Inf."""
    return array is not None and array.dtype.kind == "f" and not bool(np.all(np.isfinite(array)))


def _is_int(index: GraphIndex, name: str) -> bool:
    """True for a value of a known integer type."""
    info = index.info(name)
    return info is not None and onnx.helper.tensor_dtype_to_np_dtype(info.elem_type).kind in "iu"


def token_values(index: GraphIndex) -> Tokens:
    """Int graph inputs that feed the indices of a Gather (axis 0) of a constant float table, through
    index-preserving ops only (Cast to an int type, Reshape, Unsqueeze, ...): token ids. Their relevance is the
    gathered rows' relevance summed over the row (the hidden axis)."""
    inputs, values, nodes = set(), set(), set()
    for node in index.order:
        table = index.constants.get(node.input[0]) if node.op_type == "Gather" and len(node.input) == 2 else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or table.dtype.kind != "f" or axis != 0 or node.input[1] in index.constants:
            continue
        name, chain, names = node.input[1], [node.name], [node.input[1]]
        while name not in index.graph_inputs:
            producer = index.producer.get(name)
            if producer is None or producer.op_type not in INDEX_PRESERVING or not _is_int(index, name):
                break
            name = producer.input[0]
            chain.append(producer.name)
            names.append(name)
        if name in index.graph_inputs and _is_int(index, name) and all(_is_int(index, n) for n in names):
            inputs.add(name)
            values.update(names)
            nodes.update(chain)
    return Tokens(frozenset(inputs), frozenset(values), frozenset(nodes))


def relevance_path(index: GraphIndex, explained: str, tokens: Tokens = Tokens()) -> set:
    """Float values that depend (through float values only) on a float graph input and feed the explained value,
    plus the token values (int ids that select embedding rows) and what depends on them through the embeddings."""
    reach = {n for n in index.graph_inputs if (index.info(n) is not None and index.info(n).is_float)}
    reach |= tokens.inputs
    for node in index.order:
        if node.name in tokens.nodes:
            reach.update(o for o in node.output if o)
            continue
        if any(i in reach and i not in tokens.values for i in all_inputs(node)):  # implicit inputs too
            for out in node.output:
                info = index.info(out)
                if out and (info is None or info.is_float):
                    reach.add(out)
    path, stack = set(), [explained]
    while stack:
        value = stack.pop()
        if value in path or value not in reach:
            continue
        path.add(value)
        node = index.producer.get(value)
        if node is not None:
            stack.extend(i for i in all_inputs(node) if i in reach)
    return path


def nonnegative_values(index: GraphIndex, path: set) -> frozenset:
    """Values provably >= 0 (ReLU-like outputs and shape/pool ops of such), to skip x- terms."""
    known = set()
    for node in index.order:
        if node.output[0] not in path:
            continue
        data = [i for i in node.input if i in path]
        if node.op_type in NONNEGATIVE_OPS:
            known.update(node.output)
        elif node.op_type == "Clip":
            low = index.constants.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            attr_min = next((a.f for a in node.attribute if a.name == "min"), None)
            if (low is not None and float(np.min(low)) >= 0) or (attr_min is not None and attr_min >= 0):
                known.update(node.output)
        elif node.op_type in NONNEGATIVE_IF_INPUTS and data and all(i in known for i in data):
            if node.op_type in ("Add", "Sum") and any(i not in path for i in node.input if i):
                continue
            known.update(node.output)
    return frozenset(known)


def _prune_silent_branches(plan: "Plan", rules: dict) -> tuple:
    """Drop nodes whose outputs only feed inputs that never receive relevance under their consumer's rule (the
    branch of a sigmoid gate, a normalisation statistic, CP-LRP's queries and keys): they need no rule and no
    emitter. Returns the reduced (path, nodes)."""
    receives = {plan.explained}
    kept = []
    for node in reversed(plan.nodes):
        if not any(o in receives for o in node.output):
            continue
        kept.append(node)
        spec = plan.specs.get(node.name)
        silent = set()
        if spec is not None and spec.silent is not None:
            silent = spec.silent(plan.views[node.name], rules.get(node.name))
        receives.update(i for i in node.input if i in plan.path and i not in silent)
    kept.reverse()
    return {v for v in plan.path if v in receives}, kept


# what onnxruntime's transformer optimizer (onnxruntime.transformers.optimizer) fuses a transformer into
TRANSFORMER_FUSIONS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                       "EmbedLayerNormalization", "BiasGelu", "FastGelu", "GroupQueryAttention", "RotaryEmbedding",
                       "SimplifiedLayerNormalization", "BiasSplitGelu", "BiasAdd", "QuickGelu", "PackedAttention",
                       "PackedMultiHeadAttention", "SkipGroupNorm", "GemmFastGelu", "DecoderMaskedMultiHeadAttention")


def refuse_optimized(index: GraphIndex) -> None:
    """A transformer optimised by onnxruntime (com.microsoft Attention, SkipLayerNormalization, FastGelu, ...) is
    refused in one error that names every com.microsoft node, before anything else is looked at (an
    EmbedLayerNormalization hides even the token ids)."""
    contrib = [n for n in index.order if n.domain == "com.microsoft"]
    if any(n.op_type in TRANSFORMER_FUSIONS for n in contrib):
        problems = [NodeProblem(n.op_type, n.name, "an onnxruntime-fused op (com.microsoft)") for n in contrib]
        raise UnsupportedModelError(problems, lead="this model was optimised by onnxruntime's transformer "
                                    "optimizer; explain the model as exported, before onnxruntime's transformer "
                                    "optimizations")


def plan_model(model: onnx.ModelProto, composite: Composite, output: Optional[str]) -> Plan:
    """Canonical model -> Plan, raising UnsupportedModelError that lists every problem at once."""
    index = GraphIndex.build(model)
    refuse_optimized(index)
    out_name, explained = explained_tensor(model, output)
    tokens = token_values(index)
    path = relevance_path(index, explained, tokens)
    if explained not in path:
        raise OnnxLrpError(f"output {out_name!r} does not depend on any floating-point input: nothing to explain")
    nodes = [n for n in index.order if any(o in path for o in n.output)]
    nonneg = nonnegative_values(index, path)
    plan = Plan(index, explained, out_name, path, nodes, tokens=tokens)
    found: dict = {}  # node name -> NodeProblem
    assignable = []
    for node in nodes:
        # views see the relevance path before pruning: a gate's branch is still "data" the node computes at run time
        view = NodeView(node, index, frozenset(i for i in node.input if i in path), nonneg)
        plan.views[node.name] = view
        problem = _support_problem(node, view, index, model)
        if problem is not None:
            found[node.name] = problem
            continue
        spec = lookup(node.op_type, node.domain)
        plan.specs[node.name] = spec
        assignable.append((node.op_type, spec.group(view), node.name))
    first = {name: rule for name, (rule, _) in composite.assign(assignable).items()}
    plan.path, plan.nodes = _prune_silent_branches(plan, first)
    kept = {n.name for n in plan.nodes}
    problems = [p for name, p in found.items() if name in kept]
    assignable = [entry for entry in assignable if entry[2] in kept]
    assigned = composite.assign(assignable)
    for op_type, group, name in assignable:
        if name not in assigned:
            problems.append(NodeProblem(op_type, name, f"no entry of composite {composite.name!r} matches it "
                                                      f"(group {group!r})"))
            continue
        rule, entry = assigned[name]
        allowed = accepted_rules(plan.specs[name], plan.views[name])
        if not isinstance(rule, allowed):
            names = ", ".join(sorted({r.name for r in allowed}))
            problems.append(NodeProblem(op_type, name, f"rule {rule.name!r} from {entry.where()} does not apply "
                                                      f"(it accepts: {names})"))
            continue
        plan.rules[name] = rule
    if problems:
        raise UnsupportedModelError(problems)
    vanishing = vanishing_values(plan)
    nonpositive = vanishing_nonpositive(plan, vanishing)
    for view in plan.views.values():
        view.vanishing, view.vanishing_nonpositive = vanishing, nonpositive
    return plan


def _support_problem(node: onnx.NodeProto, view: NodeView, index: GraphIndex,
                     model: onnx.ModelProto) -> Optional[NodeProblem]:
    """Why a node cannot be explained (a classical-ML op without a rule, a custom domain, NaN weights, a recurrent
    op left in place, no emitter, its emitter's check), or None."""
    spec = lookup(node.op_type, node.domain)
    if spec is None and node.domain in ML_DOMAINS:
        return NodeProblem(node.op_type, node.name, ML_REASONS.get(node.op_type, ML_REASON))
    if spec is None and node.domain not in ("", "ai.onnx"):
        return NodeProblem(node.op_type, node.name, f"custom domain {node.domain!r}",
                           DOMAIN_HINTS.get(node.domain, CUSTOM_DOMAIN_HINT))
    broken = [i for i in node.input if _non_finite(index.constants.get(i))]
    if broken:  # NaN/Inf weights make every relevance NaN: refuse them instead of explaining garbage
        return NodeProblem(node.op_type, node.name, f"its constant input {broken[0]!r} holds NaN or Inf",
                           "the model file is corrupt or its training diverged")
    if spec is None and node.op_type in RECURRENT_OPS:  # left in place by canonicalisation: say why
        return NodeProblem(node.op_type, node.name, unroll_problem(node, index) or "it was not unrolled")
    if spec is None:
        return NodeProblem(node.op_type, node.name, "no relevance rule for this op", HINTS.get(node.op_type, ""))
    reason = spec.check(view) if spec.check else None
    if not reason:
        return None
    hint = static_size_hint(model) if isinstance(reason, NeedsStaticSize) else ""
    return NodeProblem(node.op_type, node.name, reason, hint)


def is_sequence(plan: "Plan", sequence: Optional[bool]) -> bool:
    """Whether the explained output is a sequence (N, T, C) whose logits at one position (lrp_position) are
    explained: `sequence` when given, else rank 3 with token-id inputs or a sequence axis of unknown length."""
    info = plan.index.info(plan.explained)
    rank3 = info is not None and info.shape is not None and len(info.shape) == 3
    if sequence is not None:
        if sequence and not rank3:
            raise OnnxLrpError(f"sequence=True needs an explained output of rank 3 (N, T, C); {plan.output!r} has "
                               f"shape {info.shape if info is not None else 'unknown'}")
        return bool(sequence)
    return rank3 and (bool(plan.tokens.inputs) or info.shape[1] is None)


def _at_position(b: GraphBuilder, explained: str) -> tuple:
    """(N, T, C) -> ((N, C) logits at lrp_position per sample (negative counts from the end), (N, T, 1) mask)."""
    length = b.op("Gather", [b.op("Shape", [explained], "seq_shape"), b.const(1, dtype=np.int64)], "seq_len")
    position = POSITION_INPUT
    wrapped = b.op("Where", [b.op("Less", [position, b.const(0, dtype=np.int64)], "pos_negative"),
                             b.op("Add", [position, length], "pos_from_end"), position], "pos")
    steps = b.op("Range", [b.const(0, dtype=np.int64), length, b.const(1, dtype=np.int64)], "steps")
    at = b.op("Equal", [b.unsqueeze(wrapped, [1], "pos_col"), steps], "at_pos")
    mask = b.unsqueeze(at, [2], "at_pos_3d")
    row = b.reduce("ReduceSum", b.op("Where", [mask, explained, b.const(0.0)], "y_at_pos"), [1], keepdims=False,
                   hint="y_row")
    return row, mask


def _layout(info) -> str:
    """A value's declared layout: '(N, 10)', with symbolic dims by name and unknown ones as '?'."""
    symbols = info.symbols or (None,) * len(info.shape)
    return "(" + ", ".join(str(d) if d is not None else (s or "?") for d, s in zip(info.shape, symbols)) + ")"


def check_batch_first(index: GraphIndex, out_name: str, explained: str) -> None:
    """Refuse an explained output whose first axis is provably not the inputs' batch axis, or that has no class
    axis to speak of (a scalar, zero classes). Rows of the explained value are taken as samples; an output laid
    out (classes, N) would mix them (with as many samples as classes nothing else would notice). Where the
    declared shapes cannot tell, the runtime checks that the first axis has the batch's size."""
    info = index.info(explained)
    if info is None or info.shape is None:
        return
    what = repr(out_name) if explained == out_name else f"{out_name!r} (explained at {explained!r})"
    if len(info.shape) == 0:
        raise OnnxLrpError(f"output {what} is a scalar: it has no batch axis, nothing to explain per sample")
    if any(d == 0 for d in info.shape[1:]):
        raise OnnxLrpError(f"output {what} has no classes (declared {_layout(info)}): nothing to explain")
    batches = [(name, index.info(name)) for name in index.graph_inputs]
    batches = [(name, i) for name, i in batches if i is not None and i.shape]
    symbols = {i.symbols[0] for _, i in batches if i.symbols and i.symbols[0]}
    sizes = {i.shape[0] for _, i in batches if i.shape[0] is not None}
    if not batches:
        return
    first_name, first = batches[0]
    hint = (f"the inputs' batch axis is the first axis of {first_name!r} {_layout(first)}; explain a batch-first "
            f"output (transpose it in the model) or another output (--output)")
    own = info.symbols or (None,) * len(info.shape)
    for axis, symbol in enumerate(own[1:], start=1):
        if symbol is not None and symbol in symbols and symbol != own[0]:
            raise OnnxLrpError(f"output {what} is laid out {_layout(info)}: its batch axis {symbol!r} is axis {axis}, "
                               f"not the first; {hint}")
    d0 = info.shape[0]
    if d0 is None:
        return
    if sizes and not symbols and d0 not in sizes:
        raise OnnxLrpError(f"output {what} is laid out {_layout(info)}: its first axis ({d0}) is not the batch axis "
                           f"({', '.join(map(str, sorted(sizes)))}); {hint}")
    if symbols and not sizes and d0 > 1:
        raise OnnxLrpError(f"output {what} is laid out {_layout(info)}: its first axis has the fixed size {d0} while "
                           f"the batch axis is free; {hint} (a model that only runs with batches of {d0} should "
                           f"declare its input so)")


def _seed(b: GraphBuilder, explained: str, init: str, rank: Optional[int] = None, sequence: bool = False) -> tuple:
    """Initial relevance: the explained value at the target (logit) or one-hot (one), or the target mask times the
    explained value (or the mask), divided by its magnitude; for a sequence output (N, T, C) at position
    lrp_position only (targets and masks then refer to that (N, C) row); returns (unit seed, total, (N,) scale,
    logits)."""
    logits, mask = _at_position(b, explained) if sequence else (explained, None)
    flat = b.op("Reshape", [logits, b.ints([0, -1])], "y_flat")
    target = TARGET_INPUT
    argmax = b.op("ArgMax", [flat], "argmax", axis=1, keepdims=0)
    use_argmax = b.op("Less", [target, b.const(0, dtype=np.int64)], "use_argmax")
    chosen = b.op("Where", [use_argmax, argmax, target], "target_used")
    depth = b.op("Gather", [b.op("Shape", [flat], "y_shape"), b.const(1, dtype=np.int64)], "depth")
    classes = b.op("Range", [b.const(0, dtype=np.int64), depth, b.const(1, dtype=np.int64)], "classes")
    is_target = b.op("Equal", [b.unsqueeze(chosen, [1], "target_col"), classes], "is_target")
    value = flat if init == "logit" else b.const(1.0)
    seed_flat = b.op("Where", [is_target, value, b.const(0.0)], "seed_flat")
    seed_flat = masked_seed(b, logits, value, seed_flat, 2 if sequence else rank)  # lrp_target_mask, if given
    total = b.reduce("ReduceSum", seed_flat, [1], keepdims=False, hint="total")
    # Relevance is linear in the seed (every rule maps R linearly for a fixed forward pass), so the backward pass
    # runs on a unit seed, seed / |total| per sample, and _unscale_outputs multiplies every relevance output back.
    # Without it s = R / stab(z) overflows once |R| > eps * max_float (1e-6 * 3.4e38 in float32, inputs near
    # 1e30-1e35): a unit whose z is exactly 0 (a receptive field of zeros, the z+ of a dead layer) gets s = inf, and
    # inf * 0 (a zero input or a zero weight in x * W^T s) is NaN, which then spreads to every input.
    magnitude = b.op("Abs", [total], "seed_abs")
    is_zero = b.op("Equal", [magnitude, b.const(0.0)], "seed_is_zero")
    scale = b.op("Where", [is_zero, b.const(1.0), magnitude], "seed_scale")
    unit = b.op("Div", [seed_flat, b.unsqueeze(scale, [1], "seed_scale_col")], "seed_unit")
    if sequence:
        seed = b.op("Where", [mask, b.unsqueeze(unit, [1], "seed_row"), b.const(0.0)], "seed")
        return seed, total, scale, logits
    seed = b.op("Reshape", [unit, b.op("Shape", [explained], "y_full_shape")], "seed")
    return seed, total, scale, logits


def _blame_inconsistent_models(fn):
    """Decorator: a crash while compiling a model that strict ONNX shape inference rejects (a Conv whose kernel_shape
    contradicts its weight, ...) becomes a ModelLoadError saying so; on a consistent model the crash, an onnxlrp bug,
    propagates unchanged. NumPy's floating-point warnings are off while compiling."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        try:
            # NaN/Inf in a broken model's weights must end in one error line, not NumPy warnings on stderr first:
            # non-finite constants are refused (plan_model) and overflowing relevance is reported (runtime)
            with np.errstate(all="ignore"):
                return fn(model, *args, **kwargs)
        except Exception as exc:
            crashed = not isinstance(exc, OnnxLrpError) or (
                isinstance(exc, CompileError) and exc.__cause__ is not None
                and not isinstance(exc.__cause__, OnnxLrpError))
            problem = inconsistency(model) if crashed else None
            if problem is None:
                raise
            raise ModelLoadError(problem) from exc
    return wrapper


@_blame_inconsistent_models
def compile(model: Union[ModelLike, onnx.ModelProto], composite: Union[str, Composite] = "epsilon_plus", *,
            params: Optional[dict] = None, output: Optional[str] = None, init: str = "logit",
            node_relevance: Union[None, str, Sequence[str]] = None,
            max_constant_bytes: Optional[int] = None,
            shapes: Optional[Mapping[str, Sequence[Optional[int]]]] = None,
            sequence: Optional[bool] = None) -> onnx.ModelProto:
    """Compile a model into one graph computing its outputs plus the LRP relevance of every float input (and of
    token ids), the bias relevance of every biased node, the stabilizer share and the total (seed) per sample. The
    compiled graph accepts every input size the model accepts; `shapes` ({input: dims}, -1 for an axis left dynamic)
    specialises it to one size first.

    max_constant_bytes (default 256 MiB) bounds every constant the compiler builds from declared dimensions (a
    Gather on an axis declared 10^9 long, a Resize of a huge image): beyond it the node is refused in one line.
    sequence: explain one position of an (N, T, C) output (lrp_position); None decides (see is_sequence)."""
    node_relevance = check_compile_arguments(model, composite, params, output, init, node_relevance,
                                             max_constant_bytes)
    from .gradient import compile_gradient, is_gradient
    if is_gradient(composite):  # gradient x input: a VJP backward pass instead of relevance rules (gradient.py)
        return compile_gradient(model, params=params, output=output, init=init, node_relevance=node_relevance)
    source = load_model(model)
    if METADATA_KEY in {p.key for p in source.metadata_props}:
        raise OnnxLrpError("this model is already compiled by onnxlrp; compile the original model instead")
    specialise(source, shapes)
    comp = load_composite(composite, params)
    check_reserved_names(source)
    canon = canonicalize(fold_constants(source))
    plan = plan_model(canon, comp, output)
    index = plan.index
    check_batch_first(index, plan.output, plan.explained)
    explained_info = index.info(plan.explained)
    if explained_info is None:
        raise OnnxLrpError(f"the type of the explained value {plan.explained!r} is unknown")
    dtype = working_dtype(explained_info.elem_type)
    b = GraphBuilder(canon, opset_version(canon), dtype,
                     DEFAULT_MAX_CONSTANT_BYTES if max_constant_bytes is None else max_constant_bytes)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    b.foreign = {name for name, info in index.infos.items() if info.is_float and info.elem_type != elem}
    sequence = is_sequence(plan, sequence)
    explained_rank = len(explained_info.shape) if explained_info.shape is not None else None
    seed, total, plan.seed_scale, logits = _seed(b, plan.explained, init, explained_rank, sequence)
    plan.logits = logits
    contributions: dict = {plan.explained: [seed]}
    bias_values, stab_values = {}, []
    relevance_of: dict = {}
    plan.layouts = batch_layouts(index, plan.path, [i for i in index.graph_inputs if i in plan.path])
    b.batch_input = next((i for i in index.graph_inputs if i in plan.path), None)
    for node in reversed(plan.nodes):
        out = next((o for o in node.output if o in plan.layouts), node.output[0])
        b.layout = plan.layouts.get(out, DEFAULT_LAYOUT)
        outs = [b.add_all(contributions[o], "R_sum") if contributions.get(o) else None for o in node.output]
        if all(r is None for r in outs):
            continue
        outs = [r if (r is not None or not o) else b.zeros_like(o, "R_none") for r, o in zip(outs, node.output)]
        for o, r in zip(node.output, outs):
            relevance_of[o] = r
        rule = plan.rules[node.name]
        b.scope = f"lrp/_/{node.name}"
        try:
            emitted = plan.specs[node.name].fn(b, plan.views[node.name], rule, outs)
        except OnnxLrpError as exc:  # a CompileBudgetError stays one, with the node named
            kind = type(exc) if isinstance(exc, CompileError) else CompileError
            hint = f" [{static_size_hint(source)}]" if isinstance(exc, StaticSizeError) else ""
            raise kind(f"node {node.name!r} ({node.op_type}, rule {rule.name}): {exc}{hint}") from None
        except Exception as exc:  # an emitter bug must still name the node
            raise CompileError(f"node {node.name!r} ({node.op_type}, rule {rule.name}) failed to compile: "
                               f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        b.scope, b.layout = "lrp/_", DEFAULT_LAYOUT
        for inp, r in zip(node.input, emitted.inputs):
            if r is not None and inp in plan.path:
                contributions.setdefault(inp, []).append(r)
                plan.senders.setdefault(inp, []).append((node.name, r))
        if emitted.bias is not None:
            bias_values[node.name] = emitted.bias
        if emitted.stabilizer is not None:
            stab_values.append((node.name, emitted.stabilizer))
    return _assemble(source, canon, plan, b, contributions, bias_values, stab_values, relevance_of, total, comp,
                     init, node_relevance)


def _assemble(source, canon, plan, b, contributions, bias_values, stab_values, relevance_of, total, comp, init,
              node_relevance, extra_outputs=(), extra_meta=None) -> onnx.ModelProto:
    """Graph outputs, the target input, metadata: the finished augmented model (extra_outputs: value infos of
    further outputs the caller's nodes write, extra_meta: further metadata entries)."""
    index = plan.index
    elem = helper.np_dtype_to_tensor_dtype(b.dtype)
    meta = {"version": __version__, "composite": comp.name, "params": comp.params, "init": init,
            "output": plan.output, "explained": plan.explained, "target_input": TARGET_INPUT,
            "position_input": POSITION_INPUT if plan.logits != plan.explained else None,
            "tokens": sorted(plan.tokens.inputs),
            "target_mask_input": MASK_INPUT,
            "relevance": {}, "bias": {}, "stabilizer": "lrp/stabilizer", "total": "lrp/total",
            "logits": "lrp/output", "nodes": {}, "sums": {}, "node_stabilizer": {},
            "rules": {name: rule.describe() for name, rule in plan.rules.items()},
            "graph": [[n.name, n.op_type, [i for i in n.input if i in plan.path],
                       [o for o in n.output if o in plan.path]] for n in plan.nodes], "edges": {},
            # the identity total = inputs + biases + stabilizer holds for every LRP graph; a mode that does not
            # promise it (a gradient) sets this to False, and Explainer.explain then does not check it
            CONSERVATION_KEY: True}
    outputs = []
    b.scope = "lrp/_"
    for name in index.graph_inputs:
        info = index.info(name)
        if info is None or not (info.is_float or name in plan.tokens.inputs):
            continue
        out = f"lrp/relevance/{name}"
        parts = contributions.get(name)
        value = b.add_all(parts, "R_in") if parts else b.zeros_like(name, "R_in0")
        relevance_of[name] = value
        # token ids (int) get float relevance in the working dtype, one value per id
        out_type = elem if (info.elem_type in LOW_PRECISION_FLOATS or not info.is_float) else info.elem_type
        if out_type != elem:
            value = b.op("Cast", [value], "R_cast", to=out_type)
        b.op_named("Identity", [value], out)
        meta["relevance"][name] = out
        outputs.append(helper.make_tensor_value_info(out, out_type, _dims(info.shape)))
    batched = []  # bias rows of per-channel layers: written together by _unscale_outputs (see tails.py)
    for node_name, value in bias_values.items():
        out = f"lrp/bias/{node_name}"
        if value in b.tails.bias:
            batched.append((out, value))
        else:
            b.op_named("Identity", [value], out)
        meta["bias"][node_name] = out
        outputs.append(helper.make_tensor_value_info(out, elem, [None, None]))
    stab = stabilizer_total(b, [v for _, v in stab_values]) or b.zeros_like(total, "stab0")
    b.op_named("Identity", [stab], "lrp/stabilizer")
    b.op_named("Identity", [total], "lrp/total")
    b.op_named("Identity", [plan.logits], "lrp/output")
    for out in ("lrp/stabilizer", "lrp/total"):
        outputs.append(helper.make_tensor_value_info(out, elem, [None]))
    logits_info = index.info(plan.explained)
    logits_shape = logits_info.shape if logits_info else None
    if logits_shape is not None and plan.logits != plan.explained:  # the row at lrp_position: (N, C)
        logits_shape = (logits_shape[0], logits_shape[2])
    outputs.append(helper.make_tensor_value_info("lrp/output", elem, _dims(logits_shape)))
    _node_outputs(b, plan, node_relevance, relevance_of, stab_values, meta, outputs, elem)
    outputs.extend(extra_outputs)
    meta.update(extra_meta or {})
    _unscale_outputs(b, outputs, plan.seed_scale, batched)

    model = onnx.ModelProto()
    model.CopyFrom(canon)
    graph = model.graph
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    first = next(i for i in graph.input if i.name in index.graph_inputs) if index.graph_inputs else None
    batch = first.type.tensor_type.shape.dim[0] if first is not None and first.type.tensor_type.shape.dim else None
    target_vi = helper.make_tensor_value_info(TARGET_INPUT, onnx.TensorProto.INT64, ["N"])
    if batch is not None:
        target_vi.type.tensor_type.shape.dim[0].CopyFrom(batch)
    graph.input.append(target_vi)
    if meta["position_input"]:  # optional: an initializer of the same name is its default, -1 (the last position)
        graph.input.append(helper.make_tensor_value_info(POSITION_INPUT, onnx.TensorProto.INT64, [None]))
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), POSITION_INPUT))
    explained_shape = index.info(plan.explained).shape
    mask_rank = 2 if meta["position_input"] else len(explained_shape) if explained_shape is not None else None
    graph.input.append(mask_input_info(elem, mask_rank))
    graph.output.extend(outputs)
    model.ir_version = source.ir_version
    prune_unused(model)
    annotate_shapes(model)
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    meta[DIGEST_KEY] = graph_digest(model)  # the finished graph; Explainer recomputes it when it loads the file
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    try:
        check_model(model)
    except Exception as exc:
        raise CompileError(f"internal error: the compiled graph fails the ONNX checker: "
                           f"{' '.join(str(exc).split())[:300]}")
    return model


def _node_outputs(b, plan, node_relevance, relevance_of, stab_values, meta, outputs, elem) -> None:
    """Optional per-tensor relevance outputs: 'sums' (N,) per tensor, 'all' or a list of names (whole tensors)."""
    if node_relevance is None:
        return
    tensors = [o for n in plan.nodes for o in n.output if o in relevance_of]
    tensors = list(plan.index.graph_inputs) + tensors
    if node_relevance == "sums":
        for name in tensors:
            value = relevance_of.get(name)
            if value is None:
                continue
            b.layout = plan.layouts.get(name, DEFAULT_LAYOUT)
            info = plan.index.info(name)
            rank = len(info.shape) if info is not None and info.shape is not None else None
            out = b.op_named("Identity", [b.per_sample_sum(value, "R_node_sum", rank)], f"lrp/sum/{name}")
            b.layout = DEFAULT_LAYOUT
            meta["sums"][name] = out
            outputs.append(helper.make_tensor_value_info(out, elem, [None]))
        _edge_sums(b, plan, meta, outputs, elem)
        for node_name, value in stab_values:
            out = b.op_named("Identity", [value], f"lrp/stab/{node_name}")
            meta["node_stabilizer"][node_name] = out
            outputs.append(helper.make_tensor_value_info(out, elem, [None]))
        return
    wanted = tensors if node_relevance == "all" else list(node_relevance)
    for name in wanted:
        if name not in relevance_of:
            known = ", ".join(t for t in tensors if t in relevance_of)
            raise OnnxLrpError(f"no relevance flows through tensor {name!r} (tensors with relevance: {known})")
        out = b.op_named("Identity", [relevance_of[name]], f"lrp/node/{name}")
        meta["nodes"][name] = out
        info = plan.index.info(name)
        outputs.append(helper.make_tensor_value_info(out, elem, _dims(info.shape if info else None)))


def _edge_sums(b, plan, meta, outputs, elem) -> None:
    """Per-sample sums of what each consumer sends to a tensor read by several nodes: 'lrp/edge/<node>/<tensor>'."""
    readers: dict = {}
    for node in plan.nodes:
        for name in set(node.input) & plan.path:
            readers[name] = readers.get(name, 0) + 1
    for name, sent in plan.senders.items():
        by_node: dict = {}
        for node_name, value in sent:
            by_node.setdefault(node_name, []).append(value)
        if readers.get(name, 0) < 2:
            continue
        meta["edges"][name] = {}
        for node_name, values in by_node.items():
            b.layout = plan.layouts.get(name, DEFAULT_LAYOUT)
            info = plan.index.info(name)
            rank = len(info.shape) if info is not None and info.shape is not None else None
            total = b.per_sample_sum(b.add_all(values, "R_edge"), "R_edge_sum", rank)
            b.layout = DEFAULT_LAYOUT
            # node 'a/b' reading 'c' and node 'a' reading 'b/c' would both be 'lrp/edge/a/b/c': the metadata maps
            # (tensor, node) to the output, so a second one gets a suffix
            out = b.op_named("Identity", [total], b.unused(f"lrp/edge/{node_name}/{name}"))
            meta["edges"][name][node_name] = out
            outputs.append(helper.make_tensor_value_info(out, elem, [None]))


def _unscale_outputs(b: GraphBuilder, outputs: list, scale: Optional[str], batched: list = ()) -> None:
    """Multiply every float output but UNSCALED_OUTPUTS by the per-sample seed scale (see _seed): the node that
    wrote the output now writes a fresh name, and a per-sample product writes the output's name. The bias rows in
    `batched` ((output, value) pairs recorded in b.tails) are written scaled, all layers at once (tails.py)."""
    working = helper.np_dtype_to_tensor_dtype(b.dtype)
    b.scope = "lrp/_/unscale"
    factors: dict = {working: b.unsqueeze(scale, [1], "scale_col")} if scale is not None else {}
    done = set(batched_bias(b, list(batched), factors.get(working)))
    for out, value in batched:
        if out not in done:
            b.op_named("Identity", [value], out)
    b.scope = "lrp/_"
    if scale is None:
        return
    wanted = {vi.name: vi.type.tensor_type.elem_type for vi in outputs
              if vi.name not in UNSCALED_OUTPUTS and vi.name not in done
              and vi.type.tensor_type.elem_type in FLOAT_TYPES}
    ranks = {vi.name: _known_rank(vi) for vi in outputs}
    b.scope = "lrp/_/unscale"
    for node in list(b.nodes):
        if len(node.output) != 1 or node.output[0] not in wanted:
            continue
        out, elem = node.output[0], wanted[node.output[0]]
        inner = b.fresh("R_unit")
        node.output[0] = inner
        if elem not in factors:
            factors[elem] = b.op("Cast", [factors[working]], "scale_cast", to=elem)
        rank = ranks.get(out)
        if rank is not None:  # one broadcasting product, (N,) -> (N, 1, ..., 1) as the output's rank needs
            if (elem, rank) not in factors:
                factors[(elem, rank)] = (b.squeeze(factors[elem], [1], "scale_n") if rank == 1 else factors[elem]
                                         if rank == 2 else b.unsqueeze(factors[elem], list(range(2, rank)), "scale_nd"))
            b.nodes.append(helper.make_node("Mul", [inner, factors[(elem, rank)]], [out], name=b.fresh("Mul_node")))
            continue
        flat = b.op("Reshape", [inner, b.ints([0, -1])], "R_flat")
        product = b.op("Mul", [flat, factors[elem]], "R_scaled")
        b.nodes.append(helper.make_node("Reshape", [product, b.op("Shape", [inner], "R_shape")], [out],
                                        name=b.fresh("Reshape_node")))
    b.scope = "lrp/_"


PER_SAMPLE_OUTPUTS = ("lrp/stabilizer", "lrp/sum/", "lrp/stab/", "lrp/edge/")


def _known_rank(vi) -> Optional[int]:
    """The rank of a relevance output when it is certain: (N,) per-sample values, (N, units) bias rows, or a
    declared shape of rank >= 2 (which only a known shape produces); None otherwise."""
    name = vi.name
    if name.startswith("lrp/bias/"):
        return 2
    if name == "lrp/stabilizer" or name.startswith(PER_SAMPLE_OUTPUTS[1:]):
        return 1
    dims = vi.type.tensor_type.shape.dim
    return len(dims) if len(dims) >= 2 else None


def _dims(shape) -> list:
    """Declared output dims: static sizes where known, unnamed dims elsewhere (rank 1 if nothing is known)."""
    if shape is None:
        return [None]
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def compiled_metadata(model: onnx.ModelProto, where: str = "the model") -> Optional[dict]:
    """The metadata onnxlrp wrote into a compiled model (validated: ModelLoadError if broken), None for a model it
    did not compile."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return parse_metadata(prop.value, model, where)
    return None


RESERVED_OUTPUTS = ("lrp/stabilizer", "lrp/total", "lrp/output")
RESERVED_PREFIXES = ("lrp/relevance/", "lrp/bias/", "lrp/sum/", "lrp/stab/", "lrp/edge/", "lrp/node/",
                     "lrp/gradient/")


def check_reserved_names(model: onnx.ModelProto) -> None:
    """Refuse a model that already uses a name of the compiled interface: the target input, a fixed output or an
    output prefix (the compiled graph could not name its own values)."""
    values = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    values |= {t.name for t in model.graph.initializer}
    values |= {o for node in model.graph.node for o in node.output}
    for name, what in ((TARGET_INPUT, "the target class"), (MASK_INPUT, "the target mask")):
        if name in values:
            raise OnnxLrpError(f"the model already has a value named {name!r}, the input onnxlrp adds for {what}: "
                               f"rename it in the model")
    clash = next((v for v in sorted(values) if v in RESERVED_OUTPUTS or v.startswith(RESERVED_PREFIXES)), None)
    if clash is not None:
        raise OnnxLrpError(f"the model already has a value named {clash!r}; names 'lrp/total', 'lrp/stabilizer', "
                           f"'lrp/output' and those beginning 'lrp/relevance/', 'lrp/bias/', ... are onnxlrp's "
                           f"outputs: rename it in the model")


def check_compile_arguments(model, composite, params, output, init, node_relevance, max_constant_bytes):
    """Validate compile()'s arguments (ArgumentTypeError / ArgumentError naming the argument); returns
    node_relevance normalised (None, 'sums', 'all' or a list of tensor names)."""
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise ArgumentTypeError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    if not isinstance(composite, (str, os.PathLike, Composite)):
        raise ArgumentTypeError(f"composite must be a composite name, a path to a .toml or a Composite, got "
                                f"{type(composite).__name__}")
    if params is not None and not isinstance(params, dict):
        raise ArgumentTypeError(f"params must be a dict name -> value, got {type(params).__name__}")
    if params is not None and not all(isinstance(k, str) for k in params):
        raise ArgumentTypeError("params must have string keys (parameter names)")
    if output is not None and not isinstance(output, str):
        raise ArgumentTypeError(f"output must be an output name (str) or None, got {type(output).__name__}")
    if not isinstance(init, str):
        raise ArgumentTypeError(f"init must be 'logit' or 'one', got {type(init).__name__}")
    if init not in ("logit", "one"):
        raise ArgumentError(f"init must be 'logit' or 'one', got {init!r}")
    if max_constant_bytes is not None:
        if isinstance(max_constant_bytes, bool) or not isinstance(max_constant_bytes, (int, np.integer)):
            raise ArgumentTypeError(f"max_constant_bytes must be an int (bytes) or None, got "
                                    f"{type(max_constant_bytes).__name__}")
        if max_constant_bytes <= 0:
            raise ArgumentError(f"max_constant_bytes must be positive, got {max_constant_bytes}")
    if node_relevance is None or node_relevance in ("sums", "all"):
        return node_relevance
    if isinstance(node_relevance, str):
        raise ArgumentError(f"node_relevance must be 'sums', 'all', None or a list of tensor names, got "
                            f"{node_relevance!r} (a single tensor: pass [{node_relevance!r}])")
    if isinstance(node_relevance, (bytes, dict)) or not hasattr(node_relevance, "__iter__"):
        raise ArgumentTypeError(f"node_relevance must be 'sums', 'all', None or a list of tensor names, got "
                                f"{type(node_relevance).__name__}")
    names = list(node_relevance)
    if not all(isinstance(n, str) for n in names):
        raise ArgumentTypeError("node_relevance must list tensor names (strings)")
    return names
