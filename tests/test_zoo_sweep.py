"""The zoo sweep's representative subset (benchmarks/zoo_sweep.py runs it all): fastvit_t8 (trained-like, legacy
exporter: its parallel branches merged), convnextv2_atto (trained-like, legacy: GRN's ratio of statistics held
constant; untrained models with both exporters are in tests/test_fold.py), convnext_atto (untrained, dynamo: its
head's as_strided Gather), mobilevit_xxs (untrained, legacy, AttnLRP: a batch axis merged with patches), every shipped Keras fixture (tf2onnx) and the
scikit-learn MLP pipeline (skl2onnx). Each row's compiled logits must equal the source framework's (torch, Keras,
scikit-learn: 1e-4 relative) and total = inputs + biases + stabilizer must hold to 1e-4."""
from __future__ import annotations

import numpy as np
import pytest

from keras_zoo import NAMES as KERAS_NAMES, keras_row
from sklearn_zoo import estimators, sklearn_row
from zoo_sweep_runs import CONSERVATION, OUTPUT, timm_row

# (model, weights, exporter): why each is in the subset 
TIMM_CASES = [
    ("fastvit_t8", "trained", "legacy"),    # parallel reparameterisable branches merged into one Conv (RepMixer)
    ("convnextv2_atto", "trained", "legacy"),  # GRN: x times a ratio of two statistics, held constant
    ("convnext_atto", "untrained", "dynamo"),  # as_strided head: a Gather by indices computed from the batch size
    ("mobilevit_xxs", "untrained", "legacy"),  # attnlrp; patches unfolded into the batch axis by run-time reshapes
]
SKLEARN_CASES = ["Pipeline(StandardScaler, MLPClassifier)"]  # the linear pipeline: tests/test_sklearn_linear.py


def _assert_ok(row: dict) -> None:
    """The row compiled, reproduces its source and conserves."""
    assert row["status"] == "ok", row
    assert row["output error"] <= OUTPUT, row
    assert row["conservation"] <= CONSERVATION, row


@pytest.mark.parametrize("name,weights,exporter", TIMM_CASES)
def test_timm_model_compiles_reproduces_and_conserves(name, weights, exporter, tmp_path):
    """A timm model (timm_zoo.build) exported by torch, compiled with its composite (timm_zoo), equals torch and
    conserves."""
    row = timm_row(name, weights, exporter, tmp_path)
    _assert_ok(row)
    if name == "fastvit_t8":  # -200 % to the stabilizer before the branches were merged (README, zoo table)
        assert abs(row["stabilizer"]) < 0.05, row


@pytest.mark.parametrize("name", KERAS_NAMES)
def test_keras_fixture_compiles_reproduces_and_conserves(name):
    """A tf2onnx export of a Keras model (tests/data/keras) equals Keras's own output and conserves."""
    row = keras_row(name)
    _assert_ok(row)
    assert np.isfinite(row["stabilizer"])


@pytest.mark.parametrize("name", SKLEARN_CASES)
def test_sklearn_estimator_compiles_reproduces_and_conserves(name):
    """A skl2onnx conversion (ZipMap and all) equals the estimator's decision function and conserves (the Scaler's
    output is shaped for the MLP's MatMuls: shape_values.ML_SHAPE_KEEPING)."""
    assert name in estimators()
    _assert_ok(sklearn_row(name))
