"""The scikit-learn models of the zoo sweep, fitted on the digits data set (shipped with scikit-learn) and converted
with skl2onnx as a user would (default options: ZipMap on the probabilities)."""
from __future__ import annotations

import warnings

import numpy as np

from zoo_sweep_runs import COMPOSITE, explain_row


def _digits() -> tuple:
    """64-feature digits, float32, and their labels."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def _mlp_logits(clf, x: np.ndarray) -> np.ndarray:
    """The MLPClassifier's pre-softmax outputs (ReLU hidden layers) in float64."""
    h = x.astype(np.float64)
    for i, (W, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        h = h @ W + b
        if i < len(clf.coefs_) - 1:
            h = np.maximum(h, 0)
    return h


def estimators() -> dict:
    """name -> (unfitted estimator, its logits for x once fitted)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def mlp():
        return MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=300, random_state=0)

    def lr():
        return LogisticRegression(max_iter=500)

    return {
        "MLPClassifier": (mlp(), lambda m, x: _mlp_logits(m, x)),
        "LogisticRegression": (lr(), lambda m, x: m.decision_function(x)),
        "Pipeline(StandardScaler, LogisticRegression)": (
            make_pipeline(StandardScaler(), lr()), lambda m, x: m.decision_function(x)),
        "Pipeline(StandardScaler, MLPClassifier)": (
            make_pipeline(StandardScaler(), mlp()), lambda m, x: _mlp_logits(m[-1], m[0].transform(x))),
    }


def sklearn_row(name: str, composite: str = COMPOSITE) -> dict:
    """Fit, convert and explain one estimator; the compiled logits must equal the estimator's."""
    from skl2onnx import to_onnx
    X, y = _digits()
    estimator, logits = estimators()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X, y)
        proto = to_onnx(estimator, X[:1], target_opset=17)
    x = X[::300]
    row = {"model": name, "family": "scikit-learn", "exporter": "skl2onnx", "weights": "trained"}
    return explain_row(row, proto, x, logits(estimator, x), composite)


def sklearn_rows(composite: str = COMPOSITE) -> list:
    """Every estimator's row."""
    return [sklearn_row(name, composite) for name in estimators()]
