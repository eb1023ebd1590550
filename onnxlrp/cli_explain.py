"""CLI command: onnxlrp explain MODEL --input FILE (prediction, conservation, top positions, .npz, heatmaps)."""
from __future__ import annotations

import click

from .errors import OnnxLrpError
from .cli_options import (command, composite_option, image_options, input_option, model_argument, output_option,
                          parse_sets, read_inputs, set_option, target_argument, target_option)


@command("explain")
@model_argument
@input_option
@target_option
@composite_option
@set_option
@output_option
@click.option("-o", "--out", "out", default=None, type=click.Path(dir_okay=False), help="Write the results to an .npz.")
@click.option("--top", default=5, show_default=True, help="How many top relevant input positions to print.")
@image_options
@click.option("--heatmap", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG: relevance heatmaps for image inputs, a bar chart of the top features otherwise.")
@click.option("--overlay", is_flag=True, help="Heatmap: draw the relevance over the input image, not beside it.")
@click.option("--feature-names", default=None, type=click.Path(dir_okay=False),
              help="Heatmap of flat inputs: a text file with one feature name per line.")
@click.option("--position", "positions", multiple=True, type=int,
              help="Sequence outputs (N, T, C): the position explained (one, or one per sample; default -1).")
@click.option("--tokens", "tokens_file", default=None, type=click.Path(dir_okay=False),
              help="Token inputs: a text file with one token per line (blank lines separate samples), to print "
                   "and draw the tokens coloured by relevance.")
def explain_cmd(model, input_file, targets, composite, sets, output_name, out, top, size, mean, std, heatmap,
                overlay, feature_names, positions, tokens_file) -> None:
    """Explain the inputs in FILE with MODEL; print prediction, conservation and top positions (token inputs:
    the tokens coloured by relevance)."""
    from .report import conservation_line, top_positions
    from .runtime import Explainer
    explainer = Explainer(model, composite, params=parse_sets(sets), output=output_name)
    inputs = read_inputs(explainer, input_file, size, mean, std)
    exp = explainer.explain(inputs, target_argument(targets), target_argument(positions))
    token_inputs = [name for name in explainer.meta.get("tokens", []) if name in exp.relevance]
    if tokens_file and not token_inputs:
        raise OnnxLrpError("--tokens applies to models with token-id inputs (an embedding lookup); this one has none")
    tokens = None
    if token_inputs:
        from .tokens import load_tokens, tokens_for
        tokens = tokens_for(load_tokens(tokens_file) if tokens_file else None, inputs[token_inputs[0]])
    n = exp.total.shape[0]
    click.echo(f"model {model} | composite {explainer.composite} | provider {explainer.provider} | batch {n}")
    for i in range(min(n, 8)):
        logits = exp.output.reshape(n, -1)[i]
        click.echo(f"sample {i}: predicted {int(logits.argmax())}, explained target {int(exp.target[i])} "
                   f"(output {float(logits[exp.target[i]]):.6g})")
        click.echo("  " + conservation_line(exp, i))
        for name, rel in exp.relevance.items():
            if tokens is not None and name == token_inputs[0]:
                from .tokens import coloured_line
                click.echo(f"  {name}: " + coloured_line(tokens[i], rel[i]))
                continue
            ranked = ", ".join(f"{idx}: {val:+.4g}" for idx, val in top_positions(rel[i], top))
            click.echo(f"  top {name}: {ranked}")
    if n > 8:
        click.echo(f"... {n - 8} more samples (use -o to save all)")
    if out:
        from .report import save_explanation
        save_explanation(exp, out)
        click.echo(f"wrote {out}")
    if heatmap and tokens is not None:
        from .tokens import save_token_heatmap
        titles = [f"sample {i}: target {int(exp.target[i])}, total {float(exp.total[i]):.4g}" for i in range(n)]
        click.echo(f"wrote heatmap {save_token_heatmap(heatmap, tokens, exp.relevance[token_inputs[0]], titles)}")
    elif heatmap:
        from .heatmap import save_explanation_heatmaps
        from .inputs import load_feature_names
        names = load_feature_names(feature_names) if feature_names else None
        for path in save_explanation_heatmaps(heatmap, exp, inputs, names=names, overlay=overlay, top=top):
            click.echo(f"wrote heatmap {path}")


COMMANDS = (explain_cmd,)
