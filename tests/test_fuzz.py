"""Fuzzing, bounded in time and seeded: random valid graphs must compile, pass the checker, run and conserve;
mutated and truncated model files must end in an explanation or an onnxlrp error, never anything else."""
from __future__ import annotations

import contextlib
import faulthandler
import os
import resource
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
from hostile_models import GRADIENT_EXACT, random_shape_chain, renamed
from ops_harness import linearise
from random_graphs import random_models

MODELS = Path(__file__).resolve().parent.parent / "models"
COMPOSITES = [name for name in builtin_names() if name != "base"]  # base alone gives linear layers no rule
STRUCTURE_EXAMPLES = 300
BYTE_CASES = 2600
TRUNCATIONS = 400
CASE_SECONDS = 20
SHAPE_CHAIN_EXAMPLES = 40
NAME_EXAMPLES = 30
COMPILE_ADDRESS_SPACE = 2 << 30  # what a compile may add to the process's address space in the bomb fuzzer


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
    try:
        for index, kind, data, x in cases:
            # last resort against a hang inside native code, where the per-case alarm cannot interrupt
            faulthandler.dump_traceback_later(10 * CASE_SECONDS, exit=True)
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


# ---------------------------------------------------------------------------------------------------------------
# declared-shape bombs and hostile names
@contextlib.contextmanager
def address_space_limit(extra: int):
    """RLIMIT_AS (soft) = the process's current address space + extra bytes, restored afterwards: an allocation
    sized by a declared dimension fails with MemoryError instead of taking the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@settings(max_examples=SHAPE_CHAIN_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), huge=st.booleans())
def test_shape_op_chains_on_huge_axes_compile_small_and_on_small_axes_move_relevance_exactly(seed, huge):
    """Random Slice/Gather/Pad/Transpose/ReduceMax/Resize/pool chains. Axes declared 10^9 or 10^12 long: the
    compile ends (in time, within COMPILE_ADDRESS_SPACE) in a small model or one onnxlrp error line. Axes 2..6
    long: it compiles, explains with the identity checked, and linear chains move relevance exactly like the
    gradient (the row of the Jacobian onnxruntime evaluates on basis vectors)."""
    model, shape, ops = random_shape_chain(seed, huge)
    try:
        with time_limit(CASE_SECONDS), address_space_limit(COMPILE_ADDRESS_SPACE):
            compiled = compile_model(model, init="one")
    except OnnxLrpError as exc:
        assert huge and "\n" not in str(exc), (ops, str(exc))
        return
    assert compiled.ByteSize() < 4 << 20, (ops, compiled.ByteSize())  # nothing sized by the declared axes
    if huge:
        return
    explainer = Explainer(compiled, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed % 1000).normal(size=(2,) + shape).astype(np.float32)
    classes = explainer.explain(x).output.shape[1]
    exp = explainer.explain(x, seed % classes)  # the identity is checked inside
    if set(ops) <= GRADIENT_EXACT - {"ReduceMax", "MaxPool"}:
        J, _ = linearise(model, "x", (1,) + shape)
        want = np.broadcast_to(J[seed % classes].reshape(shape), x.shape)
        np.testing.assert_allclose(exp.relevance["x"], want, rtol=1e-6, atol=1e-6, err_msg=str(ops))


@settings(max_examples=NAME_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=random_models(max_layers=4), seed=st.integers(0, 2 ** 16), reserved=st.booleans())
def test_hostile_names_change_nothing_or_end_in_one_line(case, seed, reserved):
    """Random graphs with their values and nodes renamed to names that collide with onnxlrp's own (lrp/_/...,
    paths with '/', control characters, duplicates, empty node names): the relevance is the same as under the
    original names; a value named like one of onnxlrp's outputs or its target input is refused in one line."""
    model, shape = case
    hostile, took_reserved = renamed(model, np.random.default_rng(seed), reserved and seed % 2 == 0)
    onnx.checker.check_model(hostile, full_check=True)
    x = batch_for(shape, seed)[:3]  # two random rows and zeros: finite forward passes
    try:
        compiled = compile_model(hostile, node_relevance="sums")
    except OnnxLrpError as exc:
        assert took_reserved and "\n" not in str(exc) and "already has a value named" in str(exc), str(exc)
        return
    assert not took_reserved
    onnx.checker.check_model(compiled, full_check=True)
    got = Explainer(compiled, providers=["CPUExecutionProvider"]).explain(x)
    want = Explainer(model, providers=["CPUExecutionProvider"]).explain(x)
    np.testing.assert_allclose(got.relevance["x"], want.relevance["x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.total, want.total, rtol=1e-6)
