"""The embedded demo: explain the shipped digits CNN on the shipped digits."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def shipped_model_dir() -> Path:
    """The folder with the shipped models and samples (top-level models/, shipped in the wheel)."""
    from .data import data_folder
    return data_folder("onnxlrp._models", "digits_cnn.onnx") or Path(__file__).resolve().parent.parent / "models"


def run_demo(out_dir: str, echo: Callable[[str], None] = print, composite: str = "epsilon_plus") -> Path:
    """Explain the shipped CNN on the shipped digits: write a heatmap grid, then print the results and the bias
    table (the picture is written before the first line, so that `onnxlrp demo | head` still makes it)."""
    from .errors import OnnxLrpError
    from .heatmap import save_image_heatmaps
    from .render import bias_rich_table, rich_text
    from .report import conservation_line
    from .runtime import Explainer
    from .tables import bias_table
    target = Path(out_dir)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxLrpError(f"cannot create folder {target}: {exc.strerror or exc}") from None
    folder = shipped_model_dir()
    with np.load(folder / "digits_samples.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    explainer = Explainer(folder / "digits_cnn.onnx", composite=composite, node_relevance="sums")
    exp = explainer.explain(images)
    n = len(labels)
    predicted = exp.output.reshape(n, -1).argmax(axis=1)
    path = target / f"digits_cnn_{_file_part(explainer.composite)}.png"
    titles = [f"label {int(label)} \u00b7 predicted {int(p)}" for label, p in zip(labels, predicted)]
    save_image_heatmaps(str(path), exp.relevance["input"], images, titles=titles, image_cmap="gray_r",
                        title=f"LRP ({explainer.composite}) of the predicted class: each digit beside its relevance "
                              f"(red: for the class, blue: against)")
    echo(f"onnxlrp demo: digits CNN (models/digits_cnn.onnx) on {n} held-out digits | composite "
         f"{explainer.composite} | provider {explainer.provider}")
    echo("each digit's predicted logit is explained: total = inputs + biases + stabilizer")
    for i, label in enumerate(labels):
        mark = "" if predicted[i] == label else "  <- misclassified"
        echo(f"digit {i:2d}: label {int(label)}, predicted {int(predicted[i])}{mark}")
        echo("    " + conservation_line(exp, i))
    echo("")
    table = bias_rich_table(bias_table(exp, top=3), f"bias table (mean over the {n} digits)", width=100)
    echo(rich_text(table, width=100).rstrip())
    echo("")
    echo(f"wrote the heatmap grid to {path.resolve()}")
    return path


def _file_part(name: str) -> str:
    """A composite name (or a TOML path) as a safe file-name part."""
    stem = Path(name).stem if name.endswith(".toml") else name
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
