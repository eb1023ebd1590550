"""CLI command: onnxlrp demo (the shipped digits CNN explained on the shipped digits)."""
from __future__ import annotations

import click

from .cli_options import check_output_folder, command, composite_option


@command("demo", short_help="Explain the shipped digits CNN on shipped digits.")
@click.option("--out-dir", default="onnxlrp-demo", show_default=True, help="Where to write the heatmaps.")
@composite_option
def demo_cmd(out_dir, composite) -> None:
    """Explain the shipped digits CNN on the shipped digits; print the results and write a heatmap grid."""
    from .demo import run_demo
    check_output_folder(out_dir, "--out-dir")
    run_demo(out_dir, echo=click.echo, composite=composite)


COMMANDS = (demo_cmd,)
