"""The onnxlrp command line: every onnxlrp error becomes one line on stderr and a non-zero exit."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import click
import numpy as np

from .errors import OnnxLrpError

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3


class _Group(click.Group):
    """A click group that turns exceptions into one readable line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OnnxLrpError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # output piped into head & co.
            sys.stderr.close()
            ctx.exit(0)
        except MemoryError:
            click.echo("error: out of memory (try a smaller batch)", err=True)
            ctx.exit(EXIT_INTERNAL)
        except Exception as exc:  # never a bare traceback
            if os.environ.get("ONNXLRP_DEBUG"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                       f"(set ONNXLRP_DEBUG=1 for the traceback)", err=True)
            ctx.exit(EXIT_INTERNAL)


def parse_sets(values: Sequence[str]) -> dict:
    """--set KEY=VALUE pairs into a params dict (values parsed by the composite loader)."""
    params = {}
    for item in values:
        if "=" not in item:
            raise OnnxLrpError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = value.strip()
    return params


composite_option = click.option("--composite", "-c", default="epsilon_plus", show_default=True,
                                help="Built-in composite name or path to a TOML composite.")
set_option = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                          help="Override a composite parameter (repeatable), e.g. --set low=-2.1")
output_option = click.option("--output", "output_name", default=None, help="Graph output to explain.")


def image_options(fn):
    """--size, --mean, --std: how an image --input (.png, .jpg) is preprocessed into a batch of one."""
    fn = click.option("--std", default=None, metavar="S[,S,S]", help="Image input: divide by this per channel.")(fn)
    fn = click.option("--mean", default=None, metavar="M[,M,M]",
                      help="Image input: subtract this per channel (after scaling pixels to [0, 1]).")(fn)
    fn = click.option("--size", default=None, metavar="H,W",
                      help="Image input: resize to H,W (or one int); default: the model's static size.")(fn)
    return fn


def read_inputs(explainer, input_file: str, size: Optional[str], mean: Optional[str], std: Optional[str]) -> dict:
    """The batch in input_file (.npy, .npz or an image preprocessed for the explainer's single input)."""
    from .inputs import load_inputs, options_for_shape, parse_floats, parse_size
    shape = explainer.inputs[0].shape if len(explainer.inputs) == 1 else []
    options = options_for_shape(shape, parse_size(size), parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    return load_inputs(input_file, [i.name for i in explainer.inputs], image=options)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxlrp")
def main() -> None:
    """onnxlrp: compile ONNX models into models that explain themselves with LRP."""


@main.command("compile")
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


@main.command("explain")
@click.argument("model", type=click.Path())  # load_model names a folder in one line
@click.option("--input", "-i", "input_file", required=True, help=".npy, .npz or image (.png, .jpg) with the batch.")
@click.option("--target", "-t", "targets", multiple=True, type=int, help="Class to explain (one, or one per sample).")
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
    target = None if not targets else (targets[0] if len(targets) == 1 else list(targets))
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


@main.command("rules")
def rules_cmd() -> None:
    """List every built-in composite and rule, one line each, with parameters."""
    from .composites import builtin_names, load_composite
    from .rules import RULES, rule_parameters
    click.echo("composites:")
    for name in builtin_names():
        comp = load_composite(name)
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in comp.params.items())
        click.echo(f"  {name:28s} {comp.description} [{params}]")
    click.echo("rules:")
    for name, cls in RULES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        click.echo(f"  {name:12s} ({', '.join(rule_parameters(cls)) or '-'}) {doc}")


@main.command("inspect")
@click.argument("model", type=click.Path())  # load_model names a folder in one line
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


@main.command("demo")
@click.option("--out-dir", default="onnxlrp-demo", show_default=True, help="Where to write the heatmaps.")
@composite_option
def demo_cmd(out_dir, composite) -> None:
    """Explain the shipped digits CNN on the shipped digits; print the results and write a heatmap grid."""
    from .demo import run_demo
    run_demo(out_dir, echo=click.echo, composite=composite)


def _register_command_modules() -> None:
    """Commands that live in their own modules (reports, benchmarks) attach themselves to `main`."""
    from . import cli_bench, cli_datasets, cli_reports  # noqa: F401
    for command in cli_datasets.COMMANDS:
        main.add_command(command)


_register_command_modules()


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point for tests: run the CLI and return its exit code."""
    try:
        main.main(args=list(argv) if argv is not None else None, standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
