"""CLI command: onnxlrp evaluate MODEL DATA (perturbation metrics for composites and gradient baselines)."""
from __future__ import annotations

import sys
from typing import Optional

import click

from .cli_options import (check_output_file, command, format_option, model_argument, output_option, parse_sets,
                          parse_targets, set_option, target_option)


def _names(text: str) -> list:
    """'a,b, c' -> ['a', 'b', 'c'] ('' -> [])."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _chosen_format(fmt: Optional[str]) -> str:
    """As asked, else a table on a terminal and CSV when stdout is not one."""
    if fmt:
        return fmt
    return "table" if hasattr(sys.stdout, "isatty") and sys.stdout.isatty() else "csv"


@command("evaluate", short_help="How faithful is each explanation? Perturbation curves.")
@model_argument
@click.argument("data", type=click.Path())
@click.option("--composites", default="epsilon_plus", show_default=True,
              help="Comma-separated composites (built-in names or TOML files); '' for none.")
@click.option("--baselines", default="gradient,integrated_gradients,smoothgrad,random", show_default=True,
              help="Comma-separated baselines: gradient, integrated_gradients, smoothgrad, random; '' for none.")
@click.option("--metric", type=click.Choice(["pixel_flipping", "region_perturbation"]), default="pixel_flipping",
              show_default=True, help="Remove every feature in --steps steps, or one region per step.")
@click.option("--patch", type=int, default=None,
              help="Feature size: p x p patches of an image, p values of a flat input, p tokens "
                   "[default: 1; 2 for region_perturbation].")
@click.option("--steps", type=int, default=20, show_default=True,
              help="Perturbation steps (pixel_flipping: all features in this many steps; region_perturbation: "
                   "this many regions, one per step).")
@click.option("--fill", type=click.Choice(["mean", "zero", "blur", "uniform"]), default=None,
              help="What a removed value becomes [default: mean; uniform for region_perturbation].")
@click.option("--samples", type=int, default=256, show_default=True, help="Evaluate the first N samples of DATA.")
@target_option
@set_option
@output_option
@click.option("--input-name", default=None, help="The input to perturb (models with several inputs).")
@click.option("--mask-token", type=int, default=None, help="Token id that replaces removed tokens (integer inputs).")
@click.option("--ig-steps", type=int, default=32, show_default=True, help="Integrated Gradients: interpolation steps.")
@click.option("--ig-baseline", type=click.Choice(["zero", "blur"]), default="zero", show_default=True,
              help="Integrated Gradients: the reference input.")
@click.option("--smoothgrad-samples", type=int, default=16, show_default=True, help="SmoothGrad: noisy copies.")
@click.option("--noise", type=float, default=0.1, show_default=True,
              help="SmoothGrad: noise standard deviation / (max - min) of the sample.")
@click.option("--blur-sigma", type=float, default=None,
              help="Gaussian blur (fill and IG baseline) in pixels [default: 1/8 of the smaller side, at least 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the random baseline, noise and ties.")
@click.option("--batch-rows", type=int, default=1024, show_default=True,
              help="Rows per onnxruntime run for attributions.")
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Write the curves to this PNG.")
@format_option
def evaluate_cmd(model, data, composites, baselines, metric, patch, steps, fill, samples, targets, sets, output_name,
                 input_name, mask_token, ig_steps, ig_baseline, smoothgrad_samples, noise, blur_sigma, seed,
                 batch_rows, png, fmt) -> None:
    """How faithful is each explanation of MODEL on DATA (.npy, .npz)? Remove the most (least) relevant features
    first and follow the explained logit: one row per composite and baseline (--set applies a composite parameter
    to every composite that has it; the explained class is the predicted one unless --target says otherwise)."""
    from .evaluate import evaluate
    from .evaluate_report import curve_records, describe, save_curves, score_records, score_rich_table, settings_record
    from .graph import load_model
    from .inputs import load_inputs
    from .render import to_csv, to_json
    check_output_file(png, "--png")
    source = load_model(model)
    initializers = {t.name for t in source.graph.initializer}
    names = [i.name for i in source.graph.input if i.name not in initializers]
    inputs = load_inputs(data, names)
    result = evaluate(source, inputs, composites=_names(composites), baselines=_names(baselines), metric=metric,
                      patch=patch, steps=steps, fill=fill, samples=samples, target=parse_targets(targets),
                      input_name=input_name, output=output_name, params=parse_sets(sets), ig_steps=ig_steps,
                      ig_baseline=ig_baseline, smoothgrad_samples=smoothgrad_samples, noise=noise,
                      mask_token=mask_token, blur_sigma=blur_sigma, seed=seed, batch_rows=batch_rows)
    chosen = _chosen_format(fmt)
    if chosen == "json":
        click.echo(to_json(score_records(result), settings=settings_record(result), curves=curve_records(result)))
    elif chosen == "csv":
        click.echo(to_csv(score_records(result)), nl=False)
    else:
        from rich.console import Console
        console = Console()
        console.width = max(console.width, 100)  # never cut a number; a narrow terminal wraps the lines instead
        console.print(score_rich_table(result, f"{model} | {describe(result)}"))
    if png:
        save_curves(png, result, str(model))
        click.echo(f"wrote {png}", err=chosen != "table")


COMMANDS = (evaluate_cmd,)
