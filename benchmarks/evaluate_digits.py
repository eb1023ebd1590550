"""Which composite explains the shipped digits models most faithfully? Every built-in composite against the gradient
baselines, on 256 held-out digits (the test split of models/train.py), by pixel flipping and region perturbation.

    .venv/bin/python benchmarks/evaluate_digits.py [--out benchmarks] [--samples 256] [--save-data]

Prints one markdown table per model and metric (AUCs with 95 % intervals, input and bias shares, milliseconds per
sample and the seconds for all samples), writes the pixel-flipping curves as PNGs and (--save-data) the digits as
.npz files for the CLI:

    onnxlrp evaluate models/digits_cnn.onnx OUT/digits_test_images.npz --composites epsilon_plus,... \\
        --set low=0 --set high=1 --steps 16 --png OUT/evaluate_digits_cnn.png
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from onnxlrp.composites import builtin_names
from onnxlrp.evaluate import evaluate
from onnxlrp.evaluate_report import save_curves

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BASELINES = ("gradient", "integrated_gradients", "smoothgrad", "random")
METRICS = (("pixel_flipping", dict(steps=16, fill="mean")),       # the first one is drawn
           ("pixel_flipping", dict(steps=16, fill="zero")),
           ("region_perturbation", dict(steps=16, patch=2, fill="uniform")))


def held_out_digits(samples: int) -> tuple:
    """The first `samples` digits of models/train.py's held-out split: (images (N, 1, 8, 8), flat (N, 64), labels)."""
    spec = importlib.util.spec_from_file_location("digits_train", MODELS / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    _, x_test, _, y_test = train.load_data()
    flat = x_test[:samples].astype(np.float32)
    return flat.reshape(-1, 1, 8, 8), flat, y_test[:samples]


def _cell(value, ci=None, percent=False) -> str:
    """A table cell: value (± half-width)."""
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.1f} %"
    return f"{value:.2f} ± {ci:.2f}" if ci is not None else f"{value:.2f}"


def markdown(evaluation, samples: int) -> str:
    """The evaluation's table as markdown, best difference first."""
    lines = ["| method | AUC MoRF (lower better) | AUC LeRF (higher better) | LeRF - MoRF | input share | bias share "
             "| ms / sample | s for all |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(evaluation.table(), key=lambda r: -r.difference):
        lines.append(f"| {r.method} | {_cell(r.auc_morf, r.auc_morf_ci)} | {_cell(r.auc_lerf, r.auc_lerf_ci)} | "
                     f"{_cell(r.difference, r.difference_ci)} | {_cell(r.input_share, percent=True)} | "
                     f"{_cell(r.bias_share, percent=True)} | {r.ms_per_sample:.2f} | "
                     f"{r.ms_per_sample * samples / 1e3:.2f} |")
    return "\n".join(lines)


def _palette(png: Path) -> None:
    """Re-save a PNG with a 256-colour palette (a fifth of the size, for the repository)."""
    from PIL import Image
    with Image.open(png) as image:
        quantized = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    quantized.save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="folder for the PNGs and the .npz files")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--save-data", action="store_true", help="also write the digits as .npz files (for the CLI)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, flat, labels = held_out_digits(args.samples)
    if args.save_data:
        np.savez(out / "digits_test_images.npz", input=images)
        np.savez(out / "digits_test_flat.npz", input=flat)
    composites = [c for c in builtin_names() if c != "base"]
    for model, data in (("digits_cnn", images), ("digits_mlp", flat)):
        for k, (metric, settings) in enumerate(METRICS):
            result = evaluate(str(MODELS / f"{model}.onnx"), data, composites=composites, baselines=BASELINES,
                              metric=metric, samples=args.samples, params={"low": 0.0, "high": 1.0}, **settings)
            accuracy = float(np.mean(result.targets == labels[: len(result.targets)]))
            print(f"\n### {model}, {metric.replace('_', ' ')} ({len(result.targets)} digits, {accuracy:.1%} predicted "
                  f"correctly; {result.settings['features']} features, {result.steps} steps, fill {result.fill}; "
                  f"mean explained logit {float(np.mean(result.logits)):.2f}; {result.settings['provider']})\n")
            print(markdown(result, len(result.targets)), flush=True)
            if k == 0:
                png = out / f"evaluate_{model}.png"
                save_curves(str(png), result, f"models/{model}.onnx, {len(result.targets)} held-out digits")
                _palette(png)
                print(f"\nwrote {png}")


if __name__ == "__main__":
    main()
