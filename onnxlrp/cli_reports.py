"""CLI commands for reports: bias-table and profile."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
import numpy as np

from .cli_options import (check_output_file, command, constant_budget, explain_composite_option, format_option,
                          input_options, model_argument, output_option, parse_sets, parse_targets, read_inputs,
                          set_option, target_option)


def _explain(model: str, input_file: str, keys, targets, composite: Optional[str], sets, output_name: Optional[str],
             size: Optional[str], mean: Optional[str], std: Optional[str], node_relevance: Optional[str] = None):
    """Compile (with per-tensor sums) and explain the batch in input_file: (explainer, explanation)."""
    from .runtime import Explainer
    target = parse_targets(targets)
    explainer = Explainer(model, composite, params=parse_sets(sets), output=output_name,
                          node_relevance=node_relevance, max_constant_bytes=constant_budget())
    inputs = read_inputs(explainer, input_file, keys, size, mean, std)
    return explainer, explainer.explain(inputs, target)


def _format(fmt: Optional[str]) -> str:
    """The chosen format: as asked, else a table on a terminal and CSV when stdout is not a TTY."""
    if fmt:
        return fmt
    stream = sys.stdout
    return "table" if hasattr(stream, "isatty") and stream.isatty() else "csv"


def _console():
    """The rich console tables are printed on (its width: the terminal's, or COLUMNS, or 80)."""
    from rich.console import Console
    return Console()


def report_options(fn):
    """The options bias-table and profile share with explain."""
    for option in reversed([model_argument, input_options, target_option, explain_composite_option, set_option,
                            output_option, format_option]):
        fn = option(fn)
    return fn


@command("bias-table", short_help="Relevance taken by every bias, the inputs, the stabilizer.")
@report_options
@click.option("--top", default=3, show_default=True, help="How many of each row's largest units to list.")
def bias_table_cmd(model, input_file, keys, size, mean, std, targets, composite, sets, output_name, fmt, top) -> None:
    """Relevance taken by every bias (graph order), the inputs and the stabilizers; the totals row is the output."""
    from .render import bias_records, bias_rich_table, to_csv, to_json
    from .tables import bias_table
    explainer, exp = _explain(model, input_file, keys, targets, composite, sets, output_name, size, mean, std,
                              node_relevance="sums")
    rows = bias_table(exp, top=top)
    records = bias_records(rows)
    fmt = _format(fmt)
    if fmt == "csv":
        click.echo(to_csv(records), nl=False)
    elif fmt == "json":
        for record, row in zip(records, rows):
            record["per_sample"] = row.values.tolist()
        n = exp.total.shape[0]
        explained = exp.output.reshape(n, -1)[np.arange(n), exp.target]
        click.echo(to_json(records, model=model, composite=explainer.composite, batch=n,
                           target=exp.target.tolist(), total=exp.total.tolist(), explained_output=explained.tolist()))
    else:
        n = exp.total.shape[0]
        title = (f"bias table · {Path(model).name} · {explainer.composite} · mean of {n} · "
                 f"explained output {float(np.mean(exp.total)):.6g}")
        console = _console()
        console.print(bias_rich_table(rows, title, width=console.width))


@command("profile", short_help="Conservation layer by layer, input to output.")
@report_options
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Also plot the profile into this PNG.")
def profile_cmd(model, input_file, keys, size, mean, std, targets, composite, sets, output_name, fmt, png) -> None:
    """Layer-by-layer conservation: relevance at each tensor + bias and stabilizer taken so far == total."""
    from .render import profile_records, profile_rich_table, to_csv, to_json
    from .tables import profile
    check_output_file(png, "--png")
    if png:
        from .heatmap import heatmap_format
        heatmap_format(png, "--png")
    explainer, exp = _explain(model, input_file, keys, targets, composite, sets, output_name, size, mean, std,
                              node_relevance="sums")
    rows = profile(exp)
    records = profile_records(rows)
    fmt = _format(fmt)
    if fmt == "csv":
        click.echo(to_csv(records), nl=False)
    elif fmt == "json":
        click.echo(to_json(records, model=model, composite=explainer.composite, batch=int(exp.total.shape[0])))
    else:
        title = f"conservation profile · {Path(model).name} · {explainer.composite} · mean of {exp.total.shape[0]}"
        console = _console()
        console.print(profile_rich_table(rows, title, width=console.width))
        worst = max(float(r.relative_error.max()) for r in rows)
        click.echo(f"largest relative error over all layers and samples: {worst:.1e}")
    if png:
        from .plots import save_profile_plot
        save_profile_plot(png, rows, title=f"conservation profile: {Path(model).name} ({explainer.composite})")
        click.echo(f"wrote {png}", err=fmt != "table")


COMMANDS = (bias_table_cmd, profile_cmd)
