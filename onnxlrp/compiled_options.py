"""Options that only a compilation can apply, checked against a compiled model: a different one is refused."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import OnnxLrpError


def composite_name(spec) -> str:
    """The name a composite spec compiles under: a built-in name with '_' for '-', a TOML file's stem."""
    text = str(getattr(spec, "name", spec))
    return Path(text).stem if text.endswith(".toml") else text.replace("-", "_")


def refuse_other_options(meta: dict, composite=None, params: Optional[dict] = None, output: Optional[str] = None,
                         init: Optional[str] = None) -> None:
    """Raise unless every option given matches what the compiled model (its metadata `meta`) was compiled with:
    a compiled model cannot change its composite, parameters, explained output or initial relevance."""
    from .composites import parse_value
    compiled = meta["composite"]
    fix = "explain the original model instead, or leave the option out"
    if composite is not None and composite_name(composite) != compiled:
        raise OnnxLrpError(f"this model is already compiled with composite {compiled!r}: composite "
                           f"{composite_name(composite)!r} needs a new compilation ({fix})")
    for key, value in (params or {}).items():
        if key not in meta["params"]:
            raise OnnxLrpError(f"this model is already compiled with composite {compiled!r}, which has no "
                               f"parameter {key!r} (it has: {', '.join(sorted(meta['params'])) or 'none'})")
        wanted, have = parse_value(value, key), meta["params"][key]
        if (list(wanted) if isinstance(wanted, (list, tuple)) else wanted) != have:
            raise OnnxLrpError(f"this model is already compiled with {key}={_text(have)}: {key}={_text(wanted)} "
                               f"needs a new compilation ({fix})")
    if output is not None and output != meta["output"]:
        raise OnnxLrpError(f"this model is already compiled to explain output {meta['output']!r}: output {output!r} "
                           f"needs a new compilation ({fix})")
    if init is not None and init != meta.get("init", "logit"):
        raise OnnxLrpError(f"this model is already compiled with init={meta.get('init', 'logit')!r}: init={init!r} "
                           f"needs a new compilation ({fix})")


def _text(value) -> str:
    """A parameter value as the user writes it."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
