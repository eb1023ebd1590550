"""CLI commands about the compiled graph: compile (write it) and inspect (the plan: a rule per node)."""
from __future__ import annotations

import os
import sys

import click

from .errors import OnnxLrpError

from .cli_options import (EXIT_USER_ERROR, check_output_file, check_output_folder, command, composite_option,
                          constant_budget, max_constant_option, model_argument, output_option, parse_model_shapes,
                          parse_sets, set_option, shape_option)


@command("compile", short_help="Compile models into models that explain themselves.")
@click.argument("models", metavar="MODEL...", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out", required=True, type=click.Path(),
              help="Where to write the compiled model (.onnx); a folder when compiling several models or folders "
                   "(or when it ends with /).")
@composite_option
@set_option
@output_option
@click.option("--init", type=click.Choice(["logit", "one"]), default="logit", show_default=True,
              help="Initial relevance: the target's output value (logit: total = f(x)_target) or one (one-hot).")
@click.option("--node-relevance", default=None,
              help="Extra outputs: 'sums' (relevance per tensor and sample, for profile), 'all' or comma-separated "
                   "tensor names (whole relevance tensors).")
@shape_option
@max_constant_option
def compile_cmd(models, out, composite, sets, output_name, init, node_relevance, shapes) -> None:
    """Compile MODEL into an augmented ONNX model (forward + relevance in one graph). Several models, or folders of
    .onnx files, go into the folder OUT, each compiled or refused with its reason (exit 2 if any was refused)."""
    from .compiler import compile as compile_model
    from .io import save_model
    nodes = node_relevance if node_relevance in (None, "sums", "all") else node_relevance.split(",")
    if len(models) == 1 and os.path.isdir(models[0]) and out.lower().endswith(".onnx") and not os.path.isdir(out):
        raise OnnxLrpError(f"model path is not a file: {models[0]} is a folder (to compile every .onnx file in it, "
                           f"give -o a folder)")
    if len(models) > 1 or os.path.isdir(models[0]) or os.path.isdir(out) or out.endswith(("/", os.sep)):
        check_output_folder(out, "-o")
        if shapes:
            raise OnnxLrpError("--shape names one model's inputs: compile several models without it")
        _compile_many(models, out, composite, parse_sets(sets), output_name, init, nodes)
        return
    check_output_file(out, "-o")
    compiled = compile_model(models[0], composite, params=parse_sets(sets), output=output_name, init=init,
                             node_relevance=nodes, shapes=parse_model_shapes(models[0], shapes),
                             max_constant_bytes=constant_budget())
    save_model(compiled, out)
    outputs = [o.name for o in compiled.graph.output]
    click.echo(f"wrote {out}: {len(compiled.graph.node)} nodes, outputs: {', '.join(outputs)}")


def _compile_many(models, out, composite, params, output_name, init, nodes) -> None:
    """compile A B ... -o DIR: one line per model (compiled or refused with the reason), a summary, exit 2 if any
    was refused."""
    from .compile_many import compile_many
    compiled = refused = 0
    for result in compile_many(models, out, composite, params=params, output=output_name, init=init,
                               node_relevance=nodes, max_constant_bytes=constant_budget()):
        if result.compiled:
            compiled += 1
            click.echo(f"compiled {result.source} -> {result.target} ({result.message}, {result.seconds:.1f} s)")
        else:
            refused += 1
            click.echo(f"refused  {result.source}: {result.message}")
    click.echo(f"{compiled} compiled, {refused} refused")
    if refused:
        sys.exit(EXIT_USER_ERROR)


@command("inspect", short_help="Show the plan: the rule of every node.")
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
