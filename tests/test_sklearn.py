"""A model from a non-torch exporter: scikit-learn's MLPClassifier through skl2onnx, explained on its logits."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlrp
import reference as ref


@pytest.fixture(scope="module")
def classifier():
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=800, random_state=0).fit(X, y)
    return clf, X


def _onnx(clf, X, zipmap: bool):
    import warnings
    from skl2onnx import to_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_onnx(clf, X[:1], options={"zipmap": zipmap}, target_opset=17)


def _numpy_epsilon(clf, x: np.ndarray, target: int, eps: float = 1e-6) -> tuple:
    """Dense float64 epsilon-LRP through the classifier's own weights (sklearn stores W as (in, out))."""
    acts = [x.astype(np.float64)]
    for i, (W, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        z = acts[-1] @ W + b
        acts.append(np.maximum(z, 0) if i < len(clf.coefs_) - 1 else z)
    R = np.zeros_like(acts[-1])
    R[target] = acts[-1][target]
    total = R.sum()
    for i in reversed(range(len(clf.coefs_))):
        R = ref.epsilon(clf.coefs_[i].T, clf.intercepts_[i], acts[i], R, eps)[0]
    return acts[-1], R, total


def test_mlp_classifier_explained_on_logits(classifier):
    """Outputs are label + probabilities; the explained output is the logits before Softmax."""
    clf, X = classifier
    model = _onnx(clf, X, zipmap=False)
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    explainer = onnxlrp.Explainer(model, composite="epsilon")
    x = X[::30]
    exp = explainer.explain(x)
    logits = exp.output
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(axis=1, keepdims=True), clf.predict_proba(x), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(exp.target, clf.predict(x))
    for i in range(len(x)):
        want_logits, want_R, total = _numpy_epsilon(clf, x[i], int(exp.target[i]))
        np.testing.assert_allclose(logits[i], want_logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(exp.relevance["X"][i], want_R, rtol=1e-4, atol=1e-5 * abs(total))
    assert np.all(exp.conservation()["relative_error"] < 1e-5)


def test_default_zipmap_output_is_explained_through_the_map(classifier):
    """skl2onnx's default wraps probabilities in a ZipMap (a sequence of maps): the tensor behind it is explained."""
    clf, X = classifier
    plain = onnxlrp.Explainer(_onnx(clf, X, zipmap=False), composite="epsilon").explain(X[:4], target=2)
    mapped = onnxlrp.Explainer(_onnx(clf, X, zipmap=True), composite="epsilon").explain(X[:4], target=2)
    np.testing.assert_allclose(mapped.relevance["X"], plain.relevance["X"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mapped.output, plain.output, rtol=1e-6)
