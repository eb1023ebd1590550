"""The data-set commands through click's CliRunner: explain-dataset, dataset-report, explain --batch-size,
compile of many models into a folder."""
from __future__ import annotations

import csv
import io

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from dataset_helpers import CNN, ROOT, digits, read_rows
from onnxlrp import Explainer, compiled_metadata
from onnxlrp.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0], result.stderr


@pytest.fixture(scope="module")
def data():
    return digits(40)


def test_explain_dataset_then_dataset_report(tmp_path, data):
    x, y = data
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    out = tmp_path / "out"
    result = _run("explain-dataset", CNN, tmp_path / "d.npz", "-o", out, "--key", "images", "--label-column",
                  "labels", "--target", "label", "-b", "16")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("explained 40 sample(s) of 40 in ") and f"local engine) -> {out}" in result.output
    rows = read_rows(out).to_pydict()
    assert rows["target"] == y.tolist()
    report = _run("dataset-report", out, "--format", "csv", "--png", tmp_path / "report.png")
    assert report.exit_code == 0, report.output
    records = list(csv.DictReader(io.StringIO(report.stdout)))
    inputs = {r["group"]: r for r in records if r["term"] == "inputs"}
    share = np.asarray(rows["inputs"]) / np.asarray(rows["total"])
    assert float(inputs["all"]["mean_share"]) == pytest.approx(share.mean(), rel=1e-12)
    three = np.asarray(rows["label"]) == 3
    assert int(inputs["3"]["samples"]) == three.sum()
    assert float(inputs["3"]["mean_share"]) == pytest.approx(share[three].mean(), rel=1e-12)
    assert (tmp_path / "report.png").stat().st_size > 0 and f"wrote {tmp_path / 'report.png'}" in report.stderr
    again = _run("explain-dataset", CNN, tmp_path / "d.npz", "-o", out, "--key", "images", "-b", "16")
    _one_line_error(again, "holds a run already (1 of 1 shards done): pass --resume to continue it")


def test_explain_dataset_errors_are_one_line(tmp_path, data):
    x, _ = data
    np.save(tmp_path / "x.npy", x)
    _one_line_error(_run("explain-dataset", CNN, tmp_path / "x.npy", "-o", tmp_path / "a", "--target", "label"),
                    "error: --target label needs labels")
    _one_line_error(_run("explain-dataset", CNN, tmp_path / "x.npy", "-o", tmp_path / "b", "--key", "images"),
                    "error: --key and --label-column name arrays of an .npz")
    _one_line_error(_run("dataset-report", tmp_path), "holds no onnxlrp data-set run")


def test_explain_in_batches_equals_the_explainer_on_the_same_chunks(tmp_path, data, monkeypatch):
    from onnxlrp import heatmap
    x, _ = data
    np.save(tmp_path / "x.npy", x)
    drawn = []
    original = heatmap.save_heatmap
    monkeypatch.setattr(heatmap, "save_heatmap", lambda *a, **k: drawn.append((a, original(*a, **k))) or drawn[-1][1])
    result = _run("explain", CNN, "-i", tmp_path / "x.npy", "-b", "16", "-o", tmp_path / "r.npz",
                  "--heatmap", tmp_path / "h.png", "--max-heatmaps", "4")
    assert result.exit_code == 0, result.output
    assert "batch 40 in 3 runs of 16" in result.output
    assert result.stderr == "note: the heatmap shows the first 4 of the 40 samples\n"
    saved = np.load(tmp_path / "r.npz")
    explainer = Explainer(str(CNN))
    parts = [explainer.explain(x[i:i + 16]) for i in range(0, 40, 16)]
    assert np.array_equal(saved["relevance/input"], np.concatenate([p.relevance["input"] for p in parts]))
    assert np.array_equal(saved["total"], np.concatenate([p.total for p in parts]))
    assert np.array_equal(saved["bias//fc/Gemm"], np.concatenate([p.bias["/fc/Gemm"] for p in parts]))
    (args, layout), = drawn
    assert layout.samples == 4 and np.array_equal(args[1][:4], parts[0].relevance["input"][:4])


def test_compile_many_models_into_a_folder(tmp_path, data):
    x, _ = data
    models = tmp_path / "models"
    (models / "nested").mkdir(parents=True)
    (models / "mlp.onnx").write_bytes((ROOT / "models" / "digits_mlp.onnx").read_bytes())
    (models / "nested" / "cnn.onnx").write_bytes(CNN.read_bytes())
    (models / "broken.onnx").write_bytes(b"not a model")
    out = tmp_path / "compiled"
    result = _run("compile", models, CNN, "-o", out, "-c", "epsilon")
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"refused  {models / 'broken.onnx'}: ") and "is not a readable ONNX model" in lines[0]
    assert lines[1].startswith(f"compiled {models / 'mlp.onnx'} -> {out / 'mlp.onnx'} (")
    assert lines[2].startswith(f"compiled {models / 'nested' / 'cnn.onnx'} -> {out / 'nested' / 'cnn.onnx'} (")
    assert lines[3].startswith(f"compiled {CNN} -> {out / 'digits_cnn.onnx'} (")
    assert lines[4] == "3 compiled, 1 refused"
    assert compiled_metadata(onnx.load(str(out / "mlp.onnx")))["composite"] == "epsilon"
    direct = Explainer(str(CNN), "epsilon").explain(x[:5])
    assert np.array_equal(Explainer(str(out / "nested" / "cnn.onnx")).explain(x[:5]).relevance["input"],
                          direct.relevance["input"])
    clean = _run("compile", models / "nested", "-o", tmp_path / "only")
    assert clean.exit_code == 0 and clean.output.splitlines()[-1] == "1 compiled, 0 refused"
