"""onnxlrp.evaluate: perturbation curves against Quantus 0.6, the gradient baselines against torch autograd, the
feature / fill / step mechanics against NumPy, token inputs against a NumPy forward pass, and the CLI.

Quantus runs on a torch copy of the shipped digits CNN (models/train.py's DigitsCNN with the ONNX file's weights) and,
to pin the metric's logic exactly, on a torch module that calls onnxruntime on the ONNX file (the same forward pass
as onnxlrp's). Both get the same attributions and settings; the curves must agree to 1e-6 of the logits' scale."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxlrp
from digits_torch import MODELS, digits, torch_copy
from onnxlrp.baselines import ig_reference_point, integrated_gradients, smoothgrad, smoothgrad_noise
from onnxlrp.evaluate import evaluate
from onnxlrp.perturbation import features, fill_values, schedule
from torch_utils import relative_l2

CNN = str(MODELS / "digits_cnn.onnx")
MLP = str(MODELS / "digits_mlp.onnx")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small torch models on a shared 2-core machine: one intra-op thread is far faster than spinning two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quantus():
    from conftest import _install_torchvision_stub
    _install_torchvision_stub()
    import quantus as q
    return q


class OnnxModule(torch.nn.Module):
    """A torch module whose forward pass is onnxruntime on an ONNX file (Quantus needs a torch model)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        import onnxruntime as ort
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.detach().numpy().astype(np.float32)})[0])


@pytest.fixture(scope="module")
def cnn_models() -> list:
    return [torch_copy("digits_cnn"), OnnxModule(CNN).eval()]


def _quantus_curve(metric, model, x, y, a) -> np.ndarray:
    out = metric(model=model, x_batch=x, y_batch=y, a_batch=a.astype(np.float32), softmax=False, channel_first=True,
                 device="cpu")
    return np.asarray(out, dtype=np.float64)


def test_pixel_flipping_equals_quantus(quantus, cnn_models) -> None:
    x, _ = digits("images")
    zero = evaluate(CNN, x, composites=["epsilon_plus"], baselines=["random"], steps=16, fill="zero")
    mean = evaluate(CNN, x, composites=[], baselines=["random"], steps=16, fill="mean")
    sample_mean = x.reshape(len(x), -1).mean(axis=1, dtype=np.float64)
    for ev, baseline in ((zero, 0.0), (mean, np.broadcast_to(sample_mean[:, None], (len(x), 4)).astype(np.float32))):
        scale = np.abs(ev.logits).max()
        for m in ev.methods:
            for model in cnn_models:
                pf = quantus.PixelFlipping(features_in_step=4, perturb_baseline=baseline, normalise=False, abs=False,
                                           disable_warnings=True)
                morf = _quantus_curve(pf, model, x, ev.targets, m.attribution)
                lerf = _quantus_curve(pf, model, x, ev.targets, -m.attribution)  # ascending order: least first
                assert morf.shape == (16, 16)
                np.testing.assert_allclose(m.morf[:, 1:], morf, rtol=0, atol=1e-6 * scale)
                np.testing.assert_allclose(m.lerf[:, 1:], lerf, rtol=0, atol=1e-6 * scale)


def test_region_perturbation_equals_quantus(quantus, cnn_models) -> None:
    x, _ = digits("images")
    ev = evaluate(CNN, x, composites=["epsilon_gamma_box"], baselines=["random"], params={"low": 0, "high": 1},
                  metric="region_perturbation", patch=2, steps=16, fill="zero")
    assert ev.steps == 16 and ev.settings["features"] == 16
    scale = np.abs(ev.logits).max()
    for m in ev.methods:
        for model in cnn_models:
            for order, curve in (("morf", m.morf), ("lerf", m.lerf)):
                rp = quantus.RegionPerturbation(patch_size=2, regions_evaluation=16, order=order, perturb_baseline=0.0,
                                                normalise=False, abs=False, disable_warnings=True)
                drop = _quantus_curve(rp, model, x, ev.targets, m.attribution)  # Quantus: f(x) - f(x_k)
                np.testing.assert_allclose(ev.logits[:, None] - curve[:, 1:], drop, rtol=0, atol=1e-6 * scale)


def _torch_mean_gradient(model, points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, ...) mean over m of df/dx at points (N, m, ...), by torch autograd."""
    n, m = points.shape[:2]
    xt = torch.tensor(points.reshape((n * m,) + points.shape[2:]), requires_grad=True)
    out = model(xt)
    out[torch.arange(n * m), torch.tensor(np.repeat(targets, m))].sum().backward()
    return xt.grad.numpy().astype(np.float64).reshape(points.shape).mean(axis=1)


def test_integrated_gradients_and_smoothgrad_equal_torch(cnn_models) -> None:
    from scipy.ndimage import gaussian_filter
    model = cnn_models[0]
    x = digits("images")[0][:6]
    explainer = onnxlrp.Explainer(CNN, "gradient")
    targets = explainer.explain(x).target
    inputs = {"input": x}
    feats = features(x.shape[1:], False, 1)
    blurred = gaussian_filter(x.astype(np.float64), sigma=(0, 0, 1, 1), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(ig_reference_point(x, "blur", feats), blurred, atol=1e-6)
    alphas = (np.arange(8) + 0.5) / 8  # the midpoint rule
    for x0 in (np.zeros_like(x), blurred.astype(np.float32)):
        ours = integrated_gradients(explainer, inputs, "input", targets, steps=8, x0=x0, batch_rows=20)
        points = (x0[:, None] + alphas[None, :, None, None, None] * (x - x0)[:, None]).astype(np.float32)
        reference = (x - x0) * _torch_mean_gradient(model, points, targets)
        assert relative_l2(ours, reference) < 1e-5
    noise = smoothgrad_noise(x, 5, 0.1, seed=3)
    assert np.allclose(noise.reshape(6, 5, -1).std(axis=(1, 2)) / 0.1, np.ptp(x.reshape(6, -1), axis=1), rtol=0.25)
    ours = smoothgrad(explainer, inputs, "input", targets, samples=5, level=0.1, seed=3, batch_rows=7)
    reference = x * _torch_mean_gradient(model, (x[:, None] + noise).astype(np.float32), targets)
    assert relative_l2(ours, reference) < 1e-5


def test_evaluate_rows_shares_and_shared_end_points() -> None:
    x, _ = digits("flat")
    ev = evaluate(MLP, x, composites=["zero"], baselines=["gradient", "integrated_gradients", "random"], steps=8,
                  samples=12, ig_steps=4)
    n = 12
    assert ev.targets.shape == (n,) and np.allclose(ev.fractions, np.arange(9) / 8)
    reference = onnxlrp.Explainer(MLP, "zero").explain(x[:n])
    np.testing.assert_array_equal(ev.targets, reference.target)
    np.testing.assert_allclose(ev.logits, reference.total, rtol=1e-6)
    conservation = reference.conservation()
    rows = {r.method: r for r in ev.table()}
    assert rows["zero"].input_share == pytest.approx(np.mean(conservation["inputs"] / reference.total), rel=1e-6)
    assert rows["zero"].bias_share == pytest.approx(np.mean(conservation["biases"] / reference.total), rel=1e-6)
    assert rows["random"].input_share is None and rows["integrated_gradients"].bias_share is None
    zero, grad = ev.method("zero"), ev.method("gradient")  # a ReLU MLP: the same attributions, the same curves
    np.testing.assert_allclose(grad.morf, zero.morf, rtol=0, atol=1e-5)
    np.testing.assert_allclose(grad.lerf, zero.lerf, rtol=0, atol=1e-5)
    for m in ev.methods:  # nothing removed at step 0, everything (the sample's mean everywhere) at the last step
        np.testing.assert_allclose(m.morf[:, 0], ev.logits, rtol=1e-6)
        np.testing.assert_allclose(m.morf[:, -1], m.lerf[:, -1], rtol=1e-6)
        np.testing.assert_allclose(m.morf[:, -1], ev.method("random").morf[:, -1], rtol=1e-6)
        assert m.auc_morf.shape == (n,) and m.seconds >= 0
    assert rows["zero"].difference > rows["random"].difference + 1.0  # LRP-0 on an MLP beats a random ranking
    diff = grad.auc_lerf - grad.auc_morf
    assert rows["gradient"].difference_ci == pytest.approx(1.959963984540054 * diff.std(ddof=1) / np.sqrt(n))


def test_evaluate_follows_the_logits_behind_a_softmax() -> None:
    """A trailing Softmax is bypassed as the compiler does: the curves hold the logits, not probabilities."""
    model = onnx.load(MLP)
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Softmax", [logits], ["probs"], axis=1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10]))
    x, _ = digits("flat")
    with_softmax = evaluate(model, x[:6], composites=["zero"], baselines=[], steps=4)
    plain = evaluate(MLP, x[:6], composites=["zero"], baselines=[], steps=4)
    np.testing.assert_allclose(with_softmax.method("zero").morf, plain.method("zero").morf, rtol=1e-6)
    assert with_softmax.logits.max() > 1.0  # logits, not probabilities


def test_features_schedule_and_fills() -> None:
    image = features((3, 8, 8), False, 3)
    assert image.count == 9 and image.kind == "image" and image.ids.shape == (3, 8, 8)
    assert np.array_equal(image.ids[0], image.ids[2]) and image.ids[1, 7, 7] == 8 and image.ids[1, 2, 3] == 1
    channels_last = features((8, 8, 3), False, 4)
    assert channels_last.count == 4 and channels_last.ids[5, 1, 2] == 2
    flat = features((10,), False, 3)
    assert flat.count == 4 and flat.ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert features((5,), True, 2).kind == "tokens"
    assert schedule("pixel_flipping", 10, 4).tolist() == [1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    assert schedule("region_perturbation", 6, 4).tolist() == [1, 2, 3, 4, 5, 5]
    x = np.random.default_rng(0).uniform(-1, 2, size=(3, 1, 5, 5)).astype(np.float32)
    feats = features(x.shape[1:], False, 1)
    rng = np.random.default_rng
    assert np.allclose(fill_values(x, feats, "mean", rng(0))[:, 0, 0, 0], x.reshape(3, -1).mean(axis=1))
    assert not np.any(fill_values(x, feats, "zero", rng(0)))
    noise = fill_values(x, feats, "uniform", rng(1))
    assert np.array_equal(noise, fill_values(x, feats, "uniform", rng(1)))
    assert np.all(noise.reshape(3, -1).min(axis=1) >= x.reshape(3, -1).min(axis=1))
    assert np.all(noise.reshape(3, -1).max(axis=1) <= x.reshape(3, -1).max(axis=1))
    with pytest.raises(onnxlrp.OnnxLrpError, match="needs an image input"):
        fill_values(np.ones((2, 4), np.float32), features((4,), False, 1), "blur", rng(0))


def _token_model(vocabulary: np.ndarray, head: np.ndarray) -> onnx.ModelProto:
    """ids (N, T) int64 -> embedding Gather -> mean over T -> Gemm (3 classes)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["emb"], axis=0),
         helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("Gemm", ["pooled", "W"], ["logits"])], "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(vocabulary, "E"), numpy_helper.from_array(head, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_token_inputs_are_replaced_by_the_mask_token() -> None:
    rng = np.random.default_rng(5)
    vocabulary, head = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    model = _token_model(vocabulary, head)
    ids = rng.integers(1, 12, size=(5, 6))
    given = rng.normal(size=(5, 6, 2))  # a per-token-and-embedding attribution: summed over the trailing axis
    ev = evaluate(model, ids, composites=[], baselines=["random"], attributions={"given": given}, steps=3,
                  mask_token=0)
    scores = given.sum(axis=-1)
    forward = lambda t: vocabulary[t].mean(axis=1) @ head  # noqa: E731
    targets = forward(ids).argmax(axis=1)
    for most_first, curve in ((True, ev.method("given").morf), (False, ev.method("given").lerf)):
        order = np.argsort(-scores if most_first else scores, axis=1)
        expected = []
        for k in range(4):
            masked = ids.copy()
            for i in range(5):
                masked[i, order[i, :2 * k]] = 0
            expected.append(forward(masked)[np.arange(5), targets])
        np.testing.assert_allclose(curve, np.stack(expected, axis=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(onnxlrp.OnnxLrpError, match="mask-token"):
        evaluate(model, ids, composites=[], baselines=["random"])
    with pytest.raises(onnxlrp.OnnxLrpError, match="needs a floating-point input"):
        evaluate(model, ids, composites=[], baselines=["gradient"], mask_token=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"metric": "insertion"}, "unknown metric"), ({"fill": "black"}, "unknown fill"),
    ({"baselines": ["lime"]}, "unknown baseline"), ({"ig_baseline": "noise"}, "Integrated Gradients baseline"),
    ({"target": 11}, "out of range"), ({"params": {"gamma_typo": 1}}, "no composite evaluated has the parameter"),
    ({"steps": 0}, "--steps must be at least 1"), ({"patch": 0}, "--patch must be at least 1"),
    ({"attributions": {"mine": np.ones((3, 5))}}, "has shape"),
])
def test_evaluate_bad_arguments(kwargs, message) -> None:
    x, _ = digits("flat")
    with pytest.raises(onnxlrp.OnnxLrpError, match=message):
        evaluate(MLP, x[:3], **{"composites": ["zero"], "baselines": ["random"], **kwargs})


def test_cli_evaluate(tmp_path) -> None:
    from click.testing import CliRunner
    from onnxlrp.cli import main
    data = tmp_path / "digits.npz"
    np.savez(data, input=digits("images")[0])
    png = tmp_path / "curves.png"
    runner = CliRunner()
    done = runner.invoke(main, ["evaluate", CNN, str(data), "--composites", "zero", "--baselines",
                                "gradient,random", "--steps", "8", "--samples", "10", "--format", "json",
                                "--png", str(png)])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert [r["method"] for r in report["rows"]] == ["zero", "gradient", "random"]
    assert report["settings"]["samples"] == 10 and report["settings"]["metric"] == "pixel_flipping"
    assert len(report["curves"]["zero"]["morf"]) == 9
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["zero"]["auc_morf"] == pytest.approx(rows["gradient"]["auc_morf"], abs=1e-4)
    from PIL import Image
    assert Image.open(png).size == (1875, 720)
    done = runner.invoke(main, ["evaluate", CNN, str(data), "--composites", "", "--baselines", "random", "--steps", "4",
                                "--metric", "region_perturbation", "--format", "csv"])
    assert done.exit_code == 0 and done.stdout.splitlines()[0].startswith("method,auc_morf,auc_morf_ci")
    assert done.stdout.splitlines()[1].startswith("random,")
    done = runner.invoke(main, ["evaluate", CNN, str(data), "--steps", "0"])
    assert done.exit_code == 2 and "error: --steps must be at least 1" in done.output
