"""CLI commands for whole data sets: explain-dataset (Parquet rows, local or Ray engine) and dataset-report."""
from __future__ import annotations

import sys
from typing import Sequence

import click

from .cli_options import (command, explain_composite_option, format_option, image_options, model_argument,
                          output_option, parse_sets, set_option)
from .errors import OnnxLrpError

EXIT_INTERRUPTED = 130


def _pairs(values: Sequence[str], what: str):
    """--key/--column: one plain name, or NAME=VALUE pairs for models with several inputs."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    pairs = {}
    for item in values:
        if "=" not in item:
            raise OnnxLrpError(f"{what} expects NAME (one input) or INPUT=NAME for each input, got {item!r}")
        name, value = item.split("=", 1)
        pairs[name.strip()] = value.strip()
    return pairs


@command("explain-dataset", short_help="Explain a whole data set into Parquet rows.")
@model_argument
@click.argument("data", type=click.Path())
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder: Parquet shards, _manifest.json, _failed.jsonl.")
@explain_composite_option
@set_option
@output_option
@click.option("--target", "-t", default="argmax", show_default=True, metavar="K|label|argmax",
              help="Class to explain: a class index, each sample's label, or the predicted class.")
@click.option("--batch-size", "-b", default=64, show_default=True, help="Samples per onnxruntime run.")
@click.option("--workers", "-w", default=1, show_default=True,
              help="Concurrent explainers: threads on one session (local), actors (ray).")
@click.option("--threads", default=None, type=int,
              help="onnxruntime threads per worker [default: cores / workers (local), 1 (ray)].")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: in this process; ray: Ray Data actors (pip install 'onnxlrp[ray]').")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Attach to a running Ray cluster (e.g. 10.0.0.1:6379) instead of starting a local one.")
@click.option("--gpus-per-worker", default=None, type=float,
              help="Ray: GPUs per actor [default: 1 each (shared when fewer) if the cluster has GPUs, else 0].")
@click.option("--resume", is_flag=True, help="Continue the run in OUT, skipping its finished shards.")
@click.option("--store", type=click.Choice(["full", "float16", "sum"]), default="full", show_default=True,
              help="Input relevance per row: full (float32 list), float16 list, or only its sum.")
@click.option("--key", "keys", multiple=True, metavar="ARRAY|INPUT=ARRAY", help=".npz: the array holding the samples.")
@click.option("--column", "columns", multiple=True, metavar="COL|INPUT=COL",
              help="Parquet: the column holding the samples (lists of numbers or encoded images).")
@click.option("--label-column", default=None, help="Parquet column (or .npz array) holding integer class labels.")
@image_options
@click.option("--shard-size", default=None, type=int,
              help="Samples per Parquet shard (rounded up to a multiple of the batch size) [default: about 256 MB].")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: when stderr is a terminal].")
def explain_dataset_cmd(model, data, out, composite, sets, output_name, target, batch_size, workers, threads, engine,
                        ray_address, gpus_per_worker, resume, store, keys, columns, label_column, size, mean, std,
                        shard_size, progress) -> None:
    """Explain every sample of DATA (image folder, .npy/.npz, Parquet) into Parquet rows under OUT."""
    from .datasets import run_dataset
    try:
        run = run_dataset(model, data, out, composite=composite, params=parse_sets(sets), output=output_name,
                          target=target, batch_size=batch_size, workers=workers, threads=threads, engine=engine,
                          ray_address=ray_address, resume=resume, store=store, key=_pairs(keys, "--key"),
                          column=_pairs(columns, "--column"), label_column=label_column, size=size, mean=mean,
                          std=std, shard_size=shard_size, gpus_per_worker=gpus_per_worker, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the finished shards are in {out}; continue with --resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(run.summary())


@command("dataset-report", short_help="Bias table of a whole explain-dataset run.")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--by", type=click.Choice(["label", "predicted", "target"]), default=None,
              help="Group samples by their label, predicted or explained class [default: label when known].")
@format_option
@click.option("--groups", default=10, show_default=True, help="Table: the largest groups shown as columns.")
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Also draw the table into this PNG.")
def dataset_report_cmd(folder, by, fmt, groups, png) -> None:
    """Bias table over a whole explain-dataset run: mean share of the explained logit per bias node, inputs and
    stabilizer, overall and per class."""
    from .datasets.report import dataset_report, report_records, report_rich_table
    from .render import to_csv, to_json
    report = dataset_report(folder, by)
    fmt = fmt or ("table" if sys.stdout.isatty() else "csv")
    records = report_records(report)
    if fmt == "csv":
        click.echo(to_csv(records), nl=False)
    elif fmt == "json":
        click.echo(to_json(records, folder=str(folder), by=report.by, samples=report.groups[0].samples
                           if report.groups else 0, composite=report.manifest["settings"]["composite"]))
    else:
        from rich.console import Console
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)   # piped on request: do not squash the columns
        console.print(report_rich_table(report, max(groups, 0)))
    if png:
        from .datasets.report_plot import save_report_plot
        save_report_plot(png, report)
        click.echo(f"wrote {png}", err=fmt != "table")


COMMANDS = (explain_dataset_cmd, dataset_report_cmd)
