"""CLI commands for reports: bias-table and profile."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
import numpy as np

from .cli_options import (command, composite_option, format_option, image_options, input_option, model_argument,
                          output_option, parse_sets, read_inputs, set_option, target_argument, target_option)


def _explain(model: str, input_file: str, targets, composite: str, sets, output_name: Optional[str],
             size: Optional[str], mean: Optional[str], std: Optional[str]):
    """Compile (with per-tensor sums) and explain the batch in input_file: (explainer, explanation)."""
    from .runtime import Explainer
    explainer = Explainer(model, composite, params=parse_sets(sets), output=output_name, node_relevance="sums")
    inputs = read_inputs(explainer, input_file, size, mean, std)
    return explainer, explainer.explain(inputs, target_argument(targets))


def _format(fmt: Optional[str]) -> str:
    """The chosen format: as asked, else a table on a terminal and CSV when stdout is not a TTY."""
    if fmt:
        return fmt
    stream = sys.stdout
    return "table" if hasattr(stream, "isatty") and stream.isatty() else "csv"


def _print_table(table) -> None:
    """Print a rich table to the terminal."""
    from rich.console import Console
    Console().print(table)


def report_options(fn):
    """The options bias-table and profile share with explain."""
    for option in reversed([model_argument, input_option, target_option, composite_option, set_option,
                            output_option, image_options, format_option]):
        fn = option(fn)
    return fn


@command("bias-table")
@report_options
@click.option("--top", default=3, show_default=True, help="How many of each row's largest units to list.")
def bias_table_cmd(model, input_file, targets, composite, sets, output_name, size, mean, std, fmt, top) -> None:
    """Relevance taken by every bias (graph order), the inputs and the stabilizers; the totals row is the output."""
    from .render import bias_records, bias_rich_table, to_csv, to_json
    from .tables import bias_table
    explainer, exp = _explain(model, input_file, targets, composite, sets, output_name, size, mean, std)
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
        _print_table(bias_rich_table(rows, title))


@command("profile")
@report_options
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Also plot the profile into this PNG.")
def profile_cmd(model, input_file, targets, composite, sets, output_name, size, mean, std, fmt, png) -> None:
    """Layer-by-layer conservation: relevance at each tensor + bias and stabilizer taken so far == total."""
    from .render import profile_records, profile_rich_table, to_csv, to_json
    from .tables import profile
    explainer, exp = _explain(model, input_file, targets, composite, sets, output_name, size, mean, std)
    rows = profile(exp)
    records = profile_records(rows)
    fmt = _format(fmt)
    if fmt == "csv":
        click.echo(to_csv(records), nl=False)
    elif fmt == "json":
        click.echo(to_json(records, model=model, composite=explainer.composite, batch=int(exp.total.shape[0])))
    else:
        title = f"conservation profile · {Path(model).name} · {explainer.composite} · mean of {exp.total.shape[0]}"
        _print_table(profile_rich_table(rows, title))
        worst = max(float(r.relative_error.max()) for r in rows)
        click.echo(f"largest relative error over all layers and samples: {worst:.1e}")
    if png:
        from .plots import save_profile_plot
        save_profile_plot(png, rows, title=f"conservation profile: {Path(model).name} ({explainer.composite})")
        click.echo(f"wrote {png}", err=fmt != "table")


COMMANDS = (bias_table_cmd, profile_cmd)
