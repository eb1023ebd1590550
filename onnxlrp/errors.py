"""The error types onnxlrp raises: one base class, a few subclasses, each message one readable line."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence


def one_line(text: str) -> str:
    """text with every control or other non-printable character escaped as Python writes it (a newline as \\n, a
    NUL as \\x00, U+2028 as \\u2028): names taken from a file cannot break a message into several lines or forge
    a line of their own. Printable characters, non-ASCII ones included, stay as they are."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class OnnxLrpError(Exception):
    """Base of every error onnxlrp raises on purpose; its message is one line that says what and where (control
    characters of names echoed in it are escaped, see one_line)."""

    def __init__(self, message: str = "", *args) -> None:
        super().__init__(one_line(message) if isinstance(message, str) else message, *args)


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


class CompileBudgetError(CompileError):
    """A constant that an emitter would build is sized by a declared dimension beyond the compile budget
    (max_constant_bytes= / --max-constant-mb); the message names the node, the declared shape and the limit."""


class InputError(OnnxLrpError):
    """The data handed to explain() does not fit the model: names, shapes, dtypes, values or targets."""


class ConservationError(OnnxLrpError):
    """An explanation breaks total = inputs + biases + stabilizer beyond rounding: the compiled model is broken
    (modified, or an onnxlrp bug); explain(check=False) / --no-check skips the check."""


class ArgumentError(OnnxLrpError, ValueError):
    """An argument of a public function has a valid type but a value it cannot take; the message names it."""


class ArgumentTypeError(OnnxLrpError, TypeError):
    """An argument of a public function has the wrong type; the message names it and the types it takes."""


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
    shared = Counter(hint for (_, _, hint) in groups if hint)  # a hint of several groups is said once, at the end
    parts = []
    for (op, reason, hint), names in groups.items():
        shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
        part = f"{op} x{len(names)} ({shown}): {reason}"
        if hint and shared[hint] == 1:
            part += f" [{hint}]"
        parts.append(part)
    for hint, count in shared.items():
        if count > 1:
            nodes = sum(len(names) for (_, _, h), names in groups.items() if h == hint)
            parts.append(f"for {nodes} of these nodes: {hint}")
    total = sum(Counter(p.op_type for p in problems).values())
    if lead:
        return f"{lead}: {total} such node(s): " + "; ".join(parts)
    return f"cannot explain this model, {total} unsupported node(s): " + "; ".join(parts)
