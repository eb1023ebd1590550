"""Harness for the op tests: small ONNX models, the emitters run on a *dense* relevance seed, linearisation.

`explain_dense` runs onnxlrp's real pipeline (canonicalize, plan with a composite, one emitter per node in reverse
topological order, contributions summed) but seeds the explained output with an arbitrary relevance tensor fed at
run time, so that every output unit carries relevance (a one-hot seed would test one unit only).
`linearise` turns a model that is linear (affine) in one input into (M, b) with f(x) = M x + b, evaluated by
onnxruntime itself on basis vectors, so the reference uses exactly the map the forward pass computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxlrp.builder import GraphBuilder
from onnxlrp.canonicalize import canonicalize
from onnxlrp.compiler import plan_model
from onnxlrp.fold import fold_constants
from onnxlrp.composites import load_composite
from onnxlrp.graph import opset_version

IR_VERSION = 10
NEWEST_OPSET = 26  # the newest opset onnxruntime 1.31 runs (onnx 1.23 writes up to 28; those only compile)
SEED_INPUT = "lrp_test_R"
FLOAT = onnx.TensorProto.FLOAT


def tensor(name: str, shape: Sequence) -> onnx.ValueInfoProto:
    """A float value info (None or a string for a symbolic dim)."""
    return helper.make_tensor_value_info(name, FLOAT, list(shape) if shape is not None else None)


def make_model(nodes: list, inputs: list, outputs: list, inits: Optional[dict] = None,
               opset: int = 17) -> onnx.ModelProto:
    """A checked model from nodes, value infos and {name: array} initializers (arrays keep their dtype)."""
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "ops", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def single(op_type: str, x_shape: Sequence, inits: Optional[dict] = None, extra_inputs: Sequence[str] = (),
           opset: int = 17, n_out: int = 1, y_rank: Optional[int] = None, **attrs) -> onnx.ModelProto:
    """One node reading 'x' (batch dim symbolic) and then extra_inputs (initializer names or '') writing y[, y1..]
    (declared with rank y_rank, default x's rank)."""
    outs = ["y"] + [f"y{i}" for i in range(1, n_out)]
    node = helper.make_node(op_type, ["x"] + list(extra_inputs), outs, name=f"the_{op_type.lower()}", **attrs)
    rank = len(x_shape) if y_rank is None else y_rank
    return make_model([node], [tensor("x", ["N"] + list(x_shape[1:]))], [tensor(o, [None] * rank) for o in outs],
                      inits, opset)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU onnxruntime session."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def forward(model: onnx.ModelProto, feeds: dict) -> list:
    """All outputs of a model run in onnxruntime."""
    return session(model).run(None, {k: np.asarray(v) if np.asarray(v).dtype.kind in "iub" else
                                     np.asarray(v, dtype=np.float32) for k, v in feeds.items()})


def linearise(model: onnx.ModelProto, name: str, shape: Sequence, feeds: Optional[dict] = None,
              output: int = 0) -> tuple:
    """(M (out, in), b (out,)) of output `output` as a function of input `name` (one sample, other inputs zero
    or fixed by feeds): f(0) and f(e_j) evaluated in one batched onnxruntime run (float64 results)."""
    size = int(np.prod(shape[1:]))
    basis = np.concatenate([np.zeros((1, size)), np.eye(size)]).reshape((size + 1,) + tuple(shape[1:]))
    inputs = {name: basis}
    for other in model.graph.input:
        if other.name != name and other.name not in (feeds or {}):
            dims = [size + 1] + [d.dim_value for d in other.type.tensor_type.shape.dim[1:]]
            inputs[other.name] = np.zeros(dims)
    for key, value in (feeds or {}).items():
        inputs[key] = np.broadcast_to(value, (size + 1,) + np.shape(value)[1:])
    out = forward(model, inputs)[output].reshape(size + 1, -1).astype(np.float64)
    return (out[1:] - out[0]).T, out[0]


def with_weight(model: onnx.ModelProto, name: str, fn) -> onnx.ModelProto:
    """A copy of the model with initializer `name` replaced by fn(array)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for i, t in enumerate(copy.graph.initializer):
        if t.name == name:
            array = numpy_helper.to_array(t)
            copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(fn(array).astype(array.dtype), name))
    return copy


def composite_text(rules: dict) -> str:
    """TOML extending 'base': {op type or group name: (rule, params)} entries first; dense/convolution epsilon."""
    from onnxlrp.composites import GROUPS
    lines = ['extends = "base"']
    for key, (rule, params) in rules.items():
        selector = "group" if key in GROUPS else "op"
        lines += ["[[match]]", f'{selector} = "{key}"', f'rule = "{rule}"']
        for k, v in params.items():
            lines.append(f"{k} = {list(v) if isinstance(v, (list, tuple)) else repr(v)}")
    lines += ["[[match]]", 'group = ["dense", "convolution", "linear", "batchnorm"]', 'rule = "epsilon"']
    return "\n".join(lines) + "\n"


@dataclass
class DenseResult:
    """What explain_dense returns (numpy arrays, one row per sample)."""

    relevance: dict        # graph input -> relevance shaped like it
    bias: dict             # node name -> (N, units)
    stabilizer: np.ndarray  # (N,)
    outputs: list          # the model's own outputs
    compiled: onnx.ModelProto

    def conservation_error(self, R: np.ndarray) -> float:
        """max over samples of |sum R - (sum R_in + sum R_bias + stabilizer)| / sum |R|."""
        n = R.shape[0]
        got = sum(r.reshape(n, -1).astype(np.float64).sum(1) for r in self.relevance.values())
        got = got + sum((v.reshape(n, -1).astype(np.float64).sum(1) for v in self.bias.values()), np.zeros(n))
        got = got + self.stabilizer.astype(np.float64)
        want = R.reshape(n, -1).astype(np.float64).sum(1)
        return float(np.max(np.abs(got - want) / np.maximum(np.abs(R).reshape(n, -1).sum(1), 1e-30)))


def explain_dense(model: onnx.ModelProto, feeds: dict, R: np.ndarray, rules: Optional[dict] = None,
                  tmp: Optional[Path] = None, full_check: bool = True) -> DenseResult:
    """Run the model's emitters with relevance R (shaped like the first output) fed as the seed.

    rules: {op type or group: (rule name, params)} put in front of the built-in 'base' composite."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = Path(tmp or folder) / "case.toml"
        path.write_text(composite_text(rules or {}))
        composite = load_composite(str(path))
    canon = canonicalize(fold_constants(model))
    plan = plan_model(canon, composite, None)
    b = GraphBuilder(canon, opset_version(canon), np.dtype(np.float32))
    b._taken.add(SEED_INPUT)
    contributions = {plan.explained: [SEED_INPUT]}
    biases, stabs = {}, []
    for node in reversed(plan.nodes):
        outs = [b.add_all(contributions[o]) if contributions.get(o) else None for o in node.output]
        if all(r is None for r in outs):
            continue
        outs = [r if (r is not None or not o) else b.zeros_like(o) for r, o in zip(outs, node.output)]
        b.scope = f"lrp/_/{node.name}"
        emitted = plan.specs[node.name].fn(b, plan.views[node.name], plan.rules[node.name], outs)
        b.scope = "lrp/_"
        assert len(emitted.inputs) == len(node.input), f"{node.op_type}: one relevance per input expected"
        for inp, r in zip(node.input, emitted.inputs):
            if r is not None and inp in plan.path:
                contributions.setdefault(inp, []).append(r)
        if emitted.bias is not None:
            biases[node.name] = emitted.bias
        if emitted.stabilizer is not None:
            stabs.append(emitted.stabilizer)
    out_names = []
    float_inputs = [i for i in plan.index.graph_inputs if plan.index.info(i).is_float]
    for name in float_inputs:
        parts = contributions.get(name)
        value = b.add_all(parts) if parts else b.zeros_like(name)
        out_names.append((b.op("Identity", [value], f"R_in_{name}"), len(plan.index.info(name).shape)))
    for name, value in biases.items():
        out_names.append((b.op("Identity", [value], f"R_bias_{name}"), 2))
    stab = b.add_all(stabs) if stabs else b.per_sample_sum(b.zeros_like(SEED_INPUT))
    out_names.append((b.op("Identity", [stab], "stab"), 1))
    compiled = onnx.ModelProto()
    compiled.CopyFrom(canon)
    compiled.graph.node.extend(b.nodes)
    compiled.graph.initializer.extend(b.initializers)
    compiled.graph.input.append(tensor(SEED_INPUT, [None] * np.ndim(R)))
    compiled.graph.output.extend(tensor(n, [None] * rank) for n, rank in out_names)
    onnx.checker.check_model(compiled, full_check=full_check)
    n_model = len(model.graph.output)
    values = forward(compiled, {**feeds, SEED_INPUT: R})
    rel = dict(zip(float_inputs, values[n_model: n_model + len(float_inputs)]))
    bias = dict(zip(biases, values[n_model + len(float_inputs): -1]))
    return DenseResult(rel, bias, values[-1], values[:n_model], compiled)


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5, what: str = "relevance") -> None:
    """Relative L2 error <= rtol, and elementwise within rtol of the largest magnitude (float32 precision)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))
    assert err <= rtol, f"{what}: relative L2 error {err:.3g} > {rtol}"
    assert np.abs(got - want).max() <= 10 * rtol * scale, f"{what}: max abs error {np.abs(got - want).max():.3g}"


def seed_like(y: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """A dense relevance seed shaped like y that fades where |y| is tiny (R ~ y^2), so that float32 rounding of a
    near-zero denominator is not amplified: errors stay at float32 precision relative to the whole."""
    y = np.asarray(y, np.float64)
    return (g.normal(size=y.shape) * y * y / max(np.abs(y).mean(), 1e-12)).astype(np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    """A seeded generator."""
    return np.random.default_rng(seed)


LINEAR_RULE_CASES = [
    ("epsilon", {"epsilon": 1e-6}), ("epsilon", {"epsilon": 0.25}), ("zplus", {}),
    ("alpha_beta", {"alpha": 2.0, "beta": 1.0}), ("gamma", {"gamma": 0.25}), ("zbox", {"low": -1.5, "high": 2.0}),
    ("wsquare", {}), ("flat", {}),
]


def matrix_rule(rule: str, params: dict, M: np.ndarray, F: np.ndarray, b: np.ndarray, x: np.ndarray,
                R: np.ndarray) -> tuple:
    """The matrix-form rule (tests/reference.py) for one sample: (R_x, R_b per output unit, stabilizer).
    F is the op linearised with unit weights (the receptive-field pattern the flat rule uses)."""
    import reference as ref
    eps = params.get("epsilon", params.get("stabilizer", 1e-6))
    if rule in ("epsilon", "norm"):
        return ref.epsilon(M, b, x, R, eps)
    if rule == "zplus":
        return ref.zplus(M, b, x, R, eps)
    if rule == "alpha_beta":
        return ref.alpha_beta(M, b, x, R, params["alpha"], params["beta"], eps)
    if rule == "gamma":
        return ref.gamma(M, b, x, R, params["gamma"], eps)
    if rule == "zbox":
        low = np.full_like(x, params["low"])
        high = np.full_like(x, params["high"])
        return ref.zbox(M, b, x, R, low, high, eps)
    if rule == "wsquare":
        return ref.wsquare(M, b, x, R, eps)
    if rule == "flat":
        return ref.flat(F, b, x, R, eps)
    raise KeyError(rule)


def check_linear(model: onnx.ModelProto, x_shape: Sequence, rule: str, params: dict, weight: str,
                 unit_axis_size: Optional[int], seed: int = 0, batch: int = 2, op_key: Optional[str] = None,
                 x: Optional[np.ndarray] = None) -> DenseResult:
    """Check every output of a linear single-node model (input 'x', weight initializer `weight`) against the
    matrix-form rule on its linearisation: R_x, per-unit bias relevance, stabilizer share, conservation."""
    g = rng(seed)
    M, b = linearise(model, "x", x_shape)
    F = (linearise(with_weight(model, weight, np.ones_like), "x", x_shape)[0] != 0).astype(np.float64)
    if x is None:
        x = g.normal(size=(batch,) + tuple(x_shape[1:])).astype(np.float32)
    y = forward(model, {"x": x})[0]
    R = seed_like(y, g)
    key = op_key or model.graph.node[-1].op_type
    res = explain_dense(model, {"x": x}, R, {key: (rule, params)})
    for i in range(batch):
        xv, Rv = x[i].reshape(-1).astype(np.float64), R[i].reshape(-1).astype(np.float64)
        Rx, Rb, stab = matrix_rule(rule, params, M, F, b, xv, Rv)
        assert_close(res.relevance["x"][i].reshape(-1), Rx, 1e-5, f"{rule} R_x sample {i}")
        scale = np.abs(Rv).sum()
        if unit_axis_size is not None and np.any(Rb != 0):
            (got,) = res.bias.values()
            want = Rb.reshape(unit_axis_size, -1).sum(axis=1)
            assert np.allclose(got[i], want, rtol=1e-4, atol=1e-6 * scale), f"{rule} bias: {got[i]} vs {want}"
        else:
            for v in res.bias.values():
                assert np.allclose(v[i], 0.0, atol=1e-6 * scale), f"{rule}: unexpected bias relevance"
        assert abs(float(res.stabilizer[i]) - stab) <= 1e-5 * scale, f"{rule} stabilizer {res.stabilizer[i]} vs {stab}"
    assert res.conservation_error(R) < 1e-5
    return res
