"""Several targets per sample in one run (onnxlrp/many_targets.py): every column equals the single-target call."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxlrp
from onnxlrp import runtime
from onnxlrp.errors import InputError
from onnxlrp.many_targets import many_targets

MODELS = Path(__file__).resolve().parent.parent / "models"
SAMPLES = np.load(MODELS / "digits_samples.npz")
CNN, MLP = str(MODELS / "digits_cnn.onnx"), str(MODELS / "digits_mlp.onnx")


def close(a: np.ndarray, b: np.ndarray, scale: float = 0.0) -> None:
    """Equal up to float32 rounding (the Loop body gets other onnxruntime fusions than the single-target graph);
    scale: the magnitude the rounding is relative to, where it exceeds b's own."""
    atol = 1e-6 * max(float(np.abs(b).max(initial=0.0)), scale, 1e-30)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


def assert_same(many: onnxlrp.Explanation, one: onnxlrp.Explanation) -> None:
    """Every term of one target of the K-target run equals the single-target call's."""
    np.testing.assert_array_equal(many.target, one.target)
    np.testing.assert_array_equal(many.output, one.output)
    for field in ("relevance", "bias", "nodes", "gradient"):
        mine, theirs = getattr(many, field), getattr(one, field)
        assert mine.keys() == theirs.keys()
        for name in theirs:
            close(mine[name], theirs[name])
    close(many.stabilizer, one.stabilizer, 10 * float(np.abs(one.total).max()))  # the gradient: a rounding remainder
    close(many.total, one.total)


@pytest.mark.parametrize("path, samples, composite", [
    (CNN, "images", "epsilon_plus"), (CNN, "images", "epsilon_gamma_box"), (MLP, "flat", "epsilon_plus"),
    (CNN, "images", "gradient")])
def test_top_k_equals_separate_calls(path, samples, composite):
    """targets=K: the K best classes of each sample (NumPy's stable argsort of the logits), each explained exactly
    as explain(x, target=column) explains it, and conserving its total."""
    x = SAMPLES[samples][:3]
    explainer = onnxlrp.Explainer(path, composite, node_relevance=None if composite == "gradient" else "sums")
    many = explainer.explain(x, targets=4)
    logits = explainer.explain(x).output
    best = np.argsort(-logits, axis=1, kind="stable")[:, :4]
    assert len(many) == 4
    for k, exp in enumerate(many):
        np.testing.assert_array_equal(exp.target, best[:, k])
        assert_same(exp, explainer.explain(x, target=best[:, k]))
        if composite != "gradient":
            np.testing.assert_array_less(exp.conservation()["relative_error"], 1e-5)
            np.testing.assert_allclose(exp.total, logits[np.arange(3), best[:, k]], rtol=1e-6)


def test_target_matrix_and_chunks(monkeypatch):
    """An (N, K) matrix of classes, explained 2 targets per run (the limit lowered): the same as K calls."""
    monkeypatch.setattr(runtime, "MAX_TARGETS_PER_RUN", 2)
    x = SAMPLES["images"][:2]
    explainer = onnxlrp.Explainer(CNN, "epsilon_plus")
    matrix = np.array([[3, 5, 7, 3, 0], [9, 1, 1, 2, 8]])
    many = explainer.explain(x, target=matrix)
    assert len(many) == 5 and sorted(explainer._many) == [1, 2]
    for k, exp in enumerate(many):
        assert_same(exp, explainer.explain(x, target=matrix[:, k]))


def test_rewritten_graph_is_standard_onnx():
    """The K-target graph passes the full checker; the forward nodes stay once, the relevance nodes move into one
    Loop's body, the stacked outputs are declared (K, N, ...)."""
    compiled = onnxlrp.compile(CNN, "epsilon_plus")
    meta = onnxlrp.compiler.compiled_metadata(compiled)
    model, stacked = many_targets(compiled, 3, meta["explained"])
    onnx.checker.check_model(model, full_check=True)
    forward = sum(1 for n in compiled.graph.node if n.op_type == "Conv" and not n.name.startswith("lrp/"))
    assert sum(1 for n in model.graph.node if n.op_type == "Conv" and not n.name.startswith("lrp/")) == forward
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    relevance = sum(1 for n in compiled.graph.node if n.name.startswith("lrp/") and n.op_type == "ConvTranspose")
    assert sum(1 for n in loop.attribute[0].g.node if n.op_type == "ConvTranspose") == relevance > 0
    assert {"lrp/relevance/input", "lrp/total", "lrp/stabilizer"} <= stacked and "lrp/output" not in stacked
    dims = next(o for o in model.graph.output if o.name == "lrp/relevance/input").type.tensor_type.shape.dim
    assert dims[0].dim_value == 3 and len(dims) == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": 0}, "targets must be a positive int"),
    ({"targets": 11}, "more classes than output"),
    ({"targets": 2, "target": [1, 2]}, "exclusive"),
    ({"target": [[1, -2], [0, 1]]}, "negative"),
    ({"target": [[1, 10], [0, 1]]}, "out of range"),
    ({"target": [[1, 2]]}, "need (2, K)"),
    ({"targets": 2, "region": (0, 1, 0, 1)}, "cannot be combined with a mask"),
])
def test_bad_many_targets(kwargs, message):
    """Each bad request is one InputError line naming what is wrong."""
    explainer = onnxlrp.Explainer(CNN, "epsilon_plus")
    with pytest.raises(InputError) as error:
        explainer.explain(SAMPLES["images"][:2], **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_provider_with_options():
    """A provider given as a (name, options) pair runs (benchmarks/gpu_check.py passes CUDA that way)."""
    explainer = onnxlrp.Explainer(MLP, providers=[("CPUExecutionProvider", {})])
    assert explainer.provider == "CPUExecutionProvider"
    reference = onnxlrp.Explainer(MLP).explain(SAMPLES["flat"][:2])
    np.testing.assert_array_equal(explainer.explain(SAMPLES["flat"][:2]).relevance["input"],
                                  reference.relevance["input"])
