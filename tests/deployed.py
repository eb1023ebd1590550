"""Models as they are deployed, shipped inside pip packages (installed with --no-deps by `make test`, pinned):
rapidocr-onnxruntime 1.4.4's three PaddleOCR models (paddle2onnx exports, dynamic height and width) and nudenet
3.4.2's YOLOv8n detector (PyTorch 2.3 export, dynamic height and width), and the inputs a user would give them:
text rendered with Pillow, preprocessed as RapidOCR and NudeNet do.

Shared by tests/test_deployed_models.py and benchmarks/deployed_models.py.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

PACKAGES = {"cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            "det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
            "rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
            "yolo": ("nudenet", "320n.onnx")}
INSTALL = "pip install --no-deps rapidocr-onnxruntime==1.4.4 nudenet==3.4.2 (make test does)"
# the detector's class scores (N, 18, anchors), rows 4.. of its output (N, 22, anchors), as the Sigmoid writes them
YOLO_SCORES = "/model.22/Sigmoid_output_0"
# NudeNet 3.4's 18 classes, in the order of the detector's rows 4..21
YOLO_CLASSES = ("FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
                "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
                "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
                "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED")


def model_path(name: str) -> Path:
    """The ONNX file of a deployed model ('cls', 'det', 'rec', 'yolo') inside its installed package (found without
    importing the package, whose runtime dependencies are not installed)."""
    package, relative = PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {INSTALL}")
    return path


def _font(size: int):
    """Pillow's built-in scalable font at this size (Pillow >= 10.1), else its bitmap font."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def render_text(text: str, height: int = 48, size: int = 32, pad: int = 8) -> np.ndarray:
    """A text line, black on white, as an RGB uint8 image `height` high and as wide as the text."""
    from PIL import Image, ImageDraw
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 2 * pad, height), "white")
    ImageDraw.Draw(image).text((pad - left, (height - (bottom - top)) // 2 - top), text, fill="black", font=font)
    return np.asarray(image)


def render_page(lines: list, height: int, width: int, size: int = 28) -> tuple:
    """A white page with text lines, and each line's box (y0, y1, x0, x1)."""
    from PIL import Image, ImageDraw
    font = _font(size)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    boxes = []
    y = 24
    for text in lines:
        left, top, right, bottom = draw.textbbox((24, y), text, font=font)
        draw.text((24, y), text, fill="black", font=font)
        boxes.append((top, bottom, left, right))
        y = bottom + 2 * size // 3
    return np.asarray(image), boxes


def paddle_input(image: np.ndarray, height: int, width: int = 0) -> np.ndarray:
    """RapidOCR's preprocessing: resized to `height` keeping the aspect ratio (at most `width` wide, zero-padded
    to it when given; else the width rounded to a multiple of 32 for the detector), scaled to [-1, 1], (1, 3, H, W),
    channels in the image's order (the models read BGR; black and white text is the same either way)."""
    from PIL import Image
    h, w = image.shape[:2]
    if width:
        new_w = min(width, int(np.ceil(height * w / h)))
    else:
        new_w = max(32, int(round(w * height / h / 32)) * 32)
    resized = np.asarray(Image.fromarray(image).resize((new_w, height), Image.BILINEAR), dtype=np.float32)
    x = (resized / 255.0 - 0.5) / 0.5
    out = np.zeros((1, 3, height, width or new_w), dtype=np.float32)
    out[0, :, :, :new_w] = x.transpose(2, 0, 1)
    return out


def yolo_input(image: np.ndarray, size: int = 320) -> np.ndarray:
    """NudeNet's preprocessing: padded to a square, resized to size x size, RGB scaled to [0, 1], (1, 3, S, S)."""
    from PIL import Image
    h, w = image.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[:h, :w] = image
    resized = np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return np.ascontiguousarray(resized.transpose(2, 0, 1)[None])


def ctc_characters(model) -> list:
    """The recogniser's characters from the model's metadata ('character'), with CTC's blank first and a space
    last, as RapidOCR reads them."""
    text = next(p.value for p in model.metadata_props if p.key == "character")
    return ["blank"] + text.splitlines() + [" "]


def ctc_decode(probabilities: np.ndarray, characters: list) -> str:
    """Greedy CTC decoding of one sample's (T, classes) output: argmax per step, repeats merged, blanks dropped."""
    best = probabilities.argmax(axis=-1)
    keep = [i for t, i in enumerate(best) if i != 0 and (t == 0 or i != best[t - 1])]
    return "".join(characters[i] for i in keep)
