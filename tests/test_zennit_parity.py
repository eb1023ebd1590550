"""Parity with Zennit: the same PyTorch model exported with both torch exporters, the same composite,
relevance equal to Zennit's (attr_output = output * one_hot) to 1e-4 relative L2."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlrp
from torch_utils import EXPORTERS, export, relative_l2, zennit_relevance

PARITY = 1e-4


def _mlp():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 5))


def _cnn():
    import torch
    torch.manual_seed(1)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 6))


def _zennit_composite(zennit, name: str, low=None, high=None):
    """Zennit's composite for one of our built-in composite names."""
    import torch
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit import types as zt
    if name == "epsilon":
        return zc.LayerMapComposite(zc.layer_map_base() + [(zt.Linear, zr.Epsilon())])
    if name == "zero":
        # Zennit's LRP-0 divides 0 by 0 (NaN) where a unit and its relevance are both exactly 0; onnxlrp passes
        # nothing there. A stabilizer far below float32 resolution gives Zennit's LRP-0 without the 0/0.
        return zc.LayerMapComposite(zc.layer_map_base(1e-30) + [(zt.Linear, zr.Epsilon(1e-30))])
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=torch.as_tensor(low, dtype=torch.float32),
                                  high=torch.as_tensor(high, dtype=torch.float32))
    classes = {"epsilon_plus": zc.EpsilonPlus, "epsilon_plus_flat": zc.EpsilonPlusFlat,
               "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1, "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat}
    return classes[name]()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both models exported with both exporters once per module."""
    import torch
    folder = tmp_path_factory.mktemp("parity")
    out = {}
    for label, make, shape in (("mlp", _mlp, (4, 20)), ("cnn", _cnn, (3, 3, 8, 8))):
        model = make().eval()
        example = torch.randn(*shape)
        for exporter in EXPORTERS:
            out[(label, exporter)] = (model, export(model, example, folder / f"{label}_{exporter}.onnx", exporter))
    return out


def _inputs(shape, seed=7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mlp_epsilon_matches_zennit(zennit, exported, exporter):
    """The foundation check: an MLP, epsilon on every layer, both exporters."""
    model, path = exported[("mlp", exporter)]
    x = _inputs((4, 20))
    exp = onnxlrp.Explainer(str(path), composite="epsilon").explain(x, target=[0, 1, 2, 3])
    want = zennit_relevance(zennit, model, x, [0, 1, 2, 3], _zennit_composite(zennit, "epsilon"))
    assert relative_l2(exp.relevance["input"], want) < PARITY
    assert np.all(exp.conservation()["relative_error"] < 1e-5)


COMPOSITES = ["epsilon", "zero", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat", "epsilon_gamma_box"]


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("label", ["mlp", "cnn"])
def test_composite_matches_zennit(zennit, exported, label, exporter, composite):
    """Each built-in composite equals Zennit's on an MLP and a CNN (Conv, ReLU, MaxPool, AvgPool, Flatten, Linear)."""
    model, path = exported[(label, exporter)]
    x = _inputs((4, 20) if label == "mlp" else (3, 3, 8, 8))
    x = np.clip(x, -2.5, 2.5)
    target = [1, 3, 0, 2][: x.shape[0]]
    exp = onnxlrp.Explainer(str(path), composite=composite, params={"low": -2.5, "high": 2.5}
                            if composite == "epsilon_gamma_box" else None).explain(x, target=target)
    want = zennit_relevance(zennit, model, x, target, _zennit_composite(zennit, composite, -2.5, 2.5))
    assert relative_l2(exp.relevance["input"], want) < PARITY


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_gamma_box_per_channel_bounds_match_zennit(zennit, exported, exporter):
    """epsilon_gamma_box with per-channel bounds (a normalised image's bounds differ per channel)."""
    model, path = exported[("cnn", exporter)]
    low, high = [-2.0, -1.5, -2.5], [2.2, 1.8, 2.6]
    x = np.clip(_inputs((3, 3, 8, 8)), np.reshape(low, (1, 3, 1, 1)), np.reshape(high, (1, 3, 1, 1)))
    x = x.astype(np.float32)
    exp = onnxlrp.Explainer(str(path), composite="epsilon_gamma_box",
                            params={"low": low, "high": high}).explain(x, target=2)
    want = zennit_relevance(zennit, model, x, 2, _zennit_composite(
        zennit, "epsilon_gamma_box", np.reshape(low, (1, 3, 1, 1)) * np.ones((1, 3, 8, 8)),
        np.reshape(high, (1, 3, 1, 1)) * np.ones((1, 3, 8, 8))))
    assert relative_l2(exp.relevance["input"], want) < PARITY
