"""Heatmap PNGs: size and layout, red where relevance is positive, blue where negative; image inputs; --heatmap."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxlrp.cli import main
from onnxlrp.demo import shipped_model_dir
from onnxlrp.errors import InputError, OnnxLrpError
from onnxlrp.heatmap import DPI, image_layout, save_feature_bars, save_image_heatmaps
from onnxlrp.inputs import ImageOptions, load_image, load_inputs, options_for_shape

MODELS = shipped_model_dir()

# a crafted 6x8 map: rows 0-1 full strength (+ left, - right), rows 2-3 half strength, rows 4-5 zero
CRAFTED = np.zeros((6, 8))
CRAFTED[0:2, :4], CRAFTED[0:2, 4:] = 1.0, -1.0
CRAFTED[2:4, :4], CRAFTED[2:4, 4:] = 0.5, -0.5


def _pixel(png: np.ndarray, box, row: int, col: int, shape) -> np.ndarray:
    """RGB at the centre of map cell (row, col) inside a panel box (left, top, right, bottom) in pixels."""
    left, top, right, bottom = box
    x = left + (col + 0.5) * (right - left) / shape[1]
    y = top + (row + 0.5) * (bottom - top) / shape[0]
    return png[int(y), int(x), :3].astype(int)


def _read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _assert_colours(png, box, signed_map):
    """Red where positive, blue where negative, white where zero; half strength is lighter than full."""
    for row in range(signed_map.shape[0]):
        for col in range(signed_map.shape[1]):
            r, g, b = _pixel(png, box, row, col, signed_map.shape)
            value = signed_map[row, col]
            if value == 1.0:
                assert r > 230 and g < 30 and b < 30, (row, col, r, g, b)
            elif value == -1.0:
                assert b > 230 and r < 30 and g < 30, (row, col, r, g, b)
            elif value == 0.5:
                assert r > 230 and 100 < g < 160 and 100 < b < 160, (row, col, r, g, b)
            elif value == -0.5:
                assert b > 230 and 100 < r < 160 and 100 < g < 160, (row, col, r, g, b)
            else:
                assert min(r, g, b) > 245, (row, col, r, g, b)


def test_heatmap_png_size_and_colours(tmp_path):
    path = tmp_path / "map.png"
    layout = save_image_heatmaps(str(path), 3.0 * CRAFTED[None, None])  # absolute scale for a single sample
    png = _read(path)
    assert (png.shape[1], png.shape[0]) == layout.size
    assert len(layout.relevance_panels) == 1 and layout.image_panels == []
    left, top, right, bottom = layout.relevance_panels[0]
    assert (right - left) / (bottom - top) == pytest.approx(8 / 6, rel=1e-6)  # the map's aspect ratio
    assert right - left == pytest.approx(1.5 * DPI, rel=1e-6)  # 1.5 inch panels at the stated DPI
    _assert_colours(png, layout.relevance_panels[0], CRAFTED)


def test_heatmap_grid_channels_last_beside_images(tmp_path):
    rel = np.stack([CRAFTED, -CRAFTED, 0.01 * CRAFTED])[..., None].repeat(3, axis=3) / 3  # (3, 6, 8, 3): NHWC
    images = np.zeros((3, 6, 8, 3))
    images[:, 2, 5, :] = 1.0  # one bright pixel per image
    path = tmp_path / "grid.png"
    layout = save_image_heatmaps(str(path), rel, images, titles=["a", "b", "c"], columns=2)
    png = _read(path)
    assert (png.shape[1], png.shape[0]) == layout.size
    assert len(layout.relevance_panels) == 3 and len(layout.image_panels) == 3
    for i, sign in enumerate([1.0, -1.0, 1.0]):  # each panel is scaled to its own max |relevance|
        _assert_colours(png, layout.relevance_panels[i], sign * CRAFTED)
        assert _pixel(png, layout.image_panels[i], 2, 5, (6, 8)).min() > 240
        assert _pixel(png, layout.image_panels[i], 0, 0, (6, 8)).max() < 15
    second_row = layout.relevance_panels[2][1]
    assert second_row > layout.relevance_panels[0][3]  # two columns: the third sample starts a new row


def test_image_layout_detection():
    assert image_layout((2, 3, 32, 32)) == "NCHW"
    assert image_layout((2, 32, 32, 3)) == "NHWC"
    assert image_layout((2, 1, 8, 8)) == "NCHW"
    assert image_layout((2, 8, 8)) == "NHW"
    assert image_layout((2, 10)) is None
    with pytest.raises(OnnxLrpError, match="rank 5"):
        image_layout((1, 2, 3, 4, 5))


def test_feature_bars_red_and_blue_areas(tmp_path):
    rel = np.array([[3.0, -2.0, 0.5, -0.1, 1.0]])
    path = tmp_path / "bars.png"
    layout = save_feature_bars(str(path), rel, names=list("abcde"), top=3)
    png = _read(path).astype(int)
    assert (png.shape[1], png.shape[0]) == layout.size
    left, top, right, bottom = (int(v) for v in layout.relevance_panels[0])
    panel = png[top:bottom, left:right]
    red = np.sum((panel[..., 0] > 230) & (panel[..., 1] < 30) & (panel[..., 2] < 30))
    blue = np.sum((panel[..., 2] > 230) & (panel[..., 0] < 30) & (panel[..., 1] < 30))
    assert blue > 100
    assert red / blue == pytest.approx((3.0 + 1.0) / 2.0, rel=0.1)  # bar areas proportional to |relevance|
    with pytest.raises(OnnxLrpError, match="feature names"):
        save_feature_bars(str(path), rel, names=["a"])


def test_image_files_become_normalised_batches(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 51, 102
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    x = load_image(str(tmp_path / "rgb.png"), ImageOptions(mean=(0.5, 0.2, 0.4), std=(0.5, 0.1, 0.2)))
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [(1 - 0.5) / 0.5, (0.2 - 0.2) / 0.1, (0.4 - 0.4) / 0.2], atol=1e-6)
    resized = load_image(str(tmp_path / "rgb.png"), ImageOptions(size=(8, 10), channels_last=True))
    assert resized.shape == (1, 8, 10, 3)
    np.testing.assert_allclose(resized[0, 3, 4], [1.0, 0.2, 0.4], atol=1e-6)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=100)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    opts = options_for_shape(["batch", 1, 8, 8])
    assert opts == ImageOptions(size=(8, 8), channels=1)
    batch = load_inputs(str(tmp_path / "grey.png"), ["input"], image=opts)["input"]
    np.testing.assert_allclose(batch, grey[None, None] / 255.0, atol=1e-7)
    assert load_inputs(str(tmp_path / "grey.jpg"), ["input"], image=opts)["input"].shape == (1, 1, 8, 8)
    with pytest.raises(InputError, match="2 values"):
        load_image(str(tmp_path / "rgb.png"), ImageOptions(mean=(0.1, 0.2)))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        load_inputs(str(tmp_path / "broken.png"), ["input"])


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_explain_heatmap_for_images_and_flat_inputs(tmp_path):
    with np.load(MODELS / "digits_samples.npz") as archive:
        images, flat = archive["images"][:3], archive["flat"][:2]
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "flat.npy", flat)
    result = _run("explain", MODELS / "digits_cnn.onnx", "-i", tmp_path / "images.npy", "--heatmap", tmp_path / "h.png")
    assert result.exit_code == 0, result.output
    assert f"wrote heatmap {tmp_path / 'h.png'}" in result.stdout
    png = _read(tmp_path / "h.png")
    assert png.shape[1] > png.shape[0] > 200
    Image.fromarray((images[1, 0] * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    result = _run("explain", MODELS / "digits_cnn.onnx", "-i", tmp_path / "digit.png", "--heatmap",
                  tmp_path / "one.png", "--overlay")
    assert result.exit_code == 0, result.output
    assert "predicted 1" in result.stdout and (tmp_path / "one.png").is_file()
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"pixel {r},{c}" for r in range(8) for c in range(8)) + "\n")
    result = _run("explain", MODELS / "digits_mlp.onnx", "-i", tmp_path / "flat.npy", "--heatmap",
                  tmp_path / "bars.png", "--feature-names", names)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bars.png").is_file()
    names.write_text("a\nb\n")
    result = _run("explain", MODELS / "digits_mlp.onnx", "-i", tmp_path / "flat.npy", "--heatmap",
                  tmp_path / "bars.png", "--feature-names", names)
    assert result.exit_code == 2 and result.stderr.strip() == "error: got 2 feature names for 64 features"


def test_grey_digits_ink_on_paper_and_overlay_on_grey(tmp_path):
    """Digits (a grey picture with a dark border) are drawn black on white as the demo draws them, a grey photo
    with a light border as it is; the overlay blends full red / blue, opacity |relevance| / max, over the picture
    in grey (paper white, ink mid grey)."""
    digit = np.zeros((1, 1, 8, 8))
    digit[0, 0, 1:7, 3] = 1.0                      # a stroke of ink on black
    relevance = np.zeros((1, 1, 8, 8))
    relevance[0, 0, 2, 3], relevance[0, 0, 5, 6] = 2.0, -2.0
    layout = save_image_heatmaps(str(tmp_path / "beside.png"), relevance, digit, title="digit, beside")
    png = _read(tmp_path / "beside.png")
    assert layout.title == "digit, beside"
    assert _pixel(png, layout.image_panels[0], 3, 3, (8, 8)).max() < 40        # ink: black
    assert _pixel(png, layout.image_panels[0], 3, 0, (8, 8)).min() > 245       # background: white
    assert png[:int(layout.image_panels[0][1]) - 40].min() < 100   # the title band holds dark text
    photo = 1.0 - digit                             # dark stroke on a light border: left as it is
    layout = save_image_heatmaps(str(tmp_path / "photo.png"), relevance, photo)
    png = _read(tmp_path / "photo.png")
    assert _pixel(png, layout.image_panels[0], 3, 3, (8, 8)).max() < 40
    assert _pixel(png, layout.image_panels[0], 3, 0, (8, 8)).min() > 245
    layout = save_image_heatmaps(str(tmp_path / "overlay.png"), relevance, digit, overlay=True)
    png = _read(tmp_path / "overlay.png")
    box = layout.relevance_panels[0]
    r, g, b = _pixel(png, box, 2, 3, (8, 8))        # full positive relevance over ink: red, 85 % opaque
    assert r > 230 and abs(g - 0.15 * 127) < 12 and abs(b - 0.15 * 127) < 12, (r, g, b)
    r, g, b = _pixel(png, box, 5, 6, (8, 8))        # full negative over paper: blue
    assert b > 230 and abs(r - 0.15 * 255) < 12 and abs(g - 0.15 * 255) < 12, (r, g, b)
    assert np.all(np.abs(_pixel(png, box, 4, 3, (8, 8)) - 127) < 12)   # ink, no relevance: mid grey
    assert _pixel(png, box, 4, 0, (8, 8)).min() > 245                   # paper, no relevance: white
