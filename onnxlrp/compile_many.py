"""Compiling many models at once (files and folders of .onnx) into one output folder, each compiled or refused."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .errors import OnnxLrpError


@dataclass
class CompileResult:
    """One model: where it went, or why it was refused."""

    source: Path
    target: Optional[Path]
    compiled: bool
    message: str
    seconds: float = 0.0


def compile_targets(models: Sequence[str], out_dir: Path) -> list:
    """(source, target or None, reason) per model: a folder contributes every .onnx below it (its layout kept under
    out_dir), a file goes to out_dir/<name>; a source that would overwrite another's target is refused."""
    out_dir = Path(out_dir)
    pairs = []
    for item in models:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.onnx")
                           if p.is_file() and not _inside(p, out_dir) and not p.name.startswith("."))
            if not found:
                pairs.append((path, None, "no .onnx files in this folder"))
            pairs += [(p, out_dir / p.relative_to(path), "") for p in found]
        else:
            pairs.append((path, out_dir / path.name, ""))
    seen: dict = {}
    checked = []
    for source, target, reason in pairs:
        if target is not None and not reason:
            key = target.resolve()
            if key in seen:
                reason, target = f"its output name is taken by {seen[key]}", None
            elif source.resolve() == key:
                reason, target = "the output would overwrite the model itself", None
            else:
                seen[key] = source
        checked.append((source, target, reason))
    return checked


def _inside(path: Path, folder: Path) -> bool:
    """True when path lies inside folder."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def compile_many(models: Sequence[str], out_dir: str, composite: str = "epsilon_plus", *,
                 params: Optional[dict] = None, output: Optional[str] = None, init: str = "logit",
                 node_relevance=None, max_constant_bytes: Optional[int] = None) -> Iterator[CompileResult]:
    """Compile every model into out_dir; yields one result per model (a refusal never stops the others)."""
    from .compiler import compile as compile_model
    from .io import save_model
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise OnnxLrpError(f"output {folder} is a file: compiling several models needs a folder")
    for source, target, reason in compile_targets(models, folder):
        if target is None:
            yield CompileResult(source, None, False, reason)
            continue
        started = time.perf_counter()
        try:
            compiled = compile_model(str(source), composite, params=params, output=output, init=init,
                                     node_relevance=node_relevance, max_constant_bytes=max_constant_bytes)
            target.parent.mkdir(parents=True, exist_ok=True)
            save_model(compiled, str(target))
        except OnnxLrpError as exc:
            yield CompileResult(source, None, False, str(exc), time.perf_counter() - started)
            continue
        except Exception as exc:  # an onnxlrp bug on this model: report it, go on with the others
            text = str(exc).splitlines()[0] if str(exc) else ""
            yield CompileResult(source, None, False, f"internal error: {type(exc).__name__}: {text} (please report)",
                                time.perf_counter() - started)
            continue
        yield CompileResult(source, target, True, f"{len(compiled.graph.node)} nodes",
                            time.perf_counter() - started)
