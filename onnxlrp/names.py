"""Short forms of node and tensor names and of rule descriptions, for tables, plots and terminal lines.

Exporters name nodes by module path: PyTorch writes `/layer1/layer1.0/conv1/Conv` and the tensor it produces
`/layer1/layer1.0/conv1/Conv_output_0`. The short form drops the leading '/', a path segment that the next one
repeats (`layer1` before `layer1.0`) and the `_output_0` suffix: `layer1.0/conv1/Conv`. Where even that is too
wide, the last segments are kept behind an ellipsis: `…conv1/Conv`, `…nv1/Conv`.
"""
from __future__ import annotations

import re
from typing import Optional

ELLIPSIS = "\u2026"
_OUTPUT_SUFFIX = re.compile(r"_output_0$")
_RULE = re.compile(r"^(?P<name>\w+)\((?P<params>.*)\)$")
STABILIZERS = ("epsilon", "stabilizer")  # parameters left out of a short rule where they hold their default


def short_name(name: str, width: Optional[int] = None) -> str:
    """A node or tensor name without the exporter's repetitions, cut from the left to width characters."""
    segments = [s for s in _OUTPUT_SUFFIX.sub("", name).split("/") if s]
    if not segments:
        return name if width is None or len(name) <= width else name[:max(width - 1, 0)] + ELLIPSIS
    kept = [s for s, following in zip(segments, segments[1:] + [""]) if not following.startswith(s + ".")]
    text = "/".join(kept)
    if width is None or len(text) <= width:
        return text
    for start in range(1, len(kept) - 1):  # whole segments first, but never the last one alone (often the op type)
        tail = ELLIPSIS + "/".join(kept[start:])
        if len(tail) <= width:
            return tail
    return ELLIPSIS + text[len(text) - max(width - 1, 1):]


def short_rule(description: str) -> str:
    """A rule description without parameter names, and without epsilon / stabilizer where they hold the rule's
    default: 'zplus(stabilizer=1e-06)' -> 'zplus', 'gamma(gamma=0.25, stabilizer=1e-06)' -> 'gamma(0.25)',
    'epsilon(epsilon=0)' -> 'epsilon(0)', 'alpha_beta(alpha=2, beta=1, stabilizer=1e-06)' -> 'alpha_beta(2, 1)'."""
    from .rules import RULES
    match = _RULE.match(description.strip())
    if not match:
        return description
    fields = getattr(RULES.get(match["name"]), "__dataclass_fields__", {})
    defaults = {f"{k}={fields[k].default:g}" for k in STABILIZERS if k in fields}
    params = [p for p in _split_params(match["params"]) if p.replace(" ", "") not in defaults]
    values = [p.split("=", 1)[1].replace(" ", "") if "=" in p else p for p in params]
    return f"{match['name']}({', '.join(values)})" if values else match["name"]


def _split_params(text: str) -> list:
    """'a=1, b=[1, 2]' -> ['a=1', 'b=[1, 2]'] (commas inside brackets stay)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts
