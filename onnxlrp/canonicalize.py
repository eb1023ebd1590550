"""Canonicalisation: model -> model rewrites that make the graph easier to explain without changing its outputs.

Each rewrite is one function; `canonicalize` runs them in order. All keep graph input/output names.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxLrpError
from .graph import GraphIndex
from .merge_branches import merge_parallel_convs
from .recurrent import unroll_recurrent

BYPASSED_OUTPUT_OPS = ("Softmax", "LogSoftmax", "Sigmoid")


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique, non-empty name (Op_k for unnamed or duplicate ones)."""
    seen: Counter = Counter()
    taken = {n.name for n in model.graph.node if n.name}
    duplicates = {name for name, c in Counter(n.name for n in model.graph.node).items() if c > 1}
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in duplicates:
            base = node.name or node.op_type
            seen[base] += 1
            candidate = f"{base}_{seen[base]}"
            while candidate in taken:
                seen[base] += 1
                candidate = f"{base}_{seen[base]}"
            node.name = candidate
            taken.add(candidate)
    return model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn Constant nodes into initializers (their values become visible to emitters as arrays)."""
    outputs = {o.name for o in model.graph.output}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            from .graph import _constant_node_value
            value = _constant_node_value(node)
            if value is not None:
                model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _replace_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> str:
    """Add a new initializer with a fresh name derived from name; returns the new name."""
    taken = {t.name for t in model.graph.initializer}
    new, k = f"{name}_lrpfold", 1
    while new in taken:
        k += 1
        new = f"{name}_lrpfold{k}"
    model.graph.initializer.append(numpy_helper.from_array(array, new))
    return new


def _single_consumer(index: GraphIndex, value: str, graph_outputs: set) -> Optional[onnx.NodeProto]:
    """The only consumer of a value, if it has exactly one and is not a graph output."""
    users = index.consumers.get(value, [])
    return users[0] if len(users) == 1 and value not in graph_outputs else None


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold an inference BatchNormalization into the Conv/ConvTranspose/Gemm before it:
    w' = w * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma / sqrt(var + eps) + beta."""
    if not _has_op(model, "BatchNormalization"):  # no index to build (shape inference on the whole graph)
        return model
    index = GraphIndex.build(model)
    outputs = {o.name for o in model.graph.output}
    removed = set()
    for node in list(model.graph.node):
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or node.name in removed:
            continue
        if len(node.input) > 2 and node.input[2] and node.input[2] not in index.constants:
            continue
        bn = _single_consumer(index, node.output[0], outputs)
        if bn is None or bn.op_type != "BatchNormalization" or (len(bn.output) > 1 and any(bn.output[1:])):
            continue
        params = [index.constants.get(n) for n in bn.input[1:5]]
        weight = index.constants.get(node.input[1])
        if any(p is None for p in params) or weight is None:
            continue
        if node.op_type == "Gemm" and (node.input[0] in index.constants or _attr(node, "transA", 0)):
            continue
        scale, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = _attr(bn, "epsilon", 1e-5)
        k = scale / np.sqrt(var + eps)
        dtype = weight.dtype
        bias = index.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "Conv":
            w = weight.astype(np.float64) * k.reshape((-1,) + (1,) * (weight.ndim - 1))
            b = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        elif node.op_type == "ConvTranspose":  # weight (C_in, M / group, ...): output channel g * M/group + j
            group = _attr(node, "group", 1)
            per_in = k.reshape(group, -1)[np.arange(weight.shape[0]) // (weight.shape[0] // group)]
            w = weight.astype(np.float64) * per_in.reshape(per_in.shape + (1,) * (weight.ndim - 2))
            b = np.zeros(k.shape) if bias is None else bias.astype(np.float64)
        else:
            alpha, beta_g = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
            w = weight.astype(np.float64) * alpha
            w = w * (k.reshape(-1, 1) if _attr(node, "transB", 0) else k.reshape(1, -1))
            b = np.zeros(k.shape) if bias is None else np.broadcast_to(beta_g * bias.astype(np.float64), k.shape)
            _set_attr(node, "alpha", 1.0)
            _set_attr(node, "beta", 1.0)
        new_b = (b - mean) * k + beta
        w_name = _replace_initializer(model, node.input[1], w.astype(dtype))
        b_name = _replace_initializer(model, node.input[1] + "_bias", new_b.astype(dtype))
        inputs = [node.input[0], w_name, b_name]
        del node.input[:]
        node.input.extend(inputs)
        node.output[0] = bn.output[0]
        removed.add(bn.name)
    keep = [n for n in model.graph.node if n.name not in removed]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _batchnorm_affine(index: GraphIndex, bn: onnx.NodeProto) -> Optional[tuple]:
    """(k, c) with BN(x) = k * x + c per channel, None for a BN that is not a constant inference BN."""
    if len(bn.output) > 1 and any(bn.output[1:]):
        return None
    params = [index.constants.get(n) for n in bn.input[1:5]]
    if any(p is None for p in params):
        return None
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    k = scale / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
    return k, beta - mean * k


def _zero_padded(node: onnx.NodeProto) -> bool:
    """True for a Conv that reads no padding (a BN before it then folds exactly, also at the borders)."""
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad in ("NOTSET", "VALID") and not any(_attr(node, "pads", []))


def fold_batchnorm_into_next(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold an inference BatchNormalization into the linear node that is its only consumer (BN -> Conv without
    padding, BN -> Gemm, BN -> MatMul on rank 2): with BN(x) = k x + c per input channel, W' = W diag(k) and
    b' = b + W c (for a Conv: the sum of each filter's taps times c of their channel)."""
    if not _has_op(model, "BatchNormalization"):
        return model
    index = GraphIndex.build(model)
    outputs = {o.name for o in model.graph.output}
    removed = set()
    for bn in list(model.graph.node):
        if bn.op_type != "BatchNormalization" or bn.name in removed:
            continue
        node = _single_consumer(index, bn.output[0], outputs)
        affine = _batchnorm_affine(index, bn)
        if node is None or affine is None or node.input[0] != bn.output[0] or node.name in removed:
            continue
        constants = _weight_and_bias(index, node)
        if constants is None:
            continue
        weight, bias = constants
        k, c = affine
        folded = _fold_into_next(node, index, weight.astype(np.float64), bias, k, c)
        if folded is None:
            continue
        w, b, op_type = folded
        w_name = _replace_initializer(model, node.input[1], w.astype(weight.dtype))
        b_name = _replace_initializer(model, node.input[1] + "_bias", b.astype(weight.dtype))
        if op_type != node.op_type:  # MatMul -> Gemm to carry the bias
            node.CopyFrom(helper.make_node("Gemm", [bn.input[0], w_name, b_name], [node.output[0]], name=node.name))
        else:
            inputs = [bn.input[0], w_name, b_name]
            del node.input[:]
            node.input.extend(inputs)
        removed.add(bn.name)
    keep = [n for n in model.graph.node if n.name not in removed]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _fold_into_next(node, index, w, bias, k, c) -> Optional[tuple]:
    """(W', b', op type) of a Conv/Gemm/MatMul that reads k x + c, None where the fold is not exact."""
    if node.op_type == "Conv" and _zero_padded(node):
        group = _attr(node, "group", 1)
        out_ch, per_group = w.shape[0], w.shape[1]
        channel = (np.arange(out_ch) // (out_ch // group))[:, None] * per_group + np.arange(per_group)[None, :]
        b = np.zeros(out_ch) if bias is None else bias.astype(np.float64)
        shape = (out_ch, per_group) + (1,) * (w.ndim - 2)
        new_b = b + (w * c[channel].reshape(shape)).reshape(out_ch, -1).sum(axis=1)
        return w * k[channel].reshape(shape), new_b, "Conv"
    info = index.info(node.input[0])
    rank2 = info is not None and info.shape is not None and len(info.shape) == 2
    if node.op_type == "Gemm" and rank2 and not _attr(node, "transA", 0):
        alpha, beta_g = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        trans = _attr(node, "transB", 0)
        eff = (w.T if trans else w) * alpha  # (K, M)
        b = np.zeros(eff.shape[1]) if bias is None else np.broadcast_to(beta_g * bias.astype(np.float64),
                                                                        (eff.shape[1],))
        new_w = eff * k[:, None]
        _set_attr(node, "alpha", 1.0)
        _set_attr(node, "beta", 1.0)
        return (new_w.T if trans else new_w), b + c @ eff, "Gemm"
    if node.op_type == "MatMul" and rank2 and w.ndim == 2:
        return w * k[:, None], c @ w, "Gemm"
    return None


AFFINE_AFTER_CONV = ("Mul", "Div", "Add", "Sub")


def _per_channel(const: Optional[np.ndarray], rank: int, channels: int) -> Optional[np.ndarray]:
    """A constant that broadcasts over a (N, C, ...) tensor per channel (or as a scalar) as a (C,) float64 vector;
    None for any other constant."""
    if const is None or const.dtype.kind != "f" or const.ndim > rank:
        return None
    shape = (1,) * (rank - const.ndim) + const.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(const.astype(np.float64).reshape(-1), (channels,))


def fold_affine_into_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold a per-channel Mul / Div by a constant and Add / Sub of a constant after a Conv into its weight and bias
    (tf2onnx writes a Keras 3 depthwise convolution's BatchNorm, and sometimes a bias, so):
    (W x + b) * k + c = (k W) x + (k b + c), per output channel; repeated while the chain goes on."""
    if not _has_op(model, "Conv"):  # no index to build (shape inference on the whole graph)
        return model
    index = GraphIndex.build(model)
    outputs = {o.name for o in model.graph.output}
    removed = set()
    for node in list(model.graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        constants = _weight_and_bias(index, node)
        if constants is None:
            continue
        weight, bias = constants
        channels, rank = weight.shape[0], weight.ndim
        w = weight.astype(np.float64)
        b = np.zeros(channels) if bias is None else bias.astype(np.float64)
        end, absorbed = node.output[0], []
        while True:
            nxt = _single_consumer(index, end, outputs)
            if nxt is None or nxt.op_type not in AFFINE_AFTER_CONV or len(nxt.input) != 2:
                break
            position = 0 if nxt.input[0] == end else 1
            k = _per_channel(index.constants.get(nxt.input[1 - position]), rank, channels)
            if k is None or nxt.input[0] == nxt.input[1] or (nxt.op_type in ("Div", "Sub") and position != 0):
                break
            if nxt.op_type == "Div" and not np.all(k != 0):
                break
            if nxt.op_type in ("Mul", "Div"):
                factor = k if nxt.op_type == "Mul" else 1.0 / k
                w, b = w * factor.reshape((-1,) + (1,) * (rank - 1)), b * factor
            else:
                b = b + k if nxt.op_type == "Add" else b - k
            absorbed.append(nxt)
            end = nxt.output[0]
        if not absorbed:
            continue
        w_name = _replace_initializer(model, node.input[1], w.astype(weight.dtype))
        b_name = _replace_initializer(model, node.input[1] + "_bias", b.astype(weight.dtype))
        inputs = [node.input[0], w_name, b_name]
        del node.input[:]
        node.input.extend(inputs)
        node.output[0] = end
        removed.update(n.name for n in absorbed)
    keep = [n for n in model.graph.node if n.name not in removed]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def matmul_add_to_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMul(x, W) + b with constant 2-D W and a bias of M values (shaped (M,) or (1, ..., M)) -> one Gemm node, so
    that the bias belongs to its linear node (one rule, one bias row, one division by z instead of two). A rank-2 x
    is read as is; a higher-rank x (..., K) (a transformer's (N, T, H)) as its rows: Reshape(x, (-1, K)) -> Gemm
    -> Reshape back to x's leading dims and M (the batch moves into the rows, see batch.py)."""
    if not _has_op(model, "MatMul"):
        return model
    index = GraphIndex.build(model)
    outputs = {o.name for o in model.graph.output}
    removed, added = set(), {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for node in list(model.graph.node):
        if node.op_type != "MatMul":
            continue
        x, w_name = node.input
        w = index.constants.get(w_name)
        info = index.info(x)
        if w is None or w.ndim != 2 or info is None or info.shape is None or len(info.shape) < 2:
            continue
        if len(info.shape) > 2 and (opset < 13 or info.shape[-1] != w.shape[0]):
            continue
        add = _single_consumer(index, node.output[0], outputs)
        if add is None or add.op_type != "Add":
            continue
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        bias = index.constants.get(other)
        if bias is None or bias.size != w.shape[1] or bias.ndim > len(info.shape) or \
                any(d != 1 for d in bias.shape[:-1]) or (bias.ndim and bias.shape[-1] != w.shape[1]):
            continue
        b_name = _replace_initializer(model, other, bias.reshape(-1))
        if len(info.shape) == 2:
            node.CopyFrom(helper.make_node("Gemm", [x, w_name, b_name], [add.output[0]], name=node.name))
        else:
            added[node.name] = _rows_gemm(model, node, x, w_name, b_name, add.output[0], w.shape)
        removed.add(add.name)
    nodes = []
    for n in model.graph.node:
        if n.name in added:
            nodes.extend(added[n.name])
        elif n.name not in removed:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _rows_gemm(model: onnx.ModelProto, node: onnx.NodeProto, x: str, w: str, b: str, out: str, w_shape) -> list:
    """Reshape(x, (-1, K)) -> Gemm(W, b) (named as the MatMul) -> Reshape to (x's leading dims, M) as `out`."""
    base = node.name
    k, m = int(w_shape[0]), int(w_shape[1])
    rows_shape = _replace_initializer(model, f"{base}/rows_shape", np.array([-1, k], np.int64))
    start = _replace_initializer(model, f"{base}/lead_start", np.array([0], np.int64))
    end = _replace_initializer(model, f"{base}/lead_end", np.array([-1], np.int64))
    units = _replace_initializer(model, f"{base}/units", np.array([m], np.int64))
    names = {k2: f"{base}/{k2}" for k2 in ("rows", "rows_out", "x_shape", "lead", "out_shape")}
    return [helper.make_node("Reshape", [x, rows_shape], [names["rows"]], name=f"{base}/Reshape_rows"),
            helper.make_node("Gemm", [names["rows"], w, b], [names["rows_out"]], name=base),
            helper.make_node("Shape", [x], [names["x_shape"]], name=f"{base}/Shape"),
            helper.make_node("Slice", [names["x_shape"], start, end], [names["lead"]], name=f"{base}/Slice_lead"),
            helper.make_node("Concat", [names["lead"], units], [names["out_shape"]], name=f"{base}/Concat_shape",
                             axis=0),
            helper.make_node("Reshape", [names["rows_out"], names["out_shape"]], [out], name=f"{base}/Reshape_back")]


CLASSIFIER_TRANSFORMS = {"SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}


def split_classifier_transform(model: onnx.ModelProto) -> onnx.ModelProto:
    """A LinearClassifier (ai.onnx.ml) whose post_transform is SOFTMAX or LOGISTIC writes its raw scores and a
    standard Softmax / Sigmoid after it writes the probabilities: the scores are then the classifier's linear
    output, and the trailing Softmax / Sigmoid is bypassed like any other (the logits are explained)."""
    taken = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        transform = _attr(node, "post_transform", b"NONE")
        transform = transform.decode() if isinstance(transform, bytes) else transform
        if node.op_type != "LinearClassifier" or node.domain != "ai.onnx.ml" or len(node.output) < 2 \
                or not node.output[1] or transform not in CLASSIFIER_TRANSFORMS:
            continue
        if not _one_row_per_score(node, transform):
            continue
        scores, k = f"{node.output[1]}_scores", 1
        while scores in taken:
            k += 1
            scores = f"{node.output[1]}_scores{k}"
        taken.add(scores)
        probabilities = node.output[1]
        node.output[1] = scores
        _set_attr(node, "post_transform", "NONE")
        attrs = {"axis": 1} if transform == "SOFTMAX" else {}
        nodes.append(helper.make_node(CLASSIFIER_TRANSFORMS[transform], [scores], [probabilities],
                                      name=f"{node.name}_{transform.lower()}", **attrs))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _one_row_per_score(node: onnx.NodeProto, transform: str) -> bool:
    """True when the classifier has (or is given) one coefficient row per score column. A binary classifier with
    one row s = x c + b writes onnxruntime's [1 - p, p]: under LOGISTIC it is rewritten to the rows [-c, c] and
    intercepts [-b, b] (sigmoid(-s) = 1 - sigmoid(s): the same outputs); under SOFTMAX it stays, and is refused."""
    labels = _attr(node, "classlabels_ints", None) or _attr(node, "classlabels_strings", None) or []
    intercepts = list(_attr(node, "intercepts", None) or [0.0])
    if len(labels) != 2 or len(intercepts) != 1:
        return True
    if transform != "LOGISTIC":
        return False
    coefficients = list(_attr(node, "coefficients", []))
    _set_attr(node, "coefficients", [-c for c in coefficients] + coefficients)
    _set_attr(node, "intercepts", [-intercepts[0], intercepts[0]])
    return True


def explained_tensor(model: onnx.ModelProto, output: Optional[str]) -> tuple:
    """(graph output to explain, tensor whose value is explained): the first float output by default; a trailing
    Softmax/LogSoftmax/Sigmoid (behind Identity/Cast) is bypassed so that the logits are explained."""
    from .graph import FLOAT_TYPES
    names = [o.name for o in model.graph.output]
    producers = {o: n for n in model.graph.node for o in n.output}
    zipmapped = {o: producers[o].input[0] for o in names
                 if o in producers and producers[o].op_type == "ZipMap"}  # skl2onnx's default probabilities
    floats = [o.name for o in model.graph.output
              if (o.type.HasField("tensor_type") and o.type.tensor_type.elem_type in FLOAT_TYPES) or o.name in zipmapped]
    if output is None:
        if not floats:
            raise OnnxLrpError(f"the model has no floating-point output to explain (outputs: {', '.join(names)})")
        output = floats[0]
    elif output not in names and output in producers:  # a tensor inside the graph (a detector's class scores)
        floats.append(output)
    elif output not in names:
        raise OnnxLrpError(f"the model has no output {output!r} (outputs: {', '.join(names)})")
    elif output not in floats:
        raise OnnxLrpError(f"output {output!r} is not a floating-point tensor and cannot be explained")
    value = zipmapped.get(output, output)
    while value in producers and (producers[value].op_type in ("Identity", "Cast")
                                  or _normalizes_probabilities(producers[value], producers)):
        value = producers[value].input[0]
    node = producers.get(value)
    if node is not None and node.op_type in BYPASSED_OUTPUT_OPS:
        return output, node.input[0]
    return output, output


def _normalizes_probabilities(node: onnx.NodeProto, producers: dict) -> bool:
    """True for skl2onnx's L1 Normalizer (ai.onnx.ml) after a Softmax / Sigmoid: it rescales probabilities only,
    and is bypassed with them."""
    norm = _attr(node, "norm", b"MAX")
    norm = norm.decode() if isinstance(norm, bytes) else norm
    source = producers.get(node.input[0]) if node.input else None
    return (node.op_type == "Normalizer" and node.domain == "ai.onnx.ml" and norm == "L1" and source is not None
            and source.op_type in BYPASSED_OUTPUT_OPS)


def _has_op(model: onnx.ModelProto, op_type: str) -> bool:
    """True if the main graph holds a node of this op type (a rewrite that looks for it has work to do)."""
    return any(node.op_type == op_type for node in model.graph.node)



def _weight_and_bias(index: GraphIndex, node: onnx.NodeProto) -> Optional[tuple]:
    """(weight, bias or None) of a linear node whose weight (input 1) and bias (input 2, if any) are constants, else
    None."""
    weight = index.constants.get(node.input[1]) if len(node.input) > 1 else None
    has_bias = len(node.input) > 2 and node.input[2]
    bias = index.constants.get(node.input[2]) if has_bias else None
    if weight is None or (has_bias and bias is None):
        return None
    return weight, bias

def _attr(node: onnx.NodeProto, name: str, default):
    """An attribute value of a node, or default."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    """Set (replace) an attribute of a node."""
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def layer_norm_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every LayerNormalization its optional InvStdDev output (the 1 / sigma its forward pass computes
    anyway), which the relevance graph reads instead of computing the statistics a second time."""
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        outputs = list(node.output) + [""] * (3 - len(node.output))
        if not outputs[2]:
            outputs[2] = f"{node.name or node.output[0]}/inv_std_dev"
            del node.output[:]
            node.output.extend(outputs)
    return model


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run every rewrite in order on a copy; shapes are re-inferred at the end."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for rewrite in (name_nodes, constants_to_initializers, unroll_recurrent, split_classifier_transform,
                    fold_batchnorm, fold_batchnorm_into_next, fold_affine_into_conv, merge_parallel_convs,
                    matmul_add_to_gemm, layer_norm_statistics):
        out = rewrite(out)
    return out


