"""Shape ops: relevance is moved back exactly as the gradient would move it (reshape back, inverse permutation)."""
from __future__ import annotations

import numpy as np

from ..builder import GraphBuilder
from ..rules import Pass, Rule
from . import Emitted, NodeView, register


def _reshape_back(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = Reshape(R_y, Shape(x)) for ops that only reinterpret the shape."""
    x = view.inputs[0]
    back = b.op("Reshape", [R[0], b.op("Shape", [x], "x_shape")], "R_reshaped")
    return Emitted([back] + [None] * (len(view.inputs) - 1))


register(("Reshape", "Flatten", "Squeeze", "Unsqueeze"), group="shape", rules=(Pass,))(_reshape_back)


@register("Transpose", group="shape", rules=(Pass,))
def emit_transpose(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """R_x = Transpose(R_y, inverse permutation)."""
    perm = view.attr("perm")
    if perm is None:
        rank = len(view.shape(view.inputs[0]))
        perm = list(reversed(range(rank)))
    inverse = list(np.argsort(perm))
    return Emitted([b.op("Transpose", [R[0]], "R_T", perm=[int(i) for i in inverse])])
