"""Fuzzing, bounded in time and seeded: random valid graphs must compile, pass the checker, run and conserve;
mutated and truncated model files must end in an explanation or an onnxlrp error, never anything else."""
from __future__ import annotations

import contextlib
import faulthandler
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxlrp.compiler import TARGET_INPUT, compile as compile_model
from onnxlrp.composites import builtin_names
from onnxlrp.errors import OnnxLrpError
from onnxlrp.runtime import Explainer
from random_graphs import random_models

MODELS = Path(__file__).resolve().parent.parent / "models"
COMPOSITES = [name for name in builtin_names() if name != "base"]  # base alone gives linear layers no rule
STRUCTURE_EXAMPLES = 300
BYTE_CASES = 2600
TRUNCATIONS = 400
CASE_SECONDS = 20


def conservation_gap(exp) -> np.ndarray:
    """Per row |total - (inputs + biases + stabilizer)| over what float32 can promise: 1e-4 of the total plus 1e-6 of
    the largest L1 mass of relevance on any tensor (compile with node_relevance='all' to see them all). Where
    relevance cancels, intermediate tensors carry 1000x the total and their rounding error alone exceeds 1e-4 of
    it (the same graphs conserve to 1e-12 in float64). Conservation holds where the value is <= 1."""
    n = exp.total.shape[0]
    parts = [r.reshape(n, -1).astype(np.float64) for r in exp.relevance.values()]
    parts += [b.reshape(n, -1).astype(np.float64) for b in exp.bias.values()]
    parts.append(exp.stabilizer.astype(np.float64).reshape(n, 1))
    explained = sum(p.sum(axis=1) for p in parts)
    tensors = parts + [v.reshape(n, -1).astype(np.float64) for v in exp.nodes.values()]
    mass = np.max([np.abs(t).sum(axis=1) for t in tensors], axis=0)
    total = exp.total.astype(np.float64)
    allowed = 1e-4 * np.abs(total) + 1e-6 * mass
    gap = np.abs(explained - total)
    return np.where(gap == 0, 0.0, gap / np.where(allowed > 0, allowed, 1e-300))


def batch_for(shape: tuple, seed: int) -> np.ndarray:
    """Rows: two random inputs, all zeros, a negated one, tiny (1e-30) and huge (1e30) scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2,) + shape)
    return np.concatenate([x, np.zeros((1,) + shape), -x[:1], 1e-30 * x[:1], 1e30 * x[:1]]).astype(np.float32)


@settings(max_examples=STRUCTURE_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=random_models(), composite=st.sampled_from(COMPOSITES), seed=st.integers(0, 2 ** 16),
       explicit_target=st.booleans())
def test_random_graphs_compile_check_run_and_conserve(case, composite, seed, explicit_target):
    model, shape = case
    x = batch_for(shape, seed)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # unoptimised: onnxruntime fuses Pad into a following pool and then refuses pads >= kernel (its own bug)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out_name = model.graph.output[0].name
    forward = reference.run([out_name], {"x": x})[0]
    rows = np.flatnonzero(np.all(np.isfinite(forward), axis=1))  # the 1e30 row may overflow: then it is left out
    assert rows.size >= 4, "the random, zero and tiny rows always have a finite forward pass"

    compiled = compile_model(model, composite, node_relevance="all")
    onnx.checker.check_model(compiled, full_check=True)
    explainer = Explainer(compiled, providers=["CPUExecutionProvider"])
    target = (seed % forward.shape[1]) if explicit_target else None
    exp = explainer.explain(x[rows], target)

    kept = explainer.session.run([out_name], {"x": x[rows], TARGET_INPUT: exp.target})[0]
    np.testing.assert_allclose(kept, forward[rows], rtol=1e-4, atol=1e-6)  # the forward pass is unchanged
    for value in [exp.total, exp.stabilizer, *exp.relevance.values(), *exp.bias.values()]:
        assert np.all(np.isfinite(value))
    assert exp.relevance["x"].shape == x[rows].shape
    gaps = conservation_gap(exp)
    assert np.all(gaps <= 1.0), (composite, gaps, exp.total)


# ---------------------------------------------------------------------------------------------------------------
# bytes
class CaseTimeout(Exception):
    """One byte case ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise CaseTimeout in the main thread after seconds (SIGALRM)."""
    def expire(signum, frame):
        raise CaseTimeout(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def weight_ranges(raw: bytes, path: Path) -> list:
    """(start, end) byte offsets of each large initializer's raw data in the serialised file."""
    ranges = []
    for tensor in onnx.load(str(path)).graph.initializer:
        start = raw.find(tensor.raw_data) if len(tensor.raw_data) > 16 else -1
        if start >= 0:
            ranges.append((start, start + len(tensor.raw_data)))
    return ranges


def mutate(raw: bytes, ranges: list, rng: np.random.Generator) -> tuple:
    """One mutation: truncate, overwrite random bytes, flip a bit, delete, insert a copied chunk, 0xff or 0x00 runs;
    positions fall in the graph's structure 4 times out of 5 and in the weights otherwise."""
    data, size = bytearray(raw), len(raw)
    in_weights = rng.random() < 0.2

    def position() -> int:
        if in_weights:
            start, end = ranges[rng.integers(len(ranges))]
            return int(rng.integers(start, end))
        while True:
            p = int(rng.integers(size))
            if not any(a <= p < b for a, b in ranges):
                return p

    kind = ["truncate", "bytes", "bit", "delete", "insert", "ff", "zero"][int(rng.integers(7))]
    p = position()
    if kind == "truncate":
        return bytes(data[:p]), kind
    if kind == "bytes":
        for _ in range(int(rng.integers(1, 9))):
            data[position()] = int(rng.integers(256))
    elif kind == "bit":
        data[p] ^= 1 << int(rng.integers(8))
    elif kind == "delete":
        del data[p:p + int(rng.integers(1, 64))]
    elif kind == "insert":
        q = int(rng.integers(size))
        data[p:p] = raw[q:q + int(rng.integers(1, 64))]
    else:
        n = int(rng.integers(1, 16))
        data[p:p + n] = (b"\xff" if kind == "ff" else b"\x00") * n
    return bytes(data), kind


def outcome(path: Path, composite: str, x: np.ndarray) -> str:
    """'explained' (checked: finite, conserving) or the onnxlrp error's class name; anything else propagates."""
    try:
        exp = Explainer(path, composite, providers=["CPUExecutionProvider"], node_relevance="all").explain(x)
    except OnnxLrpError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"not one line: {message!r}"
        return type(exc).__name__
    for value in [exp.output, exp.total, exp.stabilizer, *exp.relevance.values(), *exp.bias.values()]:
        assert np.all(np.isfinite(value)), "an explanation with NaN or Inf"
    assert np.all(conservation_gap(exp) <= 1.0), "an explanation that does not conserve"
    return "explained"


def test_mutated_and_truncated_model_files_end_in_an_explanation_or_an_onnxlrp_error(tmp_path):
    samples = np.load(MODELS / "digits_samples.npz")
    sources = [(MODELS / "digits_mlp.onnx", samples["flat"][:2]), (MODELS / "digits_cnn.onnx", samples["images"][:2])]
    raws = [(path.read_bytes(), x) for path, x in sources]
    ranges = [weight_ranges(raw, path) for (raw, _), (path, _) in zip(raws, sources)]
    cases = []
    for i in range(BYTE_CASES):
        raw, x = raws[i % 2]
        data, kind = mutate(raw, ranges[i % 2], np.random.default_rng([7, i]))
        cases.append((i, kind, data, x))
    for j, cut in enumerate(np.linspace(1, len(raws[0][0]) - 1, TRUNCATIONS // 2, dtype=int).tolist()
                            + np.linspace(1, len(raws[1][0]) - 1, TRUNCATIONS // 2, dtype=int).tolist()):
        raw, x = raws[0 if j < TRUNCATIONS // 2 else 1]
        cases.append((BYTE_CASES + j, f"cut at {cut}", raw[:cut], x))

    counts: dict = {}
    failures = []
    path = tmp_path / "case.onnx"
    start = time.perf_counter()
    faulthandler.dump_traceback_later(600, exit=True)  # last resort against a hang inside native code
    try:
        for index, kind, data, x in cases:
            path.write_bytes(data)
            try:
                with time_limit(CASE_SECONDS):
                    result = outcome(path, COMPOSITES[index % len(COMPOSITES)], x)
            except (Exception, CaseTimeout) as exc:  # anything but an onnxlrp error or a checked explanation
                failures.append(f"case {index} ({kind}): {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                continue
            counts[result] = counts.get(result, 0) + 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.perf_counter() - start
    print(f"\nbyte fuzz: {len(cases)} cases in {elapsed:.1f} s: {counts}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:20])
    assert sum(counts.values()) == len(cases)
    assert counts.get("explained", 0) > 0 and counts.get("ModelLoadError", 0) > 0  # both outcomes are exercised
