"""The classical-ML ops of the `ai.onnx.ml` domain that are linear maps, as linear nodes under any linear rule, their
bias reported like any other: Scaler (z = (x - offset) * scale per feature), LinearRegressor and LinearClassifier
(z = x C^T + intercepts; the classifier's scores, its post_transform split off by canonicalisation). skl2onnx
writes them for StandardScaler, LinearRegression, Ridge, LogisticRegression, LinearSVC, SGD*. A Normalizer is
refused by the compiler (dividing by the row's own norm is not a linear map)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..builder import GraphBuilder
from ..rules import LINEAR_RULES, Rule
from ..shape_values import ML_SHAPE_KEEPING as SHAPE_KEEPING  # ai.onnx.ml ops whose output is shaped like X
from . import Emitted, NodeView, register
from .generic_linear import emit_linear
from .linear import DenseOp, ElementwiseOp

ML = "ai.onnx.ml"


def _features(view: NodeView) -> Optional[int]:
    """The number of input features (axis 1 of a rank-2 input), None if unknown; ONNX shape inference leaves the
    outputs of ai.onnx.ml ops unshaped, so it is read through the shape-keeping ones (Scaler, Normalizer, ...)."""
    name = view.inputs[0]
    for _ in range(16):
        shape = view.shape(name)
        if shape is not None:
            return shape[1] if len(shape) == 2 and shape[1] is not None else None
        node = view.index.producer.get(name)
        if node is None or node.domain != ML or node.op_type not in SHAPE_KEEPING:
            return None
        name = node.input[0]
    return None


def _check_rank2(view: NodeView) -> Optional[str]:
    """The ML ops read a (N, features) matrix with a known feature count."""
    if _features(view) is None:
        return f"its input {view.inputs[0]!r} is not a (N, features) matrix of known width"
    return None


def _check_scaler(view: NodeView) -> Optional[str]:
    """Scaler: offset and scale of one value or one per feature."""
    reason = _check_rank2(view)
    if reason:
        return reason
    features = _features(view)
    for name in ("offset", "scale"):
        values = view.attr(name)
        if values is not None and len(values) not in (1, features):
            return f"its {name} has {len(values)} values for {features} features (a broken model)"
    return None


@register("Scaler", group="affine", rules=LINEAR_RULES, check=_check_scaler, domain=ML)
def emit_scaler(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """Scaler as an elementwise linear node: z = x * scale - offset * scale (bias -offset * scale per feature)."""
    features = _features(view)
    offset = np.broadcast_to(np.asarray(view.attr("offset", [0.0]), np.float64), (features,))
    scale = np.broadcast_to(np.asarray(view.attr("scale", [1.0]), np.float64), (features,))
    op = ElementwiseOp(x=view.inputs[0], z=view.outputs[0], weight=scale.copy(), bias=-offset * scale, z_rank=2,
                       x_rank=2)
    R_x, R_b, stab = emit_linear(b, view, rule, R[0], op)
    return Emitted([R_x], R_b, stab)


def linear_model_weights(view: NodeView) -> tuple:
    """(W (features, outputs), intercepts (outputs,)) of a LinearRegressor / LinearClassifier, as onnxruntime
    computes its scores: one coefficient row per output, and for a binary classifier with one row the scores
    [1 - s, s] of s = x c + b (onnxruntime's second-class column; ONNX leaves it open)."""
    features = _features(view)
    coefficients = np.asarray(view.attr("coefficients"), np.float64).reshape(-1, features)
    intercepts = np.asarray(view.attr("intercepts", [0.0] * coefficients.shape[0]), np.float64).reshape(-1)
    intercepts = np.broadcast_to(intercepts, (coefficients.shape[0],))
    if view.op_type == "LinearClassifier" and coefficients.shape[0] == 1 and _class_count(view) == 2:
        coefficients = np.concatenate([-coefficients, coefficients])
        intercepts = np.concatenate([1.0 - intercepts, intercepts])
    return np.ascontiguousarray(coefficients.T), intercepts.copy()


def _class_count(view: NodeView) -> int:
    """How many class labels a LinearClassifier has."""
    labels = view.attr("classlabels_ints") or view.attr("classlabels_strings") or []
    return len(labels)


def _check_linear_model(view: NodeView) -> Optional[str]:
    """Coefficients fitting the input's width; no post_transform left (canonicalisation splits SOFTMAX and
    LOGISTIC off a classifier's scores)."""
    reason = _check_rank2(view)
    if reason:
        return reason
    transform = view.attr("post_transform", "NONE")
    if transform != "NONE":
        return f"post_transform {transform!r} makes its scores a non-linear function of the input"
    coefficients = view.attr("coefficients")
    if not coefficients or len(coefficients) % _features(view):
        return f"its {len(coefficients or [])} coefficients do not fit {_features(view)} features (a broken model)"
    return None


def _emit_linear_model(b: GraphBuilder, view: NodeView, rule: Rule, R: list, scores: int) -> Emitted:
    """z = x W + intercepts as a dense linear node; relevance arrives on output `scores`."""
    w, intercepts = linear_model_weights(view)
    op = DenseOp(x=view.inputs[0], z=view.outputs[scores], weight=w, bias=intercepts, z_rank=2, x_rank=2)
    R_x, R_b, stab = emit_linear(b, view, rule, R[scores], op)
    return Emitted([R_x], R_b, stab)


@register("LinearRegressor", group="dense", rules=LINEAR_RULES, check=_check_linear_model, domain=ML)
def emit_linear_regressor(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """LinearRegressor: y = x C^T + intercepts, one row of C per target."""
    return _emit_linear_model(b, view, rule, R, 0)


@register("LinearClassifier", group="dense", rules=LINEAR_RULES, check=_check_linear_model, domain=ML)
def emit_linear_classifier(b: GraphBuilder, view: NodeView, rule: Rule, R: list) -> Emitted:
    """LinearClassifier: the scores (output 1) z = x C^T + intercepts; the label output carries no relevance."""
    return _emit_linear_model(b, view, rule, R, 1)
