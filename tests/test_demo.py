"""`onnxlrp demo`: runs from any folder, prints every digit's prediction and conservation, writes the heatmap grid."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner
from PIL import Image

from onnxlrp.cli import main
from onnxlrp.demo import shipped_model_dir

LINE = re.compile(r"^digit +(\d+): label (\d), predicted (\d)")
CONSERVATION = re.compile(r"total (\S+) = inputs (\S+) \+ biases (\S+) \+ stabilizer (\S+) +\(relative error (\S+)\)")


def _reference_logits() -> tuple:
    folder = shipped_model_dir()
    with np.load(folder / "digits_samples.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    session = ort.InferenceSession(str(folder / "digits_cnn.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images})[0], labels


def test_demo_in_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    logits, labels = _reference_logits()
    lines = result.stdout.splitlines()
    digits = [(i, m) for i, line in enumerate(lines) if (m := LINE.match(line))]
    assert [int(m.group(2)) for _, m in digits] == labels.tolist()
    assert [int(m.group(3)) for _, m in digits] == logits.argmax(axis=1).tolist()
    for k, (i, _) in enumerate(digits):
        total, inputs, biases, stab, error = (float(v) for v in CONSERVATION.search(lines[i + 1]).groups())
        assert abs(total - logits[k].max()) <= 1e-5 * abs(logits[k].max())  # printed with 6 digits
        assert abs(inputs + biases + stab - total) < 2e-5 * abs(total) and error < 1e-5
    assert any(line.lstrip().startswith("total") and "100.0 %" in line for line in lines)  # the bias table
    assert any(line.lstrip().startswith("fc/Gemm ") for line in lines)  # short node names
    png = tmp_path / "onnxlrp-demo" / "digits_cnn_epsilon_plus.png"
    assert lines[-1] == f"wrote the heatmap grid to {png.resolve()}"
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape[1] > pixels.shape[0] > 600
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 16 * 200  # every digit has strongly relevant (red) pixels


def test_demo_out_dir_and_composite_from_another_folder_into_head(tmp_path):
    """From another folder, the output piped into `head -2`: the picture is written before the first line (it was
    not written at all, with exit 0), the broken pipe ends the demo quietly."""
    out = tmp_path / "figures"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    command = (f"set -o pipefail; '{sys.executable}' -m onnxlrp.cli demo --out-dir '{out}' --composite "
               f"epsilon_alpha2_beta1 | head -2")
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("onnxlrp demo: digits CNN") and "composite epsilon_alpha2_beta1" \
        in lines[0]
    with Image.open(out / "digits_cnn_epsilon_alpha2_beta1.png") as image:
        assert image.size[0] > image.size[1] > 600
    assert list(cwd.iterdir()) == []


def test_data_folders_resolve_in_namespace_packages(tmp_path, monkeypatch):
    """Installed wheels ship rules/ and models/ as packages without __init__.py; their folders must still resolve."""
    from onnxlrp.data import data_folder
    data = tmp_path / "fakepkg" / "_data"
    data.mkdir(parents=True)
    (tmp_path / "fakepkg" / "__init__.py").write_text("")
    (data / "model.onnx").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert data_folder("fakepkg._data", "model.onnx") == data
    assert data_folder("fakepkg._data", "missing.onnx") is None
    assert data_folder("no_such_package_here._data", "model.onnx") is None
    assert (shipped_model_dir() / "digits_samples.npz").is_file()
