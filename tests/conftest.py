"""Shared fixtures: a torchvision stand-in so that zennit imports without torchvision, and common helpers."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import pytest


def _install_torchvision_stub() -> None:
    """zennit's __init__ imports torchvision.models.resnet, lxt.efficient torchvision.models.vision_transformer;
    register a minimal stand-in (no CPU build here)."""
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
    # lxt.efficient's model maps import torchvision.models.vision_transformer and key on its nn.* classes
    vision_transformer = types.ModuleType("torchvision.models.vision_transformer")
    vision_transformer.nn = torch.nn
    for module in (tv, models, resnet, vision_transformer):  # importlib.util.find_spec (dynamo) needs a spec
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    models.resnet = resnet
    models.vision_transformer = vision_transformer
    tv.models = models
    tv.__path__ = []  # a package: timm imports torchvision.ops.misc, torchvision.transforms, ... (see _StubFinder)
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet,
                        "torchvision.models.vision_transformer": vision_transformer})
    sys.meta_path.append(_StubFinder())


class _Placeholder(type):
    """A placeholder class whose class attributes are placeholders too (InterpolationMode.NEAREST as a key)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Placeholder(name, (), {"__module__": cls.__module__})
        setattr(cls, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any other torchvision submodule (timm imports torchvision.ops.misc.FrozenBatchNorm2d and the transforms):
    an empty package whose every attribute is a placeholder class (never called by the code the tests run)."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("torchvision.") and fullname not in sys.modules:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        placeholders: dict = {}

        def __getattr__(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return placeholders.setdefault(name, _Placeholder(name, (), {"__module__": spec.name}))
        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module):
        parent, _, child = module.__name__.rpartition(".")
        setattr(sys.modules[parent], child, module)


@pytest.fixture(scope="session")
def zennit():
    """The zennit package, importable without torchvision."""
    _install_torchvision_stub()
    import zennit as zn
    import zennit.attribution  # noqa: F401
    import zennit.composites  # noqa: F401
    import zennit.canonizers  # noqa: F401
    return zn


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """get(kind, exporter) -> path of the tiny transformer's export (transformer_models.CASES), made once per
    session ('legacy' or 'dynamo')."""
    folder = tmp_path_factory.mktemp("transformers")
    cache: dict = {}

    def get(kind: str, exporter: str):
        if (kind, exporter) not in cache:
            _install_torchvision_stub()
            from transformer_models import CASES, export
            case = CASES[kind]
            path = folder / f"{kind}_{exporter}.onnx"
            cache[(kind, exporter)] = export(case.build(), kind, case.inputs, path, exporter == "dynamo")
        return cache[(kind, exporter)]
    return get
