"""Zennit's composites for the benchmark models, with the canonizers each architecture needs.

- every model: SequentialMergeBatchNorm (BN folded into the conv before it, as onnxlrp's export/canonicalisation
  folds it), made exact: zennit 0.5.1 leaves the merged BN computing x / sqrt(1 + eps);
- ResNets: zennit's block canonizers (a Sum module per block, so that the residual add gets the Norm rule);
- MobileNetV2: the same Sum module for the inverted-residual add.
"""
from __future__ import annotations

import torch

import models  # noqa: F401  (installs the torchvision stand-in zennit imports)
from zoo import exact_merge  # the test zoo's exact BN merge (models put tests/ on the path)
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlus
from zennit.layer import Sum
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer


ExactSequentialMergeBatchNorm = exact_merge(SequentialMergeBatchNorm)  # see tests/zoo.py: exact_merge


class InvertedResidualCanonizer(AttributeCanonizer):
    """Gives MobileNetV2's residual add a zennit Sum module (Norm rule), as the ResNet canonizers do."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        """Overload forward and add canonizer_sum on residual InvertedResidual blocks."""
        if isinstance(module, models.InvertedResidual) and module.use_res:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + conv(x) through the Sum module."""
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))


def canonizers(model_name: str) -> list:
    """The canonizers the architecture needs."""
    result = [ExactSequentialMergeBatchNorm()]
    if model_name.startswith("resnet"):
        result += [ResNetBasicBlockCanonizer(), ResNetBottleneckCanonizer()]
    if model_name.startswith("mobilenet"):
        result.append(InvertedResidualCanonizer())
    return result


def composite(model_name: str, name: str, low: float, high: float):
    """Zennit's composite matching onnxlrp's built-in composite `name`."""
    if name == "epsilon_plus":
        return EpsilonPlus(canonizers=canonizers(model_name))
    if name == "epsilon_gamma_box":
        return EpsilonGammaBox(low=torch.tensor(low), high=torch.tensor(high), canonizers=canonizers(model_name))
    raise ValueError(f"no zennit composite for {name!r}")


def attr_output(output: torch.Tensor) -> torch.Tensor:
    """The output at its argmax, zero elsewhere (onnxlrp's default seed: the explained logit)."""
    onehot = torch.zeros_like(output)
    onehot[torch.arange(output.shape[0]), output.argmax(dim=1)] = 1.0
    return output * onehot
