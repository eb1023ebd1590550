"""The command line as a newcomer meets it (issue 14): each defect of the first hour, through click's runner or a
subprocess, with the exact message and exit code."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

import onnxlrp
from onnxlrp.cli import main
from onnxlrp.demo import shipped_model_dir
from onnxlrp.runtime import cuda_available

MODELS = shipped_model_dir()
CNN, MLP, SAMPLES = MODELS / "digits_cnn.onnx", MODELS / "digits_mlp.onnx", MODELS / "digits_samples.npz"


def _run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="onnxlrp", **kwargs)


def _error(result, code: int = 2) -> str:
    """The one stderr line of a failed command (and nothing on stdout)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


@pytest.fixture(scope="module")
def digits():
    with np.load(SAMPLES) as archive:
        return {k: archive[k] for k in archive.files}


@pytest.fixture(scope="module")
def logits(digits):
    """The original models' logits from onnxruntime directly (the reference for predictions and totals)."""
    def run(path, x):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return {"cnn": run(CNN, digits["images"]), "mlp": run(MLP, digits["flat"])}


@pytest.fixture(scope="module")
def compiled_cnn(tmp_path_factory):
    """The digits CNN compiled once (epsilon_plus, with the per-tensor sums the reports use)."""
    path = tmp_path_factory.mktemp("compiled") / "cnn.onnx"
    onnx.save(onnxlrp.compile(str(CNN), node_relevance="sums"), str(path))
    return path


@pytest.fixture(scope="module")
def compiled_mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("compiled") / "mlp_eps.onnx"
    onnx.save(onnxlrp.compile(str(MLP), "epsilon", params={"epsilon": 0.01}), str(path))
    return path


def _printed_targets(output: str) -> list:
    return [int(t) for t in re.findall(r"explained target (\d+)", output)]


# ---- 1. output paths are checked before the work ----------------------------------------------------------------

def test_unwritable_outputs_fail_before_the_work(tmp_path, digits):
    """-o into a missing folder used to run the whole explanation, then exit 3 with a FileNotFoundError."""
    np.save(tmp_path / "x.npy", digits["images"][:2])
    missing = tmp_path / "nowhere"
    for option, command in (("-o", "explain"), ("--heatmap", "explain")):
        target = missing / ("r.npz" if option == "-o" else "h.png")
        result = _run(command, CNN, "-i", tmp_path / "x.npy", option, target)
        assert _error(result) == f"error: cannot write {option} {target}: folder {missing} does not exist"
    result = _run("profile", CNN, "-i", tmp_path / "x.npy", "--png", missing / "p.png")
    assert _error(result) == f"error: cannot write --png {missing / 'p.png'}: folder {missing} does not exist"
    result = _run("compile", CNN, "-o", missing / "c.onnx")
    assert _error(result) == f"error: cannot write -o {missing / 'c.onnx'}: folder {missing} does not exist"
    (tmp_path / "afile").write_text("x")
    result = _run("demo", "--out-dir", tmp_path / "afile" / "sub")
    assert _error(result) == f"error: cannot create --out-dir {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} " \
                             f"is a file, not a folder"
    result = _run("explain", CNN, "-i", tmp_path / "x.npy", "-o", tmp_path / "results")  # no .npz suffix
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == f"wrote {tmp_path / 'results'}"
    with np.load(tmp_path / "results") as data:  # written at exactly that path (np.savez would add '.npz')
        np.testing.assert_allclose(data["output"], ort.InferenceSession(str(CNN)).run(
            None, {"input": digits["images"][:2]})[0], rtol=1e-5, atol=1e-5)


# ---- 2. bench starts its process so that the current folder cannot shadow the package ----------------------------

def test_bench_from_a_folder_holding_an_onnxlrp_clone(tmp_path, monkeypatch):
    (tmp_path / "onnxlrp").mkdir()
    (tmp_path / "onnxlrp" / "__init__.py").write_text("raise ImportError('the clone, not the installed package')\n")
    monkeypatch.chdir(tmp_path)
    result = _run("bench", MLP, "-r", 1, "--warmup", 0, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert re.search(r"^explanation: .* = [\d.]+x the forward pass$", result.stdout, re.M), result.stdout


# ---- 3. --key chooses arrays of an .npz file ---------------------------------------------------------------------

def test_shipped_samples_with_key(digits, logits, compiled_cnn):
    result = _run("explain", compiled_cnn, "-i", SAMPLES)
    assert _error(result) == (f"error: input file {SAMPLES} holds 'images', 'flat', 'labels'; the model needs 'input' "
                              f"(choose with --key NAME, or save the arrays by input name)")
    for key in ("images", "input=images"):
        result = _run("explain", compiled_cnn, "-i", SAMPLES, "--key", key)
        assert result.exit_code == 0, result.output
        assert _printed_targets(result.stdout) == logits["cnn"].argmax(axis=1)[:8].tolist()
    result = _run("explain", MLP, "-i", SAMPLES, "--key", "flat", "--target", 3)
    assert result.exit_code == 0, result.output
    totals = [float(v) for v in re.findall(r"total (\S+) =", result.stdout)]
    np.testing.assert_allclose(totals, logits["mlp"][:8, 3], rtol=1e-5)
    assert _error(_run("explain", compiled_cnn, "-i", SAMPLES, "--key", "pixels")) == \
        f"error: input file {SAMPLES} has no array 'pixels' (it holds 'images', 'flat', 'labels')"
    assert _error(_run("explain", compiled_cnn, "-i", SAMPLES, "--key", "x=images")) == \
        "error: --key x=images: the model has no input 'x' (inputs: input)"
    assert _error(_run("explain", compiled_cnn, "-i", CNN, "--key", "images")) == \
        f"error: --key chooses arrays in an .npz file; {CNN} is not one"


# ---- 4. options that a compiled model cannot apply are refused; providers are named or refused -----------------

def test_options_on_a_compiled_model_are_refused(compiled_mlp, digits):
    np_file = compiled_mlp.parent / "flat.npy"
    np.save(np_file, digits["flat"][:3])
    result = _run("explain", compiled_mlp, "-i", np_file, "-c", "epsilon_plus")
    assert _error(result) == ("error: this model is already compiled with composite 'epsilon': composite "
                              "'epsilon_plus' needs a new compilation (explain the original model instead, or leave "
                              "the option out)")
    result = _run("bias-table", compiled_mlp, "-i", np_file, "--set", "epsilon=0.5")
    assert _error(result) == ("error: this model is already compiled with epsilon=0.01: epsilon=0.5 needs a new "
                              "compilation (explain the original model instead, or leave the option out)")
    for same in ([], ["-c", "epsilon"], ["--set", "epsilon=0.01"]):
        result = _run("explain", compiled_mlp, "-i", np_file, *same)
        assert result.exit_code == 0 and "composite epsilon |" in result.stdout, result.output
    with pytest.raises(onnxlrp.OnnxLrpError, match="already compiled with composite 'epsilon': composite 'zero'"):
        onnxlrp.Explainer(str(compiled_mlp), composite="zero")
    with pytest.raises(onnxlrp.OnnxLrpError, match="already compiled with init='logit': init='one'"):
        onnxlrp.Explainer(str(compiled_mlp), init="one")


def test_bench_names_or_refuses_the_provider():
    result = _run("bench", MLP, "--provider", "CPU")
    available = ", ".join(ort.get_available_providers())
    assert _error(result) == (f"error: unknown execution provider 'CPU' (onnxruntime here has: {available}); did you "
                              f"mean CPUExecutionProvider?")
    result = _run("bench", MLP, "--provider", "CUDAExecutionProvider", "-r", 1, "--warmup", 0)
    if cuda_available():  # a machine with a GPU runs it and says so
        assert result.exit_code == 0 and "provider CUDAExecutionProvider" in result.stdout, result.output
    else:
        assert _error(result) == ("error: execution provider CUDAExecutionProvider does not initialise on this "
                                  "machine (no usable CUDA device or driver): leave the provider out to run on the CPU")


# ---- 6. tables and `rules` fit the terminal, wrapped on word boundaries -----------------------------------------

def test_tables_fit_80_columns_without_broken_words(tmp_path, digits, compiled_cnn):
    np.save(tmp_path / "x.npy", digits["images"][:4])
    result = _run("bias-table", compiled_cnn, "-i", tmp_path / "x.npy", "--format", "table", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line.split()[0]: line.split() for line in lines if line.strip() and line.split()[0] in
            ("stem.0/Conv", "\u2026conv1/Conv", "\u2026conv2/Conv", "conv3.0/Conv", "fc/Gemm")}
    assert len(rows) == 5, result.stdout  # every node name whole (shortened from the left), one line each
    assert rows["stem.0/Conv"][1:3] == ["Conv", "zplus"] and rows["fc/Gemm"][1:3] == ["Gemm", "epsilon"]
    result = _run("profile", compiled_cnn, "-i", tmp_path / "x.npy", "--format", "table", env={"COLUMNS": "80"})
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and max(len(line) for line in lines) <= 80
    labels = [line.split()[0] for line in lines if re.match(r"^ \S+ +[-\d.e+]+ ", line)]
    assert labels == ["input", "stem.0/Conv", "stem.2/Relu", "block/conv1/Conv", "block/relu1/Relu",
                      "block/conv2/Conv", "block/Add", "block/relu2/Relu", "pool1/MaxPool", "conv3.0/Conv",
                      "conv3.2/Relu", "pool2/AveragePool", "flatten/Flatten", "fc/Gemm"]


def test_rules_wraps_to_the_terminal():
    result = _run("rules", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    text = " ".join(result.stdout.split())
    from onnxlrp.rules import Gamma
    assert " ".join(Gamma.__doc__.split()) in text  # the whole docstring, not cut at ';'
    names = [line.split()[0] for line in lines if re.match(r"^  \S", line)]
    assert "base" not in names and "(base)" in names and "epsilon_plus" in names


# ---- 7. several targets: --target 3 5, --target 3,5, -t 3 -t 5 ----------------------------------------------------

def test_target_forms(tmp_path, digits, logits, compiled_cnn):
    np.save(tmp_path / "x.npy", digits["images"][:2])
    for form in (["--target", "3", "5"], ["--target", "3,5"], ["-t", "3", "-t", "5"], ["-t", "3", "5", "--top", "2"]):
        result = _run("explain", compiled_cnn, "-i", tmp_path / "x.npy", *form)
        assert result.exit_code == 0, (form, result.output)
        assert _printed_targets(result.stdout) == [3, 5]
        totals = [float(v) for v in re.findall(r"total (\S+) =", result.stdout)]
        np.testing.assert_allclose(totals, [logits["cnn"][0, 3], logits["cnn"][1, 5]], rtol=1e-5)
    result = _run("bias-table", compiled_cnn, "-i", tmp_path / "x.npy", "-t", "3", "5", "--format", "json")
    assert result.exit_code == 0 and '"target": [\n    3,\n    5\n  ]' in result.stdout
    assert _error(_run("explain", compiled_cnn, "-i", tmp_path / "x.npy", "--target", "three")) == \
        "error: --target expects class numbers (--target 3, --target 3 5 or --target 3,5), got 'three'"
    assert _error(_run("explain", CNN, "-i", tmp_path / "x.npy", "--target", "3", "extra.onnx")) == \
        "error: Got unexpected extra argument (extra.onnx) (see 'onnxlrp explain --help')"


# ---- 8. error messages say what and where ------------------------------------------------------------------------

def test_error_messages_name_the_culprit(tmp_path):
    assert _error(_run("explain", CNN, "-i", MODELS)) == f"error: input path is a folder, not a file: {MODELS}"
    out = tmp_path / "c.onnx"
    assert _error(_run("compile", MLP, "-o", out, "--set", "epsilon=abc")) == \
        "error: parameter epsilon=abc: not a number or a list of numbers"
    assert _error(_run("compile", MLP, "-o", out, "--set", "epsilon=-1")) == \
        "error: parameter epsilon=-1 of composite 'epsilon_plus': epsilon must be a finite number >= 0, got -1.0"
    assert _error(_run("compile", MLP, "-o", out, "-c", "epsilon_gamma_box", "--set", "gamma=-0.5")) == \
        "error: parameter gamma=-0.5 of composite 'epsilon_gamma_box': gamma must be a finite number >= 0, got -0.5"
    assert _error(_run("compile", MLP, "-o", out, "-c", "epsilonplus")) == \
        ("error: unknown composite 'epsilonplus' (did you mean epsilon_plus? built-in: attnlrp, cp_lrp, epsilon, "
         "epsilon_alpha2_beta1, epsilon_alpha2_beta1_flat, epsilon_gamma_box, epsilon_plus, epsilon_plus_flat, zero; "
         "or a path to a .toml)")
    assert not out.exists()


# ---- 9. images: every change is noted; flat models take images; the heatmap format follows the suffix ------------

def test_image_changes_are_noted(tmp_path, digits, compiled_cnn):
    digit = (digits["images"][1, 0] * 255).astype(np.uint8)
    big = Image.fromarray(digit).resize((28, 28), Image.Resampling.NEAREST)
    big.convert("RGB").save(tmp_path / "rgb28.png")
    Image.fromarray(digit).save(tmp_path / "grey8.png")
    result = _run("explain", compiled_cnn, "-i", tmp_path / "rgb28.png")
    assert result.exit_code == 0 and "predicted 1" in result.stdout
    assert result.stderr == "note: image rgb28.png resized from 28x28 to 8x8, converted from RGB to grey\n"
    result = _run("explain", compiled_cnn, "-i", tmp_path / "grey8.png")
    assert result.exit_code == 0 and result.stderr == ""  # nothing changed, nothing to say
    result = _run("explain", MLP, "-i", tmp_path / "grey8.png", "-o", tmp_path / "img.npz")
    assert result.exit_code == 0, result.output
    assert result.stderr == "note: image grey8.png flattened to 64 values\n"
    np.save(tmp_path / "flat.npy", digit.reshape(1, 64).astype(np.float32) / 255)
    assert _run("explain", MLP, "-i", tmp_path / "flat.npy", "-o", tmp_path / "arr.npz").exit_code == 0
    with np.load(tmp_path / "img.npz") as a, np.load(tmp_path / "arr.npz") as b:  # the image is those 64 pixels
        np.testing.assert_allclose(a["relevance/input"], b["relevance/input"], rtol=1e-6, atol=1e-7)


def test_heatmap_format_follows_the_suffix(tmp_path, digits, compiled_cnn):
    """--heatmap x.jpg wrote PNG bytes into the .jpg."""
    np.save(tmp_path / "x.npy", digits["images"][:1])
    result = _run("explain", compiled_cnn, "-i", tmp_path / "x.npy", "--heatmap", tmp_path / "h.jpg")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h.jpg").read_bytes().startswith(b"\xff\xd8\xff")  # JPEG
    result = _run("explain", compiled_cnn, "-i", tmp_path / "x.npy", "--heatmap", tmp_path / "h.gif")
    assert _error(result) == (f"error: cannot write --heatmap {tmp_path / 'h.gif'}: onnxlrp writes .png, .jpg, .jpeg, "
                              f".pdf, .svg, .tif, .tiff, .webp pictures (the suffix sets the format), not '.gif'")
    from onnxlrp.heatmap import save_heatmap
    for suffix, magic in ((".pdf", b"%PDF"), (".svg", b"<?xml"), (".png", b"\x89PNG"), (".webp", b"RIFF")):
        save_heatmap(str(tmp_path / f"m{suffix}"), np.ones((1, 1, 2, 2)))
        assert (tmp_path / f"m{suffix}").read_bytes().startswith(magic), suffix


def test_feature_names_name_the_top_positions(tmp_path, digits, compiled_cnn):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"pixel {r},{c}\n" for r in range(8) for c in range(8)))
    np.save(tmp_path / "x.npy", digits["images"][:1])
    result = _run("explain", compiled_cnn, "-i", tmp_path / "x.npy", "--feature-names", names, "--top", 3)
    assert result.exit_code == 0, result.output
    top = re.findall(r"pixel (\d),(\d) \(0, (\d), (\d)\): ([-+][\d.e+-]+)", result.stdout)
    assert len(top) == 3 and all(r == r2 and c == c2 for r, c, r2, c2, _ in top)  # the name of that position
    np.save(tmp_path / "f.npy", digits["flat"][:1])
    result = _run("explain", MLP, "-i", tmp_path / "f.npy", "--feature-names", names, "--top", 2)
    assert result.exit_code == 0 and re.search(r"top input: pixel (\d),(\d) \((\d+),\)", result.stdout)
    r, c, j = (int(v) for v in re.search(r"top input: pixel (\d),(\d) \((\d+),\)", result.stdout).groups())
    assert j == 8 * r + c
    names.write_text("a\nb\n")
    assert _error(_run("explain", compiled_cnn, "-i", tmp_path / "x.npy", "--feature-names", names)) == \
        "error: got 2 feature names for 64 features"


# ---- 10. pictures: titled, capped, announced ------------------------------------------------------------------

def test_large_batches_draw_the_first_samples_and_say_so(tmp_path, digits, monkeypatch):
    """The MLP's bar chart was 4,629 px tall for 16 samples: now at most MAX_SAMPLES charts, and as many rows as
    fit in MAX_HEIGHT, with a note on stderr."""
    from onnxlrp import heatmap
    layout = heatmap.save_feature_bars(str(tmp_path / "tall.png"), digits["flat"], top=40)
    with Image.open(tmp_path / "tall.png") as image:
        assert image.size == layout.size and image.size[1] <= heatmap.MAX_HEIGHT * heatmap.DPI
    assert (layout.samples, layout.total) == (4, 16) and "the first 4 of 16 samples" in layout.title
    monkeypatch.setattr(heatmap, "MAX_SAMPLES", 2)
    drawn = []
    original = heatmap.save_heatmap
    monkeypatch.setattr(heatmap, "save_heatmap", lambda *a, **k: drawn.append(original(*a, **k)) or drawn[-1])
    np.save(tmp_path / "f.npy", digits["flat"][:5])
    result = _run("explain", MLP, "-i", tmp_path / "f.npy", "--heatmap", tmp_path / "bars.png", "-t", 3)
    assert result.exit_code == 0, result.output
    assert result.stderr == "note: the heatmap shows the first 2 of the 5 samples\n"
    assert [d.title for d in drawn] == ["digits_mlp.onnx: LRP (epsilon_plus) of the class 3 (red: for it, blue: "
                                        "against) (the first 2 of 5 samples)"]


# ---- 11. --help, help texts, the license (demo | head: test_demo.py) ------------------------------------------

def test_help_is_complete_and_not_cut():
    result = _run("--help", terminal_width=80)
    commands = result.stdout.split("Commands:")[1]
    listed = {line.split()[0]: line for line in commands.splitlines() if line.strip()}
    assert set(listed) == set(main.commands)
    assert "..." not in commands and max(len(line) for line in result.stdout.splitlines()) <= 80
    for name, cmd in main.commands.items():
        for param in cmd.params:
            if param.param_type_name == "option":
                assert param.help, f"onnxlrp {name} {param.opts[0]} has no help text"


def test_license_is_an_spdx_expression():
    from importlib.metadata import metadata
    assert metadata("onnxlrp")["License-Expression"] == "MIT"


# ---- 12. the package and the README -----------------------------------------------------------------------------

def test_submodules_right_after_import():
    code = "import onnxlrp; print(onnxlrp.tables.bias_table.__name__, onnxlrp.heatmap.save_heatmap.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["bias_table", "save_heatmap"], done.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        onnxlrp.nothing_here  # noqa: B018
