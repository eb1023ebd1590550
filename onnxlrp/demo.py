"""The embedded demo: explain the shipped digits CNN on the shipped digits."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np


def shipped_model_dir() -> Path:
    """The folder with the shipped models and samples (top-level models/, shipped in the wheel)."""
    try:
        folder = Path(str(resources.files("onnxlrp._models")))
        if (folder / "digits_cnn.onnx").is_file():
            return folder
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "models"


def run_demo(out_dir: str, echo: Callable[[str], None] = print) -> None:
    """Explain the shipped CNN on the shipped digits and print prediction, label and conservation per digit."""
    from .report import conservation_line
    from .runtime import Explainer
    folder = shipped_model_dir()
    samples = np.load(folder / "digits_samples.npz")
    explainer = Explainer(folder / "digits_cnn.onnx", composite="epsilon_plus")
    exp = explainer.explain(samples["images"])
    echo(f"onnxlrp demo: digits CNN, composite {explainer.composite}, provider {explainer.provider}")
    for i, label in enumerate(samples["labels"]):
        echo(f"digit {i:2d}: label {int(label)}, predicted {int(exp.target[i])}; " + conservation_line(exp, i))
