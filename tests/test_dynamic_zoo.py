"""Zoo models exported with dynamic height and width (both torch exporters): one compiled file explains three input
sizes, and at each size equals the file compiled for that size alone (shapes=) and Zennit in float64 with the zoo's
canonizers (tests/zoo.py). ResNet-18: strided convolutions and an overlapping max pool; MobileNetV3: strided
depthwise convolutions, hard-swish and squeeze-excitation gates; U-Net: ConvTranspose, nearest and bilinear Resize
and skip concatenations at every size."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import onnxlrp
from torch_utils import export, relative_l2
from zoo import ZOO, build
from zoo_eval import conservation_error, zennit_composite

SIZES = {"resnet18": [(32, 32), (40, 24), (48, 56)], "mobilenet_v3": [(32, 32), (40, 24), (48, 56)],
         "unet": [(16, 16), (24, 32), (40, 24)]}
CASES = [("resnet18", "legacy"), ("mobilenet_v3", "legacy"), ("unet", "legacy"), ("unet", "dynamo")]
COMPOSITE = "epsilon_plus"
PARITY = 1e-4


def _inputs(hw: tuple, seed: int = 11) -> np.ndarray:
    """A batch of two standard normal images of the given size."""
    return np.random.default_rng(seed).normal(size=(2, 3) + tuple(hw)).astype(np.float32)


def _targets(name: str, hw: tuple) -> list:
    """Class targets, or for the U-Net's per-pixel map flat indices (class, row, column) into (C, H, W)."""
    if name != "unet":
        return [1, 3]
    h, w = hw
    return [int(np.ravel_multi_index((1, h // 2, w // 3), (3, h, w))),
            int(np.ravel_multi_index((2, 1, w - 2), (3, h, w)))]


def _zennit(name: str, model, x: np.ndarray, target: list, dtype=np.float64) -> np.ndarray:
    """Zennit's relevance (float64 unless dtype says otherwise) with the zoo's canonizers; attr_output = output *
    one-hot(target)."""
    import torch
    from zennit.attribution import Gradient
    tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    model = copy.deepcopy(model).to(tdtype)
    comp = zennit_composite(ZOO[name], model, COMPOSITE)

    def attr_output(output: torch.Tensor) -> torch.Tensor:
        onehot = torch.zeros_like(output).reshape(output.shape[0], -1)
        onehot[torch.arange(output.shape[0]), torch.tensor(target)] = 1.0
        return output * onehot.reshape(output.shape)

    with Gradient(model=model, composite=comp) as attributor:
        _, relevance = attributor(torch.tensor(x, dtype=tdtype), attr_output)
    return relevance.detach().numpy()


@pytest.fixture(scope="module")
def models():
    """The seeded zoo models, built once."""
    return {name: build(name) for name in SIZES}


@pytest.fixture(scope="module")
def references():
    """Zennit's float64 relevance per (model, size), shared by the exporters."""
    return {}


@pytest.mark.parametrize("name,exporter", CASES)
def test_one_file_every_size(models, references, zennit, tmp_path, name, exporter):
    """One compiled file (symbolic H, W): at three sizes it equals the file specialised to that size (1e-5), Zennit
    in float64 (1e-4 relative L2; where Zennit's own float32 result is further than that from its float64 one, as
    for MobileNetV3's squeeze-excitation at some sizes, within twice Zennit's float32 error, as in
    test_models_zoo), and conserves."""
    import torch
    model = models[name]
    example = torch.tensor(_inputs(SIZES[name][0]))
    path = export(model, example, tmp_path / f"{name}_{exporter}.onnx", exporter, dynamic_spatial=True)
    explainer = onnxlrp.Explainer(str(path), COMPOSITE)
    assert explainer.inputs[0].shape[2:] != list(SIZES[name][0]), "the export must keep height and width dynamic"
    for hw in SIZES[name]:
        x, target = _inputs(hw), _targets(name, hw)
        exp = explainer.explain(x, target=target)
        single = onnxlrp.Explainer(str(path), COMPOSITE, shapes={"input": (-1, 3) + hw}).explain(x, target=target)
        assert relative_l2(exp.relevance["input"], single.relevance["input"]) < 1e-5, hw
        if (name, hw) not in references:
            references[(name, hw)] = _zennit(name, model, x, target)
        exact = references[(name, hw)]
        parity = relative_l2(exp.relevance["input"], exact)
        if parity >= PARITY:
            own = relative_l2(_zennit(name, model, x, target, np.float32), exact)
            assert parity < 2 * own, (hw, parity, own)
        assert conservation_error(exp) < 1e-5, hw
