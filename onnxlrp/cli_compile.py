"""CLI commands about the compiled graph: compile (write it) and inspect (the plan: a rule per node)."""
from __future__ import annotations

import os
import sys

import click

from .cli_options import (EXIT_USER_ERROR, command, composite_option, model_argument, output_option, parse_sets,
                          set_option)


@command("compile")
@click.argument("models", nargs=-1, required=True, type=click.Path())  # load_model names a folder in one line
@click.option("-o", "--out", "out", required=True, type=click.Path(),
              help="Where to write the model; a folder when compiling several (or a folder of them).")
@composite_option
@set_option
@output_option
@click.option("--init", type=click.Choice(["logit", "one"]), default="logit", show_default=True)
@click.option("--node-relevance", default=None, help="'sums', 'all', or comma-separated tensor names.")
def compile_cmd(models, out, composite, sets, output_name, init, node_relevance) -> None:
    """Compile MODEL into an augmented ONNX model (forward + relevance in one graph); MODEL... and folders of .onnx
    files into the folder OUT (each compiled or refused, exit 2 if any was refused)."""
    from .compiler import compile as compile_model
    from .io import save_model
    nodes = node_relevance if node_relevance in (None, "sums", "all") else node_relevance.split(",")
    if len(models) > 1 or os.path.isdir(models[0]) or os.path.isdir(out) or out.endswith(("/", os.sep)):
        _compile_many(models, out, composite, parse_sets(sets), output_name, init, nodes)
        return
    compiled = compile_model(models[0], composite, params=parse_sets(sets), output=output_name, init=init,
                             node_relevance=nodes)
    save_model(compiled, out)
    outputs = [o.name for o in compiled.graph.output]
    click.echo(f"wrote {out}: {len(compiled.graph.node)} nodes, outputs: {', '.join(outputs)}")


def _compile_many(models, out, composite, params, output_name, init, nodes) -> None:
    """compile A B ... -o DIR: one line per model (compiled or refused with the reason), a summary, exit 2 if any
    was refused."""
    from .compile_many import compile_many
    compiled = refused = 0
    for result in compile_many(models, out, composite, params=params, output=output_name, init=init,
                               node_relevance=nodes):
        if result.compiled:
            compiled += 1
            click.echo(f"compiled {result.source} -> {result.target} ({result.message}, {result.seconds:.1f} s)")
        else:
            refused += 1
            click.echo(f"refused  {result.source}: {result.message}")
    click.echo(f"{compiled} compiled, {refused} refused")
    if refused:
        sys.exit(EXIT_USER_ERROR)


@command("inspect")
@model_argument
@composite_option
@set_option
@output_option
def inspect_cmd(model, composite, sets, output_name) -> None:
    """Show the plan: one row per node with its op type, rule, parameters and whether its bias is reported."""
    from .report import plan_rows
    rows = plan_rows(model, composite, parse_sets(sets), output_name)
    width = max([len(r["name"]) for r in rows] + [4])
    click.echo(f"{'node':{width}s}  {'op':18s} {'bias':5s} rule")
    for r in rows:
        click.echo(f"{r['name']:{width}s}  {r['op']:18s} {'yes' if r['bias'] else '-':5s} {r['rule']}")


COMMANDS = (compile_cmd, inspect_cmd)
