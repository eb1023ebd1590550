"""CLI command: onnxlrp bench MODEL (forward pass vs explanation on this machine)."""
from __future__ import annotations

import click

from .cli_options import command, composite_option, model_argument, parse_sets, set_option


@command("bench", short_help="Time the forward pass against the explanation.")
@model_argument
@composite_option
@set_option
@click.option("--batch", "-b", default=1, show_default=True, help="Batch size (the model's dynamic first axis).")
@click.option("--provider", "providers", multiple=True,
              help="onnxruntime execution provider, e.g. CPUExecutionProvider (repeatable) [default: CUDA if it "
                   "works, else CPU].")
@click.option("--repeats", "-r", default=10, show_default=True, help="Timed rounds (one forward + one explanation).")
@click.option("--warmup", default=2, show_default=True, help="Untimed rounds first.")
@click.option("--threads", default=0, show_default=True, help="Intra-op threads (0: onnxruntime's default).")
@click.option("--shape", "shapes", multiple=True, metavar="[NAME=]D0,D1,...",
              help="Input shape for inputs with dynamic axes besides the batch (repeatable).")
def bench_cmd(model, composite, sets, batch, providers, repeats, warmup, threads, shapes) -> None:
    """Time MODEL's forward pass against its explanation (random inputs, same provider and threads)."""
    from .bench import parse_shapes, run_bench
    from .graph import load_model
    source = load_model(model)
    names = [i.name for i in source.graph.input if i.name not in {t.name for t in source.graph.initializer}]
    result = run_bench(model, composite, params=parse_sets(sets), batch=batch, providers=list(providers) or None,
                       repeats=max(repeats, 1), warmup=max(warmup, 0), threads=threads,
                       shapes=parse_shapes(shapes, names))
    click.echo(f"model {model} | composite {result.composite} | provider {result.provider} | batch {result.batch} "
               f"| threads {threads or 'default'} | {result.rounds} rounds, medians")
    click.echo(f"compile:      {result.compile_s:.2f} s ({result.nodes} -> {result.compiled_nodes} nodes)")
    click.echo(f"forward:      {_ms(result.forward_s)}")
    click.echo(f"explanation:  {_ms(result.explanation_s)} = {result.ratio:.2f}x the forward pass")
    click.echo(f"explain():    {_ms(result.explain_api_s)} (with input checks and result packing)")
    click.echo(f"throughput:   {result.samples_per_second:.1f} samples explained/s "
               f"({result.batches_per_second:.1f} batches of {result.batch}/s)")


def _ms(seconds: float) -> str:
    """Milliseconds with a sensible number of digits."""
    ms = seconds * 1e3
    return f"{ms:.3f} ms" if ms < 1 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


COMMANDS = (bench_cmd,)
