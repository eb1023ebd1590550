"""CLI command: onnxlrp explain MODEL --input FILE (prediction, conservation, top positions, .npz, heatmaps)."""
from __future__ import annotations

import click

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
@click.option("--max-heatmaps", default=16, show_default=True, help="Heatmap: draw at most this many samples.")
@click.option("--overlay", is_flag=True, help="Heatmap: draw the relevance over the input image, not beside it.")
@click.option("--feature-names", default=None, type=click.Path(dir_okay=False),
              help="Heatmap of flat inputs: a text file with one feature name per line.")
@click.option("--batch-size", "-b", default=64, show_default=True, help="Samples per onnxruntime run.")
def explain_cmd(model, input_file, targets, composite, sets, output_name, out, top, size, mean, std, heatmap,
                max_heatmaps, overlay, feature_names, batch_size) -> None:
    """Explain the inputs in FILE with MODEL; print prediction, conservation and top positions."""
    from .batching import Gatherer, batch_length, explain_in_batches
    from .datasets.progress import RunProgress
    from .report import conservation_line, top_positions
    from .runtime import Explainer
    explainer = Explainer(model, composite, params=parse_sets(sets), output=output_name)
    inputs = read_inputs(explainer, input_file, size, mean, std)
    target = target_argument(targets)
    n = batch_length(inputs)
    shown = 8
    head = Gatherer(min(n, max(shown, max_heatmaps if heatmap else 0)))
    everything = Gatherer(n) if out else None
    with RunProgress(n, enabled=None if n > batch_size else False) as progress:
        for start, part in explain_in_batches(explainer, inputs, target, batch_size):
            head.add(start, part)
            if everything is not None:
                everything.add(start, part)
            progress.advance(part.total.shape[0], 0)
    exp = head.result()
    click.echo(f"model {model} | composite {explainer.composite} | provider {explainer.provider} | batch {n}"
               + (f" in {-(-n // batch_size)} runs of {batch_size}" if n > batch_size else ""))
    for i in range(min(n, shown)):
        logits = exp.output.reshape(exp.output.shape[0], -1)[i]
        click.echo(f"sample {i}: predicted {int(logits.argmax())}, explained target {int(exp.target[i])} "
                   f"(output {float(logits[exp.target[i]]):.6g})")
        click.echo("  " + conservation_line(exp, i))
        for name, rel in exp.relevance.items():
            positions = ", ".join(f"{idx}: {val:+.4g}" for idx, val in top_positions(rel[i], top))
            click.echo(f"  top {name}: {positions}")
    if n > shown:
        click.echo(f"... {n - shown} more samples (use -o to save all)")
    if out:
        from .report import save_explanation
        save_explanation(everything.result(), out)
        click.echo(f"wrote {out}")
    if heatmap:
        from .heatmap import save_explanation_heatmaps
        from .inputs import load_feature_names
        drawn = min(n, max(max_heatmaps, 1))
        names = load_feature_names(feature_names) if feature_names else None
        first = {k: v[:drawn] for k, v in inputs.items()}
        for path in save_explanation_heatmaps(heatmap, _first(exp, drawn), first, names=names, overlay=overlay,
                                              top=top):
            click.echo(f"wrote heatmap {path}")
        if n > drawn:
            click.echo(f"the heatmap shows the first {drawn} of {n} samples (--max-heatmaps {max_heatmaps})")


def _first(exp, k: int):
    """The first k samples of an explanation."""
    from .runtime import Explanation
    return Explanation(output=exp.output[:k], target=exp.target[:k], total=exp.total[:k],
                       relevance={n: v[:k] for n, v in exp.relevance.items()},
                       bias={n: v[:k] for n, v in exp.bias.items()}, stabilizer=exp.stabilizer[:k],
                       rules=exp.rules, graph=exp.graph)


COMMANDS = (explain_cmd,)
