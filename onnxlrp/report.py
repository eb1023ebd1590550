"""Text reports of an explanation: the conservation line, top positions, the plan table, saving to .npz."""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from .errors import OnnxLrpError
from .runtime import Explanation


def conservation_line(exp: Explanation, i: int) -> str:
    """'total = inputs + biases + stabilizer' for sample i, with the numbers and the relative error."""
    c = exp.conservation()
    return (f"total {c['total'][i]:.6g} = inputs {c['inputs'][i]:.6g} + biases {c['biases'][i]:.6g} "
            f"+ stabilizer {c['stabilizer'][i]:.3g}  (relative error {c['relative_error'][i]:.1e})")


def top_positions(relevance: np.ndarray, k: int) -> list:
    """The k positions of largest |relevance| in one sample: [(index tuple, value)]."""
    flat = relevance.reshape(-1)
    k = min(k, flat.size)
    order = np.argsort(-np.abs(flat), kind="stable")[:k]
    return [(tuple(int(v) for v in np.unravel_index(j, relevance.shape)), float(flat[j])) for j in order]


def save_explanation(exp: Explanation, path: str) -> None:
    """Write output, target, total, stabilizer, relevance/<input>, bias/<node> (and nodes/<tensor>) to an .npz
    file at exactly path."""
    arrays = {"output": exp.output, "target": exp.target, "total": exp.total, "stabilizer": exp.stabilizer}
    arrays.update({f"relevance/{k}": v for k, v in exp.relevance.items()})
    arrays.update({f"bias/{k}": v for k, v in exp.bias.items()})
    arrays.update({f"nodes/{k}": v for k, v in exp.nodes.items()})
    buffer = io.BytesIO()  # np.savez would add '.npz' to a name without it, and needs a seekable file
    np.savez(buffer, **arrays)
    try:
        with open(path, "wb") as file:
            file.write(buffer.getbuffer())
    except OSError as exc:
        raise OnnxLrpError(f"cannot write {path}: {exc.strerror or exc}") from None


def plan_rows(model, composite: str, params: Optional[dict], output: Optional[str]) -> list:
    """One row per explained node: name, op type, rule description, whether its bias relevance is reported."""
    from .canonicalize import canonicalize
    from .compiler import plan_model
    from .composites import load_composite
    from .emitters.linear import LinearOp  # noqa: F401  (linear ops decide whether a bias exists)
    from .gradient import is_gradient, plan_gradient
    from .graph import load_model
    if is_gradient(composite):  # every node passes its gradient; linear nodes report b * df/db
        plan = plan_gradient(canonicalize(load_model(model)), output)
        return [{"name": n.name, "op": n.op_type, "rule": "gradient", "bias": _has_bias(plan.views[n.name])}
                for n in plan.nodes]
    plan = plan_model(canonicalize(load_model(model)), load_composite(composite, params), output)
    rows = []
    for node in plan.nodes:
        view = plan.views[node.name]
        rule = plan.rules[node.name]
        rows.append({"name": node.name, "op": node.op_type, "rule": rule.describe(),
                     "bias": _has_bias(view) and bool(rule.groups())})
    return rows


def _has_bias(view) -> bool:
    """True if the node is linear with a non-zero constant bias (Gemm C, Conv B, Add of a constant, BN)."""
    op = view.op_type
    if op in ("Gemm", "Conv", "ConvTranspose"):
        k = 2
        return len(view.inputs) > k and bool(view.inputs[k]) and view.const(view.inputs[k]) is not None and bool(
            np.any(view.const(view.inputs[k])))
    if op in ("Add", "Sub"):
        return any(view.const(n) is not None for n in view.inputs)
    return op == "BatchNormalization"
