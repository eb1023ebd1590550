"""Specialising a model to one input size: dynamic dims of its graph inputs fixed before it is compiled.

Compiled graphs accept every input size the source model accepts; a model whose explanation needs a size that only
the run time knows (an op no shape-generic transpose exists for) is compiled for one size with
`compile(..., shapes={"x": (1, 3, 48, 192)})` / `onnxlrp compile --shape x=1,3,48,192`.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import onnx

from .errors import CompileError, OnnxLrpError

# what the messages of checks that need a static size append (see static_size_hint)
SHAPE_HINT = "compile for one input size: --shape {example} (Python: shapes={{{python}}})"


class NeedsStaticSize(str):
    """A support check's reason that only a static input size would remove (plan_model adds SHAPE_HINT to it)."""


class StaticSizeError(CompileError):
    """An emitter needs a size that only the run time knows (compile() adds SHAPE_HINT to the message)."""


def graph_input_names(model: onnx.ModelProto) -> list:
    """The model's real inputs (initializers excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def static_size_hint(model: onnx.ModelProto) -> str:
    """The hint that tells how to compile a model for one input size, with its first input as the example."""
    names = graph_input_names(model)
    if not names:
        return SHAPE_HINT.format(example="NAME=D0,D1,...", python="'NAME': (D0, D1, ...)")
    vi = next(i for i in model.graph.input if i.name == names[0])
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in vi.type.tensor_type.shape.dim]
    letters = iter("HWDTUV")
    text = [str(d) if d is not None else ("1" if axis == 0 else next(letters, "K")) for axis, d in enumerate(dims)]
    return SHAPE_HINT.format(example=f"{names[0]}={','.join(text)}",
                             python=f"{names[0]!r}: ({', '.join(text)})")


def specialise(model: onnx.ModelProto, shapes: Optional[Mapping[str, Sequence[Optional[int]]]]) -> onnx.ModelProto:
    """The model with the named inputs' dims fixed to `shapes` (in place; -1 or None keeps an axis dynamic).
    Every name must be a graph input, every shape of the input's rank and equal to its static dims."""
    if not shapes:
        return model
    if not isinstance(shapes, Mapping):
        raise OnnxLrpError("shapes must be a dict input name -> dims, e.g. {'x': (1, 3, 48, 192)}")
    names = graph_input_names(model)
    by_name = {vi.name: vi for vi in model.graph.input}
    for name, dims in shapes.items():
        if name not in names:
            raise OnnxLrpError(f"shapes names an unknown input {name!r} (inputs: {', '.join(names)})")
        wanted = _dims(name, dims)
        declared = by_name[name].type.tensor_type.shape.dim
        if len(declared) != len(wanted):
            raise OnnxLrpError(f"the shape given for input {name!r} has {len(wanted)} dims, the input has rank "
                               f"{len(declared)}")
        for axis, (dim, want) in enumerate(zip(declared, wanted)):
            if want is None:
                continue
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != want:
                raise OnnxLrpError(f"axis {axis} of input {name!r} is {dim.dim_value}, the shape given says {want}")
            dim.Clear()
            dim.dim_value = want
    return model


def _dims(name: str, dims) -> list:
    """The given dims as a list of positive ints or None (for -1 / None: the axis stays dynamic)."""
    try:
        values = list(dims)
    except TypeError:
        raise OnnxLrpError(f"the shape given for input {name!r} is not a sequence of ints: {dims!r}") from None
    result = []
    for d in values:
        if d is None or (isinstance(d, int) and not isinstance(d, bool) and d == -1):
            result.append(None)
        elif isinstance(d, int) and not isinstance(d, bool) and d > 0:
            result.append(int(d))
        elif hasattr(d, "__index__") and not isinstance(d, bool) and int(d) > 0:
            result.append(int(d))
        else:
            raise OnnxLrpError(f"the shape given for input {name!r} must hold positive ints (or -1 to keep an axis "
                               f"dynamic), got {list(values)}")
    return result
