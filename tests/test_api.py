"""The Python API contract: compile(), Explainer, Explanation, the compiled model's interface."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import onnxlrp
from mlp_models import random_mlp

X = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)


def test_compiled_model_is_standard_onnx_and_keeps_ir_version():
    """Default domain only, full checker passes, the source's IR version is kept."""
    for ir in (7, 8, 10):
        model = random_mlp([6, 8, 4], ir_version=ir)
        compiled = onnxlrp.compile(model, "epsilon_plus")
        onnx.checker.check_model(compiled, full_check=True)
        assert compiled.ir_version == ir
        assert {n.domain for n in compiled.graph.node} <= {"", "ai.onnx"}
        assert [o.version for o in compiled.opset_import] == [o.version for o in model.opset_import]


def test_compiled_interface_names():
    """Inputs: original + lrp_target + lrp_target_mask (optional: an initializer holds its default, NaN);
    outputs: original + relevance, bias per node, stabilizer, total, logits."""
    compiled = onnxlrp.compile(random_mlp([6, 8, 4]), "epsilon")
    assert [i.name for i in compiled.graph.input] == ["input", "lrp_target", "lrp_target_mask"]
    default = next(t for t in compiled.graph.initializer if t.name == "lrp_target_mask")
    assert np.isnan(onnx.numpy_helper.to_array(default)).all()
    assert [o.name for o in compiled.graph.output] == [
        "logits", "lrp/relevance/input", "lrp/bias/dense1", "lrp/bias/dense0", "lrp/stabilizer", "lrp/total",
        "lrp/output"]


def test_reference_evaluator_agrees_with_onnxruntime():
    """The compiled file gives the same numbers in onnx's ReferenceEvaluator as in onnxruntime."""
    compiled = onnxlrp.compile(random_mlp([6, 8, 8, 4], seed=5), "epsilon_plus")
    target = np.array([0, 1, 2, 3, -1], dtype=np.int64)
    exp = onnxlrp.Explainer(compiled).explain(X, target=None)
    feeds = {"input": X, "lrp_target": np.where(target < 0, exp.target, target)}
    names = [o.name for o in compiled.graph.output]
    got = dict(zip(names, ReferenceEvaluator(compiled).run(None, feeds)))
    import onnxruntime as ort
    want = dict(zip(names, ort.InferenceSession(compiled.SerializeToString(),
                                                providers=["CPUExecutionProvider"]).run(None, feeds)))
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_explainer_recognises_a_compiled_model(tmp_path):
    """A compiled model is loaded as is (no second compilation), from a path or a proto."""
    compiled = onnxlrp.compile(random_mlp([6, 8, 4]), "epsilon")
    path = tmp_path / "compiled.onnx"
    onnx.save(compiled, str(path))
    for source in (compiled, str(path)):
        for composite in (None, "epsilon"):  # none, or the one it was compiled with
            explainer = onnxlrp.Explainer(source, composite=composite)
            assert explainer.model.SerializeToString() == compiled.SerializeToString()
            assert explainer.composite == "epsilon"
    with pytest.raises(onnxlrp.OnnxLrpError, match="already compiled"):
        onnxlrp.compile(compiled)


def test_targets_none_int_and_sequence():
    """None explains the argmax; an int every sample; a sequence one per sample; total is the target's logit."""
    explainer = onnxlrp.Explainer(random_mlp([6, 8, 4], seed=1), composite="epsilon")
    logits = explainer.explain(X).output
    for target, want in ((None, logits.argmax(axis=1)), (2, np.full(5, 2)), ([3, 2, 1, 0, 3], [3, 2, 1, 0, 3])):
        exp = explainer.explain(X, target=target)
        np.testing.assert_array_equal(exp.target, want)
        assert exp.target.dtype == np.int64
        np.testing.assert_allclose(exp.total, logits[np.arange(5), want], rtol=1e-6)
        np.testing.assert_allclose(exp.conservation()["relative_error"], 0, atol=1e-5)


def test_init_one_starts_from_one_hot():
    """init='one': total is 1 for every sample."""
    exp = onnxlrp.Explainer(random_mlp([6, 8, 4]), composite="epsilon", init="one").explain(X, target=1)
    np.testing.assert_allclose(exp.total, 1.0)
    assert np.all(exp.conservation()["relative_error"] < 1e-5)


def test_softmax_is_bypassed():
    """A trailing Softmax is bypassed: output holds the logits, relevance equals the model without it."""
    with_softmax = onnxlrp.Explainer(random_mlp([6, 8, 4], seed=2, softmax=True), composite="epsilon")
    without = onnxlrp.Explainer(random_mlp([6, 8, 4], seed=2), composite="epsilon")
    a, b = with_softmax.explain(X, target=1), without.explain(X, target=1)
    np.testing.assert_allclose(a.output, b.output, rtol=1e-6)
    np.testing.assert_allclose(a.relevance["input"], b.relevance["input"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(a.output.sum(axis=1), 1.0)  # logits, not probabilities


def test_composite_names_and_parameter_overrides():
    """'epsilon-plus' is 'epsilon_plus'; params override the composite's values; unknown ones are refused."""
    model = random_mlp([6, 8, 4], seed=4)
    a = onnxlrp.Explainer(model, "epsilon-plus").explain(X, target=0)
    b = onnxlrp.Explainer(model, "epsilon_plus").explain(X, target=0)
    np.testing.assert_array_equal(a.relevance["input"], b.relevance["input"])
    big = onnxlrp.Explainer(model, "epsilon", params={"epsilon": 10.0}).explain(X, target=0)
    assert np.all(np.abs(big.stabilizer) > 100 * np.abs(a.stabilizer))  # a large epsilon absorbs relevance
    assert np.all(big.conservation()["relative_error"] < 1e-5)
    with pytest.raises(onnxlrp.CompositeError, match="has no parameter 'gama'"):
        onnxlrp.compile(model, "epsilon_gamma_box", params={"gama": 0.5})


def test_output_selection():
    """output= picks a graph output by name; an unknown name lists the ones that exist."""
    model = random_mlp([6, 8, 4], softmax=True)
    exp = onnxlrp.Explainer(model, "epsilon", output="probs").explain(X, target=0)
    assert exp.output.shape == (5, 4)
    with pytest.raises(onnxlrp.OnnxLrpError, match=r"no output 'nope' \(outputs: probs\)"):
        onnxlrp.compile(model, "epsilon", output="nope")


def test_node_relevance_all_and_sums():
    """node_relevance='all' exposes every relevance tensor; 'sums' their per-sample sums (equal to the tensors')."""
    model = random_mlp([6, 8, 4], seed=6)
    full = onnxlrp.Explainer(model, "epsilon", node_relevance="all").explain(X, target=3)
    sums = onnxlrp.Explainer(model, "epsilon", node_relevance="sums").explain(X, target=3)
    assert set(full.nodes) == {"input", "h0", "a0", "logits"}
    np.testing.assert_allclose(full.nodes["input"], full.relevance["input"])
    for name, value in full.nodes.items():
        np.testing.assert_allclose(sums.nodes[name], value.reshape(5, -1).sum(axis=1), rtol=1e-5, atol=1e-6)
    # a ReLU passes relevance on unchanged
    np.testing.assert_allclose(full.nodes["a0"], full.nodes["h0"])


def test_float64_model_explains_in_float64():
    """A float64 model compiles; relevance comes out in float64 and conserves tightly."""
    model = random_mlp([6, 8, 4], dtype=np.float64)
    exp = onnxlrp.Explainer(model, "epsilon_plus").explain(X.astype(np.float64), target=1)
    assert exp.relevance["input"].dtype == np.float64
    assert np.all(exp.conservation()["relative_error"] < 1e-12)


def test_provider_is_cpu_without_cuda():
    """providers=None falls back to the CPU quietly where CUDA cannot initialise."""
    from onnxlrp.runtime import cuda_available
    explainer = onnxlrp.Explainer(random_mlp([6, 4]), "epsilon")
    assert explainer.provider == ("CUDAExecutionProvider" if cuda_available() else "CPUExecutionProvider")
