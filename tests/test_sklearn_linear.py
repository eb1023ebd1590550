"""scikit-learn's linear models through skl2onnx (ai.onnx.ml Scaler, LinearRegressor, LinearClassifier) as linear
nodes: against a dense float64 NumPy epsilon-LRP on the estimator's own coefficients, every linear rule on the
single ops, and the Normalizer refused with its reason."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxlrp
import reference as ref
from ops_harness import LINEAR_RULE_CASES, check_linear
from onnxlrp.errors import UnsupportedModelError


@pytest.fixture(scope="module")
def iris():
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


def _onnx(estimator, X):
    """skl2onnx export without ZipMap (ai.onnx.ml opset 3)."""
    from skl2onnx import to_onnx
    from sklearn.base import is_classifier
    options = {"zipmap": False} if is_classifier(estimator) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_onnx(estimator, X[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})


def test_standard_scaler_logistic_regression_pipeline(iris):
    """Pipeline(StandardScaler, LogisticRegression): the logits are the decision function, and input and bias
    relevance equal epsilon-LRP through (x - mean) / scale and x W^T + b in float64."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = iris
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    model = _onnx(pipe, X)
    assert {n.op_type for n in model.graph.node} == {"Scaler", "LinearClassifier", "Normalizer"}
    x = X[::25]
    exp = onnxlrp.Explainer(model, "epsilon").explain(x)
    np.testing.assert_allclose(exp.output, pipe.decision_function(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(exp.target, pipe.predict(x))
    scaler, clf = pipe[0], pipe[1]
    D, d = np.diag(1.0 / scaler.scale_), -scaler.mean_ / scaler.scale_
    W, b = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    scaler_bias = next(v for k, v in exp.bias.items() if "Scaler" in k)
    clf_bias = next(v for k, v in exp.bias.items() if "LinearClassifier" in k)
    for i in range(len(x)):
        h = D @ x[i].astype(np.float64) + d
        z = W @ h + b
        R = np.zeros_like(z)
        R[exp.target[i]] = z[exp.target[i]]
        R_h, R_b2, _ = ref.epsilon(W, b, h, R)
        R_x, R_b1, _ = ref.epsilon(D, d, x[i].astype(np.float64), R_h)
        scale = np.abs(R).sum()
        np.testing.assert_allclose(exp.relevance["X"][i], R_x, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(clf_bias[i], R_b2, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(scaler_bias[i], R_b1, rtol=1e-4, atol=1e-5 * scale)
    assert np.all(exp.conservation()["relative_error"] < 1e-5)


@pytest.mark.parametrize("kind", ["linear_regression", "binary_logistic"])
def test_linear_regression_and_binary_logistic_regression(iris, kind):
    """LinearRegression (two targets) and a binary LogisticRegression: epsilon-LRP on coef_ and intercept_."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    X, y = iris
    if kind == "linear_regression":
        est = LinearRegression().fit(X[:, :3], np.stack([X[:, 3], X[:, 0] - X[:, 1]], axis=1))
        Xs, W, b = X[:, :3], est.coef_, est.intercept_
        target = 1
    else:
        est = LogisticRegression().fit(X, y == 2)
        Xs = X
        W = np.concatenate([-est.coef_, est.coef_])  # skl2onnx writes the scores [-s, s]
        b = np.concatenate([-est.intercept_, est.intercept_])
        target = 1
    model = _onnx(est, Xs)
    x = Xs[::30]
    exp = onnxlrp.Explainer(model, "epsilon").explain(x, target=target)
    want_logits = est.predict(x) if kind == "linear_regression" else est.decision_function(x)
    got_logits = exp.output if kind == "linear_regression" else exp.output[:, 1]
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-5)
    for i in range(len(x)):
        z = W.astype(np.float64) @ x[i].astype(np.float64) + b
        R = np.zeros_like(z)
        R[target] = z[target]
        R_x, R_b, _ = ref.epsilon(W.astype(np.float64), b.astype(np.float64), x[i].astype(np.float64), R)
        np.testing.assert_allclose(exp.relevance["X"][i], R_x, rtol=1e-4, atol=1e-5 * abs(z[target]))
        (bias,) = exp.bias.values()
        np.testing.assert_allclose(bias[i], R_b, rtol=1e-4, atol=1e-5 * abs(z[target]))


def _ml_model(node: onnx.NodeProto, features: int, outputs: list) -> onnx.ModelProto:
    """A one-node ai.onnx.ml model reading x (N, features)."""
    graph = helper.make_graph([node], "ml", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                           ["N", features])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                             ir_version=10)


def _single_ml(kind: str):
    """(model, features, units, op type) for each ai.onnx.ml linear op."""
    g = np.random.default_rng(8)
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", None])
    if kind == "scaler":
        node = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=g.normal(size=5).tolist(),
                                scale=g.uniform(-2, 2, size=5).tolist())
        return _ml_model(node, 5, [y]), 5, 5, "Scaler"
    if kind == "regressor":
        node = helper.make_node("LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml", targets=3,
                                coefficients=g.normal(size=12).tolist(), intercepts=g.normal(size=3).tolist())
        return _ml_model(node, 4, [y]), 4, 3, "LinearRegressor"
    label = helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"])
    rows = 1 if kind == "binary_one_row" else 3
    labels = [0, 1] if rows == 1 else [0, 1, 2]
    node = helper.make_node("LinearClassifier", ["x"], ["label", "y"], domain="ai.onnx.ml", classlabels_ints=labels,
                            coefficients=g.normal(size=4 * rows).tolist(), intercepts=g.normal(size=rows).tolist())
    return _ml_model(node, 4, [label, y]), 4, len(labels), "LinearClassifier"


@pytest.mark.parametrize("kind", ["scaler", "regressor", "classifier", "binary_one_row"])
@pytest.mark.parametrize("rule,params", LINEAR_RULE_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_every_linear_rule_on_the_ml_ops(kind, rule, params):
    """Each ai.onnx.ml linear op under every linear rule: relevance, bias rows and stabilizer equal the matrix-form
    rule on the op's map as onnxruntime computes it (linearised), for the scores it outputs."""
    model, features, units, op = _single_ml(kind)
    out = 1 if op == "LinearClassifier" else 0
    check_linear_ml(model, features, rule, params, units, op, out)


def check_linear_ml(model, features, rule, params, units, op, out):
    """check_linear on output `out` (the scores of a classifier, whose output 0 is the label)."""
    if out == 0:
        check_linear(model, (1, features), rule, params, "none", units, op_key=op)
        return
    scores = onnx.ModelProto()
    scores.CopyFrom(model)
    del scores.graph.output[0]  # the label is still computed, only the scores are a graph output
    check_linear(scores, (1, features), rule, params, "none", units, op_key=op)


def test_normalizer_is_refused_with_the_reason(iris):
    """Pipeline(Normalizer, LogisticRegression): one line naming the Normalizer and why it has no rule."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer
    X, y = iris
    model = _onnx(make_pipeline(Normalizer(), LogisticRegression(max_iter=500)).fit(X, y), X)
    with pytest.raises(UnsupportedModelError, match=r"1 unsupported node\(s\): Normalizer x1 \(.*\): it divides each "
                                                    r"row by its own norm, which is not a linear map"):
        onnxlrp.compile(model)


@pytest.mark.parametrize("transform,rows", [("SOFTMAX", 3), ("LOGISTIC", 3), ("LOGISTIC", 1)])
def test_classifier_transform_split_keeps_outputs(transform, rows):
    """The post_transform split off a LinearClassifier (a one-row binary LOGISTIC one rewritten to two rows) gives
    the same labels and probabilities in onnxruntime, and its scores are the linear map."""
    from onnxlrp.canonicalize import canonicalize
    from ops_harness import forward
    g = np.random.default_rng(3)
    labels = [0, 1] if rows == 1 else [0, 1, 2]
    node = helper.make_node("LinearClassifier", ["x"], ["label", "y"], domain="ai.onnx.ml", classlabels_ints=labels,
                            coefficients=g.normal(size=4 * rows).tolist(), intercepts=g.normal(size=rows).tolist(),
                            post_transform=transform)
    model = _ml_model(node, 4, [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]),
                                helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", None])])
    canon = canonicalize(model)
    assert [n.op_type for n in canon.graph.node] == ["LinearClassifier", "Softmax" if transform == "SOFTMAX"
                                                     else "Sigmoid"]
    x = g.normal(size=(6, 4)).astype(np.float32)
    want, got = forward(model, {"x": x}), forward(canon, {"x": x})
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)
