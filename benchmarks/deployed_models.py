"""Models as deployed (tests/deployed.py: PaddleOCR from rapidocr-onnxruntime 1.4.4, YOLOv8n from nudenet 3.4.2):
explanation / forward pass, and the heatmap pictures of README's "Models as deployed" section.

    python benchmarks/deployed_models.py               # speed table, then pictures into docs/deployed/
    python benchmarks/deployed_models.py --speed       # only the table
    python benchmarks/deployed_models.py --pictures    # only the pictures (and the identity of each)

Speed: medians of interleaved rounds (onnxlrp.bench.interleaved, each timed call settled) of the forward pass and
the shape-generic compiled file, batch 1, 2 threads each, at the size given. The arithmetic floor is counted as in README's Performance
section: the multiply-accumulates of every convolution and matrix product the compiled graph runs (z+ needs the
forward W x, its denominator W+ x and the transposed W+^T s per layer, five where the layer's input is signed),
over those of the forward pass, both counted on the graph specialised to that size. Measured / floor says how
much the rest (element-wise ops, layout changes, transposed strided convolutions) costs on top.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from deployed import (YOLO_CLASSES, YOLO_SCORES, ctc_characters, ctc_decode, model_path, paddle_input,  # noqa: E402
                      render_page, render_text, yolo_input)

import onnxlrp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PICTURES = ROOT / "docs" / "deployed"
# (model, input, shape, explained output: the detection tensor's class scores for YOLOv8n (see _yolo))
SPEED = [("det", "x", (1, 3, 640, 640), None), ("yolo", "images", (1, 3, 320, 320), "/model.22/Sigmoid_output_0")]
COMPOSITES = ("epsilon_plus", "epsilon")
# threads per session; each timed call right after an untimed one of the same session (onnxlrp.bench.interleaved's
# settle: no shared thread pool, since compiling may start onnxruntime sessions first (the fold stage's check))
THREADS = 2


def macs(model: onnx.ModelProto, batch: int = 1) -> int:
    """Multiply-accumulates of the Conv, ConvTranspose, MatMul and Gemm nodes of a model with static shapes (the
    relevance tensors' batch axis, which inference leaves symbolic, is `batch`); a node whose sizes are unknown
    raises."""
    inferred = shape_inference.infer_shapes(onnxlrp.shapes.weightless(model), data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = [batch] + dims[1:] if dims and dims[0] == 0 else dims
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    producers = {o: n for n in inferred.graph.node for o in n.output}
    total = 0
    for node in inferred.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        subpixel = _subpixel_source(node, producers, shapes)
        if subpixel is not None:
            total += subpixel
        elif node.op_type == "ConvTranspose" and re.search(r"/phase_kernel(_\d+)?$", node.input[1]):
            continue  # the sub-pixel form's one-hot interleave: a copy, no arithmetic
        elif node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1]) or []
            data = shapes.get(node.input[0] if node.op_type == "ConvTranspose" else node.output[0]) or []
            x_shape = _known_shape(node.input[0], shapes, producers)
            if node.op_type == "ConvTranspose":
                data = x_shape
            if node.op_type == "Conv" and (not data or 0 in data) and w and len(x_shape) == len(w) and 0 not in x_shape:
                data = _conv_output(x_shape, w, attrs)  # inference lost it (a seed's Reshape)
            if not w or not data or 0 in w + data:
                raise ValueError(f"the sizes of {node.op_type} {node.name!r} are unknown: {w} {data} {x_shape}")
            # Conv: output entries x (Cin/g x kernel); ConvTranspose: input entries x (Cout/g x kernel)
            total += int(np.prod(data)) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, y = shapes.get(node.input[0]) or [], shapes.get(node.output[0]) or []
            if a and y:
                inner = a[-2] if node.op_type == "Gemm" and attrs.get("transA") else a[-1]
                total += int(np.prod(y)) * inner
    return total


def _subpixel_source(node, producers: dict, shapes: dict):
    """The multiply-accumulates of the strided ConvTranspose that a sub-pixel Conv (onnxlrp/emitters/subpixel.py)
    computes, None for any other node: the floor counts the composite's passes, not the zero taps the phase kernel
    pads with. ConvTranspose MACs = input entries x (C_out x kh x kw), W (C_s, C_out, kh, kw) read from its w_taps."""
    if node.op_type != "Conv" or not re.search(r"/bwd_phases(_\d+)?$", node.output[0]):
        return None
    name = node.input[1]
    for _ in range(8):
        producer = producers.get(name)
        if producer is None:
            return None
        if re.search(r"/w_taps(_\d+)?$", producer.output[0]):
            w, s = shapes.get(producer.input[0]) or [], shapes.get(node.input[0]) or []
            return int(np.prod(s)) * int(np.prod(w[1:])) if w and s and 0 not in w + s else None
        name = producer.input[0]
    return None


ELEMENTWISE = ("Div", "Mul", "Add", "Sub", "Where", "Cast", "Relu", "Neg", "Min", "Max")


def _known_shape(name: str, shapes: dict, producers: dict, depth: int = 0) -> list:
    """A value's shape, or where inference lost it (the relevance seed's Reshape), that of an operand of the
    element-wise op that made it (s = R / z has z's shape)."""
    shape = shapes.get(name) or []
    if shape and 0 not in shape:
        return shape
    node = producers.get(name)
    if node is None or node.op_type not in ELEMENTWISE or depth > 8:
        return shape
    candidates = [_known_shape(i, shapes, producers, depth + 1) for i in node.input if i]
    full = [c for c in candidates if c and 0 not in c]
    return max(full, key=len) if full else shape


def _conv_output(x: list, w: list, attrs: dict) -> list:
    """A Conv's output shape from its input's and weight's (explicit pads; SAME pads as ceil(in / stride))."""
    nd = len(w) - 2
    strides = attrs.get("strides", [1] * nd)
    dilations = attrs.get("dilations", [1] * nd)
    pads = attrs.get("pads", [0] * (2 * nd))
    same = attrs.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER", "SAME_UPPER", "SAME_LOWER")
    out = []
    for i in range(nd):
        if same:
            out.append(-(-x[2 + i] // strides[i]))
        else:
            eff = (w[2 + i] - 1) * dilations[i] + 1
            out.append((x[2 + i] + pads[i] + pads[i + nd] - eff) // strides[i] + 1)
    return [x[0], w[0]] + out


def speed(repeats: int) -> None:
    """Explanation / forward of the deployed detectors at their deployment sizes, with the arithmetic floor: the
    shape-generic compiled file and the forward pass timed in this process, medians of interleaved rounds
    (onnxlrp.bench.interleaved)."""
    import time

    import onnxruntime as ort

    from onnxlrp.bench import interleaved, session_options
    from onnxlrp.compiler import TARGET_INPUT
    print("| model | input | composite | compile s | forward ms | explanation ms | x forward | floor (MACs) | "
          "x floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, input_name, shape, output in SPEED:
        path = str(model_path(name))
        forward_macs = macs(_specialised(onnx.load(path), input_name, shape))
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        forward = ort.InferenceSession(path, session_options(THREADS), providers=["CPUExecutionProvider"])
        for composite in COMPOSITES:
            start = time.perf_counter()
            compiled = onnxlrp.compile(path, composite, output=output)
            compile_s = time.perf_counter() - start
            explainer = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"],
                                          session_options=session_options(THREADS))
            feeds = {input_name: x, TARGET_INPUT: np.full(shape[0], -1, dtype=np.int64)}
            calls = {"forward": lambda: forward.run(None, {input_name: x}),
                     "explanation": lambda: explainer.session.run(None, feeds)}
            medians, _ = interleaved(calls, 2, repeats, budget_s=180, settle=True)
            ratio = medians["explanation"] / medians["forward"]
            floor = macs(onnxlrp.compile(path, composite, output=output, shapes={input_name: shape})) / forward_macs
            print(f"| {name} | {'x'.join(map(str, shape[2:]))} | {composite} | {compile_s:.1f} | "
                  f"{medians['forward'] * 1e3:.0f} | {medians['explanation'] * 1e3:.0f} | {ratio:.2f}x | "
                  f"{floor:.2f}x | {ratio / floor:.2f} |", flush=True)


def _specialised(model: onnx.ModelProto, name: str, shape: tuple) -> onnx.ModelProto:
    """The model with its input fixed to one shape."""
    from onnxlrp.specialise import specialise
    return specialise(model, {name: shape})


def pictures() -> None:
    """Heatmaps over the image for each deployed model, and the identity of each explanation."""
    from onnxlrp.heatmap import save_heatmap
    from PIL import Image
    (PICTURES / "inputs").mkdir(parents=True, exist_ok=True)
    line = render_text("Relevance 2024 deployed")
    Image.fromarray(line).save(PICTURES / "inputs" / "line.png")
    x = paddle_input(line, 48, 192)
    exp = onnxlrp.Explainer(str(model_path("cls"))).explain(x)
    _report("cls", f"class {int(exp.target[0])} ('0' = upright)", exp)
    save_heatmap(PICTURES / "cls.png", exp.relevance["x"], x, title="direction classifier: class 0 (upright)")

    page, boxes = render_page(["Layer-wise relevance", "for every pixel 42"], 160, 320)
    Image.fromarray(page).save(PICTURES / "inputs" / "page.png")
    x = paddle_input(page, 160)
    detector = onnxlrp.Explainer(str(model_path("det")))
    y0, y1, x0, x1 = boxes[0]
    logits = detector.explain(x, region=(y0, y1, x0, x1)).output.astype(np.float64)
    probability = 1 / (1 + np.exp(-np.clip(logits, -50, 50)))
    mask = np.zeros_like(probability)
    mask[:, :, y0:y1, x0:x1] = probability[:, :, y0:y1, x0:x1] > 0.3
    np.save(PICTURES / "inputs" / "line1.npy", mask[0].astype(np.uint8))
    exp = detector.explain(x, target_mask=mask)
    _report("det", f"the {int(mask.sum())} pixels of line 1 with probability > 0.3", exp)
    save_heatmap(PICTURES / "det.png", exp.relevance["x"], x, title="detector: the text pixels of line 1")

    for name, run in (("yolo", _yolo), ("rec", _rec)):
        try:
            run(save_heatmap)
        except onnxlrp.errors.OnnxLrpError as exc:
            print(f"{name}: not explained yet: {str(exc)[:300]}")


def _yolo(save_heatmap) -> None:
    """YOLOv8n (NudeNet): the best face score of all anchors on a drawn face."""
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (320, 320), (200, 170, 150))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 60, 220, 210), fill=(230, 190, 160))
    draw.ellipse((130, 110, 150, 125), fill="black")
    draw.ellipse((170, 110, 190, 125), fill="black")
    draw.arc((135, 150, 185, 185), 20, 160, fill=(120, 40, 40), width=4)
    image.save(PICTURES / "inputs" / "face.png")
    x = yolo_input(np.asarray(image))
    explainer = onnxlrp.Explainer(str(model_path("yolo")), output=YOLO_SCORES)
    logits = explainer.explain(x, target=0).output[0]  # (classes, anchors), before the Sigmoid
    faces = [YOLO_CLASSES.index("FACE_FEMALE"), YOLO_CLASSES.index("FACE_MALE")]
    best = np.unravel_index(np.argmax(logits[faces]), (2, logits.shape[1]))
    klass, anchor = faces[best[0]], best[1]
    exp = explainer.explain(x, anchor=(int(anchor), int(klass)))
    score = 1 / (1 + np.exp(-logits[klass, anchor]))
    _report("yolo", f"anchor {anchor}, class {YOLO_CLASSES[klass]} (score {score:.3f})", exp)
    save_heatmap(PICTURES / "yolo.png", exp.relevance["images"], x, title=f"YOLOv8n: {YOLO_CLASSES[klass]} score")


def _rec(save_heatmap) -> None:
    """The recogniser: one character of the decoded text at its time step."""
    line = render_text("LRP 2024")
    x = paddle_input(line, 48, 320)
    explainer = onnxlrp.Explainer(str(model_path("rec")))
    probe = explainer.explain(x, target=0)
    characters = ctc_characters(onnx.load(str(model_path("rec")), load_external_data=False))
    best = probe.output[0].argmax(-1)
    step = int(np.flatnonzero(best != 0)[0])
    mask = np.zeros_like(probe.output)
    mask[0, step, best[step]] = 1  # one character at one step of the (N, T, classes) output
    exp = explainer.explain(x, target_mask=mask)
    _report("rec", f"'{ctc_decode(probe.output[0], characters)}': character '{characters[best[step]]}' at step "
                   f"{step}", exp)
    save_heatmap(PICTURES / "rec.png", exp.relevance["x"], x)


def _report(name: str, what: str, exp) -> None:
    """One line: what was explained, and the identity."""
    c = exp.conservation()
    print(f"{name}: {what}: total {float(c['total'][0]):.6g} = inputs {float(c['inputs'][0]):.6g} + biases "
          f"{float(c['biases'][0]):.6g} + stabilizer {float(c['stabilizer'][0]):.6g} (relative error "
          f"{float(c['relative_error'][0]):.1e})")


def main(argv=None) -> None:
    """Run the table and/or the pictures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", action="store_true", help="only the speed table")
    parser.add_argument("--pictures", action="store_true", help="only the pictures")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.pictures:
        speed(args.repeats)
    if not args.speed:
        pictures()


if __name__ == "__main__":
    main()
