"""The CLI through click's CliRunner: results, files, and one clear error line with a non-zero exit."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxlrp.cli import main
from mlp_models import random_mlp


@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(random_mlp([6, 8, 4], seed=9), str(model))
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", input=x)
    np.save(tmp_path / "bad_shape.npy", x[:, :5])
    return tmp_path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, text: str):
    assert result.exit_code != 0
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_compile_writes_a_model(files):
    out = files / "out.onnx"
    result = _run("compile", files / "mlp.onnx", "-o", out, "--composite", "epsilon", "--set", "epsilon=0.01")
    assert result.exit_code == 0, result.output
    compiled = onnx.load(str(out))
    assert "lrp/relevance/input" in [o.name for o in compiled.graph.output]
    assert '"epsilon": 0.01' in compiled.metadata_props[-1].value


def test_explain_prints_conservation_and_writes_npz(files):
    """explain: prediction, target, conservation line, top positions; the npz holds every field."""
    out = files / "res.npz"
    result = _run("explain", files / "mlp.onnx", "--input", files / "x.npz", "--target", 1, "-c", "epsilon", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.count("explained target 1") == 3
    assert "total" in result.output and "= inputs" in result.output and "stabilizer" in result.output
    assert "top input:" in result.output
    data = np.load(out)
    assert {"output", "target", "total", "stabilizer", "relevance/input", "bias/dense0", "bias/dense1"} <= set(data.files)
    total = data["relevance/input"].sum(axis=1) + data["bias/dense0"].sum(axis=1) + data["bias/dense1"].sum(axis=1)
    np.testing.assert_allclose(total + data["stabilizer"], data["total"], rtol=1e-5)
    np.testing.assert_array_equal(data["target"], [1, 1, 1])


def test_explain_per_sample_targets(files):
    result = _run("explain", files / "mlp.onnx", "-i", files / "x.npy", "-t", 0, "-t", 1, "-t", 3)
    assert result.exit_code == 0, result.output
    for t in (0, 1, 3):
        assert f"explained target {t}" in result.output


def test_wrong_input_shape(files):
    result = _run("explain", files / "mlp.onnx", "--input", files / "bad_shape.npy")
    _assert_one_line_error(result, "input 'input' has shape (3, 5), expected (N, 6) (axis 1 must be 6)")


def test_missing_model_file(files):
    result = _run("explain", files / "nothere.onnx", "--input", files / "x.npy")
    _assert_one_line_error(result, "model file not found")


def test_missing_input_file(files):
    result = _run("explain", files / "mlp.onnx", "--input", files / "nothere.npy")
    _assert_one_line_error(result, "input file not found")


def test_target_out_of_range(files):
    result = _run("explain", files / "mlp.onnx", "--input", files / "x.npy", "--target", 4)
    _assert_one_line_error(result, "target 4 is out of range: output 'logits' has 4 classes")


def test_wrong_number_of_targets(files):
    result = _run("explain", files / "mlp.onnx", "--input", files / "x.npy", "-t", 1, "-t", 2)
    _assert_one_line_error(result, "got 2 targets for a batch of 3")


def test_unknown_composite(files):
    result = _run("compile", files / "mlp.onnx", "-o", files / "o.onnx", "--composite", "epsilonplus")
    _assert_one_line_error(result, "unknown composite 'epsilonplus'")


def test_rules_lists_composites_and_rules():
    result = _run("rules")
    assert result.exit_code == 0
    for name in ("epsilon_gamma_box", "zbox", "alpha_beta", "wsquare", "gamma=0.25"):
        assert name in result.output


def test_inspect_shows_the_plan(files):
    result = _run("inspect", files / "mlp.onnx", "--composite", "epsilon_plus_flat")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert "flat" in rows["dense0"] and "epsilon" in rows["dense1"] and "pass" in rows["act0"]
    assert rows["dense1"].split()[2] == "yes"
