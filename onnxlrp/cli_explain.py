"""CLI command: onnxlrp explain MODEL --input FILE (prediction, conservation, top positions, .npz, heatmaps)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import click

from .cli_options import (check_output_file, command, constant_budget, explain_composite_option, input_options,
                          mask_arguments, mask_options, model_argument, note, output_option, parse_model_shapes,
                          parse_sets, parse_targets, read_inputs, set_option, shape_option, target_option)

SHOWN_SAMPLES = 8  # samples printed in full; -o saves all


@command("explain", short_help="Explain a batch: prediction, conservation, top inputs.")
@model_argument
@input_options
@target_option
@explain_composite_option
@set_option
@output_option
@click.option("-o", "--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Write the results to this .npz file.")
@click.option("--top", default=5, show_default=True, help="How many top relevant input positions to print.")
@click.option("--heatmap", default=None, type=click.Path(dir_okay=False),
              help="Write a picture (.png, .jpg, .pdf, .svg, ...: the suffix sets the format): relevance heatmaps "
                   "for image inputs, a bar chart of the top features otherwise.")
@click.option("--max-heatmaps", default=None, type=click.IntRange(min=1),
              help="Heatmap: draw at most this many samples, the first ones [default: 16].")
@click.option("--overlay", is_flag=True, help="Heatmap: draw the relevance over the input image, not beside it.")
@click.option("--feature-names", default=None, type=click.Path(dir_okay=False),
              help="A text file with one name per input value (per feature of a flat input, per pixel and "
                   "channel of an image): names the printed top positions and the bars of the chart.")
@mask_options
@shape_option
@click.option("--no-check", "no_check", is_flag=True,
              help="Do not verify total = inputs + biases + stabilizer for every sample (a few sums; see the README).")
@click.option("--batch-size", "-b", default=64, show_default=True, type=click.IntRange(min=1),
              help="Samples per onnxruntime run: memory follows the batch size, not the input's size.")
@click.option("--position", "positions", multiple=True, type=int,
              help="Sequence outputs (N, T, C): the position explained (one, or one per sample; default -1).")
@click.option("--tokens", "tokens_file", default=None, type=click.Path(dir_okay=False),
              help="Token-id inputs: a text file with one token per line (blank lines separate samples); the tokens "
                   "are printed coloured by relevance and drawn by --heatmap.")
def explain_cmd(model, input_file, keys, size, mean, std, targets, composite, sets, output_name, out, top, heatmap,
                max_heatmaps, overlay, feature_names, region, channel, anchor, mask_file, shapes, no_check,
                batch_size, positions, tokens_file) -> None:
    """Explain the inputs in FILE with MODEL; print prediction, conservation and top positions (token-id inputs:
    the tokens coloured by relevance)."""
    from .batching import Gatherer, batch_length, explain_in_batches
    from .datasets.progress import RunProgress
    from .heatmap import MAX_SAMPLES
    from .report import conservation_line, top_positions
    from .runtime import Explainer
    check_output_file(out, "-o")
    check_output_file(heatmap, "--heatmap")
    if heatmap:
        from .heatmap import heatmap_format
        heatmap_format(heatmap)
    target = parse_targets(targets)
    names = _feature_names(feature_names)
    masks = mask_arguments(region, channel, anchor, mask_file)
    explainer = Explainer(model, composite, params=parse_sets(sets), output=output_name,
                          shapes=parse_model_shapes(model, shapes), max_constant_bytes=constant_budget())
    inputs = read_inputs(explainer, input_file, keys, size, mean, std)
    named = _named_inputs(names, inputs)
    n = batch_length(inputs)
    if "target_mask" in masks:   # a mask file may hold one mask per sample: one run keeps them with their samples
        batch_size = max(n, 1)
    drawn = (max_heatmaps or MAX_SAMPLES) if heatmap else 0
    head = Gatherer(min(n, max(SHOWN_SAMPLES, drawn)))   # what is printed and drawn
    everything = Gatherer(n) if out else None             # what -o saves
    with RunProgress(n, enabled=None if n > batch_size else False) as progress:
        for start, part in explain_in_batches(explainer, inputs, target, batch_size, check=not no_check,
                                              position=_position(positions), **masks):
            head.add(start, part)
            if everything is not None:
                everything.add(start, part)
            progress.advance(part.total.shape[0], 0)
    exp = head.result()
    tokens, token_input = _tokens(explainer, exp, inputs, tokens_file)
    runs = f" in {-(-n // batch_size)} runs of {batch_size}" if n > batch_size else ""
    click.echo(f"model {model} | composite {explainer.composite} | provider {explainer.provider} | batch {n}{runs}")
    for i in range(min(n, SHOWN_SAMPLES)):
        logits = exp.output.reshape(exp.output.shape[0], -1)[i]
        if exp.target_mask is not None:
            click.echo(f"sample {i}: explained sum(mask * output) over "
                       f"{int((exp.target_mask[i] != 0).sum())} output entries = {float(exp.total[i]):.6g}")
        else:
            click.echo(f"sample {i}: predicted {int(logits.argmax())}, explained target {int(exp.target[i])} "
                       f"(output {float(logits[exp.target[i]]):.6g})")
        click.echo("  " + conservation_line(exp, i))
        for name, rel in exp.relevance.items():
            if name == token_input:
                from .tokens import coloured_line
                click.echo(f"  {name}: " + coloured_line(tokens[i], rel[i]))
                continue
            labels = names if name in named else None
            positions = ", ".join(f"{_label(idx, rel[i].shape, labels)}: {val:+.4g}"
                                  for idx, val in top_positions(rel[i], top))
            click.echo(f"  top {name}: {positions}")
    if n > SHOWN_SAMPLES:
        click.echo(f"... {n - SHOWN_SAMPLES} more samples (use -o to save all)")
    if out:
        from .report import save_explanation
        save_explanation(everything.result(), out)
        click.echo(f"wrote {out}")
    if heatmap and token_input:
        from .tokens import save_token_heatmap
        shown = min(head.filled, max_heatmaps or head.filled)
        titles = [f"sample {i}: target {int(exp.target[i])}, total {float(exp.total[i]):.4g} "
                  f"(red: for it, blue: against)" for i in range(shown)]
        if shown < n:
            note(f"the heatmap shows the first {shown} of the {n} samples")
        drawn = save_token_heatmap(heatmap, tokens[:shown], exp.relevance[token_input][:shown], titles)
        click.echo(f"wrote heatmap {drawn}")
    elif heatmap:
        from .heatmap import save_explanation_heatmaps
        title = (f"{Path(model).name}: LRP ({explainer.composite}) of the {_target_text(target)} "
                 f"(red: for it, blue: against)")
        first = {name: value[:head.filled] for name, value in inputs.items()}
        for path, layout in save_explanation_heatmaps(heatmap, exp, first, names=names, overlay=overlay, top=top,
                                                      title=title, named=named, max_samples=max_heatmaps):
            if layout.samples < n:
                note(f"the heatmap shows the first {layout.samples} of the {n} samples")
            click.echo(f"wrote heatmap {path}")


def _position(positions: tuple):
    """--position: None (the default, -1), one int for every sample, or one per sample."""
    if not positions:
        return None
    return positions[0] if len(positions) == 1 else list(positions)


def _tokens(explainer, exp, inputs: dict, tokens_file: Optional[str]) -> tuple:
    """(token strings per sample, the token-id input they belong to) for a model with token-id inputs (the first
    one), (None, None) otherwise; --tokens on a model without them is an error."""
    token_inputs = [name for name in explainer.meta.get("tokens", []) if name in exp.relevance]
    if not token_inputs:
        if tokens_file:
            from .errors import OnnxLrpError
            raise OnnxLrpError("--tokens applies to models with token-id inputs (an embedding lookup); this one "
                               "has none")
        return None, None
    from .tokens import load_tokens, tokens_for
    return tokens_for(load_tokens(tokens_file) if tokens_file else None, inputs[token_inputs[0]]), token_inputs[0]


def _feature_names(path: Optional[str]) -> Optional[list]:
    """The --feature-names file's names (read before any work), None without the option."""
    if not path:
        return None
    from .inputs import load_feature_names
    return load_feature_names(path)


def _named_inputs(names: Optional[list], inputs: dict) -> set:
    """The inputs the feature names fit (as many values per sample as names); none fitting is an error."""
    if names is None:
        return set()
    import numpy as np
    sizes = {name: int(np.prod(np.shape(value)[1:])) for name, value in inputs.items()}
    fitting = {name for name, size in sizes.items() if size == len(names)}
    if not fitting:
        from .errors import InputError
        if len(sizes) == 1:
            raise InputError(f"got {len(names)} feature names for {next(iter(sizes.values()))} features")
        raise InputError(f"got {len(names)} feature names; no input has that many values per sample ("
                         + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ")")
    return fitting

def _label(index: tuple, shape: tuple, names: Optional[Sequence[str]]) -> str:
    """A top position: its index, preceded by its feature name when there are names."""
    if names is None:
        return str(index)
    import numpy as np
    flat = int(np.ravel_multi_index(index, shape)) if shape else 0
    return f"{names[flat]} {index}"


def _target_text(target) -> str:
    """What the explanation explains, for the heatmap title."""
    if target is None:
        return "predicted class"
    if isinstance(target, int):
        return f"class {target}"
    return "class given per sample"


COMMANDS = (explain_cmd,)
