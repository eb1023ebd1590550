"""The `gradient` composite: gradient x input from onnxruntime against torch autograd, and LRP-0 on ReLU networks.

- ReLU networks are piecewise linear: LRP-0 (the `zero` composite) computes x * df/dx and b * df/db exactly, so the
  gradient composite's relevance and bias outputs must equal zero's, and its remainder (the stabilizer output) must
  vanish;
- on models with curved activations (GELU erf and tanh, tanh, SiLU, a sigmoid gate, ELU, softplus, LayerNorm, max
  pool) and on zoo models (U-Net: ConvTranspose, Resize, Concat; the channels-last CNN: transposes) df/dx and
  x * df/dx must equal torch autograd's to 1e-5 (benchmarks/gradient_zoo.py runs the whole zoo, both exporters).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onnxlrp
from digits_torch import MODELS, digits
from torch_utils import export, relative_l2
from zoo import ZOO, build


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small torch models on a shared 2-core machine: one intra-op thread is far faster than spinning two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_gradient(model: nn.Module, x: np.ndarray, targets: list) -> np.ndarray:
    """df/dx of the targets' outputs (flattened per sample), by torch autograd."""
    xt = torch.tensor(x, requires_grad=True)
    out = model(xt).reshape(len(x), -1)
    out[torch.arange(len(x)), torch.tensor(targets)].sum().backward()
    return xt.grad.numpy().astype(np.float64)


@pytest.mark.parametrize("name,kind", [("digits_cnn", "images"), ("digits_mlp", "flat")])
def test_gradient_equals_lrp0_on_relu_networks(name: str, kind: str) -> None:
    x, _ = digits(kind)
    model = str(MODELS / f"{name}.onnx")
    grad = onnxlrp.Explainer(model, "gradient").explain(x)
    zero = onnxlrp.Explainer(model, "zero").explain(x)
    scale = np.abs(zero.relevance["input"]).max()
    np.testing.assert_allclose(grad.relevance["input"], zero.relevance["input"], atol=1e-5 * scale, rtol=0)
    assert sorted(grad.bias) == sorted(zero.bias) and len(grad.bias) == (5 if name == "digits_cnn" else 3)
    for node in zero.bias:
        np.testing.assert_allclose(grad.bias[node], zero.bias[node], atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(grad.total, zero.total, rtol=1e-6)
    assert np.all(np.abs(grad.stabilizer) <= 1e-5 * np.abs(grad.total))  # the remainder of a piecewise-linear net
    conservation = grad.conservation()
    assert conservation["relative_error"].max() < 1e-5


def test_gradient_of_the_digits_cnn_equals_autograd() -> None:
    from digits_torch import torch_copy
    x, _ = digits("images")
    exp = onnxlrp.Explainer(str(MODELS / "digits_cnn.onnx"), "gradient").explain(x)
    g = _torch_gradient(torch_copy("digits_cnn"), x, exp.target.tolist())
    assert relative_l2(exp.gradient["input"], g) < 1e-5
    assert relative_l2(exp.relevance["input"], x * g) < 1e-5


class ActivationNet(nn.Module):
    """Curved activations around conv, pool, gate and dense layers: every non-ReLU VJP a real export needs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.norm = nn.LayerNorm(12 * 4 * 4)
        self.fc1 = nn.Linear(12 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.gelu(self.conv1(x)), 2)
        h = self.conv_a(h) * torch.sigmoid(self.conv_b(h))      # a sigmoid gate: its branch gets a gradient
        h = torch.tanh(h) + F.silu(h)
        h = F.elu(self.conv2(h)).flatten(1)
        h = F.gelu(self.fc1(self.norm(h)), approximate="tanh")
        return self.fc2(F.softplus(h) - F.leaky_relu(h, 0.1))


@pytest.fixture(scope="module")
def activation_net() -> nn.Module:
    torch.manual_seed(0)
    model = ActivationNet().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_gradient_equals_autograd_on_curved_activations(activation_net, tmp_path, exporter: str) -> None:
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    path = export(activation_net, torch.tensor(x), tmp_path / f"act_{exporter}.onnx", exporter)
    compiled = onnxlrp.compile(str(path), "gradient")
    onnx.checker.check_model(compiled, full_check=True)
    exp = onnxlrp.Explainer(compiled).explain(x, [1, 2, 3])
    g = _torch_gradient(activation_net, x, [1, 2, 3])
    assert relative_l2(exp.gradient["input"], g) < 1e-5
    assert relative_l2(exp.relevance["input"], x * g) < 1e-5
    assert len(exp.bias) >= 6  # the convolutions', dense layers' and LayerNorm's biases: b * df/db
    conservation = exp.conservation()  # the remainder closes the identity by construction ...
    assert conservation["relative_error"].max() < 1e-5
    assert np.abs(exp.stabilizer).min() > 1e-3 * np.abs(exp.total).max()  # ... and is not zero: curved activations


# every zoo model with both exporters: benchmarks/gradient_zoo.py
@pytest.mark.parametrize("name", ["unet", "channels_last"])
def test_gradient_equals_autograd_on_zoo_models(tmp_path, name: str) -> None:
    entry = ZOO[name]
    model = build(name)
    x = np.clip(np.random.default_rng(7).normal(size=(2,) + entry.shape), -2.5, 2.5).astype(np.float32)
    path = export(model, torch.tensor(x), tmp_path / f"{name}.onnx", "legacy")
    targets = [1, 3] if not entry.flat_targets else [40, 700]
    exp = onnxlrp.Explainer(str(path), "gradient").explain(x, targets)
    g = _torch_gradient(model, x, targets)
    assert relative_l2(exp.gradient["input"], g) < 1e-5
    assert relative_l2(exp.relevance["input"], x * g) < 1e-5


def test_gradient_composite_refuses_what_it_cannot_do(tmp_path) -> None:
    model = str(MODELS / "digits_mlp.onnx")
    with pytest.raises(onnxlrp.OnnxLrpError, match="init must be 'logit'"):
        onnxlrp.compile(model, "gradient", init="one")
    with pytest.raises(onnxlrp.OnnxLrpError, match="no parameters"):
        onnxlrp.compile(model, "gradient", params={"epsilon": 0.1})
    with pytest.raises(onnxlrp.OnnxLrpError, match="node_relevance"):
        onnxlrp.compile(model, "gradient", node_relevance="sums")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("TopK", ["x", "k"], ["v", "i"], name="the_topk"),
         onnx.helper.make_node("Gemm", ["v", "w"], ["y"], name="head")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "k"),
         onnx.numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "w")])
    broken = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(onnxlrp.UnsupportedModelError, match=r"TopK x1 \(the_topk\): no gradient \(VJP\) for this op"):
        onnxlrp.compile(broken, "gradient")


def test_cli_lists_and_inspects_the_gradient_composite() -> None:
    from click.testing import CliRunner
    from onnxlrp.cli import main
    runner = CliRunner()
    listed = runner.invoke(main, ["rules"])
    assert listed.exit_code == 0 and any(line.split()[:1] == ["gradient"] for line in listed.output.splitlines())
    plan = runner.invoke(main, ["inspect", str(MODELS / "digits_cnn.onnx"), "--composite", "gradient"])
    assert plan.exit_code == 0, plan.output
    rows = [line.split() for line in plan.output.splitlines()[1:]]
    assert len(rows) == 13 and all(r[-1] == "gradient" for r in rows)
    assert [r[1] for r in rows if r[2] == "yes"] == ["Conv", "Conv", "Conv", "Conv", "Gemm"]
