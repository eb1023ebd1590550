"""Bias table and conservation profile: the explanation's own numbers, conserved at every layer; their CLI."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxlrp.cli import main
from onnxlrp.demo import shipped_model_dir
from onnxlrp.errors import OnnxLrpError
from onnxlrp.runtime import Explainer
from onnxlrp.tables import bias_table, profile

MODELS = shipped_model_dir()
CNN = MODELS / "digits_cnn.onnx"
MLP = MODELS / "digits_mlp.onnx"


@pytest.fixture(scope="module")
def digits():
    with np.load(MODELS / "digits_samples.npz") as archive:
        return {k: archive[k] for k in archive.files}


@pytest.fixture(scope="module")
def cnn_exp(digits):
    return Explainer(CNN, node_relevance="sums").explain(digits["images"])


def _logits(model_path, x: np.ndarray) -> np.ndarray:
    """The original model's logits from onnxruntime directly (the independent reference for totals)."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _conv_gemm_order(model_path) -> list:
    """Names of the Conv/Gemm nodes in the ONNX file's node order (exporters write them topologically)."""
    return [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type in ("Conv", "Gemm")]


def _tiny_resnet(path):
    """A small ResNet-style model: stem, an identity block, a block with a strided 1x1 projection, GAP, Gemm."""
    import torch
    from torch import nn
    from torch_utils import export

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(cout)
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride) if (cin != cout or stride != 1) else nn.Identity()

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Block(8, 8, 1), Block(8, 12, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return export(net, torch.zeros(2, 3, 8, 8), path, "legacy")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    path = _tiny_resnet(tmp_path_factory.mktemp("resnet") / "resnet.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, size=(6, 3, 8, 8)).astype(np.float32)
    return path, x


# ---- bias table ----------------------------------------------------------------------------------------------------

def test_bias_table_rows_are_the_explanations_numbers(cnn_exp, digits):
    rows = bias_table(cnn_exp, top=2)
    n = len(digits["labels"])
    biased = [r for r in rows if r.kind == "bias"]
    assert [r.name for r in biased] == [name for name in _conv_gemm_order(CNN) if name in cnn_exp.bias]
    assert len(biased) == 5
    for r in biased:
        np.testing.assert_allclose(r.values, cnn_exp.bias[r.name].astype(np.float64).sum(axis=1), rtol=1e-12)
        assert r.op in ("Conv", "Gemm") and r.rule == cnn_exp.rules[r.name]
        per_unit = cnn_exp.bias[r.name].astype(np.float64).mean(axis=0)
        biggest = int(np.argmax(np.abs(per_unit)))
        assert r.top[0] == (str(biggest), pytest.approx(float(per_unit[biggest])))
    (inp,) = [r for r in rows if r.kind == "input"]
    np.testing.assert_allclose(inp.values, cnn_exp.relevance["input"].reshape(n, -1).sum(axis=1), rtol=1e-6)
    (stab,) = [r for r in rows if r.kind == "stabilizer"]
    np.testing.assert_array_equal(stab.values, cnn_exp.stabilizer.astype(np.float64))
    assert rows[-1].kind == "total" and rows[-2] is stab


def test_bias_table_rows_sum_to_the_explained_output_per_sample(cnn_exp, digits):
    rows = bias_table(cnn_exp)
    parts = np.sum([r.values for r in rows[:-1]], axis=0)
    logits = _logits(CNN, digits["images"])
    explained = logits[np.arange(len(logits)), logits.argmax(axis=1)]
    np.testing.assert_allclose(parts, explained, rtol=1e-5)
    np.testing.assert_allclose(rows[-1].values, parts, rtol=1e-12)
    assert sum(r.share for r in rows[:-1]) == pytest.approx(1.0, rel=1e-5)
    assert rows[-1].mean == pytest.approx(float(explained.mean()), rel=1e-5)


def test_bias_table_for_another_target_and_model(digits):
    exp = Explainer(MLP, "epsilon").explain(digits["flat"], target=3)
    rows = bias_table(exp)
    logits = _logits(MLP, digits["flat"])
    np.testing.assert_allclose(np.sum([r.values for r in rows[:-1]], axis=0), logits[:, 3], rtol=1e-4, atol=1e-6)
    assert [r.name for r in rows if r.kind == "bias"] == _conv_gemm_order(MLP)


# ---- conservation profile ------------------------------------------------------------------------------------------

def _assert_profile_conserves(exp, tol: float = 1e-4) -> list:
    rows = profile(exp)
    for r in rows:
        assert np.all(r.relative_error < tol), (r.tensor, r.relative_error.max())
        np.testing.assert_array_equal(r.total, exp.total.astype(np.float64))
    return rows


def test_profile_conserves_at_every_layer_on_the_shipped_cnn(cnn_exp):
    rows = _assert_profile_conserves(cnn_exp)
    n = cnn_exp.total.shape[0]
    assert rows[0].tensor == "input" and rows[-1].tensor == "logits"
    assert len(rows) == len(cnn_exp.graph) + 1
    np.testing.assert_allclose(rows[0].relevance, cnn_exp.relevance["input"].reshape(n, -1).sum(axis=1), rtol=1e-6)
    all_bias = np.sum([v.astype(np.float64).sum(axis=1) for v in cnn_exp.bias.values()], axis=0)
    np.testing.assert_allclose(rows[0].bias, all_bias, rtol=1e-12)
    np.testing.assert_allclose(rows[0].stabilizer, cnn_exp.stabilizer, rtol=1e-5)
    np.testing.assert_allclose(rows[-1].relevance, cnn_exp.total, rtol=1e-6)
    assert np.all(rows[-1].bias == 0) and np.all(rows[-1].stabilizer == 0)
    inside = [r for r in rows if r.node in ("/block/conv1/Conv", "/block/relu1/Relu", "/block/conv2/Conv")]
    assert len(inside) == 3
    for r in inside:  # inside the residual block, the skip connection carries relevance beside the branch
        assert np.all(r.elsewhere > 0.1)
        np.testing.assert_allclose(r.elsewhere, cnn_exp.edges["/stem/stem.2/Relu_output_0"]["/block/Add"], rtol=1e-6)
    assert all(np.all(r.elsewhere == 0) for r in rows if r not in inside)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon"])
def test_profile_conserves_at_every_layer_on_a_resnet(resnet, composite):
    path, x = resnet
    exp = Explainer(path, composite, node_relevance="sums").explain(x)
    rows = _assert_profile_conserves(exp)
    ops = [r.op for r in rows]
    assert "GlobalAveragePool" in ops and ops.count("Add") == 2
    logits = _logits(path, x)
    np.testing.assert_allclose(rows[0].sum, logits.max(axis=1), rtol=1e-4)
    assert sum(np.any(r.elsewhere != 0) for r in rows) >= 4  # both blocks have parallel branches


def test_profile_needs_per_tensor_sums(digits):
    exp = Explainer(CNN).explain(digits["images"][:2])
    with pytest.raises(OnnxLrpError, match="node_relevance='sums'"):
        profile(exp)


# ---- CLI -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def images_file(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "digits.npy"
    np.save(path, digits["images"][:5])
    return path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_bias_table_csv(images_file, digits):
    result = _run("bias-table", CNN, "--input", images_file)  # not a TTY: CSV
    assert result.exit_code == 0, result.output
    records = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["kind"] for r in records] == ["bias"] * 5 + ["input", "stabilizer", "total"]
    logits = _logits(CNN, digits["images"][:5])
    assert float(records[-1]["relevance"]) == pytest.approx(float(logits.max(axis=1).mean()), rel=1e-5)
    assert sum(float(r["relevance"]) for r in records[:-1]) == pytest.approx(float(records[-1]["relevance"]), rel=1e-9)
    assert float(records[-1]["share"]) == pytest.approx(1.0, rel=1e-5)


def test_cli_bias_table_json_with_target(images_file, digits):
    result = _run("bias-table", CNN, "-i", images_file, "--format", "json", "--target", "7", "--top", "1",
                  "--composite", "epsilon_alpha2_beta1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    logits = _logits(CNN, digits["images"][:5])
    np.testing.assert_allclose(data["explained_output"], logits[:, 7], rtol=1e-6)
    per_sample = np.sum([r["per_sample"] for r in data["rows"][:-1]], axis=0)
    np.testing.assert_allclose(per_sample, logits[:, 7], rtol=1e-4, atol=1e-5)
    assert data["composite"] == "epsilon_alpha2_beta1" and data["target"] == [7] * 5
    assert all(r["top_units"].count(":") <= 1 for r in data["rows"] if r["kind"] == "bias")


def test_cli_bias_table_rendered(images_file):
    result = _run("bias-table", CNN, "-i", images_file, "--format", "table")
    assert result.exit_code == 0, result.output
    assert "100.0 %" in result.stdout and " fc/Gemm " in result.stdout and "stabilizer" in result.stdout


def test_cli_profile_csv_json_and_png(images_file, tmp_path):
    png = tmp_path / "profile.png"
    result = _run("profile", CNN, "-i", images_file, "--png", png)
    assert result.exit_code == 0, result.output
    records = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(records) == 14 and records[0]["tensor"] == "input" and records[-1]["tensor"] == "logits"
    for r in records:
        assert float(r["sum"]) == pytest.approx(float(r["total"]), rel=1e-4)
        assert float(r["relative_error"]) < 1e-4
    from PIL import Image
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 600
    data = json.loads(_run("profile", CNN, "-i", images_file, "--format", "json").stdout)
    assert [r["tensor"] for r in data["rows"]] == [r["tensor"] for r in records]


def test_profile_plot_labels_points_by_short_node_names(cnn_exp, tmp_path):
    """The plot labelled its points by op type only: three 'Conv' points could not be told apart."""
    from PIL import Image
    from onnxlrp.plots import save_profile_plot
    rows = profile(cnn_exp)
    layout = save_profile_plot(str(tmp_path / "p.png"), rows, title="profile")
    with Image.open(tmp_path / "p.png") as image:
        assert image.size == layout.size
    assert layout.labels == ["input", "stem.0/Conv", "stem.2/Relu", "block/conv1/Conv", "block/relu1/Relu",
                             "block/conv2/Conv", "block/Add", "block/relu2/Relu", "pool1/MaxPool", "conv3.0/Conv",
                             "conv3.2/Relu", "pool2/AveragePool", "flatten/Flatten", "fc/Gemm"]
    assert [r.node.endswith(label.split("/", 1)[-1]) for r, label in zip(rows[1:], layout.labels[1:])] == \
        [True] * (len(rows) - 1)


def test_cli_profile_table_and_errors(images_file, tmp_path):
    result = _run("profile", CNN, "-i", images_file, "--format", "table")
    assert result.exit_code == 0, result.output
    assert "largest relative error over all layers and samples" in result.stdout
    missing = _run("profile", CNN, "-i", tmp_path / "nope.npy")
    assert missing.exit_code == 2
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert lines == [f"error: input file not found: {tmp_path / 'nope.npy'}"]
    bad = _run("bias-table", CNN, "-i", images_file, "--target", "12")
    assert bad.exit_code == 2 and "out of range" in bad.stderr and "Traceback" not in bad.output
