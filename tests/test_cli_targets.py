"""The CLI's mask targets (--region, --channel, --anchor, --mask) and --shape: the same numbers as the Python API,
and one clear error line for bad values."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import onnxlrp
from onnxlrp.cli import main
from ops_harness import make_model, rng, tensor

mk = helper.make_node


@pytest.fixture()
def files(tmp_path):
    """A per-pixel map model with dynamic height and width, a detection model, an input batch for each."""
    g = rng(31)
    inits = {"W": g.normal(size=(2, 3, 3, 3)).astype(np.float32), "B": g.normal(size=2).astype(np.float32)}
    conv = make_model([mk("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])],
                      [tensor("x", ["N", 3, "H", "W"])], [tensor("y", [None] * 4)], inits)
    onnx.save(conv, str(tmp_path / "map.onnx"))
    np.save(tmp_path / "x.npy", g.normal(size=(1, 3, 12, 16)).astype(np.float32))
    det = make_model([mk("Gemm", ["x", "W"], ["z"]), mk("Reshape", ["z", "shape"], ["y"])],
                     [tensor("x", ["N", 6])], [tensor("y", [None] * 3)],
                     {"W": g.normal(size=(6, 30)).astype(np.float32), "shape": np.array([0, 5, 6], np.int64)})
    onnx.save(det, str(tmp_path / "det.onnx"))
    np.save(tmp_path / "v.npy", g.normal(size=(2, 6)).astype(np.float32))
    return tmp_path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _saved(path):
    """The .npz that explain -o wrote."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_region_channel_and_mask_match_the_api(files):
    """--region/--channel and --mask FILE give the relevance explain(region=, channel=) / target_mask= gives."""
    x = np.load(files / "x.npy")
    explainer = onnxlrp.Explainer(str(files / "map.onnx"))
    want = explainer.explain(x, region=(1, 4, 2, 7), channel=1)
    result = _run("explain", files / "map.onnx", "-i", files / "x.npy", "--region", "1,4,2,7", "--channel", "1",
                  "-o", files / "r.npz")
    assert result.exit_code == 0, result.output
    assert "explained sum(mask * output) over 15 output entries" in result.output
    np.testing.assert_allclose(_saved(files / "r.npz")["relevance/x"], want.relevance["x"], rtol=1e-6)
    np.save(files / "m.npy", want.target_mask[0])
    result = _run("explain", files / "map.onnx", "-i", files / "x.npy", "--mask", files / "m.npy",
                  "-o", files / "m.npz")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(_saved(files / "m.npz")["relevance/x"], want.relevance["x"], rtol=1e-6)


def test_anchor_matches_the_api(files):
    """--anchor A,C on an (N, C, A) tensor: the relevance of entry C of anchor A for every sample."""
    v = np.load(files / "v.npy")
    want = onnxlrp.Explainer(str(files / "det.onnx")).explain(v, anchor=(4, 2))
    result = _run("explain", files / "det.onnx", "-i", files / "v.npy", "--anchor", "4,2", "-o", files / "a.npz")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(_saved(files / "a.npz")["relevance/x"], want.relevance["x"], rtol=1e-6)


def test_compile_shape_specialises(files):
    """compile --shape fixes the input's size in the compiled file."""
    result = _run("compile", files / "map.onnx", "-o", files / "c.onnx", "--shape", "1,3,12,16")
    assert result.exit_code == 0, result.output
    compiled = onnx.load(str(files / "c.onnx"))
    dims = [d.dim_value for d in compiled.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 12, 16]


@pytest.mark.parametrize("args,message", [
    (["--region", "1,4,2"], "--region expects 4 comma-separated integers"),
    (["--region", "1,40,2,7"], "does not lie in the 6x8 map"),
    (["--anchor", "a,b"], "--anchor expects comma-separated integers"),
    (["--mask", "missing.npy"], "cannot read the --mask file"),
    (["--shape", "x=1,3,12"], "the shape given for input 'x' has 3 dims, the input has rank 4"),
    (["--region", "0,2,0,2", "--target", "1"], "target= and a mask"),
])
def test_bad_mask_options_are_one_error_line(files, args, message):
    """Each bad option value: exit 2 and one line on stderr."""
    result = _run("explain", files / "map.onnx", "-i", files / "x.npy", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
