"""Torch copies of the shipped digits models (models/train.py's classes, weights read from the ONNX files)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

if TYPE_CHECKING:
    import torch

MODELS = Path(__file__).resolve().parent.parent / "models"


def _train_module():
    """models/train.py as a module (it defines DigitsCNN and DigitsMLP)."""
    spec = importlib.util.spec_from_file_location("digits_train", MODELS / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_copy(name: str) -> "torch.nn.Module":
    """DigitsCNN ('digits_cnn') or DigitsMLP ('digits_mlp') in eval mode, with the ONNX file's weights."""
    import torch
    train = _train_module()
    model = {"digits_cnn": train.DigitsCNN, "digits_mlp": train.DigitsMLP}[name]()
    source = onnx.load(str(MODELS / f"{name}.onnx"))
    weights = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in source.graph.initializer}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return model.eval()


def digits(kind: str = "images") -> tuple:
    """The 16 shipped held-out digits ('images' (16, 1, 8, 8) or 'flat' (16, 64)) and their labels."""
    data = np.load(MODELS / "digits_samples.npz")
    return data[kind], data["labels"]
