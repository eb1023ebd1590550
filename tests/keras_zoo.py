"""The Keras models of the zoo sweep: tf2onnx exports shipped in tests/data/keras/ (made by
benchmarks/export_keras.py with TensorFlow 2.21, Keras 3.15, tf2onnx 1.17), each with a batch of inputs and Keras's
own output for it, so that they are explained without TensorFlow."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo_sweep_runs import COMPOSITE, explain_row, softmax

FOLDER = Path(__file__).resolve().parent / "data" / "keras"
NAMES = ("mlp_sequential", "mlp_functional", "cnn_bn", "mobilenetv2", "resnet50")
ENDS_WITH_SOFTMAX = ("mobilenetv2", "resnet50")  # keras.applications' classifier_activation="softmax"


def keras_row(name: str, composite: str = COMPOSITE) -> dict:
    """Explain one shipped Keras fixture; its compiled logits must equal Keras's output."""
    data = np.load(FOLDER / f"{name}.npz")
    row = {"model": f"keras {name}", "family": "Keras", "exporter": "tf2onnx", "weights": "trained"}
    to_reference = softmax if name in ENDS_WITH_SOFTMAX else np.asarray
    return explain_row(row, FOLDER / f"{name}.onnx", data["input"], data["keras_output"], composite, to_reference)


def keras_rows(composite: str = COMPOSITE) -> list:
    """Every Keras fixture's row."""
    return [keras_row(name, composite) for name in NAMES]
