"""Shared fixtures: a torchvision stand-in so that zennit imports without torchvision, and common helpers."""
from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest


def _install_torchvision_stub() -> None:
    """zennit's __init__ imports torchvision.models.resnet; register a minimal stand-in (no CPU build here)."""
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass
    import torch
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock(torch.nn.Module):
        """Stand-in for torchvision's BasicBlock (zennit's ResNet canonizer matches on this class)."""

    class Bottleneck(torch.nn.Module):
        """Stand-in for torchvision's Bottleneck."""

    resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck
    for module in (tv, models, resnet):  # importlib.util.find_spec (used by torch's dynamo exporter) needs a spec
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    models.resnet = resnet
    tv.models = models
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


@pytest.fixture(scope="session")
def zennit():
    """The zennit package, importable without torchvision."""
    _install_torchvision_stub()
    import zennit as zn
    import zennit.attribution  # noqa: F401
    import zennit.composites  # noqa: F401
    import zennit.canonizers  # noqa: F401
    return zn
