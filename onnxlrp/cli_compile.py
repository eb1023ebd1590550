"""CLI commands about the compiled graph: compile (write it) and inspect (the plan: a rule per node)."""
from __future__ import annotations

import click

from .cli_options import (check_output_file, command, composite_option, model_argument, output_option,
                          parse_model_shapes, parse_sets, set_option, shape_option)


@command("compile", short_help="Compile MODEL into a model that explains itself.")
@model_argument
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the compiled model (.onnx).")
@composite_option
@set_option
@output_option
@click.option("--init", type=click.Choice(["logit", "one"]), default="logit", show_default=True,
              help="Initial relevance: the target's output value (logit: total = f(x)_target) or one (one-hot).")
@click.option("--node-relevance", default=None,
              help="Extra outputs: 'sums' (relevance per tensor and sample, for profile), 'all' or comma-separated "
                   "tensor names (whole relevance tensors).")
@shape_option
def compile_cmd(model, out, composite, sets, output_name, init, node_relevance, shapes) -> None:
    """Compile MODEL into an augmented ONNX model (forward + relevance in one graph)."""
    from .compiler import compile as compile_model
    from .io import save_model
    check_output_file(out, "-o")
    nodes = node_relevance if node_relevance in (None, "sums", "all") else node_relevance.split(",")
    compiled = compile_model(model, composite, params=parse_sets(sets), output=output_name, init=init,
                             node_relevance=nodes, shapes=parse_model_shapes(model, shapes))
    save_model(compiled, out)
    outputs = [o.name for o in compiled.graph.output]
    click.echo(f"wrote {out}: {len(compiled.graph.node)} nodes, outputs: {', '.join(outputs)}")


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
