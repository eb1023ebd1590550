"""Models as deployed, end to end as a user runs them (tests/deployed.py): the models that rapidocr-onnxruntime 1.4.4
ships (paddle2onnx exports with dynamic height and width, hard-swish as x * Clip(x + 3, 0, 6) / 6, HardSigmoid SE
gates), compiled as they are, on text rendered with Pillow, and nudenet 3.4.2's YOLOv8n (PyTorch 2.3 export, SiLU
gates, anchor offsets computed from shapes) on a face drawn with Pillow. For each: the explained output is the model's own
(checked against onnxruntime on the original file), the identity total = inputs + biases + stabilizer holds to
float32 precision, and the relevance lies where the explained text is."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnxlrp
from deployed import YOLO_CLASSES, YOLO_SCORES, model_path, paddle_input, render_page, render_text, yolo_input

IDENTITY = 1e-5


def _session(name: str) -> ort.InferenceSession:
    """onnxruntime on the original model file."""
    return ort.InferenceSession(str(model_path(name)), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def classifier():
    """The text-direction classifier, compiled once."""
    return onnxlrp.Explainer(str(model_path("cls")), "epsilon_plus")


@pytest.fixture(scope="module")
def detector():
    """The text detector, compiled once (one file for every page size)."""
    return onnxlrp.Explainer(str(model_path("det")), "epsilon_plus")


def test_direction_classifier_on_a_rendered_line(classifier):
    """An upright line is class 0 and the same line turned by 180 degrees class 1, as the original model says; the
    explained logits are the ones its Softmax reads; the identity holds; the relevance lies on the ink."""
    line = render_text("Relevance 2024 deployed")
    batch = np.concatenate([paddle_input(line, 48, 192), paddle_input(line[::-1, ::-1].copy(), 48, 192)])
    probabilities = _session("cls").run(None, {"x": batch})[0]
    exp = classifier.explain(batch)
    np.testing.assert_array_equal(exp.target, [0, 1])
    assert probabilities[0, 0] > 0.9 and probabilities[1, 1] > 0.9
    logits = exp.output.astype(np.float64)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), probabilities, atol=1e-5)
    np.testing.assert_allclose(exp.total, logits[[0, 1], [0, 1]], rtol=1e-6)
    assert np.all(exp.conservation()["relative_error"] < IDENTITY)
    heat = np.abs(exp.relevance["x"]).sum(axis=1)
    ink = (batch < 0).any(axis=1)  # dark pixels (the text), padding excluded
    assert heat[ink].mean() > 3 * heat[~ink & (batch > 0.9).all(axis=1)].mean()


def test_detector_region_of_the_probability_map(detector):
    """A page with two lines at 160x320: the detected pixels of the first line (probability > 0.3 within its box)
    are explained; the explained map is the logit of the original model's probability map; the identity holds;
    the first line's rows hold more relevance than the second's. A rectangle (region=) explains too."""
    page, boxes = render_page(["Layer-wise relevance", "for every pixel 42"], 160, 320)
    x = paddle_input(page, 160)
    probability = _session("det").run(None, {"x": x})[0]
    (y0, y1, x0, x1), (v0, v1, _, _) = boxes
    mask = np.zeros_like(probability)
    mask[:, :, y0:y1, x0:x1] = probability[:, :, y0:y1, x0:x1] > 0.3
    exp = detector.explain(x, target_mask=mask)
    np.testing.assert_allclose(1 / (1 + np.exp(-exp.output.astype(np.float64))), probability, atol=1e-4)
    np.testing.assert_allclose(exp.total, (mask * exp.output.astype(np.float64)).sum(), rtol=1e-5)
    assert exp.total[0] > 0 and np.all(exp.conservation()["relative_error"] < IDENTITY)
    heat = np.abs(exp.relevance["x"][0]).sum(axis=0)
    assert heat[y0:y1].sum() > 5 * heat[v0:v1].sum()
    box = detector.explain(x, region=(y0, y1, x0, x1))
    np.testing.assert_allclose(box.total, exp.output[0, 0, y0:y1, x0:x1].astype(np.float64).sum(), rtol=1e-5)
    assert np.all(box.conservation()["relative_error"] < IDENTITY)


def test_yolo_face_score_of_one_anchor():
    """YOLOv8n's class scores (N, 18, anchors; the detection tensor's rows 4..) on a drawn face: the best face
    score's anchor is explained with anchor=(a, class); the explained logits are the ones the original model's
    Sigmoid reads; the identity holds; the relevance lies on the face."""
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (320, 320), (200, 170, 150))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 60, 220, 210), fill=(230, 190, 160))
    for left in (130, 170):
        draw.ellipse((left, 110, left + 20, 125), fill="black")
    x = yolo_input(np.asarray(image))
    explainer = onnxlrp.Explainer(str(model_path("yolo")), "epsilon_plus", output=YOLO_SCORES)
    detections = _session("yolo").run(None, {"images": x})[0]
    probe = explainer.explain(x, target=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-probe.output.astype(np.float64))), detections[:, 4:], atol=1e-4)
    faces = [YOLO_CLASSES.index("FACE_FEMALE"), YOLO_CLASSES.index("FACE_MALE")]
    rows = probe.output[0, faces]
    k, anchor = np.unravel_index(np.argmax(rows), rows.shape)
    exp = explainer.explain(x, anchor=(int(anchor), faces[k]))
    np.testing.assert_allclose(exp.total, probe.output[0, faces[k], anchor], rtol=1e-5)
    assert np.all(exp.conservation()["relative_error"] < IDENTITY)
    heat = np.abs(exp.relevance["images"][0]).sum(axis=0)
    yy, xx = np.mgrid[:320, :320]
    face = ((yy - 135) / 75) ** 2 + ((xx - 160) / 60) ** 2 <= 1.2
    assert heat[face].sum() > heat[~face].sum()
