"""The folding stage: constants computed inside the graph become initializers before canonicalisation.

Untrained models from their constructors (the legacy exporter writes Identity nodes for identical biases and
BatchNorm statistics), layers sharing a constant, weight standardisation and Pad/Slice sizes computed from shapes
compile, conserve, and match Zennit's relevance on the equivalent plain model; the folded model is checked against
the original, dynamic axes stay dynamic, and what cannot be folded is named in the error."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxlrp
from onnxlrp import fold
from onnxlrp.fold import FoldingError, fold_constants
from ops_harness import make_model, tensor
from torch_utils import EXPORTERS, export, relative_l2, zennit_relevance
from zoo_eval import conservation_error

PARITY = 1e-4


def _fresh_cnn():
    """A CNN straight from its constructors: bias-free convolutions, BatchNorms with identical statistics
    (weight 1, bias 0, mean 0, var 1), zero-initialised linear bias."""
    import torch
    torch.manual_seed(3)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    nn.init.zeros_(model[-1].bias)
    return model.eval()


def _shared_constant_model():
    """Two convolutions tying one weight tensor, zero biases in every layer (the exporter deduplicates them)."""
    import torch
    torch.manual_seed(4)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU(), nn.Linear(5, 5))
    model[2].weight = model[0].weight
    for layer in (model[0], model[2], model[5], model[7]):
        nn.init.zeros_(layer.bias)
    return model.eval()


def _explain_and_compare(zennit, model, path, x, composite="epsilon_plus"):
    """onnxlrp's relevance of the exported model vs Zennit's on the torch model (with BatchNorm merged)."""
    from zennit import canonizers as zcan
    from zennit import composites as zc
    exp = onnxlrp.Explainer(str(path), composite).explain(x, target=[1, 2])
    comp = zc.EpsilonPlus(canonizers=[zcan.SequentialMergeBatchNorm()])
    want = zennit_relevance(zennit, model, x, [1, 2], comp)
    return exp, relative_l2(exp.relevance["input"], want)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fresh_cnn_from_constructor_compiles_conserves_and_matches_zennit(zennit, tmp_path, exporter):
    """An untrained CNN (identical BatchNorm statistics, zero biases) explains like Zennit explains it."""
    import torch
    model = _fresh_cnn()
    path = export(model, torch.randn(2, 3, 8, 8), tmp_path / "fresh.onnx", exporter)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    exp, parity = _explain_and_compare(zennit, model, path, x)
    assert conservation_error(exp) < 1e-5
    assert parity < PARITY, parity


def test_layers_sharing_a_constant_compile_and_match_zennit(zennit, tmp_path):
    """Tied weights and deduplicated zero biases (Identity nodes in the legacy export) are constants again."""
    import torch
    model = _shared_constant_model()
    path = export(model, torch.randn(2, 4, 6, 6), tmp_path / "shared.onnx", "legacy")
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}  # what the folder has to undo
    x = np.random.default_rng(1).normal(size=(2, 4, 6, 6)).astype(np.float32)
    exp, parity = _explain_and_compare(zennit, model, path, x)
    assert conservation_error(exp) < 1e-5
    assert parity < PARITY, parity


def _standardised_model():
    """Weight standardisation (timm's StdConv2d: a training-mode batch_norm of the weight), Pad sizes computed from
    the input's shape and a Slice whose end is computed from a shape; and the same model with the standardised
    weight stored (what Zennit explains)."""
    import torch
    import torch.nn.functional as F
    nn = torch.nn

    class StdConv(nn.Conv2d):
        def forward(self, x):
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                             eps=1e-6).reshape_as(self.weight)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Net(nn.Module):
        def __init__(self, conv_type):
            super().__init__()
            self.conv = conv_type(3, 5, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)  # a module: Zennit's Norm rule (a bare mean would pass gradients)
            self.fc = nn.Linear(5, 4)

        def forward(self, x):
            pad = (8 - x.shape[-1] % 8) % 8
            x = F.relu(self.conv(F.pad(x, (0, pad, 0, pad))))
            x = x[:, :, : x.shape[2] // 2]
            return self.fc(self.pool(x).flatten(1))

    torch.manual_seed(5)
    model = Net(StdConv).eval()
    plain = Net(nn.Conv2d).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        w = model.conv.weight.reshape(5, -1)
        w = (w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, unbiased=False, keepdim=True) + 1e-6)
        plain.conv.weight.copy_(w.reshape_as(model.conv.weight))
    return model, plain


def test_weight_standardisation_and_sizes_from_shapes_fold(zennit, tmp_path):
    """Weights computed from weights and Pad/Slice sizes computed from static dims become constants; the batch
    axis stays dynamic (batch 3 runs, the folder's own check ran batch 2); relevance equals Zennit's on the
    plain model holding the standardised weight."""
    import torch
    model, plain = _standardised_model()
    path = export(model, torch.randn(2, 3, 13, 13), tmp_path / "ws.onnx", "legacy")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"BatchNormalization", "Shape", "Pad"} <= ops
    folded = fold_constants(onnxlrp.graph.load_model(str(path)))
    assert not {"BatchNormalization", "Shape", "ConstantOfShape"} & {n.op_type for n in folded.graph.node}
    assert folded.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(2).normal(size=(3, 3, 13, 13)).astype(np.float32)
    exp = onnxlrp.Explainer(str(path), "epsilon_plus").explain(x, target=[1, 2, 3])
    from zennit import composites as zc
    want = zennit_relevance(zennit, plain, x, [1, 2, 3], zc.EpsilonPlus())
    assert conservation_error(exp) < 1e-5
    assert relative_l2(exp.relevance["input"], want) < PARITY


def _packed_weight_model():
    """x @ W1 + b1 -> Relu -> x @ W2 where W1, W2 come from one packed constant through a Split (several outputs)
    and b1 from an Identity of a shared constant."""
    g = np.random.default_rng(6)
    packed = g.normal(size=(4, 10)).astype(np.float32)
    nodes = [helper.make_node("Split", ["packed", "sizes"], ["w1", "w2"], axis=1),
             helper.make_node("Identity", ["shared"], ["b1"]),
             helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Slice", ["w2", "zero", "four", "one"], ["w2s"]),
             helper.make_node("Gemm", ["r", "w2s"], ["y"], transB=1)]
    inits = {"packed": packed, "sizes": np.array([4, 6], np.int64), "shared": np.zeros(4, np.float32),
             "zero": np.array([0], np.int64), "four": np.array([4], np.int64), "one": np.array([1], np.int64)}
    return make_model(nodes, [tensor("x", ["N", 4])], [tensor("y", ["N", 4])], inits), packed


def test_multi_output_node_of_constants_folds_and_the_rules_see_the_weights():
    """A Split of a constant (several outputs) is folded: both Gemms get constant weights, and LRP-epsilon's
    input relevance equals the dense float64 reference on the packed weight's parts."""
    import reference as ref
    model, packed = _packed_weight_model()
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Gemm", "Relu", "Gemm"]
    x = np.random.default_rng(7).normal(size=(2, 4)).astype(np.float32)
    exp = onnxlrp.Explainer(model, "epsilon").explain(x, target=0)
    w1, w2 = packed[:, :4].astype(np.float64), packed[:, 4:8].astype(np.float64)
    for i in range(2):
        h = np.maximum(x[i] @ w1, 0)
        y = h @ w2.T
        R = np.zeros(4)
        R[0] = y[0]
        R_h, _, _ = ref.epsilon(w2, np.zeros(4), h, R)
        R_x, _, _ = ref.epsilon(w1.T, np.zeros(4), x[i].astype(np.float64), R_h)
        np.testing.assert_allclose(exp.relevance["x"][i], R_x, rtol=1e-4, atol=1e-6 * np.abs(R_x).sum())


def test_a_folder_that_changes_the_model_is_caught(monkeypatch):
    """The folded model is run next to the original: a wrong fold stops the compilation with a clear error."""
    model, _ = _packed_weight_model()
    real = fold._fold

    def broken(m):
        out = real(m)
        for t in out.graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT:
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 1.5, t.name))
        return out

    monkeypatch.setattr(fold, "_fold", broken)
    with pytest.raises(FoldingError, match="folding constants changed output 'y'"):
        onnxlrp.compile(model, "epsilon")


def test_a_gather_by_an_index_read_from_a_dynamic_axis_is_explained():
    """A Gather whose index comes from the batch size (N - 1) depends on no data: nothing folds it, and relevance
    is moved back at run time; R_x equals the dense float64 epsilon rule of the Gemm's column N - 1. (The error that
    names a dynamic axis for ops that need a constant: test_dynamic_shapes.test_sizes_read_from_a_dynamic_axis_...)"""
    w = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="the_shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"]),
             helper.make_node("Sub", ["n", "one"], ["index"]),
             helper.make_node("Gemm", ["x", "w"], ["h"]),
             helper.make_node("Gather", ["h", "index"], ["y"], name="the_gather", axis=1)]
    model = make_model(nodes, [tensor("x", ["N", 3])], [tensor("y", ["N"])],
                       {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "w": w})
    x = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    exp = onnxlrp.Explainer(onnxlrp.compile(model, "epsilon", params={"epsilon": 0.25})).explain(x)
    x64, column = x.astype(np.float64), w.astype(np.float64)[:, 1]
    z = x64 @ column
    np.testing.assert_allclose(exp.output, z, rtol=1e-6)
    want = x64 * column * (z / (z + 0.25 * np.where(z < 0, -1.0, 1.0)))[:, None]
    np.testing.assert_allclose(exp.relevance["x"], want, rtol=1e-5, atol=1e-7)
