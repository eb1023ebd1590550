"""Trusting a compiled model and what it computes: the digest of its graph, the schema of its metadata, and the
identity total = inputs + biases + stabilizer checked on every explanation.

The digest is a SHA-256 over what decides the numbers (opsets, graph inputs and outputs, nodes, initializers,
local functions), not over the metadata or the shape annotations (value_info). It detects a file edited after
compilation (a relevance output rewired, a weight changed); it is no signature: whoever edits the file on purpose
can recompute it, so a file from an untrusted source is best recompiled from its source model.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ConservationError, ModelLoadError

DIGEST_KEY = "digest"
CONSERVATION_KEY = "conservation"  # False where the compiled graph does not promise the identity (a gradient mode)
# names the runtime reads: each must be a string naming a graph output
OUTPUT_KEYS = ("stabilizer", "total", "logits")
# maps the runtime reads: each must map strings to graph output names
OUTPUT_MAPS = ("relevance", "bias", "nodes", "sums", "node_stabilizer")
# how many times the dtype's square-root precision the identity may miss, relative to |total| + the L1 mass of its
# terms: 8 * sqrt(eps) is 2.8e-3 in float32 and 1.2e-7 in float64 (rounding of the terms stays far below it; a
# tampered or broken graph lies far above it)
CONSERVATION_RTOL_FACTOR = 8.0


def _update(digest, data: bytes) -> None:
    """Feed one length-prefixed part (no two different sequences of parts give the same stream)."""
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _tensor_values(tensor: onnx.TensorProto) -> bytes:
    """A tensor's values as little-endian bytes, however the file stores them (raw_data or typed fields)."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    if tensor.data_type == onnx.TensorProto.STRING or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return tensor.SerializeToString(deterministic=True)
    array = numpy_helper.to_array(tensor)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def graph_digest(model: onnx.ModelProto) -> str:
    """SHA-256 (hex) of the model's opsets, graph inputs/outputs, nodes, initializers and local functions."""
    digest = hashlib.sha256()
    graph = model.graph
    for part in (model.opset_import, graph.input, graph.output, graph.node, graph.sparse_initializer,
                 model.functions):
        _update(digest, str(len(part)).encode())
        for message in part:
            _update(digest, message.SerializeToString(deterministic=True))
    _update(digest, str(len(graph.initializer)).encode())
    for tensor in graph.initializer:
        header = [tensor.name, int(tensor.data_type), [int(d) for d in tensor.dims]]
        _update(digest, json.dumps(header).encode())
        _update(digest, _tensor_values(tensor))
    return digest.hexdigest()


def _problem(meta, model: onnx.ModelProto) -> Optional[str]:
    """What is wrong with a parsed metadata value, None if it has the shape the runtime needs."""
    if not isinstance(meta, dict):
        return f"it is a JSON {type(meta).__name__}, not an object"
    outputs = {o.name for o in model.graph.output}
    inputs = {i.name for i in model.graph.input}
    for key in ("composite", "output", "explained", "target_input", DIGEST_KEY) + OUTPUT_KEYS:
        if not isinstance(meta.get(key), str):
            return f"key {key!r} is missing or not a string"
    for key in OUTPUT_KEYS:
        if meta[key] not in outputs:
            return f"its {key!r} names {meta[key]!r}, which is no output of the graph"
    if meta["target_input"] not in inputs:
        return f"its target input {meta['target_input']!r} is no input of the graph"
    for key in OUTPUT_MAPS:
        value = meta.get(key)
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return f"key {key!r} is missing or not a map of names"
        missing = next((v for v in value.values() if v not in outputs), None)
        if missing is not None:
            return f"its {key!r} names {missing!r}, which is no output of the graph"
    edges = meta.get("edges", {})
    if not isinstance(edges, dict) or not all(
            isinstance(sent, dict) and all(isinstance(v, str) and v in outputs for v in sent.values())
            for sent in edges.values()):
        return "key 'edges' is not a map of tensor -> {node: graph output}"
    if not isinstance(meta.get("rules", {}), dict) or not isinstance(meta.get("graph", []), list):
        return "key 'rules' is not a map or key 'graph' is not a list"
    if not isinstance(meta.get(CONSERVATION_KEY, True), bool):
        return f"key {CONSERVATION_KEY!r} is not true or false"
    return None


def parse_metadata(text: str, model: onnx.ModelProto, where: str) -> dict:
    """The onnxlrp metadata of a compiled model, validated; ModelLoadError naming what is wrong otherwise."""
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{where} carries broken onnxlrp metadata (not valid JSON: "
                             f"{' '.join(str(exc).split())[:120]}); recompile from the source model") from None
    problem = _problem(meta, model)
    if problem is not None:
        raise ModelLoadError(f"{where} carries broken onnxlrp metadata ({problem}); recompile from the source "
                             f"model")
    return meta


def verify_digest(model: onnx.ModelProto, meta: dict, where: str) -> None:
    """Refuse a compiled model whose graph no longer has the digest recorded when it was compiled."""
    if graph_digest(model) != meta[DIGEST_KEY]:
        raise ModelLoadError(f"{where} was modified after compilation (its graph does not match the digest onnxlrp "
                             f"recorded); recompile from the source model")


_TOLERANCES: dict = {}


def conservation_tolerance(dtype) -> float:
    """The relative tolerance of the identity in a dtype: CONSERVATION_RTOL_FACTOR * sqrt(eps) (cached)."""
    dtype = np.dtype(dtype)
    if dtype not in _TOLERANCES:
        _TOLERANCES[dtype] = CONSERVATION_RTOL_FACTOR * float(np.sqrt(np.finfo(dtype).eps))
    return _TOLERANCES[dtype]


def check_conservation(total: np.ndarray, relevance: dict, bias: dict, stabilizer: np.ndarray) -> None:
    """Raise ConservationError for the first sample where |total - (inputs + biases + stabilizer)| exceeds the
    tolerance times (|total| + the L1 mass of the terms); sums in float64 over the terms laid side by side (one
    sum and one absolute sum per batch, whatever the number of bias outputs)."""
    n = total.shape[0]
    terms = [v.reshape(n, -1) for v in relevance.values()] + [v.reshape(n, -1) for v in bias.values()]
    terms.append(stabilizer.reshape(n, 1))
    dtype = total.dtype if total.dtype.kind == "f" else np.dtype(np.float32)
    side = np.concatenate(terms, axis=1, dtype=np.result_type(*terms)) if len(terms) > 1 else terms[0]
    explained = side.sum(axis=1, dtype=np.float64)
    mass = np.abs(side).sum(axis=1, dtype=np.float64)
    total64 = total.astype(np.float64)
    rtol = conservation_tolerance(dtype)
    gap = np.abs(explained - total64)
    bad = np.flatnonzero(gap > rtol * (np.abs(total64) + mass))
    if bad.size:
        i = int(bad[0])
        relative = gap[i] / max(abs(total64[i]), 1e-300)
        raise ConservationError(
            f"the explanation does not conserve relevance: sample {i} has total {total64[i]:.6g} but inputs + biases "
            f"+ stabilizer = {explained[i]:.6g} (relative error {relative:.2e}, tolerance {rtol:.1e} in "
            f"{dtype}; {bad.size} of {n} sample(s)): the compiled model is broken (edited, or an onnxlrp bug: "
            f"please report it); check=False / --no-check skips this check")
