"""CLI command: onnxlrp explain MODEL --input FILE (prediction, conservation, top positions, .npz, heatmaps)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import click

from .cli_options import (check_output_file, command, explain_composite_option, input_options, model_argument, note,
                          output_option, parse_sets, parse_targets, read_inputs, set_option, target_option)

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
@click.option("--overlay", is_flag=True, help="Heatmap: draw the relevance over the input image, not beside it.")
@click.option("--feature-names", default=None, type=click.Path(dir_okay=False),
              help="A text file with one name per input value (per feature of a flat input, per pixel and "
                   "channel of an image): names the printed top positions and the bars of the chart.")
@click.option("--position", "positions", multiple=True, type=int,
              help="Sequence outputs (N, T, C): the position explained (one, or one per sample; default -1).")
@click.option("--tokens", "tokens_file", default=None, type=click.Path(dir_okay=False),
              help="Token-id inputs: a text file with one token per line (blank lines separate samples); the tokens "
                   "are printed coloured by relevance and drawn by --heatmap.")
def explain_cmd(model, input_file, keys, size, mean, std, targets, composite, sets, output_name, out, top, heatmap,
                overlay, feature_names, positions, tokens_file) -> None:
    """Explain the inputs in FILE with MODEL; print prediction, conservation and top positions (token-id inputs:
    the tokens coloured by relevance)."""
    from .report import conservation_line, top_positions
    from .runtime import Explainer
    check_output_file(out, "-o")
    check_output_file(heatmap, "--heatmap")
    if heatmap:
        from .heatmap import heatmap_format
        heatmap_format(heatmap)
    target = parse_targets(targets)
    names = _feature_names(feature_names)
    explainer = Explainer(model, composite, params=parse_sets(sets), output=output_name)
    inputs = read_inputs(explainer, input_file, keys, size, mean, std)
    named = _named_inputs(names, inputs)
    exp = explainer.explain(inputs, target, None if not positions else
                            (positions[0] if len(positions) == 1 else list(positions)))
    tokens, token_input = _tokens(explainer, exp, inputs, tokens_file)
    n = exp.total.shape[0]
    click.echo(f"model {model} | composite {explainer.composite} | provider {explainer.provider} | batch {n}")
    for i in range(min(n, SHOWN_SAMPLES)):
        logits = exp.output.reshape(n, -1)[i]
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
        save_explanation(exp, out)
        click.echo(f"wrote {out}")
    if heatmap and token_input:
        from .tokens import save_token_heatmap
        titles = [f"sample {i}: target {int(exp.target[i])}, total {float(exp.total[i]):.4g} "
                  f"(red: for it, blue: against)" for i in range(n)]
        click.echo(f"wrote heatmap {save_token_heatmap(heatmap, tokens, exp.relevance[token_input], titles)}")
    elif heatmap:
        from .heatmap import save_explanation_heatmaps
        title = (f"{Path(model).name}: LRP ({explainer.composite}) of the {_target_text(target)} "
                 f"(red: for it, blue: against)")
        for path, layout in save_explanation_heatmaps(heatmap, exp, inputs, names=names, overlay=overlay, top=top,
                                                      title=title, named=named):
            if layout.samples < layout.total:
                note(f"the heatmap shows the first {layout.samples} of the {layout.total} samples")
            click.echo(f"wrote heatmap {path}")


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
