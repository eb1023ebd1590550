"""The error types onnxlrp raises: one base class, a few subclasses, each message one readable line."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence


class OnnxLrpError(Exception):
    """Base of every error onnxlrp raises on purpose; its message is one line that says what and where."""


class ModelLoadError(OnnxLrpError):
    """The model file is missing, unreadable, not ONNX, or fails the ONNX checker."""


class CompositeError(OnnxLrpError):
    """A composite file or entry is malformed: unknown key, rule, group or parameter, or a bad value."""


class RuleParameterError(CompositeError):
    """A rule got a parameter outside its valid range (alpha - beta != 1, gamma < 0, low > high, ...)."""


class UnsupportedModelError(OnnxLrpError):
    """The graph holds nodes that onnxlrp cannot explain; every such node is listed at once."""

    def __init__(self, problems: Sequence["NodeProblem"], lead: str = "") -> None:
        self.problems = list(problems)
        super().__init__(format_node_problems(self.problems, lead))


class CompileError(OnnxLrpError):
    """An emitter failed on a node; the message names the node, its op type and its rule."""


class InputError(OnnxLrpError):
    """The data handed to explain() does not fit the model: names, shapes, dtypes, values or targets."""


class NodeProblem:
    """One unsupported node: its op type, name, and why (with a hint where one exists)."""

    def __init__(self, op_type: str, name: str, reason: str, hint: str = "") -> None:
        self.op_type, self.name, self.reason, self.hint = op_type, name, reason, hint

    def __repr__(self) -> str:
        return f"NodeProblem({self.op_type!r}, {self.name!r}, {self.reason!r})"


def format_node_problems(problems: Iterable[NodeProblem], lead: str = "") -> str:
    """Group problems by (op type, reason) into one line: 'Op x3 (a, b, c): reason' (after `lead`, if given)."""
    problems = list(problems)
    groups: dict[tuple[str, str, str], list[str]] = {}
    for p in problems:
        groups.setdefault((p.op_type, p.reason, p.hint), []).append(p.name)
    parts = []
    for (op, reason, hint), names in groups.items():
        shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
        part = f"{op} x{len(names)} ({shown}): {reason}"
        if hint:
            part += f" [{hint}]"
        parts.append(part)
    total = sum(Counter(p.op_type for p in problems).values())
    if lead:
        return f"{lead}: {total} such node(s): " + "; ".join(parts)
    return f"cannot explain this model, {total} unsupported node(s): " + "; ".join(parts)
